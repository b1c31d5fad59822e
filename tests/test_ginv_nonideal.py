"""GINV and Ridge with two-pole op-amps (`f_p2`) and wire resistance (`r_w`, `r_w_col`).

References, all independent of `amcdyn._ginv`'s reduction:

- `_network`: the unreduced circuit built here in NumPy from the circuit's physical leaves
  (every wire node of the four crossbars, G_f, G_lambda, the balance and inverter resistors,
  the input currents), solved by nodal analysis for every op-amp's differential input as an
  affine function of all op-amp outputs; with the generic one/two-pole op-amp state space
  this gives a NumPy Jacobian (eigenvalues) and steady state.
- ngspice on `spice_netlist`, which writes every wire resistor and the two-pole macromodel.
- the ODE path (`simulate`) against the exact propagator (`simulate_expm`).
- growth/decay rates measured on the transient against the predicted eigenvalues.
- central finite differences for the gradients.

Sizes are small (A 6 x 3 and 8 x 4) and the eager checks share no compile, so the file stays
well under a minute.
"""

import dataclasses

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import exact_transient, max_err_fs, value_and_jacrev

import amcdyn
from amcdyn import _ngspice
from amcdyn._ginv import GINV, Ridge


G0 = 1e-4
_rng = np.random.default_rng(3)
X6 = _rng.normal(size=(6, 3))  # tall, signed
Y6 = _rng.normal(size=6)
X8 = _rng.normal(size=(8, 4))
Y8 = _rng.normal(size=8)
S4 = _rng.normal(size=4)
LAM = 0.3


# ---------------------------------------------------------------------------------------
# independent reference: the unreduced network in NumPy


class _Network:
    """Resistors, current sources and op-amps (outputs are known voltages)."""

    def __init__(self):
        self.res = []  # (node, node, conductance)
        self.isrc = []  # (node, current into it)
        self.amps = []  # dict(name, plus, minus, out, a0, f_gbw, f_p2)
        self.vcvs = {}  # node -> (gain, amp output node): ideal inverters

    def r(self, a, b, g):
        if g > 0:
            self.res.append((a, b, float(g)))

    def grid(self, tag, g, row_term, col_term, r_row, r_col):
        """One crossbar (physical `(m, n)`), every line's terminal at its index-0 end."""
        m, n = g.shape
        rn = (lambda i, k: row_term[i]) if r_row == 0 else (lambda i, k: f"{tag}r{i},{k}")
        cn = (lambda i, j: col_term[j]) if r_col == 0 else (lambda i, j: f"{tag}c{i},{j}")
        for i in range(m):
            for k in range(n):
                if r_row > 0:
                    self.r(row_term[i] if k == 0 else rn(i, k - 1), rn(i, k), 1 / r_row)
                if r_col > 0:
                    self.r(col_term[k] if i == 0 else cn(i - 1, k), cn(i, k), 1 / r_col)
                self.r(rn(i, k), cn(i, k), g[i, k])

    def inputs(self):
        """(E, e0): every op-amp's v+ - v- = E V + e0 for the op-amp outputs V."""
        outs = [a["out"] for a in self.amps]
        known = {"0": np.zeros(len(outs) + 1)}
        for k, o in enumerate(outs):
            known[o] = np.eye(len(outs) + 1)[k]
        for node, (gain, src) in self.vcvs.items():
            known[node] = gain * known[src]
        names = sorted({x for a, b, _ in self.res for x in (a, b)} - set(known))
        idx = {x: i for i, x in enumerate(names)}
        gmat = np.zeros((len(names), len(names)))
        rhs = np.zeros((len(names), len(outs) + 1))  # columns: unit V_k, then the constant
        for a, b, g in self.res:
            for p, q in ((a, b), (b, a)):
                if p in idx:
                    gmat[idx[p], idx[p]] += g
                    if q in idx:
                        gmat[idx[p], idx[q]] -= g
                    else:
                        rhs[idx[p]] += g * known[q]
        for node, i in self.isrc:
            rhs[idx[node], -1] += i
        sol = np.linalg.solve(gmat, rhs)

        def volt(x):
            return known[x] if x in known else sol[idx[x]]

        e = np.stack([volt(a["plus"]) - volt(a["minus"]) for a in self.amps])
        return e[:, :-1], e[:, -1]

    def ode(self):
        """(J, c, names): outputs V (in `amps` order) then first-pole states x (two-pole amps)."""
        e_mat, e0 = self.inputs()
        k = len(self.amps)
        two = [i for i, a in enumerate(self.amps) if a["f_p2"] is not None]
        n = k + len(two)
        jac, c = np.zeros((n, n)), np.zeros(n)
        first = {i: i for i in range(k)}
        first.update({i: k + t for t, i in enumerate(two)})
        for i, a in enumerate(self.amps):
            wt = 2 * np.pi * a["f_gbw"]
            x = first[i]  # dx = -w0 x + wT (E V + e0)
            jac[x, :k] += wt * e_mat[i]
            jac[x, x] -= wt / a["a0"]
            c[x] = wt * e0[i]
            if a["f_p2"] is not None:  # dV = w_p2 (x - V)
                wp2 = 2 * np.pi * a["f_p2"]
                jac[i, x], jac[i, i] = wp2, -wp2
        return jac, c, [a["out"] for a in self.amps]


def _f(x):
    return np.asarray(x, dtype=float)


def _network(c):
    """The GINV/Ridge circuit `c`, wired as amc-physics.md §4 describes it."""
    net = _Network()
    a = _f(c.a)
    p, q = a.shape
    n1, n2 = (p, q) if c.mode == "left" else (q, p)
    gp, gn = _f(c.g_pos), _f(c.g_neg)
    ridge = isinstance(c, Ridge)
    signed = bool(np.any(a < 0))
    diff = c.inverters == "differential"
    w_inv = c.inverters if (signed or ridge) else None
    v_inv = c.inverters if signed else None
    g_f = np.broadcast_to(_f(c.g_f), (n1,))
    g_l = np.broadcast_to(_f(c.g_lambda), (n2,)) if ridge else np.zeros(n2)
    r_row = 0.0 if c.r_w is None else float(c.r_w)
    r_col = 0.0 if c.r_w_col is None else float(c.r_w_col)
    r = [f"r{i}" for i in range(n1)]
    s = [f"s{j}" for j in range(n2)]
    v = [f"v{i}" for i in range(n1)]
    w = [f"w{j}" for j in range(n2)]

    def amp(name, plus, minus, out, opamp):
        f_p2 = None if opamp.f_p2 is None else float(opamp.f_p2)
        net.amps.append(
            dict(
                plus=plus,
                minus=minus,
                out=out,
                a0=float(opamp.a0),
                f_gbw=float(opamp.f_gbw),
                f_p2=f_p2,
            )
        )

    # Outputs first, in amcdyn's order (left: w then v; right: v then w).
    banks = [("w", w, n2), ("v", v, n1)] if c.mode == "left" else [("v", v, n1), ("w", w, n2)]
    for bank, outs, n in banks:
        for k in range(n):
            if bank == "v":
                amp(f"t{k}", f"rp{k}" if diff else "0", r[k], v[k], c.tia)
                net.r(r[k], v[k], g_f[k])
            else:
                amp(f"a{k}", s[k], f"sm{k}" if diff else "0", w[k], c.amp)
    # Inverted copies: op-amp inverters (two resistors 1/g_inv), or ideal (wb = -w).
    for bank, outs, inv in (("w", w, w_inv), ("v", v, v_inv)):
        if inv not in ("opamp", "ideal"):
            continue
        for k, o in enumerate(outs):
            if inv == "ideal":
                net.vcvs[f"{o}b"] = (-1.0, o)
            else:
                amp(f"i{o}", "0", f"m{o}", f"{o}b", c.inverter)
                net.r(o, f"m{o}", float(c.g_inv))
                net.r(f"{o}b", f"m{o}", float(c.g_inv))
    wb = [f"{x}b" for x in w] if not diff else w
    vb = [f"{x}b" for x in v] if not diff else v
    rn = [f"rp{i}" for i in range(n1)] if diff else r
    sn = [f"sm{j}" for j in range(n2)] if diff else s
    # Array 1 (TIA side) and array 2 (second stage): left: array 1 rows -> TIAs, columns <- w;
    # array 2 rows <- v, columns -> second stage. Right: array 1 rows <- w, columns -> TIAs;
    # array 2 rows -> second stage, columns <- v.
    if c.mode == "left":
        net.grid("P1", gp, r, w, r_row, r_col)
        net.grid("P2", gp, v, s, r_row, r_col)
        if v_inv is not None:
            net.grid("N1", gn, rn, wb, r_row, r_col)
            net.grid("N2", gn, vb, sn, r_row, r_col)
    else:
        net.grid("P1", gp, w, r, r_row, r_col)
        net.grid("P2", gp, s, v, r_row, r_col)
        if v_inv is not None:
            net.grid("N1", gn, wb, rn, r_row, r_col)
            net.grid("N2", gn, sn, vb, r_row, r_col)
    i_in = float(c.g0) * _f(c.b)
    for k, i in enumerate(i_in):
        net.isrc.append((r[k] if c.mode == "left" else s[k], i))
    for j in range(n2):
        net.r(sn[j], wb[j], g_l[j])  # ridge: from the inverted output (or onto the - input)
    if diff:
        bmat = gp if c.mode == "left" else gp.T
        nmat = gn if c.mode == "left" else gn.T
        if v_inv is None:
            nmat = np.zeros_like(nmat)
        pos1, neg1 = bmat.sum(1) + g_f, nmat.sum(1)
        pos2, neg2 = bmat.sum(0), nmat.sum(0) + g_l
        d1, d2 = np.maximum(pos1, neg1), np.maximum(pos2, neg2)
        for i in range(n1):
            net.r(r[i], "0", d1[i] - pos1[i])
            net.r(rn[i], "0", d1[i] - neg1[i])
        for j in range(n2):
            net.r(s[j], "0", d2[j] - pos2[j])
            net.r(sn[j], "0", d2[j] - neg2[j])
    return net


def _eig_match(lam_a, lam_b):
    """max over both sets of the distance to the nearest eigenvalue of the other set (1/s)."""
    d = np.abs(lam_a[:, None] - lam_b[None, :])
    return max(d.min(axis=1).max(), d.min(axis=0).max())


def _reference(c):
    """(eigenvalues, output steady state) of the NumPy network model."""
    jac, cvec, _ = _network(c).ode()
    y = np.linalg.solve(jac, -cvec)
    n = np.shape(c.a)[1]  # the outputs: w (left, q of them) or v (right, m of them)
    return np.linalg.eigvals(jac), y[:n]


def _build(kind, mode, inverters, x=X8, **kw):
    if mode == "left":
        a, b = x, (Y8 if x is X8 else Y6)
    else:
        a, b = x.T, S4 if x is X8 else Y6[:3]
    if kind == "ginv":
        return GINV.from_matrix(a, b, mode=mode, inverters=inverters, **kw)
    return Ridge.from_matrix(a, b, LAM, mode=mode, inverters=inverters, **kw)


# ---------------------------------------------------------------------------------------
# the reduced model against the full network

# Every inverter option, both modes, both circuits; two-pole main op-amps with two-pole or
# single-pole inverters; equal and unequal row/column wires (r_w_col = 0 included).
NETWORK_CASES = [
    ("ginv", "left", "opamp", dict(r_w=10.0, f_p2=3e8)),
    ("ridge", "right", "differential", dict(r_w=4.0, r_w_col=10.0, f_p2=4e8)),
    ("ridge", "left", "ideal", dict(r_w=7.0, r_w_col=0.0, f_p2=5e8)),
    ("ginv", "right", "opamp", dict(r_w=10.0, f_p2=3e8, inverter_f_p2=np.inf)),
]


@eqx.filter_jit
def _model(c):
    """(J, y*, dy/dt at y*, outputs of y*): one compile per circuit structure."""
    dyn = c.dynamics()
    y = dyn.steady_state()
    return dyn.jacobian(), y, dyn.vector_field(y), dyn.outputs(y)


@pytest.mark.parametrize("kind, mode, inverters, kw", NETWORK_CASES)
def test_matches_full_network(kind, mode, inverters, kw):
    """Eigenvalues and steady state of `dynamics()` equal those of the unreduced network
    (NumPy nodal solve over every wire node) with the generic one/two-pole op-amp model."""
    c = _build(kind, mode, inverters, **kw)
    jac, y, dy, v_ss = (np.asarray(x) for x in _model(c))
    lam_ref, v_ref = _reference(c)
    lam = np.linalg.eigvals(jac)
    assert lam.shape == lam_ref.shape
    # eig of two differently built 24..48-state matrices with |lambda| up to ~4e9 1/s:
    # measured <= 1.3e-13 relative; 1e-9 leaves room for the eig of the non-normal J.
    assert _eig_match(lam, lam_ref) < 1e-9 * np.max(np.abs(lam_ref))
    # Steady state: linear solves of two different networks, measured <= 2.3e-13 relative.
    np.testing.assert_allclose(v_ss, v_ref, rtol=0, atol=1e-10 * np.max(np.abs(v_ref)))
    # ... and an equilibrium of the whole state (first-pole states included): J y* + c = 0
    # (measured <= 8e-17 of |J| |y*|).
    assert np.max(np.abs(dy)) < 1e-12 * np.max(np.abs(jac)) * np.max(np.abs(y))
    # The wires matter at this size: they move the answer by 0.2 .. 1.7 % of full scale.
    ideal = _build(kind, mode, inverters, **{k: v for k, v in kw.items() if "r_w" not in k})
    v_ideal = _reference(ideal)[1]
    assert np.max(np.abs(v_ideal - v_ss)) > 1e-4 * np.max(np.abs(v_ref))


def test_zero_wire_resistance_is_the_ideal_crossbar():
    """r_w = r_w_col = 0 through the wired reduction gives the ideal circuit's ODE."""
    kind, mode, inverters, kw = NETWORK_CASES[0]
    wired = _model(_build(kind, mode, inverters, **{**kw, "r_w": 0.0}))
    ideal = _model(_build(kind, mode, inverters, f_p2=kw["f_p2"]))
    for a, b in zip(wired[:2] + wired[3:], ideal[:2] + ideal[3:]):  # J, y*, v*
        # The same expressions up to an identity solve: measured <= 1.7e-15 relative.
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=0)


# ---------------------------------------------------------------------------------------
# the second pole: ringing and instability, predicted by the eigenvalues, seen in the transient

T_RING = 2.8e-7  # s: ~15 decay times of the ringing case, ~10 growth times of the unstable one
N_SAVE = 4097
N_EXPM = 256


def _ringing(f_p2):
    """X 6 x 3, left, ideal inverters (the least margin), 10-ohm wires."""
    # float64 scalars (not weakly typed Python floats): the same leaves as `_measures`'s.
    return _build("ginv", "left", "ideal", x=X6, f_p2=np.float64(f_p2), r_w=np.float64(10.0))


@eqx.filter_jit
def _ode(c):
    # Tight tolerances: the waveform is compared with the exact propagator below.
    ctrl = dfx.PIDController(rtol=jnp.asarray(1e-9), atol=jnp.asarray(1e-12))
    return amcdyn.simulate(
        c,
        t_max=T_RING,
        n_save=N_SAVE,
        stability=False,
        solver=dfx.Tsit5(),
        stepsize_controller=ctrl,
        max_steps=100_000,
        throw=False,
    )


def _expm(c):
    # One compile shared by every test below; its 257 grid points are every 16th of _ode's.
    return amcdyn.simulate_expm(c, t_max=T_RING, n_steps=N_EXPM, save=True, throw=False)


def _peak_rate(ts, vs, v_ss, t_from):
    """Growth rate (1/s) of the envelope of the output that deviates most: a least-squares
    line through log|v - v*| at its local maxima after `t_from` (the peaks of a damped or
    growing sinusoid lie exactly on exp(sigma t))."""
    dev = np.abs(vs - v_ss)
    k = int(np.argmax(dev[-1]))
    d = dev[:, k]
    peaks = np.flatnonzero((d[1:-1] > d[:-2]) & (d[1:-1] >= d[2:])) + 1
    peaks = peaks[ts[peaks] > t_from]
    assert len(peaks) >= 8
    return np.polyfit(ts[peaks], np.log(d[peaks]), 1)[0]


@pytest.mark.parametrize("f_p2, verdict", [(3e8, "rings"), (1e8, "unstable")])
def test_second_pole_rings_or_destabilizes(f_p2, verdict):
    """With ideal inverters the default G_f leaves little phase margin: a second pole at 3x
    the GBW makes the loop ring, at 1x it oscillates with a growing amplitude. The eigenvalues
    (checked against the full network) predict it, `simulate_analytic` reports it, and the ODE
    transient (run with `stability=False`, so its verdict comes from the waveform) shows it
    with the predicted rate."""
    c = _ringing(f_p2)
    lam_ref, _ = _reference(c)
    ana = _expm(c)  # its stability verdict comes from the eigenvalues of dynamics()
    lam = np.asarray(ana.eigenvalues)
    assert _eig_match(lam, lam_ref) < 1e-9 * np.max(np.abs(lam_ref))
    sigma = lam_ref.real.max()
    slow = lam_ref[np.argmax(lam_ref.real)]
    single = _reference(_build("ginv", "left", "ideal", x=X6, r_w=10.0))[0]
    print(
        f"f_p2 = {f_p2:.0e}: slowest {slow:.3e} (single pole {single[np.argmax(single.real)]:.3e})"
    )
    assert abs(slow.imag) > abs(slow.real)  # an underdamped pair (zeta < 0.7)
    sol = _ode(c)
    ts, vs = np.asarray(sol.ts), np.asarray(sol.vs)
    rate = _peak_rate(ts, vs, np.asarray(sol.v_steady), t_from=T_RING / 3)
    # Envelope fit vs the eigenvalue: measured within 1e-4 (peaks sampled every ~0.03 rad).
    assert rate == pytest.approx(sigma, rel=0.01)
    if verdict == "rings":
        assert sigma < 0 and sigma > 0.6 * single.real.max()  # rings ~2x longer than 1 pole
        assert bool(ana.stable) and bool(ana.oscillatory) and ana.status == "settled"
        assert sol.status == "settled"
    else:
        assert sigma > 0
        assert not bool(ana.stable) and ana.status == "unstable"
        assert sol.status == "unstable"  # the deviation passed 1000 full scales
        assert np.max(np.abs(vs[-1])) > 1e3 * np.max(np.abs(np.asarray(sol.v_steady)))


def test_ode_matches_expm_wired_two_pole():
    """The diffrax path and the exact propagator agree on the ringing wired two-pole loop."""
    c = _ringing(3e8)
    ode = _ode(c)
    ex = _expm(c)
    assert ode.status == ex.status == "settled"
    k = (N_SAVE - 1) // N_EXPM
    np.testing.assert_allclose(np.asarray(ode.ts)[::k], np.asarray(ex.ts), rtol=1e-12)
    # rtol 1e-9 controller: measured 5e-10 of full scale, settling times 7e-7 apart.
    assert max_err_fs(np.asarray(ode.vs)[::k], ex.vs, ex.v_steady) < 1e-6
    assert float(ode.settling_time) == pytest.approx(float(ex.settling_time), rel=1e-4)
    np.testing.assert_allclose(np.asarray(ode.v_steady), np.asarray(ex.v_steady), rtol=1e-12)


# ---------------------------------------------------------------------------------------
# ngspice: every wire resistor and the two-pole macromodel in the netlist

# Tolerances from the brief: waveforms 1e-4 of full scale, settling time 0.5 %. ngspice at
# t_stop/8000 maximal step (the loop rings at up to ~0.6 wT).
SPICE_POINTS = 8000
SPICE_WAVE_TOL = 1e-4
SETTLE_REL_TOL = 5e-3


def _spice_vs_exact(c, ngspice, t_stop=None):
    sp = _ngspice.simulate_spice(c, ngspice=ngspice, n_points=SPICE_POINTS, t_stop=t_stop)
    jac, y_ss = (np.asarray(x) for x in _model(c)[:2])  # compiled above for these circuits
    cvec = -jac @ y_ss  # y' = J y + c
    n = np.shape(c.a)[1]
    exact, v_ss = exact_transient(jac, cvec, sp.ts, n)
    err = max_err_fs(sp.vs, exact, v_ss)
    # The settling time of amcdyn's ODE, from its exact transient on ngspice's 8000 points.
    t_exact = _ngspice.settling_time_from_samples(sp.ts, exact, v_ss, 1e-3)
    rel = t_exact / sp.settling_time - 1
    print(f"settling {sp.settling_time * 1e9:.3f} ns (exact transient {rel:+.1e})")
    assert abs(rel) < SETTLE_REL_TOL
    print(
        f"{type(c).__name__} {c.mode} {c.inverters}: ngspice vs exact err/FS {err:.1e}, "
        f"{sp.wall_time_s:.1f} s, {sp.netlist.count(chr(10))} lines"
    )
    assert err < SPICE_WAVE_TOL
    return sp, v_ss


def test_ngspice_ginv_6x3_two_pole_wires(ngspice):
    """X 6 x 3, left, 10-ohm wires, two-pole op-amps (the ringing case): waveforms and settling
    time against the ODE path's exact propagator run."""
    c = _ringing(3e8)
    sp, v_ss = _spice_vs_exact(c, ngspice, t_stop=T_RING)
    ex = _expm(c)
    sp_at = np.stack([np.interp(np.asarray(ex.ts), sp.ts, sp.vs[:, i]) for i in range(3)], 1)
    assert max_err_fs(ex.vs, sp_at, v_ss) < SPICE_WAVE_TOL
    rel = float(ex.settling_time) / sp.settling_time - 1
    print(f"settling {sp.settling_time * 1e9:.3f} ns (amcdyn {rel:+.1e})")
    assert abs(rel) < SETTLE_REL_TOL
    # 3 x 6 cells x 2 arrays: row and column wire segments each; the second-pole RC stages.
    assert sp.netlist.count("RP1wr") == sp.netlist.count("RP2wc") == 18
    assert "C2t0" in sp.netlist and "C2a0" in sp.netlist and "Ewb0 wb0 0 w0 0 -1" in sp.netlist


def test_ngspice_ridge_8x4_right_differential_wires(ngspice):
    """Ridge, right inverse of the 4 x 8 X^T, differential inputs, unequal row/column wires
    (4 and 10 ohm), two-pole op-amps: waveforms and settling time."""
    kind, mode, inverters, kw = NETWORK_CASES[1]
    c = _build(kind, mode, inverters, **kw)
    sp, _ = _spice_vs_exact(c, ngspice)
    assert "Rbal" in sp.netlist and "RN2wc" in sp.netlist and "Rlam0" in sp.netlist


def test_ngspice_two_pole_inverters(ngspice):
    """Left GINV 8 x 4 with two-pole op-amp inverters and 10-ohm wires against the exact
    transient of amcdyn's ODE (no compile)."""
    kind, mode, inverters, kw = NETWORK_CASES[0]
    sp, _ = _spice_vs_exact(_build(kind, mode, inverters, **kw), ngspice)
    assert "C2iw0" in sp.netlist and "C2iv0" in sp.netlist


# ---------------------------------------------------------------------------------------
# jit, vmap, grad (through the exact propagator)

P0 = np.array([10.0, 3e8])  # (r_w in ohm, f_p2 in Hz)


def _at(p):
    """The ringing circuit with r_w = r_w_col = p[0] (ohm) and f_p2 = p[1] (Hz)."""
    return eqx.tree_at(
        lambda c: (c.r_w, c.r_w_col, c.amp.f_p2, c.tia.f_p2),
        _ringing(3e8),
        (p[0], p[0], p[1], p[1]),
    )


def _measures(p):
    s = _expm(_at(p))  # the compile of the tests above
    return jnp.stack([s.rel_error, s.settle_integral / T_RING])


def test_jit_vmap_grad_wires_and_second_pole():
    """jit(vmap) over (r_w, f_p2) of the reduced model equals the unbatched one; d/d r_w and
    d/d f_p2 (reverse mode, through `simulate_expm`) of the wire error and of the settling
    integral equal central differences."""
    ps = np.array([P0, [0.0, 3e8], [20.0, 6e8]])
    batched = jax.jit(jax.vmap(lambda p: _model(_at(p))))(jnp.asarray(ps))
    for k in range(3):
        one = _model(_at(jnp.asarray(ps[k])))
        # J, y*, v* (not the rounding-level residual J y* + c, which differs between the
        # batched and the single arithmetic): equal to rounding.
        for a, b in zip(batched[:2] + batched[3:], one[:2] + one[3:]):
            np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b), rtol=1e-12, atol=0)
    # The wires move the answer, more so at 20 ohm than at 10 (0 ohm: the ideal crossbar).
    v = np.asarray(batched[3])
    assert 0 < np.max(np.abs(v[0] - v[1])) < np.max(np.abs(v[2] - v[1]))
    both = value_and_jacrev(_measures)  # one compile: values (for FD) and the Jacobian
    h = 1e-5 * P0  # relative step 1e-5
    val, jac = (np.asarray(x) for x in both(jnp.asarray(P0)))
    for i in range(2):
        e = np.where(np.arange(2) == i, h, 0.0)
        fd = (np.asarray(both(P0 + e)[0]) - np.asarray(both(P0 - e)[0])) / (2 * h[i])
        for q in range(2):
            # Central differences: truncation ~h^2 ~1e-10, rounding ~1e-16/h ~1e-11 of the
            # values; measured agreement <= 1e-6 relative (8e-7 on the near-zero
            # d rel_error / d f_p2: the steady state does not depend on f_p2).
            np.testing.assert_allclose(
                jac[q, i] * P0[i],
                fd[q] * P0[i],
                rtol=1e-5,
                atol=1e-7 * abs(val[q]),
                err_msg=f"d measure[{q}] / d p[{i}]",
            )
    assert abs(jac[0, 0]) > 0 and abs(jac[1, 0]) > 0 and abs(jac[1, 1]) > 0


@pytest.mark.slow  # a compile of its own; the batched paths are covered by the vmap test
def test_monte_carlo_wired_two_pole():
    """Monte Carlo (independent programming of both arrays) of the wired two-pole Ridge."""
    c = _build("ridge", "left", "ideal", x=X6, r_w=10.0, f_p2=1e9)
    res = amcdyn.monte_carlo_circuit(
        c, jax.random.key(0), 4, programming=amcdyn.Variation(0.02), progress=False
    )
    err = res["rel_error"]
    assert err.shape == (4,) and np.all(np.isfinite(err))
    assert np.all(res["result"] == 0)  # settled
    assert np.ptp(err) > 0  # the samples differ


# ---------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"r_w": -1.0}, "r_w"),
        ({"r_w": np.nan}, "r_w"),
        ({"r_w": np.ones(2)}, "r_w"),
        ({"r_w": 1.0, "r_w_col": -0.5}, "r_w_col"),
        ({"r_w_col": np.inf}, "r_w_col"),
        ({"f_p2": 0.0}, "f_p2"),
        ({"f_p2": -3e8}, "f_p2"),
        ({"f_p2": np.nan}, "f_p2"),
        ({"f_p2": np.full(3, 3e8)}, "f_p2"),
        ({"inverter_f_p2": 0.0}, "inverter_f_p2"),
    ],
)
@pytest.mark.parametrize("kind", ["ginv", "ridge"])
def test_bad_input_names_the_argument(kind, kw, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        _build(kind, "left", "opamp", x=X6, **kw)


def test_bad_fields_name_the_argument():
    c = _ringing(3e8)
    fields = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
    with pytest.raises(ValueError, match="`r_w_col`"):
        GINV(**{**fields, "r_w_col": jnp.asarray(-1.0)})
    with pytest.raises(ValueError, match="`r_w`"):
        GINV(**{**fields, "r_w_col": None})


# ---------------------------------------------------------------------------------------
# the CLI builds them (the end-to-end runs are the generic CLI tests' business)


@pytest.mark.parametrize("command, circuit", [("simulate", "ginv"), ("mc", "ridge")])
def test_cli_wire_r_and_f_p2(command, circuit, tmp_path):
    from amcdyn import _cli

    np.save(tmp_path / "x.npy", X6)
    argv = [command, circuit, "--matrix", str(tmp_path / "x.npy"), "--wire-r", "10"]
    argv += ["--f-p2", "1e9"] + (["--lam", "0.3"] if circuit == "ridge" else [])
    args = _cli.build_parser().parse_args(argv)
    c, _, _, nonideal, _, _ = _cli._build(args, mc=command == "mc")
    assert isinstance(c, GINV if circuit == "ginv" else Ridge)
    assert float(c.r_w) == float(c.r_w_col) == 10.0 and nonideal["wire_r_ohm"] == 10.0
    assert float(c.amp.f_p2) == float(c.tia.f_p2) == float(c.inverter.f_p2) == 1e9
    # Offsets are still not modelled in the loop: refused, naming the flag.
    args = _cli.build_parser().parse_args(argv + ["--offset-v", "1e-3"])
    with pytest.raises(_cli.UsageError, match="not supported"):
        _cli._build(args, mc=command == "mc")
