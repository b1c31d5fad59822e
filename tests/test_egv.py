"""EGV (dominant-eigenvector circuit): physics, growth rate, read-out, transforms, errors.

The linear (at-rest) model is written again here in NumPy from KCL (`egv_jacobian`) and
checked against `dynamics().jacobian()`; the closed-form growth rate against the eigenvalues
of that Jacobian; the railed read-out against `numpy.linalg.eig`'s dominant eigenvector; the
measured growth of the waveform against the linearized rate. Compile time dominates, so the
ODE runs share one circuit structure (Google matrix, n = 6, op-amp inverters) and pass
`t_max` as an array.
"""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amcdyn._devices import Variation
from amcdyn._egv import EGV, dominant_eigenpair, google_matrix, simulate_egv
from amcdyn._mc import perturb_circuit


G0 = 1e-4
F_GBW = 1e8
WT = 2 * np.pi * F_GBW


def _graph(n, seed):
    rng = np.random.default_rng(seed)
    adj = (rng.uniform(size=(n, n)) < 0.4).astype(float)
    np.fill_diagonal(adj, 0)
    return adj


GOOGLE = np.asarray(google_matrix(_graph(6, 0)))


def _np_dominant(a):
    """Dominant eigenvector by numpy, unit norm, largest-magnitude entry positive."""
    lam, vec = np.linalg.eig(a)
    k = np.argmax(lam.real)
    v = vec[:, k].real
    v = v / np.linalg.norm(v)
    return lam[k].real, v * np.sign(v[np.argmax(np.abs(v))])


def _sym(n, seed):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, n))
    return (m + m.T) / 2 + 3 * np.eye(n)  # symmetric, positive dominant eigenvalue


def egv_jacobian(a, lam, *, inverters, balance, a0=1e5):
    """The at-rest Jacobian from KCL, independently of amcdyn.

    TIA i:  y_i' = -w0 y_i - wT (sum_j G+_ij V_j + G-_ij y_j + G_l y_i) / S_i
    inverter (op-amp): V_i' = -w0 V_i - wT (y_i + V_i) / 2; ideal: V = -y.
    """
    n = a.shape[0]
    gp, gn = G0 * np.clip(a, 0, None), G0 * np.clip(-a, 0, None)
    rows = (gp + gn).sum(1)
    s = rows + lam * G0 + ((rows.max() - rows) if balance else 0)
    w0 = WT / a0
    if inverters == "ideal":
        return -w0 * np.eye(n) - WT * (-gp + gn + lam * G0 * np.eye(n)) / s[:, None]
    jac = np.zeros((2 * n, 2 * n))
    jac[:n, :n] = -w0 * np.eye(n) - WT * (gn + lam * G0 * np.eye(n)) / s[:, None]
    jac[:n, n:] = -WT * gp / s[:, None]
    jac[n:, :n] = -WT / 2 * np.eye(n)
    jac[n:, n:] = -(w0 + WT / 2) * np.eye(n)
    return jac


# ---------------------------------------------------------------------------------------
# linear model and growth rate (no ODE)


@pytest.mark.parametrize(
    "matrix, inverters, balance",
    [
        ("google", "ideal", True),
        ("google", "opamp", False),
        ("sym", "ideal", False),
        ("sym", "opamp", True),
    ],
)
def test_jacobian_matches_kcl(matrix, inverters, balance):
    a = GOOGLE if matrix == "google" else _sym(5, 1)
    lam = _np_dominant(a)[0] * 0.97
    c = EGV.from_matrix(a, lam=lam, inverters=inverters, balance=balance)
    ref = egv_jacobian(a, lam, inverters=inverters, balance=balance)
    # Same formula, different code: agreement to rounding (rates ~ 1e8/s).
    np.testing.assert_allclose(np.asarray(c.dynamics().jacobian()), ref, rtol=1e-12, atol=1e-3)


@pytest.mark.parametrize("inverters", ["ideal", "opamp"])
@pytest.mark.parametrize("mismatch", [0.003, 0.03])
def test_growth_rate_closed_form_exact_balanced(inverters, mismatch):
    # Balanced rows, A >= 0: the closed form is the exact eigenvalue (2x2 per mode).
    c = EGV.from_matrix(GOOGLE, lam=1 - mismatch, inverters=inverters)
    ev = np.linalg.eigvals(np.asarray(c.dynamics().jacobian()))
    # rtol 1e-8: a root of a quadratic vs LAPACK eig of the 12 x 12 Jacobian.
    np.testing.assert_allclose(float(c.growth_rate()), ev.real.max(), rtol=1e-8)
    assert ev.real.max() > 0
    # ... and proportional to the mismatch (first order): sigma ~ (l1/lam - 1)/(1/a + 1/g).
    s = float(np.max(GOOGLE.sum(1)) + 1 - mismatch)
    alpha = WT * (1 - mismatch) / s
    first = (1 / (1 - mismatch) - 1) / (1 / alpha + (2 / WT if inverters == "opamp" else 0))
    # Finite gain (w0 = wT/1e5) and the second-order term: 2 % for these mismatches.
    np.testing.assert_allclose(ev.real.max(), first, rtol=2e-2)


def test_growth_rate_first_order_unbalanced_signed():
    # Unbalanced signed symmetric matrix, ideal inverters: first-order kappa formula.
    a = _sym(6, 2)
    l1 = _np_dominant(a)[0]
    for mismatch in (1e-3, 1e-2):
        c = EGV.from_matrix(a, lam=l1 * (1 - mismatch), inverters="ideal", balance=False)
        ev = np.linalg.eigvals(np.asarray(c.dynamics().jacobian())).real.max()
        # Error O(mismatch^2) relative to O(mismatch): <= 5 * mismatch relative.
        np.testing.assert_allclose(float(c.growth_rate()), ev, rtol=5 * mismatch)


def test_only_modes_above_lam_grow():
    a = _sym(5, 3)
    lams = np.sort(np.linalg.eigvalsh(a))[::-1]
    lam = (lams[1] + lams[2]) / 2  # two eigenvalues above the set point
    c = EGV.from_matrix(a, lam=lam, inverters="ideal")
    ev = np.linalg.eigvals(np.asarray(c.dynamics().jacobian()))
    assert np.sum(ev.real > 0) == 2


def test_google_matrix_properties():
    g = GOOGLE
    np.testing.assert_allclose(g.sum(0), 1, rtol=1e-12)  # column-stochastic
    ev = np.sort(np.abs(np.linalg.eigvals(g)))[::-1]
    np.testing.assert_allclose(ev[0], 1, rtol=1e-12)
    assert ev[1] <= 0.85 + 1e-12
    # A dangling page (no out-links) spreads uniformly.
    adj = _graph(5, 1)
    adj[2] = 0
    gm = np.asarray(google_matrix(adj))
    np.testing.assert_allclose(gm[:, 2], 1 / 5, rtol=1e-12)
    l1, v = dominant_eigenpair(jnp.asarray(g))
    l1_np, v_np = _np_dominant(g)
    np.testing.assert_allclose(float(l1), l1_np, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(v), v_np, atol=1e-12)


# ---------------------------------------------------------------------------------------
# transient


T_MAX = jnp.asarray(3.5e-5)
# Tsit5 rather than the default Kvaerno5: it compiles in about half the time, and the
# ~1e4 steps it takes here run in well under a second.
SOLVER = dfx.Tsit5()


def _sim(c, **kw):
    return simulate_egv(c, throw=False, solver=SOLVER, **kw)


@pytest.fixture(scope="module")
def google_run():
    c = EGV.from_matrix(GOOGLE)  # default lam
    # t_max as an array (the default is 6.0e-5 s for this circuit; it settles by 2.3e-5 s):
    # every eager run below reuses this one compilation.
    return c, _sim(c, t_max=T_MAX)


def _railed_prediction(a, lam, *, a0=np.inf):
    """The railed equilibrium from KCL: the largest-|v1| TIA k at the rail (y_k = 1), every
    other TIA at u_i = -y_i/A0 with u = (G+ V + G- y + G_l y)/S and op-amp inverters at
    V = -beta y, beta = 1/(1 + 2/A0) (balanced rows); returns y unit-norm, sign-fixed."""
    _, v1 = _np_dominant(a)
    n = a.shape[0]
    k = int(np.argmax(np.abs(v1)))
    r = np.delete(np.arange(n), k)
    beta = 1 / (1 + 2 / a0)
    ap, an = np.clip(a, 0, None), np.clip(-a, 0, None)
    rows = (ap + an).sum(1)
    s = rows.max() + lam  # balanced S_i / G0
    m = -beta * ap + an + (lam + s / a0) * np.eye(n)  # m @ y = 0 on the rows r
    y = np.zeros(n)
    y[k] = 1.0
    y[r] = np.linalg.solve(m[np.ix_(r, r)], -m[r, k])
    y /= np.linalg.norm(y)
    return y * np.sign(y[np.argmax(np.abs(y))])


def test_egv_reads_dominant_eigenvector(google_run):
    c, sol = google_run
    assert sol.status == "settled"
    l1, v1 = _np_dominant(GOOGLE)
    # The read-out error is the railed equilibrium's, O(mismatch / deflation gap): Newton's
    # equilibrium matches the KCL closed form to rounding (1e-9), the final outputs match it
    # within the tol band (1e-3).
    v_pred = _railed_prediction(GOOGLE, float(c.lam), a0=1e5)
    v_ss = np.asarray(sol.v_steady) / np.linalg.norm(np.asarray(sol.v_steady))
    np.testing.assert_allclose(v_ss, v_pred, atol=1e-9)
    np.testing.assert_allclose(np.asarray(sol.solution), v_pred, atol=2e-3)
    err = np.linalg.norm(np.asarray(sol.solution) - v1)
    # Ideal op-amps give the same read-out error to 5 % (finite gain is a small correction).
    v_ideal = _railed_prediction(GOOGLE, float(c.lam))
    np.testing.assert_allclose(err, np.linalg.norm(v_ideal - v1), rtol=0.05)
    np.testing.assert_allclose(float(sol.rel_error), err, rtol=1e-9)
    # The default lam (1 % of the deflation gap below lambda_1) reads v1 to < 1e-2 (5.0e-3).
    assert err < 1e-2
    # The railed equilibrium: one output at the rail, a stable fixed point.
    assert np.max(np.abs(np.asarray(sol.v_steady))) == pytest.approx(1.0, abs=1e-9)
    assert bool(sol.stable) and float(sol.max_real_eig) < 0
    np.testing.assert_allclose(np.asarray(sol.v_final), np.asarray(sol.v_steady), atol=1e-3)
    # PageRank vector: the read-out normalized to sum 1 is the stationary distribution.
    pr = np.asarray(sol.solution) / np.sum(np.asarray(sol.solution))
    np.testing.assert_allclose(GOOGLE @ pr, pr, atol=5e-3)
    assert float(sol.energy) > float(sol.power) * float(sol.settling_time) > 0


def test_growth_matches_linearization(google_run):
    c, sol = google_run
    ev = np.linalg.eigvals(np.asarray(c.dynamics().jacobian())).real.max()
    np.testing.assert_allclose(float(sol.growth_rate), ev, rtol=1e-10)
    np.testing.assert_allclose(float(sol.growth_rate_predicted), ev, rtol=1e-8)
    # Measured growth of max|y| in the linear phase (3x to 30x the seed, rails <= 3 %): the
    # log-slope equals the dominant eigenvalue to 2 % (rail compression, residual modes).
    ts, peak = np.asarray(sol.ts), np.max(np.abs(np.asarray(sol.vs)), axis=1)
    sel = (peak > 3e-3) & (peak < 3e-2)
    assert sel.sum() >= 5
    slope = np.polyfit(ts[sel], np.log(peak[sel]), 1)[0]
    np.testing.assert_allclose(slope, ev, rtol=2e-2)
    # Time to rail ~ ln(0.9 v_sat / (seed amplitude along v1)) / sigma; the seed is 1 mV on
    # every TIA, its v1 component has peak c1 = (w1.seed)/(w1.v1) max|v1| (left eigenvector w1).
    lam, vl = np.linalg.eig(GOOGLE.T)
    w1 = vl[:, np.argmax(lam.real)].real
    _, v1 = _np_dominant(GOOGLE)
    c1 = (w1 @ (1e-3 * np.ones(6))) / (w1 @ v1) * np.max(np.abs(v1))
    t_pred = np.log(0.9 / abs(c1)) / ev
    # 10 %: the rail factor slows the last e-fold, and the opamp inverters' fast mode.
    np.testing.assert_allclose(float(sol.time_to_rail), t_pred, rtol=0.1)
    assert float(sol.time_to_rail) < float(sol.settling_time) < float(sol.t_max)
    assert float(sol.direction_settling_time) <= float(sol.settling_time)


def test_smaller_mismatch_is_slower_and_more_accurate(google_run):
    c, sol = google_run
    c2 = EGV.from_matrix(GOOGLE, lam=0.98)
    sol2 = _sim(c2)
    assert sol2.status == "settled"
    assert float(sol2.rel_error) > 2 * float(sol.rel_error)
    assert float(sol2.settling_time) < float(sol.settling_time)
    # No mode above lam: nothing grows, not settled.
    c3 = EGV.from_matrix(GOOGLE, lam=0.999)
    c3 = eqx.tree_at(lambda c: (c.lam, c.g_lambda), c3, (1.01 * c3.lam, 1.01 * c3.g_lambda))
    sol3 = _sim(c3, t_max=T_MAX)
    assert float(sol3.growth_rate) < 0
    assert sol3.status == "not_settled"
    assert np.isinf(float(sol3.settling_time)) and np.isinf(float(sol3.energy))


def test_jit_vmap_montecarlo(google_run):
    c, sol = google_run
    # Monte Carlo: perturb_circuit works on EGV (array + TIA/inverter offsets), under
    # jit(vmap). lam = 0.98: the mismatch must exceed the lambda_1 shift that the device
    # variation causes (~ sigma / sqrt(row length)), or nothing grows.
    c = EGV.from_matrix(GOOGLE, lam=0.98)
    sol = _sim(c, t_max=T_MAX)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)

    @jax.jit
    def run(keys):
        def one(k):
            ck = perturb_circuit(c, k, programming=Variation(0.003), offset_sigma=1e-4)
            return _sim(ck, t_max=T_MAX)

        return jax.vmap(one)(keys)

    sols = run(keys)
    assert sols.solution.shape == (3, 6) and sols.rel_error.shape == (3,)
    assert sols.vs.shape == (3, 513, 6)
    assert list(sols.status_names()) == ["settled"] * 3
    # 0.3 % device variation moves the read-out, by less than the 3.7 % mismatch error.
    d = np.linalg.norm(np.asarray(sols.solution) - np.asarray(sol.solution)[None], axis=1)
    assert np.all(d > 1e-5) and np.all(d < 0.03)


def test_grad_vs_finite_differences():
    # d(time_to_rail)/d(lam) through the ODE, vs central differences (the forward runs reuse
    # the compiled solve of the other tests).
    c0 = EGV.from_matrix(GOOGLE, lam=0.98)

    def f(lam):
        c = eqx.tree_at(lambda c: (c.lam, c.g_lambda), c0, (lam, lam * c0.g0))
        sol = _sim(c, t_max=T_MAX)
        return sol.time_to_rail * 1e6, sol.result  # us

    lam = c0.lam
    (t_rail, result), g = jax.value_and_grad(f, has_aux=True)(lam)
    assert int(result._value) == 0 and 0 < float(t_rail) < 35
    # h small enough that the crossing (moving by g h = 1.3e-3 us) stays in one interval of
    # the saved grid (0.12 us), where the interpolated time_to_rail is smooth.
    h = 1e-5
    fd = (f(lam + h)[0] - f(lam - h)[0]) / (2 * h)
    # 1e-3: O(h^2) and the solver's error (rtol 1e-5, but nearly the same step sequence in
    # the three runs) against a 1.3e-3 relative change.
    np.testing.assert_allclose(float(g), float(fd), rtol=1e-3)
    assert float(g) > 0  # closer to lambda_1: slower growth
    # The closed-form growth rate's gradient, vs central differences.
    gr = jax.grad(
        lambda lam: eqx.tree_at(lambda c: (c.lam, c.g_lambda), c0, (lam, lam * c0.g0)).growth_rate()
    )(lam)
    gr_fd = (
        EGV.from_matrix(GOOGLE, lam=0.98 + 1e-6).growth_rate()
        - EGV.from_matrix(GOOGLE, lam=0.98 - 1e-6).growth_rate()
    ) / 2e-6
    np.testing.assert_allclose(float(gr), float(gr_fd), rtol=1e-6)  # O(h^2), rounding
    assert float(gr) < 0


# ---------------------------------------------------------------------------------------
# errors


def test_bad_inputs():
    with pytest.raises(ValueError, match="`a`"):
        EGV.from_matrix(np.ones((3, 4)))
    with pytest.raises(ValueError, match="`a`"):
        EGV.from_matrix(np.array([[np.nan, 1.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="complex dominant"):
        EGV.from_matrix(np.array([[0.0, -1.0], [1.0, 0.0]]) + 0.1 * np.eye(2))
    with pytest.raises(ValueError, match="no dominant eigenvalue gap"):
        EGV.from_matrix(np.eye(3))
    with pytest.raises(ValueError, match="<= 0"):
        EGV.from_matrix(-np.diag([1.0, 2.0]))
    with pytest.raises(ValueError, match="`lam`"):
        EGV.from_matrix(GOOGLE, lam=1.2)
    with pytest.raises(ValueError, match="`lam`"):
        EGV.from_matrix(GOOGLE, lam=-0.5)
    with pytest.raises(ValueError, match="`v_sat`"):
        EGV.from_matrix(GOOGLE, v_sat=0.0)
    with pytest.raises(ValueError, match="`v_init`"):
        EGV.from_matrix(GOOGLE, v_init=np.ones(3) * 1e-3)
    with pytest.raises(ValueError, match="`v_init`"):
        EGV.from_matrix(GOOGLE, v_init=2.0)
    with pytest.raises(ValueError, match="`v_init`"):
        EGV.from_matrix(GOOGLE, v_init=0.0)
    with pytest.raises(ValueError, match="`inverters`"):
        EGV.from_matrix(GOOGLE, inverters="none")
    with pytest.raises(ValueError, match="`g0`"):
        EGV.from_matrix(GOOGLE, g0=-1.0)
    with pytest.raises(ValueError, match="`damping`"):
        google_matrix(_graph(4, 0), damping=1.0)
    with pytest.raises(ValueError, match="`adjacency`"):
        google_matrix(-np.ones((3, 3)))
    c = EGV.from_matrix(GOOGLE)
    with pytest.raises(ValueError, match="`tol`"):
        simulate_egv(c, tol=2.0)
    with pytest.raises(ValueError, match="`rail_frac`"):
        simulate_egv(c, rail_frac=1.5)
    with pytest.raises(ValueError, match="`circuit`"):
        simulate_egv(object())
    # Default lam: below lambda_1, by 1 % of the deflation gap.
    l1 = _np_dominant(GOOGLE)[0]
    assert 0.9 * l1 < float(c.lam) < l1
