"""Input-referred amplifier noise as an SDE (`amcdyn._noise`).

References: `scipy.linalg.solve_continuous_lyapunov` for the stationary covariance; the
single-pole closed form $\\sigma^2 = \\int_0^\\infty e_n^2 |H(f)|^2 df = \\omega_T^2 e_n^2/(4k)$
(one-sided datasheet density) for the noise convention; `amcdyn.simulate` for the noise-free
limit; central finite differences for gradients. The SDE ensemble is compared with the
Lyapunov covariance within 5 standard errors of the sample estimator.

Compile time dominates, so one jitted, key-vmapped function (`_ensemble`) serves the
statistical test, the noise-free limit and the jit/vmap checks.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg as sl

import amcdyn
from amcdyn._noise import lyapunov, noise_covariance, simulate_noise


A = np.array([[2.0, -0.5], [-0.5, 1.5]])  # signed: op-amp inverters, 4 states
B = np.array([0.3, -0.2])
E_N = 1e-6  # V/sqrt(Hz); the output noise is linear in it
CIRCUIT = amcdyn.INV.from_matrix(A, B)


def _scipy_cov(circuit, e_n):
    """Output covariance from SciPy's Lyapunov solver, B built here from the ODE: the
    amplifier input noise enters each first-pole state with w_T (one-sided e_n -> /sqrt 2)."""
    dyn = circuit.dynamics()
    jac = np.asarray(dyn.jacobian())
    bmat = np.asarray(dyn.noise_input()) * np.asarray(e_n) / np.sqrt(2)
    p = sl.solve_continuous_lyapunov(jac, -bmat @ bmat.T)
    n = dyn.n_outputs
    return p[:n, :n]


def test_lyapunov_matches_scipy():
    rng = np.random.default_rng(0)
    for n in (3, 6):
        m = rng.normal(size=(n, n))
        a = -(m @ m.T + np.eye(n)) + (m - m.T)  # stable, non-normal
        g = rng.normal(size=(n, 2))
        p = lyapunov(jnp.asarray(a), jnp.asarray(g @ g.T))
        ref = sl.solve_continuous_lyapunov(a, -g @ g.T)
        # Both are backward-stable solves of a well-conditioned system: 1e-10 relative.
        np.testing.assert_allclose(p, ref, rtol=0, atol=1e-10 * np.abs(ref).max())


def test_noise_input_placement():
    # The noise must drive each amplifier's integrator state with w_T: checked against the
    # numerical derivative of the vector field in the offset v_os (same series position).
    for c in (
        amcdyn.INV.from_matrix(A, B, f_p2=3e8),
        amcdyn.MVM.from_matrix(np.ones((2, 3)), np.ones(3), f_p2=3e8),
        amcdyn.MVM.from_matrix(np.ones((2, 3)), np.ones(3)),
    ):
        dyn = c.dynamics()
        y = jnp.zeros(dyn.n_states)

        def field(v_os, c=c):
            return eqx.tree_at(lambda c: c.amp.v_os, c, v_os).dynamics().vector_field(y)

        d = jax.jacfwd(field)(jnp.zeros(dyn.n_outputs))
        n = dyn.n_outputs
        np.testing.assert_allclose(np.asarray(dyn.noise_input())[:, :n], d, rtol=1e-12)


def test_covariance_matches_scipy_and_closed_form():
    # INV with per-amplifier densities, noisy inverters and a second pole (8 states).
    c = amcdyn.INV.from_matrix(A, B, f_p2=3e8)
    e_main = np.array([1e-8, 3e-8])
    e_inv = np.array([2e-8, 5e-9])
    cov = noise_covariance(c, e_n=e_main, inverter_e_n=e_inv)
    ref = _scipy_cov(c, np.concatenate([e_main, e_inv]))
    # Same equation, different solvers: 1e-9 relative.
    np.testing.assert_allclose(cov, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())
    # Single-pole TIA: dV = -k V dt + w_T n dt, so the one-sided integral of e_n^2 |H|^2 is
    # w_T^2 e_n^2 / (4 k) exactly, with k the TIA's decay rate.
    m = amcdyn.MVM.from_matrix(np.array([[0.5, -1.0]]), np.array([0.2, 0.1]), f_gbw=5e7)
    k = float(m.dynamics().decay[0])
    w_t = 2 * np.pi * 5e7
    var = float(noise_covariance(m, e_n=1e-8)[0, 0])
    np.testing.assert_allclose(var, w_t**2 * 1e-16 / (4 * k), rtol=1e-12)


TAU = 1 / -np.max(np.linalg.eigvals(np.asarray(CIRCUIT.dynamics().jacobian())).real)


@jax.jit
def _ensemble(keys, e_n):
    # The deviation from the noise-free path is the noise response alone (linear circuit),
    # so the window may start once the noise is stationary (4 slowest time constants: the
    # variance is then within e^-8 of its limit), not after the deterministic settling.
    return jax.vmap(
        lambda k, e: simulate_noise(
            CIRCUIT, k, e_n=e, inverter_e_n=e, n_paths=32, n_samples=8, t_settle=4 * TAU
        )
    )(keys, e_n)


def test_sde_ensemble_matches_lyapunov_and_noise_free_limit():
    # One compiled call: instance 0 has e_n = 0 (the noise-free limit), instances 1..7 give
    # 7 x 32 = 224 noisy paths with 8 samples each, 3 slowest time constants apart.
    keys = jr.split(jr.PRNGKey(0), 8)
    e_n = jnp.full(8, E_N).at[0].set(0.0)
    sol = _ensemble(keys, e_n)
    ref = _scipy_cov(CIRCUIT, E_N)
    # Every vmapped call has the same noise-free path; the exact covariance scales as e_n^2.
    np.testing.assert_allclose(sol.cov[1], ref, rtol=1e-9)
    np.testing.assert_array_equal(sol.v_clean[1], sol.v_clean[-1])
    dev = np.asarray(sol.vs[1:] - sol.v_clean[1:, None])  # (7, 32, 8, outputs)
    dev = dev.reshape(-1, dev.shape[-1])  # 1792 samples
    for i in range(2):
        for j in range(2):
            prod = dev[:, i] * dev[:, j]
            se = prod.std() / np.sqrt(prod.size)
            # 5 standard errors of the sample mean, plus 1% of the variance for the Heun
            # step (h |lambda|max = 0.1 biases the stationary variance by ~0.3%).
            bound = 5 * se + 0.01 * np.sqrt(ref[i, i] * ref[j, j])
            assert abs(prod.mean() - ref[i, j]) < bound, (i, j, prod.mean(), ref[i, j], bound)
    # Distinct keys give distinct paths.
    assert not np.allclose(sol.vs[1], sol.vs[2])
    # Precision with noise: decode is -v (current input), so the expected squared error is
    # |x_clean - x*|^2 + tr(cov).
    x_exact = np.linalg.solve(A, B)
    x_clean = -np.asarray(sol.v_clean[1, -1])
    err = np.sqrt(np.sum((x_clean - x_exact) ** 2) + np.trace(ref)) / np.linalg.norm(x_exact)
    np.testing.assert_allclose(sol.rel_error_exact[1], err, rtol=1e-8)
    np.testing.assert_allclose(sol.bits_exact[1], -np.log2(err), rtol=1e-10)
    # The sample rms error (1792 samples) within 10% (about 3 standard errors).
    err_sample = np.sqrt(np.mean(np.asarray(sol.rel_error[1:]) ** 2))
    np.testing.assert_allclose(err_sample, err, rtol=0.1)

    # Noise-free limit (instance 0): every path is the noise-free one, and it matches simulate.
    np.testing.assert_array_equal(sol.vs[0], np.broadcast_to(sol.v_clean[0], sol.vs[0].shape))
    assert np.all(np.asarray(sol.v_rms[0]) == 0) and np.all(np.asarray(sol.cov[0]) == 0)
    ref_sim = amcdyn.simulate(CIRCUIT, n_save=0)
    fs = np.abs(ref_sim.v_final).max()
    # Heun (h|lambda| <= 0.1) vs Tsit5 (rtol 1e-5), 28 time constants after the step (the
    # transient is below e^-28 of full scale): 1e-4 of full scale.
    np.testing.assert_allclose(sol.v_clean[0, -1], ref_sim.v_final, rtol=0, atol=1e-4 * fs)
    np.testing.assert_allclose(sol.rel_error_clean[0], ref_sim.rel_error, rtol=0.2, atol=2e-5)


def test_grad_of_covariance():
    # d tr(cov)/d e_n = 2 tr(cov)/e_n exactly (quadratic); d/d f_gbw vs central differences.
    def tr(e_n, f_gbw):
        c = amcdyn.INV.from_matrix(A, B, f_gbw=f_gbw)
        return jnp.trace(noise_covariance(c, e_n=e_n, inverter_e_n=e_n))

    g_e, g_f = jax.grad(tr, argnums=(0, 1))(E_N, 1e8)
    val = tr(E_N, 1e8)
    np.testing.assert_allclose(g_e, 2 * val / E_N, rtol=1e-9)
    h = 1e4  # Hz (1e-4 relative): central-difference error ~1e-8 relative
    fd = (tr(E_N, 1e8 + h) - tr(E_N, 1e8 - h)) / (2 * h)
    np.testing.assert_allclose(g_f, fd, rtol=1e-6)
    # tr(cov) ~ 1/f_gbw-ish bandwidth scaling: noise power grows with bandwidth.
    assert g_f > 0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"e_n": -1e-9}, "e_n"),
        ({"e_n": float("nan")}, "e_n"),
        ({"e_n": np.ones(3) * 1e-9}, "e_n"),
        ({"e_n": 1e-9, "inverter_e_n": -1.0}, "inverter_e_n"),
        ({"e_n": 1e-9, "n_paths": 1}, "n_paths"),
        ({"e_n": 1e-9, "n_samples": 0}, "n_samples"),
        ({"e_n": 1e-9, "dt": 0.0}, "dt"),
        ({"e_n": 1e-9, "t_window": -1e-6}, "t_window"),
    ],
)
def test_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        simulate_noise(CIRCUIT, jr.PRNGKey(0), **kwargs)
