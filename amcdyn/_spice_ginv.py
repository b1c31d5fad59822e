"""ngspice netlist of the GINV / Ridge two-stage loop (pure NumPy; see `amcdyn._ginv`).

Written from the circuit's physical leaves (conductances, currents, op-amp parameters), not
from its `dynamics()`, so that ngspice checks the ODE amcdyn derives. Node names, with
$B$ ($n_1\\times n_2$) the matrix seen by the TIAs ($G$ for `mode="left"`, $G^\\top$ for
`"right"`):

- TIA `i`: inverting input `r{i}`, output `v{i}`, feedback `Rfb{i}` (1/g_f); its
  non-inverting input is ground, or `rp{i}` for `inverters="differential"`.
- second-stage op-amp `j`: non-inverting input `s{j}`, output `w{j}`; inverting input ground,
  or `sm{j}` for `"differential"`.
- array 1: `r{i}`--`w{j}` (1/B+), `r{i}`--`wb{j}` (1/B-; `rp{i}`--`w{j}` if differential);
  array 2: `s{j}`--`v{i}` (1/B+), `s{j}`--`vb{i}` (1/B-; `sm{j}`--`v{i}` if differential).
- Ridge: `s{j}`--`wb{j}` (1/g_lambda; `sm{j}`--`w{j}` if differential).
- inputs: DC current sources into `r{i}` (left) or `s{j}` (right).
- inverters: `wb{j} = -w{j}`, `vb{i} = -v{i}`: single-pole op-amps with input `mw{j}`/`mv{i}`
  and two resistors 1/g_inv, or ideal VCVS (gain -1).
- differential: balance resistors to ground (`Rbal1_{i}`, `Rbal2_{j}`) bring both inputs of
  each op-amp to the same total conductance.
- second poles (`f_p2`): every op-amp is `amcdyn._spice._opamp`, the same one- or two-pole
  macromodel (RC stage and buffer after the first-pole node) as INV's netlist.
- wire resistance (`r_w`, `r_w_col`): each array is written as its full resistive grid by
  `amcdyn._spice._crossbar_lines` (tags `P1`, `N1`, `P2`, `N2`), in its physical orientation
  (the stored `(p, q)` matrix: row lines `r_w`, column lines `r_w_col`, every terminal at its
  line's index-0 end); its summing lines end on the op-amp input nodes above, its driven
  lines on the op-amp outputs. $G_f$, $G_\\lambda$, the balance resistors and the input
  currents sit on the terminals.
"""

from __future__ import annotations

import numpy as np

from . import _spice
from ._circuits import V0
from ._ginv import GINV, Ridge


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _banks(circuit) -> tuple[str, str]:
    """(w bank, v bank): 'opamp', 'ideal', 'differential' or 'none'."""
    kind = circuit.inverters
    if isinstance(circuit, Ridge):
        return kind, (kind if circuit.signed else "none")
    return (kind, kind) if circuit.signed else ("none", "none")


def output_nodes(circuit: GINV | Ridge) -> list[str]:
    """The output nodes, in the order of `circuit.dynamics().outputs`."""
    n1, n2 = _sizes(circuit)
    if circuit.mode == "left":
        return [f"w{j}" for j in range(n2)]
    return [f"v{i}" for i in range(n1)]


def _sizes(circuit) -> tuple[int, int]:
    p, q = np.shape(circuit.a)
    return (p, q) if circuit.mode == "left" else (q, p)


def _balance(name: str, node: str, g: float, total: float) -> list[str]:
    # A conductance to ground that brings `node` to the balanced total; none if already there.
    extra = total - g
    if extra <= 1e-12 * total:
        return []
    return [f"{name} {node} 0 {_spice._num(1.0 / extra)}"]


def _wire_resistances(circuit) -> tuple[float, float]:
    if circuit.r_w is None:
        return 0.0, 0.0
    r_col = circuit.r_w if circuit.r_w_col is None else circuit.r_w_col
    return _spice._wire_resistances(float(_f64(circuit.r_w)), float(_f64(r_col)))


def _wired_arrays(circuit, gp, gn, gp2, gn2, diff, r_row, r_col) -> list[str]:
    """The four arrays as full resistive grids. `gp`, `gn` are array 1 as `(n1, n2)` (TIA
    rows), `gp2`, `gn2` array 2 as `(n1, n2)` (driven by the TIAs); each is written in its
    physical orientation, `(n1, n2)` for the left inverse and transposed for the right."""
    n1, n2 = gp.shape
    r_nodes = [f"r{i}" for i in range(n1)]
    s_nodes = [f"s{j}" for j in range(n2)]
    v_nodes = [f"v{i}" for i in range(n1)]
    w_nodes = [f"w{j}" for j in range(n2)]
    # (tag, array as (n1, n2), n1-side terminals, n2-side terminals)
    arrays = [("P1", gp, r_nodes, w_nodes), ("P2", gp2, v_nodes, s_nodes)]
    if np.any(gn > 0) or np.any(gn2 > 0):
        if diff:
            arrays.append(("N1", gn, [f"rp{i}" for i in range(n1)], w_nodes))
            arrays.append(("N2", gn2, v_nodes, [f"sm{j}" for j in range(n2)]))
        else:
            arrays.append(("N1", gn, r_nodes, [f"wb{j}" for j in range(n2)]))
            arrays.append(("N2", gn2, [f"vb{i}" for i in range(n1)], s_nodes))
    lines = []
    for tag, g, t1, t2 in arrays:
        if circuit.mode == "left":
            lines += _spice._crossbar_lines(tag, g, t1, t2, r_row, r_col)
        else:
            lines += _spice._crossbar_lines(tag, g.T, t2, t1, r_row, r_col)
    return lines


def netlist(circuit: GINV | Ridge, *, t_stop: float, t_step: float, tight: bool = True) -> str:
    """The ngspice netlist of `circuit`'s step response (all op-amp outputs start at 0 V)."""
    n1, n2 = _sizes(circuit)
    gp, gn = _f64(circuit.g_pos), _f64(circuit.g_neg)
    # Array 2: its own devices when programmed separately, else a copy of array 1.
    gp2 = gp if circuit.g_pos_2 is None else _f64(circuit.g_pos_2)
    gn2 = gn if circuit.g_neg_2 is None else _f64(circuit.g_neg_2)
    if circuit.mode == "right":
        gp, gn = gp.T, gn.T  # B = G^T: TIA i reads column i of A
        gp2, gn2 = gp2.T, gn2.T
    w_bank, v_bank = _banks(circuit)
    if v_bank == "none":
        gn = np.zeros_like(gn)
        gn2 = np.zeros_like(gn2)
    gp = _spice._matrix("g_pos", gp)
    gn = _spice._matrix("g_neg", gn)
    gp2 = _spice._matrix("g_pos_2", gp2)
    gn2 = _spice._matrix("g_neg_2", gn2)
    g_f = _spice._per_amp("g_f", circuit.g_f, n1)
    if isinstance(circuit, Ridge):
        g_lam = _spice._per_amp("g_lambda", circuit.g_lambda, n2, positive=False)
    else:
        g_lam = np.zeros(n2)
    i_in = _spice._vector("i_in", _f64(circuit.g0) * _f64(circuit.b) * V0, np.shape(circuit.b)[0])
    tia_a0 = _spice._per_amp("a0", circuit.tia.a0, n1, allow_inf=True)
    tia_f = _spice._per_amp("f_gbw", circuit.tia.f_gbw, n1)
    amp_a0 = _spice._per_amp("a0", circuit.amp.a0, n2, allow_inf=True)
    amp_f = _spice._per_amp("f_gbw", circuit.amp.f_gbw, n2)
    tia_p2 = _spice._amp_extras(n1, circuit.tia.f_p2, None)[0]
    amp_p2 = _spice._amp_extras(n2, circuit.amp.f_p2, None)[0]
    g_inv = float(_f64(circuit.g_inv))
    t_stop, t_step = _spice._time(t_stop, t_step)
    diff = circuit.inverters == "differential"
    num = _spice._num

    lines = [
        _spice._title(
            f"amcdyn {type(circuit).__name__} {circuit.mode} {np.shape(circuit.a)} "
            f"inverters={circuit.inverters}"
        ),
        f"* two-stage loop, {n1} TIAs and {n2} non-inverting op-amps, by amcdyn._spice_ginv",
    ]
    lines.append("* TIAs: - = r{i}, out = v{i}")
    for i in range(n1):
        plus = f"rp{i}" if diff else "0"
        lines += _spice._opamp(
            f"t{i}", plus, f"r{i}", f"v{i}", float(tia_a0[i]), float(tia_f[i]), float(tia_p2[i])
        )
        lines.append(f"Rfb{i} r{i} v{i} {num(1.0 / g_f[i])}")
    lines.append("* second stage: + = s{j}, out = w{j}")
    for j in range(n2):
        minus = f"sm{j}" if diff else "0"
        lines += _spice._opamp(
            f"a{j}", f"s{j}", minus, f"w{j}", float(amp_a0[j]), float(amp_f[j]), float(amp_p2[j])
        )
    lines.append("* inputs")
    node = "r" if circuit.mode == "left" else "s"
    for k, value in enumerate(i_in):
        if value != 0:
            lines.append(f"Iin{k} 0 {node}{k} DC {num(value)}")
    lines.append("* array 1 (TIA side) and array 2 (second-stage side)")
    r_row, r_col = _wire_resistances(circuit)
    if r_row > 0 or r_col > 0:
        lines += _wired_arrays(circuit, gp, gn, gp2, gn2, diff, r_row, r_col)
    else:
        for i, j in zip(*np.nonzero(gp > 0)):
            lines.append(f"R1p{i}_{j} r{i} w{j} {num(1.0 / gp[i, j])}")
        for i, j in zip(*np.nonzero(gp2 > 0)):
            lines.append(f"R2p{i}_{j} s{j} v{i} {num(1.0 / gp2[i, j])}")
        for i, j in zip(*np.nonzero(gn > 0)):
            r = num(1.0 / gn[i, j])
            lines.append(f"R1n{i}_{j} rp{i} w{j} {r}" if diff else f"R1n{i}_{j} r{i} wb{j} {r}")
        for i, j in zip(*np.nonzero(gn2 > 0)):
            r = num(1.0 / gn2[i, j])
            lines.append(f"R2n{i}_{j} sm{j} v{i} {r}" if diff else f"R2n{i}_{j} s{j} vb{i} {r}")
    for j in np.flatnonzero(g_lam > 0):
        r = num(1.0 / g_lam[j])
        lines.append(f"Rlam{j} sm{j} w{j} {r}" if diff else f"Rlam{j} s{j} wb{j} {r}")
    if diff:
        lines.append("* balance conductances: both inputs of each op-amp see the same total")
        for i in range(n1):
            pos, neg = gp[i].sum() + g_f[i], gn[i].sum()
            lines += _balance(f"Rbal1m{i}", f"r{i}", pos, max(pos, neg))
            lines += _balance(f"Rbal1p{i}", f"rp{i}", neg, max(pos, neg))
        for j in range(n2):
            pos, neg = gp2[:, j].sum(), gn2[:, j].sum() + g_lam[j]
            lines += _balance(f"Rbal2p{j}", f"s{j}", pos, max(pos, neg))
            lines += _balance(f"Rbal2m{j}", f"sm{j}", neg, max(pos, neg))
    for bank, inv, n in (("w", w_bank, n2), ("v", v_bank, n1)):
        out = bank
        if inv not in ("opamp", "ideal"):
            continue
        lines.append(f"* inverters: {out}b{{k}} = -{out}{{k}}")
        ia0 = _spice._per_amp("inverter_a0", circuit.inverter.a0, n, allow_inf=True)
        if_ = _spice._per_amp("inverter_f_gbw", circuit.inverter.f_gbw, n)
        ip2 = _spice._amp_extras(n, circuit.inverter.f_p2, None, "inverter_")[0]
        for k in range(n):
            if inv == "ideal":
                lines.append(f"E{out}b{k} {out}b{k} 0 {out}{k} 0 -1")
                continue
            lines += _spice._opamp(
                f"i{bank}{k}",
                "0",
                f"m{bank}{k}",
                f"{out}b{k}",
                float(ia0[k]),
                float(if_[k]),
                float(ip2[k]),
            )
            r = num(1.0 / g_inv)
            lines.append(f"R{bank}i{k} {out}{k} m{bank}{k} {r}")
            lines.append(f"R{bank}f{k} {out}b{k} m{bank}{k} {r}")
    lines += _spice._tran(t_stop, t_step, tight)
    lines.append(".end")
    return "\n".join(lines) + "\n"
