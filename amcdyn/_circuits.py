"""Circuit descriptions: INV (closed-loop solve of A x = b) and MVM (open-loop y = A x).

A circuit is an `eqx.Module` whose physical parameters (conductances in S, op-amp gain and
gain-bandwidth) are array leaves, so it can be batched with `jax.vmap` and differentiated with
`jax.grad`. `circuit.dynamics()` turns it into the linear ODE $\\dot y = J y + c$ that
[`amcdyn.simulate`][] integrates; the state is the op-amp (and inverter) outputs, in volts.
"""

import abc
from typing import ClassVar, Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._opamp import OpAmp
from ._validate import check_finite, check_ndim, check_nonnegative, check_positive, is_concrete


V0 = 1.0  # Volts per unit of the encoded vectors (b for INV, x for MVM).


class AbstractDynamics(eqx.Module):
    """The linear state-space model of a circuit, $\\dot y = J y + c$ (SI units: V, s)."""

    n_states: eqx.AbstractVar[int]
    n_outputs: eqx.AbstractVar[int]

    @abc.abstractmethod
    def vector_field(self, y: Float[Array, " states"]) -> Float[Array, " states"]:
        """$dy/dt$ in V/s."""

    @abc.abstractmethod
    def jacobian(self) -> Float[Array, "states states"]:
        """Dense $J$ in 1/s."""

    def steady_state(self) -> Float[Array, " states"]:
        """Equilibrium $y^* = -J^{-1} c$ (a dense solve; circuits override with a cheaper one)."""
        c = self.vector_field(jnp.zeros(self.n_states, self.dtype))
        return jnp.linalg.solve(self.jacobian(), -c)

    @property
    @abc.abstractmethod
    def dtype(self): ...

    def outputs(self, y: Float[Array, "*batch states"]) -> Float[Array, "*batch outputs"]:
        """The observed op-amp outputs: the first `n_outputs` states."""
        return y[..., : self.n_outputs]


class AbstractCircuit(eqx.Module):
    """A circuit that computes a vector. Subclasses are final."""

    kind: ClassVar[str]

    @abc.abstractmethod
    def dynamics(self) -> AbstractDynamics:
        """The circuit's linear ODE."""

    @abc.abstractmethod
    def decode(self, v: Float[Array, "*batch outputs"]) -> Float[Array, "*batch outputs"]:
        """Map output voltages to the computed vector (undo the sign and scale of the mapping)."""

    @abc.abstractmethod
    def exact_solution(self) -> Float[Array, " outputs"]:
        """The exact answer of the ideal computation, by numerical linear algebra."""

    @abc.abstractmethod
    def amplifier_gbw(self) -> Float[Array, " amps"]:
        """Gain-bandwidth (Hz) of every amplifier; sets the simulation's time unit."""


def _split(a, g0):
    return g0 * jnp.maximum(a, 0), g0 * jnp.maximum(-a, 0)


def _check_matrix(name, a, *, square: bool):
    check_ndim(name, a, 2)
    if square and np.shape(a)[0] != np.shape(a)[1]:
        raise ValueError(f"`{name}` must be square for INV, got shape {np.shape(a)}")
    check_finite(name, a)


def _check_vector(name, v, n, what):
    check_ndim(name, v, 1)
    if np.shape(v)[0] != n:
        raise ValueError(f"`{name}` has length {np.shape(v)[0]}, but {what} needs length {n}")
    check_finite(name, v)


def _check_per_amp(name, value, n):
    if value is not None and np.ndim(value) > 0 and np.shape(value) != (n,):
        raise ValueError(
            f"`{name}` must be a scalar or have one value per amplifier, shape ({n},); "
            f"got shape {np.shape(value)}"
        )


class _INVDynamics(AbstractDynamics):
    # P = [G+ | G-] / S  (n x 2n) or (G+ - G-)/S (n x n) for ideal inverters.
    p: Float[Array, "n m"]
    c: Float[Array, " n"]  # input current / S  (V)
    w0: Float[Array, "*n"]
    w_t: Float[Array, "*n"]
    inv_w0: Float[Array, "*n"] | None
    inv_w_t: Float[Array, "*n"] | None
    n_states: int = eqx.field(static=True)
    n_outputs: int = eqx.field(static=True)

    @property
    def dtype(self):
        return self.p.dtype

    def vector_field(self, y):
        n = self.n_outputs
        v = y[:n]
        if self.p.shape[0] <= 32:
            # Small n: multiply-and-sum rather than `p @ y`. Under vmap a batched matvec becomes
            # one tiny GEMM call per circuit on XLA:CPU, while this fuses into a single loop.
            # From n ~ 64 the dot is faster again (measured: 2x at n = 64).
            pu = jnp.sum(self.p * y, axis=1)
        else:
            pu = self.p @ y
        dv = -self.w0 * v - self.w_t * (pu + self.c)
        if self.inv_w_t is None:
            return dv
        z = y[n:]
        dz = -self.inv_w0 * z - self.inv_w_t * (v + z) / 2
        return jnp.concatenate([dv, dz])

    def jacobian(self):
        n = self.n_outputs
        ones = jnp.ones(n, self.dtype)
        top = -(self.w_t * ones)[:, None] * self.p
        top = top.at[:, :n].add(-jnp.diag(self.w0 * ones))
        if self.inv_w_t is None:
            return top
        iw0 = self.inv_w0 * ones
        iwt = self.inv_w_t * ones
        bottom = jnp.concatenate([-jnp.diag(iwt / 2), -jnp.diag(iw0 + iwt / 2)], axis=1)
        return jnp.concatenate([top, bottom], axis=0)

    def steady_state(self):
        # Eliminate the inverters: dz = 0 gives z = -beta v, so only an n x n solve remains.
        n = self.n_outputs
        ones = jnp.ones(n, self.dtype)
        m = self.p[:, :n]
        if self.inv_w_t is not None:
            iwt = self.inv_w_t * ones
            beta = (iwt / 2) / (self.inv_w0 * ones + iwt / 2)
            m = m - self.p[:, n:] * beta[None, :]
        m = m + jnp.diag(self.w0 * ones / (self.w_t * ones))
        v = jnp.linalg.solve(m, -self.c)
        if self.inv_w_t is None:
            return v
        return jnp.concatenate([v, -beta * v])


class INV(AbstractCircuit):
    r"""Closed-loop matrix inversion: the circuit settles to $V = -A^{-1} b$ (volts).

    Op-amp $i$ has its non-inverting input grounded and its inverting input on row $i$ of the
    crossbar; its output $V_i$ drives column $i$. $A = A^+ - A^-$ is stored as
    $G^\pm = G_0 A^\pm$; $G^-$ is driven by inverters $z = -V$ (real single-pole op-amps with two
    equal resistors, or ideal). The input enters row $i$ as a current $I_i = G_0 b_i \cdot 1\,$V
    (`input_mode="current"`), or as a voltage $b_i\cdot 1\,$V through a conductance $G_\mathrm{in}$
    (`input_mode="voltage"`). With $S_i = \sum_j (G^+_{ij} + G^-_{ij})\,[+\,G_\mathrm{in}]$,

    $$u_i = \frac{I_i + \sum_j G^+_{ij} V_j + \sum_j G^-_{ij} z_j}{S_i},\qquad
      \dot V_i = -\omega_0 V_i - \omega_T u_i,\qquad
      \dot z_i = -\omega_0' z_i - \omega_T' \frac{V_i + z_i}{2}.$$

    Build one with [`amcdyn.INV.from_matrix`][].
    """

    kind: ClassVar[str] = "inv"
    a: Float[Array, "n n"]
    b: Float[Array, " n"]
    g0: Float[Array, ""]
    g_pos: Float[Array, "n n"]
    g_neg: Float[Array, "n n"]
    g_in: Float[Array, "*n"]
    g_inv: Float[Array, "*n"]
    amp: OpAmp
    inverter: OpAmp | None
    inverters: Literal["opamp", "ideal", "none"] = eqx.field(static=True)
    input_mode: Literal["current", "voltage"] = eqx.field(static=True)

    def __check_init__(self):
        n = np.shape(self.a)[0]
        for name in ("g_pos", "g_neg"):
            g = getattr(self, name)
            if np.shape(g) != (n, n):
                raise ValueError(f"`{name}` must have shape {(n, n)}, got {np.shape(g)}")
            check_nonnegative(name, g)
        if self.inverters not in ("opamp", "ideal", "none"):
            raise ValueError(
                f"`inverters` must be 'opamp', 'ideal' or 'none', got {self.inverters!r}"
            )
        if self.input_mode not in ("current", "voltage"):
            raise ValueError(
                f"`input_mode` must be 'current' or 'voltage', got {self.input_mode!r}"
            )
        if (self.inverters == "opamp") != (self.inverter is not None):
            raise ValueError("`inverter` must be an OpAmp exactly when `inverters='opamp'`")

    @classmethod
    def from_matrix(
        cls,
        a: Float[ArrayLike, "n n"],
        b: Float[ArrayLike, " n"],
        *,
        g0: float | Float[ArrayLike, ""] = 1e-4,
        a0: float | Float[ArrayLike, "*n"] = 1e5,
        f_gbw: float | Float[ArrayLike, "*n"] = 1e8,
        inverters: Literal["opamp", "ideal"] = "opamp",
        inverter_a0: float | Float[ArrayLike, "*n"] | None = None,
        inverter_f_gbw: float | Float[ArrayLike, "*n"] | None = None,
        input_mode: Literal["current", "voltage"] = "current",
        g_in: float | Float[ArrayLike, "*n"] | None = None,
    ) -> "INV":
        """Map the real square matrix `a` to conductances $G^\\pm = G_0 A^\\pm$.

        **Arguments:**

        - `a`: the matrix $A$, shape `(n, n)` (dimensionless).
        - `b`: the right-hand side, shape `(n,)` (units of 1 V or $G_0\\cdot$1 V).
        - `g0`: conductance unit $G_0$ (S).
        - `a0`, `f_gbw`: main op-amps' DC gain and gain-bandwidth (Hz); scalar or per-amp.
        - `inverters`: `"opamp"` (single-pole inverters, equal resistors $1/G_0$) or `"ideal"`.
          When `a` is concrete and has no negative entry, no inverters are built.
        - `inverter_a0`, `inverter_f_gbw`: the inverters' op-amps (default: same as the main).
        - `input_mode`: `"current"` ($I_i = G_0 b_i$) or `"voltage"` (through `g_in`).
        - `g_in`: input conductance (S) for `input_mode="voltage"`; default `g0`.

        **Raises:** `ValueError` naming the argument for wrong shapes, non-finite entries,
        non-positive `g0`/`a0`/`f_gbw`, or an unknown option.
        """
        _check_matrix("a", a, square=True)
        n = np.shape(a)[0]
        _check_vector("b", b, n, "an INV of this matrix")
        check_positive("g0", g0)
        if is_concrete(a):
            rank = np.linalg.matrix_rank(np.asarray(a, dtype=float))
            if rank < n:
                raise ValueError(
                    f"`a` is singular (rank {rank} < {n}): INV has no solution to settle to"
                )
        if inverters not in ("opamp", "ideal"):
            raise ValueError(f"`inverters` must be 'opamp' or 'ideal', got {inverters!r}")
        if inverter_a0 is not None:
            check_positive("inverter_a0", inverter_a0, allow_inf=True)
        if inverter_f_gbw is not None:
            check_positive("inverter_f_gbw", inverter_f_gbw)
        for name, value in (
            ("a0", a0),
            ("f_gbw", f_gbw),
            ("inverter_a0", inverter_a0),
            ("inverter_f_gbw", inverter_f_gbw),
            ("g_in", g_in),
        ):
            _check_per_amp(name, value, n)
        if g_in is not None:
            check_positive("g_in", g_in)
        a = jnp.asarray(a)
        b = jnp.asarray(b)
        g0 = jnp.asarray(g0)
        g_pos, g_neg = _split(a, g0)
        topology = inverters
        if is_concrete(a) and not np.any(np.asarray(a) < 0):
            topology = "none"
        amp = OpAmp(a0, f_gbw)
        inverter = None
        if topology == "opamp":
            inverter = OpAmp(
                a0 if inverter_a0 is None else inverter_a0,
                f_gbw if inverter_f_gbw is None else inverter_f_gbw,
            )
        return cls(
            a=a,
            b=b,
            g0=g0,
            g_pos=g_pos,
            g_neg=g_neg,
            g_in=g0 if g_in is None else jnp.asarray(g_in),
            g_inv=g0,
            amp=amp,
            inverter=inverter,
            inverters=topology,
            input_mode=input_mode,
        )

    @property
    def n(self) -> int:
        return int(np.shape(self.a)[0])

    def input_current(self) -> Float[Array, " n"]:
        """Current injected into each row node at the ideal (virtual-ground) operating point (A)."""
        g = self.g0 if self.input_mode == "current" else self.g_in
        return g * self.b * V0

    def row_conductance(self) -> Float[Array, " n"]:
        """$S_i$: all conductance incident on row node $i$ (S)."""
        s = jnp.sum(self.g_pos, axis=1)
        if self.inverters != "none":
            s = s + jnp.sum(self.g_neg, axis=1)
        if self.input_mode == "voltage":
            s = s + self.g_in
        return s

    def dynamics(self) -> _INVDynamics:
        s = self.row_conductance()
        c = self.input_current() / s
        if self.inverters == "opamp":
            p = jnp.concatenate([self.g_pos, self.g_neg], axis=1) / s[:, None]
            inv_w0, inv_w_t, n_states = self.inverter.w0, self.inverter.w_t, 2 * self.n
        else:
            g = self.g_pos if self.inverters == "none" else self.g_pos - self.g_neg
            p = g / s[:, None]
            inv_w0 = inv_w_t = None
            n_states = self.n
        return _INVDynamics(
            p=p,
            c=c,
            w0=self.amp.w0,
            w_t=self.amp.w_t,
            inv_w0=inv_w0,
            inv_w_t=inv_w_t,
            n_states=n_states,
            n_outputs=self.n,
        )

    def decode(self, v):
        scale = 1.0 if self.input_mode == "current" else self.g0 / self.g_in
        return -v * scale / V0

    def exact_solution(self):
        return jnp.linalg.solve(self.a, self.b)

    def amplifier_gbw(self):
        f = jnp.broadcast_to(self.amp.f_gbw, (self.n,))
        if self.inverter is not None:
            f = jnp.concatenate([f, jnp.broadcast_to(self.inverter.f_gbw, (self.n,))])
        return f


class _MVMDynamics(AbstractDynamics):
    decay: Float[Array, " m"]  # -J diagonal (1/s)
    drive: Float[Array, " m"]  # c (V/s)
    n_states: int = eqx.field(static=True)
    n_outputs: int = eqx.field(static=True)

    @property
    def dtype(self):
        return self.decay.dtype

    def vector_field(self, y):
        return -self.decay * y + self.drive

    def jacobian(self):
        return -jnp.diag(self.decay)

    def steady_state(self):
        return self.drive / self.decay


class MVM(AbstractCircuit):
    r"""Open-loop matrix-vector multiplication through transimpedance amplifiers.

    The input $x_j\cdot 1\,$V drives column $j$ of $G^+$ and $-x_j\cdot 1\,$V drives column $j$
    of $G^-$ (column splitting). Row $i$ is held near virtual ground by a TIA with feedback
    conductance $G_f$; with $S_i = \sum_j (G^+_{ij} + G^-_{ij})$,

    $$\dot V_i = -\omega_0 V_i - \omega_T \frac{\sum_j (G^+_{ij} - G^-_{ij}) x_j + G_f V_i}
      {S_i + G_f},$$

    which settles to $V = -(G_0/G_f) A x$. Build one with [`amcdyn.MVM.from_matrix`][].
    """

    kind: ClassVar[str] = "mvm"
    a: Float[Array, "m n"]
    x: Float[Array, " n"]
    g0: Float[Array, ""]
    g_pos: Float[Array, "m n"]
    g_neg: Float[Array, "m n"]
    g_f: Float[Array, "*m"]
    amp: OpAmp

    def __check_init__(self):
        shape = np.shape(self.a)
        for name in ("g_pos", "g_neg"):
            g = getattr(self, name)
            if np.shape(g) != shape:
                raise ValueError(f"`{name}` must have shape {shape}, got {np.shape(g)}")
            check_nonnegative(name, g)

    @classmethod
    def from_matrix(
        cls,
        a: Float[ArrayLike, "m n"],
        x: Float[ArrayLike, " n"],
        *,
        g0: float | Float[ArrayLike, ""] = 1e-4,
        g_f: float | Float[ArrayLike, "*m"] | None = None,
        a0: float | Float[ArrayLike, "*m"] = 1e5,
        f_gbw: float | Float[ArrayLike, "*m"] = 1e8,
    ) -> "MVM":
        """Map the real `(m, n)` matrix `a` to $G^\\pm = G_0 A^\\pm$ (column splitting).

        **Arguments:**

        - `a`: the matrix, shape `(m, n)`; `x`: the input vector, shape `(n,)` (units of 1 V).
        - `g0`: conductance unit (S); `g_f`: TIA feedback conductance (S), default `g0`.
        - `a0`, `f_gbw`: TIA op-amps' DC gain and gain-bandwidth (Hz); scalar or per-row.
        """
        _check_matrix("a", a, square=False)
        _check_vector("x", x, np.shape(a)[1], "an MVM of this matrix")
        check_positive("g0", g0)
        if g_f is not None:
            check_positive("g_f", g_f)
        for name, value in (("a0", a0), ("f_gbw", f_gbw), ("g_f", g_f)):
            _check_per_amp(name, value, np.shape(a)[0])
        a = jnp.asarray(a)
        g0 = jnp.asarray(g0)
        g_pos, g_neg = _split(a, g0)
        return cls(
            a=a,
            x=jnp.asarray(x),
            g0=g0,
            g_pos=g_pos,
            g_neg=g_neg,
            g_f=g0 if g_f is None else jnp.asarray(g_f),
            amp=OpAmp(a0, f_gbw),
        )

    @property
    def m(self) -> int:
        return int(np.shape(self.a)[0])

    def row_conductance(self) -> Float[Array, " m"]:
        return jnp.sum(self.g_pos + self.g_neg, axis=1)

    def dynamics(self) -> _MVMDynamics:
        denom = self.row_conductance() + self.g_f
        i_in = (self.g_pos - self.g_neg) @ self.x * V0
        ones = jnp.ones(self.m, denom.dtype)
        decay = self.amp.w0 * ones + self.amp.w_t * self.g_f / denom
        drive = -self.amp.w_t * i_in / denom
        return _MVMDynamics(decay=decay, drive=drive, n_states=self.m, n_outputs=self.m)

    def decode(self, v):
        return -v * self.g_f / (self.g0 * V0)

    def exact_solution(self):
        return self.a @ self.x

    def amplifier_gbw(self):
        return jnp.broadcast_to(self.amp.f_gbw, (self.m,))
