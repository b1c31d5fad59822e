"""Circuit descriptions: INV (closed-loop solve of A x = b) and MVM (open-loop y = A x).

A circuit is an `eqx.Module` whose physical parameters (conductances in S, op-amp gain and
gain-bandwidth) are array leaves, so it can be batched with `jax.vmap` and differentiated with
`jax.grad`. `circuit.dynamics()` turns it into the linear ODE $\\dot y = J y + c$ that
[`amcdyn.simulate`][] integrates; the state is the op-amp (and inverter) outputs, in volts.
"""

import abc
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._converters import ADC, DAC
from ._linalg import solve, solve_blocked
from ._opamp import K_GBW, P_STATIC, OpAmp, _check_f_p2, limit_rate
from ._validate import check_finite, check_ndim, check_nonnegative, check_positive, is_concrete
from ._wires import _check_resistance, inv_row_operator, mvm_row_operator


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
        return solve(self.jacobian(), -c)

    @property
    @abc.abstractmethod
    def dtype(self): ...

    @property
    def nonlinear(self) -> bool:
        """Whether the vector field includes amplifier rails or slew limits (static). Then
        `jacobian` is the small-signal linearization at the origin (the limits have unit
        small-signal gain there) and `steady_state` is the linear model's equilibrium, not
        necessarily the nonlinear one."""
        return False

    def limit_excess(self, y: Float[Array, " states"]) -> Float[Array, "2"]:
        """`[rail, slew]` excesses at state `y` (dimensionless, >= 0, zero while every
        amplifier is below 0.9 of its rail and slew rate); see `amcdyn._opamp.limit_rate`."""
        return jnp.zeros(2, self.dtype)

    def slew_time(self, y: Float[Array, " states"]) -> Float[Array, ""]:
        """Time (s) the slew limits need to move the limited states from 0 V to `y` (rails
        applied); 0 without slew limits."""
        return jnp.zeros((), self.dtype)

    def noise_input(self) -> Float[Array, "states amps"]:
        r"""$\partial\dot y/\partial v_+$ (1/s): how a voltage at each amplifier's
        non-inverting input drives the state (for input-referred noise)."""
        raise NotImplementedError(f"{type(self).__name__} does not model amplifier noise")

    def outputs(self, y: Float[Array, "*batch states"]) -> Float[Array, "*batch outputs"]:
        """The observed op-amp outputs: the first `n_outputs` states."""
        return y[..., : self.n_outputs]


class AbstractCircuit(eqx.Module):
    """A circuit that computes a vector. Subclasses are final."""

    kind: ClassVar[str]
    # The name of the amcdyn function that simulates this circuit when `simulate` does not
    # (e.g. "simulate_egv"); None: `simulate` (and, when linear, the exact paths).
    simulator: ClassVar[str | None] = None

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

    @property
    def nonlinear(self) -> bool:
        """Whether any of the circuit's [`amcdyn.OpAmp`][]s has rails or a slew-rate limit
        (static). Such a circuit is only simulated by [`amcdyn.simulate`][]."""
        amps = jax.tree_util.tree_leaves(self, is_leaf=lambda x: isinstance(x, OpAmp))
        return any(isinstance(a, OpAmp) and a.nonlinear for a in amps)

    def amplifier_power(self) -> Float[Array, ""]:
        """Static power of all amplifiers (W). Default: the [`amcdyn.OpAmp`][] default power
        model $P_\\mathrm{static} + k_\\mathrm{GBW} f_\\mathrm{GBW}$ for every amplifier."""
        return jnp.sum(P_STATIC + K_GBW * self.amplifier_gbw())

    def resistive_power(self, y: Float[Array, " states"]) -> Float[Array, ""]:
        """Power dissipated in the crossbar and resistors (W) at state `y` (V).

        Default: nothing modelled (0). INV and MVM count every device and resistor, with
        the summing-node voltages from KCL (not the virtual-ground approximation, which fails
        during the transient). It must be a quadratic function of `y`.
        """
        return jnp.zeros((), y.dtype)

    def converter_energy(self) -> Float[Array, ""]:
        """Energy of the DAC and ADC conversions of one solve (J); 0 without converters."""
        return jnp.zeros(())


def _convert(converter, v):
    return v if converter is None else converter(v)


def _check_converter(name, value, cls):
    if value is not None and not isinstance(value, cls):
        raise ValueError(f"`{name}` must be an amcdyn.{cls.__name__} or None, got {value!r}")
    return value


def _converter_energy(dac, n_in, adc, n_out):
    e = jnp.zeros(())
    if dac is not None:
        e = e + dac.energy(n_in)
    if adc is not None:
        e = e + adc.energy(n_out)
    return e


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


def _amp_options(
    n,
    *,
    f_p2,
    v_os,
    p_static,
    k_gbw,
    inverter_f_p2=None,
    inverter_v_os=None,
    v_sat=None,
    slew_rate=None,
    inverter_v_sat=None,
    inverter_slew_rate=None,
):
    """Validate the op-amp non-ideality arguments of `from_matrix`; OpAmp keyword arguments
    for the main amplifiers and the inverters (which default to the main ones)."""
    limits = (
        ("v_sat", v_sat),
        ("slew_rate", slew_rate),
        ("inverter_v_sat", inverter_v_sat),
        ("inverter_slew_rate", inverter_slew_rate),
    )
    for name, value in (
        ("f_p2", f_p2),
        ("v_os", v_os),
        ("p_static", p_static),
        ("k_gbw", k_gbw),
        ("inverter_f_p2", inverter_f_p2),
        ("inverter_v_os", inverter_v_os),
        *limits,
    ):
        _check_per_amp(name, value, n)
    for name, value in limits:
        if value is not None:
            check_positive(name, value)
    _check_f_p2("f_p2", f_p2)
    _check_f_p2("inverter_f_p2", inverter_f_p2)
    check_finite("v_os", v_os)
    if inverter_v_os is not None:
        check_finite("inverter_v_os", inverter_v_os)
    power = {}
    if p_static is not None:
        check_nonnegative("p_static", p_static)
        power["p_static"] = p_static
    if k_gbw is not None:
        check_nonnegative("k_gbw", k_gbw)
        power["k_gbw"] = k_gbw
    main = dict(f_p2=f_p2, v_os=v_os, v_sat=v_sat, slew_rate=slew_rate, **power)
    inverter = dict(
        f_p2=f_p2 if inverter_f_p2 is None else inverter_f_p2,
        v_os=v_os if inverter_v_os is None else inverter_v_os,
        v_sat=v_sat if inverter_v_sat is None else inverter_v_sat,
        slew_rate=slew_rate if inverter_slew_rate is None else inverter_slew_rate,
        **power,
    )
    return {"main": main, "inverter": inverter}


def _wire_options(r_w, r_w_col):
    """(r_row, r_col) as arrays, or (None, None) for the ideal crossbar."""
    if r_w is None and r_w_col is None:
        return None, None
    if r_w is not None:
        _check_resistance("r_w", r_w)
    if r_w_col is not None:
        _check_resistance("r_w_col", r_w_col)
    r_row = 0.0 if r_w is None else r_w
    r_col = r_row if r_w_col is None else r_w_col
    return jnp.asarray(r_row), jnp.asarray(r_col)


class _LoopDynamics(AbstractDynamics):
    """Amplifiers whose inverting inputs sit at $u = p\\,y_{:k} + c$ (volts), as a linear ODE.

    Serves every INV, and the MVM with wire resistance or a second pole. State layout (the
    observed outputs first, as `AbstractDynamics.outputs` requires):

    `[v (n main outputs) | z (n inverter outputs, real inverters only) |
    x (n main first-pole states, two-pole main amps only) | x' (n inverter first-pole states,
    two-pole inverters only)]`.

    Main amplifier $i$ amplifies $v_\\mathrm{os} - u_i$ (its + input is grounded); the input
    offset is folded into `c` ($c = c_\\mathrm{circuit} - v_\\mathrm{os}$). A real inverter
    amplifies $v'_\\mathrm{os} - (v_j + z_j)/2$ (two equal resistors); `inv_drive` is
    $\\omega_T' v'_\\mathrm{os}$ (V/s).

    Rails and slew limits (`v_sat`, `slew_rate`, `inv_v_sat`, `inv_slew_rate`; `None`: linear)
    act on each amplifier's first-pole (integrator) state through
    `amcdyn._opamp.limit_rate`; `jacobian` stays the linear model (see
    `AbstractDynamics.nonlinear`).
    """

    # (n, k) dense, k = n (v only) or 2n ([v; z]); or (n,) for a diagonal p (u = p v + c).
    p: Float[Array, "n k"] | Float[Array, " n"]
    c: Float[Array, " n"]  # (V)
    w0: Float[Array, "*n"]
    w_t: Float[Array, "*n"]
    inv_w0: Float[Array, "*n"] | None
    inv_w_t: Float[Array, "*n"] | None
    n_states: int = eqx.field(static=True)
    n_outputs: int = eqx.field(static=True)
    w_p2: Float[Array, "*n"] | None = None
    inv_w_p2: Float[Array, "*n"] | None = None
    inv_drive: Float[Array, "*n"] | None = None
    v_sat: Float[Array, "*n"] | None = None  # (V)
    slew_rate: Float[Array, "*n"] | None = None  # (V/s)
    inv_v_sat: Float[Array, "*n"] | None = None
    inv_slew_rate: Float[Array, "*n"] | None = None
    # Summing-node parasitic capacitance: S/C (1/s) per main amplifier's row node, whose
    # voltage u is then a state (the last n, starting at 0 V); None: no node capacitance.
    # `node_vos` is the main amplifiers' offset, which `c` has folded in (c = c_u - v_os).
    node_rate: Float[Array, "*n"] | None = None
    node_vos: Float[Array, "*n"] | None = None

    @property
    def dtype(self):
        return self.p.dtype

    @property
    def nonlinear(self):
        limits = (self.v_sat, self.slew_rate, self.inv_v_sat, self.inv_slew_rate)
        return any(x is not None for x in limits)

    def limit_excess(self, y):
        _, rail, slew = self._field(y)
        return jnp.stack([rail, slew])

    def slew_time(self, y):
        n = self.n_outputs
        x_main, x_inv = self._offsets()
        t = jnp.zeros((), self.dtype)
        stages = ((x_main, self.v_sat, self.slew_rate), (x_inv, self.inv_v_sat, self.inv_slew_rate))
        for lo, v_sat, sr in stages:
            if sr is not None:
                dv = jnp.abs(y[lo : lo + n])
                if v_sat is not None:
                    dv = jnp.minimum(dv, v_sat)
                t = jnp.maximum(t, jnp.max(dv / sr))
        return t

    def noise_input(self):
        n = self.n_outputs
        x_main, x_inv = self._offsets()
        idx = jnp.arange(n)
        ones = jnp.ones(n, self.dtype)
        cols = n if self.inv_w_t is None else 2 * n
        b = jnp.zeros((self.n_states, cols), self.dtype)
        b = b.at[x_main + idx, idx].set(self.w_t * ones)
        if self.inv_w_t is not None:
            b = b.at[x_inv + idx, n + idx].set(self.inv_w_t * ones)
        return b

    def _offsets(self):
        """Start indices of the main and inverter first-pole states."""
        n = self.n_outputs
        k_inv = 2 * n if self.inv_w_t is not None else n
        x_main = k_inv if self.w_p2 is not None else 0
        k = k_inv + (n if self.w_p2 is not None else 0)
        x_inv = k if self.inv_w_p2 is not None else n
        return x_main, x_inv

    def _dense_p(self):
        return jnp.diag(self.p) if self.p.ndim == 1 else self.p

    def vector_field(self, y):
        return self._field(y)[0]

    def _field(self, y):
        """(dy/dt, rail excess, slew excess)."""
        n = self.n_outputs
        v = y[:n]
        if self.p.ndim == 1:
            pu = self.p * v
        else:
            # Under vmap this is one batched dot; on XLA:CPU (jaxlib 0.10.1) it measured 13x
            # faster than a fused multiply-and-sum for 1024 circuits of 16 x 32.
            pu = self.p @ y[: self.p.shape[1]]
        x_main, x_inv = self._offsets()
        lim = (self.v_sat, self.slew_rate, self.w_t)
        if self.node_rate is None:
            seen, dw = pu + self.c, None  # the node sits at its quasi-static voltage
        else:
            u = y[self.n_states - n :]
            vos = 0.0 if self.node_vos is None else self.node_vos
            seen, dw = u - vos, self.node_rate * (pu + self.c + vos - u)
        if self.w_p2 is None:
            dv, rail, slew = limit_rate(-self.w0 * v - self.w_t * seen, v, *lim)
            dx = None
        else:
            x = y[x_main : x_main + n]
            dx, rail, slew = limit_rate(-self.w0 * x - self.w_t * seen, x, *lim)
            dv = self.w_p2 * (x - v)
        if self.inv_w_t is None:
            parts = [d for d in (dv, dx, dw) if d is not None]
            return (parts[0] if len(parts) == 1 else jnp.concatenate(parts)), rail, slew
        z = y[n : 2 * n]
        drive = self.inv_drive if self.inv_drive is not None else 0.0
        lim = (self.inv_v_sat, self.inv_slew_rate, self.inv_w_t)
        if self.inv_w_p2 is None:
            dz, rail2, slew2 = limit_rate(
                -self.inv_w0 * z - self.inv_w_t * (v + z) / 2 + drive, z, *lim
            )
            dxz = None
        else:
            xz = y[x_inv : x_inv + n]
            dxz, rail2, slew2 = limit_rate(
                -self.inv_w0 * xz - self.inv_w_t * (v + z) / 2 + drive, xz, *lim
            )
            dz = self.inv_w_p2 * (xz - z)
        parts = [dv, dz] + [d for d in (dx, dxz, dw) if d is not None]
        return jnp.concatenate(parts), rail + rail2, slew + slew2

    def jacobian(self):
        n = self.n_outputs
        ones = jnp.ones(n, self.dtype)
        idx = jnp.arange(n)
        p = self._dense_p()
        x_main, x_inv = self._offsets()
        jac = jnp.zeros((self.n_states, self.n_states), self.dtype)
        if self.node_rate is None:
            # Main amplifiers' first pole: -w0 on its own state, -wT p on the driving states.
            jac = jac.at[x_main : x_main + n, : p.shape[1]].set(-(self.w_t * ones)[:, None] * p)
        else:
            # ... driven by the node state u instead, which relaxes at S/C towards p y + c_u.
            x_node = self.n_states - n
            rate = self.node_rate * ones
            jac = jac.at[x_main + idx, x_node + idx].set(-self.w_t * ones)
            jac = jac.at[x_node : x_node + n, : p.shape[1]].set(rate[:, None] * p)
            jac = jac.at[x_node + idx, x_node + idx].set(-rate)
        jac = jac.at[x_main + idx, x_main + idx].add(-self.w0 * ones)
        if self.w_p2 is not None:
            wp2 = self.w_p2 * ones
            jac = jac.at[idx, x_main + idx].set(wp2).at[idx, idx].set(-wp2)
        if self.inv_w_t is None:
            return jac
        half = self.inv_w_t * ones / 2
        jac = jac.at[x_inv + idx, idx].set(-half)
        jac = jac.at[x_inv + idx, n + idx].add(-half)
        jac = jac.at[x_inv + idx, x_inv + idx].add(-self.inv_w0 * ones)
        if self.inv_w_p2 is not None:
            iwp2 = self.inv_w_p2 * ones
            jac = jac.at[n + idx, x_inv + idx].set(iwp2).at[n + idx, n + idx].set(-iwp2)
        return jac

    def steady_state(self):
        # The second poles are unity-gain low-passes (x = v at equilibrium), and the inverters
        # are eliminated (dz = 0 gives z = -beta v + gamma), so only an n x n solve remains.
        n = self.n_outputs
        ones = jnp.ones(n, self.dtype)
        rhs = -self.c
        if self.p.ndim == 1:
            v = rhs / (self.p + self.w0 * ones / (self.w_t * ones))
        else:
            m = self.p[:, :n]
            if self.inv_w_t is not None:
                iwt = self.inv_w_t * ones
                denom = self.inv_w0 * ones + iwt / 2
                beta = (iwt / 2) / denom
                m = m - self.p[:, n:] * beta[None, :]
                if self.inv_drive is not None:
                    gamma = self.inv_drive * ones / denom
                    rhs = rhs - self.p[:, n:] @ gamma
            m = m + jnp.diag(self.w0 * ones / (self.w_t * ones))
            v = solve_blocked(m, rhs)
        parts = [v]
        if self.inv_w_t is not None:
            z = -beta * v
            if self.inv_drive is not None:
                z = z + gamma
            parts.append(z)
        if self.w_p2 is not None:
            parts.append(v)
        if self.inv_w_p2 is not None:
            parts.append(parts[1])
        if self.node_rate is not None:
            # At equilibrium the node sits at its quasi-static voltage p y + c_u.
            k = n if self.p.ndim == 1 else self.p.shape[1]
            y = jnp.concatenate(parts)[:k]
            vos = 0.0 if self.node_vos is None else self.node_vos
            parts.append((self.p * y if self.p.ndim == 1 else self.p @ y) + self.c + vos)
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


# The INV's dynamics (the name predates the MVM's use of the same class).
_INVDynamics = _LoopDynamics


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

    Op-amp non-idealities (see [`amcdyn.OpAmp`][]): a second pole adds one internal state per
    amplifier (after the outputs and inverter outputs); an input offset $v_\mathrm{os}$ makes the
    main amplifiers drive $u_i \to v_\mathrm{os}$ instead of 0. With wire resistance (`r_w`),
    $u = p\,[V; z] + c$ comes from the exact reduction of the wired crossbars
    (`amcdyn._wires.inv_row_operator`), so the ODE keeps one state per amplifier.

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
    r_w: Float[Array, ""] | None = None  # row-line wire segment (Ω); None: ideal crossbar
    r_w_col: Float[Array, ""] | None = None  # column-line wire segment (Ω)
    dac: DAC | None = None  # quantizes b (V) before it drives the rows
    adc: ADC | None = None  # quantizes the outputs (V) before decoding
    # Per-column scaling D (dimensionless, > 0): the crossbar stores A D and solves
    # (A D) y = b; `decode` returns x = D y. None: D = I. See amcdyn._design.
    col_scale: Float[Array, " n"] | None = None
    # Parasitic capacitance (F) from each row (summing) node to ground; None: none.
    c_node: Float[Array, "*n"] | None = None

    def __check_init__(self):
        n = np.shape(self.a)[0]
        for name in ("g_pos", "g_neg"):
            g = getattr(self, name)
            if np.shape(g) != (n, n):
                raise ValueError(f"`{name}` must have shape {(n, n)}, got {np.shape(g)}")
            check_nonnegative(name, g)
        if self.col_scale is not None:
            if np.shape(self.col_scale) != (n,):
                raise ValueError(
                    f"`col_scale` must have shape {(n,)}, got {np.shape(self.col_scale)}"
                )
            check_positive("col_scale", self.col_scale)
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
        f_p2: float | Float[ArrayLike, "*n"] | None = None,
        v_os: float | Float[ArrayLike, "*n"] = 0.0,
        inverter_f_p2: float | Float[ArrayLike, "*n"] | None = None,
        inverter_v_os: float | Float[ArrayLike, "*n"] | None = None,
        v_sat: float | Float[ArrayLike, "*n"] | None = None,
        slew_rate: float | Float[ArrayLike, "*n"] | None = None,
        inverter_v_sat: float | Float[ArrayLike, "*n"] | None = None,
        inverter_slew_rate: float | Float[ArrayLike, "*n"] | None = None,
        r_w: float | Float[ArrayLike, ""] | None = None,
        r_w_col: float | Float[ArrayLike, ""] | None = None,
        p_static: float | Float[ArrayLike, "*n"] | None = None,
        k_gbw: float | Float[ArrayLike, "*n"] | None = None,
        dac: DAC | None = None,
        adc: ADC | None = None,
        c_node: float | Float[ArrayLike, "*n"] | None = None,
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
        - `f_p2`: main op-amps' second pole (Hz); `None`/`inf`: single pole.
        - `v_os`: main op-amps' input offset (V), in series with the + input.
        - `inverter_f_p2`, `inverter_v_os`: the inverters' (default: same as the main; pass
          `inverter_f_p2=inf` for single-pole inverters behind two-pole main amplifiers).
        - `v_sat`, `slew_rate`: main op-amps' output rail (V) and slew-rate limit (V/s), scalar
          or per amplifier; `None` (default): linear. `inverter_v_sat`,
          `inverter_slew_rate`: the inverters' (default: the main ones). Either makes the
          circuit nonlinear (see [`amcdyn.OpAmp`][]): simulate it with [`amcdyn.simulate`][].
        - `r_w`: wire resistance (Ω, >= 0) of every row-line segment between neighbouring
          cells (and of every column-line segment unless `r_w_col` is given); `None` (default):
          ideal crossbar. See `amcdyn._wires` for the geometry.
        - `r_w_col`: column-line segment resistance (Ω); default `r_w` (0 if only it is given).
        - `p_static`, `k_gbw`: static power model of every op-amp (W, W/Hz); default
          [`amcdyn.OpAmp`][]'s.
        - `dac`, `adc`: an [`amcdyn.DAC`][] quantizing $b$ (in volts) and an
          [`amcdyn.ADC`][] quantizing the output voltages before decoding; `None`: ideal.
        - `c_node`: parasitic capacitance (F, > 0) from each row's summing node to ground,
          scalar or per row; the node voltage becomes a state relaxing at $S_i/C$ (an extra
          pole in the loop). `None` (default): no capacitance. Not with `r_w`.

        **Raises:** `ValueError` naming the argument for wrong shapes, non-finite entries,
        non-positive `g0`/`a0`/`f_gbw`/`f_p2`, non-finite `v_os`, negative `r_w`, or an
        unknown option.
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
        opts = _amp_options(
            n,
            f_p2=f_p2,
            v_os=v_os,
            p_static=p_static,
            k_gbw=k_gbw,
            inverter_f_p2=inverter_f_p2,
            inverter_v_os=inverter_v_os,
            v_sat=v_sat,
            slew_rate=slew_rate,
            inverter_v_sat=inverter_v_sat,
            inverter_slew_rate=inverter_slew_rate,
        )
        r_w, r_w_col = _wire_options(r_w, r_w_col)
        if c_node is not None:
            _check_per_amp("c_node", c_node, n)
            check_positive("c_node", c_node)
            if r_w is not None:
                raise ValueError(
                    "`c_node` with `r_w` is not supported: the wired crossbar's terminal "
                    "admittance couples the row nodes (use one or the other)"
                )
            c_node = jnp.asarray(c_node)
        # Decided on the argument as given: inside a trace, `jnp.asarray` of a NumPy constant
        # is a tracer, and the inverters of a nonnegative matrix would be built for nothing.
        topology = inverters
        if is_concrete(a) and not np.any(np.asarray(a) < 0):
            topology = "none"
        a = jnp.asarray(a)
        b = jnp.asarray(b)
        g0 = jnp.asarray(g0)
        g_pos, g_neg = _split(a, g0)
        amp = OpAmp(a0, f_gbw, **opts["main"])
        inverter = None
        if topology == "opamp":
            inverter = OpAmp(
                a0 if inverter_a0 is None else inverter_a0,
                f_gbw if inverter_f_gbw is None else inverter_f_gbw,
                **opts["inverter"],
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
            r_w=r_w,
            r_w_col=r_w_col,
            dac=_check_converter("dac", dac, DAC),
            adc=_check_converter("adc", adc, ADC),
            c_node=c_node,
        )

    @property
    def n(self) -> int:
        return int(np.shape(self.a)[0])

    def input_current(self) -> Float[Array, " n"]:
        """Current injected into each row node at the ideal (virtual-ground) operating point (A)."""
        g = self.g0 if self.input_mode == "current" else self.g_in
        return g * _convert(self.dac, self.b * V0)

    def row_conductance(self) -> Float[Array, " n"]:
        """$S_i$: all conductance incident on row node $i$ (S)."""
        s = jnp.sum(self.g_pos, axis=1)
        if self.inverters != "none":
            s = s + jnp.sum(self.g_neg, axis=1)
        if self.input_mode == "voltage":
            s = s + self.g_in
        return s

    def dynamics(self) -> _LoopDynamics:
        n = self.n
        if self.r_w is None:
            s = self.row_conductance()
            c = self.input_current() / s
            if self.inverters == "opamp":
                p = jnp.concatenate([self.g_pos, self.g_neg], axis=1) / s[:, None]
            else:
                g = self.g_pos if self.inverters == "none" else self.g_pos - self.g_neg
                p = g / s[:, None]
        else:
            p, c = inv_row_operator(
                self.g_pos,
                None if self.inverters == "none" else self.g_neg,
                self.input_current(),
                self.r_w,
                self.r_w_col,
                g_in=self.g_in if self.input_mode == "voltage" else None,
            )
            if self.inverters == "ideal":
                p = p[:, :n] - p[:, n:]
        # The offset v_os in series with the + input: the amplifier sees v_os - u.
        c = c - self.amp.v_os
        inv = self.inverter
        blocks = 1 + self.amp.two_pole + (0 if inv is None else 1 + inv.two_pole)
        node_rate = None
        if self.c_node is not None:
            if self.r_w is not None:
                raise ValueError("`c_node` with `r_w` is not supported")
            node_rate = self.row_conductance() / self.c_node
            blocks += 1
        return _LoopDynamics(
            p=p,
            c=c,
            w0=self.amp.w0,
            w_t=self.amp.w_t,
            inv_w0=None if inv is None else inv.w0,
            inv_w_t=None if inv is None else inv.w_t,
            n_states=n * blocks,
            n_outputs=n,
            w_p2=self.amp.w_p2,
            inv_w_p2=None if inv is None else inv.w_p2,
            inv_drive=None if inv is None else inv.w_t * inv.v_os,
            v_sat=self.amp.v_sat,
            slew_rate=self.amp.slew_rate,
            inv_v_sat=None if inv is None else inv.v_sat,
            inv_slew_rate=None if inv is None else inv.slew_rate,
            node_rate=node_rate,
            node_vos=None if node_rate is None else self.amp.v_os,
        )

    def decode(self, v):
        scale = 1.0 if self.input_mode == "current" else self.g0 / self.g_in
        x = -_convert(self.adc, v) * scale / V0
        return x if self.col_scale is None else x * self.col_scale

    def exact_solution(self):
        return solve_blocked(self.a, self.b)

    def amplifier_gbw(self):
        f = jnp.broadcast_to(self.amp.f_gbw, (self.n,))
        if self.inverter is not None:
            f = jnp.concatenate([f, jnp.broadcast_to(self.inverter.f_gbw, (self.n,))])
        return f

    def amplifier_power(self) -> Float[Array, ""]:
        """Static power of all op-amps (W): $n$ main amplifiers plus $n$ real inverters.

        Ideal inverters (`inverters="ideal"`) are not modelled and draw nothing.
        """
        p = jnp.sum(jnp.broadcast_to(self.amp.power(), (self.n,)))
        if self.inverter is not None:
            p = p + jnp.sum(jnp.broadcast_to(self.inverter.power(), (self.n,)))
        return p

    def resistive_power(self, y):
        r"""Power in the crossbar devices, the input conductances (voltage mode) and the real
        inverters' two resistors (W). Row node $u$ from KCL,
        $S u = I + G^+ V + G^- z\,[+\,G_\mathrm{in} b]$; device $(i,j)$ dissipates
        $G_{ij}(V_{\mathrm{col},j} - u_i)^2$; an inverter's node sits at $(V + z)/2$, so its
        resistors dissipate $G_\mathrm{inv}(V - z)^2/2$. Wire resistance is not included in the
        power (device voltages are those of the ideal crossbar). A current input's source
        power is not counted."""
        n = self.n
        v = y[:n]
        gp, gn = self.g_pos, self.g_neg
        if self.inverters == "opamp":
            z = y[n : 2 * n]
        elif self.inverters == "ideal":
            z = -v
        else:
            z, gn = jnp.zeros_like(v), jnp.zeros_like(gn)
        bv = _convert(self.dac, self.b * V0)
        gc = gp @ v + gn @ z  # device currents into the rows at u = 0
        if self.input_mode == "voltage":
            num = gc + self.g_in * bv
        else:
            num = gc + self.input_current()
        u = num / self.row_conductance()
        if self.c_node is not None:
            u = y[-n:]  # the node voltage is a state
        # sum_ij G_ij (c_j - u_i)^2 expanded, so that the cost is the two matvecs above.
        row_g = jnp.sum(gp, axis=1) + jnp.sum(gn, axis=1)
        p = jnp.sum(jnp.sum(gp, axis=0) * v * v) + jnp.sum(jnp.sum(gn, axis=0) * z * z)
        p = p - 2 * jnp.sum(u * gc) + jnp.sum(row_g * u * u)
        if self.input_mode == "voltage":
            p = p + jnp.sum(self.g_in * (bv - u) ** 2)
        if self.inverters == "opamp":
            p = p + jnp.sum(self.g_inv * (v - z) ** 2) / 2
        return p

    def converter_energy(self):
        return _converter_energy(self.dac, self.n, self.adc, self.n)


class _MVMDynamics(AbstractDynamics):
    decay: Float[Array, " m"]  # -J diagonal (1/s)
    drive: Float[Array, " m"]  # c (V/s)
    n_states: int = eqx.field(static=True)
    n_outputs: int = eqx.field(static=True)
    w_t: Float[Array, "*m"] | None = None  # TIAs' unity-gain frequency (rad/s)
    v_sat: Float[Array, "*m"] | None = None  # (V)
    slew_rate: Float[Array, "*m"] | None = None  # (V/s)

    @property
    def dtype(self):
        return self.decay.dtype

    @property
    def nonlinear(self):
        return self.v_sat is not None or self.slew_rate is not None

    def _field(self, y):
        return limit_rate(-self.decay * y + self.drive, y, self.v_sat, self.slew_rate, self.w_t)

    def vector_field(self, y):
        return self._field(y)[0]

    def limit_excess(self, y):
        _, rail, slew = self._field(y)
        return jnp.stack([rail, slew])

    def slew_time(self, y):
        if self.slew_rate is None:
            return jnp.zeros((), self.dtype)
        dv = jnp.abs(y) if self.v_sat is None else jnp.minimum(jnp.abs(y), self.v_sat)
        return jnp.max(dv / self.slew_rate)

    def noise_input(self):
        return jnp.diag(self.w_t * jnp.ones(self.n_states, self.dtype))

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

    which settles to $V = -(G_0/G_f) A x$. A TIA offset $v_\mathrm{os}$ (in series with its +
    input) replaces the virtual ground by $v_\mathrm{os}$, a second pole adds one internal
    state per TIA, and wire resistance (`r_w`) replaces the row equation by the exact reduction
    of the wired crossbars (`amcdyn._wires.mvm_row_operator`): $u = a V + d$,
    $\dot V = -\omega_0 V + \omega_T (v_\mathrm{os} - u)$.

    Build one with [`amcdyn.MVM.from_matrix`][].
    """

    kind: ClassVar[str] = "mvm"
    a: Float[Array, "m n"]
    x: Float[Array, " n"]
    g0: Float[Array, ""]
    g_pos: Float[Array, "m n"]
    g_neg: Float[Array, "m n"]
    g_f: Float[Array, "*m"]
    amp: OpAmp
    r_w: Float[Array, ""] | None = None  # row-line wire segment (Ω); None: ideal crossbar
    r_w_col: Float[Array, ""] | None = None  # column-line wire segment (Ω)
    dac: DAC | None = None  # quantizes x (V) before it drives the columns
    adc: ADC | None = None  # quantizes the outputs (V) before decoding

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
        f_p2: float | Float[ArrayLike, "*m"] | None = None,
        v_os: float | Float[ArrayLike, "*m"] = 0.0,
        v_sat: float | Float[ArrayLike, "*m"] | None = None,
        slew_rate: float | Float[ArrayLike, "*m"] | None = None,
        r_w: float | Float[ArrayLike, ""] | None = None,
        r_w_col: float | Float[ArrayLike, ""] | None = None,
        p_static: float | Float[ArrayLike, "*m"] | None = None,
        k_gbw: float | Float[ArrayLike, "*m"] | None = None,
        dac: DAC | None = None,
        adc: ADC | None = None,
    ) -> "MVM":
        """Map the real `(m, n)` matrix `a` to $G^\\pm = G_0 A^\\pm$ (column splitting).

        **Arguments:**

        - `a`: the matrix, shape `(m, n)`; `x`: the input vector, shape `(n,)` (units of 1 V).
        - `g0`: conductance unit (S); `g_f`: TIA feedback conductance (S), default `g0`.
        - `a0`, `f_gbw`: TIA op-amps' DC gain and gain-bandwidth (Hz); scalar or per-row.
        - `f_p2`: TIAs' second pole (Hz); `None`/`inf`: single pole.
        - `v_os`: TIAs' input offset (V), in series with the + input.
        - `v_sat`, `slew_rate`: TIAs' output rail (V) and slew-rate limit (V/s); `None`
          (default): linear. Either makes the circuit nonlinear (simulate it with
          [`amcdyn.simulate`][]).
        - `r_w`, `r_w_col`: wire segment resistances (Ω) of the row and column lines, as in
          [`amcdyn.INV.from_matrix`][]; `None`: ideal crossbar.
        - `p_static`, `k_gbw`: static power model of the TIAs (W, W/Hz).
        - `dac`, `adc`: converters on the input $x$ and on the outputs, as for INV.

        **Raises:** `ValueError` naming the argument for wrong shapes, non-finite entries,
        non-positive `g0`/`g_f`/`a0`/`f_gbw`/`f_p2`, non-finite `v_os` or negative `r_w`.
        """
        _check_matrix("a", a, square=False)
        _check_vector("x", x, np.shape(a)[1], "an MVM of this matrix")
        check_positive("g0", g0)
        if g_f is not None:
            check_positive("g_f", g_f)
        for name, value in (("a0", a0), ("f_gbw", f_gbw), ("g_f", g_f)):
            _check_per_amp(name, value, np.shape(a)[0])
        opts = _amp_options(
            np.shape(a)[0],
            f_p2=f_p2,
            v_os=v_os,
            p_static=p_static,
            k_gbw=k_gbw,
            v_sat=v_sat,
            slew_rate=slew_rate,
        )
        r_w, r_w_col = _wire_options(r_w, r_w_col)
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
            amp=OpAmp(a0, f_gbw, **opts["main"]),
            r_w=r_w,
            r_w_col=r_w_col,
            dac=_check_converter("dac", dac, DAC),
            adc=_check_converter("adc", adc, ADC),
        )

    @property
    def m(self) -> int:
        return int(np.shape(self.a)[0])

    def row_conductance(self) -> Float[Array, " m"]:
        return jnp.sum(self.g_pos + self.g_neg, axis=1)

    def dynamics(self) -> _MVMDynamics | _LoopDynamics:
        denom = self.row_conductance() + self.g_f
        i_in = (self.g_pos - self.g_neg) @ self.input_voltage()
        if self.r_w is None and not self.amp.two_pole:
            # Each row is one independent pole: a diagonal system.
            ones = jnp.ones(self.m, denom.dtype)
            decay = self.amp.w0 * ones + self.amp.w_t * self.g_f / denom
            drive = -self.amp.w_t * i_in / denom + self.amp.w_t * self.amp.v_os
            return _MVMDynamics(
                decay=decay,
                drive=drive,
                n_states=self.m,
                n_outputs=self.m,
                w_t=self.amp.w_t,
                v_sat=self.amp.v_sat,
                slew_rate=self.amp.slew_rate,
            )
        if self.r_w is None:
            p, c = self.g_f / denom, i_in / denom  # diagonal: u = p V + c
        else:
            p, c = mvm_row_operator(
                self.g_pos, self.g_neg, self.input_voltage(), self.g_f, self.r_w, self.r_w_col
            )
        return _LoopDynamics(
            p=p,
            c=c - self.amp.v_os,
            w0=self.amp.w0,
            w_t=self.amp.w_t,
            inv_w0=None,
            inv_w_t=None,
            n_states=self.m * (1 + self.amp.two_pole),
            n_outputs=self.m,
            w_p2=self.amp.w_p2,
            v_sat=self.amp.v_sat,
            slew_rate=self.amp.slew_rate,
        )

    def decode(self, v):
        return -_convert(self.adc, v) * self.g_f / (self.g0 * V0)

    def exact_solution(self):
        return self.a @ self.x

    def amplifier_gbw(self):
        return jnp.broadcast_to(self.amp.f_gbw, (self.m,))

    def amplifier_power(self) -> Float[Array, ""]:
        """Static power of the $m$ TIAs (W)."""
        return jnp.sum(jnp.broadcast_to(self.amp.power(), (self.m,)))

    def input_voltage(self) -> Float[Array, " n"]:
        """Column drive voltages $x_j\\cdot 1\\,$V after the DAC (V)."""
        return _convert(self.dac, self.x * V0)

    def resistive_power(self, y):
        r"""Power in the crossbar devices and the feedback conductances (W), row nodes from
        KCL, $(S + G_f) u = (G^+ - G^-) x + G_f V$. Wire resistance is not included."""
        v = y[: self.m]
        xv = self.input_voltage()
        gpx, gnx = self.g_pos @ xv, self.g_neg @ xv
        u = (gpx - gnx + self.g_f * v) / (self.row_conductance() + self.g_f)
        # sum_ij G+_ij (x_j - u_i)^2 + G-_ij (-x_j - u_i)^2, expanded.
        p = jnp.sum((self.g_pos + self.g_neg) @ (xv * xv))
        p = p - 2 * jnp.sum(u * (gpx - gnx)) + jnp.sum(self.row_conductance() * u * u)
        return p + jnp.sum(self.g_f * (v - u) ** 2)

    def converter_energy(self):
        return _converter_energy(self.dac, np.shape(self.a)[1], self.adc, self.m)
