"""Gradient-based INV design (`amcdyn._design`, `amcdyn design inv`).

Compiled programs are shared where possible (one circuit structure for the initial and
designed circuits; the same transient length in every `evaluate`) to keep the file fast.
"""

import dataclasses
import json

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from helpers import laplacian_1d, random_vector, well_conditioned

import amcdyn
from amcdyn import _design as D
from amcdyn._cli import main


N = 6
OBJ = D.Objective(n_grid=128)


def _circuit(a, b, **kw):
    n = a.shape[0]
    return amcdyn.INV.from_matrix(a, b, f_gbw=np.full(n, 1e8), inverter_f_gbw=np.full(n, 1e8), **kw)


@pytest.fixture(scope="module")
def lap():
    """Ill-conditioned signed example: 1-D Laplacian-like, eigenvalues 0.19 .. 1.81."""
    return _circuit(laplacian_1d(N, off=-0.45), random_vector(N, 0))


# Any optax transformation: here Adam behind gradient clipping (one object, so that every
# run on `lap` shares one compiled step).
OPT = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(0.05))


@pytest.fixture(scope="module")
def designed(lap):
    return D.design(lap, objective=OBJ, optimizer=OPT, steps=40, eval_steps=1024)


# --------------------------------------------------------------------------------------------
# INV.col_scale


def test_col_scale_decodes_to_solution():
    a = well_conditioned(4, 0, signed=True)
    b = random_vector(4, 1)
    d = np.array([0.5, 2.0, 1.0, 0.8])
    c = amcdyn.INV.from_matrix(a * d[None, :], b, a0=np.inf, inverters="ideal")
    c = dataclasses.replace(c, a=jnp.asarray(a), col_scale=jnp.asarray(d))
    # Equilibrium from NumPy: J y* = -c; the decoded ideal-gain answer is exactly A^-1 b.
    dyn = c.dynamics()
    y = np.linalg.solve(np.asarray(dyn.jacobian()), -np.asarray(dyn.vector_field(jnp.zeros(4))))
    np.testing.assert_allclose(c.decode(jnp.asarray(y)), np.linalg.solve(a, b), rtol=1e-10)
    np.testing.assert_allclose(c.exact_solution(), np.linalg.solve(a, b), rtol=1e-10)
    with pytest.raises(ValueError, match="`col_scale` must have shape"):
        dataclasses.replace(c, col_scale=jnp.ones(3))
    with pytest.raises(ValueError, match="`col_scale` must be > 0"):
        dataclasses.replace(c, col_scale=jnp.array([1.0, -1.0, 1.0, 1.0]))


# --------------------------------------------------------------------------------------------
# The surrogate


def test_surrogate_tracks_settling_time(lap, designed):
    """Sweep the split of the GBW budget between main amplifiers and inverters (the budget
    projection keeps the power equal): the surrogate follows the true settling time, and its
    minimizer is the true one."""
    prob = D.make_problem(lap, objective=D.Objective(n_grid=128, horizon=2.0))
    p0 = prob.init_params()
    s = jnp.linspace(-1.4, 1.4, 15)
    batch = {
        "gbw_main": p0["gbw_main"][None] + s[:, None],
        "gbw_inv": p0["gbw_inv"][None] - s[:, None],
        "col_scale": jnp.broadcast_to(p0["col_scale"], (len(s), N)),
    }
    m = jax.vmap(prob.smooth_metrics)(batch)
    sur = np.asarray(m["time_s"])
    true = []
    for i in range(len(s)):
        c = prob.circuit({k: v[i] for k, v in batch.items()})
        # The same compiled transient as the `designed` fixture's evaluation.
        true.append(D.evaluate(c, n_steps=1024)["settling_time_s"])
        np.testing.assert_allclose(c.amplifier_power(), lap.amplifier_power(), rtol=1e-12)
    true = np.asarray(true)
    assert np.all(np.isfinite(true))
    # The surrogate is the time outside the band with a soft edge (beta = 0.25): within 3 %
    # of the settling time here (measured < 1 %).
    np.testing.assert_allclose(sur, true, rtol=0.03)
    assert true.max() > 3 * true.min()  # the sweep does matter
    k_sur, k_true = int(np.argmin(sur)), int(np.argmin(true))
    assert abs(k_sur - k_true) <= 1
    assert true[k_sur] <= 1.02 * true.min()
    # The loss's steady-state error is the decoded equilibrium's (NumPy solve of J y = -c),
    # here at s = 0, the initial design.
    dyn = lap.dynamics()
    c0 = -np.asarray(dyn.vector_field(jnp.zeros(2 * N)))
    y = np.linalg.solve(np.asarray(dyn.jacobian()), c0)
    x = np.asarray(lap.decode(jnp.asarray(y[:N])))
    x_ex = np.linalg.solve(np.asarray(lap.a), np.asarray(lap.b))
    err = np.linalg.norm(x - x_ex) / np.linalg.norm(x_ex)
    np.testing.assert_allclose(m["rel_error"][7], err, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Gradients and transforms


_VALUE_AND_GRAD = eqx.filter_jit(
    jax.vmap(jax.value_and_grad(D.DesignProblem.loss, argnums=1), (None, 0))
)


def test_grad_fd_vmap(getkey):
    """Every conductance-mapping and GBW variable, robust (a quantile over Monte Carlo
    samples), energy, error weight and precision penalty: the vmapped, jitted gradient
    against central differences of the loss. (With wire resistance the same check passes too,
    but compiling the wired crossbar's reduction doubles this test's time.)"""
    c = _circuit(laplacian_1d(4, off=-0.4), random_vector(4, 2))
    variables = ("g0", "col_scale", "g_offset", "gbw_main", "gbw_inv")
    prob = D.make_problem(
        c,
        variables=variables,
        objective=D.Objective(energy=0.5, error=0.1, target_bits=14, n_grid=64),
        robust=dict(samples=4, sigma=0.05, quantile=0.75),
        key=getkey(),
        power_budget=1.2 * float(c.amplifier_power()),
    )
    p0 = prob.init_params()
    # Away from the initial point (where the offset sigmoid is flat and the budget inactive).
    p = {k: v + 0.3 * jr.normal(getkey(), jnp.shape(v)) for k, v in p0.items()}
    p["g_offset"] = jnp.asarray(-1.0)
    # One batch: p, then p +- eps along every coordinate (one compiled call for all).
    eps = 1e-5
    names = [(k, i) for k in p for i in range(int(np.size(p[k])))]
    batch = {k: [p[k]] for k in p}
    for name, i in names:
        for sign in (1.0, -1.0):
            for k in p:
                v = p[k]
                if k == name:
                    v = (v.reshape(-1).at[i].add(sign * eps)).reshape(jnp.shape(v))
                batch[k].append(v)
    batch = {k: jnp.stack(v) for k, v in batch.items()}
    values, grads = _VALUE_AND_GRAD(prob, batch)
    assert values.shape == (1 + 2 * len(names),) and grads["col_scale"].shape == (len(values), 4)
    for j, (name, i) in enumerate(names):
        fd = (values[1 + 2 * j] - values[2 + 2 * j]) / (2 * eps)
        g = np.asarray(grads[name][0]).reshape(-1)[i]
        # Central differences: O(eps^2) truncation and O(1e-16/eps) roundoff on an O(1)
        # loss; the absolute term guards entries whose gradient is near zero.
        assert abs(g - fd) <= 2e-4 * abs(fd) + 1e-6, (name, i, g, fd)
    assert np.all(np.isfinite(values))


# --------------------------------------------------------------------------------------------
# The optimized design


def test_design_beats_initial_at_equal_power(lap, designed):
    res = designed
    assert res.history[res.best_step] < res.history[0]
    # Equal power: the budget defaults to the initial design's amplifier power (projection).
    p0, p1 = float(lap.amplifier_power()), float(res.optimized.amplifier_power())
    assert p1 <= p0 * (1 + 1e-12)
    assert res.optimized_metrics["power_w"] <= p0 * (1 + 1e-12)
    # Independent check on the diffrax ODE path (not the propagator the loss uses).
    ode0 = amcdyn.simulate(res.initial, n_save=0, solver=dfx.Kvaerno5())
    ode1 = amcdyn.simulate(res.optimized, n_save=0, solver=dfx.Kvaerno5())
    assert float(ode1.settling_time) < 0.75 * float(ode0.settling_time)
    np.testing.assert_allclose(
        ode1.settling_time, res.optimized_metrics["settling_time_s"], rtol=0.01
    )
    # Precision is not bought with speed: the equilibrium error stays the finite-gain one.
    assert res.optimized_metrics["rel_error_steady"] < 2 * res.initial_metrics["rel_error_steady"]
    assert res.optimized_metrics["energy_j"] < res.initial_metrics["energy_j"]


def test_multistart(lap, designed):
    """`design_multistart`: run 0 is `design` from the circuit (the `designed` fixture, same
    options, deterministic), the winner is the lowest loss over all runs, evaluations add up,
    and the other starts form a Latin hypercube of the unconstrained parameters."""
    res = D.design_multistart(
        lap, starts=3, spread=1.5, seed=1, objective=OBJ, optimizer=OPT, steps=40
    )
    assert res.n_loss_evals == 3 * 41
    best = res.history[res.best_step]
    assert best <= designed.history[designed.best_step]
    # The returned parameters are the winner's: their loss is the reported one (same
    # compiled loss, so to roundoff), and the metrics are a transient of that design.
    loss = float(eqx.filter_jit(D.DesignProblem.loss)(res.problem, res.params))
    np.testing.assert_allclose(loss, best, rtol=1e-9)
    m = D.evaluate(res.optimized, n_steps=1024)
    assert res.optimized_metrics["settling_time_s"] == m["settling_time_s"]
    assert res.initial_metrics["settling_time_s"] == designed.initial_metrics["settling_time_s"]
    # Latin hypercube: every coordinate's k values fall one in each of k equal strata.
    k, spread = 5, 1.5
    starts = D._latin_starts(res.problem.init_params(), k, spread, seed=1)
    for name in starts[0]:
        v = np.stack([np.ravel(s[name]) for s in starts])  # (k, coordinates)
        assert np.all(np.abs(v) <= spread)
        strata = np.floor((v + spread) / (2 * spread) * k).astype(int)
        assert np.all(np.sort(strata, axis=0) == np.arange(k)[:, None]), name
    with pytest.raises(ValueError, match="`starts` must be an int >= 1"):
        D.design_multistart(lap, starts=0)
    with pytest.raises(ValueError, match="`spread` must be"):
        D.design_multistart(lap, spread=-1.0)
    with pytest.raises(ValueError, match="`init`"):
        D.design_multistart(lap, init={})


def test_export_reloads_and_ngspice_confirms(designed, tmp_path, ngspice):
    path = tmp_path / "design.json"
    designed.export(str(path))
    data = json.loads(path.read_text())
    assert data["format"] == "amcdyn.design/1"
    assert len(data["optimized_circuit"]["amp"]["f_gbw_hz"]) == N
    c1 = D.load_design(str(path))
    c0 = D.circuit_from_dict(data["initial_circuit"])
    np.testing.assert_allclose(c1.g_pos, designed.optimized.g_pos, rtol=1e-15)
    np.testing.assert_allclose(c1.col_scale, designed.optimized.col_scale, rtol=1e-15)
    np.testing.assert_allclose(c1.amplifier_gbw(), designed.optimized.amplifier_gbw(), rtol=1e-15)
    s0 = amcdyn.simulate_spice(c0)
    s1 = amcdyn.simulate_spice(c1)
    # ngspice (tight tolerances, 2000 points, piecewise-linear settling): within 2 % of amcdyn.
    np.testing.assert_allclose(
        s1.settling_time, designed.optimized_metrics["settling_time_s"], rtol=0.02
    )
    assert s1.settling_time < 0.75 * s0.settling_time
    x = np.linalg.solve(np.asarray(c1.a), np.asarray(c1.b))
    # The decoded ngspice answer (x = D y) is the solution to the finite-gain error (~2e-4).
    np.testing.assert_allclose(s1.solution, x, rtol=0, atol=2e-3 * np.max(np.abs(x)))


def test_evaluate_robust(designed):
    c = designed.optimized
    nominal = designed.optimized_metrics["settling_time_s"]
    # sigma = 0: every Monte Carlo instance is the nominal circuit (on a coarser, longer grid;
    # the crossing is located on the Hermite interpolant, so to ~1e-4 relative).
    m = D.evaluate(c, robust=dict(samples=4, sigma=0.0), key=jr.PRNGKey(0))
    np.testing.assert_allclose(m["mc_settling_p95_s"], nominal, rtol=1e-3)
    np.testing.assert_allclose(m["mc_settling_p50_s"], nominal, rtol=1e-3)
    m = D.evaluate(c, robust=dict(samples=4, sigma=0.05), key=jr.PRNGKey(0))
    assert m["mc_yield"] == 1.0 and m["mc_settling_p95_s"] >= m["mc_settling_p50_s"] > 0
    assert m["mc_settling_p95_s"] != pytest.approx(nominal, rel=1e-3)  # variation does act
    with pytest.raises(ValueError, match="`key` is required"):
        D.evaluate(c, robust=dict(samples=4))


def test_power_budget_respected(lap, getkey):
    budget = 0.8 * float(lap.amplifier_power())
    prob = D.make_problem(lap, power_budget=budget, objective=OBJ)
    p0 = prob.init_params()
    batch = {k: v + 2.0 * jr.normal(getkey(), (16,) + jnp.shape(v)) for k, v in p0.items()}
    powers = jax.vmap(lambda p: prob.circuit(p).amplifier_power())(batch)
    assert np.all(np.asarray(powers) <= budget * (1 + 1e-12))
    # The projection only scales down: parameters under the budget are left alone.
    p_low = {**p0, "gbw_main": p0["gbw_main"] - 3.0, "gbw_inv": p0["gbw_inv"] - 3.0}
    lo, hi = prob.gbw_bounds
    f = D._log_sigmoid_map(p_low["gbw_main"], lo, hi)
    np.testing.assert_allclose(prob.circuit(p_low).amp.f_gbw, f, rtol=1e-14)


# --------------------------------------------------------------------------------------------
# Errors


def test_bad_input(lap, tmp_path):
    with pytest.raises(ValueError, match="`circuit` must be an amcdyn.INV"):
        D.design(amcdyn.MVM.from_matrix(np.eye(2), np.ones(2)))
    with pytest.raises(ValueError, match="unknown design variable 'gain'"):
        D.make_problem(lap, variables=("gain",))
    with pytest.raises(ValueError, match="`variables` must name"):
        D.make_problem(lap, variables=())
    with pytest.raises(ValueError, match="'g_in' needs"):
        D.make_problem(lap, variables=("g_in",))
    ideal = amcdyn.INV.from_matrix(np.asarray(lap.a), np.asarray(lap.b), inverters="ideal")
    with pytest.raises(ValueError, match="'gbw_inv' needs real inverters"):
        D.make_problem(ideal, variables=("gbw_inv",))
    pos = amcdyn.INV.from_matrix(np.eye(3) + 0.1, np.ones(3))
    with pytest.raises(ValueError, match="'g_offset' needs a G- array"):
        D.make_problem(pos, variables=("g_offset",))
    with pytest.raises(ValueError, match="`power_budget`.*static"):
        D.make_problem(lap, power_budget=0.1)
    with pytest.raises(ValueError, match="`power_budget` must be a number > 0"):
        D.make_problem(lap, power_budget=float("nan"))
    with pytest.raises(ValueError, match="`key` is required"):
        D.make_problem(lap, robust=dict(samples=4))
    with pytest.raises(ValueError, match="`robust` has unknown keys"):
        D.make_problem(lap, robust=dict(n=4), key=jr.PRNGKey(0))
    with pytest.raises(ValueError, match="`samples` must be an int >= 2"):
        D.Robust(samples=1)
    with pytest.raises(ValueError, match="`steps` must be an int >= 1"):
        D.design(lap, steps=0)
    with pytest.raises(ValueError, match="`init` must be a dict with the keys"):
        D.design(lap, init={"g0": 0.0}, steps=1)
    with pytest.raises(ValueError, match="`optimizer` must be an optax"):
        D.design(lap, optimizer="adam", steps=1)
    with pytest.raises(ValueError, match="`gbw_bounds`.*strictly inside"):
        D.make_problem(lap, gbw_bounds=(1e6, 5e7))
    with pytest.raises(ValueError, match="`g_window` must be a pair"):
        D.make_problem(lap, variables=("g0",), g_window=(1e-3, 1e-5))
    with pytest.raises(ValueError, match="`energy` must be a finite number >= 0"):
        D.Objective(energy=-1.0)
    with pytest.raises(ValueError, match="nothing to minimize"):
        D.Objective(time=0.0)
    with pytest.raises(ValueError, match="`tol` must be in"):
        D.make_problem(lap, tol=2.0)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="`path`.*not an amcdyn design file"):
        D.load_design(str(bad))


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_json_and_export(tmp_path, capsys):
    np.save(tmp_path / "A.npy", laplacian_1d(N, off=-0.45))
    np.save(tmp_path / "b.npy", random_vector(N, 0))
    out = tmp_path / "d.json"
    argv = [
        "design",
        "inv",
        "--matrix",
        str(tmp_path / "A.npy"),
        "--rhs",
        str(tmp_path / "b.npy"),
        "--steps",
        "4",
        "--json",
        "--export",
        str(out),
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    for side in ("initial", "optimized"):
        for k in ("settling_time_s", "rel_error", "power_w", "energy_j"):
            assert isinstance(report[side][k], float), (side, k)
    # Default budget: the initial design's power.
    assert report["optimized"]["power_w"] <= report["initial"]["power_w"] * (1 + 1e-12)
    np.testing.assert_allclose(report["power_budget_w"], report["initial"]["power_w"], rtol=1e-12)
    c = D.load_design(str(out))
    assert c.n == N and c.col_scale.shape == (N,)
    capsys.readouterr()
    bad = ["design", "inv", "--matrix", str(tmp_path / "A.npy"), "--variables", "foo"]
    assert main(bad) == 2
    assert "--variables" in capsys.readouterr().err
    assert main(["design", "inv", "--matrix", str(tmp_path / "A.npy"), "--power-budget", "-1"]) == 2
    assert (
        main(["design", "inv", "--matrix", str(tmp_path / "A.npy"), "--power-budget", "0.01"]) == 2
    )
    assert "--power-budget" in capsys.readouterr().err
