"""BlockAMC hardware cost: counts, area, and the energy of a solve with a shared amplifier bank.

References: the counts are derived by hand below (not by re-running the recursion); the
resistive energy of every step is integrated here along the exact transient of the step
circuit, $y(t) = y^* - e^{Jt}y^*$, with `scipy.linalg.expm` and Simpson's rule; the amplifier
power comes from the op-amp datasheet line of `amcdyn._opamp` written out by hand.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg

from amcdyn._blockamc import blockamc_solve, blockamc_step_circuits, compare_blockamc
from amcdyn._cost import CostModel, blockamc_cost, blockamc_energy, inv_cost


# Hand counts (N even, opamp inverters), with n = N/2 for the blocks:
# - cells: INV 2N^2; one stage 2*(4 n^2) + 2 n (identity columns of A21, A12) = 2N^2 + N;
#   two stages: the two sub-solvers (A11, S) have 2n^2 + n each, plus A21, A12 with
#   2 n^2 + n each: 2N^2 + 2N.
# - amplifiers: INV N + N inverters; one stage max(INV(n): 2n, MVM(n x n): n + n) = N;
#   two stages max(INV(n/2): n, inner MVM: n, top MVM n rows + n inverters) = N.
# - S/H (peak held voltages): one stage: y,t | t,x2 | x2,u | x2,u -> 2n = N. Two stages
#   (17 steps): peak during steps 14-16 of the last A11 sub-solve: x2 = [s5; s3] (n), the
#   input u (n), and two inner vectors of n/2 -> 3N/2.
# - switches: INV array of size r: r rows + 2r columns; MVM r x c: r + 2c + r. One stage:
#   2*3n + 2*4n = 7N; two stages: two sub-solvers of 7n each + 2*4n = 11N.
HAND = {
    # (N, stages): (cells, amplifiers, sh_channels, switches, steps)
    (8, 0): (128, 16, 0, 0, 1),
    (8, 1): (136, 8, 8, 56, 5),
    (8, 2): (144, 8, 12, 88, 17),
    (16, 0): (512, 32, 0, 0, 1),
    (16, 1): (528, 16, 16, 112, 5),
    (16, 2): (544, 16, 24, 176, 17),
}
COST = CostModel(cell_area=0.05, amp_area=800.0, amp_area_per_hz=2e-6, sh_area=120.0,
                 switch_area=1.5)  # fmt: skip


@pytest.mark.parametrize("key", sorted(HAND))
def test_counts_and_area_match_hand_counts(key):
    n, stages = key
    cells, amps, sh, sw, steps = HAND[key]
    hw = blockamc_cost(n, stages, cost=COST, f_gbw=2e8)
    assert (hw.cells, hw.amplifiers, hw.sh_channels, hw.switches) == (cells, amps, sh, sw)
    assert len(hw.step_names) == steps
    amp = 800.0 + 2e-6 * 2e8  # µm² per amplifier at 200 MHz
    area = cells * 0.05 + amps * amp + sh * 120.0 + sw * 1.5
    # Sums of a few float64 products: round-off only.
    np.testing.assert_allclose(float(hw.area), area, rtol=1e-12)
    parts = hw.cell_area + hw.amplifier_area + hw.sh_area + hw.switch_area
    np.testing.assert_allclose(float(parts), area, rtol=1e-12)
    if stages == 0:
        assert hw.summary() == inv_cost(n, cost=COST, f_gbw=2e8).summary()


def test_counts_with_ideal_inverters_and_steps():
    # Ideal inverters are not hardware: INV N; BlockAMC bank N/2 (INV(N/2) or N/2-row MVMs).
    assert inv_cost(8, inverters="ideal").amplifiers == 8
    assert blockamc_cost(8, 1, inverters="ideal").amplifiers == 4
    assert blockamc_cost(16, 2, inverters="ideal").amplifiers == 8
    hw = blockamc_cost(8, 1)
    assert hw.step_names == ("INV(A11)", "MVM(A21)", "INV(S)", "MVM(A12)", "INV(A11)")
    # INV(4): 4 + 4 inverters; MVM 4 rows x 4 matrix columns: 4 TIAs + 4 input inverters.
    assert hw.step_amplifiers == (8, 8, 8, 8, 8)
    assert blockamc_cost(8, 2).step_amplifiers == (4,) * 5 + (8,) + (4,) * 5 + (8,) + (4,) * 5
    # Four distinct arrays; A11 is one array used twice.
    assert [a[0] for a in hw.arrays] == ["A11", "A21", "S", "A12"]


def test_area_monotonic_in_parameters_and_size():
    base = dict(cell_area=0.02, amp_area=1000.0, amp_area_per_hz=1e-6, sh_area=250.0,
                switch_area=1.0)  # fmt: skip
    for stages in (0, 1, 2):
        a0 = float(blockamc_cost(16, stages, cost=CostModel(**base)).area)
        for name in base:
            cost = CostModel(**{**base, name: 2 * base[name]})
            bigger = float(blockamc_cost(16, stages, cost=cost).area)
            if stages == 0 and name in ("sh_area", "switch_area"):
                assert bigger == a0  # one INV has no S/H and no switches
            else:
                assert bigger > a0, (stages, name)
        faster = float(blockamc_cost(16, stages, cost=CostModel(**base), f_gbw=4e8).area)
        assert faster > a0
        sizes = [float(blockamc_cost(n, stages).area) for n in (4, 8, 16, 32)]
        assert np.all(np.diff(sizes) > 0)


def test_bad_input_raises_naming_the_argument():
    with pytest.raises(ValueError, match="`n`"):
        blockamc_cost(6, 2)  # 6 is not divisible by 4
    with pytest.raises(ValueError, match="`n`"):
        blockamc_cost(9, 1)
    with pytest.raises(ValueError, match="`n`"):
        blockamc_cost(0, 0)
    with pytest.raises(ValueError, match="`stages`"):
        blockamc_cost(8, -1)
    with pytest.raises(ValueError, match="`inverters`"):
        blockamc_cost(8, 1, inverters="none")
    with pytest.raises(ValueError, match="`f_gbw`"):
        blockamc_cost(8, 1, f_gbw=-1.0)
    with pytest.raises(ValueError, match="`cost`"):
        blockamc_cost(8, 1, cost={"amp_area": 1.0})
    for name in ("cell_area", "amp_area", "amp_area_per_hz", "sh_area", "switch_area"):
        with pytest.raises(ValueError, match=f"`{name}`"):
            CostModel(**{name: -1.0})
        with pytest.raises(ValueError, match=f"`{name}`"):
            CostModel(**{name: float("nan")})
    with pytest.raises(ValueError, match="`amp_area`"):
        CostModel(amp_area=np.ones(3))


def test_jit_vmap_grad_of_area():
    def area(c, f):
        return blockamc_cost(16, 1, cost=c, f_gbw=f).area

    c = CostModel(cell_area=0.02, amp_area=1000.0, amp_area_per_hz=1e-6, sh_area=250.0)
    f = jnp.asarray(1e8)
    np.testing.assert_allclose(jax.jit(area)(c, f), area(c, f), rtol=1e-14)
    grads = jax.grad(area, argnums=(0, 1))(c, f)
    hw = blockamc_cost(16, 1)
    # Exact derivatives: the counts (area is linear in the unit areas).
    np.testing.assert_allclose(grads[0].cell_area, hw.cells, rtol=1e-14)
    np.testing.assert_allclose(grads[0].amp_area, hw.amplifiers, rtol=1e-14)
    np.testing.assert_allclose(grads[0].sh_area, hw.sh_channels, rtol=1e-14)
    np.testing.assert_allclose(grads[0].switch_area, hw.switches, rtol=1e-14)
    np.testing.assert_allclose(grads[0].amp_area_per_hz, hw.amplifiers * 1e8, rtol=1e-14)
    # Central differences in f_gbw (linear: exact up to round-off; 1e-6 covers it).
    h = 1e5
    fd = (area(c, f + h) - area(c, f - h)) / (2 * h)
    np.testing.assert_allclose(grads[1], fd, rtol=1e-6)
    # vmap over a batch of amplifier areas.
    amp = jnp.array([500.0, 1000.0, 2000.0])
    batched = jax.vmap(lambda a: area(CostModel(amp_area=a), f))(amp)
    ref = [float(area(CostModel(amp_area=float(a)), f)) for a in amp]
    np.testing.assert_allclose(batched, ref, rtol=1e-14)


# One 4 x 4 SPD problem whose blocks A11 and S have negative entries (so every INV step has
# its inverters, as the counts assume).
_rng = np.random.default_rng(3)
_q = _rng.normal(size=(4, 4))
A = _q @ _q.T / 4 + np.eye(4)
B = _rng.uniform(-1, 1, 4)
P_AMP = 25e-3 + 1e-10 * 1e8  # W: P_static + k_GBW f_GBW of amcdyn._opamp at 100 MHz
T_HOLD = 5e-9
# Held at the end of the window, so a step's held value is its `v_final`; a fine expm grid
# (256 intervals) makes amcdyn's Hermite-corrected trapezoid of the resistive power accurate
# to ~1e-8 (with the default 64 intervals: 1.5e-6, measured). Shared by all solves below, so
# each step structure compiles once.
OPTS = dict(sample="final", tol=1e-3, n_steps=256)


@functools.cache
def _solve(stages, t_hold=0.0):
    return blockamc_solve(A, B, stages=stages, t_hold=t_hold, throw=False, **OPTS)


def _resistive_energy(circuit, t_s):
    """$\\int_0^{t_s}$ resistive power along $y(t) = y^* - e^{Jt}y^*$ (scipy expm, Simpson)."""
    dyn = circuit.dynamics()
    jac = np.asarray(dyn.jacobian())
    y_ss = np.asarray(dyn.steady_state())
    ts = np.linspace(0.0, t_s, 4001)
    step = scipy.linalg.expm(jac * (ts[1] - ts[0]))
    e = [y_ss]  # e(t) = y* - y(t) = e^{Jt} y*
    for _ in ts[1:]:
        e.append(step @ e[-1])
    p = jax.vmap(circuit.resistive_power)(jnp.asarray(y_ss - np.array(e)))
    return scipy.integrate.simpson(np.asarray(p), x=ts)


def _step_circuits(sol, stages):
    """The step circuits of `sol`, each fed by what the solve held (its steps' `v_final`)."""
    held = iter([s.v_final for s in sol.steps])
    return blockamc_step_circuits(A, B, stages=stages, hold=lambda c: next(held))


def test_energy_is_powered_amplifiers_times_time_plus_resistive():
    sol = _solve(1, T_HOLD)
    assert sol.status == "settled"
    circuits = _step_circuits(sol, 1)
    assert [name for name, _ in circuits] == list(sol.step_names)
    t_s = np.asarray(sol.step_times)
    e_res = np.array([_resistive_energy(c, t) for (_, c), t in zip(circuits, t_s)])
    # Hand count of the powered amplifiers per step (N = 4, blocks of 2): INV(2) 2 + 2
    # inverters; MVM 2 rows + 2 input inverters; the bank is 4.
    on = np.array([4, 4, 4, 4, 4])
    t = t_s + T_HOLD
    active = blockamc_energy(sol, amp_power=P_AMP, powered="active")
    bank = blockamc_energy(sol, amp_power=P_AMP, powered="bank")
    # Simpson on 4000 intervals of a smooth exponential integrand: ~1e-10 relative; 1e-6
    # leaves room for amcdyn's own quadrature (above).
    np.testing.assert_allclose(active.resistive_energy, e_res.sum(), rtol=1e-6)
    np.testing.assert_allclose(active.energy, P_AMP * (on * t).sum() + e_res.sum(), rtol=1e-6)
    np.testing.assert_allclose(bank.energy, P_AMP * 4 * t.sum() + e_res.sum(), rtol=1e-6)
    np.testing.assert_allclose(
        active.step_energies, P_AMP * on * t + e_res, rtol=1e-6, atol=1e-6 * e_res.max()
    )
    assert active.step_amplifiers == (4,) * 5 and bank.step_amplifiers == (4,) * 5

    # One INV (stages=0): the bank is its own 4 op-amps + 4 inverters, powered for its
    # settling time plus t_hold.
    one = _solve(0, T_HOLD)
    ((_, inv),) = _step_circuits(one, 0)
    e0 = _resistive_energy(inv, float(one.step_times[0]))
    ref = P_AMP * 8 * (float(one.step_times[0]) + T_HOLD) + e0
    for powered in ("active", "bank"):
        e = blockamc_energy(one, amp_power=P_AMP, powered=powered)
        np.testing.assert_allclose(e.energy, ref, rtol=1e-6)

    # d E / d p = sum of powered amplifiers x time, against central differences.
    def energy(p):
        return blockamc_energy(sol, amp_power=p, powered="active").energy

    g = jax.grad(energy)(jnp.asarray(P_AMP))
    h = 1e-6
    fd = (energy(P_AMP + h) - energy(P_AMP - h)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-7)  # linear in p: round-off only
    np.testing.assert_allclose(g, (on * t).sum(), rtol=1e-12)
    np.testing.assert_allclose(jax.jit(energy)(jnp.asarray(P_AMP)), energy(P_AMP), rtol=1e-14)

    with pytest.raises(ValueError, match="`powered`"):
        blockamc_energy(sol, amp_power=P_AMP, powered="idle")
    with pytest.raises(ValueError, match="`amp_power`"):
        blockamc_energy(sol, amp_power=-1.0)
    # A solution whose steps are not the schedule of its `stages` (here: claims 2 stages).
    wrong = dataclasses.replace(sol, stages=2)
    with pytest.raises(ValueError, match="`sol`"):
        blockamc_energy(wrong, amp_power=P_AMP)


def test_two_stage_energy_counts_the_shared_bank():
    # Only the amplifier counts are checked here (resistive energies from the solution).
    sol = _solve(2, T_HOLD)
    e_res = np.array([float(s.energy - s.power * s.settling_time) for s in sol.steps])
    t = np.asarray(sol.step_times) + T_HOLD
    # N = 4: INV(1) 1 + 1 inverter, inner MVM 1 row + 1 input inverter, top MVM 2 + 2;
    # the bank is 4.
    on = np.array([2] * 5 + [4] + [2] * 5 + [4] + [2] * 5)
    act = blockamc_energy(sol, amp_power=P_AMP, powered="active")
    bank = blockamc_energy(sol, amp_power=P_AMP, powered="bank")
    # Sums of products: round-off only.
    np.testing.assert_allclose(act.energy, P_AMP * (on * t).sum() + e_res.sum(), rtol=1e-12)
    np.testing.assert_allclose(bank.energy, P_AMP * 4 * t.sum() + e_res.sum(), rtol=1e-12)
    assert float(bank.energy) > float(act.energy)


def test_compare_blockamc_reports_area_and_gains():
    cost = CostModel(amp_area=900.0, sh_area=100.0)
    res = compare_blockamc(
        A, B, jax.random.PRNGKey(0), n_samples=1, stages=(0, 1), cost=cost, **OPTS
    )
    med = res["median"]
    for s in (0, 1):
        hw = blockamc_cost(4, s, cost=cost)
        assert res[s]["area_um2"] == pytest.approx(float(hw.area), rel=1e-12)
        assert res[s]["hardware"]["amplifiers"] == hw.amplifiers
    # stages=0: every amplifier is powered during the one step, so both policies agree with
    # the INV's own Solution.energy (t_hold = 0; A has negative entries: 4 inverters built).
    np.testing.assert_allclose(res[0]["energy_active_j"], res[0]["energy_j"], rtol=1e-12)
    np.testing.assert_allclose(res[0]["energy_bank_j"], res[0]["energy_j"], rtol=1e-12)
    g = res["gains"][1]
    assert g["area_saving"] == pytest.approx(1 - med[1]["area_um2"] / med[0]["area_um2"])
    assert g["throughput_per_area_gain"] == pytest.approx(
        med[0]["area_um2"] * med[0]["time_s"] / (med[1]["area_um2"] * med[1]["time_s"]) - 1
    )
    assert g["energy_efficiency_gain_bank"] == pytest.approx(
        med[0]["energy_bank_j"] / med[1]["energy_bank_j"] - 1
    )
    with pytest.raises(ValueError, match="`cost`"):
        compare_blockamc(A, B, jax.random.PRNGKey(0), n_samples=1, cost=1.0)
    # The JSON summary (and so `amcdyn simulate blockamc --json`) carries the area.
    summ = _solve(1).summary()
    assert summ["area_um2"] == pytest.approx(float(blockamc_cost(4, 1).area), rel=1e-12)
    assert summ["hardware"]["sh_channels"] == 4
