r"""Compressed-sensing recovery in one step: an analog LASSO with locally-competitive dynamics.

The LASSO $\min_a \tfrac12\|y - \Phi a\|_2^2 + \lambda\|a\|_1$ ($\Phi$: $m\times n$, $m < n$) is
solved by the locally-competitive algorithm (LCA, amc-physics.md §6, a template: the published
circuit is not available)

$$\tau\dot u = -u + \Phi^\top y - (\Phi^\top\Phi - I)\,a,\qquad a = T_\lambda(u),$$

whose fixed point satisfies the LASSO optimality conditions ($u - a = \Phi^\top(y - \Phi a)$ and
$u - a \in \lambda\,\partial\|a\|_1$).

**Hardware mapping** (derived here). Two crossbars store $\Phi$ as $G^\pm = G_0\Phi^\pm$
(array 1, $m\times n$) and $\Phi^\top$ (array 2, $n\times m$). Neuron op-amps $j$ ($n$, inverting
input node $\nu_j$, output $w_j = -u_j$, feedback conductance $G_L = G_0$) feed a memoryless
dead-zone element that outputs $a_j = T_\lambda(u_j) = -T_\lambda(w_j)$ and its negative (a
two-output element, ideal and instantaneous here). Array 1 is driven by $a$ (into $G^+$) and
$-a$ (into $G^-$); its rows go to $m$ TIAs (feedback $G_f = G_0$, node $\rho_i$) that also
receive the input current $-G_0 y_i$, so their outputs settle to $r = y - \Phi a$ (the residual).
Array 2 is driven by $r$ (into $G^+$) and $-r$ (into $G^-$, the TIAs' ideal inverted copies) and
feeds the neuron nodes, which also receive $G_0 a_j$. With single-pole op-amps:

$$\rho_i = \frac{\sum_j G^+_{ij}a_j - G^-_{ij}a_j + G_f r_i - G_0 y_i}{D_i},\qquad
  \dot r_i = -\omega_0 r_i + \omega_T(v_{\mathrm{os},i} - \rho_i),$$
$$\nu_j = \frac{\sum_i G^+_{ij} r_i - G^-_{ij} r_i + G_0 a_j + G_L w_j}{E_j},\qquad
  \dot w_j = -\omega_0' w_j - \omega_T'\nu_j,$$

$D_i = \sum_j(G^+_{ij} + G^-_{ij}) + G_f$ and $E_j = \sum_i(G^+_{ij} + G^-_{ij}) + G_0 + G_L$
(all conductance on each node, S). In the ideal-TIA limit ($\rho = 0$,
$r = y - \Phi a$) the neuron equation is exactly the LCA with
$\tau_j = E_j/(\omega_T' G_0) = (\|\Phi_{:,j}\|_1 + 2)/\omega_T'$: a per-neuron $\tau$ does not
move the fixed point and keeps the LCA's energy decreasing ($\dot E = -\sum_j T'(u_j)\,
(\partial E/\partial a_j)^2/\tau_j \le 0$), so the loop converges. Ideal limit of the fixed
point: $G_L w = -G_0(\Phi^\top r + a)$, i.e. $u = a + \Phi^\top(y - \Phi a)$, the LCA fixed
point. The TIA pole makes it a two-pole loop; near the fixed point it is linear with the active
set's $\Phi_S^\top\Phi_S$, so it settles at a rate $\propto\lambda_{\min}(\Phi_S^\top\Phi_S)$.

**Soft threshold.** $T$ is a smooth soft threshold of width $\delta$ (V),
$T(u) = \delta\,\mathrm{softplus}((u - \lambda)/\delta)
- \delta\,\mathrm{softplus}((-u - \lambda)/\delta)$,
which tends to $\mathrm{sign}(u)\max(|u| - \lambda, 0)$ as $\delta \to 0$ (error
$\le \delta\ln 2$, exponentially small away from $|u| = \lambda$) and keeps the circuit
differentiable. Its slope lies in $(0, 1)$, so the fixed point is the minimizer of a convex,
smoothed LASSO.

**Simulation.** The ODE is nonlinear (the dead zone), so `dynamics().steady_state()` is the
nonlinear equilibrium (Newton's method from the LASSO solution, with an implicit-function
derivative) and `dynamics().jacobian()` the linearization there. [`amcdyn.simulate`][] (the ODE
path) then gives the waveforms, settling time, error against the exact LASSO minimizer,
stability and energy. `simulate_analytic` and `simulate_expm` integrate the *linearization*
and do not apply.

**Gradients through the transient.** `jax.grad` through [`amcdyn.simulate`][] differentiates
the discrete (adaptive-step) solution. Every neuron that turns on crosses the threshold's
corner (curvature $1/\delta$, with the default $\delta = 10^{-3}\lambda$), and the step-size
controller bounds the error of the state, not of its sensitivity: at a loose `rtol` the
gradient of a transient quantity (an output before settling, the settling time) is off by
percents (measured on $m = 4$, $n = 8$: 1-3 % at `rtol` $10^{-6}$-$10^{-5}$), and central
differences of the adaptive solve are noisier still (the step sequence changes with the
parameter). Use `rtol` $\le 10^{-8}$ (or a wider `width`) for such gradients: at $10^{-10}$
they agree with converged central differences to $10^{-5}$. Once settled, the gradient of the
output equals the implicit-function derivative of the equilibrium (to $10^{-15}$) at any
`rtol` (`tests/test_cs_grad.py`).
"""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._circuits import V0, AbstractCircuit, AbstractDynamics
from ._linalg import solve
from ._opamp import OpAmp
from ._validate import check_finite, check_ndim, check_nonnegative, check_positive


WIDTH = 1e-3  # default soft-threshold width, as a fraction of lam
_FISTA_STEPS = 3000
_NEWTON_STEPS = 30


def soft_threshold(u, lam, width):
    """The smooth soft threshold $T_{\\lambda,\\delta}(u)$ of the module docstring (V)."""
    return width * (jax.nn.softplus((u - lam) / width) - jax.nn.softplus((-u - lam) / width))


@jax.jit
def lasso_solution(
    phi: Float[Array, "m n"], y: Float[Array, " m"], lam: Float[Array, ""]
) -> Float[Array, " n"]:
    r"""The exact LASSO minimizer $\arg\min_a \frac12\|y - \Phi a\|^2 + \lambda\|a\|_1$.

    FISTA (`3000` iterations, step $1/\|\Phi\|_2^2$) identifies the support $S$ and signs $s$;
    the minimizer is then the closed form $a_S = (\Phi_S^\top\Phi_S)^{-1}(\Phi_S^\top y -
    \lambda s)$, exact to rounding and differentiable in $\Phi$, $y$, $\lambda$ (for a unique
    minimizer with $\Phi_S$ of full column rank).
    """
    n = phi.shape[1]
    g = phi.T @ phi
    c = phi.T @ y
    step = 1 / jnp.linalg.norm(phi, 2) ** 2

    def prox(v):
        return jnp.sign(v) * jnp.maximum(jnp.abs(v) - step * lam, 0)

    def body(_, carry):
        a, z, t = carry
        a_new = prox(z - step * (g @ z - c))
        t_new = (1 + jnp.sqrt(1 + 4 * t**2)) / 2
        return a_new, a_new + (t - 1) / t_new * (a_new - a), t_new

    zero = jnp.zeros(n, phi.dtype)
    a, _, _ = jax.lax.fori_loop(
        0, _FISTA_STEPS, body, jax.lax.stop_gradient((zero, zero, jnp.ones((), phi.dtype)))
    )
    a = jax.lax.stop_gradient(a)
    mask = (a != 0).astype(phi.dtype)
    s = jnp.sign(a)
    m = mask[:, None] * g * mask[None, :] + jnp.diag(1 - mask)
    return mask * solve(m, mask * (c - lam * s))


def cs_problem(
    key: PRNGKeyArray, m: int, n: int, k: int, noise: float = 0.0
) -> tuple[Float[Array, "m n"], Float[Array, " n"], Float[Array, " m"]]:
    """A random compressed-sensing problem: `(phi, x, y)`.

    $\\Phi$ is Gaussian with unit-norm columns, $x$ is $k$-sparse (support uniform without
    replacement, entries $\\pm(0.5 + U(0, 0.5))$, away from 0 so the support is recoverable),
    and $y = \\Phi x + \\eta$ with $\\eta \\sim \\mathcal N(0, \\mathrm{noise}^2 I)$.

    **Arguments:** `key`; sizes `m` (measurements) <= `n` (signal length); `k` nonzeros
    (0 <= k <= n); `noise` standard deviation (>= 0, same units as $y$, V).

    **Raises:** `ValueError` for non-integer or inconsistent sizes or a negative `noise`.
    """
    for name, v in (("m", m), ("n", n), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"`{name}` must be a non-negative int, got {v!r}")
    if m < 1 or m > n:
        raise ValueError(f"`m` must satisfy 1 <= m <= n = {n}, got {m}")
    if k > n:
        raise ValueError(f"`k` must be <= n = {n}, got {k}")
    if not isinstance(noise, (int, float)) or not np.isfinite(noise) or noise < 0:
        raise ValueError(f"`noise` must be a finite number >= 0, got {noise!r}")
    k_phi, k_sup, k_val, k_sgn, k_eta = jr.split(key, 5)
    phi = jr.normal(k_phi, (m, n))
    phi = phi / jnp.linalg.norm(phi, axis=0, keepdims=True)
    support = jr.permutation(k_sup, n)[:k]
    vals = (0.5 + 0.5 * jr.uniform(k_val, (k,))) * jr.rademacher(k_sgn, (k,), phi.dtype)
    x = jnp.zeros(n, phi.dtype).at[support].set(vals)
    y = phi @ x + noise * jr.normal(k_eta, (m,), phi.dtype)
    return phi, x, y


class _LASSODynamics(AbstractDynamics):
    """State `[w (n neuron outputs) | r (m TIA outputs)]` (V); nonlinear `vector_field`,
    `steady_state` by Newton from `w_guess`, `jacobian()` at that equilibrium."""

    p1: Float[Array, "m n"]  # (G+ - G-) / D
    f1: Float[Array, " m"]  # G_f / D
    c1: Float[Array, " m"]  # -G0 y / D (V)
    p2: Float[Array, "n m"]  # (G2+ - G2-) / E
    a2: Float[Array, " n"]  # G0 / E (self term)
    l2: Float[Array, " n"]  # G_L / E
    tia_w0: Float[Array, "*m"]
    tia_wt: Float[Array, "*m"]
    tia_v_os: Float[Array, "*m"]
    nrn_w0: Float[Array, "*n"]
    nrn_wt: Float[Array, "*n"]
    nrn_v_os: Float[Array, "*n"]
    lam: Float[Array, ""]
    width: Float[Array, ""]
    y_guess: Float[Array, " states"]
    n_states: int = eqx.field(static=True)
    n_outputs: int = eqx.field(static=True)

    @property
    def dtype(self):
        return self.p1.dtype

    def vector_field(self, y):
        n = self.n_outputs
        w, r = y[:n], y[n:]
        a = -soft_threshold(w, self.lam, self.width)  # a = T(u), u = -w (T is odd)
        rho = self.p1 @ a + self.f1 * r + self.c1
        nu = self.p2 @ r + self.a2 * a + self.l2 * w
        dr = -self.tia_w0 * r + self.tia_wt * (self.tia_v_os - rho)
        dw = -self.nrn_w0 * w + self.nrn_wt * (self.nrn_v_os - nu)
        return jnp.concatenate([dw, dr])

    def jacobian_at(self, y: Float[Array, " states"]) -> Float[Array, "states states"]:
        """The Jacobian of the field at state `y` (1/s)."""
        return jax.jacfwd(self.vector_field)(y)

    def steady_state(self):
        # Newton without gradient, then one differentiable step: at convergence its
        # derivative is the implicit-function one, -J^-1 dF/dp.
        def step(_, y):
            return y - solve(self.jacobian_at(y), self.vector_field(y))

        y = jax.lax.stop_gradient(jax.lax.fori_loop(0, _NEWTON_STEPS, step, self.y_guess))
        return y - solve(self.jacobian_at(y), self.vector_field(y))

    def jacobian(self):
        """The linearization at the equilibrium `steady_state()` (1/s)."""
        return self.jacobian_at(self.steady_state())


class LASSO(AbstractCircuit):
    r"""One-step analog LASSO (compressed-sensing recovery) with LCA dynamics.

    Settles to $w = -u^*$ with $a^* = T_\lambda(u^*)$ the (smoothed) LASSO minimizer;
    [`LASSO.decode`][] returns $a = T_\lambda(-w)$. Topology, equations and the mapping of
    $\tau$ to the op-amps are in the docstring of `amcdyn._cs`. Simulate with
    [`amcdyn.simulate`][] (ODE path). Build one with [`LASSO.from_matrix`][].

    Monte Carlo: `g_pos`/`g_neg` are array 1 ($\Phi$) and `amp` the TIA bank ($m$, one per
    row of array 1); [`amcdyn.perturb_circuit`][] programs array 1 and array 2 (`g2_pos`,
    `g2_neg`, $\Phi^\top$) independently and varies the TIA offsets; the neurons keep their
    nominal values.
    """

    kind: ClassVar[str] = "cs"
    nonlinear_reason: ClassVar[str] = "LASSO's soft threshold"

    @property
    def nonlinear(self) -> bool:
        return True

    a: Float[Array, "m n"]
    b: Float[Array, " m"]
    lam: Float[Array, ""]
    width: Float[Array, ""]
    g0: Float[Array, ""]
    g_pos: Float[Array, "m n"]
    g_neg: Float[Array, "m n"]
    g2_pos: Float[Array, "n m"]
    g2_neg: Float[Array, "n m"]
    g_f: Float[Array, ""]
    g_l: Float[Array, ""]
    amp: OpAmp
    neuron: OpAmp

    def __check_init__(self):
        m, n = np.shape(self.a)
        for name, shape in (
            ("g_pos", (m, n)),
            ("g_neg", (m, n)),
            ("g2_pos", (n, m)),
            ("g2_neg", (n, m)),
        ):
            g = getattr(self, name)
            if np.shape(g) != shape:
                raise ValueError(f"`{name}` must have shape {shape}, got {np.shape(g)}")
            check_nonnegative(name, g)
        for name in ("amp", "neuron"):
            if getattr(self, name).f_p2 is not None:
                raise ValueError(f"`{name}` must be a single-pole OpAmp (f_p2=None) for LASSO")

    @classmethod
    def from_matrix(
        cls,
        a: Float[ArrayLike, "m n"],
        b: Float[ArrayLike, " m"],
        lam: float | Float[ArrayLike, ""],
        *,
        width: float | Float[ArrayLike, ""] | None = None,
        g0: float | Float[ArrayLike, ""] = 1e-4,
        a0: float | Float[ArrayLike, ""] = 1e5,
        f_gbw: float | Float[ArrayLike, ""] = 1e8,
        neuron_a0: float | Float[ArrayLike, ""] | None = None,
        neuron_f_gbw: float | Float[ArrayLike, ""] | None = None,
    ) -> "LASSO":
        """Map $\\Phi$ to both arrays ($G_0\\Phi^\\pm$, $G_0\\Phi^{\\top\\pm}$), $G_f = G_L = G_0$.

        **Arguments:**

        - `a`: the sensing matrix $\\Phi$, shape `(m, n)` (dimensionless).
        - `b`: the measurements $y$, shape `(m,)` (units of 1 V; they enter as $-G_0 y$).
        - `lam`: the LASSO weight $\\lambda > 0$ (V): the dead zone's half-width.
        - `width`: the soft threshold's smoothing width $\\delta$ (V, > 0); default
          $10^{-3}\\lambda$.
        - `g0`: conductance unit (S).
        - `a0`, `f_gbw`: the TIAs' op-amps; `neuron_a0`, `neuron_f_gbw`: the neurons' (default:
          the TIAs'). Scalars.

        **Raises:** `ValueError` naming the argument for a non-2-D or non-finite `a`, `b` of the
        wrong length or non-finite, non-positive `lam`/`width`/`g0`/`a0`/`f_gbw`.
        """
        check_ndim("a", a, 2)
        m, n = np.shape(a)
        if m == 0 or n == 0:
            raise ValueError(f"`a` must not be empty, got shape {(m, n)}")
        check_finite("a", a)
        check_ndim("b", b, 1)
        if np.shape(b)[0] != m:
            raise ValueError(f"`b` has length {np.shape(b)[0]}, but `a` has {m} rows")
        check_finite("b", b)
        for name, value in (
            ("lam", lam),
            ("width", width),
            ("g0", g0),
            ("a0", a0),
            ("f_gbw", f_gbw),
            ("neuron_a0", neuron_a0),
            ("neuron_f_gbw", neuron_f_gbw),
        ):
            if value is None:
                continue
            if np.ndim(value) != 0:
                raise ValueError(f"`{name}` must be a scalar, got shape {np.shape(value)}")
            check_positive(name, value, allow_inf=name in ("a0", "neuron_a0"))
        a, b, g0 = jnp.asarray(a), jnp.asarray(b), jnp.asarray(g0)
        lam = jnp.asarray(lam, dtype=a.dtype)
        width = WIDTH * lam if width is None else jnp.asarray(width, dtype=a.dtype)
        g_pos, g_neg = g0 * jnp.maximum(a, 0), g0 * jnp.maximum(-a, 0)
        return cls(
            a=a,
            b=b,
            lam=lam,
            width=width,
            g0=g0,
            g_pos=g_pos,
            g_neg=g_neg,
            g2_pos=g_pos.T,
            g2_neg=g_neg.T,
            g_f=g0,
            g_l=g0,
            amp=OpAmp(a0, f_gbw),
            neuron=OpAmp(
                a0 if neuron_a0 is None else neuron_a0,
                f_gbw if neuron_f_gbw is None else neuron_f_gbw,
            ),
        )

    @property
    def sizes(self) -> tuple[int, int]:
        """`(m, n)`: measurements (TIAs) and signal length (neurons)."""
        m, n = np.shape(self.a)
        return int(m), int(n)

    def dynamics(self) -> _LASSODynamics:
        m, n = self.sizes
        d = jnp.sum(self.g_pos + self.g_neg, axis=1) + self.g_f
        e = jnp.sum(self.g2_pos + self.g2_neg, axis=1) + self.g0 + self.g_l
        # Initial guess for the equilibrium: the ideal fixed point of the exact LASSO answer,
        # u = a + Phi^T (y - Phi a), r = y - Phi a (no gradient: only a starting point).
        a_star = jax.lax.stop_gradient(self.exact_solution())
        phi = jax.lax.stop_gradient(self.a)
        r0 = jax.lax.stop_gradient(self.b) - phi @ a_star
        guess = jnp.concatenate([-(a_star + phi.T @ r0), r0])
        return _LASSODynamics(
            p1=(self.g_pos - self.g_neg) / d[:, None],
            f1=self.g_f / d,
            c1=-self.g0 * self.b * V0 / d,
            p2=(self.g2_pos - self.g2_neg) / e[:, None],
            a2=self.g0 / e,
            l2=self.g_l / e,
            tia_w0=self.amp.w0,
            tia_wt=self.amp.w_t,
            tia_v_os=self.amp.v_os,
            nrn_w0=self.neuron.w0,
            nrn_wt=self.neuron.w_t,
            nrn_v_os=self.neuron.v_os,
            lam=self.lam,
            width=self.width,
            y_guess=guess,
            n_states=n + m,
            n_outputs=n,
        )

    def decode(self, v):
        return -soft_threshold(v, self.lam, self.width) / V0

    def exact_solution(self):
        return lasso_solution(self.a, self.b, self.lam)

    def time_constants(self) -> Float[Array, " n"]:
        """The LCA time constants $\\tau_j = E_j/(\\omega_T' G_0)$ of the neurons (s)."""
        e = jnp.sum(self.g2_pos + self.g2_neg, axis=1) + self.g0 + self.g_l
        return e / (self.neuron.w_t * self.g0)

    def amplifier_gbw(self):
        m, n = self.sizes
        return jnp.concatenate(
            [jnp.broadcast_to(self.neuron.f_gbw, (n,)), jnp.broadcast_to(self.amp.f_gbw, (m,))]
        )

    def amplifier_power(self) -> Float[Array, ""]:
        """Static power of the $n$ neuron op-amps and $m$ TIAs (W); the dead-zone elements
        and the TIAs' inverted copies are not counted."""
        m, n = self.sizes
        p = jnp.sum(jnp.broadcast_to(self.neuron.power(), (n,)))
        return p + jnp.sum(jnp.broadcast_to(self.amp.power(), (m,)))
