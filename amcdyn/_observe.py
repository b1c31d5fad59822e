"""A diffrax solver wrapper that measures settling while the ODE is integrated.

Saving a dense waveform to find the last exit from the settling band costs more than the solve
itself when thousands of circuits are batched. Instead, at every accepted step this wrapper
evaluates the step's dense interpolant at `substeps` + 1 points and keeps, in the solver
state, (i) the integral of the squared deviation (Simpson's rule), (ii) the largest deviation,
and (iii) the deviations at the sub-points of the last step in which any output was outside the
band. After the solve, `SettleObserver.t_last` finds the last exit from the band within that
step. diffrax discards the solver state of rejected steps, so only accepted steps contribute.
"""

import functools
from typing import Any

import diffrax as dfx


try:
    from diffrax import use_stepsize_tol as _USE_STEPSIZE_TOL
except ImportError:  # diffrax 0.7.x keeps it in a private module
    from diffrax._root_finder import use_stepsize_tol as _USE_STEPSIZE_TOL
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


class Crossing(eqx.Module):
    """The last accepted step with a sub-point outside the band (`found`: there is one)."""

    found: Any  # bool
    t0: Float[Array, ""]
    t1: Float[Array, ""]
    dev: Float[Array, " points"]  # max_i |v_i - v*_i| / fs at the step's sub-points


class Track(eqx.Module):
    integral: Float[Array, ""]  # int sum (v - v*)^2 / fs^2 dtau
    max_dev: Float[Array, ""]  # max over the run of max_i |v_i - v*_i| / fs (no gradient)
    last: Crossing


class SettleObserver(dfx.AbstractWrappedSolver):
    solver: dfx.AbstractSolver
    n_outputs: int = eqx.field(static=True)
    v_ref: Float[Array, " outputs"]
    fs: Float[Array, ""]
    tol: Float[Array, ""]
    substeps: int = eqx.field(static=True, default=8)

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.solver.interpolation_cls

    @property
    def scan_kind(self):
        # diffrax.ForwardMode reads (and for None, rewrites) this on Runge-Kutta solvers; the
        # isinstance checks are forwarded through the wrapper, so forward it as well.
        return getattr(self.solver, "scan_kind", None)

    @property
    def root_finder(self):
        # Lets diffrax's implicit-solver tolerance plumbing see through the wrapper.
        return self.solver.root_finder

    def order(self, terms):
        return self.solver.order(terms)

    def strong_order(self, terms):
        return self.solver.strong_order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    @property
    def _theta(self):
        """The sub-points of a step, as fractions of it (NumPy)."""
        return np.arange(self.substeps + 1) / self.substeps

    def _dev(self, y):
        """max_i |d_i| / fs and sum_i d_i^2 / fs^2 of the deviations d = outputs - v*."""
        d = y[..., : self.n_outputs] - self.v_ref
        return _max_abs(d) / self.fs, jnp.sum(d * d, axis=-1) / self.fs**2

    def _interpolate_outputs(self, t0, t1, dense_info, dtype):
        """Outputs (the first `n_outputs` states) of the step's dense interpolant at its
        sub-points (the fixed fractions `_theta` of the step), in `dtype`."""
        n = self.n_outputs
        theta = self._theta
        cls = self.solver.interpolation_cls
        if set(dense_info) == {"y0", "y1", "k"}:
            # diffrax's Runge-Kutta interpolants are linear in (y0, y1, k), with coefficients
            # that depend only on the fraction of the step (k holds the stage increments, h
            # included). Evaluating the interpolant on unit vectors gives the weights w with
            # y(s) = w_0 y0 + w_1 y1 + sum_i w_(2+i) k_i; at fixed fractions they are
            # constants, and the outputs are one elementwise sum that XLA fuses (under vmap,
            # a product with the weights would be a batched dot plus two transposes).
            stages = dense_info["k"].shape[0]
            with jax.ensure_compile_time_eval():
                e = jnp.asarray(np.eye(2 + stages), dtype)
                basis = cls(t0=0.0, t1=1.0, y0=e[0], y1=e[1], k=e[2:])
                w = np.asarray(jax.vmap(basis.evaluate)(jnp.asarray(theta, dtype)))
            z = [dense_info["y0"][:n], dense_info["y1"][:n], dense_info["k"][:, :n]]
            return _weighted_sum(w, *(x.astype(dtype) for x in z))
        t0, t1 = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
        s = t0 + (t1 - t0) * jnp.asarray(theta, dtype)
        interp = cls(t0=t0, t1=t1, **dense_info)
        return jax.vmap(interp.evaluate)(s)[:, :n]

    def init(self, terms, t0, t1, y0, args):
        dev0, _ = self._dev(y0)
        dtype = dev0.dtype
        t0 = jnp.asarray(t0, dtype)
        last = Crossing(
            found=jnp.asarray(False), t0=t0, t1=t0, dev=jnp.zeros(self.substeps + 1, dtype)
        )
        return (
            self.solver.init(terms, t0, t1, y0, args),
            Track(integral=jnp.zeros((), dtype), max_dev=jax.lax.stop_gradient(dev0), last=last),
        )

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner_state, track = solver_state
        y1, y_error, dense_info, inner_state, result = self.solver.step(
            terms, t0, t1, y0, args, inner_state, made_jump
        )
        m = self.substeps
        dtype = track.integral.dtype
        t0_ = jnp.asarray(t0, dtype)
        t1_ = jnp.asarray(t1, dtype)
        h = t1_ - t0_
        dev, sq = self._dev(self._interpolate_outputs(t0, t1, dense_info, dtype))

        # Integral of the squared deviation: composite Simpson (m even) on the sub-points.
        w = np.where(np.arange(m + 1) % 2 == 1, 4.0, 2.0)
        w[0] = w[-1] = 1.0
        integral = track.integral + h / (3 * m) * jnp.sum(jnp.asarray(w, dtype) * sq)

        # The last exit from the band lies in the last step with a sub-point outside it: such a
        # step replaces the record, and `t_last` locates the exit once, after the solve.
        outside = jnp.any(dev > self.tol)
        last = jax.tree.map(
            lambda new, old: jnp.where(outside, new, old),
            Crossing(found=jnp.asarray(True), t0=t0_, t1=t1_, dev=dev),
            track.last,
        )
        # The largest deviation only flags divergence: no gradient.
        max_dev = jnp.maximum(track.max_dev, jnp.max(jax.lax.stop_gradient(dev)))
        track = Track(integral=integral, max_dev=max_dev, last=last)
        return y1, y_error, dense_info, (inner_state, track), result

    def t_last(self, track: Track):
        """The last time any output was outside the band (the start of the solve if none
        ever was: the record starts as an empty step there).

        In the recorded step: the end of the step if the deviation is still above the band
        there; otherwise the last downward crossing between sub-points, first by linear
        interpolation, then by Newton on the polynomial through the deviation at the five
        sub-points around it (exact while one output dominates and the interpolant is at most
        quartic, as Tsit5's is), kept within the bracketing sub-interval.

        Measured on 1024 of the benchmark's INV circuits (float32, rtol 1e-5) against the
        eigendecomposition, at N = 8, 16, 32, 64: largest relative error 4.6e-3, 1.7e-3,
        1.2e-3, 1.1e-3 and median 1.8e-4, 1.2e-4, 1.2e-4, 1.2e-4; regula falsi on the
        interpolant at every step (before): 4.6e-3, 1.8e-3, 6.6e-4, 8.2e-4 and 1.7e-4,
        1.1e-4, 1.1e-4, 1.1e-4. A parabola through three sub-points gives 8.5e-4 and 9.6e-4
        at N = 32 and 64, but its settling-time derivative is 1e-4 off the finite
        difference (3e-7 with five points).
        """
        c = track.last
        m = self.substeps
        dtype = c.dev.dtype
        tol = self.tol
        dev = c.dev
        above = dev > tol
        cross = above[:-1] & ~above[1:]
        kk = jnp.clip(jnp.max(jnp.where(cross, jnp.arange(m), -1)), 0, m - 1)
        dlo, dhi = dev[kk], dev[kk + 1]
        # Local coordinate u: sub-point index, relative to the first of the q points used.
        q = min(5, m + 1)
        j0 = jnp.clip(kk - (q - 1) // 2, 0, m + 1 - q)
        ulo = (kk - j0).astype(dtype)
        u = ulo + (dlo - tol) / jnp.where(dlo > dhi, dlo - dhi, 1)
        vals = jax.lax.dynamic_slice(dev, (j0,), (q,)) - tol
        for _ in range(3):
            p, dp = _lagrange(vals, u)
            u = jnp.clip(jnp.where(dp < 0, u - p / jnp.where(dp < 0, dp, -1), u), ulo, ulo + 1)
        tc = c.t0 + (c.t1 - c.t0) * (j0.astype(dtype) + u) / m
        t = jnp.where(above[-1], c.t1, tc)
        return jnp.where(c.found, t, c.t0)

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _weighted_sum(w, y0, y1, k):
    """w[:, 0] y0 + w[:, 1] y1 + sum_i w[:, 2 + i] k_i for constant weights w (NumPy).

    The value is one elementwise sum that XLA fuses. Its derivative is written as products
    with the weights, whose transpose is again a product: the transpose of the elementwise
    sum is a fusion that XLA:CPU evaluates with every stage's reduction repeated for every
    element of the padded cotangent (measured 79 us per step for 256 circuits at N = 16).
    """
    v = w[:, :1] * y0[None] + w[:, 1:2] * y1[None]
    for i in range(k.shape[0]):
        v = v + w[:, 2 + i, None] * k[i][None]
    return v


@_weighted_sum.defjvp
def _weighted_sum_jvp(w, primals, tangents):
    dy0, dy1, dk = tangents
    wj = jnp.asarray(w, dy0.dtype)
    t = jnp.outer(wj[:, 0], dy0) + jnp.outer(wj[:, 1], dy1) + jnp.tensordot(wj[:, 2:], dk, axes=1)
    return _weighted_sum(w, *primals), t


def _max_abs(d):
    """max_i |d_i| over the last axis."""
    return _max_last(jnp.abs(d))


@jax.custom_jvp
def _max_last(a):
    return jnp.max(a, axis=-1)


@_max_last.defjvp
def _max_last_jvp(primals, tangents):
    # `jnp.max`'s own derivative spreads the tangent over the entries equal to the maximum,
    # dividing by their count. When XLA computes the operand twice (forward and backward,
    # rounded differently) no entry may be equal, and 0/0 gives NaN gradients (measured with
    # `--xla_backend_optimization_level=0`). A tree of pairwise `jnp.maximum` selects by
    # comparison and never divides; it is used for the derivative only, since it is slower
    # than the reduction (measured 3.6 us per circuit at N = 16; `argmax`, 9 us).
    (a,), (ta,) = primals, tangents
    _, t = jax.jvp(_tree_max, (a,), (ta,))
    return jnp.max(a, axis=-1), t


def _tree_max(a):
    while a.shape[-1] > 1:
        h = a.shape[-1] // 2
        m = jnp.maximum(a[..., :h], a[..., h : 2 * h])
        a = jnp.concatenate([m, a[..., 2 * h :]], axis=-1) if a.shape[-1] % 2 else m
    return a[..., 0]


def _lagrange(vals, u):
    """The polynomial through (j, vals[j]), j = 0..len(vals)-1, and its derivative, at u."""
    nodes = [float(j) for j in range(len(vals))]  # Python floats: weakly typed
    p = jnp.zeros_like(u)
    dp = jnp.zeros_like(u)
    for i, xi in enumerate(nodes):
        others = [xj for xj in nodes if xj != xi]
        den = float(np.prod([xi - xj for xj in others]))
        prod, dprod = jnp.ones_like(u), jnp.zeros_like(u)
        for xj in others:
            dprod = dprod * (u - xj) + prod
            prod = prod * (u - xj)
        p = p + vals[i] * prod / den
        dp = dp + vals[i] * dprod / den
    return p, dp


class StopWhenSettled(dfx.AbstractStepSizeController):
    """Wraps a step-size controller to end the solve after the first accepted step that ends
    with every state within `band` of `y_ref`, when `certified` says no state's deviation can
    grow again.

    The end is reported as `diffrax.RESULTS.event_occurred`, as a `diffrax.Event` would be:
    diffrax then leaves its loop and keeps the step's end as the final time. (An `Event`
    carries the last step's dense output in the loop state, which measured 20 % slower
    gradients at N = 16; a solver's own result is overwritten by the controller's.)
    """

    controller: dfx.AbstractStepSizeController
    y_ref: Float[Array, " states"]
    band: Float[Array, ""]
    certified: Any  # bool

    def wrap(self, direction):
        return eqx.tree_at(lambda c: c.controller, self, self.controller.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        return self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, state):
        out = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, state
        )
        keep_step, result = out[0], out[-1]
        y1 = jax.lax.stop_gradient(y1_candidate[: self.y_ref.shape[0]])
        inside = jnp.max(jnp.abs(y1 - self.y_ref)) <= self.band
        done = keep_step & self.certified & inside & (result == dfx.RESULTS.successful)
        return out[:-1] + (dfx.RESULTS.where(done, dfx.RESULTS.event_occurred, result),)


def resolve_implicit_tolerances(solver: Any, controller: Any) -> Any:
    """Give an implicit solver's root finder the controller's rtol/atol before wrapping it.

    diffrax does this itself for unwrapped implicit solvers (`use_stepsize_tol`).
    """
    if not isinstance(solver, dfx.AbstractImplicitSolver):
        return solver
    rf = solver.root_finder
    names = [a for a in ("rtol", "atol", "norm") if getattr(rf, a, None) is _USE_STEPSIZE_TOL]
    if not names:
        return solver
    if not isinstance(controller, dfx.AbstractAdaptiveStepSizeController):
        raise ValueError(
            "An implicit `solver` with a fixed step needs explicit root-finder tolerances"
        )
    return eqx.tree_at(
        lambda s: tuple(getattr(s.root_finder, a) for a in names),
        solver,
        tuple(getattr(controller, a) for a in names),
    )
