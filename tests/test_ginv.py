"""GINV (left/right pseudoinverse) and Ridge circuits: physics, transforms, errors, ngspice.

The two-stage loop (amcdyn/_ginv.py docstring) is written again here in NumPy (`ginv_ode`)
from the KCL and op-amp equations, independently of `dynamics()`, and checked for: the ODE
itself, the ideal-limit steady state against `numpy.linalg.lstsq`/`pinv`/ridge, the exact
finite-gain steady state, stability for random full-rank matrices, the decay rates (exact
closed form for +-1 matrices, the sigma_min^2 law with bounds in general), the sign rule (an
inverting second stage latches), and ngspice waveforms.

Compile time dominates, so one circuit (`A` 8 x 4, left, op-amp inverters) and one option set
(`SIM_KW`) are shared by every eager `simulate` call.
"""

import dataclasses
import functools

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import exact_transient, linear_ode, max_err_fs, value_and_jacrev

import amcdyn
from amcdyn import _ngspice
from amcdyn._ginv import GINV, Ridge


G0 = 1e-4
F_GBW = 1e8
WT = 2 * np.pi * F_GBW
_rng = np.random.default_rng(0)
A = _rng.normal(size=(8, 4))  # kappa = 3.4
B = _rng.normal(size=8)
S = _rng.normal(size=4)  # right-hand side of the right inverse of A.T (4 x 8)
LAM = 0.5


def _controller():
    # Arrays, not floats: one compiled solve serves every call with this tree structure.
    return dfx.PIDController(rtol=jnp.asarray(1e-8), atol=jnp.asarray(1e-10))


SIM_KW = dict(solver=dfx.Tsit5())


def _simulate(circuit, **kw):
    return amcdyn.simulate(circuit, stepsize_controller=_controller(), **SIM_KW, **kw)


# ---------------------------------------------------------------------------------------
# independent NumPy model


def ginv_ode(a, b, *, mode, inverters, g_f, a0=1e5, f_gbw=F_GBW, lam=None, inv_a0=None):
    """(J, c, blocks) of y' = J y + c for the GINV (lam None) or Ridge circuit.

    TIA i (n1):   v_i' = -w0 v_i - wT (sum_j B+_ij w_j + B-_ij wbar_j + g_f v_i + I1_i) / D1_i
    stage 2 (n2): w_j' = -w0 w_j + wT (sum_i B+_ij v_i + B-_ij vbar_i + g_l wbar_j + I2_j) / D2_j
    inverters:    xbar' = -w0' xbar - wT' (x + xbar) / 2, or xbar = -x (ideal, differential)
    B = G0 A, I1 = G0 b (left); B = G0 A^T, I2 = G0 b (right). Differential: D = max of the
    two input nodes' totals; else the sum of all conductances on the node.
    """
    g = G0 * np.asarray(a, float)
    bmat, i_in = (g, G0 * b) if mode == "left" else (g.T, G0 * b)
    n1, n2 = bmat.shape
    i1 = i_in if mode == "left" else np.zeros(n1)
    i2 = np.zeros(n2) if mode == "left" else i_in
    bp, bn = np.clip(bmat, 0, None), np.clip(-bmat, 0, None)
    signed = bool(np.any(a < 0))
    g_l = 0.0 if lam is None else lam * G0**2 / g_f
    w_bank = inverters if (signed or lam is not None) else "none"
    v_bank = inverters if signed else "none"
    g_f = np.broadcast_to(g_f, (n1,))
    if inverters == "differential":
        d1 = np.maximum(bp.sum(1) + g_f, bn.sum(1))
        d2 = np.maximum(bp.sum(0), bn.sum(0) + g_l)
    else:
        d1 = bp.sum(1) + bn.sum(1) + g_f
        d2 = bp.sum(0) + bn.sum(0) + g_l
    wt = 2 * np.pi * f_gbw
    w0 = wt / a0
    iw0 = wt / (a0 if inv_a0 is None else inv_a0)
    # state indices
    order = ["w", "v"] if mode == "left" else ["v", "w"]
    sizes = {"w": n2, "v": n1, "wb": n2, "vb": n1}
    if w_bank == "opamp":
        order.append("wb")
    if v_bank == "opamp":
        order.append("vb")
    idx, k = {}, 0
    for name in order:
        idx[name] = np.arange(k, k + sizes[name])
        k += sizes[name]
    jac, c = np.zeros((k, k)), np.zeros(k)

    def add(rows, cols, block):
        jac[np.ix_(rows, cols)] += block

    def add_bar(rows, x, block):  # block acting on xbar: a state, or -x
        if x + "b" in idx:
            add(rows, idx[x + "b"], block)
        else:
            add(rows, idx[x], -block)

    v, w = idx["v"], idx["w"]
    add(v, v, -np.diag(w0 + wt * g_f / d1))
    add(v, w, -wt * bp / d1[:, None])
    if w_bank != "none":
        add_bar(v, "w", -wt * bn / d1[:, None])
    c[v] = -wt * i1 / d1
    add(w, w, -w0 * np.eye(n2))
    add(w, v, wt * bp.T / d2[:, None])
    if v_bank != "none":
        add_bar(w, "v", wt * bn.T / d2[:, None])
    if w_bank != "none":
        add_bar(w, "w", wt * np.diag(g_l / d2 * np.ones(n2)))
    c[w] = wt * i2 / d2
    for x in ("w", "v"):
        if x + "b" in idx:
            xb = idx[x + "b"]
            add(xb, idx[x], -wt / 2 * np.eye(sizes[x]))
            add(xb, xb, -(iw0 + wt / 2) * np.eye(sizes[x]))
    return jac, c, dict(bmat=bmat, bp=bp, bn=bn, d1=d1, d2=d2, g_l=g_l, i1=i1, i2=i2, idx=idx)


def _ridge(a, b, lam, mode):
    if mode == "left":
        return np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ b)
    return a.T @ np.linalg.solve(a @ a.T + lam * np.eye(a.shape[0]), b)


def _problem(mode):
    return (A, B) if mode == "left" else (A.T, S)


def _build(kind, mode, inverters, **kw):
    a, b = _problem(mode)
    if kind == "ginv":
        return GINV.from_matrix(a, b, mode=mode, inverters=inverters, **kw)
    return Ridge.from_matrix(a, b, LAM, mode=mode, inverters=inverters, **kw)


CASES = [
    (kind, mode, inv)
    for kind in ("ginv", "ridge")
    for mode in ("left", "right")
    for inv in ("opamp", "ideal", "differential")
]


# ---------------------------------------------------------------------------------------
# the ODE and its steady states


@pytest.mark.parametrize("kind, mode, inverters", CASES)
def test_dynamics_match_numpy_model(kind, mode, inverters):
    circuit = _build(kind, mode, inverters, a0=2e4)
    a, b = _problem(mode)
    lam = None if kind == "ginv" else LAM
    jac_np, c_np, _ = ginv_ode(
        a, b, mode=mode, inverters=inverters, g_f=np.asarray(circuit.g_f), a0=2e4, lam=lam
    )
    dyn = circuit.dynamics()
    jac, c = linear_ode(dyn)
    assert dyn.n_states == jac_np.shape[0]
    np.testing.assert_allclose(jac, jac_np, rtol=1e-12, atol=1e-12 * WT)
    jac_ad = jax.jacfwd(dyn.vector_field)(jnp.zeros(dyn.n_states))  # J matches the field
    np.testing.assert_allclose(jac, jac_ad, rtol=1e-12, atol=1e-12 * WT)
    np.testing.assert_allclose(c, c_np, rtol=1e-12, atol=1e-12 * WT)
    # The reduced steady-state solve equals the dense one.
    y_ss = np.asarray(dyn.steady_state())
    np.testing.assert_allclose(y_ss, -np.linalg.solve(jac_np, c_np), rtol=1e-9, atol=1e-12)
    assert np.asarray(circuit.amplifier_gbw()).shape == (dyn.n_states,)  # a state per amp


@pytest.mark.parametrize("kind, mode, inverters", CASES)
def test_ideal_limit_equals_numpy(kind, mode, inverters):
    """A0 = inf: the outputs settle to exactly -A^+ b (ridge: -(A^T A + lam)^-1 A^T b)."""
    circuit = _build(kind, mode, inverters, a0=np.inf)
    a, b = _problem(mode)
    dyn = circuit.dynamics()
    x = np.asarray(circuit.decode(dyn.outputs(dyn.steady_state())))
    if kind == "ginv":
        ref = np.linalg.lstsq(a, b, rcond=None)[0] if mode == "left" else np.linalg.pinv(a) @ b
    else:
        ref = _ridge(a, b, LAM, mode)
    # State tolerance: a few ulps times kappa^2 (the reduced solve is on the normal equations).
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-12 * np.max(np.abs(ref)))
    np.testing.assert_allclose(np.asarray(circuit.exact_solution()), ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", ["left", "right"])
@pytest.mark.parametrize("inverters", ["opamp", "ideal", "differential"])
def test_finite_gain_steady_state_closed_form(mode, inverters):
    """w* = -(B'^T E^-1 B' + D2/A0)^-1 (B'^T E^-1 I1 - I2), v* = -E^-1 (B' w* + I1), with
    E = diag(g_f + D1/A0) and B' = B+ - beta B- (beta = 1/(1 + 2/A0') for op-amp inverters)."""
    a0, inv_a0 = 3e3, 1e3
    a, b = _problem(mode)
    circuit = GINV.from_matrix(
        a, b, mode=mode, inverters=inverters, a0=a0, inverter_a0=inv_a0, g_f=3 * G0
    )
    _, _, blk = ginv_ode(a, b, mode=mode, inverters=inverters, g_f=3 * G0, a0=a0, inv_a0=inv_a0)
    beta = 1 / (1 + 2 / inv_a0) if inverters == "opamp" else 1.0
    bprime = blk["bp"] - beta * blk["bn"]
    e = 3 * G0 + blk["d1"] / a0
    m = bprime.T @ (bprime / e[:, None]) + np.diag(blk["d2"] / a0)
    w = -np.linalg.solve(m, bprime.T @ (blk["i1"] / e) - blk["i2"])
    v = -(bprime @ w + blk["i1"]) / e
    out = w if mode == "left" else v
    dyn = circuit.dynamics()
    np.testing.assert_allclose(np.asarray(dyn.outputs(dyn.steady_state())), out, rtol=1e-10)
    # The finite-gain error is O(1/A0), far above the closed form's rounding.
    x_exact = np.linalg.pinv(a) @ b
    err = np.linalg.norm(-out - x_exact) / np.linalg.norm(x_exact)
    assert 1e-5 < err < 1e-1


# ---------------------------------------------------------------------------------------
# stability and decay rates


def _max_re(circuit):
    return float(np.max(np.linalg.eigvals(linear_ode(circuit.dynamics())[0]).real))


SHAPES = ((6, 3),)  # one shape: one compile per (shape, mode, wiring)


def _random_matrices():
    """4 sign patterns (Gaussian, +-1, all negative, sparse) x 4 seeds per shape."""
    rng = np.random.default_rng(123)
    out = []
    for shape in SHAPES:
        for kind in range(4):
            for _ in range(4):
                while True:
                    a = rng.normal(size=shape)
                    if kind == 1:
                        a = np.sign(a)
                    elif kind == 2:
                        a = -np.abs(a)  # all negative: every path through an inverter
                    elif kind == 3:
                        a = a * (rng.uniform(size=shape) < 0.6)
                    if np.linalg.matrix_rank(a) == shape[1]:
                        break
                out.append(a)
    return out


@functools.partial(jax.jit, static_argnames=("mode", "inverters", "ridge"))
def _max_re_traced(a, g_f, *, mode, inverters, ridge):
    # Traced `a`: signed wiring is built (zero negative arrays for a matrix without negatives).
    b = jnp.ones(a.shape[0])
    if ridge:
        c = Ridge.from_matrix(a, b, 0.1, mode=mode, inverters=inverters, g_f=g_f)
    else:
        c = GINV.from_matrix(a, b, mode=mode, inverters=inverters, g_f=g_f)
    return jnp.max(jnp.linalg.eigvals(c.dynamics().jacobian()).real)


def test_stable_for_random_full_rank():
    """Every full-rank matrix, any signs: ideal/differential for any g_f, op-amp inverters with
    the default g_f (the stability rule); GINV and Ridge, both modes."""
    for k, a in enumerate(_random_matrices()):
        for mode, mat in (("left", a), ("right", a.T)):
            for inverters in ("ideal", "differential"):
                for g_f in (0.05 * G0, G0, 20 * G0):
                    r = _max_re_traced(mat, g_f, mode=mode, inverters=inverters, ridge=False)
                    assert r < 0, (k, mode, inverters, g_f)
            for ridge in (False, True):
                r = _max_re_traced(mat, None, mode=mode, inverters="opamp", ridge=ridge)
                assert r < 0, (k, mode, "opamp", ridge)


def test_opamp_inverters_latch_at_small_g_f():
    """Real inverters are a third pole in the loop: at g_f = G0 this matrix's loop rings up
    (unstable); the default g_f (here the stability rule 3 G0 sigma_max^2 / min D2) and the
    differential wiring at g_f = G0 are stable."""
    small = GINV.from_matrix(A, B, g_f=G0)
    assert _max_re(small) > 0
    sol = amcdyn.simulate_analytic(small, throw=False)
    assert sol.status == "unstable" and np.isnan(float(sol.settling_time))
    default = GINV.from_matrix(A, B)
    smax = np.linalg.svd(A, compute_uv=False)[0]
    rule = 1.5 * 2 * G0 * smax**2 / np.min(np.abs(A).sum(0))
    crit = float(GINV.from_matrix(A, B, inverters="ideal").g_f)
    assert crit < rule  # here stability, not damping, sets the default
    np.testing.assert_allclose(float(default.g_f), rule, rtol=1e-12)
    assert _max_re(default) < 0
    assert _max_re(GINV.from_matrix(A, B, g_f=G0, inverters="differential")) < 0


def test_inverting_second_stage_latches():
    """The sign rule: if the second stage sensed array 2 on its inverting input (two inversions
    in the loop), the loop has positive feedback; with the non-inverting stage it is stable."""
    for inverters in ("ideal", "differential"):
        dyn = GINV.from_matrix(A, B, inverters=inverters).dynamics()
        flipped = eqx.tree_at(lambda d: d.amp_wt, dyn, -dyn.amp_wt)
        assert np.max(np.linalg.eigvals(np.asarray(dyn.jacobian())).real) < 0
        lam = np.linalg.eigvals(np.asarray(flipped.jacobian()))
        assert np.max(lam.real) > 0.01 * WT  # a fast exponential runaway, not marginal


@pytest.mark.parametrize("g_f_over_g0", [8.0, 1.0])  # overdamped / underdamped (ringing)
def test_decay_rates_closed_form_pm1(g_f_over_g0):
    """+-1 matrix (uniform node sums d1 = Q G0 + g_f, d2 = P G0), ideal inverters: each singular
    value gives the pair (s + w0)(s + w0 + alpha) + beta_k = 0, alpha = wT g_f/d1,
    beta_k = wT^2 G0^2 sigma_k^2/(d1 d2); the P - Q directions with B^T v = 0 decay at
    w0 + alpha. All P + Q eigenvalues are checked."""
    rng = np.random.default_rng(7)
    p, q = 10, 4
    a = np.sign(rng.normal(size=(p, q)))
    a0, g_f = 1e4, g_f_over_g0 * G0
    circuit = GINV.from_matrix(a, np.ones(p), inverters="ideal", a0=a0, g_f=g_f)
    lam = np.linalg.eigvals(linear_ode(circuit.dynamics())[0])
    w0 = WT / a0
    d1, d2 = q * G0 + g_f, p * G0
    alpha = WT * g_f / d1
    sig = np.linalg.svd(a, compute_uv=False)
    beta = WT**2 * (G0 * sig) ** 2 / (d1 * d2)
    disc = np.sqrt((alpha**2 - 4 * beta).astype(complex))
    expected = np.concatenate(
        [-w0 + (-alpha + disc) / 2, -w0 + (-alpha - disc) / 2, np.full(p - q, -w0 - alpha)]
    )
    key = lambda z: (np.round(z.real / WT, 9), np.round(z.imag / WT, 9))
    got, want = sorted(lam, key=key), sorted(expected, key=key)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * WT)
    # The slowest rate and its sigma_min^2 law (overdamped: 4 beta_min < alpha^2).
    rate = -np.max(lam.real)
    if 4 * beta.min() < alpha**2:
        approx = w0 + WT * (G0 * sig.min()) ** 2 / (g_f * d2)
        x = beta.min() / alpha**2
        assert rate == pytest.approx(approx * (1 + x) + 2 * x**2 * approx, rel=5 * x**2)
    else:
        assert rate == pytest.approx(w0 + alpha / 2, rel=1e-9)  # ringing modes are the slowest


def test_default_g_f_critically_damps_the_slowest_pair():
    """+-1 matrix, ideal inverters: the default g_f gives alpha^2 = 4 beta_min exactly (a double
    root, the fastest decay of the slowest pair), and it settles faster than g_f = G0 or 4x."""
    rng = np.random.default_rng(8)
    p, q = 12, 4
    a = np.sign(rng.normal(size=(p, q)))
    b = rng.normal(size=p)
    c = GINV.from_matrix(a, b, inverters="ideal", a0=np.inf)
    g_f = float(c.g_f)
    d1, d2 = q * G0 + g_f, p * G0
    smin = np.linalg.svd(a, compute_uv=False).min()
    alpha, beta = WT * g_f / d1, WT**2 * (G0 * smin) ** 2 / (d1 * d2)
    assert alpha**2 == pytest.approx(4 * beta, rel=1e-12)
    rates = {
        f: -_max_re(GINV.from_matrix(a, b, inverters="ideal", a0=np.inf, g_f=f * g_f))
        for f in (G0 / g_f, 1.0, 4.0)
    }
    # A double root: eig resolves it to ~sqrt(eps) = 1.5e-8 relative.
    assert rates[1.0] == pytest.approx(alpha / 2, rel=1e-7)
    assert rates[1.0] > rates[4.0] and rates[1.0] > rates[G0 / g_f]


def test_slowest_rate_follows_sigma_min_squared():
    """General matrices, ideal TIA limit (large g_f): r = w0 + (wT/g_f) lambda_min(D2^-1 B^T B)
    (1 + delta), delta = (x^T B^T D1 B x)/(g_f^2 x^T D2 x) the TIA-pole correction, and
    lambda_min(D2^-1 B^T B) lies in [G0^2 sigma_min^2/max D2, G0^2 sigma_min^2/min D2]."""
    rng = np.random.default_rng(11)
    for trial in range(6):
        a = rng.normal(size=(12, 4)) * rng.uniform(0.3, 3.0, size=4)  # spread of sigma_min
        g_f = 40 * G0
        c = GINV.from_matrix(a, np.ones(12), inverters="ideal", a0=np.inf, g_f=g_f)
        rate = -np.max(np.linalg.eigvals(linear_ode(c.dynamics())[0]).real)
        _, _, blk = ginv_ode(a, np.ones(12), mode="left", inverters="ideal", g_f=g_f, a0=np.inf)
        bm, d1, d2 = blk["bmat"], blk["d1"], blk["d2"]
        mu, vec = np.linalg.eig(np.diag(1 / d2) @ bm.T @ bm)
        k = np.argmin(mu.real)
        x = vec[:, k].real
        delta = (x @ bm.T @ (d1[:, None] * bm) @ x) / (g_f**2 * x @ (d2 * x))
        r0 = WT / g_f * mu[k].real
        assert delta < 0.05
        assert rate == pytest.approx(r0 * (1 + delta), rel=3 * delta**2)
        smin2 = (G0 * np.linalg.svd(a, compute_uv=False).min()) ** 2
        assert smin2 / d2.max() <= mu[k].real * (1 + 1e-12)
        assert mu[k].real <= smin2 / d2.min() * (1 + 1e-12)


def test_ridge_lambda_speeds_up_and_allows_rank_deficient():
    """lam > 0 adds wT G_lambda / D2 to the decay of the slow modes; a rank-deficient A is then
    solvable (the ridge solution is unique)."""
    a = np.array([[1.0, 2.0], [2.0, 4.0], [-1.0, -2.0]])  # rank 1
    b = np.array([1.0, 0.5, -0.3])
    with pytest.raises(ValueError, match="`a` is rank-deficient"):
        GINV.from_matrix(a, b)
    r = Ridge.from_matrix(a, b, 0.2, inverters="differential", a0=np.inf)
    dyn = r.dynamics()
    assert float(r.g_f) > 0.1 * G0  # the default G_f damps sigma_min^2 + lam, not sigma_min^2
    assert _max_re(r) < -1e-3 * WT
    x = np.asarray(r.decode(dyn.outputs(dyn.steady_state())))
    np.testing.assert_allclose(x, _ridge(a, b, 0.2, "left"), rtol=1e-12)
    # Same (overdamped) G_f: lam only adds damping to the slow modes.
    r0 = _max_re(Ridge.from_matrix(A, B, 0.0, inverters="ideal", g_f=8 * G0))
    r1 = _max_re(Ridge.from_matrix(A, B, 2.0, inverters="ideal", g_f=8 * G0))
    assert r1 < r0 < 0


# ---------------------------------------------------------------------------------------
# the transient: simulate vs analytic vs exact


def test_simulate_matches_analytic_and_exact():
    circuit = GINV.from_matrix(A, B)
    sim = _simulate(circuit)
    ana = amcdyn.simulate_analytic(circuit)
    assert sim.status == ana.status == "settled"
    jac, c = linear_ode(circuit.dynamics())
    exact, v_ss = exact_transient(jac, c, np.asarray(sim.ts), 4)
    assert max_err_fs(sim.vs, exact, v_ss) < 1e-6  # rtol 1e-8 controller
    assert max_err_fs(ana.vs, exact, v_ss) < 1e-10
    assert float(sim.settling_time) == pytest.approx(float(ana.settling_time), rel=1e-4)
    # Finite gain (A0 = 1e5): x = A^+ b to ~kappa-scaled 1/A0.
    x = np.linalg.lstsq(A, B, rcond=None)[0]
    assert float(ana.rel_error) < 1e-3
    np.testing.assert_allclose(np.asarray(ana.solution), x, atol=1e-3 * np.max(np.abs(x)))
    np.testing.assert_allclose(np.asarray(ana.exact), x, rtol=1e-12)


# ---------------------------------------------------------------------------------------
# jit, vmap, grad

KW_ANA = dict(t_max=1e-6, n_save=0, throw=False)
KW_SIM = dict(t_max=1e-6, n_save=0, stability=False, throw=False, solver=dfx.Tsit5())
_FIELDS = ("settling_time", "solution", "rel_error", "settle_integral", "v_final")


def _close(name, actual, desired, rtol):
    atol = rtol if name == "rel_error" else 0  # a difference of nearly equal vectors
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol, err_msg=name)


def test_jit_vmap_over_conductances_ridge_right():
    """Construction included, under one jit (the default g_f comes from a traced SVD), vmapped
    over 32 programming-error samples of g_pos/g_neg: sample 0 (no error) equals the eager run,
    the mean error grows with sigma, and a sample equals its own unbatched run."""
    eps = np.array(jax.random.normal(jax.random.PRNGKey(0), (32, 2) + A.T.shape))
    eps[0] = 0.0

    def one(a, b, lam, e, sigma):
        c = Ridge.from_matrix(a, b, lam, mode="right")
        c = eqx.tree_at(
            lambda c: (c.g_pos, c.g_neg),
            c,
            (c.g_pos * (1 + sigma * e[0]), c.g_neg * (1 + sigma * e[1])),
        )
        return amcdyn.simulate_analytic(c, **KW_ANA)

    run = jax.jit(jax.vmap(one, in_axes=(None, None, None, 0, None)))
    small, large = run(A.T, S, LAM, eps, 0.001), run(A.T, S, LAM, eps, 0.05)
    eager = amcdyn.simulate_analytic(Ridge.from_matrix(A.T, S, LAM, mode="right"), **KW_ANA)
    assert eager.status == "settled" and large.rel_error.shape == (32,)
    assert np.all(small.status_names() == "settled")
    for name in _FIELDS:
        _close(name, getattr(small, name)[0], getattr(eager, name), 1e-10)
    assert float(jnp.mean(large.rel_error)) > 10 * float(jnp.mean(small.rel_error[1:]))
    _close("rel_error", large.rel_error[5], one(A.T, S, LAM, eps[5], 0.05).rel_error, 1e-9)


def test_vmap_over_rhs_one_trace_simulate():
    """jit(vmap) over 16 right-hand sides through `simulate`: one trace, equal to eager runs."""
    bs = np.random.default_rng(5).normal(size=(16, 8))
    traces = []

    @eqx.filter_jit
    def batched(a, bs):
        traces.append(1)
        return jax.vmap(lambda b: amcdyn.simulate(GINV.from_matrix(a, b), **KW_SIM))(bs)

    sol = batched(A, bs)
    batched(A, bs[::-1] * 0.5)
    assert len(traces) == 1
    assert sol.solution.shape == (16, 4) and sol.settling_time.shape == (16,)
    assert np.all(sol.status_names() == "settled")
    x = np.linalg.lstsq(A, bs.T, rcond=None)[0].T
    assert np.max(np.abs(np.asarray(sol.solution) - x)) < 2e-3 * np.max(np.abs(x))
    ana = amcdyn.simulate_analytic(GINV.from_matrix(A, bs[3]), **KW_ANA)
    # The default controller (rtol = 1e-2 tol = 1e-5) against the exact transient.
    for name in ("settling_time", "solution"):
        _close(name, getattr(sol, name)[3], getattr(ana, name), 1e-4)


# Gradients vs central finite differences. p = (f_gbw, g_f, t): the op-amps' gain-bandwidth
# (Hz), the TIA feedback conductance (S), and a step t along a fixed direction G0 * D in g_pos.
# a0 = 1e3 makes the finite-gain error large against the perturbations (rel_error smooth).
T_G = 3e-7
P0 = np.array([1e8, 8e-4, 0.0])
SCALE = np.array([1e8, 8e-4, 1.0])
D_POS = np.random.default_rng(9).normal(size=A.shape) * (A > 0)
# FD step h (relative to SCALE) and rtol: analytic closed form h = 1e-6, rtol 1e-6; simulate
# (PID rtol 1e-10 on a fixed [0, T_G]; step-sequence noise ~1e-12) h = 1e-5, rtol 1e-4.
FD = {"simulate": (1e-5, 1e-4), "simulate_analytic": (1e-6, 1e-6)}


def _measures(path, p):
    f_gbw, g_f, t = p
    c = GINV.from_matrix(A, B, a0=1e3, f_gbw=f_gbw, g_f=g_f)
    c = eqx.tree_at(lambda c: c.g_pos, c, c.g_pos + t * G0 * D_POS)
    if path == "simulate":
        s = amcdyn.simulate(
            c,
            t_max=T_G,
            n_save=0,
            stability=False,
            solver=dfx.Tsit5(),
            stepsize_controller=dfx.PIDController(rtol=1e-10, atol=1e-13),
            throw=False,
        )
    else:
        s = amcdyn.simulate_analytic(c, t_max=T_G, n_save=0, throw=False)
    return jnp.stack([s.rel_error, s.settle_integral / T_G])


@pytest.mark.parametrize("path", ["simulate_analytic", "simulate"])
def test_grad_matches_finite_differences(path):
    # One compile: the values (for FD) and the reverse-mode Jacobian.
    both = value_and_jacrev(functools.partial(_measures, path))
    val, jac = (np.asarray(x) for x in both(jnp.asarray(P0)))
    h_rel, rtol = FD[path]
    for i in range(3):
        e = np.zeros(3)
        e[i] = h_rel * SCALE[i]
        fd = (np.asarray(both(P0 + e)[0]) - np.asarray(both(P0 - e)[0])) / (2 * e[i])
        for q, name in enumerate(("rel_error", "settle_integral")):
            np.testing.assert_allclose(
                jac[q, i] * SCALE[i],
                fd[q] * SCALE[i],
                rtol=rtol,
                atol=rtol * abs(val[q]),
                err_msg=f"d {name} / d p[{i}]",
            )
    assert np.all(np.abs(jac[:, 0]) > 0)


# ---------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "a, b, kw, name",
    [
        (np.ones(4), np.ones(4), {}, "a"),  # not 2-D
        (np.ones((2, 3, 4)), np.ones(2), {}, "a"),
        (np.ones((3, 5)), np.ones(3), {}, "a"),  # wide for mode="left"
        (np.ones((5, 3)), np.ones(5), {"mode": "right"}, "a"),  # tall for mode="right"
        (np.vstack([A[:3], [np.nan, 0, 0, 0]]), np.ones(4), {}, "a"),
        (A, np.ones(7), {}, "b"),
        (A, np.ones((8, 1)), {}, "b"),
        (A, np.where(np.arange(8) == 2, np.inf, 1.0), {}, "b"),
        (np.ones((6, 3)), np.ones(6), {}, "a"),  # rank 1
        (A, B, {"mode": "both"}, "mode"),
        (A, B, {"inverters": "none"}, "inverters"),
        (A, B, {"g0": -1e-4}, "g0"),
        (A, B, {"g_f": 0.0}, "g_f"),
        (A, B, {"g_f": np.ones(3) * 1e-4}, "g_f"),
        (A, B, {"a0": np.nan}, "a0"),
        (A, B, {"f_gbw": np.ones(4) * 1e8}, "f_gbw"),
        (A, B, {"inverter_f_gbw": -1.0}, "inverter_f_gbw"),
    ],
)
def test_bad_input_names_the_argument(a, b, kw, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        GINV.from_matrix(a, b, **kw)


def test_ridge_bad_input():
    for lam in (-0.1, np.nan, np.inf, np.ones(2)):
        with pytest.raises(ValueError, match="`lam`"):
            Ridge.from_matrix(A, B, lam)
    with pytest.raises(ValueError, match="`g_f`"):
        Ridge.from_matrix(A, B, 0.1, g_f=np.ones(8) * G0)
    with pytest.raises(ValueError, match="`a` is rank-deficient"):
        Ridge.from_matrix(np.ones((4, 2)), np.ones(4), 0.0)
    with pytest.raises(ValueError, match="`b`"):
        Ridge.from_matrix(A.T, np.ones(8), 0.1, mode="right")


def test_offset_amplifier_rejected():
    # Input offsets are not modelled in the loop (second poles and wires are:
    # tests/test_ginv_nonideal.py).
    c = GINV.from_matrix(A, B)
    fields = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
    with pytest.raises(ValueError, match="`amp`"):
        GINV(**{**fields, "amp": amcdyn.OpAmp(1e5, 1e8, v_os=-2e-3)})
    with pytest.raises(ValueError, match="`tia`"):
        GINV(**{**fields, "tia": amcdyn.OpAmp(1e5, 1e8, v_os=1e-3)})


# ---------------------------------------------------------------------------------------
# ngspice

# Tolerances (max over times and outputs, relative to full scale max|v_ss|). GINV's fast modes
# ring (|Im lambda| up to 0.9 wT), so ngspice needs a fine maximal step: with t_stop/8000 its
# error is <= 1.6e-5 FS (measured; 1.5e-4 with t_stop/2000, second order in the step).
SPICE_POINTS = 8000
SPICE_WAVE_TOL = 1e-4
SETTLE_REL_TOL = 5e-3  # measured <= 3e-5 at 8000 points


def _compare_spice(circuit, ngspice, sim):
    sp = _ngspice.simulate_spice(circuit, ngspice=ngspice, n_points=SPICE_POINTS)
    jac, c = linear_ode(circuit.dynamics())
    n = circuit.dynamics().n_outputs
    exact, v_ss = exact_transient(jac, c, sp.ts, n)
    err_exact = max_err_fs(sp.vs, exact, v_ss)
    # amcdyn's saved waveform against ngspice, at amcdyn's times (linear interpolation of
    # ngspice's dense samples: its interpolation error is < 1e-6 FS at 8000 points).
    sp_at = np.stack([np.interp(np.asarray(sim.ts), sp.ts, sp.vs[:, i]) for i in range(n)], 1)
    err_sim = max_err_fs(sim.vs, sp_at, v_ss)
    rel = float(sim.settling_time) / sp.settling_time - 1
    print(
        f"{type(circuit).__name__} {circuit.mode} {circuit.inverters}: err/FS ngspice-exact "
        f"{err_exact:.1e}, amcdyn-ngspice {err_sim:.1e}, settling {sp.settling_time * 1e9:.3f} ns "
        f"({rel:+.1e}), {sp.wall_time_s * 1e3:.0f} ms"
    )
    assert err_exact < SPICE_WAVE_TOL
    assert err_sim < SPICE_WAVE_TOL
    assert abs(rel) < SETTLE_REL_TOL
    np.testing.assert_allclose(
        sp.solution, np.asarray(sim.solution), atol=1e-4 * np.max(np.abs(np.asarray(sim.solution)))
    )
    return sp


def test_ginv_matches_ngspice(ngspice):
    """Left GINV 8 x 4 with op-amp inverters through `simulate` (the shared compile)."""
    circuit = GINV.from_matrix(A, B)
    sp = _compare_spice(circuit, ngspice, _simulate(circuit))
    assert "Ewb" not in sp.netlist and "Giw0" in sp.netlist and "Giv0" in sp.netlist


def test_right_differential_matches_ngspice(ngspice):
    """Right inverse with differential inputs (balance conductances), analytic path."""
    circuit = _build("ginv", "right", "differential")
    sp = _compare_spice(circuit, ngspice, amcdyn.simulate_analytic(circuit))
    assert "Rbal" in sp.netlist and "Ewb" not in sp.netlist and "Iin0 0 s0" in sp.netlist


@pytest.mark.parametrize("inverters", ["ideal", "differential"])
def test_ridge_matches_ngspice(inverters, ngspice):
    """Ridge: the lambda conductance from the inverted output (or onto the other input), against
    the exact transient of amcdyn's ODE (no compile)."""
    circuit = _build("ridge", "left", inverters)
    sp = _ngspice.simulate_spice(circuit, ngspice=ngspice, n_points=SPICE_POINTS)
    jac, c = linear_ode(circuit.dynamics())
    exact, v_ss = exact_transient(jac, c, sp.ts, 4)
    assert max_err_fs(sp.vs, exact, v_ss) < SPICE_WAVE_TOL
    x = _ridge(A, B, LAM, "left")
    np.testing.assert_allclose(sp.solution, x, atol=1e-3 * np.max(np.abs(x)))  # A0 = 1e5
    lam_line = "Rlam0 s0 wb0" if inverters == "ideal" else "Rlam0 sm0 w0"
    assert lam_line in sp.netlist
