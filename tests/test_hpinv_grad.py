"""HP-INV as one traced computation (`hpinv_refine`): host-loop equality, vmap, grad, status.

One compiled program serves the whole file: `jit(vmap(...))` of the K-cycle refinement and
its reverse-mode Jacobian over a batch of (b, key, f_GBW) points, with 5 % lognormal
programming variation on the 3-bit LP-INV. The batch holds the nominal point, a second
variation key, a NaN input (a failing cycle) and the central-difference neighbours of the
nominal point in b and in f_GBW. References: `hpinv_solve` (the host loop, a Python loop over
the batch), central differences, and the exact time scaling of a single-pole circuit.
"""

import sys

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import amcdyn
from amcdyn._hpinv import HP_STATUS, hpinv_refine, hpinv_solve
from amcdyn._solution import STATUS_NAMES


sys.path.insert(0, __file__.rsplit("/", 1)[0])
from helpers import well_conditioned  # noqa: E402


N, K = 4, 3
A = well_conditioned(N, 0)  # I + 0.8 R, R >= 0: no inverters, kappa ~ 2
B = np.random.default_rng(1).uniform(-1, 1, N)
W = np.random.default_rng(2).normal(size=N)  # weights of the differentiated W . x_K
D = np.random.default_rng(3).normal(size=N)  # direction of the central difference in b
F0 = 1e8  # f_GBW (Hz)
VAR = amcdyn.Variation(0.05, kind="lognormal")
KEY0, KEY1 = jr.PRNGKey(1), jr.PRNGKey(2)
TARGET = 5.0  # bits: reached after ~2 cycles (rho ~ 0.15), so the host loop stops before K
H_B = 1e-4  # central-difference step in b (V), ~1e-4 of |b|
H_F = 1e-4  # relative central-difference step in f_GBW


def _trace(b, key, f_gbw):
    return hpinv_refine(A, b, iterations=K, target_bits=TARGET, variation=VAR, key=key, f_gbw=f_gbw)


def _scalars(b, f_gbw, key):
    tr = _trace(b, key, f_gbw)
    # W . x_K and the analog time in ns (O(1) numbers for the Jacobian).
    return jnp.stack([jnp.dot(W, tr.solution), tr.analog_time * 1e9])


def _point(b, key, f_gbw):
    jac_b, jac_f = jax.jacrev(_scalars, argnums=(0, 1))(b, f_gbw, key)
    return _trace(b, key, f_gbw), jac_b, jac_f


@pytest.fixture(scope="module")
def batch():
    bs = [B, B, np.full(N, np.nan), B + H_B * D, B - H_B * D, B, B]
    keys = [KEY0, KEY1, KEY0, KEY0, KEY0, KEY0, KEY0]
    fs = [F0, F0, F0, F0, F0, F0 * (1 + H_F), F0 * (1 - H_F)]
    run = jax.jit(jax.vmap(_point))
    tr, jac_b, jac_f = run(jnp.asarray(np.stack(bs)), jnp.stack(keys), jnp.asarray(fs))
    return tr, np.asarray(jac_b), np.asarray(jac_f)


def _elem(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def test_vmap_equals_host_loop(batch):
    tr, _, _ = batch
    # The reference is the host loop, called once per batch element in a Python loop, with
    # the same key (same programmed arrays). Same float64 arithmetic in other compiled
    # programs: agreement to a few ulps (1e-12 relative is far above that, far below any
    # physical effect; measured <= 2e-16 absolute on x).
    for i, key in ((0, KEY0), (1, KEY1)):
        t = _elem(tr, i)
        host_k = hpinv_solve(A, B, iterations=K, target_bits=60.0, variation=VAR, key=key)
        assert host_k.cycles == K and int(t.cycles) == K
        np.testing.assert_allclose(t.solution, host_k.solution, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(t.residual_history, host_k.residual_history, rtol=1e-10)
        np.testing.assert_allclose(t.bits_history, host_k.bits_history, rtol=1e-12)
        np.testing.assert_allclose(t.cycle_times, host_k.cycle_times, rtol=1e-12)
        np.testing.assert_allclose(t.settling_time, host_k.settling_time, rtol=1e-12)
        np.testing.assert_allclose(t.analog_time, host_k.analog_time, rtol=1e-12)
        np.testing.assert_allclose(t.max_abs_voltage, host_k.max_abs_voltage, rtol=1e-12)
        np.testing.assert_allclose(t.contraction, host_k.contraction, rtol=1e-10)
        np.testing.assert_allclose(t.contraction_norm, host_k.contraction_norm, rtol=1e-10)
        np.testing.assert_allclose(t.exact, np.linalg.solve(A, B), rtol=1e-12)
        # The host loop with the target stops at the first cycle that reaches it: the
        # traced run reports that cycle and the time up to it, and keeps refining.
        host = hpinv_solve(A, B, iterations=K, target_bits=TARGET, variation=VAR, key=key)
        assert host.status == "converged" and host.cycles < K
        assert int(t.cycles_to_target) == host.cycles
        np.testing.assert_allclose(t.time_to_target, host.settling_time, rtol=1e-12)
        # The default HP-MVM energy depends on `target_bits` (ceil(target/3) slices), so the
        # energies are compared with this run's.
        c = host.cycles
        np.testing.assert_allclose(t.cycle_energies[:c], host.cycle_energies, rtol=1e-12)
        np.testing.assert_allclose(np.sum(t.cycle_energies[:c]), host.energy, rtol=1e-12)
        np.testing.assert_allclose(t.energy, np.sum(t.cycle_energies), rtol=1e-12)
        np.testing.assert_allclose(
            t.residual_history[: host.cycles], host.residual_history, rtol=1e-10
        )
        assert t.status_name == "converged"
        assert np.all(np.asarray(t.cycle_status) == 0) and np.all(np.asarray(t.applied))
    # The two keys program different arrays.
    assert float(tr.contraction[0]) != float(tr.contraction[1])
    assert not np.array_equal(np.asarray(tr.solution[0]), np.asarray(tr.solution[1]))


def test_failed_cycle_is_reported_not_applied(batch):
    tr, jac_b, _ = batch
    t = _elem(tr, 2)  # b = NaN: every LP-INV transient is non-finite
    code = STATUS_NAMES.index("nonfinite")
    np.testing.assert_array_equal(t.cycle_status, np.full(K, code))
    assert not np.any(np.asarray(t.applied)) and int(t.cycles) == 0
    assert t.status_name == "nonfinite" and HP_STATUS[int(t.status)] == "nonfinite"
    # Nothing was applied: x stays 0, no time or energy is counted, no target reached.
    np.testing.assert_array_equal(t.solution, np.zeros(N))
    assert float(t.settling_time) == 0 and float(t.energy) == 0
    assert int(t.cycles_to_target) == 0 and np.isinf(float(t.time_to_target))
    # The failure stays in its own batch element.
    assert np.all(np.isfinite(jac_b[[0, 1, 3, 4, 5, 6]]))


def test_grad_wrt_b_matches_central_differences(batch):
    tr, jac_b, _ = batch
    g = jac_b[0, 0] @ D  # directional derivative of W . x_K along D
    fd = (W @ np.asarray(tr.solution[3]) - W @ np.asarray(tr.solution[4])) / (2 * H_B)
    # x_K is smooth in b here (3-bit levels fixed: they do not depend on b; the scale
    # max|r| and the settling-time hold move smoothly). Central difference: truncation
    # O(h^2 f''') ~ 1e-8 and rounding 1e-16/h ~ 1e-12; 1e-6 relative leaves margin.
    np.testing.assert_allclose(g, fd, rtol=1e-6)
    # And the derivative is close to that of the exact solution, A^-T W: the K-cycle map
    # differs from A^-1 by (I - A L)^K, i.e. rho^K ~ 1e-2 relative here.
    ref = np.linalg.solve(A.T, W)
    rho = float(tr.contraction[0])
    assert np.linalg.norm(jac_b[0, 0] - ref) <= 3 * rho**K * np.linalg.norm(ref)


def test_grad_wrt_gbw_is_the_time_scaling(batch):
    tr, _, jac_f = batch
    t_ns = float(tr.analog_time[0]) * 1e9
    # Single-pole op-amps, A0 fixed: every rate of the LP-INV is proportional to f_GBW, so the
    # held outputs do not depend on it and every settling time scales as 1/f_GBW, i.e.
    # d t / d f = -t / f. The values obey it: central differences (truncation O(h^2) ~ 1e-8).
    fd = (float(tr.analog_time[5]) - float(tr.analog_time[6])) * 1e9 / (2 * H_F * F0)
    np.testing.assert_allclose(fd, -t_ns / F0, rtol=1e-6)
    # The held outputs move only through the hold time's interpolation error (the output is
    # within tol of its equilibrium there): d(W . x)/d ln f measured 8e-9, against |W| |x| ~ 3.
    x_max = np.abs(np.asarray(tr.solution[0])).max()
    assert abs(jac_f[0, 0]) * F0 < 1e-6 * np.linalg.norm(W) * x_max
    # The derivative: each settling time is located on the cubic Hermite interpolant of the
    # expm grid, whose spacing (t_max from the eigenvalues) carries no gradient, so the
    # derivative of the interpolation error enters: measured 4e-5 relative; 2e-4 allowed.
    np.testing.assert_allclose(jac_f[0, 1], -t_ns / F0, rtol=2e-4)
    np.testing.assert_allclose(jac_f[0, 1], fd, rtol=2e-4)


def test_bad_input():
    with pytest.raises(ValueError, match="`iterations`"):
        hpinv_refine(A, B, iterations=0)
    with pytest.raises(ValueError, match="`iterations`"):
        hpinv_refine(A, B, iterations=True)
    with pytest.raises(ValueError, match="`bits`"):
        hpinv_refine(A, B, iterations=2, bits=0)
    with pytest.raises(ValueError, match="`key`"):
        hpinv_refine(A, B, iterations=2, variation=VAR)
    with pytest.raises(ValueError, match="`g0`"):
        hpinv_refine(A, B, iterations=2, g0=1e-5)
    with pytest.raises(ValueError, match="`b`"):
        hpinv_refine(A, B[:2], iterations=2)
    with pytest.raises(ValueError, match="`b`"):
        hpinv_refine(A, np.full(N, np.nan), iterations=2)
    with pytest.raises(ValueError, match="`g_max`"):
        hpinv_refine(A, B, iterations=2, g_max=0.1e-6)
    with pytest.raises(ValueError, match="`t_mvm`"):
        hpinv_refine(A, B, iterations=2, t_mvm=-1.0)
