"""Energy per solve and the DAC/ADC converters.

The crossbar energy is checked against an independent nodal model: the full node voltages of
the circuit (summing nodes included, no virtual-ground approximation) from the exact transient
(`helpers.exact_transient`), the power sum_ij G_ij (V_col - V_row)^2 + resistors, integrated by
Simpson's rule on a fine grid up to the exact settling time.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
from helpers import exact_transient, linear_ode, rhs_for_unit_output, well_conditioned

import amcdyn
from amcdyn import ADC, DAC


N = 6
NO_AMP_POWER = dict(p_static=0.0, k_gbw=0.0)


def _inv_power_nodal(c, ys):
    """Resistive power (W) at each row of `ys` (states) with the true summing-node voltages."""
    n = c.n
    gp, gn = np.asarray(c.g_pos), np.asarray(c.g_neg)
    v = ys[:, :n]
    if c.inverters == "opamp":
        z = ys[:, n : 2 * n]
    elif c.inverters == "ideal":
        z = -v
    else:
        z = np.zeros_like(v)
        gn = np.zeros_like(gn)
    b = np.asarray(c.b)
    s = gp.sum(1) + gn.sum(1)
    inj = np.zeros(n) if c.input_mode == "voltage" else float(c.g0) * b
    if c.input_mode == "voltage":
        s = s + float(c.g_in)
    # Row node voltage from KCL: S u = I + G+ v + G- z (+ g_in b).
    num = inj[None, :] + v @ gp.T + z @ gn.T
    if c.input_mode == "voltage":
        num = num + float(c.g_in) * b[None, :]
    u = num / s[None, :]
    p = np.sum(gp[None] * (v[:, None, :] - u[:, :, None]) ** 2, axis=(1, 2))
    p += np.sum(gn[None] * (z[:, None, :] - u[:, :, None]) ** 2, axis=(1, 2))
    if c.input_mode == "voltage":
        p += np.sum(float(c.g_in) * (b[None, :] - u) ** 2, axis=1)
    if c.inverters == "opamp":
        # Inverter summing node m = (v + z)/2 with equal resistors (finite gain: ~0).
        m = (v + z) / 2
        p += float(c.g_inv) * np.sum((v - m) ** 2 + (z - m) ** 2, axis=1)
    return p


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(inverters="ideal", input_mode="voltage")],
    ids=["opamp-inverters", "ideal-voltage"],
)
def test_inv_crossbar_energy_matches_nodal_model(kw):
    a = well_conditioned(N, 2, signed=True)
    c = amcdyn.INV.from_matrix(a, rhs_for_unit_output(a, 1), **NO_AMP_POWER, **kw)
    ref = amcdyn.simulate_analytic(c)
    t_s = float(ref.settling_time)
    jac, cc = linear_ode(c.dynamics())
    ts = np.linspace(0, t_s, 8001)
    ys, _ = exact_transient(jac, cc, ts)
    e_nodal = scipy.integrate.simpson(_inv_power_nodal(c, ys), x=ts)
    # Virtual-ground weights differ from the nodal model by O(1/A0) = 1e-5 relative.
    for sol, rtol in (
        (ref, 1e-7),  # closed form up to t_s
        (amcdyn.simulate_expm(c), 1e-5),  # Hermite quadrature, head on the geometric grid
        # ODE: tail approximation E(t_max) - q* (t_max - t_s), O(tol) of the resistive part.
        (amcdyn.simulate(c), 2e-3),
    ):
        assert float(sol.power) == 0.0
        assert abs(float(sol.energy) / e_nodal - 1) < rtol, (float(sol.energy), e_nodal)


def test_mvm_energy_matches_nodal_model():
    rng = np.random.default_rng(3)
    a = rng.uniform(-1, 1, (4, 5))
    x = rng.uniform(-1, 1, 5)
    c = amcdyn.MVM.from_matrix(a, x, **NO_AMP_POWER)
    ref = amcdyn.simulate_analytic(c)
    t_s = float(ref.settling_time)
    jac, cc = linear_ode(c.dynamics())
    ts = np.linspace(0, t_s, 8001)
    ys, _ = exact_transient(jac, cc, ts)
    gp, gn, gf = np.asarray(c.g_pos), np.asarray(c.g_neg), float(c.g_f)
    s = gp.sum(1) + gn.sum(1) + gf
    u = ((gp - gn) @ x)[None, :] / s + gf * ys / s  # row nodes (KCL)
    p = np.sum(gp[None] * (x[None, None, :] - u[:, :, None]) ** 2, axis=(1, 2))
    p += np.sum(gn[None] * (-x[None, None, :] - u[:, :, None]) ** 2, axis=(1, 2))
    p += np.sum(gf * (ys - u) ** 2, axis=1)
    e_nodal = scipy.integrate.simpson(p, x=ts)
    for sol, rtol in ((ref, 1e-7), (amcdyn.simulate_expm(c), 1e-5)):
        assert abs(float(sol.energy) / e_nodal - 1) < rtol, (float(sol.energy), e_nodal)


def test_amplifier_and_converter_energy_add_up():
    a = well_conditioned(N, 2, signed=True)
    b = rhs_for_unit_output(a, 1)
    base = amcdyn.simulate_analytic(amcdyn.INV.from_matrix(a, b, **NO_AMP_POWER))
    p_amp = 7e-3
    dac, adc = DAC(8, energy_per_conversion=3e-12), ADC(10, 2.0, energy_per_conversion=5e-12)
    c = amcdyn.INV.from_matrix(a, b, p_static=p_amp, k_gbw=0.0, dac=dac, adc=adc)
    sol = amcdyn.simulate_analytic(c)
    # 2N amplifiers (N main + N inverters); N DAC and N ADC conversions.
    assert float(sol.power) == pytest.approx(2 * N * p_amp, rel=1e-12)
    # The DAC moves the settling time slightly; compare with the same circuit's own time.
    base_q = amcdyn.simulate_analytic(amcdyn.INV.from_matrix(a, b, dac=dac, **NO_AMP_POWER))
    # base_q already counts the DAC conversions; add the amplifiers and the ADC.
    want = float(base_q.energy) + 2 * N * p_amp * float(sol.settling_time) + N * 5e-12
    assert float(sol.energy) == pytest.approx(want, rel=1e-10)
    assert float(base.energy) > 0


def test_energy_flags_follow_settling_time():
    a = well_conditioned(N, 2)
    c = amcdyn.INV.from_matrix(a, rhs_for_unit_output(a, 1))
    t_max = float(amcdyn.simulate_analytic(c).t_max)
    short = amcdyn.simulate_expm(c, t_max=0.1 * t_max, throw=False)
    assert short.status == "not_settled" and np.isinf(float(short.energy))
    bad = a.copy()
    bad[0, 0] = -2.0
    sol = amcdyn.simulate_analytic(amcdyn.INV.from_matrix(bad, np.ones(N)), throw=False)
    assert sol.status == "unstable" and np.isnan(float(sol.energy))


def _fields(s):
    return dict(
        settling_time=s.settling_time,
        rel_error=s.rel_error,
        settle_integral=s.settle_integral,
        v_final=s.v_final,
        solution=s.solution,
        power=s.power,
    )


def test_energy_off_expm_is_the_same_simulation():
    """`energy=False` drops only the resistive-energy integrand: every other field of the
    exact-propagator path is bitwise the same, and `energy` is NaN (not computed)."""
    a = well_conditioned(N, 3, signed=True)
    c = amcdyn.INV.from_matrix(a, rhs_for_unit_output(a, 3))
    on, off = amcdyn.simulate_expm(c), amcdyn.simulate_expm(c, energy=False)
    assert off.status == on.status == "settled"
    for k, v in _fields(on).items():
        np.testing.assert_array_equal(_fields(off)[k], v, err_msg=k)
    assert np.isfinite(float(on.energy)) and np.isnan(float(off.energy))
    # Not settled by t_max: the energy is flagged like the settling time, as with energy on.
    short = amcdyn.simulate_expm(c, t_max=0.1 * float(on.t_max), energy=False, throw=False)
    assert short.status == "not_settled" and np.isinf(float(short.energy))


def test_energy_off_ode_agrees_to_solver_tolerance():
    """The diffrax path without the energy state: the step-size control no longer sees that
    state, so the fields agree with `energy=True` to the solver's tolerance (the settling
    time to 1e-3 of the exact one, as both do), not bitwise."""
    a = well_conditioned(N, 4, signed=True)
    c = amcdyn.INV.from_matrix(a, rhs_for_unit_output(a, 4))
    exact = amcdyn.simulate_analytic(c)
    on, off = amcdyn.simulate(c, n_save=0), amcdyn.simulate(c, n_save=0, energy=False)
    assert np.isnan(float(off.energy)) and np.isfinite(float(on.energy))
    for s in (on, off):
        assert abs(float(s.settling_time) / float(exact.settling_time) - 1) < 1e-3
    # Final outputs: within the controller's atol (1e-2 tol FS = 1e-5 FS) of each other.
    fs = float(np.max(np.abs(np.asarray(exact.v_final))))
    np.testing.assert_allclose(off.v_final, on.v_final, atol=2e-5 * fs)


@pytest.mark.parametrize("path", ["ode", "expm"])
def test_energy_off_under_jit_vmap_grad(path):
    """Without energy, the batched path and the gradient of the smooth settling measure are
    those of `energy=True` (expm: exactly; ODE: to the solver's tolerance, 1e-3 here). The
    gradient is taken with respect to f_GBW, which sets the settling speed."""
    a = well_conditioned(N, 5, signed=True)
    b = rhs_for_unit_output(a, 5)
    t_max = float(amcdyn.simulate_analytic(amcdyn.INV.from_matrix(a, b)).t_max)

    def run(f_gbw, energy):
        c = amcdyn.INV.from_matrix(a, b, f_gbw=f_gbw)
        if path == "ode":
            return amcdyn.simulate(c, t_max=t_max, n_save=0, stability=False, energy=energy)
        return amcdyn.simulate_expm(c, t_max=t_max, stability=False, energy=energy)

    gbws = jnp.array([1.1e8, 1.25e8, 1.5e8])  # faster than at t_max's f_GBW = 1e8: settled
    on = jax.jit(jax.vmap(lambda f: run(f, True).settling_time))(gbws)

    def time_and_energy(f):
        s = run(f, False)
        return s.settling_time, s.energy

    off, e_off = jax.jit(jax.vmap(time_and_energy))(gbws)
    assert np.all(np.isnan(np.asarray(e_off)))
    rtol = 0.0 if path == "expm" else 1e-3
    np.testing.assert_allclose(off, on, rtol=rtol)

    def loss(f, energy):  # f_GBW in units of 100 MHz
        return run(f * 1e8, energy).settle_integral

    g_on = jax.grad(loss)(1.0, True)
    g_off = jax.jit(jax.grad(loss), static_argnums=1)(1.0, False)
    assert np.isfinite(float(g_off)) and float(g_off) != 0
    np.testing.assert_allclose(g_off, g_on, rtol=1e-12 if path == "expm" else 1e-3)


@pytest.mark.parametrize("sim", [amcdyn.simulate, amcdyn.simulate_expm])
@pytest.mark.parametrize("value", [1, None, jnp.asarray(True)])
def test_energy_flag_must_be_a_bool(sim, value):
    c = amcdyn.INV.from_matrix(np.eye(2), np.ones(2))
    with pytest.raises(ValueError, match="`energy` must be a Python bool"):
        sim(c, energy=value)


def test_converters_quantize_and_pass_gradients():
    a = well_conditioned(N, 2, signed=True)
    b = rhs_for_unit_output(a, 1) * 0.5
    dac = DAC(4, full_scale=1.0)
    step = 1.0 / 8  # 4-bit two's complement over [-1, 1 - 1/8]
    np.testing.assert_allclose(np.asarray(dac(jnp.asarray(b))), np.round(b / step) * step)
    assert float(dac(jnp.asarray(3.0))) == 1.0 - step and float(dac(jnp.asarray(-3.0))) == -1.0
    c = amcdyn.INV.from_matrix(a, b, dac=dac, a0=np.inf)
    sol = amcdyn.simulate_analytic(c)
    # Ideal amplifiers: the circuit solves A x = DAC(b) exactly.
    want = np.linalg.solve(a, np.round(b / step) * step)
    np.testing.assert_allclose(np.asarray(sol.solution), want, rtol=1e-9, atol=1e-12)
    # The ADC output lies on its grid.
    adc = ADC(6, full_scale=2.0)
    sol = amcdyn.simulate_analytic(amcdyn.INV.from_matrix(a, b, adc=adc))
    v = -np.asarray(sol.solution)  # current mode: x = -v
    k = v / adc.step
    np.testing.assert_allclose(k, np.round(k), atol=1e-9)
    # Straight-through gradient: d(sum x)/db through the DAC equals that without it.
    def total(bb, conv):
        c = amcdyn.INV.from_matrix(a, bb, dac=conv, a0=np.inf)
        return jnp.sum(amcdyn.simulate_analytic(c, throw=False).solution)

    g_q = jax.grad(total)(jnp.asarray(b), dac)
    g_0 = jax.grad(total)(jnp.asarray(b), None)
    np.testing.assert_allclose(np.asarray(g_q), np.asarray(g_0), rtol=1e-8)


@pytest.mark.parametrize("bits", [0, -3, 2.5, True])
def test_converter_bad_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        DAC(bits)
    with pytest.raises(ValueError, match="bits"):
        ADC(bits)


def test_converter_bad_values():
    with pytest.raises(ValueError, match="full_scale"):
        ADC(8, full_scale=0.0)
    with pytest.raises(ValueError, match="energy_per_conversion"):
        DAC(8, energy_per_conversion=-1.0)
    with pytest.raises(ValueError, match="dac"):
        amcdyn.INV.from_matrix(np.eye(3), np.ones(3), dac=ADC(8))
