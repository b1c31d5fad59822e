"""Compressed-sensing (analog LASSO, LCA dynamics): physics, recovery, transforms, errors.

References written here, independently of amcdyn: a NumPy ISTA for the LASSO minimizer
(checked by its KKT conditions) and a NumPy transcription of the circuit's KCL and op-amp
equations (`lasso_field`). One circuit shape (m = 8, n = 16) and one option set are shared by
the ODE runs, so the solve compiles once per transform.
"""

import functools

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import amcdyn
from amcdyn._cs import LASSO, cs_problem, lasso_solution, soft_threshold
from amcdyn._devices import Variation
from amcdyn._mc import perturb_circuit


M, N, K = 8, 16, 2
LAM = 0.05
WT = 2 * np.pi * 1e8
T_MAX = jnp.asarray(3e-6)  # ~470 neuron time constants; these problems settle by ~0.4 us


def _problem(seed, k=K, noise=0.01):
    phi, x, y = cs_problem(jr.PRNGKey(seed), M, N, k, noise)
    return np.asarray(phi), np.asarray(x), np.asarray(y)


@functools.lru_cache
def coordinate_descent(seed, lam=LAM, sweeps=5000):
    """NumPy cyclic coordinate descent for the LASSO of problem `seed` (stops at 1e-15)."""
    phi, _, y = _problem(seed)
    col = (phi**2).sum(0)
    a = np.zeros(phi.shape[1])
    r = y.copy()
    for _ in range(sweeps):
        change = 0.0
        for j in range(len(a)):
            rho = phi[:, j] @ r + col[j] * a[j]
            new = np.sign(rho) * max(abs(rho) - lam, 0) / col[j]
            r -= phi[:, j] * (new - a[j])
            change = max(change, abs(new - a[j]))
            a[j] = new
        if change < 1e-15:
            break
    return a


def kkt_violation(phi, y, lam, a):
    """max over j of the LASSO optimality violation (0 at the minimizer)."""
    g = phi.T @ (y - phi @ a)
    on = a != 0
    v_on = np.abs(g[on] - lam * np.sign(a[on]))
    v_off = np.maximum(np.abs(g[~on]) - lam, 0)
    return max(v_on.max(initial=0), v_off.max(initial=0))


def lasso_field(phi, y, lam, width, state, *, a0=1e5, g0=1e-4):
    """dw/dt, dr/dt from KCL at the TIA nodes rho and neuron nodes nu (G_f = G_L = G0).

    rho_i = (sum_j G_ij a_j + G_f r_i - G0 y_i) / D_i,  r_i' = -w0 r_i - wT rho_i
    nu_j = (sum_i G_ij r_i + G0 a_j + G_L w_j) / E_j,    w_j' = -w0 w_j - wT nu_j
    a = T(u) with u = -w; D, E the total conductances on each node (both signs of G).
    """
    n = phi.shape[1]
    w, r = state[:n], state[n:]
    sp = lambda z: np.logaddexp(0, z)
    u = -w
    a = width * (sp((u - lam) / width) - sp((-u - lam) / width))
    g = g0 * phi
    d = np.abs(g).sum(1) + g0
    e = np.abs(g).sum(0) + 2 * g0
    rho = (g @ a + g0 * r - g0 * y) / d
    nu = (g.T @ r + g0 * a + g0 * w) / e
    w0 = WT / a0
    return np.concatenate([-w0 * w - WT * nu, -w0 * r - WT * rho])


@eqx.filter_jit
def _equilibrium(c):
    """(decoded estimate a, full equilibrium state) of a circuit: one compilation per shape."""
    y_ss = c.dynamics().steady_state()
    return c.decode(y_ss[:N]), y_ss


@eqx.filter_jit
def _batch_equilibrium(circuits):
    """The decoded equilibria of a batch of circuits (vmap), one compilation per shape."""
    return jax.vmap(lambda c: _equilibrium(c)[0])(circuits)


# ---------------------------------------------------------------------------------------
# steady state and the model


def test_exact_solution_is_lasso_minimizer():
    # Reference: coordinate descent (independent of amcdyn's FISTA + active-set solve).
    for seed in range(3):
        phi, _, y = _problem(seed)
        a_ref = coordinate_descent(seed)
        assert kkt_violation(phi, y, LAM, a_ref) < 1e-10
        a = np.asarray(lasso_solution(jnp.asarray(phi), jnp.asarray(y), jnp.asarray(LAM)))
        # Active-set closed form vs coordinate descent to 1e-15 steps: agreement to 1e-9.
        np.testing.assert_allclose(a, a_ref, atol=1e-9)


def test_vector_field_matches_kcl():
    phi, _, y = _problem(0)
    c = LASSO.from_matrix(phi, y, LAM)
    state = np.random.default_rng(0).normal(scale=0.3, size=N + M)
    ref = lasso_field(phi, y, LAM, 1e-3 * LAM, state)
    out = np.asarray(c.dynamics().vector_field(jnp.asarray(state)))
    # Same equations, different code: rounding of ~1e8 V/s rates.
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-3)


def test_ideal_steady_state_equals_lasso():
    # Ideal op-amps (A0 = inf) and a tiny smoothing width: the circuit's equilibrium is the
    # LASSO minimizer (the LCA fixed point).
    for seed in range(3):
        phi, _, y = _problem(seed)
        a_ref = coordinate_descent(seed)
        c = LASSO.from_matrix(phi, y, LAM, a0=np.inf, width=1e-7 * LAM)
        a, y_ss = _equilibrium(c)
        a = np.asarray(a)
        # Residual of the field, V/s (rates ~1e8/s): an equilibrium.
        assert np.max(np.abs(np.asarray(c.dynamics().vector_field(y_ss)))) < 1e-3
        # width delta = 5e-9 V: a zero entry leaks at most delta ln 2; support entries exact.
        np.testing.assert_allclose(a, a_ref, atol=1e-8)
        # The TIAs hold the residual r = y - Phi a.
        np.testing.assert_allclose(np.asarray(y_ss[N:]), y - phi @ a_ref, atol=1e-8)


def test_finite_gain_steady_state_close_to_lasso():
    seed = 1
    phi, _, y = _problem(seed)
    a_ref = coordinate_descent(seed)
    c = LASSO.from_matrix(phi, y, LAM)  # A0 = 1e5, width 1e-3 lam
    a = np.asarray(_equilibrium(c)[0])
    # Finite gain (1/A0 relative, times the loop's condition) and the soft threshold's width
    # (5e-5 V): 1e-3 of full scale.
    err = np.max(np.abs(a - a_ref)) / np.max(np.abs(a_ref))
    assert 1e-7 < err < 1e-3


def test_equilibrium_stable_and_tau(run):
    c, sol = run
    phi, _, _ = _problem(0)
    # The Jacobian at the equilibrium (simulate's eigenvalues): stable, and the slow rate is
    # a fraction of 1/tau (the active set's Phi_S^T Phi_S slows it, the TIA pole too).
    ev = np.asarray(sol.eigenvalues)
    assert ev.real.max() < 0 and float(sol.max_real_eig) == ev.real.max()
    tau = (np.abs(phi).sum(0) + 2) / WT
    assert 1e-3 / tau.max() < -ev.real.max() < 1 / tau.min()
    # tau_j = E_j / (wT G0) = (||Phi_:j||_1 + 2) / wT.
    np.testing.assert_allclose(
        np.asarray(c.time_constants()), (np.abs(phi).sum(0) + 2) / WT, rtol=1e-12
    )


def test_soft_threshold_limit():
    u = jnp.linspace(-1, 1, 101)
    exact = jnp.sign(u) * jnp.maximum(jnp.abs(u) - 0.3, 0)
    for width in (1e-2, 1e-4):
        err = jnp.max(jnp.abs(soft_threshold(u, 0.3, width) - exact))
        assert float(err) <= width * np.log(2) * (1 + 1e-9)  # the bound delta ln 2


# ---------------------------------------------------------------------------------------
# recovery vs sparsity and noise


RECOVERY_LAM = 0.02
NOISES = (0.0, 0.05, 0.2)
SPARSITIES = (1, 3, 6)


@pytest.fixture(scope="module")
def recovery():
    """Mean recovery error ||a - x|| / ||x|| of the circuit's equilibrium over 6 problems per
    setting: problems drawn eagerly, all equilibria in one jit(vmap) call."""
    settings = [(2, noise) for noise in NOISES] + [(k, 0.01) for k in SPARSITIES]
    keys = jr.split(jr.PRNGKey(7), 6)
    probs = [cs_problem(key, M, N, k, noise) for k, noise in settings for key in keys]
    phi, x, y = (jnp.stack(z) for z in zip(*probs))

    circuits = jax.vmap(lambda phi, y: LASSO.from_matrix(phi, y, RECOVERY_LAM))(phi, y)
    a = _batch_equilibrium(circuits)
    e = np.asarray(jnp.linalg.norm(a - x, axis=1) / jnp.linalg.norm(x, axis=1))
    e = e.reshape(len(settings), len(keys)).mean(1)
    return dict(zip(settings, e))


def test_recovery_error_grows_with_noise(recovery):
    errs = [recovery[(2, noise)] for noise in NOISES]
    assert errs[0] < errs[1] < errs[2]
    assert errs[0] < 0.1  # noiseless 2-sparse, 8 of 16: recovered up to the lam bias
    assert errs[2] > 0.15


def test_recovery_error_grows_with_sparsity(recovery):
    errs = [recovery[(k, 0.01)] for k in SPARSITIES]
    assert errs[0] < errs[1] < errs[2]


# ---------------------------------------------------------------------------------------
# transient, transforms


def _sim(c, rtol=1e-8):
    # An explicit controller with array tolerances: every run shares one compilation.
    controller = dfx.PIDController(rtol=jnp.asarray(rtol), atol=jnp.asarray(rtol * 1e-2))
    return amcdyn.simulate(
        c, solver=dfx.Tsit5(), t_max=T_MAX, stepsize_controller=controller, throw=False
    )


@pytest.fixture(scope="module")
def run():
    phi, _, y = _problem(0)
    c = LASSO.from_matrix(phi, y, LAM)
    return c, _sim(c)


def test_simulate_settles_to_lasso(run):
    c, sol = run
    assert sol.status == "settled"
    np.testing.assert_allclose(np.asarray(sol.exact), coordinate_descent(0), atol=1e-9)
    # rel_error against the exact minimizer: finite gain and smoothing, < 1e-3 (1.8e-4).
    assert float(sol.rel_error) < 1e-3
    assert bool(sol.stable) and 0 < float(sol.settling_time) < float(T_MAX)
    # The last approach is linear: the deviation decays at the slowest eigenvalue of the
    # Jacobian at the equilibrium (10 %: other modes still present in the fitted window).
    ts, vs = np.asarray(sol.ts), np.asarray(sol.vs)
    dev = np.max(np.abs(vs - np.asarray(sol.v_steady)[None]), axis=1)
    # Window: below 1e-4 the active set is final and the faster modes have died out, above
    # 1e-8 the deviation is clear of the solver's noise floor (~1e-9 at rtol 1e-8).
    sel = (dev < 1e-4) & (dev > 1e-8)
    assert sel.sum() >= 4
    slope = np.polyfit(ts[sel], np.log(dev[sel]), 1)[0]
    # 10 %: the slowest modes are a complex pair with a close neighbour (measured 4 %).
    np.testing.assert_allclose(slope, float(sol.max_real_eig), rtol=0.1)
    assert float(sol.energy) > 0 and np.isfinite(float(sol.energy))


def test_jit_vmap_montecarlo(run):
    c, sol = run
    # perturb_circuit works on LASSO (array 1, and one offset per TIA), under vmap; the
    # equilibria under jit(vmap), and one perturbed circuit through simulate (the same
    # compiled solve as the other tests).
    # As many samples as the recovery fixture's batch: the batched solve is reused.
    n_mc = 6 * (len(NOISES) + len(SPARSITIES))
    keys = jr.split(jr.PRNGKey(1), n_mc)
    with_offsets = jax.vmap(lambda k: perturb_circuit(c, k, offset_sigma=1e-3))(keys)
    assert with_offsets.amp.v_os.shape == (n_mc, M)
    cks = jax.vmap(lambda k: perturb_circuit(c, k, programming=Variation(0.02)))(keys)
    assert cks.g_pos.shape == (n_mc, M, N)
    a = _batch_equilibrium(cks)
    assert a.shape == (n_mc, N)
    ex = np.asarray(sol.exact)
    err = np.linalg.norm(np.asarray(a) - ex[None], axis=1) / np.linalg.norm(ex)
    # 2 % variation of array 1: the answer moves by more than the nominal error, < 20 %.
    assert np.all(err > float(sol.rel_error)) and np.all(err < 0.2)
    one = _sim(jax.tree_util.tree_map(lambda x: x[0], cks))
    assert one.status == "settled"
    np.testing.assert_allclose(float(one.rel_error), err[0], rtol=1e-3)  # ODE vs Newton


def test_grad_vs_finite_differences(run):
    c, _ = run

    def f(lam):
        ci = eqx.tree_at(lambda c: (c.lam, c.width), c, (lam, 1e-3 * lam))
        return jnp.sum(_equilibrium(ci)[0] ** 2)

    lam = c.lam
    g = jax.grad(f)(lam)
    h = 1e-6
    fd = (f(lam + h) - f(lam - h)) / (2 * h)
    # Implicit-function derivative of the Newton equilibrium vs central differences.
    np.testing.assert_allclose(float(g), float(fd), rtol=1e-5)
    assert float(g) < 0  # a larger lam shrinks the estimate
    # (The gradient through `amcdyn.simulate`'s ODE path is tested for EGV's own simulator
    # and for INV in test_transforms.py; here it would cost a ~40 s compilation.)


# ---------------------------------------------------------------------------------------
# errors


def test_bad_inputs():
    phi, _, y = _problem(0)
    with pytest.raises(ValueError, match="`a`"):
        LASSO.from_matrix(phi[0], y, LAM)
    with pytest.raises(ValueError, match="`a`"):
        LASSO.from_matrix(np.full((3, 4), np.nan), np.ones(3), LAM)
    with pytest.raises(ValueError, match="`b`"):
        LASSO.from_matrix(phi, y[:3], LAM)
    with pytest.raises(ValueError, match="`b`"):
        LASSO.from_matrix(phi, np.full(M, np.inf), LAM)
    with pytest.raises(ValueError, match="`lam`"):
        LASSO.from_matrix(phi, y, 0.0)
    with pytest.raises(ValueError, match="`lam`"):
        LASSO.from_matrix(phi, y, np.ones(2))
    with pytest.raises(ValueError, match="`width`"):
        LASSO.from_matrix(phi, y, LAM, width=-1.0)
    with pytest.raises(ValueError, match="`f_gbw`"):
        LASSO.from_matrix(phi, y, LAM, f_gbw=0.0)
    with pytest.raises(ValueError, match="`m`"):
        cs_problem(jr.PRNGKey(0), 20, 10, 2)
    with pytest.raises(ValueError, match="`k`"):
        cs_problem(jr.PRNGKey(0), 5, 10, 11)
    with pytest.raises(ValueError, match="`noise`"):
        cs_problem(jr.PRNGKey(0), 5, 10, 2, noise=-0.1)
    with pytest.raises(ValueError, match="`n`"):
        cs_problem(jr.PRNGKey(0), 5, 10.0, 2)
