"""Op-amp output rails and slew-rate limit: the nonlinear transient (`amcdyn.simulate`).

References: closed forms only. A rail-held INV output satisfies the unsaturated amplifier's
loop equation with the clipped output substituted; a single-pole stage slewing as
$\\dot e = -\\mathrm{SR}\\tanh(k e/\\mathrm{SR})$ reaches the band $|e| = \\delta$ at
$t = k^{-1}\\ln(\\sinh(k e_0/\\mathrm{SR})/\\sinh(k\\delta/\\mathrm{SR}))$
($\\approx e_0/\\mathrm{SR}$, the slew-limited ramp); tiny signals reproduce
`amcdyn.simulate_analytic` of the linear circuit; gradients match central differences.

Compile time dominates, so every eager `simulate` call uses one circuit structure (a 2 x 2 INV
with non-negative matrix, both limits set as scalars) and the same options (`KW`).
"""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import amcdyn


KW = dict(n_save=0, solver=dfx.Tsit5(), throw=False)
F_GBW = 1e8
WT = 2 * np.pi * F_GBW
A0 = 1e5
A_COUPLED = np.array([[1.0, 0.2], [0.2, 1.0]])
B_RAIL = np.array([2.0, 0.3])  # linear answer -A^-1 b = (-1.98, 0.10): output 0 > 1 V rail
SR_OFF = 1e15  # V/s: a slew limit no transient here approaches (rates <= 2e9 V/s)
VSAT_OFF = 1e3  # V: a rail no output here approaches


def _inv(a, b, v_sat, slew_rate):
    return amcdyn.INV.from_matrix(a, b, v_sat=v_sat, slew_rate=slew_rate)


def _slew_time(k, e0, band, sr):
    return np.log(np.sinh(k * e0 / sr) / np.sinh(k * band / sr)) / k


def test_rail_clips_and_reports():
    sol = amcdyn.simulate(_inv(A_COUPLED, B_RAIL, 1.0, SR_OFF), **KW)
    assert sol.status == "settled"
    assert bool(sol.rail_hit) and not bool(sol.slew_hit)
    assert sol.status_text == "settled (output rail hit)"
    assert sol.summary()["rail_hit"] is True
    v = np.asarray(sol.v_final)
    # Output 0 held at the rail; 1e-5 V (the controller's atol is 2e-7 V, the rail is
    # approached exponentially at rate 8|dV/dt|/v_sat ~ 4e9 /s).
    np.testing.assert_allclose(v[0], -1.0, atol=1e-5)
    # Output 1 closes its loop with V0 = -1 V substituted: u1 = (b1 + a10 V0 + a11 V1)/S1 and
    # V1 = -A0 u1 (single pole, finite gain).
    s1 = A_COUPLED[1].sum()
    v1 = -(B_RAIL[1] + A_COUPLED[1, 0] * -1.0) / (A_COUPLED[1, 1] + s1 / A0)
    np.testing.assert_allclose(v[1], v1, atol=1e-6)
    # The reference of the band and of the error is the transient's own final value.
    np.testing.assert_array_equal(sol.v_steady, sol.v_final)
    x = np.linalg.solve(A_COUPLED, B_RAIL)
    np.testing.assert_allclose(
        sol.rel_error, np.linalg.norm(-v - x) / np.linalg.norm(x), rtol=1e-10
    )
    # A clipped answer is far from the exact one.
    assert float(sol.rel_error) > 0.3
    # Without the energy state, the rail and slew monitors move one place down in the state
    # vector: the same report, the same clipped outputs (to the controller's tolerance).
    off = amcdyn.simulate(_inv(A_COUPLED, B_RAIL, 1.0, SR_OFF), energy=False, **KW)
    assert off.status == "settled" and bool(off.rail_hit) and not bool(off.slew_hit)
    np.testing.assert_allclose(off.v_final, v, atol=1e-5)
    assert np.isnan(float(off.energy))


def test_slew_limited_settling_closed_form():
    # Diagonal INV: two independent stages, dV/dt = SR tanh(-k (V - V*)/SR), k = w0 + w_T.
    sr = 1e6  # V/s
    b = np.array([0.5, 0.25])
    sol = amcdyn.simulate(_inv(np.eye(2), b, VSAT_OFF, sr), **KW)
    assert sol.status == "settled"
    assert bool(sol.slew_hit) and not bool(sol.rail_hit)
    k = WT / A0 + WT
    v_star = WT * b / k
    band = float(sol.tol) * v_star[0]
    t_ref = _slew_time(k, v_star[0], band, sr)
    # Closed form of the tanh-slewed single pole: 1e-4 relative (rtol 1e-6 on the state, the
    # crossing located on the dense interpolant; measured ~1e-5).
    np.testing.assert_allclose(sol.settling_time, t_ref, rtol=1e-4)
    # It is the slew-limited ramp dV/SR to within the few linear time constants of the tail.
    np.testing.assert_allclose(sol.settling_time, v_star[0] / sr, rtol=0.02)
    np.testing.assert_allclose(sol.v_final, -v_star, atol=1e-6)
    # Stopped mid-ramp, the transient is still moving at t_max: not settled, although its
    # band is centred on its own final value.
    short = amcdyn.simulate(_inv(np.eye(2), b, VSAT_OFF, sr), t_max=0.5 * v_star[0] / sr, **KW)
    assert short.status == "not_settled" and bool(short.slew_hit)


def test_small_signals_reproduce_the_linear_circuit():
    a, b = A_COUPLED, np.array([1e-3, -2e-3])
    sol = amcdyn.simulate(_inv(a, b, VSAT_OFF, SR_OFF), **KW)
    ref = amcdyn.simulate_analytic(amcdyn.INV.from_matrix(a, b), n_save=0)
    assert sol.status == "settled" and not bool(sol.rail_hit) and not bool(sol.slew_hit)
    fs = np.abs(ref.v_final).max()
    # The limits are 1e-5 of the linear terms at most (tanh: (rate/SR)^2 ~ 1e-20; rail
    # knee: (V/v_sat)^8 ~ 1e-46); the rest is the ODE tolerance (rtol 1e-6).
    np.testing.assert_allclose(sol.v_final, ref.v_final, rtol=0, atol=1e-5 * fs)
    np.testing.assert_allclose(sol.settling_time, ref.settling_time, rtol=1e-3)
    np.testing.assert_allclose(sol.settle_integral, ref.settle_integral, rtol=1e-3)
    # |rel_error - rel_error_ref| <= |v - v_ref| / |x| (triangle inequality, decode = -v).
    x = np.linalg.solve(a, b)
    gap = np.linalg.norm(np.asarray(sol.v_final - ref.v_final)) / np.linalg.norm(x)
    assert abs(float(sol.rel_error - ref.rel_error)) <= gap + 1e-15


def _outputs(params, circuit):
    """[V0, V1, settling time] of `circuit` with (v_sat, slew_rate) = `params` (forward-mode
    differentiable), and the rail/slew flags."""
    c = eqx.tree_at(lambda c: (c.amp.v_sat, c.amp.slew_rate), circuit, (params[0], params[1]))
    sol = amcdyn.simulate(c, **KW, adjoint=dfx.ForwardMode())
    out = jnp.concatenate([sol.v_final, sol.settling_time[None]])
    return out, (out, sol.rail_hit, sol.slew_hit)


def test_jit_vmap_grad():
    # One compiled call: a batch of three circuits (rail-held, slewing, slewing and coupled),
    # each with its Jacobian in (v_sat, slew_rate) by forward mode.
    circuits = [
        _inv(A_COUPLED, B_RAIL, 1.0, SR_OFF),
        _inv(np.eye(2), np.array([0.5, 0.25]), VSAT_OFF, 1e6),
        _inv(A_COUPLED, np.array([0.3, 0.1]), 1.0, 3e7),
    ]
    batch = jax.tree.map(lambda *x: jnp.stack(x), *circuits)
    params = jnp.array([[c.amp.v_sat, c.amp.slew_rate] for c in circuits])
    run = jax.jit(jax.vmap(jax.jacfwd(_outputs, has_aux=True)))
    jac, (vals, rail, slew) = run(params, batch)
    assert np.all(np.isfinite(jac))
    assert [bool(x) for x in rail] == [True, False, False]
    assert [bool(x) for x in slew] == [False, True, True]
    for i, c in enumerate(circuits):
        one = amcdyn.simulate(c, **KW)
        # Same steps per batch element; only floating-point reassociation differs.
        np.testing.assert_allclose(vals[i, :2], one.v_final, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(vals[i, 2], one.settling_time, rtol=1e-7)

    # Rail-held output 0: dV0/dv_sat = -1 and, from output 1's loop equation,
    # dV1/dv_sat = a10 / (a11 + S1/A0). This is the derivative of the discrete solution of an
    # explicit solver held at a stiff equilibrium (the rail; measured 1.3e-3 off): 5e-3.
    np.testing.assert_allclose(jac[0, 0, 0], -1.0, rtol=5e-3)
    np.testing.assert_allclose(jac[0, 1, 0], A_COUPLED[1, 0] / (1 + 1.2 / A0), rtol=5e-3)
    # Slewing stage: d t_s / d SR from the closed form (differentiated by central differences
    # of the formula, 1e-6 relative step). The crossing's derivative is that of the
    # regula-falsi step on the interpolant (measured 0.6% off): 1e-2.
    k = WT / A0 + WT
    v_star = WT * 0.5 / k
    band = 1e-3 * v_star

    def t_ref(sr):
        return _slew_time(k, v_star, band, sr)

    d_ref = (t_ref(1e6 * (1 + 1e-6)) - t_ref(1e6 * (1 - 1e-6))) / (2e6 * 1e-6)
    np.testing.assert_allclose(jac[1, 2, 1], d_ref, rtol=1e-2)
    # Central differences of the (reverse-mode default) solve for the coupled, slewing
    # circuit: the step pattern may change between evaluations, so 1e-2 of each entry plus
    # the solver noise (1e-6 V on outputs, 1e-5 of t_s) over the step.
    p0 = params[2]
    for j, h in enumerate((1e-4, 3e3)):  # 1e-4 relative steps
        e = jnp.zeros(2).at[j].set(h)
        fd = (_outputs(p0 + e, circuits[2])[0] - _outputs(p0 - e, circuits[2])[0]) / (2 * h)
        noise = np.array([1e-6, 1e-6, 1e-5 * float(vals[2, 2])]) / h
        err = np.abs(np.asarray(fd - jac[2, :, j]))
        np.testing.assert_array_less(err, 1e-2 * np.abs(np.asarray(jac[2, :, j])) + noise)
    # Physical signs: a faster slew settles sooner.
    assert float(jac[1, 2, 1]) < 0 and float(jac[2, 2, 1]) < 0


@eqx.filter_jit
def _probe(dyn, lin, y):
    n = dyn.n_outputs
    jac0 = jax.jacfwd(dyn.vector_field)(jnp.zeros(dyn.n_states))
    return (
        lin.vector_field(y)[:n],
        dyn.vector_field(y)[:n],
        dyn.limit_excess(y),
        jac0,
        lin.jacobian(),
    )


def test_vector_fields_respect_the_limits():
    # At the rail, outward motion stops and inward motion is untouched; |dV/dt| < SR.
    a_inv, a_mvm = np.array([[2.0, -0.5], [-0.5, 1.5]]), np.array([[1.0, -0.5]])
    rails = np.array([1.0, 2.5])  # per-amplifier rails (V)
    for c, c_lin, rail in (
        (
            amcdyn.INV.from_matrix(a_inv, np.ones(2), v_sat=1.0),
            amcdyn.INV.from_matrix(a_inv, np.ones(2)),
            1.0,
        ),
        (
            amcdyn.MVM.from_matrix(a_mvm, np.ones(2), v_sat=1.0),
            amcdyn.MVM.from_matrix(a_mvm, np.ones(2)),
            1.0,
        ),
        (
            amcdyn.MVM.from_matrix(np.ones((2, 2)), np.ones(2), v_sat=rails),
            amcdyn.MVM.from_matrix(np.ones((2, 2)), np.ones(2)),
            rails,
        ),
    ):
        dyn, lin = c.dynamics(), c_lin.dynamics()
        assert dyn.nonlinear and not lin.nonlinear
        n = dyn.n_outputs
        y = jnp.zeros(dyn.n_states).at[:n].set(rail)  # outputs at their + rails
        r_lin, r, excess, jac0, jac_lin = _probe(dyn, lin, y)
        out = np.asarray(r_lin) > 0
        np.testing.assert_allclose(np.asarray(r)[out], 0, atol=1e-12 * np.abs(r_lin).max())
        np.testing.assert_allclose(np.asarray(r)[~out], np.asarray(r_lin)[~out], rtol=1e-9)
        # Rail excess: |V|/v_sat - 0.9 = 0.1 for every output at the rail.
        np.testing.assert_allclose(excess[0], 0.1 * n, rtol=1e-12)
        # Linear rate at the origin: the limits have unit small-signal gain.
        np.testing.assert_allclose(jac0, jac_lin, rtol=1e-9)
    m = amcdyn.MVM.from_matrix(np.array([[1.0, -0.5]]), np.ones(2), slew_rate=1e6)
    r = m.dynamics().vector_field(jnp.zeros(1))
    assert 0.99e6 < abs(float(r[0])) <= 1e6


def test_linear_only_paths_refuse():
    c = _inv(A_COUPLED, B_RAIL, 1.0, None)
    assert c.nonlinear
    with pytest.raises(ValueError, match="nonlinear.*use amcdyn.simulate"):
        amcdyn.simulate_analytic(c)
    with pytest.raises(ValueError, match="nonlinear.*use amcdyn.simulate"):
        amcdyn.simulate_expm(c)
    lin = amcdyn.INV.from_matrix(A_COUPLED, np.array([0.3, 0.1]))
    sol = amcdyn.simulate_analytic(lin, n_save=0)
    assert not lin.nonlinear and not bool(sol.rail_hit) and not bool(sol.slew_hit)
    assert sol.status_text == "settled"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"v_sat": 0.0}, "v_sat"),
        ({"v_sat": -1.0}, "v_sat"),
        ({"slew_rate": float("nan")}, "slew_rate"),
        ({"slew_rate": np.ones(3)}, "slew_rate"),
        ({"inverter_v_sat": -2.0}, "inverter_v_sat"),
        ({"inverter_slew_rate": float("inf")}, "inverter_slew_rate"),
    ],
)
def test_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        amcdyn.INV.from_matrix(np.array([[2.0, -0.5], [-0.5, 1.5]]), np.ones(2), **kwargs)
    if not name.startswith("inverter"):
        with pytest.raises(ValueError, match=f"`{name}`"):
            amcdyn.MVM.from_matrix(np.ones((2, 2)), np.ones(2), **kwargs)
