"""A diffrax solver wrapper that measures settling while the ODE is integrated.

Saving a dense waveform to find the last exit from the settling band costs more than the solve
itself when thousands of circuits are batched. Instead, at every accepted step this wrapper
evaluates the step's dense interpolant at `substeps` + 1 points and keeps, in the solver
state, (i) the last time any output was outside the band (linearly interpolated between
sub-points, then refined once by regula falsi on the interpolant), and (ii) the integral of the
squared deviation (Simpson's rule). diffrax discards the solver state of rejected steps, so only
accepted steps contribute.
"""

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


class Track(eqx.Module):
    t_last: Float[Array, ""]  # last time the deviation exceeded the band (scaled time)
    integral: Float[Array, ""]  # int sum (v - v*)^2 / fs^2 dtau
    max_dev: Float[Array, ""]  # max over the run of max_i |v_i - v*_i| / fs


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

    def _dev(self, y):
        d = y[..., : self.n_outputs] - self.v_ref
        return jnp.max(jnp.abs(d), axis=-1) / self.fs, jnp.sum(d * d, axis=-1) / self.fs**2

    def _interpolate_outputs(self, t0, t1, dense_info, s, theta=None):
        """Outputs (the first `n_outputs` states) of the step's dense interpolant at times `s`.

        `theta`: the same points as fixed fractions of the step (a NumPy array), if they are.
        """
        n = self.n_outputs
        cls = self.solver.interpolation_cls
        if set(dense_info) == {"y0", "y1", "k"}:
            # diffrax's Runge-Kutta interpolants are linear in (y0, y1, k), with coefficients
            # that depend only on the fraction of the step (k holds the stage increments, h
            # included). Evaluating the interpolant on unit vectors gives the weights w with
            # y(s) = w_0 y0 + w_1 y1 + sum_i w_(2+i) k_i, and the outputs are then one small
            # product. At fixed fractions the weights are constants, and the product is one
            # matrix product over the whole batch under vmap (instead of one tiny GEMM call
            # per batch element, which is what XLA makes of a batched dot on CPU).
            stages = dense_info["k"].shape[0]
            eye = np.eye(2 + stages)
            if theta is not None:
                with jax.ensure_compile_time_eval():
                    e = jnp.asarray(eye, s.dtype)
                    basis = cls(t0=0.0, t1=1.0, y0=e[0], y1=e[1], k=e[2:])
                    w = np.asarray(jax.vmap(basis.evaluate)(jnp.asarray(theta, s.dtype)))
                k = dense_info["k"][:, :n].astype(s.dtype)
                return (
                    w[:, :1] * dense_info["y0"][None, :n].astype(s.dtype)
                    + w[:, 1:2] * dense_info["y1"][None, :n].astype(s.dtype)
                    + jnp.tensordot(w[:, 2:], k, axes=1)
                )
            eye = jnp.asarray(eye, s.dtype)
            basis = cls(t0=t0, t1=t1, y0=eye[0], y1=eye[1], k=eye[2:])
            w = jax.vmap(basis.evaluate)(s)  # (points, 2 + stages)
            z = jnp.concatenate(
                [dense_info["y0"][None, :n], dense_info["y1"][None, :n], dense_info["k"][:, :n]]
            )
            return jnp.sum(w[:, :, None] * z[None, :, :].astype(s.dtype), axis=1)
        interp = cls(t0=t0, t1=t1, **dense_info)
        return jax.vmap(interp.evaluate)(s)[:, :n]

    def init(self, terms, t0, t1, y0, args):
        dev0, _ = self._dev(y0)
        t0 = jnp.asarray(t0, dev0.dtype)
        return (
            self.solver.init(terms, t0, t1, y0, args),
            Track(t_last=t0, integral=jnp.zeros((), dev0.dtype), max_dev=dev0),
        )

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner_state, track = solver_state
        y1, y_error, dense_info, inner_state, result = self.solver.step(
            terms, t0, t1, y0, args, inner_state, made_jump
        )
        m = self.substeps
        dtype = track.integral.dtype
        t0_ = jnp.asarray(t0, dtype)
        h = jnp.asarray(t1, dtype) - t0_
        theta = np.arange(m + 1) / m
        s = t0_ + h * jnp.asarray(theta, dtype)
        v = self._interpolate_outputs(t0, t1, dense_info, s, theta)
        dev, sq = self._dev(v)
        tol = self.tol

        # Integral of the squared deviation: composite Simpson (m even) on the sub-points.
        w = jnp.where(jnp.arange(m + 1) % 2 == 1, 4.0, 2.0).at[0].set(1.0).at[m].set(1.0)
        integral = track.integral + h / (3 * m) * jnp.sum(w.astype(dtype) * sq)

        # Last downward crossing of the band within this step.
        above = dev > tol
        cross = above[:-1] & ~above[1:]
        k = jnp.max(jnp.where(cross, jnp.arange(m), -1))
        kk = jnp.clip(k, 0, m - 1)
        lo, hi = s[kk], s[kk + 1]
        dlo, dhi = dev[kk], dev[kk + 1]
        tc = lo + (dlo - tol) / jnp.where(dlo > dhi, dlo - dhi, 1) * (hi - lo)
        # One regula-falsi refinement on the sub-bracket that still holds the crossing.
        dc, _ = self._dev(self._interpolate_outputs(t0, t1, dense_info, tc[None])[0])
        lo, dlo, hi, dhi = (
            jnp.where(dc > tol, tc, lo),
            jnp.where(dc > tol, dc, dlo),
            jnp.where(dc > tol, hi, tc),
            jnp.where(dc > tol, dhi, dc),
        )
        tc = lo + (dlo - tol) / jnp.where(dlo > dhi, dlo - dhi, 1) * (hi - lo)
        cand = jnp.where(above[-1], s[-1], jnp.where(k >= 0, tc, -jnp.inf))
        track = Track(
            t_last=jnp.maximum(track.t_last, cand),
            integral=integral,
            max_dev=jnp.maximum(track.max_dev, jnp.max(dev)),
        )
        return y1, y_error, dense_info, (inner_state, track), result

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


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
