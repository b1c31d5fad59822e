r"""EGV: the dominant-eigenvector circuit (amc-physics.md §5), with op-amp rails.

**Topology.** One crossbar stores $A = A^+ - A^-$ as $G^\pm = G_0 A^\pm$. Row $i$ feeds the
inverting input (node $u_i$) of a TIA with feedback conductance $G_\lambda = \lambda G_0$ and
output $y_i$. Unity inverters (two resistors $1/G_0$, or ideal) give $V = -y$, which drives the
columns of $G^+$; $G^-$ is driven by $y$ directly (it already is $-V$), so no extra inverters.
There is no input: the feedback is positive. An optional conductance
$G_{b,i} = \max_k R_k - R_i$ from each row node to ground ($R_i = \sum_j (G^+_{ij} +
G^-_{ij})$) makes every node's total conductance the same (`balance=True`, the default; see
below why). With $S_i = R_i + G_\lambda + G_{b,i}$ (S),

$$u_i = \frac{\sum_j G^+_{ij} V_j + \sum_j G^-_{ij} y_j + G_\lambda y_i}{S_i},$$
$$\dot y_i = \rho(y_i)\,\bigl[-\omega_0 y_i + \omega_T (v_{\mathrm{os},i} - u_i)\bigr],$$
$$\dot V_i = \rho(V_i)\,\bigl[-\omega_0' V_i
  + \omega_T'(v'_{\mathrm{os},i} - (y_i + V_i)/2)\bigr],$$

with the smooth rail factor $\rho(v) = 1 - v^2/v_\mathrm{sat}^2$. This is the single-pole op-amp
whose output is $v_\mathrm{sat}\tanh(x/v_\mathrm{sat})$ of its internal integrator state $x$
($\dot y = \mathrm{sech}^2(x/v_\mathrm{sat})\,\dot x = \rho(y)\,\dot x$), written in the output
coordinate, with the finite-gain leak $-\omega_0$ acting on the output (the physical output
stage) so a railed amplifier has no internal wind-up. For $|y| \ll v_\mathrm{sat}$ it is the
linear amcdyn op-amp; the rails $\pm v_\mathrm{sat}$ are equilibria of each amplifier, stable
when its bracket pushes outward.

**Ideal limit.** $u = 0$, $V = -y$: $(G^+ - G^-)V = G_\lambda V$, i.e. $AV = \lambda V$. A nonzero
steady state of the linear circuit needs $\lambda$ to be an eigenvalue; otherwise the mode
along eigenvector $k$ grows when $\lambda_k > \lambda$ and decays when $\lambda_k < \lambda$.

**Growth rate** (derived here; checked against the eigenvalues of `dynamics().jacobian()` in
`tests/test_egv.py`). Ideal inverters: the linearization at rest is

$$J = -\omega_0 I + \omega_T G_0\, S^{-1}(A - \lambda I),$$

so with uniform $S_i = s$ (balanced rows) mode $k$ grows at exactly
$\sigma_k = \omega_T G_0(\lambda_k - \lambda)/s - \omega_0$. For general $S$, first-order
perturbation of the null vector of $S^{-1}(A - \lambda_1 I)$ (right eigenvector $v_1$, left
eigenvector $w_1$ of $A$) gives
$\sigma_1 \approx \omega_T G_0(\lambda_1 - \lambda)\kappa - \omega_0$ with
$\kappa = w_1^\top v_1 / (w_1^\top S v_1)$. Op-amp inverters add a pole: for $A \ge 0$ and
uniform $S$ each mode is exactly the 2x2 loop

$$\begin{pmatrix}\dot y\\ \dot V\end{pmatrix} = \begin{pmatrix}-\omega_0 - \alpha & -p_k\\
  -\gamma & -\omega_0' - \gamma\end{pmatrix}\begin{pmatrix}y\\ V\end{pmatrix},\quad
  \alpha = \omega_T G_\lambda\kappa,\ p_k = \omega_T G_0\lambda_k\kappa,\ \gamma = \omega_T'/2,$$

whose larger root is $\sigma_k$; to first order
$\sigma_k \approx (\lambda_k/\lambda - 1)/(1/\alpha + 1/\gamma)$, the "sum over stages of
$1/(\omega_T\beta_s)$" rule with $\beta_\mathrm{TIA} = G_\lambda/S$, $\beta_\mathrm{inv} = 1/2$.
For signed $A$ with op-amp inverters ($G^-$ bypasses the inverter) the same formula is the
first-order estimate. The growth is therefore proportional to the mismatch $\lambda_1 - \lambda$.

**Why balance the rows.** In the linear phase the growing direction is the dominant
eigenvector of $S^{-1}(A - \lambda I)$, which is $v_1$ only when $S$ is uniform (or
$\lambda = \lambda_1$): without balancing, the direction error is $O(\lambda_1 - \lambda)$ already
before the rails. With balancing it is exactly $v_1$ (ideal inverters).

**At the rails.** The largest component reaches $\pm v_\mathrm{sat}$ first and stays there; the
others obey the linear equations with it as a source, $(\lambda - A_{rr})V_r = A_{ri}V_i$, which
$v_1$ solves exactly when $\lambda = \lambda_1$. So the read-out direction has an error
$O((\lambda_1 - \lambda)/(\lambda - \lambda_1(A_{rr})))$: a smaller mismatch is more accurate and
slower. The remaining subsystem is stable when $\lambda > \lambda_1(A_{rr})$ (true for a
positive $A$ and $\lambda$ close to $\lambda_1$, by Perron–Frobenius interlacing).

[`simulate_egv`][amcdyn._egv.simulate_egv] integrates this nonlinear ODE from a small seed
state (in hardware: noise and offsets), finds the railed equilibrium by Newton's method from the
final state, and reports the growth, the time to the rail and the read-out eigenvector.
`amcdyn.simulate` treats the EGV as `unstable` (its rest point is, by design).
"""

import math
from typing import ClassVar, Literal

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Complex, Float, Int

from ._circuits import AbstractCircuit, AbstractDynamics
from ._linalg import solve
from ._opamp import OpAmp
from ._simulate import _eig, _rel_error
from ._solution import RESULTS, Solution
from ._validate import check_finite, check_ndim, check_nonnegative, check_positive, is_concrete


V_SAT = 1.0  # default rail (V): outputs are read normalized, so only ratios to it matter
V_INIT = 1e-3  # default seed (V) on every TIA output: the noise/offset floor growth starts from
# Default lam: this fraction of the gap lambda_1 - max(Re lambda_2, lambda_1(A_rr)) below
# lambda_1 (A_rr: A without the first component to rail). Read-out error ~ 0.2 x MISMATCH.
MISMATCH = 0.01
_NEWTON_STEPS = 30


def _unit_sign_fixed(v):
    """`v / ||v||_2` with its largest-magnitude entry made positive (differentiable a.e.)."""
    v = v / jnp.linalg.norm(v)
    k = jnp.argmax(jnp.abs(v))
    return v * jnp.sign(v[k])


def dominant_eigenpair(a: Float[Array, "n n"]) -> tuple[Float[Array, ""], Float[Array, " n"]]:
    """The eigenvalue of `a` with the largest real part and its unit eigenvector, sign-fixed
    (largest-magnitude entry positive); real parts. Differentiable (custom eig derivative)."""
    lam, vec = _eig(a)
    k = jnp.argmax(lam.real)
    return lam[k].real, _unit_sign_fixed(vec[:, k].real)


def google_matrix(adjacency: Float[ArrayLike, "n n"], damping: float = 0.85) -> Float[Array, "n n"]:
    r"""The column-stochastic Google (PageRank) matrix of a directed graph.

    $M_{ij} = \mathrm{adj}_{ji}/\deg^+_j$ (column $j$ spreads page $j$'s rank over its out-links;
    a page without out-links spreads it uniformly), and
    $G = \alpha M + (1 - \alpha)\,\mathbf 1\mathbf 1^\top/n$. Its dominant eigenvalue is exactly 1,
    every other $|\lambda| \le \alpha$, and the dominant eigenvector (normalized to sum 1) is the
    PageRank vector.

    **Arguments:**

    - `adjacency`: `(n, n)` with `adjacency[i, j] > 0` for a link from page `i` to page `j`.
    - `damping`: $\alpha \in (0, 1)$ (default 0.85).

    **Raises:** `ValueError` for a non-square or negative `adjacency`, or `damping` outside (0, 1).
    """
    check_ndim("adjacency", adjacency, 2)
    n = np.shape(adjacency)[0]
    if np.shape(adjacency) != (n, n):
        raise ValueError(f"`adjacency` must be square, got shape {np.shape(adjacency)}")
    check_nonnegative("adjacency", adjacency)
    if not (isinstance(damping, (int, float)) and 0 < damping < 1):
        raise ValueError(f"`damping` must be a number in (0, 1), got {damping!r}")
    adj = jnp.asarray(adjacency, dtype=float)
    out = jnp.sum(adj, axis=1)
    m = jnp.where(out[None, :] > 0, adj.T / jnp.where(out > 0, out, 1)[None, :], 1.0 / n)
    return damping * m + (1 - damping) / n


class _EGVDynamics(AbstractDynamics):
    """The EGV's ODE (module docstring). State `[y (n TIA outputs) | V (n inverter outputs,
    op-amp inverters only)]`. `vector_field` includes the rails; `jacobian()` is the
    linearization at rest (the linear small-signal model)."""

    gp: Float[Array, "n n"]  # G+ / S
    gn: Float[Array, "n n"]  # G- / S
    gl: Float[Array, " n"]  # G_lambda / S
    w0: Float[Array, "*n"]
    w_t: Float[Array, "*n"]
    v_os: Float[Array, "*n"]
    inv_w0: Float[Array, "*n"] | None
    inv_w_t: Float[Array, "*n"] | None
    inv_v_os: Float[Array, "*n"] | None
    v_sat: Float[Array, ""]
    n_states: int = eqx.field(static=True)
    n_outputs: int = eqx.field(static=True)

    @property
    def dtype(self):
        return self.gp.dtype

    def _rail(self, v):
        return 1 - (v / self.v_sat) ** 2

    def vector_field(self, y):
        n = self.n_outputs
        t = y[:n]
        v = -t if self.inv_w_t is None else y[n:]
        u = self.gp @ v + self.gn @ t + self.gl * t
        dt = self._rail(t) * (-self.w0 * t + self.w_t * (self.v_os - u))
        if self.inv_w_t is None:
            return dt
        dv = self._rail(v) * (-self.inv_w0 * v + self.inv_w_t * (self.inv_v_os - (t + v) / 2))
        return jnp.concatenate([dt, dv])

    def jacobian_at(self, y: Float[Array, " states"]) -> Float[Array, "states states"]:
        """The Jacobian of the nonlinear field at state `y` (1/s)."""
        return jax.jacfwd(self.vector_field)(y)

    def jacobian(self):
        # At rest the rail factor is 1 and its derivative 0: this is the linear model.
        return self.jacobian_at(jnp.zeros(self.n_states, self.dtype))


def _check_lam_vs_spectrum(a, lam):
    """Concrete checks on the spectrum: real, simple dominant eigenvalue above `lam`."""
    ev = np.linalg.eigvals(np.asarray(a, dtype=float))
    order = np.argsort(-ev.real)
    l1 = ev[order[0]]
    scale = max(np.max(np.abs(ev)), 1e-300)
    if abs(l1.imag) > 1e-9 * scale:
        raise ValueError(
            f"`a` has a complex dominant eigenvalue {l1}: EGV needs a real one (e.g. a "
            "symmetric or a positive matrix)"
        )
    l2 = ev[order[1]].real if len(ev) > 1 else -np.inf
    # The read-out is accurate only while the non-railed subsystem is stable: lam must stay
    # above lambda_1 of A without the row/column of the first component to rail.
    if len(ev) > 1:
        w, vec = np.linalg.eig(np.asarray(a, dtype=float))
        k = int(np.argmax(np.abs(vec[:, order[0]])))
        sub = np.delete(np.delete(np.asarray(a, dtype=float), k, 0), k, 1)
        l_sub = float(np.max(np.linalg.eigvals(sub).real))
    else:
        l_sub = -np.inf
    if len(ev) > 1 and l1.real - l2 <= 1e-9 * scale:
        raise ValueError(
            f"`a` has no dominant eigenvalue gap (lambda_1 = {l1.real}, next real part {l2}): "
            "the eigenvector is not unique"
        )
    if l1.real <= 0:
        raise ValueError(
            f"`a` has a dominant eigenvalue {l1.real} <= 0: G_lambda = lam G0 must be positive, "
            "so shift the matrix (c I + A) first"
        )
    if lam is not None and is_concrete(lam) and float(np.asarray(lam)) >= l1.real:
        raise ValueError(
            f"`lam` = {float(np.asarray(lam))} must be below the dominant eigenvalue "
            f"{l1.real} of `a`, otherwise no mode grows"
        )
    return float(l1.real), max(float(l2), l_sub)


class EGV(AbstractCircuit):
    r"""Dominant eigenvector in one step: the outputs grow along $v_1$ until the rails.

    The circuit, its equations, growth rate and read-out accuracy are in the docstring of
    `amcdyn._egv`. The observed outputs are the TIA outputs $y$; [`EGV.decode`][] returns the
    unit vector $y/\|y\|$ with its largest-magnitude entry positive, to be compared with the
    same normalization of the dominant eigenvector (`exact_solution`). Simulate it with
    [`simulate_egv`][amcdyn._egv.simulate_egv]. Build one with [`EGV.from_matrix`][].
    """

    kind: ClassVar[str] = "egv"
    simulator: ClassVar[str | None] = "simulate_egv"  # growth to the rails, by design
    nonlinear_reason: ClassVar[str] = "EGV's output rails"

    @property
    def nonlinear(self) -> bool:
        return True

    a: Float[Array, "n n"]
    lam: Float[Array, ""]
    g0: Float[Array, ""]
    g_pos: Float[Array, "n n"]
    g_neg: Float[Array, "n n"]
    g_lambda: Float[Array, "*n"]
    g_bal: Float[Array, " n"]
    g_inv: Float[Array, ""]
    v_sat: Float[Array, ""]
    v_init: Float[Array, " n"]
    amp: OpAmp
    inverter: OpAmp | None
    inverters: Literal["opamp", "ideal"] = eqx.field(static=True)

    def __check_init__(self):
        shape = np.shape(self.a)
        for name in ("g_pos", "g_neg"):
            g = getattr(self, name)
            if np.shape(g) != shape:
                raise ValueError(f"`{name}` must have shape {shape}, got {np.shape(g)}")
            check_nonnegative(name, g)
        check_nonnegative("g_bal", self.g_bal)
        check_positive("g_lambda", self.g_lambda)
        check_positive("v_sat", self.v_sat)
        if self.inverters not in ("opamp", "ideal"):
            raise ValueError(f"`inverters` must be 'opamp' or 'ideal', got {self.inverters!r}")
        if (self.inverter is None) != (self.inverters == "ideal"):
            raise ValueError("`inverter` must be an OpAmp exactly when inverters='opamp'")
        for name in ("amp", "inverter"):
            amp = getattr(self, name)
            if amp is not None and amp.f_p2 is not None:
                raise ValueError(f"`{name}` must be a single-pole OpAmp (f_p2=None) for EGV")

    @classmethod
    def from_matrix(
        cls,
        a: Float[ArrayLike, "n n"],
        *,
        lam: float | Float[ArrayLike, ""] | None = None,
        g0: float | Float[ArrayLike, ""] = 1e-4,
        a0: float | Float[ArrayLike, ""] = 1e5,
        f_gbw: float | Float[ArrayLike, ""] = 1e8,
        inverters: Literal["opamp", "ideal"] = "opamp",
        inverter_a0: float | Float[ArrayLike, ""] | None = None,
        inverter_f_gbw: float | Float[ArrayLike, ""] | None = None,
        v_sat: float | Float[ArrayLike, ""] = V_SAT,
        v_init: float | Float[ArrayLike, " n"] = V_INIT,
        balance: bool = True,
    ) -> "EGV":
        """Map $A$ to $G^\\pm = G_0 A^\\pm$ and $\\lambda$ to $G_\\lambda = \\lambda G_0$.

        **Arguments:**

        - `a`: the real square matrix $A$ (dimensionless), with a real, simple, positive
          dominant eigenvalue $\\lambda_1$ (checked when concrete).
        - `lam`: the set eigenvalue $\\lambda < \\lambda_1$ (dimensionless). Default
          $\\lambda_1 - 0.05(\\lambda_1 - \\mathrm{Re}\\,\\lambda_2)$ (needs a concrete `a`).
          Smaller mismatch $\\lambda_1 - \\lambda$: slower growth, more accurate direction.
        - `g0`: conductance unit (S).
        - `a0`, `f_gbw`: DC gain and gain-bandwidth (Hz) of the TIAs (scalars).
        - `inverters`: `"opamp"` (single-pole unity inverters, resistors $1/G_0$) or `"ideal"`.
        - `inverter_a0`, `inverter_f_gbw`: the inverters' op-amps (default: the TIAs').
        - `v_sat`: output rail of every op-amp (V, > 0; default 1 V).
        - `v_init`: the seed (V): initial TIA outputs (scalar: the same on every TIA; default
          1 mV), with the inverters at $-$`v_init`. In hardware noise and offsets do this.
        - `balance`: add $G_{b,i}$ to ground so every row node has the same total conductance
          (the growing direction is then exactly $v_1$; see the module docstring).

        **Raises:** `ValueError` naming the argument for a non-square or non-finite `a`, a
        complex, repeated or non-positive dominant eigenvalue, `lam >= lambda_1` or
        `lam <= 0`, non-positive `g0`/`a0`/`f_gbw`/`v_sat`, `v_init` of the wrong shape or
        with `|v_init| >= v_sat`, or an unknown option.
        """
        check_ndim("a", a, 2)
        n = np.shape(a)[0]
        if np.shape(a) != (n, n) or n == 0:
            raise ValueError(f"`a` must be a non-empty square matrix, got shape {np.shape(a)}")
        check_finite("a", a)
        if lam is not None:
            if np.ndim(lam) != 0:
                raise ValueError(f"`lam` must be a scalar, got shape {np.shape(lam)}")
            check_positive("lam", lam)
        if is_concrete(a):
            l1, l2 = _check_lam_vs_spectrum(a, lam)
            if lam is None:
                gap = l1 - l2 if np.isfinite(l2) else l1
                lam = l1 - MISMATCH * min(gap, l1)
        elif lam is None:
            raise ValueError("`lam` must be given when `a` is traced (the default needs eig(a))")
        if inverters not in ("opamp", "ideal"):
            raise ValueError(f"`inverters` must be 'opamp' or 'ideal', got {inverters!r}")
        check_positive("g0", g0)
        for name, value in (("a0", a0), ("f_gbw", f_gbw), ("v_sat", v_sat)):
            if np.ndim(value) != 0:
                raise ValueError(f"`{name}` must be a scalar, got shape {np.shape(value)}")
        check_positive("a0", a0, allow_inf=True)
        check_positive("f_gbw", f_gbw)
        check_positive("v_sat", v_sat)
        if np.ndim(v_init) not in (0, 1) or (np.ndim(v_init) == 1 and np.shape(v_init) != (n,)):
            raise ValueError(
                f"`v_init` must be a scalar or have shape ({n},), got {np.shape(v_init)}"
            )
        check_finite("v_init", v_init)
        if is_concrete(v_init) and is_concrete(v_sat):
            if np.any(np.abs(np.asarray(v_init, dtype=float)) >= float(v_sat)):
                raise ValueError(f"`v_init` must lie inside the rails |v| < v_sat = {v_sat}")
            if np.all(np.asarray(v_init) == 0):
                raise ValueError("`v_init` must not be all zero: nothing would grow from rest")
        a = jnp.asarray(a)
        g0 = jnp.asarray(g0)
        lam = jnp.asarray(lam, dtype=a.dtype)
        g_pos, g_neg = g0 * jnp.maximum(a, 0), g0 * jnp.maximum(-a, 0)
        rows = jnp.sum(g_pos + g_neg, axis=1)
        g_bal = jnp.max(rows) - rows if balance else jnp.zeros_like(rows)
        amp = OpAmp(a0, f_gbw)
        inverter = None
        if inverters == "opamp":
            inverter = OpAmp(
                a0 if inverter_a0 is None else inverter_a0,
                f_gbw if inverter_f_gbw is None else inverter_f_gbw,
            )
        return cls(
            a=a,
            lam=lam,
            g0=g0,
            g_pos=g_pos,
            g_neg=g_neg,
            g_lambda=lam * g0,
            g_bal=g_bal,
            g_inv=g0,
            v_sat=jnp.asarray(v_sat, dtype=a.dtype),
            v_init=jnp.broadcast_to(jnp.asarray(v_init, dtype=a.dtype), (n,)),
            amp=amp,
            inverter=inverter,
            inverters=inverters,
        )

    @property
    def n(self) -> int:
        return int(np.shape(self.a)[0])

    def row_conductance(self) -> Float[Array, " n"]:
        """$S_i$: all conductance on row node $i$ (S)."""
        return jnp.sum(self.g_pos + self.g_neg, axis=1) + self.g_lambda + self.g_bal

    def dynamics(self) -> _EGVDynamics:
        s = self.row_conductance()
        inv = self.inverter
        n = self.n
        ones = jnp.ones(n, s.dtype)
        return _EGVDynamics(
            gp=self.g_pos / s[:, None],
            gn=self.g_neg / s[:, None],
            gl=self.g_lambda * ones / s,
            w0=self.amp.w0,
            w_t=self.amp.w_t,
            v_os=self.amp.v_os,
            inv_w0=None if inv is None else inv.w0,
            inv_w_t=None if inv is None else inv.w_t,
            inv_v_os=None if inv is None else inv.v_os,
            v_sat=self.v_sat,
            n_states=n if inv is None else 2 * n,
            n_outputs=n,
        )

    def initial_state(self) -> Float[Array, " states"]:
        """The seed state (V): TIAs at `v_init`, inverters at `-v_init`."""
        if self.inverter is None:
            return self.v_init
        return jnp.concatenate([self.v_init, -self.v_init])

    def decode(self, v):
        return _unit_sign_fixed(v)

    def exact_solution(self):
        return dominant_eigenpair(self.a)[1]

    def growth_rate(self) -> Float[Array, ""]:
        """The closed-form growth rate $\\sigma_1$ (1/s) of the dominant mode at rest (module
        docstring): exact for balanced rows with ideal inverters, or with op-amp inverters and
        $A \\ge 0$; first order in $\\lambda_1 - \\lambda$ otherwise."""
        lam, vec = _eig(self.a)
        lam_t, vec_l = _eig(self.a.T)
        k = jnp.argmax(lam.real)
        kl = jnp.argmax(lam_t.real)
        l1, v1, w1 = lam[k].real, vec[:, k].real, vec_l[:, kl].real
        kappa = (w1 @ v1) / (w1 @ (self.row_conductance() * v1))
        amp = self.amp
        if self.inverter is None:
            return amp.w_t * self.g0 * (l1 - self.lam) * kappa - amp.w0
        alpha = amp.w_t * self.g_lambda * kappa
        p = amp.w_t * self.g0 * l1 * kappa
        gamma = self.inverter.w_t / 2
        tr = -(amp.w0 + alpha + self.inverter.w0 + gamma)
        det = (amp.w0 + alpha) * (self.inverter.w0 + gamma) - p * gamma
        return tr / 2 + jnp.sqrt(tr**2 / 4 - det)

    def amplifier_gbw(self):
        f = jnp.broadcast_to(self.amp.f_gbw, (self.n,))
        if self.inverter is not None:
            f = jnp.concatenate([f, jnp.broadcast_to(self.inverter.f_gbw, (self.n,))])
        return f

    def amplifier_power(self) -> Float[Array, ""]:
        """Static power of the $n$ TIAs and $n$ real inverters (W)."""
        p = jnp.sum(jnp.broadcast_to(self.amp.power(), (self.n,)))
        if self.inverter is not None:
            p = p + jnp.sum(jnp.broadcast_to(self.inverter.power(), (self.n,)))
        return p

    def resistive_power(self, y):
        """Power in the crossbar, $G_\\lambda$, the balance conductances and the inverters'
        resistors (W) at state `y`, row nodes from KCL (not the virtual ground)."""
        n = self.n
        t = y[:n]
        v = -t if self.inverter is None else y[n:]
        s = self.row_conductance()
        u = (self.g_pos @ v + self.g_neg @ t + self.g_lambda * t) / s
        p = jnp.sum(self.g_pos * (v[None, :] - u[:, None]) ** 2)
        p = p + jnp.sum(self.g_neg * (t[None, :] - u[:, None]) ** 2)
        p = p + jnp.sum(self.g_lambda * (t - u) ** 2) + jnp.sum(self.g_bal * u**2)
        if self.inverter is not None:
            p = p + jnp.sum(self.g_inv * (t - v) ** 2) / 2
        return p


class EGVSolution(eqx.Module):
    """What [`simulate_egv`][amcdyn._egv.simulate_egv] returns: every field of
    [`amcdyn.Solution`][] (same names and units; `v_steady` is the railed equilibrium,
    `solution` the read-out unit eigenvector, `eigenvalues`/`stable` describe that equilibrium)
    plus:

    - `growth_rate`: the largest real part of the eigenvalues of the linearization at rest
      (1/s); `growth_rate_predicted`: the closed form `EGV.growth_rate()` (1/s).
    - `time_to_rail`: first time $\\max_i|y_i| \\ge$ `rail_frac`$\\,v_\\mathrm{sat}$ (s; inf if
      never).
    - `direction_settling_time`: last time the read-out direction $y/\\|y\\|$ is more than
      `tol` (max norm) from its final value (s).
    - `eigenvalue`: the dominant eigenvalue $\\lambda_1$ of $A$; `lam`: the set one.
    """

    ts: Float[Array, " times"]
    vs: Float[Array, "times outputs"]
    v_final: Float[Array, " outputs"]
    v_steady: Float[Array, " outputs"]
    solution: Float[Array, " outputs"]
    exact: Float[Array, " outputs"]
    rel_error: Float[Array, ""]
    bits: Float[Array, ""]
    settling_time: Float[Array, ""]
    settle_integral: Float[Array, ""]
    t_max: Float[Array, ""]
    tol: Float[Array, ""]
    eigenvalues: Complex[Array, " states"] | None
    max_real_eig: Float[Array, ""]
    slowest_time_constant: Float[Array, ""]
    oscillatory: Bool[Array, ""]
    stable: Bool[Array, ""]
    result: RESULTS
    num_steps: Int[Array, ""]
    power: Float[Array, ""]
    energy: Float[Array, ""]
    growth_rate: Float[Array, ""]
    growth_rate_predicted: Float[Array, ""]
    time_to_rail: Float[Array, ""]
    direction_settling_time: Float[Array, ""]
    eigenvalue: Float[Array, ""]
    lam: Float[Array, ""]
    # Whether an output came within 10 % of its rail (by design, when it settles); EGV models
    # no slew limit.
    rail_hit: Bool[Array, ""] = eqx.field(default_factory=lambda: jnp.asarray(False))
    slew_hit: Bool[Array, ""] = eqx.field(default_factory=lambda: jnp.asarray(False))

    status = Solution.status
    status_text = Solution.status_text
    status_names = Solution.status_names

    def summary(self) -> dict:
        """[`amcdyn.Solution.summary`][] plus the EGV numbers."""
        f = lambda x: float(np.asarray(x))
        out = Solution.summary(self)
        out.update(
            growth_rate_per_s=f(self.growth_rate),
            growth_rate_predicted_per_s=f(self.growth_rate_predicted),
            time_to_rail_s=f(self.time_to_rail),
            direction_settling_time_s=f(self.direction_settling_time),
            eigenvalue=f(self.eigenvalue),
            lam=f(self.lam),
        )
        return out


def _last_crossing(ts, dev, tol):
    """Last time `dev` (on the grid `ts`) is above `tol`, linearly interpolated to the crossing
    (0 if never above, `ts[-1]` if still above at the end)."""
    n = ts.shape[0]
    above = dev > tol
    k = jnp.max(jnp.where(above, jnp.arange(n), -1))
    kk = jnp.clip(k, 0, n - 2)
    d0, d1 = dev[kk], dev[kk + 1]
    frac = jnp.clip((d0 - tol) / jnp.where(d0 != d1, d0 - d1, 1), 0, 1)
    t = ts[kk] + frac * (ts[kk + 1] - ts[kk])
    return jnp.where(k < 0, ts[0], jnp.where(k == n - 1, ts[-1], t))


def _first_crossing(ts, level, threshold):
    """First time `level` reaches `threshold` (interpolated); inf if never."""
    n = ts.shape[0]
    hit = level >= threshold
    k = jnp.min(jnp.where(hit, jnp.arange(n), n))
    kk = jnp.clip(k, 1, n - 1)
    l0, l1 = level[kk - 1], level[kk]
    frac = jnp.clip((threshold - l0) / jnp.where(l1 != l0, l1 - l0, 1), 0, 1)
    t = ts[kk - 1] + frac * (ts[kk] - ts[kk - 1])
    return jnp.where(k >= n, jnp.inf, jnp.where(k == 0, ts[0], t))


def _newton(dyn, y0, v_sat):
    """The equilibrium of the nonlinear field near `y0`: Newton iterations without gradient,
    then one differentiable step (whose derivative is the implicit-function derivative
    $-J^{-1}\\partial F/\\partial p$ at convergence)."""
    f = dyn.vector_field
    jac = dyn.jacobian_at
    lim = v_sat * (1 - 1e-12)

    def step(_, y):
        y = y - solve(jac(y), f(y))
        # A rail is a root of its own equation whatever the rest does: keep iterates inside.
        return jnp.clip(y, -lim, lim)

    ys = jax.lax.stop_gradient(jax.lax.fori_loop(0, _NEWTON_STEPS, step, y0))
    return ys - solve(jac(ys), f(ys))


def simulate_egv(
    circuit: EGV,
    *,
    tol: float | Float[Array, ""] = 1e-3,
    t_max: float | Float[Array, ""] | None = None,
    rail_frac: float = 0.9,
    solver: dfx.AbstractSolver = dfx.Kvaerno5(),
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    adjoint: dfx.AbstractAdjoint = dfx.RecursiveCheckpointAdjoint(),
    n_save: int = 513,
    max_steps: int = 16384,
    throw: bool = True,
) -> EGVSolution:
    r"""Integrate the EGV from its seed state through the growth to the rails.

    The nonlinear ODE (rails included) is solved with diffrax in the scaled time
    $\tau = \omega_\mathrm{ref} t$, saving `n_save` uniform points. The railed equilibrium
    $y^*$ is found by Newton's method from the final state. Status:

    - `settled`: the outputs reached the rail and stay within
      $\pm\varepsilon\max|v_\mathrm{steady}|$ of the railed equilibrium from `settling_time`
      on (which also bounds the direction error by about $2\varepsilon$);
    - `not_settled`: not within the band by `t_max` (no growth: $\lambda \ge \lambda_1$,
      or `t_max` too short);
    - `unstable`: the railed equilibrium is unstable (the outputs keep moving);
    - `nonfinite`, `max_steps` as for [`amcdyn.simulate`][].

    `rel_error` is $\|\hat v - v_1\|/\|v_1\|$ of the unit, sign-fixed read-out against
    `numpy`-style `eig`'s dominant eigenvector (same normalization). Energy: amplifier power x
    settling time plus the resistive energy up to it (the integral, interpolated on the grid).

    **Arguments:**

    - `circuit`: an [`EGV`][amcdyn._egv.EGV].
    - `tol`: relative settling band $\varepsilon$ (default 1e-3).
    - `t_max`: end time (s). Default $(\ln(v_\mathrm{sat}/\max|v_\mathrm{init}|) +
      1.5\ln(10/\varepsilon))/\sigma$ with $\sigma$ the growth rate of the linearization at
      rest (or $10^3/\omega_\mathrm{ref}$ when nothing grows).
    - `rail_frac`: the fraction of $v_\mathrm{sat}$ that defines `time_to_rail` (in (0, 1)).
    - `solver`: a diffrax solver (default `Kvaerno5`: the growth is slow next to the op-amp
      poles, a stiff problem). `stepsize_controller`: default
      `PIDController(rtol=1e-2 tol, atol=1e-2 tol v_sat)`. `adjoint`, `max_steps` as for
      `amcdyn.simulate`.
    - `n_save`: saved points (>= 16): the settling and rail times are interpolated on them.
    - `throw`: raise unless `settled`.

    **Returns:** an [`EGVSolution`][amcdyn._egv.EGVSolution].
    """
    if not isinstance(circuit, EGV):
        raise ValueError(f"`circuit` must be an EGV, got {type(circuit).__name__}")
    check_positive("tol", tol)
    if is_concrete(tol) and np.any(np.asarray(tol) >= 1):
        raise ValueError(f"`tol` must be < 1 (a relative band), got {tol!r}")
    if t_max is not None:
        check_positive("t_max", t_max)
    if not isinstance(rail_frac, (int, float)) or not 0 < rail_frac < 1:
        raise ValueError(f"`rail_frac` must be a number in (0, 1), got {rail_frac!r}")
    if not isinstance(n_save, int) or n_save < 16:
        raise ValueError(f"`n_save` must be an int >= 16, got {n_save!r}")
    return _simulate_egv(
        circuit,
        jnp.asarray(tol),
        None if t_max is None else jnp.asarray(t_max),
        float(rail_frac),
        solver,
        stepsize_controller,
        adjoint,
        n_save,
        max_steps,
        throw,
    )


@eqx.filter_jit
def _simulate_egv(
    circuit, tol, t_max, rail_frac, solver, controller, adjoint, n_save, max_steps, throw
):
    dyn = circuit.dynamics()
    dtype = dyn.dtype
    tol = tol.astype(dtype)
    n = dyn.n_outputs
    v_sat = circuit.v_sat
    w_ref = jax.lax.stop_gradient(2 * math.pi * jnp.max(circuit.amplifier_gbw())).astype(dtype)
    lam0 = jnp.linalg.eigvals(jax.lax.stop_gradient(dyn.jacobian()))
    growth = jnp.max(lam0.real)
    y0 = circuit.initial_state()
    if t_max is None:
        seed = jnp.max(jnp.abs(circuit.v_init))
        span = jnp.log(v_sat / seed) + 1.5 * jnp.log(10 / tol)
        t_end = jnp.where(growth > 0, span / jnp.where(growth > 0, growth, 1), 1e3 / w_ref)
        t_end = jax.lax.stop_gradient(t_end)
    else:
        t_end = t_max.astype(dtype)
    t1 = t_end * w_ref
    if controller is None:
        rtol = 1e-2 * jax.lax.stop_gradient(tol)
        controller = dfx.PIDController(rtol=rtol, atol=rtol * jax.lax.stop_gradient(v_sat))

    def field(t, y, args):
        ys = y[:-1]
        return jnp.concatenate([dyn.vector_field(ys), circuit.resistive_power(ys)[None]]) / w_ref

    ts = jnp.linspace(0, 1, n_save, dtype=dtype) * t1
    sol = dfx.diffeqsolve(
        dfx.ODETerm(field),
        solver,
        jnp.zeros((), dtype),
        t1,
        None,
        jnp.concatenate([y0, jnp.zeros(1, dtype)]),
        saveat=dfx.SaveAt(ts=ts),
        stepsize_controller=controller,
        adjoint=adjoint,
        max_steps=max_steps,
        throw=False,
    )
    ts = ts / w_ref
    ys = sol.ys
    vs = ys[:, :n]
    e_int = ys[:, -1]
    y_final = ys[-1, :-1]
    v_final = y_final[:n]

    y_ss = _newton(dyn, y_final, v_sat)
    v_ss = y_ss[:n]
    fs = jnp.max(jnp.abs(v_ss))
    fs_safe = jnp.where(fs > 0, fs, v_sat)
    lam_ss = jnp.linalg.eigvals(jax.lax.stop_gradient(dyn.jacobian_at(y_ss)))
    maxre = jnp.max(lam_ss.real)
    slow = jnp.argmax(lam_ss.real)
    stable = maxre < -1e-9 * w_ref
    tau_slow = jnp.where(stable, -1 / maxre, jnp.inf)
    osc = jnp.abs(lam_ss[slow].imag) > 1e-6 * jnp.abs(lam_ss[slow])

    dev = jnp.max(jnp.abs(vs - v_ss[None, :]), axis=1) / fs_safe
    t_settle = _last_crossing(ts, dev, tol)
    d_ss = circuit.decode(v_ss)
    dirs = jax.vmap(circuit.decode)(jnp.where(jnp.any(vs != 0, axis=1)[:, None], vs, 1.0))
    t_dir = _last_crossing(ts, jnp.max(jnp.abs(dirs - d_ss[None, :]), axis=1), tol)
    t_rail = _first_crossing(ts, jnp.max(jnp.abs(vs), axis=1), rail_frac * v_sat)
    integral = jnp.trapezoid(jnp.sum((vs - v_ss[None, :]) ** 2, axis=1), ts) / fs_safe**2

    x = circuit.decode(v_final)
    l1, x_exact = dominant_eigenpair(circuit.a)
    rel_error, bits = _rel_error(x, x_exact)
    finite = (
        jnp.all(jnp.isfinite(ys)) & jnp.all(jnp.isfinite(y_ss)) & jnp.all(jnp.isfinite(x_exact))
    )
    railed = fs >= rail_frac * v_sat
    result = RESULTS.where(
        ~finite,
        RESULTS.nonfinite,
        RESULTS.where(
            sol.result == dfx.RESULTS.max_steps_reached,
            RESULTS.max_steps,
            RESULTS.where(
                railed & ~stable,
                RESULTS.unstable,
                RESULTS.where((dev[-1] > tol) | ~railed, RESULTS.not_settled, RESULTS.settled),
            ),
        ),
    )
    settled = result == RESULTS.settled
    never = (result == RESULTS.unstable) | (result == RESULTS.nonfinite)
    flag = jnp.where(never, jnp.nan, jnp.inf)
    rel_error = jnp.where(never, jnp.nan, rel_error)
    bits = jnp.where(never, jnp.nan, bits)
    power = circuit.amplifier_power().astype(dtype)
    e_settle = jnp.interp(t_settle, ts, e_int)
    energy = jnp.where(settled, power * t_settle + e_settle, flag)
    out = EGVSolution(
        ts=ts,
        vs=vs,
        v_final=v_final,
        v_steady=v_ss,
        solution=x,
        exact=x_exact,
        rel_error=rel_error,
        bits=bits,
        settling_time=jnp.where(settled, t_settle, flag),
        settle_integral=integral,
        t_max=t_end,
        tol=tol,
        eigenvalues=lam_ss,
        max_real_eig=maxre,
        slowest_time_constant=tau_slow,
        oscillatory=osc,
        stable=stable,
        result=result,
        num_steps=sol.stats["num_accepted_steps"],
        power=power,
        energy=energy,
        growth_rate=growth,
        growth_rate_predicted=circuit.growth_rate(),
        time_to_rail=t_rail,
        direction_settling_time=jnp.where(settled, t_dir, flag),
        eigenvalue=l1,
        lam=circuit.lam,
        rail_hit=jnp.isfinite(t_rail),
    )
    if throw:
        out = result.error_if(out, result != RESULTS.settled)
    return out
