"""`simulate(..., stop_when_settled=True)`: the solve ends once settling is certified.

References: the same simulation run to `t_max` (the settling time must not move), the
eigendecomposition path (settling time, energy), the Jacobian's log norm computed here with
NumPy (which circuits may stop), and finite differences / the full-length run for gradients."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import laplacian_1d, well_conditioned

import amcdyn


jax.config.update("jax_enable_x64", True)

# Diagonally dominant (rows of |R| sum to 1, A = I + 0.8 R): the loop's log norm is <= 0.
A_DD = well_conditioned(6, seed=3, signed=True)
B = np.array([0.5, -0.4, 0.3, 0.2, -0.1, 0.35])
# Stable, but the off-diagonal conductances outweigh the diagonal ones on a row: the
# certificate fails and the run goes on to t_max.
A_ND = np.array([[1.0, 0.9, 0.0], [-0.9, 1.0, 0.3], [0.0, -0.3, 1.0]])


def _lognorm(circuit):
    jac = np.asarray(circuit.dynamics().jacobian(), dtype=float)
    off = np.abs(jac).sum(axis=1) - np.abs(np.diag(jac))
    return float(np.max(np.diag(jac) + off))


def _both(circuit, **kw):
    full = amcdyn.simulate(circuit, n_save=0, **kw)
    short = amcdyn.simulate(circuit, n_save=0, stop_when_settled=True, **kw)
    return full, short


def test_certified_circuit_stops_early_with_the_same_settling_time():
    c = amcdyn.INV.from_matrix(A_DD, B)
    assert _lognorm(c) <= 0
    full, short = _both(c)
    exact = amcdyn.simulate_analytic(c, n_save=0)
    assert short.status == full.status == "settled"
    # The steps before the stop are the same steps: the record of the last exit is too.
    assert float(short.settling_time) == float(full.settling_time)
    np.testing.assert_allclose(float(short.settling_time), float(exact.settling_time), rtol=2e-3)
    assert int(short.num_steps) < int(full.num_steps)
    assert float(exact.settling_time) < float(short.t_max) < float(full.t_max)
    # At the stop every output is inside the band around the equilibrium ...
    fs = float(np.max(np.abs(np.asarray(short.v_steady))))
    dev = np.max(np.abs(np.asarray(short.v_final) - np.asarray(short.v_steady)))
    assert dev <= float(short.tol) * fs
    # ... and the outputs of the full run at that time (analytic path) are the same, to the
    # solver's tolerance (1e-2 tol FS by default).
    later = amcdyn.simulate_analytic(c, t_max=float(short.t_max), n_save=2)
    np.testing.assert_allclose(np.asarray(short.v_final), np.asarray(later.vs[-1]), atol=1e-4 * fs)
    # The error is that of the outputs at the stop: within the band, above the steady one.
    assert float(short.rel_error) >= 0.5 * float(full.rel_error)
    assert float(short.rel_error) < 3 * float(short.tol)
    # The integral leaves out an O(tol^2) tail.
    np.testing.assert_allclose(float(short.settle_integral), float(full.settle_integral), rtol=1e-5)


def test_energy_counts_up_to_the_settling_time_either_way():
    c = amcdyn.INV.from_matrix(A_DD, B)
    full, short = _both(c, energy=True)
    exact = amcdyn.simulate_analytic(c, n_save=0)
    # Measured 3e-4 (both; the exact path integrates to its own settling time).
    np.testing.assert_allclose(float(short.energy), float(exact.energy), rtol=2e-3)
    np.testing.assert_allclose(float(short.energy), float(full.energy), rtol=1e-5)


def test_uncertified_circuit_runs_to_t_max():
    c = amcdyn.INV.from_matrix(A_ND, B[:3])
    assert _lognorm(c) > 0
    assert bool(amcdyn.simulate_analytic(c, n_save=0).stable)
    full, short = _both(c)
    assert int(short.num_steps) == int(full.num_steps)
    assert float(short.t_max) == float(full.t_max)
    assert float(short.settling_time) == float(full.settling_time)
    assert float(short.rel_error) == float(full.rel_error)


def test_stiff_loop_with_an_implicit_solver_stops_early():
    # A 1-D Laplacian (decay rates spread over ~200x: `simulate` picks Kvaerno5) is
    # diagonally dominant: certified.
    a = laplacian_1d(8)
    c = amcdyn.INV.from_matrix(a, np.linspace(-0.5, 0.5, 8))
    assert _lognorm(c) <= 0
    full, short = _both(c, solver=dfx.Kvaerno5())
    exact = amcdyn.simulate_analytic(c, n_save=0)
    assert int(short.num_steps) < int(full.num_steps)
    assert float(short.settling_time) == float(full.settling_time)
    np.testing.assert_allclose(float(short.settling_time), float(exact.settling_time), rtol=5e-3)


def test_mvm_stops_early():
    # An open loop (diagonal Jacobian) is always certified.
    a = np.array([[0.5, -0.2, 0.1], [0.3, 0.4, -0.6]])
    c = amcdyn.MVM.from_matrix(a, np.array([0.2, -0.5, 0.7]))
    full, short = _both(c)
    assert int(short.num_steps) < int(full.num_steps)
    assert float(short.settling_time) == float(full.settling_time)


def test_unstable_circuit_is_still_unstable():
    # A stability violation: negative diagonal. Its Jacobian is not certified, so nothing
    # stops and the divergence is seen as before.
    a = np.array([[-1.0, 0.2], [0.1, 1.0]])
    c = amcdyn.INV.from_matrix(a, np.array([0.3, 0.4]))
    s = amcdyn.simulate(c, n_save=0, stop_when_settled=True, throw=False)
    assert s.status == "unstable"
    assert np.isnan(float(s.settling_time))


def test_batch_under_jit_and_vmap_mixes_stopping_and_not():
    # Under vmap the loop runs until every circuit has stopped; each keeps its own stop.
    cs = [amcdyn.INV.from_matrix(A_ND, B[:3]), amcdyn.INV.from_matrix(A_DD[:3, :3], B[:3])]
    batch = jax.tree.map(lambda *x: jnp.stack(x), *cs)

    @jax.jit
    def run(c):
        s = amcdyn.simulate(c, t_max=2e-7, n_save=0, stop_when_settled=True, throw=False)
        return s.settling_time, s.t_max, s.num_steps

    ts, tm, steps = jax.vmap(run)(batch)
    for i, c in enumerate(cs):
        alone = amcdyn.simulate(c, t_max=2e-7, n_save=0, stop_when_settled=True)
        # vmapped vs alone: rounding only (measured 7e-11 on t_max)
        np.testing.assert_allclose(float(ts[i]), float(alone.settling_time), rtol=1e-9)
        np.testing.assert_allclose(float(tm[i]), float(alone.t_max), rtol=1e-9)
        assert int(steps[i]) == int(alone.num_steps)
    assert float(tm[0]) == 2e-7 and float(tm[1]) < 2e-7


def test_gradients_match_the_full_run_and_finite_differences():
    a = A_DD[:3, :3]
    b = B[:3]

    def loss(p, stop):
        gbw, g0 = p
        c = amcdyn.INV.from_matrix(a, b, f_gbw=gbw, g0=g0, input_mode="voltage", g_in=1e-4)
        s = amcdyn.simulate(
            c,
            t_max=2e-7,
            n_save=0,
            energy=False,
            stop_when_settled=stop,
            stepsize_controller=dfx.PIDController(rtol=1e-9, atol=1e-11),
        )
        return s.settling_time * 1e8 + s.settle_integral * 1e8

    p = (1e8, 1e-4)
    g_short = jax.grad(loss)(p, True)
    g_full = jax.grad(loss)(p, False)
    # The full run only adds the O(tol^2) tail of the integral: measured 1e-6 relative.
    for gs, gf in zip(g_short, g_full):
        np.testing.assert_allclose(float(gs), float(gf), rtol=1e-4)
    h = 1e-4
    fd = (loss((p[0] * (1 + h), p[1]), True) - loss((p[0] * (1 - h), p[1]), True)) / (2 * h * p[0])
    np.testing.assert_allclose(float(g_short[0]), float(fd), rtol=1e-4)


def test_bad_combinations_are_refused():
    c = amcdyn.INV.from_matrix(A_DD, B)
    with pytest.raises(ValueError, match="n_save=0"):
        amcdyn.simulate(c, stop_when_settled=True)
    nl = amcdyn.INV.from_matrix(A_DD, B, v_sat=1.0)
    with pytest.raises(ValueError, match="linear circuit"):
        amcdyn.simulate(nl, n_save=0, stop_when_settled=True)
    with pytest.raises((TypeError, ValueError), match="stop_when_settled"):
        amcdyn.simulate(c, n_save=0, stop_when_settled="yes")
