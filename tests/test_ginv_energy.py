"""Crossbar (resistive) power and energy of the GINV and Ridge loops.

`resistive_power` is checked against an independent nodal model written from the netlist
description in `amcdyn/_spice_ginv.py` (not from `dynamics()`): a list of every resistor (two
nodes and a conductance) and input current source, the op-amp and inverter outputs fixed by
the state, every other node (summing nodes, the differential wiring's second inputs, the
inverters' nodes) from the full nodal KCL solved with NumPy, and the power sum_e G_e dV_e^2.
That element list is compared with the netlist writer's resistors (every resistor counted
once), and ngspice's transient node voltages with `resistive_power` at the same amplifier
outputs. The energy per solve is compared between `simulate`, `simulate_expm` and
`simulate_analytic` and against the nodal power integrated over the exact transient.
"""

import re

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
from helpers import exact_transient, linear_ode

import amcdyn
from amcdyn import _spice, _spice_ginv
from amcdyn._ginv import GINV, Ridge


G0 = 1e-4
LAM = 0.4
_rng = np.random.default_rng(3)
A_SIGNED = _rng.normal(size=(5, 3))
A_UNSIGNED = np.abs(A_SIGNED) + 0.2 * np.eye(5, 3)  # no negative entry: no negative arrays
RHS = _rng.normal(size=5)


def _build(kind, mode, inverters, signed=True, **kw):
    a = A_SIGNED if signed else A_UNSIGNED
    a, b = (a, RHS) if mode == "left" else (a.T, RHS[:3])
    if kind == "ginv":
        return GINV.from_matrix(a, b, mode=mode, inverters=inverters, g0=G0, **kw)
    return Ridge.from_matrix(a, b, LAM, mode=mode, inverters=inverters, g0=G0, **kw)


# ---------------------------------------------------------------------------------------
# independent nodal model, from the netlist description


def _banks(c):
    """(w bank, v bank): which inverted copies exist ('none' for a non-negative matrix)."""
    signed = bool(np.any(np.asarray(c.a) < 0))
    if isinstance(c, Ridge):  # the ridge conductances need w-bar even when A >= 0
        return c.inverters, (c.inverters if signed else "none")
    return (c.inverters,) * 2 if signed else ("none", "none")


def _sizes(c):
    p, q = np.shape(c.a)
    return (p, q) if c.mode == "left" else (q, p)


def _elements(c):
    """([(node, node, G (S))] every resistor once, {node: injected current (A)})."""
    n1, n2 = _sizes(c)
    f = lambda x: np.asarray(x, dtype=np.float64)  # noqa: E731
    gp, gn = f(c.g_pos), f(c.g_neg)
    gp2 = gp if c.g_pos_2 is None else f(c.g_pos_2)
    gn2 = gn if c.g_neg_2 is None else f(c.g_neg_2)
    if c.mode == "right":  # TIA i reads column i of A
        gp, gn, gp2, gn2 = gp.T, gn.T, gp2.T, gn2.T
    w_bank, v_bank = _banks(c)
    if v_bank == "none":
        gn, gn2 = 0 * gn, 0 * gn2
    g_f = np.broadcast_to(f(c.g_f), (n1,))
    g_l = np.broadcast_to(f(c.g_lambda), (n2,)) if isinstance(c, Ridge) else np.zeros(n2)
    diff = c.inverters == "differential"
    el = []
    for i in range(n1):
        el.append((f"r{i}", f"v{i}", g_f[i]))  # TIA feedback
        for j in range(n2):
            el.append((f"r{i}", f"w{j}", gp[i, j]))  # array 1
            el.append((f"rp{i}" if diff else f"r{i}", f"w{j}" if diff else f"wb{j}", gn[i, j]))
            el.append((f"s{j}", f"v{i}", gp2[i, j]))  # array 2
            el.append((f"sm{j}" if diff else f"s{j}", f"v{i}" if diff else f"vb{i}", gn2[i, j]))
    for j in range(n2):
        el.append((f"sm{j}", f"w{j}", g_l[j]) if diff else (f"s{j}", f"wb{j}", g_l[j]))
    if diff:  # balance conductances to ground: both inputs of each op-amp see max(D+, D-)
        for i in range(n1):
            pos, neg = gp[i].sum() + g_f[i], gn[i].sum()
            el += [(f"r{i}", "0", max(pos, neg) - pos), (f"rp{i}", "0", max(pos, neg) - neg)]
        for j in range(n2):
            pos, neg = gp2[:, j].sum(), gn2[:, j].sum() + g_l[j]
            el += [(f"s{j}", "0", max(pos, neg) - pos), (f"sm{j}", "0", max(pos, neg) - neg)]
    for x, bank, n in (("w", w_bank, n2), ("v", v_bank, n1)):
        if bank == "opamp":  # inverter k: x_k -- m_k -- xb_k, two resistors 1/g_inv
            for k in range(n):
                el += [(f"{x}{k}", f"m{x}{k}", f(c.g_inv)), (f"{x}b{k}", f"m{x}{k}", f(c.g_inv))]
    el = [(a, b, float(g)) for a, b, g in el if g > 1e-12 * G0]
    i_in = f(c.g0) * f(c.b)
    src = {(f"r{k}" if c.mode == "left" else f"s{k}"): i_in[k] for k in range(len(i_in))}
    return el, src


def _fixed_nodes(c, ys):
    """{node: voltages (T,)} of the op-amp outputs (and ideal inverters) for states ys (T, n)."""
    n1, n2 = _sizes(c)
    w_bank, v_bank = _banks(c)
    names = [f"w{j}" for j in range(n2)], [f"v{i}" for i in range(n1)]
    order = list(names if c.mode == "left" else names[::-1])
    if w_bank == "opamp":  # state order: outputs, other bank, w-bar, v-bar (amcdyn._ginv)
        order.append([f"wb{j}" for j in range(n2)])
    if v_bank == "opamp":
        order.append([f"vb{i}" for i in range(n1)])
    flat = [name for block in order for name in block]
    assert ys.shape[1] == len(flat)
    fixed = {name: ys[:, k] for k, name in enumerate(flat)}
    for x, bank, n in (("w", w_bank, n2), ("v", v_bank, n1)):
        if bank == "ideal":  # gain -1 VCVS
            fixed.update({f"{x}b{k}": -fixed[f"{x}{k}"] for k in range(n)})
    fixed["0"] = np.zeros(len(ys))
    return fixed


def nodal_power(c, ys):
    """Resistive power (W) at each state of ys (T, n_states): full nodal KCL, sum G dV^2."""
    ys = np.atleast_2d(np.asarray(ys, dtype=np.float64))
    el, src = _elements(c)
    fixed = _fixed_nodes(c, ys)
    nodes = sorted({a for a, _, _ in el} | {b for _, b, _ in el} | set(src))
    free = [x for x in nodes if x not in fixed]
    idx = {x: k for k, x in enumerate(free)}
    y_mat = np.zeros((len(free), len(free)))
    rhs = np.zeros((len(free), len(ys)))
    for node, current in src.items():
        rhs[idx[node]] += current
    for a, b, g in el:
        for p, q in ((a, b), (b, a)):
            if p in idx:
                y_mat[idx[p], idx[p]] += g
                if q in idx:
                    y_mat[idx[p], idx[q]] -= g
                else:
                    rhs[idx[p]] += g * fixed[q]
    volts = dict(fixed)
    sol = np.linalg.solve(y_mat, rhs)
    volts.update({x: sol[k] for k, x in enumerate(free)})
    return sum(g * (volts[a] - volts[b]) ** 2 for a, b, g in el)


def _random_states(c, k, seed):
    n = c.dynamics().n_states
    return np.random.default_rng(seed).normal(scale=0.5, size=(k, n))


# ---------------------------------------------------------------------------------------
# resistive power at a state

CASES = [
    (kind, mode, inv, signed)
    for kind in ("ginv", "ridge")
    for mode in ("left", "right")
    for inv in ("opamp", "ideal", "differential")
    for signed in (True, False)
]


def _mismatched(c):
    """Array 2 programmed apart from array 1, and per-amplifier g_f (GINV) / g_lambda (Ridge)."""
    rng = np.random.default_rng(11)
    e = lambda g: g * (1 + 0.1 * rng.normal(size=g.shape))  # noqa: E731
    c = eqx.tree_at(
        lambda c: (c.g_pos_2, c.g_neg_2),
        c,
        (e(c.g_pos), e(c.g_neg)),
        is_leaf=lambda x: x is None,
    )
    if isinstance(c, Ridge):
        n2 = _sizes(c)[1]
        return eqx.tree_at(lambda c: c.g_lambda, c, c.g_lambda * (1 + 0.3 * jnp.arange(n2)))
    n1 = _sizes(c)[0]
    return eqx.tree_at(lambda c: c.g_f, c, c.g_f * (1 + 0.3 * jnp.arange(n1)))


@pytest.mark.parametrize(
    "kind, mode, inverters, signed, mismatch",
    [case + (False,) for case in CASES] + [case + (True,) for case in CASES if case[3]],
)
def test_resistive_power_matches_nodal_model(kind, mode, inverters, signed, mismatch):
    c = _build(kind, mode, inverters, signed, a0=3e3, inverter_a0=1e3)
    if mismatch:
        c = _mismatched(c)
    ys = _random_states(c, 3, seed=len(CASES))
    # Equilibrium too: the summing nodes sit at ~v/A0 there, the small-signal regime.
    ys = np.vstack([ys, np.asarray(c.dynamics().steady_state())])
    ref = nodal_power(c, ys)
    got = np.array([float(c.resistive_power(jnp.asarray(y))) for y in ys])
    assert np.all(ref > 0)
    # Same quadratic form by two routes (expanded sums vs a nodal solve): rounding only.
    np.testing.assert_allclose(got, ref, rtol=1e-11)


@pytest.mark.parametrize(
    "kind, inverters, signed",
    [("ginv", "opamp", True), ("ginv", "differential", False), ("ridge", "differential", True)]
    + [("ridge", "ideal", False), ("ridge", "opamp", True)],
)
@pytest.mark.parametrize("mode", ["left", "right"])
def test_element_list_is_the_netlist(kind, mode, inverters, signed):
    """The nodal model's resistors and sources are the netlist writer's, each exactly once."""
    c = _mismatched(_build(kind, mode, inverters, signed))
    el, src = _elements(c)
    text = _spice_ginv.netlist(c, t_stop=1e-8, t_step=1e-11)
    spice_el, spice_src = [], {}
    for line in text.splitlines():
        tok = line.split()
        if not tok or tok[0].startswith("*"):
            continue
        if tok[0][0] in "Rr" and not re.match(r"[pq]_", tok[1]):  # not an op-amp's pole
            spice_el.append((tok[1], tok[2], 1.0 / float(tok[3])))
        elif tok[0].startswith("Iin"):
            assert tok[1] == "0"  # from ground into the node
            spice_src[tok[2]] = float(tok[4])
    key = lambda e: tuple(sorted(e[:2]))  # noqa: E731
    mine = sorted(el, key=key)
    theirs = sorted(spice_el, key=key)
    assert [key(e) for e in mine] == [key(e) for e in theirs]
    # The netlist writes 1/G with repr(); balance resistors are differences of sums.
    np.testing.assert_allclose([e[2] for e in mine], [e[2] for e in theirs], rtol=1e-12)
    assert src.keys() == spice_src.keys()
    np.testing.assert_allclose([src[k] for k in src], [spice_src[k] for k in src], rtol=1e-15)


def test_resistive_power_bad_state():
    c = _build("ridge", "left", "opamp")
    n = c.dynamics().n_states
    with pytest.raises(ValueError, match=f"`y` must have shape \\({n},\\)"):
        c.resistive_power(jnp.zeros(n + 1))
    with pytest.raises(ValueError, match="`y` must have shape"):
        c.resistive_power(jnp.zeros((2, n)))


# ---------------------------------------------------------------------------------------
# energy per solve

SIM_KW = dict(solver=dfx.Tsit5(), n_save=0)


def _controller():
    return dfx.PIDController(rtol=jnp.asarray(1e-8), atol=jnp.asarray(1e-10))


def _resistive_energy(sol):
    # energy = amplifier power x settling time + resistive energy (no converters here).
    return float(sol.energy) - float(sol.power) * float(sol.settling_time)


def test_energy_paths_agree_with_nodal_integral():
    # Ridge with op-amp inverters: every kind of resistor but the differential balance ones.
    kind, mode, inverters = "ridge", "left", "opamp"
    c = _build(kind, mode, inverters)
    ana = amcdyn.simulate_analytic(c, n_save=0)
    t_s = float(ana.settling_time)
    jac, cc = linear_ode(c.dynamics())
    ts = np.linspace(0, t_s, 8001)
    ys, _ = exact_transient(jac, cc, ts)
    e_ref = scipy.integrate.simpson(nodal_power(c, ys), x=ts)
    assert e_ref > 0
    results = {}
    for name, sol, rtol in (
        ("analytic", ana, 1e-7),  # closed form up to t_s (Simpson's error ~1e-10)
        ("expm", amcdyn.simulate_expm(c), 1e-5),  # Hermite quadrature on a grid
        # ODE: tail approximation E(t_max) - q* (t_max - t_s): O(tol) of the resistive part.
        ("ode", amcdyn.simulate(c, stepsize_controller=_controller(), **SIM_KW), 2e-3),
    ):
        assert sol.status == "settled", name
        e_res = _resistive_energy(sol)
        results[name] = e_res / e_ref - 1
        assert abs(e_res / e_ref - 1) < rtol, (name, e_res, e_ref)
        # The resistive part is now in the total (it used to be missing: energy = P t_s).
        assert float(sol.energy) > float(sol.power) * float(sol.settling_time)
    print(kind, mode, inverters, f"E_res = {e_ref:.4e} J, rel. deviations", results)


def test_resistive_energy_grows_with_g0():
    """Every conductance (and the default g_f) scales with G0 and the dynamics only see their
    ratios: the transient is the same and the resistive energy is proportional to G0."""
    e = []
    for g0 in (G0, 10 * G0):
        c = Ridge.from_matrix(A_SIGNED, RHS, LAM, g0=g0)
        sol = amcdyn.simulate_analytic(c, n_save=0)
        e.append(_resistive_energy(sol))
    assert e[0] > 0
    # Closed-form energies; the settling times agree to rounding (rel. 1e-12).
    np.testing.assert_allclose(e[1] / e[0], 10.0, rtol=1e-8)


# ---------------------------------------------------------------------------------------
# jit, vmap, grad


def _energy(p):
    """Energy per solve (J) of a Ridge circuit with p = (g0, g_f) (S)."""
    c = Ridge.from_matrix(A_SIGNED, RHS, LAM, g0=p[0], g_f=p[1], inverters="opamp")
    return amcdyn.simulate_analytic(c, n_save=0).energy


def test_energy_jit_vmap_grad():
    g_f = float(_build("ridge", "left", "opamp").g_f)
    p0 = np.array([G0, 1.3 * g_f])
    # One jitted, vmapped call of (E(p), dE(p).t): p0 along each parameter and along p0
    # itself, the central-difference points, and two other designs. Forward mode: reverse
    # mode through `simulate_analytic` fails for this 16-state circuit ("nonlinear div can't
    # be transposed" in the eigenvector JVP, for any output, not only the energy);
    # `resistive_power` itself is reverse-differentiated below.
    h = 1e-6
    steps = [s * h * p0[i] * np.eye(2)[i] for i in range(2) for s in (1, -1)]
    others = [p0 * [2.0, 1.5], p0 * [0.5, 3.0]]
    points = np.stack([p0, p0, p0] + [p0 + d for d in steps] + others)
    tangents = np.zeros_like(points)
    tangents[:3] = [[1.0, 0.0], [0.0, 1.0], p0]

    def energy_jvp(p, t):
        return jax.jvp(_energy, (p,), (t,))

    e, de = jax.jit(jax.vmap(energy_jvp))(jnp.asarray(points), jnp.asarray(tangents))
    e, de = np.asarray(e), np.asarray(de)
    assert e.shape == de.shape == (len(points),)
    # jit + vmap equal the eager (unbatched) runs.
    for k in (0, 7, 8):
        np.testing.assert_allclose(e[k], float(_energy(points[k])), rtol=1e-10)
    # Central differences: closed-form energy with an implicit-gradient settling time.
    for i in range(2):
        fd = (e[3 + 2 * i] - e[4 + 2 * i]) / (2 * h * p0[i])
        np.testing.assert_allclose(de[i], fd, rtol=1e-5, err_msg=f"dE/dp[{i}]")
    # Scaling every conductance leaves the transient unchanged: d/ds E(s p) = E_res at s = 1.
    c = Ridge.from_matrix(A_SIGNED, RHS, LAM, g0=p0[0], g_f=p0[1], inverters="opamp")
    e_res = _resistive_energy(amcdyn.simulate_analytic(c, n_save=0))
    np.testing.assert_allclose(de[2], e_res, rtol=1e-6)
    assert e[0] > e_res > 0


@eqx.filter_jit
def _probe(c, ys):
    """resistive_power under jit and vmap, its Hessian at two states, value and gradient at
    0, and d/ds of the power with every conductance scaled by s (reverse mode)."""
    q = c.resistive_power
    zero = jnp.zeros_like(ys[0])

    def scaled(s):
        leaves = lambda c: (c.g_pos, c.g_neg, c.g_f, c.g_inv)  # noqa: E731
        return eqx.tree_at(leaves, c, [x * s for x in leaves(c)]).resistive_power(ys[3])

    return (
        jax.vmap(q)(ys),
        jax.vmap(jax.hessian(q))(ys[:2]),
        q(zero),
        jax.grad(q)(zero),
        jax.grad(scaled)(jnp.ones((), ys.dtype)),
        scaled(jnp.ones((), ys.dtype)),
    )


@pytest.mark.parametrize("kind, inverters", [("ginv", "opamp"), ("ridge", "differential")])
def test_resistive_power_transforms(kind, inverters):
    c = _build(kind, "right", inverters)
    ys = jnp.asarray(_random_states(c, 4, seed=1))
    batched, hess, q0, g0, dq_ds, q3 = _probe(c, ys)
    assert batched.shape == (4,)
    eager = np.array([float(c.resistive_power(y)) for y in ys])  # op by op, no jit
    np.testing.assert_allclose(batched, eager, rtol=1e-13)
    # Quadratic in y: the Hessian is the same everywhere, and q(y) = q(0) + g.y + y^T H y / 2.
    h0, h1 = np.asarray(hess)
    np.testing.assert_allclose(h0, h1, rtol=1e-12, atol=1e-12 * np.max(np.abs(h0)))
    y = np.asarray(ys[2])
    np.testing.assert_allclose(
        float(q0) + np.asarray(g0) @ y + y @ h0 @ y / 2, eager[2], rtol=1e-11
    )
    # d/ds of the power with every conductance scaled by s (not the input currents, so the
    # summing nodes move too), reverse mode against central differences.
    s = 1e-6
    scaled = [
        eqx.tree_at(
            lambda c: (c.g_pos, c.g_neg, c.g_f, c.g_inv),
            c,
            (c.g_pos * f, c.g_neg * f, c.g_f * f, c.g_inv * f),
        ).resistive_power(ys[3])
        for f in (1 + s, 1 - s)
    ]
    fd = (float(scaled[0]) - float(scaled[1])) / (2 * s)
    np.testing.assert_allclose(float(dq_ds), fd, rtol=1e-7)
    np.testing.assert_allclose(float(q3), eager[3], rtol=1e-13)
    assert float(dq_ds) != 0


# ---------------------------------------------------------------------------------------
# ngspice: the same amplifier outputs give the same node voltages and power


@pytest.mark.parametrize("inverters", ["opamp", "differential"])
def test_resistive_power_matches_ngspice(inverters, ngspice):
    c = _build("ridge", "left", inverters, a0=3e3)
    # Long enough for the slowest mode to decay by e^-18 (the last point is the DC point).
    rate = -np.max(np.linalg.eigvals(np.asarray(c.dynamics().jacobian())).real)
    t_stop = 18 / rate
    el, src = _elements(c)
    nodes = sorted(({a for a, _, _ in el} | {b for _, b, _ in el}) - {"0"})
    text = _spice_ginv.netlist(c, t_stop=t_stop, t_step=t_stop / 2000)
    t, volts = _spice.run_netlist(text, nodes, ngspice=ngspice)
    volt = dict(zip(nodes, volts.T))
    volt["0"] = np.zeros(len(t))
    # Power in ngspice's resistors from ngspice's node voltages, and the power delivered by
    # the sources: input currents into their nodes, op-amp/inverter outputs into theirs.
    p_res = sum(g * (volt[a] - volt[b]) ** 2 for a, b, g in el)
    p_src = sum(i * volt[node] for node, i in src.items())
    outputs = {x for x in nodes if re.fullmatch(r"(w|v|wb|vb)\d+", x)}
    for a, b, g in el:
        for p, q in ((a, b), (b, a)):
            if p in outputs:
                p_src = p_src + volt[p] * g * (volt[p] - volt[q])
    # The state from ngspice's amplifier outputs: amcdyn's KCL for the remaining nodes.
    fixed = _fixed_nodes(c, np.zeros((1, c.dynamics().n_states)))
    state_nodes = [x for x in fixed if x != "0"]  # in state order (no ideal inverters here)
    ys = np.stack([volt[x] for x in state_nodes], axis=1)
    k = np.linspace(len(t) // 50, len(t) - 1, 6).astype(int)  # mid-transient to the end
    ours = np.asarray(jax.vmap(c.resistive_power)(jnp.asarray(ys[k])))
    # ngspice solves the linear node equations exactly (16 printed digits): rounding only.
    np.testing.assert_allclose(ours, p_res[k], rtol=1e-9)
    np.testing.assert_allclose(p_src[k], p_res[k], rtol=1e-9)  # Tellegen
    # The last point is the DC operating point: amcdyn's equilibrium power, to the settling.
    q_ss = float(c.resistive_power(c.dynamics().steady_state()))
    np.testing.assert_allclose(p_src[-1], q_ss, rtol=1e-5)
    print(inverters, f"P(DC) ngspice {p_src[-1]:.6e} W, amcdyn {q_ss:.6e} W")
