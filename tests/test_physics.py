"""Physics of the INV and MVM circuits against closed forms and independent NumPy models.

The circuit equations (amc-physics.md §1-§3) are written again here in NumPy (`inv_ode`,
`mvm_rates`), independently of amcdyn's `dynamics()`, and checked for: the ideal and
finite-gain steady states, the slowest decay rate, the eigenvalues with real inverters, the
settling time of the (diagonal) MVM, stability, and agreement of the ODE path (`simulate`) with
the analytic path (`simulate_analytic`).

Circuits share shapes (INV N = 8, MVM 6 x 8) so that the compiled solves are reused.
"""

import math

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from helpers import (
    exact_transient,
    laplacian_1d,
    linear_ode,
    max_err_fs,
    random_vector,
    rhs_for_unit_output,
    well_conditioned,
)

import amcdyn
from amcdyn import _simulate


G0 = 1e-4
A0 = 1e5
F_GBW = 1e8
N = 8


# ---------------------------------------------------------------------------------------
# independent NumPy models of the circuits (amc-physics.md §2.2, §3.2)
# ---------------------------------------------------------------------------------------


def _w(a0, f_gbw, n):
    wt = 2 * np.pi * np.broadcast_to(np.asarray(f_gbw, float), (n,))
    return wt / np.broadcast_to(np.asarray(a0, float), (n,)), wt


def inv_ode(a, b, *, inverters, a0=A0, f_gbw=F_GBW, inv_a0=None, inv_f_gbw=None,
            input_mode="current", g_in=G0):
    """(J, c, S, I) of the INV circuit, y' = J y + c, from the KCL and op-amp equations.

    u_i = (I_i + sum_j G+_ij V_j + sum_j G-_ij z_j) / S_i   (summing node)
    V_i' = -w0 V_i - wT u_i                                   (main op-amp)
    z_i' = -w0' z_i - wT' (V_i + z_i) / 2                     (inverter, equal resistors)
    Ideal inverters: z = -V. `inverters="none"`: no G- array.
    """
    n = a.shape[0]
    gp, gn = G0 * np.clip(a, 0, None), G0 * np.clip(-a, 0, None)
    if inverters == "none":
        gn = np.zeros_like(gn)
    s = gp.sum(1) + gn.sum(1)
    if input_mode == "voltage":
        s = s + g_in
        i_in = g_in * b
    else:
        i_in = G0 * b
    w0, wt = _w(a0, f_gbw, n)
    top_v = -np.diag(w0) - wt[:, None] * gp / s[:, None]
    c_v = -wt * i_in / s
    if inverters in ("none", "ideal"):
        return top_v - wt[:, None] * (-gn) / s[:, None], c_v, s, i_in
    w0i, wti = _w(a0 if inv_a0 is None else inv_a0, f_gbw if inv_f_gbw is None else inv_f_gbw, n)
    jac = np.block([
        [top_v, -wt[:, None] * gn / s[:, None]],
        [-np.diag(wti / 2), -np.diag(w0i + wti / 2)],
    ])
    return jac, np.concatenate([c_v, np.zeros(n)]), s, i_in


def mvm_rates(a, x, g_f, *, a0=A0, f_gbw=F_GBW):
    """Per-row decay rates r_i and equilibria v_i* of the MVM (each row is one pole).

    V_i' = -w0 V_i - wT (sum_j (G+ - G-)_ij x_j + G_f V_i) / (S_i + G_f)
    """
    m = a.shape[0]
    gp, gn = G0 * np.clip(a, 0, None), G0 * np.clip(-a, 0, None)
    denom = (gp + gn).sum(1) + g_f
    w0, wt = _w(a0, f_gbw, m)
    rate = w0 + wt * g_f / denom
    v_ss = -wt * ((gp - gn) @ x) / denom / rate
    return rate, v_ss


def mvm_settling(rate, v_ss, tol):
    """Each row deviates by |v_i*| exp(-r_i t): it leaves the band tol*FS at ln(|v_i*|/band)/r_i."""
    band = tol * np.max(np.abs(v_ss))
    return float(np.max(np.maximum(np.log(np.abs(v_ss) / band), 0.0) / rate))


# ---------------------------------------------------------------------------------------
# the shared circuits
# ---------------------------------------------------------------------------------------

KINDS = {
    # kind: (signed matrix, from_matrix kwargs, numpy-model topology)
    "nonneg": (False, {}, "none"),
    "signed-opamp": (True, {}, "opamp"),
    "signed-ideal": (True, {"inverters": "ideal"}, "ideal"),
    "voltage": (True, {"inverters": "ideal", "input_mode": "voltage", "g_in": 2 * G0}, "ideal"),
}


def make_inv(kind, *, seed=0, **kw):
    signed, opts, _ = KINDS[kind]
    a = well_conditioned(N, seed=seed, signed=signed)
    b = random_vector(N, seed=seed + 50)
    return a, b, amcdyn.INV.from_matrix(a, b, **{**opts, **kw})


def make_mvm(scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    a = scale * rng.uniform(-1, 1, (6, 8))
    x = rng.uniform(-1, 1, 8)
    g_f = G0 * np.array([1.0, 0.7, 1.5, 1.0, 2.0, 0.9])
    return a, x, g_f, amcdyn.MVM.from_matrix(a, x, g_f=g_f)


def pid(rtol, atol):
    # Arrays, not floats, so that one compiled solve serves every tolerance.
    return dfx.PIDController(rtol=jnp.asarray(rtol), atol=jnp.asarray(atol))


def numpy_model(kind, a, b, **kw):
    _, opts, topo = KINDS[kind]
    extra = {k: opts[k] for k in ("input_mode", "g_in") if k in opts}
    return inv_ode(a, b, inverters=topo, **extra, **kw)


# ---------------------------------------------------------------------------------------
# steady states
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_ideal_opamp_steady_state(kind):
    """A0 -> inf: V* = -A^-1 b (times G0/G_in for a voltage input), so x = A^-1 b."""
    a, b, _ = make_inv(kind)
    x = np.linalg.solve(a, b)
    inv_kw = {"inverter_a0": 1e12} if kind == "signed-opamp" else {}
    _, _, circuit = make_inv(kind, a0=1e12, **inv_kw)
    sol = amcdyn.simulate_analytic(circuit)
    # Finite-gain error ~ ||M^-1|| / A0 = O(1e-12); float64 solve error ~1e-15.
    err_1e12 = float(sol.rel_error)
    assert 1e-14 < err_1e12 < 1e-9
    np.testing.assert_allclose(np.asarray(sol.solution), x, rtol=1e-9, atol=1e-9)
    scale = G0 / circuit.g_in if kind == "voltage" else 1.0
    np.testing.assert_allclose(np.asarray(sol.v_steady), -x / scale, rtol=1e-9, atol=1e-9)
    # a0 = inf is the exact integrator limit: exact up to rounding.
    _, _, ideal = make_inv(kind, a0=np.inf, **({"inverter_a0": np.inf} if inv_kw else {}))
    err_inf = float(amcdyn.simulate_analytic(ideal).rel_error)
    print(f"{kind}: rel error A0=1e12 {err_1e12:.1e}, A0=inf {err_inf:.1e}")
    assert err_inf < 1e-13


@pytest.mark.parametrize("kind", list(KINDS))
def test_finite_gain_steady_state(kind):
    """V* = -(G + S/A0)^-1 I with ideal (or no) inverters; with single-pole inverters
    z* = -beta V*, beta_i = 1/(1 + 2/A0'_i), so V* = -(G+ - G- beta + S/A0)^-1 I."""
    rng = np.random.default_rng(7)
    a0 = rng.uniform(5e2, 2e3, N)  # low gain: a visible (~1e-2) finite-gain error
    inv_a0 = rng.uniform(5e2, 2e3, N)
    f_gbw = rng.uniform(0.5e8, 2e8, N)
    a, b, _ = make_inv(kind)
    kw = dict(a0=a0, f_gbw=f_gbw)
    if kind == "signed-opamp":
        kw.update(inverter_a0=inv_a0, inverter_f_gbw=1.3 * f_gbw)
    _, _, circuit = make_inv(kind, **kw)
    dyn = circuit.dynamics()
    y_ss = np.asarray(dyn.steady_state())

    model_kw = dict(a0=a0, f_gbw=f_gbw)
    if kind == "signed-opamp":
        model_kw.update(inv_a0=inv_a0, inv_f_gbw=1.3 * f_gbw)
    jac, c, s, i_in = numpy_model(kind, a, b, **model_kw)
    # amcdyn's ODE is the one written here.
    np.testing.assert_allclose(np.asarray(dyn.jacobian()), jac, rtol=1e-13, atol=1e-6)
    y = rng.normal(size=dyn.n_states)
    np.testing.assert_allclose(np.asarray(dyn.vector_field(jnp.asarray(y))), jac @ y + c,
                               rtol=1e-12, atol=1e-12 * np.max(np.abs(jac @ y)))
    # Dense solve of J y = -c.
    np.testing.assert_allclose(y_ss, np.linalg.solve(jac, -c), rtol=1e-11, atol=1e-14)

    gp, gn = G0 * np.clip(a, 0, None), G0 * np.clip(-a, 0, None)
    if kind == "nonneg":
        g = gp
    elif kind == "signed-opamp":
        g = gp - gn / (1 + 2 / inv_a0)[None, :]
    else:
        g = gp - gn
    v_closed = -np.linalg.solve(g + np.diag(s / a0), i_in)
    np.testing.assert_allclose(y_ss[:N], v_closed, rtol=1e-11, atol=1e-14)
    if kind == "signed-opamp":
        np.testing.assert_allclose(y_ss[N:], -v_closed / (1 + 2 / inv_a0), rtol=1e-11)
    # The finite-gain error is what it should be: O(||M^-1||/A0), here ~1e-3..1e-2.
    x = np.linalg.solve(a, b)
    rel = np.linalg.norm(np.asarray(circuit.decode(y_ss[:N])) - x) / np.linalg.norm(x)
    assert 1e-4 < rel < 5e-2


# ---------------------------------------------------------------------------------------
# eigenvalues and decay rates
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["nonneg", "signed-ideal", "voltage"])
def test_slowest_rate_ideal_inverters(kind):
    """r = w0 + wT Re lambda_min(S^-1 (G+ - G-)) exactly (ideal or no inverters)."""
    a, b, circuit = make_inv(kind)
    _, _, s, _ = numpy_model(kind, a, b)
    g = G0 * a if kind != "nonneg" else G0 * np.clip(a, 0, None)
    lam = np.linalg.eigvals(g / s[:, None])
    w0, wt = 2 * np.pi * F_GBW / A0, 2 * np.pi * F_GBW
    rate = w0 + wt * np.min(lam.real)
    sol = amcdyn.simulate_analytic(circuit)
    assert -float(sol.max_real_eig) == pytest.approx(rate, rel=1e-10)
    assert float(sol.slowest_time_constant) == pytest.approx(1 / rate, rel=1e-10)
    # All eigenvalues: w0 + wT lambda(M).
    got = np.sort_complex(-np.asarray(sol.eigenvalues))
    np.testing.assert_allclose(got, np.sort_complex(w0 + wt * lam), rtol=1e-10)


def test_slowest_rate_complex_lambda_min():
    """A non-symmetric A with a complex lambda_min(M): oscillatory approach, same rate rule."""
    c3 = np.eye(3) + 0.6 * np.roll(np.eye(3), 1, axis=1)  # 1 + 0.6 w, w^3 = 1: complex modes
    a = scipy.linalg.block_diag(c3, c3, np.array([[1.0, 0.3], [0.3, 1.0]]))
    circuit = amcdyn.INV.from_matrix(a, random_vector(N, 3))
    s = G0 * a.sum(1)
    lam = np.linalg.eigvals(G0 * a / s[:, None])
    k = np.argmin(lam.real)
    assert abs(lam[k].imag) > 0.1
    sol = amcdyn.simulate_analytic(circuit)
    rate = 2 * np.pi * F_GBW * (1 / A0 + lam[k].real)
    assert -float(sol.max_real_eig) == pytest.approx(rate, rel=1e-10)
    assert bool(sol.oscillatory)


def test_real_inverter_eigenvalues():
    """Single-pole inverters (2N states): amcdyn's spectrum is that of the dense Jacobian
    written from the ODE; the inverter poles slow the slowest mode (amc-physics.md §3.3)."""
    a, b, circuit = make_inv("signed-opamp")
    jac, _, _, _ = inv_ode(a, b, inverters="opamp")
    lam = np.linalg.eigvals(jac)
    sol = amcdyn.simulate_analytic(circuit)
    got = np.asarray(sol.eigenvalues)
    assert got.shape == (2 * N,)
    # Match each reference eigenvalue to its nearest computed one (conjugate pairs included).
    dist = np.abs(lam[:, None] - got[None, :])
    assert np.max(np.min(dist, axis=1)) < 1e-9 * np.max(np.abs(lam))
    assert np.max(np.min(dist, axis=0)) < 1e-9 * np.max(np.abs(lam))
    assert float(sol.max_real_eig) == pytest.approx(np.max(lam.real), rel=1e-10)
    # Ideal inverters would give w0 + wT lambda_min(M); real ones are slower.
    _, _, ideal = make_inv("signed-ideal")
    r_ideal = -float(amcdyn.simulate_analytic(ideal).max_real_eig)
    r_real = -float(sol.max_real_eig)
    print(f"slowest rate: ideal inverters {r_ideal:.3e}/s, single-pole inverters {r_real:.3e}/s")
    assert r_real < r_ideal


# ---------------------------------------------------------------------------------------
# simulate (ODE) vs simulate_analytic (eigen) vs closed forms
# ---------------------------------------------------------------------------------------

_WAVE_CASES = ["nonneg", "signed-opamp", "signed-ideal", "mvm"]


def _wave_circuit(case):
    return make_mvm()[-1] if case == "mvm" else make_inv(case)[-1]


@pytest.mark.parametrize("case", _WAVE_CASES)
def test_simulate_vs_analytic(case):
    circuit = _wave_circuit(case)
    ana = amcdyn.simulate_analytic(circuit)
    fs = float(np.max(np.abs(np.asarray(ana.v_steady))))
    # Both paths use the same default t_max rule on the same eigenvalues.
    default = amcdyn.simulate(circuit)
    np.testing.assert_allclose(np.asarray(default.ts), np.asarray(ana.ts), rtol=1e-12)
    tight = amcdyn.simulate(circuit, stepsize_controller=pid(1e-8, 1e-8 * fs))
    settle = amcdyn.simulate(circuit, stepsize_controller=pid(1e-7, 1e-7 * fs))
    err_default = max_err_fs(default.vs, ana.vs, ana.v_steady)
    err_tight = max_err_fs(tight.vs, ana.vs, ana.v_steady)
    t_ana = float(ana.settling_time)
    rel_default = float(default.settling_time) / t_ana - 1
    rel_settle = float(settle.settling_time) / t_ana - 1
    print(f"{case}: waveform err/FS default rtol {err_default:.1e}, rtol 1e-8 {err_tight:.1e}; "
          f"settling rel diff default {rel_default:+.1e}, rtol 1e-7 {rel_settle:+.1e}")
    assert err_default < 1e-4  # default controller: rtol = atol/FS = 1e-2 * tol = 1e-5
    assert err_tight < 1e-6
    assert abs(rel_settle) < 1e-3
    assert abs(rel_default) < 1e-2
    for sol in (default, tight, settle):
        assert sol.status == "settled" and bool(sol.stable)
        np.testing.assert_allclose(np.asarray(sol.v_final), np.asarray(ana.v_steady),
                                   rtol=0, atol=1e-3 * fs)
    # The analytic waveform itself is the exact solution of the ODE written in NumPy.
    jac, c = linear_ode(circuit.dynamics())
    exact, v_ss = exact_transient(jac, c, np.asarray(ana.ts), circuit.dynamics().n_outputs)
    assert max_err_fs(ana.vs, exact, v_ss) < 1e-10


def test_mvm_settling_closed_form():
    """Each MVM row is a single pole: the settling time is max_i ln(|v_i*|/(tol FS))/r_i."""
    a, x, g_f, circuit = make_mvm()
    rate, v_ss = mvm_rates(a, x, g_f)
    dyn = circuit.dynamics()
    np.testing.assert_allclose(-np.diag(np.asarray(dyn.jacobian())), rate, rtol=1e-13)
    np.testing.assert_allclose(np.asarray(dyn.steady_state()), v_ss, rtol=1e-12)
    # Finite-gain MVM output: V_i = -(Gx)_i / [G_f + (G_f + S_i)/A0] (amc-physics.md §2.3).
    gp, gn = G0 * np.clip(a, 0, None), G0 * np.clip(-a, 0, None)
    s = (gp + gn).sum(1)
    np.testing.assert_allclose(v_ss, -((gp - gn) @ x) / (g_f + (g_f + s) / A0), rtol=1e-12)
    for tol in (1e-3, 1e-4):
        t_closed = mvm_settling(rate, v_ss, tol)
        ana = amcdyn.simulate_analytic(circuit, tol=tol)
        sim = amcdyn.simulate(circuit, tol=tol, stepsize_controller=pid(1e-7, 1e-7 * np.max(
            np.abs(v_ss))))
        print(f"MVM tol {tol:g}: closed form {t_closed * 1e9:.4f} ns, analytic "
              f"{float(ana.settling_time) / t_closed - 1:+.1e}, simulate "
              f"{float(sim.settling_time) / t_closed - 1:+.1e}")
        assert float(ana.settling_time) == pytest.approx(t_closed, rel=1e-9)
        assert float(sim.settling_time) == pytest.approx(t_closed, rel=1e-4)


def test_mvm_settling_grows_with_max_row_sum():
    """tau_i = (S_i + G_f)/(G_f wT): larger row sums settle more slowly (TCAS-II 2021)."""
    times, row_sums = [], []
    for scale in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0):
        a, x, g_f, circuit = make_mvm(scale=scale)
        sol = amcdyn.simulate_analytic(circuit)
        rate, v_ss = mvm_rates(a, x, g_f)
        assert float(sol.settling_time) == pytest.approx(mvm_settling(rate, v_ss, 1e-3), rel=1e-9)
        times.append(float(sol.settling_time))
        row_sums.append(np.max(np.abs(a).sum(1)))
    assert np.all(np.diff(row_sums) > 0)
    assert np.all(np.diff(times) > 0)
    # Large row sums: t ~ tau_max ln(1/tol) grows linearly with the row sum.
    assert times[-1] / times[-2] == pytest.approx(2.0, rel=0.15)


# ---------------------------------------------------------------------------------------
# stability
# ---------------------------------------------------------------------------------------


def _indefinite(kind):
    """Symmetric indefinite A (one eigenvalue < 0 after the row scaling): INV is unstable."""
    p = np.kron(np.eye(N // 2), np.array([[0.0, 1.0], [1.0, 0.0]]))  # pair swaps
    if kind == "nonneg":
        return 0.1 * np.eye(N) + p  # eigenvalues 1.1, -0.9; nonnegative entries
    return np.eye(N) - 1.5 * p  # eigenvalues 2.5, -0.5; signed entries


@pytest.mark.parametrize("kind", ["nonneg", "signed-opamp", "signed-ideal"])
def test_unstable_circuit(kind):
    a = _indefinite(kind)
    b = random_vector(N, 11)
    opts = KINDS[kind][1]
    circuit = amcdyn.INV.from_matrix(a, b, **opts)
    jac, _, _, _ = inv_ode(a, b, inverters=KINDS[kind][2])
    maxre = np.max(np.linalg.eigvals(jac).real)
    assert maxre > 0

    for fn in (amcdyn.simulate_analytic, amcdyn.simulate):
        sol = fn(circuit, throw=False)
        assert sol.status == "unstable"
        assert not bool(sol.stable)
        assert float(sol.max_real_eig) == pytest.approx(maxre, rel=1e-9)
        assert np.isnan(float(sol.settling_time))
        with pytest.raises(eqx.EquinoxRuntimeError, match="unstable"):
            fn(circuit)

    # Without the eigenvalue check, the transient itself diverges.
    t_max = math.log(1e7) / maxre
    sol = amcdyn.simulate(circuit, throw=False, stability=False, t_max=t_max)
    assert sol.status == "unstable"
    assert sol.eigenvalues is None
    fs = float(np.max(np.abs(np.asarray(sol.v_steady))))
    growth = np.max(np.abs(np.asarray(sol.vs) - np.asarray(sol.v_steady)), axis=1) / fs
    assert growth[-1] > 1e3
    assert growth[-1] > 100 * growth[len(growth) // 2]  # exponential growth


# ---------------------------------------------------------------------------------------
# stiff circuit: the default solver choice
# ---------------------------------------------------------------------------------------


def test_stiff_laplacian_default_solver():
    """1-D Laplacian, N = 16, single-pole inverters: decay-rate ratio ~220 (baseline.md 1c).
    `simulate` picks Kvaerno5 and agrees with `simulate_analytic`."""
    a = laplacian_1d(16)
    b = rhs_for_unit_output(a, seed=7)
    circuit = amcdyn.INV.from_matrix(a, b)
    lam = np.linalg.eigvals(np.asarray(circuit.dynamics().jacobian()))
    ratio = lam.real.min() / lam.real.max()
    assert ratio > 100
    assert isinstance(_simulate._pick_solver(circuit), dfx.Kvaerno5)
    ana = amcdyn.simulate_analytic(circuit)
    sim = amcdyn.simulate(circuit)
    rel = float(sim.settling_time) / float(ana.settling_time) - 1
    err = max_err_fs(sim.vs, ana.vs, ana.v_steady)
    print(f"Laplacian N=16 (ratio {ratio:.0f}): Kvaerno5 {int(sim.num_steps)} steps, "
          f"settling rel diff {rel:+.1e}, waveform err/FS {err:.1e}")
    assert abs(rel) < 5e-3
    assert err < 1e-3  # Kvaerno5 at rtol 1e-5 (baseline: 8e-6 FS at rtol 1e-6)
    assert int(sim.num_steps) < 400  # an explicit solver needs > 800 steps (stability-bound)
