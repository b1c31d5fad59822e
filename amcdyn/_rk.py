"""An explicit Runge–Kutta step with its stages unrolled at trace time.

diffrax runs the stages of a Runge–Kutta step in a loop (`equinox.internal.while_loop`) that
reads the tableau row and writes each stage into a buffer by dynamic index. That serves every
tableau and keeps compile times short, but for the small dense linear systems of AMC circuits,
batched under `vmap`, the loop's bookkeeping (dynamic slices and updates, and one small
batched dot per stage for the stage combination) costs several times the vector field itself.
`Unrolled` takes any explicit diffrax Runge–Kutta solver with a single Butcher tableau and
writes the same step as straight-line code: each stage is one field evaluation plus a
combination with constant coefficients, which XLA fuses. The arithmetic is that of the wrapped
solver (same tableau, same error estimate, same dense output), so results agree with it to
rounding.
"""

from typing import ClassVar

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np


class Unrolled(dfx.AbstractAdaptiveSolver):
    """An explicit diffrax Runge–Kutta solver (e.g. `diffrax.Tsit5()`) with unrolled stages.

    Only ODEs (`diffrax.ODETerm`, array state) and explicit single-tableau solvers
    (`diffrax.AbstractERK` subclasses such as `Tsit5`, `Dopri5`, `Dopri8`, `Bosh3`).

    **Arguments:**

    - `solver`: the explicit Runge–Kutta solver whose step to unroll, e.g. `diffrax.Tsit5()`.
    """

    solver: dfx.AbstractERK

    term_structure: ClassVar = dfx.AbstractTerm

    def __check_init__(self):
        if not isinstance(self.solver, dfx.AbstractERK) or not isinstance(
            type(self.solver).tableau, dfx.ButcherTableau
        ):
            raise ValueError(
                "`Unrolled` takes an explicit diffrax Runge-Kutta solver with one Butcher "
                f"tableau (e.g. diffrax.Tsit5()), got {self.solver!r}"
            )

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.solver.interpolation_cls

    def order(self, terms):
        return self.solver.order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    @property
    def _tableau(self):
        return type(self.solver).tableau

    def init(self, terms, t0, t1, y0, args):
        # diffrax wraps the user's term (WrapTerm, for the direction of integration).
        term = getattr(terms, "term", terms)
        if not isinstance(term, dfx.ODETerm):
            raise ValueError(
                f"`Unrolled` integrates ODEs (a diffrax.ODETerm), got {type(term).__name__}"
            )
        # First-same-as-last: the state carries the field at the start of the next step.
        return terms.vf(t0, y0, args) if self._tableau.fsal else None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        tab = self._tableau
        dtype = jnp.result_type(y0)
        h = terms.contr(t0, t1)
        if tab.fsal:
            f0 = solver_state
            if made_jump is not False:
                # After a jump in the field (diffrax's `jump_ts`) the carried value is stale.
                f0 = jax.lax.cond(made_jump, lambda: terms.vf(t0, y0, args), lambda: solver_state)
        else:
            f0 = terms.vf(t0, y0, args)
        fs = [f0]
        for c_i, a_i in zip(tab.c, tab.a_lower):
            y_i = y0 + h * _combine(a_i, fs, dtype)
            fs.append(terms.vf(t0 + c_i * h, y_i, args))
        if tab.ssal:
            y1 = y_i  # the last stage is evaluated at the solution itself
        else:
            y1 = y0 + h * _combine(tab.b_sol, fs, dtype)
        y_error = h * _combine(tab.b_error, fs, dtype)
        ks = jnp.stack([h * f for f in fs])
        dense_info = dict(y0=y0, y1=y1, k=ks)
        if tab.fsal:
            new_state = fs[-1]
        else:
            new_state = None
        return y1, y_error, dense_info, new_state, dfx.RESULTS.successful


def _combine(coeffs, fs, dtype):
    """sum_j coeffs[j] fs[j], skipping zero coefficients (known at trace time)."""
    terms = [jnp.asarray(c, dtype) * f for c, f in zip(np.asarray(coeffs), fs) if c != 0]
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out
