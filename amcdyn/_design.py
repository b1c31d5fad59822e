r"""Gradient-based design of INV circuits: conductance mapping and amplifier gain-bandwidth.

[`design`][amcdyn._design.design] optimizes a chosen subset of an [`amcdyn.INV`][]'s design
variables with an optax optimizer, so that the circuit settles fast, precisely and frugally,
under a total amplifier-power budget, nominally or robustly over device variation:

```python
circuit = amcdyn.INV.from_matrix(a, b)
res = design(circuit, variables=("gbw_main", "gbw_inv", "col_scale"), steps=100)
res.summary()["optimized"]["settling_time_s"], res.export("design.json")
```

The settling time has many local minima in the design variables (balanced modes, and narrow
notches where a mode's amplitude at the outputs cancels); one gradient run finds the minimum
of its start's basin. [`design_multistart`][amcdyn._design.design_multistart] runs `design`
from the circuit and from a Latin hypercube of starts and keeps the best. The notches are
narrow curved valleys (log-steep across the surface where the amplitude cancels, smooth
along it): `optimizer="bfgs"` (quasi-Newton) follows them where Adam zigzags, and
`sharpen=(0.1, 0.05)` (a continuation on the surrogate's sharpness) moves from the smooth
surrogate's minimum into the sharper true notch.

**Design variables** (each an unconstrained parameter mapped into its bounds):

- `g0`: the unit conductance $G_0$ (S); log-sigmoid map so that the peak conductance
  $G_0\max|A|$ stays in the window $[g_\min, g_\max]$.
- `col_scale`: the per-column scaling $D$ (solve $(AD)y = b$, decode $x = Dy$), which moves the
  closed-loop eigenvalues; $d_j = r^{\tanh\theta_j}$, normalised so that $\max|AD| = \max|A|$
  (the overall scale of $D$ is $G_0$'s job).
- `g_offset`: a common offset $g_\mathrm{off}$ added to every device of $G^+$ and $G^-$ (S);
  sigmoid into $[0, g_\mathrm{off,max}]$.
- `g_in`: the input conductance (S, voltage input mode); log-sigmoid into the window.
- `gbw_main`, `gbw_inv`: the gain-bandwidth of each main amplifier / each inverter (Hz);
  log-sigmoid into the GBW bounds, then the power projection.

With `g0`, `col_scale` or `g_offset` the arrays are rebuilt as
$G^\pm = G_0 (AD)^\pm + g_\mathrm{off}$. The **power budget** is enforced by projection inside
the parameter map: when the amplifiers' static power $\sum_a (P_{\mathrm{static},a} +
k_a f_a)$ would exceed the budget, the gain-bandwidths being designed are scaled down by one
common factor until it is met. Every iterate is therefore feasible; the gradient along the
budget surface is the exact gradient of the projected design.

**Objective.** The settling time is replaced by a smooth surrogate, the *time outside the
band*: the exact deviation $e(t) = v(t) - v^*$ is propagated on a uniform grid over a fixed
horizon by the exact propagator $e^{hJ}$ (scaling and squaring, as `amcdyn.simulate_expm`); at
each grid point a soft maximum over outputs $\ell(t) = \frac1p\log\sum_i |e_i|^p$ is compared
with the band $\varepsilon\max|v^*|$ through a sigmoid of width $\beta$ (in $\log$ units), and
$$T_\mathrm{soft} = \int_0^{\infty} \sigma\!\Big(\frac{\ell(t) - \log(\varepsilon\max|v^*|)}
{\beta}\Big)\,dt,$$
on the grid up to the horizon $T$ and in closed form beyond it ($\ell$ extrapolated linearly
with the decay rate of the last quarter of the grid).
For a monotone decay this is the settling time up to $O(\beta/r)$ (it is the measure of the
set of times outside the band); it is smooth in every parameter, unlike the true settling time,
which jumps when the last band crossing moves from one ripple to another. The gradient is
ordinary reverse-mode through the `n_grid`-step `lax.scan` and the scaling-and-squaring
propagator (memory $O(n_\mathrm{grid}\cdot\mathrm{states})$ per sample: bounded, no ODE
adjoint needed because the circuit is linear). The steady-state error is the relative error of
the decoded equilibrium (finite gain, wire resistance, variation); the energy surrogate is
$(P_\mathrm{amp} + P_\mathrm{res}(v^*))\,T_\mathrm{soft}$.

The loss is $w_t \log T_\mathrm{soft} + w_E \log E + w_\epsilon \log_2 \epsilon_\mathrm{rel}
+ \mu\,\max(0, \log_2\epsilon_\mathrm{rel} + B)^2$ (an exterior penalty for the precision target
of $B$ bits). Robust designs replace each quantity by its mean or a quantile over fixed Monte
Carlo samples of device variation (sample-average approximation: the same draws at every
step; the final report uses fresh draws).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from ._circuits import INV
from ._devices import Variation
from ._linalg import lu_factor, lu_solve
from ._mc import perturb_circuit
from ._ngspice import default_t_stop
from ._opamp import OpAmp
from ._propagator import _THETA18, _taylor18, simulate_expm


VARIABLES = ("g0", "col_scale", "g_offset", "g_in", "gbw_main", "gbw_inv")
_FORMAT = "amcdyn.design/1"


# --------------------------------------------------------------------------------------------
# Configuration


class Objective(eqx.Module):
    r"""What the design minimizes (all terms are logs, so the weights are scale-free).

    **Arguments:**

    - `time`: weight on $\log T_\mathrm{soft}$ (the settling-time surrogate, s).
    - `energy`: weight on $\log E$, $E = (P_\mathrm{amp} + P_\mathrm{res})T_\mathrm{soft}$ (J).
    - `error`: weight on $\log_2$ of the steady-state relative error.
    - `target_bits`: precision constraint $\epsilon_\mathrm{rel} \le 2^{-B}$, by the penalty
      `penalty` $\cdot\max(0, \log_2\epsilon_\mathrm{rel} + B)^2$; `None`: no constraint.
    - `sharpness`: $\beta$, the sigmoid width of the band test in natural-log units of the
      deviation (0.25: the band edge is blurred over $\pm 28\,\%$ of the band).
    - `p`: exponent of the soft maximum over outputs.
    - `n_grid`: grid intervals of the propagated transient.
    - `horizon`: the grid spans `horizon` times amcdyn's default `t_max` of the initial
      design projected onto the power budget (the time a nominal transient needs to
      settle, with margin); beyond it a closed-form tail takes over.
    """

    time: float = 1.0
    energy: float = 0.0
    error: float = 0.0
    target_bits: float | None = None
    penalty: float = 1.0
    sharpness: float = 0.25
    p: float = 32.0
    n_grid: int = eqx.field(static=True, default=256)
    horizon: float = 1.0

    def __check_init__(self):
        for name in ("time", "energy", "error", "penalty"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {v!r}")
        if self.time == 0 and self.energy == 0 and self.error == 0 and self.target_bits is None:
            raise ValueError("`Objective` has nothing to minimize: all weights are 0")
        for name in ("sharpness", "p", "horizon"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"`{name}` must be a finite number > 0, got {v!r}")
        if self.target_bits is not None and not (
            isinstance(self.target_bits, (int, float)) and 0 < self.target_bits < 53
        ):
            raise ValueError(f"`target_bits` must be in (0, 53) or None, got {self.target_bits!r}")
        if isinstance(self.n_grid, bool) or not isinstance(self.n_grid, int) or self.n_grid < 16:
            raise ValueError(f"`n_grid` must be an int >= 16, got {self.n_grid!r}")


class Robust(eqx.Module):
    r"""Robust design over Monte Carlo samples of device-to-device variation.

    **Arguments:**

    - `samples`: number of samples (fixed draws, reused at every optimizer step).
    - `sigma`: relative variation of every conductance ([`amcdyn.Variation`][]).
    - `kind`: `"gaussian"` or `"lognormal"` ([`amcdyn.Variation`][]).
    - `quantile`: the statistic minimized: this quantile over the samples (e.g. 0.95), or
      `None` for the mean.
    - `offset_sigma`: standard deviation of a random input offset per amplifier (V), or None.
    """

    samples: int = eqx.field(static=True, default=256)
    sigma: float = 0.05
    kind: Literal["gaussian", "lognormal"] = eqx.field(static=True, default="gaussian")
    quantile: float | None = 0.95
    offset_sigma: float | None = None

    def __check_init__(self):
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 2:
            raise ValueError(f"`samples` must be an int >= 2, got {self.samples!r}")
        if not isinstance(self.sigma, (int, float)) or not (0 <= self.sigma < 1):
            raise ValueError(f"`sigma` must be a number in [0, 1), got {self.sigma!r}")
        if self.kind not in ("gaussian", "lognormal"):
            raise ValueError(f"`kind` must be 'gaussian' or 'lognormal', got {self.kind!r}")
        if self.quantile is not None and not (
            isinstance(self.quantile, (int, float)) and 0 < self.quantile < 1
        ):
            raise ValueError(f"`quantile` must be in (0, 1) or None, got {self.quantile!r}")
        if self.offset_sigma is not None and not (
            isinstance(self.offset_sigma, (int, float)) and self.offset_sigma >= 0
        ):
            raise ValueError(f"`offset_sigma` must be >= 0 (V) or None, got {self.offset_sigma!r}")


def _as_robust(robust) -> Robust | None:
    if robust is None or isinstance(robust, Robust):
        return robust
    if isinstance(robust, dict):
        unknown = set(robust) - {f.name for f in dataclasses.fields(Robust)}
        if unknown:
            raise ValueError(f"`robust` has unknown keys {sorted(unknown)}")
        return Robust(**robust)
    raise ValueError(f"`robust` must be None, a dict or an amcdyn Robust, got {robust!r}")


# --------------------------------------------------------------------------------------------
# The design problem: parameter map, smooth metrics, loss


def _log_sigmoid_map(theta, lo, hi):
    """exp(log lo + (log hi - log lo) sigmoid(theta)): a positive value within [lo, hi]."""
    return jnp.exp(jnp.log(lo) + (jnp.log(hi) - jnp.log(lo)) * jax.nn.sigmoid(theta))


def _log_sigmoid_inv(x, lo, hi, name):
    x = np.asarray(x, dtype=float)
    if np.any(x <= lo) or np.any(x >= hi):
        raise ValueError(
            f"`{name}`: the initial value(s) {x} must lie strictly inside the bounds ({lo}, {hi})"
        )
    u = (np.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return np.log(u / (1 - u))


def _per_amp(x, n):
    return jnp.broadcast_to(jnp.asarray(x), (n,))


class DesignProblem(eqx.Module):
    """The differentiable design problem built by [`make_problem`][amcdyn._design.make_problem].

    `init_params()` gives the unconstrained parameters of the initial design; `circuit(params)`
    the designed [`amcdyn.INV`][]; `loss(params)` the scalar objective; `smooth_metrics(params)`
    its ingredients. All are pure JAX functions of `params` (a dict of arrays): they work under
    `jax.jit`, `jax.vmap` and `jax.grad`.
    """

    base: INV
    objective: Objective
    robust: Robust | None
    keys: PRNGKeyArray | None
    variables: tuple[str, ...] = eqx.field(static=True)
    budget: Float[Array, ""]  # W (inf: no budget)
    g_window: tuple[float, float] = eqx.field(static=True)  # peak conductance window (S)
    g_off_max: float = eqx.field(static=True)  # S
    gbw_bounds: tuple[float, float] = eqx.field(static=True)  # Hz
    col_scale_range: float = eqx.field(static=True)
    t_horizon: Float[Array, ""]  # s
    tol: Float[Array, ""]
    squarings: int = eqx.field(static=True)  # of the grid-step propagator

    @property
    def n(self) -> int:
        return self.base.n

    def _a_max(self):
        return jnp.max(jnp.abs(self.base.a))

    def _g0_bounds(self):
        lo, hi = self.g_window
        if "g_offset" in self.variables:
            hi = hi - self.g_off_max
        return lo, hi

    def init_params(self) -> dict[str, Array]:
        """Unconstrained parameters whose image is the initial (base) circuit (offset: ~0)."""
        base, n = self.base, self.n
        a_max = float(np.max(np.abs(np.asarray(base.a))))
        p = {}
        if "g0" in self.variables:
            lo, hi = self._g0_bounds()
            p["g0"] = jnp.asarray(_log_sigmoid_inv(float(base.g0) * a_max, lo, hi, "g_window"))
        if "col_scale" in self.variables:
            p["col_scale"] = jnp.zeros(n)
        if "g_offset" in self.variables:
            # sigmoid(-8) = 3.4e-4: the offset starts at ~0 (sigmoid never reaches 0 exactly).
            p["g_offset"] = jnp.asarray(-8.0)
        if "g_in" in self.variables:
            lo, hi = self.g_window
            p["g_in"] = jnp.asarray(_log_sigmoid_inv(np.asarray(base.g_in), lo, hi, "g_window"))
        lo, hi = self.gbw_bounds
        if "gbw_main" in self.variables:
            f = np.broadcast_to(np.asarray(base.amp.f_gbw), (n,))
            p["gbw_main"] = jnp.asarray(_log_sigmoid_inv(f, lo, hi, "gbw_bounds"))
        if "gbw_inv" in self.variables:
            f = np.broadcast_to(np.asarray(base.inverter.f_gbw), (n,))
            p["gbw_inv"] = jnp.asarray(_log_sigmoid_inv(f, lo, hi, "gbw_bounds"))
        return p

    def col_scale(self, params) -> Float[Array, " n"]:
        """$D$ (dimensionless), normalised so that $\\max|AD| = \\max|A|$."""
        a = jnp.abs(self.base.a)
        d = jnp.asarray(self.col_scale_range) ** jnp.tanh(params["col_scale"])
        peak = jnp.max(jnp.max(a, axis=0) * d)
        return d * self._a_max() / peak

    def _gbw(self, params):
        """Main and inverter GBW (Hz, per amplifier) after the budget projection."""
        base, n = self.base, self.n
        lo, hi = self.gbw_bounds
        f_main = _per_amp(base.amp.f_gbw, n)
        if "gbw_main" in params:
            f_main = _log_sigmoid_map(params["gbw_main"], lo, hi)
        f_inv = None
        if base.inverter is not None:
            f_inv = _per_amp(base.inverter.f_gbw, n)
            if "gbw_inv" in params:
                f_inv = _log_sigmoid_map(params["gbw_inv"], lo, hi)
        designed = [k for k in ("gbw_main", "gbw_inv") if k in params]
        if not designed:
            return f_main, f_inv
        static, dyn_fixed, dyn_var = _power_parts(base, f_main, f_inv, designed)
        avail = self.budget - static - dyn_fixed
        # Projection onto the budget: one common factor on the designed GBWs (never up).
        scale = jnp.where(dyn_var > avail, avail / dyn_var, 1.0)
        if "gbw_main" in params:
            f_main = f_main * scale
        if "gbw_inv" in params:
            f_inv = f_inv * scale
        return f_main, f_inv

    def circuit(self, params) -> INV:
        """The designed circuit for `params`."""
        base, n = self.base, self.n
        c = base
        if {"g0", "col_scale", "g_offset"} & set(params):
            a = base.a
            g0 = base.g0
            if "g0" in params:
                lo, hi = self._g0_bounds()
                g0 = _log_sigmoid_map(params["g0"], lo, hi) / self._a_max()
            d = jnp.ones(n, a.dtype)
            if "col_scale" in params:
                d = self.col_scale(params)
            ad = a * d[None, :]
            g_off = jnp.zeros((), a.dtype)
            if "g_offset" in params:
                g_off = self.g_off_max * jax.nn.sigmoid(params["g_offset"])
            g_pos = g0 * jnp.maximum(ad, 0) + g_off
            g_neg = g0 * jnp.maximum(-ad, 0) + g_off
            c = eqx.tree_at(
                lambda c: (c.g0, c.g_pos, c.g_neg, c.col_scale),
                c,
                (g0, g_pos, g_neg, d),
                is_leaf=lambda x: x is None,
            )
        if "g_in" in params:
            lo, hi = self.g_window
            c = eqx.tree_at(lambda c: c.g_in, c, _log_sigmoid_map(params["g_in"], lo, hi))
        if "gbw_main" in params or "gbw_inv" in params:
            f_main, f_inv = self._gbw(params)
            c = eqx.tree_at(lambda c: c.amp.f_gbw, c, f_main)
            if "gbw_inv" in params:
                c = eqx.tree_at(lambda c: c.inverter.f_gbw, c, f_inv)
        return c

    def _samples(self, circuit: INV):
        """The circuit, or a batch of Monte Carlo instances of it (leading axis)."""
        r = self.robust
        if r is None:
            return circuit
        prog = Variation(r.sigma, kind=r.kind) if r.sigma > 0 else None
        return jax.vmap(
            lambda k: perturb_circuit(circuit, k, programming=prog, offset_sigma=r.offset_sigma)
        )(self.keys)

    def smooth_metrics(self, params) -> dict[str, Float[Array, "*samples"]]:
        """`time_s` (surrogate settling time, s), `rel_error` (steady state), `energy_j`
        (surrogate, J), `power_w` (amplifier power, W); one value per Monte Carlo sample when
        robust."""
        c = self.circuit(params)
        metric = lambda ci: _smooth_metrics(
            ci, self.objective, self.t_horizon, self.tol, self.squarings
        )
        if self.robust is None:
            return metric(c)
        return jax.vmap(metric)(self._samples(c))

    def loss(self, params) -> Float[Array, ""]:
        """The scalar design loss (see the module docstring)."""
        m = self.smooth_metrics(params)
        agg = _aggregate(self.robust)
        obj = self.objective
        t = agg(m["time_s"])
        err = agg(m["rel_error"])
        energy = agg(m["energy_j"])
        # Normalised by the horizon and the initial power, so the loss is O(1); constants do
        # not change the minimizer.
        t_ref = self.t_horizon
        loss = obj.time * jnp.log(t / t_ref)
        if obj.energy:
            e_ref = self.base.amplifier_power() * t_ref  # a constant of the problem
            loss = loss + obj.energy * jnp.log(energy / e_ref)
        log2_err = jnp.log2(err + 1e-300)
        if obj.error:
            loss = loss + obj.error * log2_err
        if obj.target_bits is not None:
            loss = loss + obj.penalty * jnp.maximum(log2_err + obj.target_bits, 0) ** 2
        return loss


def _aggregate(robust):
    if robust is None:
        return lambda x: x
    if robust.quantile is None:
        return jnp.mean
    # jnp.quantile sorts: its gradient goes to the (two interpolated) order statistics.
    return lambda x: jnp.quantile(x, robust.quantile)


def _power_parts(circuit: INV, f_main, f_inv, designed):
    """(static W, GBW-dependent W of fixed amplifiers, of designed amplifiers) for the linear
    power model $P = P_\\mathrm{static} + k_\\mathrm{GBW} f$."""
    n = circuit.n
    amps = [("gbw_main", circuit.amp, f_main)]
    if circuit.inverter is not None:
        amps.append(("gbw_inv", circuit.inverter, f_inv))
    static = dyn_fixed = dyn_var = 0.0
    for name, amp, f in amps:
        static = static + jnp.sum(_per_amp(amp.p_static, n))
        dyn = jnp.sum(_per_amp(amp.k_gbw, n) * f)
        if name in designed:
            dyn_var = dyn_var + dyn
        else:
            dyn_fixed = dyn_fixed + dyn
    return static, dyn_fixed, dyn_var


@jax.custom_vjp
def _solve(m, b):
    r"""$m^{-1} b$ (plain-JAX LU) with the implicit-function gradient: reverse mode solves
    with $m^\top$ (one more LU) instead of differentiating through the elimination loop."""
    lu, perm = lu_factor(m)
    return lu_solve(lu, perm, b)


def _solve_fwd(m, b):
    x = _solve(m, b)
    return x, (m, x)


def _solve_bwd(res, g):
    m, x = res
    lu, perm = lu_factor(m.T)
    lam = lu_solve(lu, perm, g)
    return -jnp.outer(lam, x), lam


_solve.defvjp(_solve_fwd, _solve_bwd)


def _expm_fixed(a, squarings: int):
    r"""$e^{a}$ by the degree-18 Taylor polynomial of $a/2^s$ (`_propagator._taylor18`) and
    $s$ squarings, $s$ fixed (static) from a bound on $\|a\|_1$ over the design space
    (`make_problem`): unlike the adaptive loop of `simulate_expm`, plain matrix products to
    differentiate."""
    phi = _taylor18(a / jnp.asarray(2.0**squarings, a.dtype))
    for _ in range(squarings):
        phi = phi @ phi
    return phi


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _propagate(k: int, phi, e0):
    r"""The trajectory $e_j = \Phi^j e_0$, $j = 0..k$, shape `(k + 1, states)`.

    Its reverse mode is written out: the adjoint recursion $\lambda_j = \bar e_j +
    \Phi^\top\lambda_{j+1}$ is a scan of matrix-vector products, and
    $\bar\Phi = \sum_j \lambda_{j+1} e_j^\top$ is one matrix product over the stored
    trajectory afterwards. (Differentiating the scan directly accumulates one outer product
    per step into $\bar\Phi$: the whole loss gradient measured about 1.5x slower at
    N = 16 with 256 samples.)
    """

    def step(e, _):
        e = phi @ e
        return e, e

    _, traj = jax.lax.scan(step, e0, None, length=k)
    return jnp.concatenate([e0[None], traj], axis=0)


def _propagate_fwd(k, phi, e0):
    traj = _propagate(k, phi, e0)
    return traj, (phi, traj)


def _propagate_bwd(k, res, g):
    phi, traj = res

    def step(lam, g_j):
        lam = g_j + phi.T @ lam
        return lam, lam

    lam0, lams = jax.lax.scan(step, g[-1], g[:-1], reverse=True)
    # lams[j] = lambda_j for j = 0..k-1; lambda_{j+1} pairs with e_j.
    lam_next = jnp.concatenate([lams[1:], g[-1:]], axis=0)
    return lam_next.T @ traj[:-1], lam0


_propagate.defvjp(_propagate_fwd, _propagate_bwd)


def _smooth_metrics(circuit: INV, objective: Objective, t_horizon, tol, squarings: int):
    """Smooth settling surrogate, steady-state error, energy surrogate and power of one INV."""
    dyn = circuit.dynamics()
    dtype = dyn.dtype
    jac = dyn.jacobian()
    y_ss = _solve(jac, -dyn.vector_field(jnp.zeros(dyn.n_states, dtype)))
    v_ss = dyn.outputs(y_ss)
    fs = jnp.max(jnp.abs(v_ss))
    # Scaled time tau = w_ref t (as the simulators do); the scale carries no gradient.
    w_ref = jax.lax.stop_gradient(2 * math.pi * jnp.max(circuit.amplifier_gbw())).astype(dtype)
    k = objective.n_grid
    h = t_horizon.astype(dtype) * w_ref / k
    phi = _expm_fixed(h * jac / w_ref, squarings)
    n_out = dyn.n_outputs

    outs = _propagate(k, phi, -y_ss)[:, :n_out]  # (k + 1, outputs)
    # log of the soft max (p-norm) over outputs, in log space so nothing under/overflows; the
    # tiny term keeps log|e| and its gradient finite where e crosses 0.
    tiny = jnp.asarray(1e-30, dtype) * fs
    log_abs = 0.5 * jnp.log(outs * outs + tiny * tiny)
    p = objective.p
    log_dev = jax.nn.logsumexp(p * log_abs, axis=1) / p
    beta = objective.sharpness
    excess = log_dev - jnp.log(tol * fs)
    outside = jax.nn.sigmoid(excess / beta)
    t_soft = (h / w_ref) * (jnp.sum(outside) - (outside[0] + outside[-1]) / 2)
    # Beyond the horizon: extrapolate log|e| linearly with the mean decay rate r of the last
    # quarter of the grid; the sigmoid integrates in closed form to beta softplus(x/beta) / r.
    # Without this tail a design slower than the horizon would see a flat loss.
    q = k // 4
    rate = (log_dev[-q - 1] - log_dev[-1]) / (q * h / w_ref)
    rate = jnp.maximum(rate, 0.1 / t_horizon.astype(dtype))
    t_soft = t_soft + beta * jax.nn.softplus(excess[-1] / beta) / rate
    x = circuit.decode(v_ss)
    x_exact = circuit.exact_solution()
    rel_error = jnp.linalg.norm(x - x_exact) / jnp.linalg.norm(x_exact)
    power = circuit.amplifier_power().astype(dtype)
    energy = (power + circuit.resistive_power(y_ss)) * t_soft + circuit.converter_energy()
    return {"time_s": t_soft, "rel_error": rel_error, "energy_j": energy, "power_w": power}


# --------------------------------------------------------------------------------------------
# Building the problem


def _check_variables(variables, circuit: INV) -> tuple[str, ...]:
    if isinstance(variables, str):
        variables = (variables,)
    try:
        variables = tuple(variables)
    except TypeError:
        raise ValueError(f"`variables` must be a sequence of names, got {variables!r}") from None
    if not variables:
        raise ValueError(f"`variables` must name at least one of {VARIABLES}")
    for v in variables:
        if v not in VARIABLES:
            raise ValueError(f"`variables`: unknown design variable {v!r}; choose from {VARIABLES}")
    if len(set(variables)) != len(variables):
        raise ValueError(f"`variables` has duplicates: {variables!r}")
    if "g_in" in variables and circuit.input_mode != "voltage":
        raise ValueError("`variables`: 'g_in' needs a circuit with input_mode='voltage'")
    if "gbw_inv" in variables and circuit.inverter is None:
        raise ValueError("`variables`: 'gbw_inv' needs real inverters (inverters='opamp')")
    if "g_offset" in variables and circuit.inverters == "none":
        raise ValueError(
            "`variables`: 'g_offset' needs a G- array (a matrix with negative entries): an "
            "offset on G+ alone would change the matrix"
        )
    return variables


def _check_pair(name, value, *, positive=True):
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(x, (int, float)) and math.isfinite(x) for x in value)
        and value[0] < value[1]
        and (not positive or value[0] > 0)
    )
    if not ok:
        raise ValueError(
            f"`{name}` must be a pair (lo, hi) of finite numbers, 0 < lo < hi; got {value!r}"
        )
    return float(value[0]), float(value[1])


def _canonical(circuit: INV) -> INV:
    """The same circuit with every leaf a strongly typed array, per-amplifier GBWs and an
    explicit (unit) column scaling: the PyTree structure and types of every designed circuit,
    so the initial and designed circuits share compiled simulations."""
    n = circuit.n
    c = circuit
    if c.col_scale is None:
        c = eqx.tree_at(lambda c: c.col_scale, c, jnp.ones(n), is_leaf=lambda x: x is None)
    c = eqx.tree_at(lambda c: c.amp.f_gbw, c, _per_amp(c.amp.f_gbw, n))
    if c.inverter is not None:
        c = eqx.tree_at(lambda c: c.inverter.f_gbw, c, _per_amp(c.inverter.f_gbw, n))
    dtype = jnp.result_type(c.a)
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(np.asarray(x), dtype) if eqx.is_inexact_array(x) else x, c
    )


def make_problem(
    circuit: INV,
    *,
    variables: Sequence[str] = ("gbw_main", "gbw_inv", "col_scale"),
    objective: Objective | None = None,
    power_budget: float | None = None,
    robust: Robust | dict | None = None,
    key: PRNGKeyArray | None = None,
    tol: float = 1e-3,
    g_window: tuple[float, float] | None = None,
    g_off_max: float | None = None,
    gbw_bounds: tuple[float, float] | None = None,
    col_scale_range: float = 10.0,
) -> DesignProblem:
    """Validate the options and build the [`DesignProblem`][amcdyn._design.DesignProblem].

    Arguments as [`design`][amcdyn._design.design].
    """
    if not isinstance(circuit, INV):
        raise ValueError(f"`circuit` must be an amcdyn.INV, got {type(circuit).__name__}")
    if np.ndim(circuit.a) != 2:
        raise ValueError(f"`circuit` must be unbatched; `a` has shape {np.shape(circuit.a)}")
    if circuit.nonlinear:
        raise ValueError(
            "`circuit` has amplifier rails or slew limits: the design loss propagates the "
            "linear model exactly, so design the linear circuit and check the result with "
            "amcdyn.simulate"
        )
    variables = _check_variables(variables, circuit)
    objective = Objective() if objective is None else objective
    if not isinstance(objective, Objective):
        raise ValueError(f"`objective` must be an amcdyn Objective, got {objective!r}")
    robust = _as_robust(robust)
    if robust is not None and key is None:
        raise ValueError("`key` is required for a robust design (the Monte Carlo draws)")
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"`tol` must be in (0, 1), got {tol!r}")
    if not (isinstance(col_scale_range, (int, float)) and 1 < col_scale_range < 1e6):
        raise ValueError(f"`col_scale_range` must be in (1, 1e6), got {col_scale_range!r}")
    a_max = float(np.max(np.abs(np.asarray(circuit.a))))
    peak = float(np.asarray(circuit.g0)) * a_max
    g_window = (peak / 100, peak * 10) if g_window is None else _check_pair("g_window", g_window)
    if g_off_max is None:
        g_off_max = 0.1 * peak
    if not (isinstance(g_off_max, (int, float)) and 0 < g_off_max < g_window[1] - peak * 1e-9):
        raise ValueError(f"`g_off_max` must be in (0, g_window[1]) (S), got {g_off_max!r}")
    f_all = np.asarray(circuit.amplifier_gbw(), dtype=float)
    if gbw_bounds is None:
        gbw_bounds = (float(f_all.min()) / 20, float(f_all.max()) * 20)
    gbw_bounds = _check_pair("gbw_bounds", gbw_bounds)

    power0 = float(np.asarray(circuit.amplifier_power()))
    if power_budget is None:
        power_budget = power0
    if (
        isinstance(power_budget, bool)
        or not isinstance(power_budget, (int, float))
        or not (power_budget > 0)
    ):
        raise ValueError(f"`power_budget` must be a number > 0 (W) or None, got {power_budget!r}")
    designed = [v for v in variables if v.startswith("gbw")]
    amps = [circuit.amp] + ([circuit.inverter] if circuit.inverter is not None else [])
    if math.isfinite(power_budget):
        if any(a.power_model is not None for a in amps) and designed:
            raise ValueError(
                "`power_budget` with designed GBW needs the linear power model "
                "P = p_static + k_gbw f_gbw (an OpAmp `power_model` is set)"
            )
        if designed:
            f_main = _per_amp(circuit.amp.f_gbw, circuit.n)
            f_inv = (
                None if circuit.inverter is None else _per_amp(circuit.inverter.f_gbw, circuit.n)
            )
            static, dyn_fixed, _ = _power_parts(circuit, f_main, f_inv, designed)
            floor = float(static + dyn_fixed)
            if power_budget <= floor * (1 + 1e-9):
                raise ValueError(
                    f"`power_budget` {power_budget:.4g} W is not above the static and fixed "
                    f"amplifier power {floor:.4g} W: no gain-bandwidth is left to design"
                )
        elif power_budget < power0 * (1 - 1e-12):
            raise ValueError(
                f"`power_budget` {power_budget:.4g} W is below the circuit's amplifier power "
                f"{power0:.4g} W and no gain-bandwidth is a design variable"
            )
    if float(np.max(np.real(np.linalg.eigvals(np.asarray(circuit.dynamics().jacobian()))))) >= 0:
        raise ValueError("`circuit`: the initial design is unstable; start from a stable one")
    keys = None
    if robust is not None:
        keys = jr.split(key, robust.samples)
    problem = DesignProblem(
        base=_canonical(circuit),
        objective=objective,
        robust=robust,
        keys=keys,
        variables=variables,
        budget=jnp.asarray(float(power_budget)),
        g_window=g_window,
        g_off_max=float(g_off_max),
        gbw_bounds=gbw_bounds,
        col_scale_range=float(col_scale_range),
        t_horizon=jnp.asarray(1.0),  # set below
        tol=jnp.asarray(float(tol)),
        squarings=0,  # set below
    )
    # The horizon: amcdyn's default t_max of the starting design *after* the budget projection
    # (a budget below the initial power slows it down).
    start = problem.circuit(problem.init_params())  # also validates the initial values
    t_horizon = objective.horizon * default_t_stop(start, tol)
    if not math.isfinite(t_horizon):
        raise ValueError("`power_budget`: the initial design projected onto it is unstable")
    # Squarings of the grid-step propagator e^{(T/k) J}: from a bound on ||J||_1 over the
    # design space. Rows of the crossbar operator are normalised by the row conductance
    # (|p_ij| <= 1), so a column of J sums to at most w_max (n + 2) with w_max the largest
    # reachable angular frequency (GBW upper bound, second poles); then the Taylor argument
    # has norm <= 1.09 (the float64 bound of the degree-18 polynomial, `_propagator._THETA18`,
    # which also covers float32), plus one squaring of margin for the wire-resistance operator.
    f_max = max(gbw_bounds[1], float(np.max(f_all)))
    for amp in amps:
        if amp.f_p2 is not None:
            f_max = max(f_max, float(np.max(np.asarray(amp.f_p2))))
    norm = t_horizon / objective.n_grid * 2 * math.pi * f_max * (circuit.n + 2)
    theta = _THETA18[np.dtype("float64")]
    squarings = max(0, math.ceil(math.log2(norm / theta))) + 1
    return dataclasses.replace(problem, t_horizon=jnp.asarray(t_horizon), squarings=squarings)


# --------------------------------------------------------------------------------------------
# Evaluation of a design (the "true" metrics) and the result


@eqx.filter_jit
def _mc_settling(circuit, keys, programming, offset_sigma, tol, t_max, n_steps):
    """(settling time, rel_error) of every perturbed instance, by the exact propagator (one
    compiled function for all designs of one structure)."""

    def one(k):
        c = perturb_circuit(circuit, k, programming=programming, offset_sigma=offset_sigma)
        s = simulate_expm(c, tol=tol, t_max=t_max, n_steps=n_steps, stability=False, throw=False)
        return s.settling_time, s.rel_error

    return jax.lax.map(one, keys)


def evaluate(
    circuit: INV,
    *,
    tol: float = 1e-3,
    n_steps: int = 1024,
    robust: Robust | dict | None = None,
    key: PRNGKeyArray | None = None,
) -> dict[str, Any]:
    """The metrics a designer reads, from a transient of `circuit`.

    Nominal: the exact-propagator transient ([`amcdyn.simulate_expm`][], `n_steps` grid
    intervals over amcdyn's default `t_max`): `settling_time_s`, `rel_error` (of the decoded
    final outputs), `rel_error_steady` (equilibrium), `power_w`, `energy_j`, `status`. With
    `robust`, also `mc_settling_p50_s`, `mc_settling_p95_s`, `mc_rel_error_p95` and
    `mc_yield` over `robust.samples` fresh draws (`key`), each simulated to twice the
    nominal `t_max`.
    """
    sol = simulate_expm(circuit, tol=tol, n_steps=n_steps, throw=False)
    x_ss = np.asarray(circuit.decode(sol.v_steady))
    x_ex = np.asarray(sol.exact)
    out = {
        "status": sol.status,
        "settling_time_s": float(sol.settling_time),
        "rel_error": float(sol.rel_error),
        "rel_error_steady": float(np.linalg.norm(x_ss - x_ex) / np.linalg.norm(x_ex)),
        "power_w": float(sol.power),
        "energy_j": float(sol.energy),
    }
    robust = _as_robust(robust)
    if robust is not None:
        if key is None:
            raise ValueError("`key` is required for a robust evaluation")
        prog = Variation(robust.sigma, kind=robust.kind) if robust.sigma > 0 else None
        t_max = jnp.asarray(2 * float(sol.t_max))
        keys = jr.split(key, robust.samples)
        ts, errs = _mc_settling(circuit, keys, prog, robust.offset_sigma, tol, t_max, n_steps // 2)
        ts, errs = np.asarray(ts), np.asarray(errs)
        ok = np.isfinite(ts)
        t_inf = np.where(np.isnan(ts), np.inf, ts)
        out.update(
            mc_samples=robust.samples,
            mc_yield=float(np.mean(ok)),
            mc_settling_p50_s=float(np.quantile(t_inf, 0.5)),
            mc_settling_p95_s=float(np.quantile(t_inf, 0.95)),
            mc_rel_error_p95=float(np.quantile(np.where(np.isnan(errs), np.inf, errs), 0.95)),
        )
    return out


def _f(x):
    a = np.asarray(x, dtype=float)
    return a.tolist()


def circuit_to_dict(circuit: INV) -> dict[str, Any]:
    """A JSON-ready description of an INV from which `circuit_from_dict` rebuilds it."""
    if circuit.dac is not None or circuit.adc is not None:
        raise ValueError("`circuit`: export of circuits with a DAC or ADC is not supported")

    def amp(a: OpAmp | None):
        if a is None:
            return None
        if a.nonlinear:
            raise ValueError(
                "`circuit`: export of an OpAmp with rails or a slew limit is not supported"
            )
        if a.power_model is not None:
            raise ValueError("`circuit`: export of an OpAmp with a `power_model` is unsupported")
        return {
            "a0": _f(a.a0),
            "f_gbw_hz": _f(a.f_gbw),
            "f_p2_hz": None if a.f_p2 is None else _f(a.f_p2),
            "v_os_v": _f(a.v_os),
            "p_static_w": _f(a.p_static),
            "k_gbw_w_per_hz": _f(a.k_gbw),
        }

    n = circuit.n
    return {
        "n": n,
        "a": _f(circuit.a),
        "b": _f(circuit.b),
        "g0_s": _f(circuit.g0),
        "g_pos_s": _f(circuit.g_pos),
        "g_neg_s": _f(circuit.g_neg),
        "g_in_s": _f(circuit.g_in),
        "g_inv_s": _f(circuit.g_inv),
        "col_scale": _f(np.ones(n) if circuit.col_scale is None else circuit.col_scale),
        "inverters": circuit.inverters,
        "input_mode": circuit.input_mode,
        "r_w_ohm": None if circuit.r_w is None else _f(circuit.r_w),
        "r_w_col_ohm": None if circuit.r_w_col is None else _f(circuit.r_w_col),
        "amp": amp(circuit.amp),
        "inverter": amp(circuit.inverter),
        "c_node_f": None if circuit.c_node is None else _f(circuit.c_node),
    }


def circuit_from_dict(d: dict[str, Any]) -> INV:
    """Rebuild the [`amcdyn.INV`][] written by `circuit_to_dict` (float64 if x64 is on)."""

    def arr(x):
        return None if x is None else jnp.asarray(np.asarray(x, dtype=float))

    def amp(a):
        if a is None:
            return None
        return OpAmp(
            arr(a["a0"]),
            arr(a["f_gbw_hz"]),
            f_p2=arr(a["f_p2_hz"]),
            v_os=arr(a["v_os_v"]),
            p_static=arr(a["p_static_w"]),
            k_gbw=arr(a["k_gbw_w_per_hz"]),
        )

    try:
        return INV(
            a=arr(d["a"]),
            b=arr(d["b"]),
            g0=arr(d["g0_s"]),
            g_pos=arr(d["g_pos_s"]),
            g_neg=arr(d["g_neg_s"]),
            g_in=arr(d["g_in_s"]),
            g_inv=arr(d["g_inv_s"]),
            amp=amp(d["amp"]),
            inverter=amp(d["inverter"]),
            inverters=d["inverters"],
            input_mode=d["input_mode"],
            r_w=arr(d["r_w_ohm"]),
            r_w_col=arr(d["r_w_col_ohm"]),
            col_scale=arr(d["col_scale"]),
            c_node=arr(d.get("c_node_f")),
        )
    except KeyError as e:
        raise ValueError(f"`path`: the design file lacks the field {e.args[0]!r}") from None


def load_design(path: str) -> INV:
    """The optimized [`amcdyn.INV`][] of a design file written by `DesignResult.export`, ready
    for [`amcdyn.simulate`][] or [`amcdyn.simulate_spice`][]."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"`path`: {path!r} is not an amcdyn design file ({_FORMAT})")
    return circuit_from_dict(data["optimized_circuit"])


def _finite_or_none(obj):
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@dataclasses.dataclass(frozen=True, eq=False)
class DesignResult:
    """What [`design`][amcdyn._design.design] returns.

    **Fields:**

    - `initial`, `optimized`: the initial and optimized [`amcdyn.INV`][] (the initial one
      with per-amplifier GBW arrays and a unit `col_scale`: the same circuit, in the
      PyTree layout of the designed one).
    - `initial_metrics`, `optimized_metrics`: `evaluate` of each (true settling time from a
      transient, `rel_error`, `power_w`, `energy_j`, ...); `{}` with `evaluate=False`.
    - `params`: the optimized unconstrained parameters; `design_values`: the physical design
      variables (G0 in S, `col_scale`, `g_offset_s`, `g_in_s`, per-amplifier GBW in Hz).
    - `history`: the loss at each step (`"bfgs"`: at each accepted iterate; with `sharpen`
      the continuation stages follow, each on its own sharpness); `best_step`: the step
      whose parameters are returned.
    - `problem`: the [`DesignProblem`][amcdyn._design.DesignProblem] (with `sharpen`: at
      the last sharpness, so `problem.loss(params)` is the final loss); `power_budget_w`.
    - `n_loss_evals`: forward+gradient evaluations, each one simulation (a propagated
      transient per Monte Carlo sample and its gradient), line-search trials and
      continuation stages included; `wall_time_s`: optimizer wall time.
    """

    initial: INV
    optimized: INV
    initial_metrics: dict
    optimized_metrics: dict
    params: dict
    design_values: dict
    history: np.ndarray
    best_step: int
    problem: DesignProblem
    power_budget_w: float
    n_loss_evals: int
    wall_time_s: float

    def summary(self) -> dict[str, Any]:
        """JSON-ready: `initial`, `optimized` (metrics), `design` (values), loss history."""
        return {
            "variables": list(self.problem.variables),
            "power_budget_w": self.power_budget_w,
            "initial": self.initial_metrics,
            "optimized": self.optimized_metrics,
            "design": self.design_values,
            "loss_initial": float(self.history[0]),
            "loss_final": float(self.history[self.best_step]),
            "steps": int(len(self.history)),
            "n_loss_evals": self.n_loss_evals,
            "wall_time_s": self.wall_time_s,
        }

    def export(self, path: str) -> None:
        """Write the design as JSON: the summary plus the full initial and optimized circuits
        (conductances `g_pos_s`, `g_neg_s`, `g_in_s`, `col_scale`, per-amplifier GBW, ...);
        `load_design(path)` rebuilds the optimized INV."""
        data = {
            "format": _FORMAT,
            **self.summary(),
            "optimized_circuit": circuit_to_dict(self.optimized),
            "initial_circuit": circuit_to_dict(self.initial),
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(_finite_or_none(data), f, indent=1, allow_nan=False)


def design_values(problem: DesignProblem, params) -> dict[str, Any]:
    """The physical values of the design variables for `params` (JSON-ready)."""
    c = problem.circuit(params)
    out: dict[str, Any] = {}
    if "g0" in params:
        out["g0_s"] = float(c.g0)
    if "col_scale" in params:
        out["col_scale"] = _f(c.col_scale)
    if "g_offset" in params:
        out["g_offset_s"] = float(problem.g_off_max * jax.nn.sigmoid(params["g_offset"]))
    if "g_in" in params:
        out["g_in_s"] = _f(c.g_in)
    f = np.asarray(c.amplifier_gbw())
    out["f_gbw_main_hz"] = _f(f[: c.n])
    if c.inverter is not None:
        out["f_gbw_inv_hz"] = _f(f[c.n :])
    out["amplifier_power_w"] = float(c.amplifier_power())
    return out


# optimizer -> optax.chain(zero_nans(), optimizer), reused, so that repeated `design` calls
# with the same optimizer object (a budget sweep) share one compiled step.
_DEFAULT_OPTIMIZER = optax.adam(0.05)
_GUARDED: dict[int, tuple[optax.GradientTransformation, optax.GradientTransformation]] = {}


def _guarded(optimizer):
    hit = _GUARDED.get(id(optimizer))
    if hit is None or hit[0] is not optimizer:
        if len(_GUARDED) > 16:
            _GUARDED.clear()
        hit = (optimizer, optax.chain(optax.zero_nans(), optimizer))
        _GUARDED[id(optimizer)] = hit
    return hit[1]


@eqx.filter_jit
def _step(problem, optimizer, params, opt_state):
    loss, grads = jax.value_and_grad(problem.loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


@eqx.filter_jit
def _value_and_grad(problem, params):
    return jax.value_and_grad(problem.loss)(params)


def _bfgs(problem, params, max_evals: int, max_step: float = 1.0):
    r"""Minimize `problem.loss` from `params` by BFGS (dense inverse-Hessian update, Armijo
    backtracking, each step capped at `max_step` in the max-norm of the unconstrained
    parameters); at most `max_evals` loss-and-gradient evaluations, line-search trials
    included.

    Returns (best params, loss at each accepted iterate, evaluations).
    """
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def vg(x):
        f, g = _value_and_grad(problem, unravel(jnp.asarray(x, flat.dtype)))
        f, g = float(f), np.asarray(jax.flatten_util.ravel_pytree(g)[0], dtype=float)
        return (f, g) if math.isfinite(f) and np.all(np.isfinite(g)) else (math.inf, g)

    x = np.asarray(flat, dtype=float)
    f, g = vg(x)
    evals, history = 1, [f]
    if not math.isfinite(f):
        return params, history, evals
    h = np.eye(x.size)
    scaled = False
    while evals < max_evals:
        d = -h @ g
        if not g @ d < 0:  # not a descent direction: restart from steepest descent
            h, scaled, d = np.eye(x.size), False, -g
        dmax = np.max(np.abs(d))
        if dmax == 0:
            break
        d = d * min(1.0, max_step / dmax)
        slope, t, accepted = g @ d, 1.0, False
        while evals < max_evals and t * np.max(np.abs(d)) > 1e-9:
            x1 = x + t * d
            f1, g1 = vg(x1)
            evals += 1
            if f1 <= f + 1e-4 * t * slope:
                accepted = True
                break
            t *= 0.3
        if not accepted:
            break
        s, y = x1 - x, g1 - g
        sy = s @ y
        if sy > 1e-12 * np.linalg.norm(s) * np.linalg.norm(y):
            if not scaled:  # Shanno-Phua scaling of the initial inverse Hessian
                h, scaled = np.eye(x.size) * (sy / (y @ y)), True
            rho = 1.0 / sy
            v = np.eye(x.size) - rho * np.outer(s, y)
            h = v @ h @ v.T + rho * np.outer(s, s)
        converged = f - f1 <= 1e-9 * (1 + abs(f)) or np.max(np.abs(g1)) <= 1e-8
        x, f, g = x1, f1, g1
        history.append(f)
        if converged:
            break
    return unravel(jnp.asarray(x, flat.dtype)), history, evals


def _sharpened(problem: DesignProblem, sharpness: float) -> DesignProblem:
    """The same problem with the surrogate's band-edge width `sharpness`, and a transient grid
    refined in proportion (`n_grid` x beta0 / beta, rounded up to a multiple of 16), so that
    the sharper band edge still spans as many grid intervals."""
    obj = problem.objective
    n_grid = 16 * math.ceil(obj.n_grid * obj.sharpness / sharpness / 16)
    return dataclasses.replace(
        problem, objective=dataclasses.replace(obj, sharpness=sharpness, n_grid=n_grid)
    )


def _check_sharpen(sharpen, objective: Objective) -> tuple[float, ...]:
    try:
        sharpen = tuple(sharpen)
    except TypeError:
        raise ValueError(f"`sharpen` must be a sequence of numbers, got {sharpen!r}") from None
    prev = objective.sharpness
    for s in sharpen:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (0 < s < prev):
            raise ValueError(
                "`sharpen` must be a decreasing sequence of sharpness values below the "
                f"objective's ({objective.sharpness}), each > 0; got {sharpen!r}"
            )
        prev = s
    return tuple(float(s) for s in sharpen)


def design(
    circuit: INV,
    *,
    variables: Sequence[str] = ("gbw_main", "gbw_inv", "col_scale"),
    objective: Objective | None = None,
    optimizer: optax.GradientTransformation | Literal["bfgs"] | None = None,
    steps: int = 100,
    power_budget: float | None = None,
    robust: Robust | dict | None = None,
    key: PRNGKeyArray | None = None,
    tol: float = 1e-3,
    g_window: tuple[float, float] | None = None,
    g_off_max: float | None = None,
    gbw_bounds: tuple[float, float] | None = None,
    col_scale_range: float = 10.0,
    evaluate_designs: bool = True,
    eval_steps: int = 1024,
    init: dict[str, Array] | None = None,
    sharpen: Sequence[float] = (),
    sharpen_steps: int = 20,
) -> DesignResult:
    r"""Optimize an INV's conductance mapping and amplifier gain-bandwidths with optax.

    **Arguments:**

    - `circuit`: the initial [`amcdyn.INV`][] (e.g. the naive `INV.from_matrix(a, b)`).
    - `variables`: the design variables, any of `"g0"`, `"col_scale"`, `"g_offset"`, `"g_in"`,
      `"gbw_main"`, `"gbw_inv"` (module docstring).
    - `objective`: an [`Objective`][amcdyn._design.Objective] (default: settling time only).
    - `optimizer`: any `optax.GradientTransformation`; default `optax.adam(0.05)`. NaN
      gradients are zeroed (`optax.zero_nans`). Or `"bfgs"`: a quasi-Newton method
      (BFGS inverse-Hessian update, Armijo backtracking line search, each step capped at 1
      in the max-norm of the unconstrained parameters), which follows the narrow curved
      valleys of the settling time (a mode's amplitude cancelling at the outputs) that
      first-order steps zigzag across; dense, so meant for up to a few hundred variables.
    - `steps`: optimizer steps (int >= 1); the parameters with the lowest loss are returned.
      With `"bfgs"`: at most `steps + 1` loss-and-gradient evaluations (line-search trials
      included); it stops earlier once a step no longer lowers the loss (relative change
      < 1e-9).
    - `sharpen`: continuation on the surrogate's sharpness after the run, e.g. `(0.1, 0.05)`:
      from the best parameters, the `"bfgs"` method (whatever `optimizer` ran first) on the
      same loss with the band-edge width
      $\beta$ (`Objective.sharpness`) set to each value in turn (decreasing, below the
      objective's), the transient grid refined in proportion (`n_grid` x
      $\beta_0/\beta$). The sharper surrogate is closer to the true settling time, whose
      minima (cancellation notches) are narrower than the smooth surrogate's; started from
      the smooth optimum, it moves into them. `()` (default): no continuation.
    - `sharpen_steps`: the evaluation budget of each continuation stage (as `steps` for
      `"bfgs"`).
    - `power_budget`: total amplifier power (W); `None`: the initial circuit's
      `amplifier_power()` (an equal-power comparison); `inf`: no budget.
    - `robust`: `None` (nominal), or a [`Robust`][amcdyn._design.Robust] / dict
      (`samples`, `sigma`, `kind`, `quantile`, `offset_sigma`); needs `key`.
    - `key`: PRNG key of the robust Monte Carlo draws (the final evaluation uses
      `fold_in(key, 1)`).
    - `tol`: relative settling band $\varepsilon$.
    - `g_window`: (g_min, g_max) window (S) of the peak conductance $G_0\max|A|$ (+ offset)
      and of `g_in`; default (peak/100, 10 peak) of the initial design.
    - `g_off_max`: largest offset (S), default 0.1 peak; `gbw_bounds`: (lo, hi) Hz, default
      (min/20, 20 max) of the initial GBWs; `col_scale_range`: $d_j \in [1/r, r]$ before
      normalisation.
    - `evaluate_designs`: simulate the initial and optimized designs for the report
      (`eval_steps` propagator intervals).
    - `init`: unconstrained starting parameters (same keys and shapes as
      `make_problem(...).init_params()`), e.g. for multi-start; default: the initial circuit.

    **Returns:** a [`DesignResult`][amcdyn._design.DesignResult].

    **Raises:** `ValueError` naming the argument for bad options (unknown variable, bounds
    that exclude the initial design, a budget below the static power, ...).
    """
    problem = make_problem(
        circuit,
        variables=variables,
        objective=objective,
        power_budget=power_budget,
        robust=robust,
        key=key,
        tol=tol,
        g_window=g_window,
        g_off_max=g_off_max,
        gbw_bounds=gbw_bounds,
        col_scale_range=col_scale_range,
    )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an int >= 1, got {steps!r}")
    sharpen = _check_sharpen(sharpen, problem.objective)
    if isinstance(sharpen_steps, bool) or not isinstance(sharpen_steps, int) or sharpen_steps < 1:
        raise ValueError(f"`sharpen_steps` must be an int >= 1, got {sharpen_steps!r}")
    if optimizer is None:
        optimizer = _DEFAULT_OPTIMIZER
    if not (optimizer == "bfgs" or isinstance(optimizer, optax.GradientTransformation)):
        raise ValueError(
            f"`optimizer` must be an optax.GradientTransformation or 'bfgs', got {optimizer!r}"
        )
    if optimizer != "bfgs":
        optimizer = _guarded(optimizer)
    params = problem.init_params()
    if init is not None:
        if not isinstance(init, dict) or set(init) != set(params):
            raise ValueError(f"`init` must be a dict with the keys {sorted(params)}")
        for k, v in init.items():
            if np.shape(v) != np.shape(params[k]) or not np.all(np.isfinite(np.asarray(v))):
                raise ValueError(
                    f"`init`[{k!r}] must be finite with shape {np.shape(params[k])}, got "
                    f"shape {np.shape(v)}"
                )
        params = {k: jnp.asarray(v, params[k].dtype) for k, v in init.items()}
    start = time.perf_counter()
    if optimizer == "bfgs":
        best, history, n_evals = _bfgs(problem, params, steps + 1)
        best_step = len(history) - 1
    else:
        best, history, best_step = _optax_run(problem, optimizer, params, steps)
        n_evals = steps + 1
    wall = time.perf_counter() - start
    result = DesignResult(
        initial=problem.base,
        optimized=problem.circuit(best),
        initial_metrics={},
        optimized_metrics={},
        params={k: np.asarray(v) for k, v in best.items()},
        design_values={},
        history=np.asarray(history),
        best_step=best_step,
        problem=problem,
        power_budget_w=float(problem.budget),
        n_loss_evals=n_evals,
        wall_time_s=wall,
    )
    if sharpen:
        result = _sharpen_result(result, sharpen, sharpen_steps)
    return _finish(result, evaluate_designs, key, tol, eval_steps)


def _optax_run(problem, optimizer, params, steps):
    """`steps` optax steps; (best params, loss history, best step)."""
    opt_state = optimizer.init(params)
    history = []
    best, best_loss, best_step = params, math.inf, 0
    for i in range(steps + 1):
        # The last pass only evaluates the loss of the final parameters.
        new_params, new_state, loss = _step(problem, optimizer, params, opt_state)
        loss = float(loss)
        history.append(loss)
        if math.isfinite(loss) and loss < best_loss:
            best, best_loss, best_step = params, loss, i
        params, opt_state = new_params, new_state
        if i == steps:
            break
    return best, history, best_step


def _sharpen_result(result: DesignResult, sharpen, sharpen_steps) -> DesignResult:
    """The continuation stages of `design(..., sharpen=...)` applied to a finished run."""
    problem, params = result.problem, {k: jnp.asarray(v) for k, v in result.params.items()}
    history, n_evals = list(result.history), result.n_loss_evals
    start = time.perf_counter()
    for beta in sharpen:
        problem = _sharpened(problem, beta)
        params, hist, ev = _bfgs(problem, params, sharpen_steps + 1)
        history += hist
        n_evals += ev
    return dataclasses.replace(
        result,
        optimized=problem.circuit(params),
        params={k: np.asarray(v) for k, v in params.items()},
        history=np.asarray(history),
        best_step=len(history) - 1,
        problem=problem,
        n_loss_evals=n_evals,
        wall_time_s=result.wall_time_s + time.perf_counter() - start,
    )


def _finish(result: DesignResult, evaluate_designs, key, tol, eval_steps) -> DesignResult:
    """Fill in the design values and (optionally) the simulated metrics of both designs."""
    problem = result.problem
    metrics0, metrics1 = {}, {}
    if evaluate_designs:
        ekey = None if key is None else jr.fold_in(key, 1)
        kw = dict(tol=tol, n_steps=eval_steps, robust=problem.robust, key=ekey)
        metrics0 = evaluate(problem.base, **kw)
        metrics1 = evaluate(result.optimized, **kw)
    params = {k: jnp.asarray(v) for k, v in result.params.items()}
    return dataclasses.replace(
        result,
        initial_metrics=metrics0,
        optimized_metrics=metrics1,
        design_values=design_values(problem, params),
    )


def _latin_starts(p0, k: int, spread: float, seed: int) -> list[dict[str, Array]]:
    """`k` starting parameter dicts shaped as `p0`: a Latin hypercube in [-spread, spread]
    (each coordinate visits each of its `k` equal strata exactly once)."""
    rng = np.random.default_rng(seed)
    dims = {name: int(np.size(v)) for name, v in p0.items()}
    # Column j of strata[name] is a permutation of 0..k-1.
    strata = {n: np.stack([rng.permutation(k) for _ in range(m)], -1) for n, m in dims.items()}
    out = []
    for i in range(k):
        init = {}
        for name, v in p0.items():
            u = (strata[name][i] + rng.uniform(size=dims[name])) / k
            init[name] = jnp.asarray((2 * u - 1) * spread, v.dtype).reshape(np.shape(v))
        out.append(init)
    return out


def design_multistart(
    circuit: INV,
    *,
    starts: int = 8,
    spread: float = 2.0,
    seed: int = 0,
    evaluate_designs: bool = True,
    sharpen: Sequence[float] = (),
    sharpen_top: int = 2,
    sharpen_steps: int = 20,
    **kwargs,
) -> DesignResult:
    r"""[`design`][amcdyn._design.design] from several starting points; the run whose best
    loss is lowest is returned.

    The settling time of a linear circuit has many local minima in its design variables (a
    mode's amplitude at the outputs can be tuned to cancel; two modes can be balanced), and
    so has the surrogate that tracks it: one gradient run finds the minimum of its basin. The
    first run starts from `circuit` itself, the others from a Latin hypercube of the
    unconstrained parameters in $[-\mathrm{spread}, \mathrm{spread}]$ (every coordinate of
    every start a separate stratum).

    **Arguments:**

    - `circuit`: the initial [`amcdyn.INV`][].
    - `starts`: number of runs (int >= 1), each of `steps + 1` loss-and-gradient evaluations.
    - `spread`: half-width of the box of unconstrained starting parameters (> 0; 2 maps, e.g.,
      a GBW to 12 %..88 % of its log range, a column scaling $d_j$ to $r^{\pm 0.96}$).
    - `seed`: seed of the Latin hypercube (NumPy).
    - `evaluate_designs`: simulate the initial and the returned design (as `design`).
    - `sharpen`, `sharpen_steps`: the sharpness continuation of `design`, applied after all
      runs to the `sharpen_top` runs with the lowest loss (int >= 1); the winner is then
      the one with the lowest loss at the last sharpness. `()`: none.
    - `**kwargs`: any other keyword argument of `design` except `init` (`variables`,
      `objective`, `optimizer`, `steps`, `power_budget`, `robust`, `key`, `tol`, ...).

    For cancellation notches of a few variables, `optimizer="bfgs"` with
    `sharpen=(0.1, 0.05)` is the combination that reaches them (`docs/design.md`, study (a)).

    **Returns:** the winning run's [`DesignResult`][amcdyn._design.DesignResult], with
    `n_loss_evals` and `wall_time_s` summed over all runs and continuation stages.

    **Raises:** `ValueError` naming the argument for bad `starts`, `spread`, `sharpen`,
    `sharpen_top` or an `init` keyword, and as `design` for the others.
    """
    if isinstance(starts, bool) or not isinstance(starts, int) or starts < 1:
        raise ValueError(f"`starts` must be an int >= 1, got {starts!r}")
    if not (isinstance(spread, (int, float)) and math.isfinite(spread) and spread > 0):
        raise ValueError(f"`spread` must be a finite number > 0, got {spread!r}")
    if "init" in kwargs:
        raise ValueError("`init`: design_multistart chooses the starting points itself")
    if isinstance(sharpen_top, bool) or not isinstance(sharpen_top, int) or sharpen_top < 1:
        raise ValueError(f"`sharpen_top` must be an int >= 1, got {sharpen_top!r}")
    if isinstance(sharpen_steps, bool) or not isinstance(sharpen_steps, int) or sharpen_steps < 1:
        raise ValueError(f"`sharpen_steps` must be an int >= 1, got {sharpen_steps!r}")
    eval_steps = kwargs.pop("eval_steps", 1024)
    runs = [design(circuit, evaluate_designs=False, **kwargs)]
    sharpen = _check_sharpen(sharpen, runs[0].problem.objective)
    for init in _latin_starts(runs[0].problem.init_params(), starts - 1, spread, seed):
        runs.append(design(circuit, init=init, evaluate_designs=False, **kwargs))

    def final_loss(r):
        loss = r.history[r.best_step]
        return loss if math.isfinite(loss) else math.inf

    n_evals = sum(r.n_loss_evals for r in runs)
    wall = sum(r.wall_time_s for r in runs)
    candidates = runs
    if sharpen:
        candidates = []
        for r in sorted(runs, key=final_loss)[:sharpen_top]:
            rs = _sharpen_result(r, sharpen, sharpen_steps)
            # The continuation's own evaluations and time (rs counts r's too).
            n_evals += rs.n_loss_evals - r.n_loss_evals
            wall += rs.wall_time_s - r.wall_time_s
            candidates.append(rs)
    best = min(candidates, key=final_loss)
    best = dataclasses.replace(best, n_loss_evals=n_evals, wall_time_s=wall)
    return _finish(best, evaluate_designs, kwargs.get("key"), kwargs.get("tol", 1e-3), eval_steps)
