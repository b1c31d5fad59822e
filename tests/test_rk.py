"""`amcdyn.Unrolled`: diffrax's explicit Runge-Kutta steps with the stages unrolled.

The reference is diffrax itself (the same tableau run by its stage loop) and closed forms."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import amcdyn
from amcdyn import _simulate


jax.config.update("jax_enable_x64", True)

# Tsit5: FSAL and SSAL; Dopri8: FSAL, not SSAL; Heun: neither.
SOLVERS = [dfx.Tsit5, dfx.Dopri5, dfx.Dopri8, dfx.Bosh3, dfx.Heun]


def _linear(m, c, y0, solver, t1=3.0, **kw):
    # Heun is 2nd order (1st-order error estimate): at rtol 1e-8 it would take ~1e5 steps.
    heun = isinstance(getattr(solver, "solver", solver), dfx.Heun)
    rtol = 1e-4 if heun else 1e-8
    term = dfx.ODETerm(lambda t, y, args: args[0] @ y + args[1])
    return dfx.diffeqsolve(
        term,
        solver,
        0.0,
        t1,
        0.05,
        y0,
        args=(m, c),
        saveat=dfx.SaveAt(ts=jnp.linspace(0.0, t1, 7)),
        stepsize_controller=dfx.PIDController(rtol=rtol, atol=1e-2 * rtol),
        **kw,
    )


def _system(n=6, seed=0):
    rng = np.random.default_rng(seed)
    m = -np.eye(n) * 2 + 0.3 * rng.standard_normal((n, n))
    return jnp.asarray(m), jnp.asarray(rng.standard_normal(n)), jnp.asarray(rng.standard_normal(n))


@pytest.mark.parametrize("cls", SOLVERS, ids=lambda c: c.__name__)
def test_same_steps_as_diffrax(cls):
    # Same tableau, same error estimate, same dense output: diffrax's own loop takes the same
    # steps and, in float64, gives the same saved values to rounding: 1e-10 of full scale (the
    # sums are ordered differently; Dopri8's coefficients, up to ~1e2, cancel and measured
    # 1.8e-11 after ~40 steps), 100x below the integration tolerance.
    m, c, y0 = _system()
    ref = _linear(m, c, y0, cls())
    got = _linear(m, c, y0, amcdyn.Unrolled(cls()))
    assert int(got.stats["num_accepted_steps"]) == int(ref.stats["num_accepted_steps"])
    assert int(got.stats["num_rejected_steps"]) == int(ref.stats["num_rejected_steps"])
    np.testing.assert_allclose(got.ys, ref.ys, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cls", [dfx.Tsit5, dfx.Heun], ids=lambda c: c.__name__)
def test_closed_form(cls):
    # y' = M y + c from y0: y(t) = expm(M t)(y0 + M^-1 c) - M^-1 c, evaluated by eigendecomposition.
    m, c, y0 = _system(seed=1)
    sol = _linear(m, c, y0, amcdyn.Unrolled(cls()))
    lam, v = np.linalg.eig(np.asarray(m))
    yss = -np.linalg.solve(np.asarray(m), np.asarray(c))
    w = np.linalg.solve(v, np.asarray(y0) - yss)
    ts = np.asarray(sol.ts)
    exact = np.real((v[None] * np.exp(lam[None] * ts[:, None])[:, None, :]) @ w) + yss
    # Global error: Tsit5 at rtol 1e-8 about 1e-8 (held to 1e-6); Heun at rtol 1e-4 about 1e-3
    # (held to 1e-2, still far below the O(1) error of a misapplied tableau).
    tol = 1e-6 if cls is dfx.Tsit5 else 1e-2
    np.testing.assert_allclose(sol.ys, exact, rtol=0, atol=tol)


def test_jump_refreshes_fsal():
    # A field that jumps at t = 1: with jump_ts, diffrax steps to the jump and flags it, and the
    # carried first-same-as-last value must be recomputed there (as diffrax's own solver does).
    term = dfx.ODETerm(lambda t, y, args: jnp.where(t < 1.0, -y, 2.0 - 3.0 * y))
    ctrl = dfx.PIDController(rtol=1e-9, atol=1e-11, jump_ts=jnp.array([1.0]))
    kw = dict(t0=0.0, t1=2.0, dt0=0.1, y0=jnp.ones(2), stepsize_controller=ctrl)
    ref = dfx.diffeqsolve(term, dfx.Tsit5(), **kw)
    got = dfx.diffeqsolve(term, amcdyn.Unrolled(dfx.Tsit5()), **kw)
    y1 = np.exp(-1.0)
    exact = 2 / 3 + (y1 - 2 / 3) * np.exp(-3.0)
    np.testing.assert_allclose(got.ys[-1], ref.ys[-1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.ys[-1], exact, rtol=0, atol=1e-8)


def test_jit_vmap_grad():
    # d y(t1) / d a for y' = -a y, y(0) = 1: -t1 exp(-a t1); batched over a, one compile.
    def final(a):
        term = dfx.ODETerm(lambda t, y, args: -args * y)
        sol = dfx.diffeqsolve(
            term,
            amcdyn.Unrolled(dfx.Tsit5()),
            0.0,
            2.0,
            0.1,
            jnp.ones(()),
            args=a,
            stepsize_controller=dfx.PIDController(rtol=1e-10, atol=1e-12),
        )
        return sol.ys[-1]

    a = jnp.array([0.5, 1.0, 2.0])
    g = jax.jit(jax.vmap(jax.grad(final)))(a)
    np.testing.assert_allclose(g, -2.0 * np.exp(-2.0 * np.asarray(a)), rtol=1e-7)


def test_rejects_other_solvers():
    for bad in (dfx.Kvaerno5(), dfx.Euler(), "Tsit5"):
        with pytest.raises(ValueError, match="Unrolled"):
            amcdyn.Unrolled(bad)


def test_rejects_other_terms():
    # Its stage increments are h f: a control term (an SDE's, a CDE's) would be integrated
    # wrongly, so it is refused.
    path = dfx.LinearInterpolation(ts=jnp.array([0.0, 1.0]), ys=jnp.array([0.0, 2.0]))
    term = dfx.ControlTerm(lambda t, y, args: -y, path)
    with pytest.raises(ValueError, match="ODETerm"):
        dfx.diffeqsolve(term, amcdyn.Unrolled(dfx.Tsit5()), 0.0, 1.0, 0.1, jnp.ones(2))


def test_default_solver_of_simulate():
    # The default for well-conditioned (and traced) circuits; it agrees with diffrax's Tsit5 on
    # an INV circuit in float64 to rounding (settling time to 1e-9 relative, same steps).
    a = jnp.asarray(np.eye(5) + 0.1 * np.random.default_rng(3).uniform(-1, 1, (5, 5)))
    circuit = amcdyn.INV.from_matrix(a, jnp.linspace(-1.0, 1.0, 5))
    picked = _simulate._pick_solver(circuit)
    assert isinstance(picked, amcdyn.Unrolled) and isinstance(picked.solver, dfx.Tsit5)
    ref = amcdyn.simulate(circuit, n_save=0, solver=dfx.Tsit5())
    got = amcdyn.simulate(circuit, n_save=0)
    assert int(got.num_steps) == int(ref.num_steps)
    np.testing.assert_allclose(got.settling_time, ref.settling_time, rtol=1e-9)
    np.testing.assert_allclose(got.solution, ref.solution, rtol=0, atol=1e-12)
