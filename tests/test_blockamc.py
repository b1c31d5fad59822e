"""BlockAMC: the five-step block solve (and its two-stage recursion) against NumPy.

References are independent of amcdyn: `numpy.linalg.solve` for the answer, and the held
voltages of every step written out in NumPy from the block algebra and the sign convention
($V_1 = -y$, $V_2 = -t$, $V_3 = x_2$, $V_4 = -u$, $V_5 = x_1$ for one stage), with the
finite-gain steady states of INV and MVM in closed form. Compile time dominates, so one
4 x 4 SPD problem and one option set are shared (`IDEAL`: integrator op-amps, ideal
inverters, tight band, output held at the end of the window).
"""

import functools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import amcdyn
from amcdyn._blockamc import BlockAMCSolution, blockamc_solve, blockamc_steady, compare_blockamc


_rng = np.random.default_rng(3)
_q = _rng.normal(size=(4, 4))
# SPD, so A11 and S are SPD: every INV step is stable. Seed 3 makes both A11 and S signed, so
# they share one compiled INV structure.
A = _q @ _q.T / 4 + np.eye(4)
B = _rng.uniform(-1, 1, 4)
X = np.linalg.solve(A, B)
IDEAL = dict(a0=np.inf, inverters="ideal", tol=1e-9, sample="final")


@functools.cache
def _solve(stages, **kw):
    return blockamc_solve(A, B, stages=stages, **{**IDEAL, **kw})


def test_ideal_limit_equals_numpy_solve():
    for stages in (1, 2):
        sol = _solve(stages)
        assert isinstance(sol, BlockAMCSolution)
        assert sol.status == "settled"
        # Integrator op-amps and ideal inverters: exact steady states; held at t_max where the
        # slowest mode is down by (tol/10)^1.5 ~ 3e-16 of full scale. 1e-9 covers round-off.
        np.testing.assert_allclose(sol.solution, X, rtol=1e-9, atol=1e-9 * np.abs(X).max())
        np.testing.assert_allclose(sol.exact, X, rtol=1e-12)
        assert float(sol.rel_error) < 1e-9


def test_two_stage_equals_one_stage_in_ideal_limit():
    one, two = _solve(1), _solve(2)
    # Same ideal limit: both equal A^-1 b to round-off (1e-9 as above).
    np.testing.assert_allclose(two.solution, one.solution, rtol=1e-9, atol=1e-10)
    assert one.sign == 1 and two.sign == -1  # [V5; V3] = -sigma x, sigma = -1 for one INV


def test_steps_are_the_block_algebra():
    # Held voltages of each step from the block algebra (one stage, sigma = -1).
    a11, a12, a21, a22 = A[:2, :2], A[:2, 2:], A[2:, :2], A[2:, 2:]
    b1, b2 = B[:2], B[2:]
    s = a22 - a21 @ np.linalg.solve(a11, a12)
    y = np.linalg.solve(a11, b1)
    t = b2 - a21 @ y
    x2 = np.linalg.solve(s, t)
    u = b1 - a12 @ x2
    x1 = np.linalg.solve(a11, u)
    expected = [-y, -t, x2, -u, x1]
    sol = _solve(1)
    assert sol.step_names == ("INV(A11)", "MVM(A21)", "INV(S)", "MVM(A12)", "INV(A11)")
    for step, v in zip(sol.steps, expected):
        np.testing.assert_allclose(step.v_final, v, rtol=1e-9, atol=1e-10)
    assert float(sol.max_abs_voltage) == pytest.approx(max(np.abs(v).max() for v in expected))


def test_time_and_energy_are_sums_of_steps():
    one, two = _solve(1), _solve(2)
    assert one.n_steps == 5
    # Two-stage: 3 sub-solves of 5 steps each, plus the 2 top-level MVMs.
    names = two.step_names
    assert len(names) == 17
    assert sum(n.startswith("INV") for n in names) == 9
    assert sum(n.startswith("MVM") for n in names) == 8
    for sol in (one, two):
        times = np.array([float(s.settling_time) for s in sol.steps])
        energies = np.array([float(s.energy) for s in sol.steps])
        assert np.all(times > 0) and np.all(energies > 0)
        np.testing.assert_allclose(sol.step_times, times, rtol=0)
        np.testing.assert_allclose(sol.settling_time, times.sum(), rtol=1e-13)
        np.testing.assert_allclose(sol.energy, energies.sum(), rtol=1e-13)
    held = _solve(1, t_hold=5e-9)
    np.testing.assert_allclose(held.settling_time, one.settling_time + 5 * 5e-9, rtol=1e-13)


def _inv_ss(m, v, a0):
    """Finite-gain INV steady state (ideal inverters, current input): -(M + diag(s)/A0)^-1 v,
    s = row sums of |M| (amc-physics.md §3)."""
    return -np.linalg.solve(m + np.diag(np.abs(m).sum(1)) / a0, v)


def _mvm_ss(m, v, a0):
    """Finite-gain TIA row (G_f = G0): -(M v)_i / (1 + (s_i + 1)/A0) (amc-physics.md §2)."""
    return -(m @ v) / (1 + (np.abs(m).sum(1) + 1) / a0)


def test_finite_gain_passes_through_every_step():
    a0 = 300.0
    sol = _solve(1, a0=a0)
    a11, a12, a21 = A[:2, :2], A[:2, 2:], A[2:, :2]
    s = A[2:, 2:] - a21 @ np.linalg.solve(a11, a12)
    v1 = _inv_ss(a11, B[:2], a0)
    v2 = _mvm_ss(np.hstack([a21, np.eye(2)]), np.concatenate([v1, B[2:]]), a0)
    v3 = _inv_ss(s, v2, a0)
    v4 = _mvm_ss(np.hstack([-a12, np.eye(2)]), np.concatenate([v3, B[:2]]), a0)
    v5 = _inv_ss(a11, v4, a0)
    x = np.concatenate([v5, v3])
    # Held at t_max, where the slowest mode is down to ~1e-15: 1e-9 covers round-off.
    np.testing.assert_allclose(sol.solution, x, rtol=1e-9, atol=1e-10)
    assert float(sol.rel_error) > 1e-3  # a0 = 300 is visibly wrong: the check has teeth


def test_sampling_at_settling_passes_the_band_error_on():
    # Held at each step's settling time, every step is off by at most tol of its full scale.
    tol = 1e-3
    sol = blockamc_solve(A, B, stages=1, a0=np.inf, inverters="ideal", tol=tol)
    err = float(sol.rel_error)
    assert 1e-6 < err < 20 * tol  # five steps, each within the band; errors add up
    assert sol.settling_time < _solve(1).settling_time  # tighter band takes longer


def test_variation_programs_each_array_once():
    key = jr.PRNGKey(3)
    prog = amcdyn.Programming((amcdyn.Variation(0.05),))
    sol = blockamc_solve(A, B, stages=1, programming=prog, key=key, **IDEAL)
    assert sol.status == "settled"
    assert 1e-4 < float(sol.rel_error) < 0.5
    # Steps 1 and 5 run on the same programmed A11: V1 = -Ahat^-1 b1, V5 = -Ahat^-1 V4.
    # Ahat from V1's circuit: its inverse maps b1 -> -V1 and V4 -> -V5, so one matrix
    # (the array with id 0, A11) explains both: solve for it from the two-step data.
    circuit = amcdyn.INV.from_matrix(A[:2, :2], B[:2], inverters="ideal", a0=np.inf)
    prog_c = amcdyn.perturb_circuit(circuit, jr.fold_in(key, 0), programming=prog)
    a_hat = np.asarray(prog_c.g_pos - prog_c.g_neg) / 1e-4
    v = [np.asarray(s.v_final) for s in sol.steps]
    np.testing.assert_allclose(v[0], -np.linalg.solve(a_hat, B[:2]), rtol=1e-9)
    np.testing.assert_allclose(v[4], -np.linalg.solve(a_hat, v[3]), rtol=1e-9)
    assert not np.allclose(a_hat, A[:2, :2], rtol=1e-3)  # it is perturbed


def test_compare_with_one_big_inv():
    prog = amcdyn.Programming((amcdyn.Variation(0.03),))
    res = compare_blockamc(
        A, B, jr.PRNGKey(0), n_samples=2, stages=(0, 1), programming=prog, **IDEAL
    )
    for s in (0, 1):
        assert res[s]["rel_error"].shape == (2,)
        assert np.all(res[s]["status"] == "settled")
        assert np.all(res[s]["time_s"] > 0) and np.all(res[s]["energy_j"] > 0)
        # 3 % variation on kappa ~ 5 matrices: errors of 1e-3 .. 1e-1.
        assert np.all((res[s]["rel_error"] > 1e-4) & (res[s]["rel_error"] < 0.3))
    # Five sequential steps take longer than the one loop.
    assert res["median"][1]["time_s"] > res["median"][0]["time_s"]


def test_jit_and_vmap_over_rhs():
    bs = jnp.asarray(_rng.uniform(-1, 1, (3, 4)))

    @jax.jit
    @jax.vmap
    def f(b):
        return blockamc_solve(A, b, stages=1, throw=False, **IDEAL).solution

    xs = f(bs)
    assert xs.shape == (3, 4)
    # jit+vmap equals the direct solve per column (1e-9 as in the ideal-limit test).
    np.testing.assert_allclose(xs, np.linalg.solve(A, np.asarray(bs).T).T, rtol=1e-9, atol=1e-10)


def test_grad_of_steady_error_wrt_g0_with_wires():
    # The t -> infinity chain (every step at its equilibrium): cheap to differentiate.
    def err(g0):
        x = blockamc_steady(A, B, stages=1, g0=g0, a0=1e4, r_w=20.0)
        return jnp.linalg.norm(x - X) / np.linalg.norm(X)

    g0 = 2e-4
    # One compiled function gives the values for the finite difference too.
    f = jax.jit(jax.value_and_grad(err))
    value, grad = f(jnp.asarray(g0))
    h = 1e-3 * g0
    fd = (float(f(jnp.asarray(g0 + h))[0]) - float(f(jnp.asarray(g0 - h))[0])) / (2 * h)
    assert float(value) > 1e-4
    # Central difference, relative step 1e-3: truncation ~1e-6 relative.
    assert float(grad) == pytest.approx(fd, rel=1e-4)


@pytest.mark.slow  # ~30 s on a loaded 2-core machine: the gradient of five inlined transients
def test_grad_of_error_wrt_g0_with_wires():
    # Wire resistance makes the answer depend on g0 r_w (without wires g0 cancels out). A 2 x 2
    # problem and the analytic step simulator keep the compilation of the gradient short.
    a2 = A[:2, :2]
    b2 = B[:2]

    def err(g0):
        kw = dict(a0=np.inf, inverters="ideal", tol=1e-9, r_w=20.0, method="analytic")
        return blockamc_solve(a2, b2, stages=1, g0=g0, throw=False, **kw).rel_error

    g0 = 2e-4
    # One compiled function gives the values for the finite difference too.
    f = jax.jit(jax.value_and_grad(err))
    value, grad = f(jnp.asarray(g0))
    h = 1e-3 * g0
    fd = (float(f(jnp.asarray(g0 + h))[0]) - float(f(jnp.asarray(g0 - h))[0])) / (2 * h)
    assert float(value) > 1e-4  # 20 Ohm wires at 200 uS: a visible error to differentiate
    # Central difference, relative step 1e-3: truncation ~1e-6 relative.
    assert float(grad) == pytest.approx(fd, rel=1e-4)


def test_steady_chain_handles_odd_sizes():
    rng = np.random.default_rng(1)
    for n, stages in ((5, 2),):  # 5 = 3 + 2, then 3 = 2 + 1 and 2 = 1 + 1
        q = rng.normal(size=(n, n))
        a = q @ q.T / n + np.eye(n)
        b = rng.uniform(-1, 1, n)
        # Integrator op-amps: the steady chain is exact block algebra (round-off only).
        x = blockamc_steady(a, b, stages=stages, a0=np.inf, inverters="ideal")
        np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-10, atol=1e-12)


def test_status_and_throw():
    # A negative definite Schur complement S = -I/2 makes INV(S) unstable; A11 is fine.
    a = A.copy()
    a[2:, 2:] = A[2:, :2] @ np.linalg.solve(A[:2, :2], A[:2, 2:]) - 0.5 * np.eye(2)
    sol = blockamc_solve(a, B, stages=1, throw=False, **IDEAL)
    assert sol.status == "unstable"
    assert [s.status for s in sol.steps] == ["settled", "settled", "unstable", "settled", "settled"]
    assert sol.result == amcdyn.RESULTS.unstable
    with pytest.raises(Exception, match="unstable"):
        blockamc_solve(a, B, stages=1, **IDEAL)


def test_bad_input():
    with pytest.raises(ValueError, match="A11"):
        blockamc_solve(np.array([[0.0, 1.0], [1.0, 0.0]]), np.ones(2))
    with pytest.raises(ValueError, match="singular"):
        blockamc_solve(np.ones((4, 4)), np.ones(4))
    with pytest.raises(ValueError, match="stages"):
        blockamc_solve(A, B, stages=3)  # 4 x 4 halves only twice
    with pytest.raises(ValueError, match="stages"):
        blockamc_solve(A, B, stages=-1)
    with pytest.raises(ValueError, match="`b`"):
        blockamc_solve(A, np.ones(3))
    with pytest.raises(ValueError, match="`a`"):
        blockamc_solve(np.ones((3, 4)), np.ones(3))
    with pytest.raises(ValueError, match="`a`"):
        blockamc_solve(A * np.nan, B)
    with pytest.raises(ValueError, match="`g_in`"):
        blockamc_solve(A, B, g_in=1e-4)
    with pytest.raises(ValueError, match="`foo`"):
        blockamc_solve(A, B, foo=1.0)
    with pytest.raises(ValueError, match="`v_os`"):
        blockamc_solve(A, B, v_os=np.zeros(4))
    with pytest.raises(ValueError, match="`method`"):
        blockamc_solve(A, B, method="spice")
    with pytest.raises(ValueError, match="`key`"):
        blockamc_solve(A, B, programming=amcdyn.Variation(0.1))
    with pytest.raises(ValueError, match="`g0`"):
        blockamc_solve(A, B, g0=-1.0)
    with pytest.raises(ValueError, match="`n_samples`"):
        compare_blockamc(A, B, jr.PRNGKey(0), n_samples=0)
