"""amcdyn against ngspice: the same circuits, netlisted by `amcdyn._ngspice`.

Three references are compared on each circuit:

- ngspice (tight options, ~2000 points), read at its own time points;
- the exact solution of amcdyn's linear ODE y' = J y + c (`circuit.dynamics()`), evaluated in
  NumPy at any time by eigendecomposition (`helpers.exact_transient`);
- amcdyn's `simulate` (diffrax, rtol 1e-7) and `simulate_analytic`.

ngspice against the exact solution validates the ODE that amcdyn derives from the circuit
(KCL at the summing nodes, the op-amp model, the inverters); amcdyn against the exact solution
validates the integration. Settling times are compared directly.

Missing ngspice skips these tests locally and fails them when the `CI` env variable is set
(see `conftest.ngspice`).
"""

import math

import diffrax as dfx
import jax.numpy as jnp
import numpy as np
import pytest
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
from amcdyn import _ngspice


# Tolerances (max over times and outputs, relative to full scale max|v_ss|):
# tight ngspice vs exact: measured 1.8e-6 .. 6e-6, 1.9e-5 on the stiff Laplacian (an early-time
# error of ngspice's first steps); baseline.md: <= 1.7e-5.
SPICE_WAVE_TOL = 1e-4
AMCDYN_WAVE_TOL = 1e-6  # simulate at rtol 1e-7 vs exact: measured <= 3.5e-8
ANALYTIC_WAVE_TOL = 1e-10  # simulate_analytic vs NumPy eigen solution: measured <= 3e-15
SETTLE_REL_TOL = 5e-3  # settling time, amcdyn vs tight ngspice: measured <= 2e-4
# ngspice's final sample vs amcdyn's equilibrium: it is (tol/10)^1.5 ~ 3e-6 FS from it at t_max.
FINAL_TOL = 1e-4


def _controller():
    # Arrays, not floats: the same compiled solve serves every test with this tree structure.
    return dfx.PIDController(rtol=jnp.asarray(1e-7), atol=jnp.asarray(1e-9))


def _compare(circuit, ngspice, *, label, solver=None):
    sp = _ngspice.simulate_spice(circuit, ngspice=ngspice)
    sim = amcdyn.simulate(circuit, solver=solver, stepsize_controller=_controller())
    ana = amcdyn.simulate_analytic(circuit)
    dyn = circuit.dynamics()
    jac, c = linear_ode(dyn)
    n = dyn.n_outputs

    # Same default end time as amcdyn (same rule on the same eigenvalues).
    assert sp.ts[0] == 0.0 and np.all(np.diff(sp.ts) > 0)
    assert sp.ts[-1] == pytest.approx(float(sim.t_max), rel=1e-9)
    assert sp.vs.shape == (len(sp.ts), n)
    assert sp.wall_time_s > 0

    exact_sp, v_ss = exact_transient(jac, c, sp.ts, n)
    np.testing.assert_allclose(v_ss, np.asarray(sim.v_steady), rtol=1e-9, atol=1e-12)
    err_spice = max_err_fs(sp.vs, exact_sp, v_ss)
    exact_sim, _ = exact_transient(jac, c, np.asarray(sim.ts), n)
    err_sim = max_err_fs(sim.vs, exact_sim, v_ss)
    exact_ana, _ = exact_transient(jac, c, np.asarray(ana.ts), n)
    err_ana = max_err_fs(ana.vs, exact_ana, v_ss)

    ts_sp = sp.settling_time
    rel_sim = float(sim.settling_time) / ts_sp - 1
    rel_ana = float(ana.settling_time) / ts_sp - 1
    print(
        f"{label}: max err/FS ngspice {err_spice:.2e}, simulate {err_sim:.2e}, "
        f"analytic {err_ana:.2e}; t_settle ngspice {ts_sp * 1e9:.4f} ns, simulate {rel_sim:+.1e}, "
        f"analytic {rel_ana:+.1e}; ngspice {len(sp.ts)} points, {sp.wall_time_s * 1e3:.0f} ms"
    )
    assert err_spice < SPICE_WAVE_TOL
    assert err_sim < AMCDYN_WAVE_TOL
    assert err_ana < ANALYTIC_WAVE_TOL
    assert abs(rel_sim) < SETTLE_REL_TOL
    assert abs(rel_ana) < SETTLE_REL_TOL

    assert max_err_fs(sp.v_final, v_ss, v_ss) < FINAL_TOL
    fs_x = np.max(np.abs(np.asarray(sim.solution)))
    np.testing.assert_allclose(sp.solution, np.asarray(sim.solution), atol=FINAL_TOL * fs_x)
    return sp, sim, ana


INV_KINDS = {
    # kind: (signed matrix, inverters argument, expected topology)
    "nonneg": (False, "opamp", "none"),
    "signed-opamp": (True, "opamp", "opamp"),
    "signed-ideal": (True, "ideal", "ideal"),
}


@pytest.mark.parametrize("n", [4, 8, 16])
@pytest.mark.parametrize("kind", list(INV_KINDS))
def test_inv_matches_ngspice(kind, n, ngspice):
    signed, inverters, topology = INV_KINDS[kind]
    a = well_conditioned(n, seed=n, signed=signed)
    b = random_vector(n, seed=100 + n)
    circuit = amcdyn.INV.from_matrix(a, b, inverters=inverters)
    assert circuit.inverters == topology
    _compare(circuit, ngspice, label=f"INV {kind} N={n}")


def test_inv_voltage_input_matches_ngspice(ngspice):
    a = well_conditioned(6, seed=1, signed=True)
    b = random_vector(6, seed=2)
    circuit = amcdyn.INV.from_matrix(a, b, input_mode="voltage", g_in=5e-5)
    sp, sim, _ = _compare(circuit, ngspice, label="INV voltage input N=6")
    assert "Vb0 b0 0 DC" in sp.netlist
    # With finite A0 the decoded answer is A^-1 b up to ~||M^-1||/A0.
    np.testing.assert_allclose(sp.solution, np.linalg.solve(a, b), rtol=0, atol=1e-3)


def test_inv_stiff_laplacian_matches_ngspice(ngspice):
    # Stiffness ratio ~220 (baseline.md, circuit 1c); Tsit5 is passed so that the compiled solve
    # of the N = 16 signed case is reused (the stiff default, Kvaerno5, is tested in
    # test_physics).
    a = laplacian_1d(16)
    b = rhs_for_unit_output(a, seed=7)
    circuit = amcdyn.INV.from_matrix(a, b)
    _compare(circuit, ngspice, label="INV Laplacian N=16", solver=dfx.Tsit5())


def test_mvm_matches_ngspice(ngspice):
    rng = np.random.default_rng(3)
    m, n = 5, 7
    a = rng.uniform(-1, 1, (m, n))
    x = rng.uniform(-1, 1, n)
    g_f = 1e-4 * np.array([1.0, 0.8, 1.3, 2.0, 0.5])
    circuit = amcdyn.MVM.from_matrix(a, x, g_f=g_f)
    sp, _, _ = _compare(circuit, ngspice, label=f"MVM {m}x{n}")
    np.testing.assert_allclose(sp.solution, a @ x, rtol=0, atol=1e-3 * np.max(np.abs(a @ x)))


def test_unstable_inv_grows_in_ngspice(ngspice):
    # Symmetric indefinite A: M = S^-1 A has a negative eigenvalue, so the INV loop has a
    # positive one. ngspice shows the same exponential growth; no settling time (nan).
    a = np.array([[0.2, 1.0], [1.0, 0.2]])  # eigenvalues 1.2 and -0.8
    circuit = amcdyn.INV.from_matrix(a, np.array([0.3, -0.1]))
    sp = _ngspice.simulate_spice(circuit, ngspice=ngspice)
    assert math.isnan(sp.settling_time)
    jac, c = linear_ode(circuit.dynamics())
    maxre = np.max(np.linalg.eigvals(jac).real)
    assert maxre > 0
    assert sp.ts[-1] == pytest.approx(math.log(1e3) / maxre, rel=1e-9)  # amcdyn's rule
    exact, v_ss = exact_transient(jac, c, sp.ts)
    swing = np.max(np.abs(sp.vs - v_ss), axis=1)
    assert swing[-1] > 300 * swing[0]
    assert np.max(np.abs(sp.vs - exact)) < 1e-4 * np.max(np.abs(exact))


# ---------------------------------------------------------------------------------------
# netlist text and the sampled settling-time definition (no ngspice needed)
# ---------------------------------------------------------------------------------------


def test_netlist_topologies():
    a_pos = well_conditioned(3, seed=0)
    a_sgn = well_conditioned(3, seed=0, signed=True)
    b = random_vector(3, seed=1)
    kw = dict(t_stop=1.28e-7, n_points=128)  # t_step = 1e-9 exactly

    none = _ngspice.spice_netlist(amcdyn.INV.from_matrix(a_pos, b), **kw)
    assert "Rn" not in none and "Einv" not in none and "Gi0" not in none
    assert "Iin0 0 n0 DC" in none and ".options reltol=1e-6" in none
    assert ".tran 1e-09 1.28e-07 0 1e-09 uic" in none

    opamp = _ngspice.spice_netlist(
        amcdyn.INV.from_matrix(a_sgn, b, inverter_a0=2e4, inverter_f_gbw=5e7), **kw
    )
    assert "Ria0 v0 m0 10000.0" in opamp and "Einv" not in opamp
    assert "a0=20000.0 f_gbw=50000000.0" in opamp  # the inverters' own op-amp model

    ideal = _ngspice.spice_netlist(amcdyn.INV.from_matrix(a_sgn, b, inverters="ideal"), **kw)
    assert "Einv0 u0 0 v0 0 -1" in ideal and "Ria" not in ideal

    volt = _ngspice.spice_netlist(
        amcdyn.INV.from_matrix(a_pos, b, input_mode="voltage", g_in=2e-4), **kw
    )
    assert f"Vb0 b0 0 DC {float(b[0])!r}" in volt and "Rin0 b0 n0 5000.0" in volt

    loose = _ngspice.spice_netlist(amcdyn.INV.from_matrix(a_pos, b), tight=False, **kw)
    assert ".options" not in loose and ".tran 1e-09 1.28e-07 uic" in loose

    mvm = _ngspice.spice_netlist(
        amcdyn.MVM.from_matrix(np.array([[1.0, -0.5]]), np.array([0.3, 0.2]), a0=np.inf), **kw
    )
    assert "Rf0 r0 y0 10000.0" in mvm and "Rt0" not in mvm  # a0 = inf: ideal integrator

    with pytest.raises(ValueError, match="t_stop"):
        _ngspice.spice_netlist(amcdyn.INV.from_matrix(a_pos, b), t_stop=-1.0)
    with pytest.raises(ValueError, match="n_points"):
        _ngspice.spice_netlist(amcdyn.INV.from_matrix(a_pos, b), t_stop=1e-7, n_points=1)


def test_default_t_stop_rule():
    a = well_conditioned(4, seed=4)
    circuit = amcdyn.INV.from_matrix(a, random_vector(4, seed=5))
    lam = np.linalg.eigvals(np.asarray(circuit.dynamics().jacobian()))
    rate = -np.max(lam.real)
    assert _ngspice.default_t_stop(circuit, 1e-3) == pytest.approx(
        1.5 * math.log(1e4) / rate, rel=1e-12
    )


def test_settling_time_from_samples():
    ts = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    v_ref = np.array([1.0, -2.0])  # full scale 2, band 0.1 * 2 = 0.2
    vs = np.array(
        [
            [0.0, 0.0],
            [0.5, -1.0],
            [1.05, -1.5],  # output 0 inside the band from here on
            [1.0, -2.3],  # output 1 outside (below the band)
            [1.0, -2.1],  # inside
        ]
    )
    # Output 1 leaves the lower band edge -2.2 between t = 3 and 4: -2.3 + 0.2 s = -2.2.
    assert _ngspice.settling_time_from_samples(ts, vs, v_ref, 0.1) == pytest.approx(3.5)
    # Output 0 alone (full scale 1, band 0.1): below the band at t = 1 (0.5 < 0.9), enters it
    # at 0.9 on the segment 0.5 -> 1.05.
    assert _ngspice.settling_time_from_samples(ts, vs[:, :1], v_ref[:1], 0.1) == pytest.approx(
        1.0 + 0.4 / 0.55
    )
    # Overshoot above the band: exits at the upper edge.
    up = np.array([0.0, 2.0, 1.0, 1.0, 1.0])
    assert _ngspice.settling_time_from_samples(ts, up, 1.0, 0.5) == pytest.approx(1.5)
    # Never inside at the end: inf; always inside: the first time; zero reference: 1 V scale.
    assert _ngspice.settling_time_from_samples(ts, up[::-1], 1.0, 0.5) == math.inf
    assert _ngspice.settling_time_from_samples(ts, np.ones(5), 1.0, 0.5) == 0.0
    assert _ngspice.settling_time_from_samples(
        ts, np.array([0.0, 0.3, 0.05, 0.0, 0.0]), 0.0, 0.1
    ) == pytest.approx(1.8)
    # A sampled exponential: the linear-interpolation error is second order in the step.
    tt = np.linspace(0, 10, 2001)
    vv = 1 - np.exp(-tt)
    assert _ngspice.settling_time_from_samples(tt, vv, 1.0, 1e-3) == pytest.approx(
        math.log(1e3), rel=1e-5
    )
