"""HP-INV: analog iterative refinement with a 3-bit LP-INV, against a NumPy model.

The reference is written here independently of amcdyn: the 3-bit level mapping of the
conductances (8 uniform levels in 0.5-35 uS, G0 = G_max/max|A|, zeros absent), the
finite-gain INV steady state $L = (\\hat A + \\mathrm{diag}(\\hat s)/A_0)^{-1}$ (no negative
entries, so no inverters), and the refinement $r_{k+1} = (I - A L) r_k$. Every matrix has no
negative entry and n = 16, so one compiled INV structure serves the whole file.
"""

import sys

import jax.random as jr
import numpy as np
import pytest

import amcdyn
from amcdyn._hpinv import HPINVSolution, hpinv_solve, sliced_matrix


sys.path.insert(0, __file__.rsplit("/", 1)[0])
from helpers import well_conditioned  # noqa: E402


N = 16
A = well_conditioned(N, 0)  # I + 0.8 R, R >= 0: kappa = 2.1
B = np.random.default_rng(1).uniform(-1, 1, N)
X = np.linalg.solve(A, B)
G_MIN, G_MAX, A0 = 0.5e-6, 35e-6, 1e5


def quantize(a, bits=3):
    """The LP-INV's matrix: |A| G0 on 2^bits uniform levels in [G_min, G_max], / G0."""
    g0 = G_MAX / np.abs(a).max()
    n = 2**bits - 1
    g = np.clip(np.abs(a) * g0, G_MIN, G_MAX)
    g = G_MIN + (G_MAX - G_MIN) * np.round((g - G_MIN) / (G_MAX - G_MIN) * n) / n
    return np.sign(a) * np.where(a == 0, 0, g) / g0


def lp_map(a):
    """Steady-state map r -> delta of the INV (no negative entries, current input)."""
    ah = quantize(a)
    return np.linalg.inv(ah + np.diag(ah.sum(1)) / A0)


def predicted_residuals(a, b, cycles):
    e = np.eye(len(b)) - a @ lp_map(a)
    r, out = b, []
    for _ in range(cycles):
        r = e @ r
        out.append(np.abs(r).max() / np.abs(b).max())
    return np.array(out), np.abs(np.linalg.eigvals(e)).max()


@pytest.fixture(scope="module")
def sol():
    # A tight settling band makes each analog solve follow the steady-state model closely.
    return hpinv_solve(A, B, tol=1e-6)


def test_reaches_24_bits_in_a_few_cycles(sol):
    assert isinstance(sol, HPINVSolution)
    assert sol.status == "converged"
    assert float(sol.bits) >= 24
    assert 4 <= sol.cycles <= 14  # ~2.4 bits per cycle from a 3-bit array
    assert float(sol.residual_history[-1]) <= 2.0**-24
    assert float(sol.residual_history[-2]) > 2.0**-24  # stopped at the first cycle below
    np.testing.assert_allclose(sol.solution, X, rtol=0, atol=2.0**-23 * np.abs(X).max())
    assert sol.solution.dtype == np.float64
    # The bit history increases every cycle.
    assert np.all(np.diff(np.asarray(sol.bits_history)) > 0)


def test_residual_contracts_by_the_predicted_factor(sol):
    pred, rho = predicted_residuals(A, B, sol.cycles)
    # The contraction of the programmed circuit equals the NumPy model's (only round-off
    # differs: 1e-8).
    assert float(sol.contraction) == pytest.approx(rho, rel=1e-8)
    assert 0.05 < rho < 0.5
    # Residual history against the linear model: the analog solves stop within 1e-6 of their
    # full scale, a relative perturbation of ~1e-5 per cycle next to rho ~ 0.2; allow 5 %.
    np.testing.assert_allclose(sol.residual_history, pred, rtol=0.05)
    ratios = np.asarray(sol.residual_history[1:]) / np.asarray(sol.residual_history[:-1])
    # Geometric decrease: the asymptotic ratio approaches rho (within 25 % after 6 cycles).
    assert np.all(ratios < float(sol.contraction_norm) * 1.05)
    assert ratios[-1] == pytest.approx(rho, rel=0.25)


def test_time_and_energy_are_sums_of_cycles(sol):
    times = np.asarray(sol.cycle_times)
    assert times.shape == (sol.cycles,)
    np.testing.assert_allclose(sol.settling_time, times.sum(), rtol=1e-13)
    np.testing.assert_allclose(sol.analog_time, times.sum() - sol.cycles * 60e-9, rtol=1e-12)
    assert float(sol.analog_time) > 0
    np.testing.assert_allclose(sol.energy, np.sum(sol.cycle_energies), rtol=1e-13)
    assert np.all(np.asarray(sol.cycle_energies) > 0)


def test_not_a_contraction_is_not_converged():
    # Diagonal A with entries 1 and 0.06: 0.06 * 35 uS = 2.1 uS rounds to the bottom level
    # 0.5 uS, so the LP-INV overshoots by 4.2x there: rho = |1 - 0.06 / (0.5/35)| = 3.2.
    a = np.diag(np.where(np.arange(N) % 2 == 0, 1.0, 0.06))
    sol = hpinv_solve(a, B, iterations=4)
    # Finite gain: L = 1/(a_hat (1 + 1/A0)) per diagonal entry, E = 1 - a L.
    expected = 0.06 / (G_MIN / G_MAX) / (1 + 1 / A0) - 1
    assert float(sol.contraction) == pytest.approx(expected, rel=1e-6)
    assert sol.status == "not_converged"
    assert sol.cycles == 4
    res = np.asarray(sol.residual_history)
    assert np.all(np.diff(res) > 0)  # diverges


def test_hp_mvm_slices_cap_the_precision():
    # With 4 slices the HP-MVM stores A to 12 fraction bits: the loop converges to the
    # solution of that matrix, ~12 bits from the true one.
    sol = hpinv_solve(A, B, hp_slices=4)
    a_s = np.asarray(sliced_matrix(A, 4))
    assert np.abs(a_s - A).max() <= 0.5 * 2.0**-12 * np.abs(A).max() * (1 + 1e-12)
    assert sol.status == "converged"
    np.testing.assert_allclose(sol.solution, np.linalg.solve(a_s, B), rtol=0, atol=1e-6)
    assert 9 < float(sol.bits) < 18


def test_variation_is_programmed_once():
    # 5 % lognormal variation on top of the levels still contracts; the same key gives the
    # same programmed array and the same answer.
    var = amcdyn.Variation(0.05, kind="lognormal")
    s1 = hpinv_solve(A, B, variation=var, key=jr.PRNGKey(1), iterations=3)
    s2 = hpinv_solve(A, B, variation=var, key=jr.PRNGKey(1), iterations=3)
    np.testing.assert_array_equal(s1.solution, s2.solution)
    assert float(s1.contraction) < 1
    assert float(s1.contraction) != pytest.approx(predicted_residuals(A, B, 1)[1], rel=1e-3)


@pytest.mark.slow  # three more compiled structures (8 x 8 INV arrays, 8 x 16 MVM)
def test_blockamc_inner_solve_on_8x8_arrays():
    # The seed configuration: 16 x 16 on 8 x 8 LP-INV arrays via one-stage BlockAMC.
    sol = hpinv_solve(A, B, block=True)
    assert sol.status == "converged"
    assert float(sol.bits) >= 24
    assert sol.cycles <= 16
    assert float(sol.contraction) < 1
    ratios = np.asarray(sol.residual_history[1:]) / np.asarray(sol.residual_history[:-1])
    assert np.all(ratios < float(sol.contraction_norm) * 1.05)


def test_bad_input():
    with pytest.raises(ValueError, match="`bits`"):
        hpinv_solve(A, B, bits=0)
    with pytest.raises(ValueError, match="`iterations`"):
        hpinv_solve(A, B, iterations=0)
    with pytest.raises(ValueError, match="`g0`"):
        hpinv_solve(A, B, g0=1e-4)
    with pytest.raises(ValueError, match="`hp_slices`"):
        hpinv_solve(A, B, hp_slices=0)
    with pytest.raises(ValueError, match="`key`"):
        hpinv_solve(A, B, variation=amcdyn.Variation(0.1))
    with pytest.raises(ValueError, match="`g_max`"):
        hpinv_solve(A, B, g_max=0.1e-6)
    with pytest.raises(ValueError, match="`b`"):
        hpinv_solve(A, B[:3])
    with pytest.raises(ValueError, match="`target_bits`"):
        hpinv_solve(A, B, target_bits=-1.0)
    with pytest.raises(ValueError, match="`a`"):
        hpinv_solve(np.ones((N, N)), B)
