"""ngspice netlist writers and runner for the reference circuits (pure NumPy, no JAX).

Two circuits are written as SPICE netlists, so that ngspice can serve as an independent
ground truth for the JAX simulator:

* :func:`inv_netlist`: the INV (matrix inversion) circuit, n op-amps whose inverting
  inputs are the crossbar row nodes ``n{i}`` and whose outputs ``v{i}`` drive the
  crossbar columns; negative conductances go through inverters with outputs ``u{j}``.
* :func:`mvm_netlist`: the MVM (matrix-vector multiply) circuit, m transimpedance
  amplifiers with row nodes ``r{i}`` and outputs ``y{i}``, with column splitting of the
  input voltages into ``xp{j} = +v0*x[j]`` and ``xn{j} = -v0*x[j]``.

Every op-amp is the exact single-pole macromodel, written inline per instance so that
each amplifier has its own open-loop gain and gain-bandwidth product::

    G{k} 0 p{k} inp inm gm          gm*(v+ - v-) injected into the internal node p{k}
    R{k} p{k} 0 a0/gm               omitted when a0 = inf (ideal integrator)
    C{k} p{k} 0 gm/(2*pi*f_gbw)
    E{k} out 0 p{k} 0 1             unity output buffer

which gives dVout/dt = -w0*Vout + wT*(v+ - v-) with wT = 2*pi*f_gbw, w0 = wT/a0.

Optional non-idealities of the same macromodel (emitted only when present):

- an input offset v_os: a DC source ``Vos{k} os_{k} inp DC v_os`` in series with the
  non-inverting input, so that the VCCS sees v(inp) + v_os - v(inm);
- a second pole f_p2: the first-pole node drives a unity buffer, an RC low-pass
  (R = 1 kOhm, C = 1/(2*pi*f_p2*R)) and the output buffer::

      Eb{k} b_{k} 0 p{k} 0 1
      R2{k} b_{k} q_{k} 1000
      C2{k} q_{k} 0 1/(2*pi*f_p2*1000)
      E{k}  out 0 q_{k} 0 1

  which gives dx/dt = -w0*x + wT*(v+ - v-), dVout/dt = w_p2*(x - Vout).

Both writers take a wire resistance per row-line and column-line segment (``r_row``,
``r_col``); when either is positive every crossbar is written as its full resistive grid (see
`amcdyn._wires` for the geometry and `_crossbar_lines` for the node names).

The inputs are DC sources that are on from t = 0 and the transient runs with ``uic`` so
that every capacitor (hence every op-amp output) starts at 0 V: a step response.

:func:`run_netlist` appends a ``.control`` block (``run`` / ``wrdata`` / ``quit``), runs
``ngspice -b`` in a temporary directory and parses the result. ngspice does not store the
t = 0 point of a ``uic`` transient, so a row of zeros at t = 0 is prepended (exact for the
op-amp output nodes, which are the nodes this module is meant to read).

Units are SI throughout: conductances in S, currents in A, voltages in V, times in s and
frequencies in Hz.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence

import numpy as np


__all__ = [
    "GM",
    "NgspiceError",
    "inv_netlist",
    "inv_output_nodes",
    "mvm_netlist",
    "mvm_output_nodes",
    "ngspice_available",
    "run_netlist",
]

#: Transconductance of the op-amp macromodel's input stage (S). Internal to the macromodel:
#: the dynamics depend only on a0 and f_gbw.
GM = 1e-3

_TIGHT_OPTIONS = ".options reltol=1e-6 abstol=1e-15 vntol=1e-9 chgtol=1e-20"
_OUTFILE = "amcdyn_out.txt"
_NETFILE = "amcdyn.cir"
_NODE_RE = re.compile(r"^[A-Za-z0-9_]+$")


class NgspiceError(RuntimeError):
    """ngspice failed, timed out, or did not produce the expected output."""


# ---------------------------------------------------------------------------------------
# formatting and validation helpers
# ---------------------------------------------------------------------------------------


def _num(x: float) -> str:
    """Full-precision (round-trip) decimal for a finite float."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"cannot write non-finite number {x!r} into a netlist")
    return repr(x)


def _matrix(name: str, a, shape: tuple[int, int] | None = None) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0 (conductances)")
    with np.errstate(over="ignore", divide="ignore"):
        r = 1.0 / np.where(arr > 0, arr, 1.0)
    if not np.all(np.isfinite(r)):
        raise ValueError(f"{name} has entries too small to invert into a resistance")
    return arr


def _vector(name: str, a, n: int) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _per_amp(
    name: str, a, n: int, *, allow_inf: bool = False, positive: bool = True
) -> np.ndarray:
    """A scalar or shape-(n,) parameter, broadcast to shape (n,)."""
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full((n,), float(arr))
    elif arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got {arr.shape}")
    if np.any(np.isnan(arr)) or (not allow_inf and np.any(np.isinf(arr))):
        raise ValueError(f"{name} must be finite" + (" or inf" if allow_inf else ""))
    if positive and np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0")
    return arr


def _time(t_stop, t_step) -> tuple[float, float]:
    t_stop = float(t_stop)
    t_step = float(t_step)
    if not (math.isfinite(t_stop) and t_stop > 0):
        raise ValueError(f"t_stop must be finite and > 0, got {t_stop!r}")
    if not (math.isfinite(t_step) and 0 < t_step <= t_stop):
        raise ValueError(f"t_step must be finite with 0 < t_step <= t_stop, got {t_step!r}")
    return t_stop, t_step


def _title(title: str) -> str:
    t = " ".join(str(title).split())  # the title must be one line
    return t or "amcdyn"


_R2 = 1e3  # resistor of the second-pole RC stage (Ohm); internal, only R2*C2 matters


def _opamp(
    tag: str,
    inp: str,
    inm: str,
    out: str,
    a0: float,
    f_gbw: float,
    f_p2: float = math.inf,
    v_os: float = 0.0,
) -> list[str]:
    """Inline op-amp: dx/dt = -w0 x + wT (v(inp) + v_os - v(inm)); Vout = x (single pole,
    f_p2 = inf) or dVout/dt = w_p2 (x - Vout)."""
    p = f"p_{tag}"
    header = f"* op-amp {tag}: a0={a0!r} f_gbw={f_gbw!r}"
    if math.isfinite(f_p2):
        header += f" f_p2={f_p2!r}"
    if v_os != 0.0:
        header += f" v_os={v_os!r}"
    lines = [header]
    if v_os != 0.0:
        lines.append(f"Vos{tag} os_{tag} {inp} DC {_num(v_os)}")
        inp = f"os_{tag}"
    lines.append(f"G{tag} 0 {p} {inp} {inm} {_num(GM)}")
    if math.isfinite(a0):
        lines.append(f"R{tag} {p} 0 {_num(a0 / GM)}")
    lines.append(f"C{tag} {p} 0 {_num(GM / (2.0 * math.pi * f_gbw))}")
    if math.isfinite(f_p2):
        lines.append(f"Eb{tag} b_{tag} 0 {p} 0 1")
        lines.append(f"R2{tag} b_{tag} q_{tag} {_num(_R2)}")
        lines.append(f"C2{tag} q_{tag} 0 {_num(1.0 / (2.0 * math.pi * f_p2 * _R2))}")
        p = f"q_{tag}"
    lines.append(f"E{tag} {out} 0 {p} 0 1")
    return lines


def _amp_extras(n: int, f_p2, v_os, prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Per-amplifier second poles (inf: none) and offsets, shape (n,)."""
    if f_p2 is None:
        fp = np.full((n,), math.inf)
    else:
        fp = _per_amp(prefix + "f_p2", f_p2, n, allow_inf=True)
    vo = np.zeros((n,)) if v_os is None else _per_amp(prefix + "v_os", v_os, n, positive=False)
    return fp, vo


def _wire_resistances(r_row, r_col) -> tuple[float, float]:
    r_row = float(r_row)
    r_col = r_row if r_col is None else float(r_col)
    for name, r in (("r_row", r_row), ("r_col", r_col)):
        if not (math.isfinite(r) and r >= 0):
            raise ValueError(f"{name} must be a finite wire resistance >= 0 (Ohm), got {r!r}")
    return r_row, r_col


def _crossbar_lines(tag: str, g: np.ndarray, row_term, col_term, r_row: float, r_col: float):
    """Netlist lines of one crossbar with all its wire resistors.

    Row line i: ``row_term[i] -- {tag}r{i}_0 -- {tag}r{i}_1 ...``; column line j:
    ``col_term[j] -- {tag}c0_{j} -- {tag}c1_{j} ...``; device (i, j) joins
    ``{tag}r{i}_{j}`` to ``{tag}c{i}_{j}``. A zero wire resistance shorts the segment
    (the nodes are merged by naming, since SPICE forbids a zero-ohm resistor).
    """
    m, n = g.shape

    def rnode(i, k):
        return row_term[i] if r_row == 0 else f"{tag}r{i}_{k}"

    def cnode(i, j):
        return col_term[j] if r_col == 0 else f"{tag}c{i}_{j}"

    lines = [f"* crossbar {tag}: row wires {r_row!r} ohm, column wires {r_col!r} ohm"]
    if r_row > 0:
        for i in range(m):
            prev = row_term[i]
            for k in range(n):
                lines.append(f"R{tag}wr{i}_{k} {prev} {rnode(i, k)} {_num(r_row)}")
                prev = rnode(i, k)
    if r_col > 0:
        for j in range(n):
            prev = col_term[j]
            for i in range(m):
                lines.append(f"R{tag}wc{i}_{j} {prev} {cnode(i, j)} {_num(r_col)}")
                prev = cnode(i, j)
    for i, j in zip(*np.nonzero(g > 0)):
        lines.append(f"R{tag}d{i}_{j} {rnode(i, j)} {cnode(i, j)} {_num(1.0 / g[i, j])}")
    return lines


def _tran(t_stop: float, t_step: float, tight: bool) -> list[str]:
    if tight:
        return [_TIGHT_OPTIONS, f".tran {_num(t_step)} {_num(t_stop)} 0 {_num(t_step)} uic"]
    return [f".tran {_num(t_step)} {_num(t_stop)} uic"]


# ---------------------------------------------------------------------------------------
# netlist writers
# ---------------------------------------------------------------------------------------


def inv_output_nodes(n: int, inverters: bool = False) -> list[str]:
    """Output node names of an n x n INV netlist: ``v0..v{n-1}`` (then ``u0..`` if asked).

    The inverter outputs ``u{j}`` exist only when ``g_neg`` has a nonzero entry.
    """
    nodes = [f"v{i}" for i in range(int(n))]
    if inverters:
        nodes += [f"u{j}" for j in range(int(n))]
    return nodes


def mvm_output_nodes(m: int) -> list[str]:
    """Output node names of an MVM netlist with m rows: ``y0..y{m-1}``."""
    return [f"y{i}" for i in range(int(m))]


def inv_netlist(
    g_pos,
    g_neg,
    i_in,
    *,
    a0,
    f_gbw,
    inverter_a0=None,
    inverter_f_gbw=None,
    g_inv=1e-4,
    g_in=None,
    f_p2=None,
    v_os=None,
    inverter_f_p2=None,
    inverter_v_os=None,
    r_row=0.0,
    r_col=None,
    c_node=None,
    t_stop,
    t_step,
    tight=True,
    title="amcdyn INV",
) -> str:
    """ngspice netlist of the n x n INV circuit (step response from all-zero states).

    Op-amp i has its + input grounded, its - input on row node ``n{i}`` and output ``v{i}``.
    A resistor 1/g_pos[i, j] joins ``n{i}`` to ``v{j}`` and 1/g_neg[i, j] joins ``n{i}`` to
    the inverter output ``u{j}`` (only for positive entries). When ``g_neg`` has any
    positive entry, n inverters are built: ideal (``u{j} = -v{j}``, VCVS of gain -1) when
    ``inverter_f_gbw`` is None, else single-pole op-amps (``inverter_a0``, defaulting to
    ``a0``, and ``inverter_f_gbw``) with 1/g_inv from ``v{j}`` and from ``u{j}`` to their
    - input ``m{j}``.

    Input: with ``g_in`` None, ``i_in[i]`` is a DC current (A) injected into ``n{i}``;
    otherwise ``i_in[i]`` is a DC voltage (V) on node ``b{i}``, joined to ``n{i}`` by
    1/g_in. ``g_neg`` may be None (no negative part). ``a0`` may be inf (ideal integrator).
    ``a0``, ``f_gbw``, ``inverter_a0``, ``inverter_f_gbw``, ``g_inv`` and ``g_in`` are
    scalars or shape-(n,) arrays (one value per amplifier/row).

    ``f_p2`` (Hz; None or inf: single pole) and ``v_os`` (V; None: 0) add a second pole and an
    input offset to the main op-amps, ``inverter_f_p2``/``inverter_v_os`` to the real
    inverters (default: the main amplifiers' values). ``r_row``/``r_col`` (Ohm, ``r_col``
    defaulting to ``r_row``): when either is > 0 both crossbars are full resistive grids
    with row lines from ``n{i}`` and column lines from ``v{j}`` (G+) or ``u{j}`` (G-).
    """
    gp = _matrix("g_pos", g_pos)
    n = gp.shape[0]
    if gp.shape != (n, n):
        raise ValueError(f"g_pos must be square, got shape {gp.shape}")
    if n == 0:
        raise ValueError("g_pos must not be empty")
    gn = np.zeros_like(gp) if g_neg is None else _matrix("g_neg", g_neg, (n, n))
    iv = _vector("i_in", i_in, n)
    a0v = _per_amp("a0", a0, n, allow_inf=True)
    fv = _per_amp("f_gbw", f_gbw, n)
    t_stop, t_step = _time(t_stop, t_step)
    has_neg = bool(np.any(gn > 0))
    real_inv = inverter_f_gbw is not None
    if real_inv:
        ia0v = _per_amp("inverter_a0", a0 if inverter_a0 is None else inverter_a0, n,
                        allow_inf=True)
        ifv = _per_amp("inverter_f_gbw", inverter_f_gbw, n)
        ginv = _per_amp("g_inv", g_inv, n)
        ifp, ivo = _amp_extras(
            n,
            f_p2 if inverter_f_p2 is None else inverter_f_p2,
            v_os if inverter_v_os is None else inverter_v_os,
            "inverter_",
        )
    fp, vo = _amp_extras(n, f_p2, v_os)
    r_row, r_col = _wire_resistances(r_row, r_col)
    wires = r_row > 0 or r_col > 0
    if g_in is None:
        s = gp.sum(axis=1) + gn.sum(axis=1)
        empty = np.flatnonzero(s <= 0)
        if empty.size:
            raise ValueError(
                f"rows {empty.tolist()} of g_pos + g_neg have no conductance: with a "
                "current input the summing node would float"
            )
    else:
        ginv_in = _per_amp("g_in", g_in, n)

    lines = [_title(title), f"* INV n={n} generated by amcdyn._spice"]
    lines.append("* main op-amps: + grounded, - = n{i}, out = v{i}")
    for i in range(n):
        lines += _opamp(
            f"a{i}", "0", f"n{i}", f"v{i}", float(a0v[i]), float(fv[i]), fp[i], vo[i]
        )
    lines.append("* inputs")
    for i in range(n):
        if g_in is None:
            lines.append(f"Iin{i} 0 n{i} DC {_num(iv[i])}")
        else:
            lines.append(f"Vb{i} b{i} 0 DC {_num(iv[i])}")
            lines.append(f"Rin{i} b{i} n{i} {_num(1.0 / ginv_in[i])}")
    rows = [f"n{i}" for i in range(n)]
    if wires:
        lines += _crossbar_lines("P", gp, rows, [f"v{j}" for j in range(n)], r_row, r_col)
    else:
        lines.append("* crossbar, positive part: n{i} -- v{j}")
        for i, j in zip(*np.nonzero(gp > 0)):
            lines.append(f"Rp{i}_{j} n{i} v{j} {_num(1.0 / gp[i, j])}")
    if has_neg:
        if wires:
            lines += _crossbar_lines("N", gn, rows, [f"u{j}" for j in range(n)], r_row, r_col)
        else:
            lines.append("* crossbar, negative part: n{i} -- u{j}")
            for i, j in zip(*np.nonzero(gn > 0)):
                lines.append(f"Rn{i}_{j} n{i} u{j} {_num(1.0 / gn[i, j])}")
        lines.append("* inverters: u{j} = -v{j}")
        for j in range(n):
            if real_inv:
                lines += _opamp(
                    f"i{j}", "0", f"m{j}", f"u{j}", float(ia0v[j]), float(ifv[j]), ifp[j], ivo[j]
                )
                r = _num(1.0 / ginv[j])
                lines.append(f"Ria{j} v{j} m{j} {r}")
                lines.append(f"Rif{j} u{j} m{j} {r}")
            else:
                lines.append(f"Einv{j} u{j} 0 v{j} 0 -1")
    if c_node is not None:
        cn = _per_amp("c_node", c_node, n)
        lines.append("* summing-node parasitic capacitance")
        for i in range(n):
            lines.append(f"Cn{i} n{i} 0 {_num(cn[i])}")
    lines += _tran(t_stop, t_step, tight)
    lines.append(".end")
    return "\n".join(lines) + "\n"


def mvm_netlist(
    g_pos,
    g_neg,
    x,
    g_f,
    *,
    a0,
    f_gbw,
    v0=1.0,
    f_p2=None,
    v_os=None,
    r_row=0.0,
    r_col=None,
    t_stop,
    t_step,
    tight=True,
    title="amcdyn MVM",
) -> str:
    """ngspice netlist of the m x n MVM circuit with column splitting.

    TIA i has its + input grounded, - input on row node ``r{i}``, output ``y{i}`` and a
    feedback resistor 1/g_f[i] between ``r{i}`` and ``y{i}``. DC sources set
    ``xp{j} = +v0*x[j]`` and ``xn{j} = -v0*x[j]``; resistors 1/g_pos[i, j] join ``r{i}`` to
    ``xp{j}`` and 1/g_neg[i, j] join ``r{i}`` to ``xn{j}`` (positive entries only), so the
    ideal output is y = -(g_pos - g_neg) x v0 / g_f. ``g_neg`` may be None. ``g_f``,
    ``a0`` and ``f_gbw`` are scalars or shape-(m,) arrays; ``a0`` may be inf. ``f_p2`` and
    ``v_os`` add a second pole and an input offset to the TIAs (as in :func:`inv_netlist`);
    with ``r_row``/``r_col`` > 0 the G+ and G- crossbars are full resistive grids with row
    lines from ``r{i}`` and column lines from ``xp{j}`` / ``xn{j}``.
    """
    gp = _matrix("g_pos", g_pos)
    m, n = gp.shape
    if m == 0 or n == 0:
        raise ValueError("g_pos must not be empty")
    gn = np.zeros_like(gp) if g_neg is None else _matrix("g_neg", g_neg, (m, n))
    xv = _vector("x", x, n)
    gf = _per_amp("g_f", g_f, m)
    a0v = _per_amp("a0", a0, m, allow_inf=True)
    fv = _per_amp("f_gbw", f_gbw, m)
    fp, vo = _amp_extras(m, f_p2, v_os)
    r_row, r_col = _wire_resistances(r_row, r_col)
    wires = r_row > 0 or r_col > 0
    v0 = float(v0)
    if not math.isfinite(v0):
        raise ValueError("v0 must be finite")
    t_stop, t_step = _time(t_stop, t_step)

    lines = [_title(title), f"* MVM m={m} n={n} generated by amcdyn._spice"]
    lines.append("* TIAs: + grounded, - = r{i}, out = y{i}")
    for i in range(m):
        lines += _opamp(
            f"t{i}", "0", f"r{i}", f"y{i}", float(a0v[i]), float(fv[i]), fp[i], vo[i]
        )
        lines.append(f"Rf{i} r{i} y{i} {_num(1.0 / gf[i])}")
    lines.append("* column inputs: xp{j} = +v0*x[j], xn{j} = -v0*x[j]")
    for j in range(n):
        lines.append(f"Vxp{j} xp{j} 0 DC {_num(v0 * xv[j])}")
        lines.append(f"Vxn{j} xn{j} 0 DC {_num(-(v0 * xv[j]))}")
    if wires:
        rows = [f"r{i}" for i in range(m)]
        lines += _crossbar_lines("P", gp, rows, [f"xp{j}" for j in range(n)], r_row, r_col)
        if np.any(gn > 0):
            lines += _crossbar_lines("N", gn, rows, [f"xn{j}" for j in range(n)], r_row, r_col)
    else:
        lines.append("* crossbar")
        for i, j in zip(*np.nonzero(gp > 0)):
            lines.append(f"Rp{i}_{j} r{i} xp{j} {_num(1.0 / gp[i, j])}")
        for i, j in zip(*np.nonzero(gn > 0)):
            lines.append(f"Rn{i}_{j} r{i} xn{j} {_num(1.0 / gn[i, j])}")
    lines += _tran(t_stop, t_step, tight)
    lines.append(".end")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# running ngspice
# ---------------------------------------------------------------------------------------


def ngspice_available(ngspice: str = "ngspice") -> bool:
    """Whether the ngspice executable can be found (``shutil.which``)."""
    return shutil.which(ngspice) is not None


def _tail(text: str, n: int = 2000) -> str:
    text = text.strip()
    return text if len(text) <= n else "..." + text[-n:]


def _with_control(netlist: str, nodes: Sequence[str]) -> str:
    if re.search(r"^\s*\.control\b", netlist, flags=re.IGNORECASE | re.MULTILINE):
        raise ValueError("netlist must not contain a .control block: run_netlist adds one")
    lines = netlist.rstrip().splitlines()
    while lines and lines[-1].strip().lower() in ("", ".end"):
        lines.pop()
    vecs = " ".join(f"v({node})" for node in nodes)
    lines += [
        ".control",
        "set numdgt=16",  # wrdata then prints 17 significant digits (default: 9)
        "run",
        f"wrdata {_OUTFILE} {vecs}",
        "quit",
        ".endc",
        ".end",
    ]
    return "\n".join(lines) + "\n"


def _parse_wrdata(path: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    data = np.loadtxt(path, ndmin=2)
    if data.shape[0] == 0:
        raise NgspiceError("ngspice wrote no data rows")
    if data.shape[1] == 2 * k:  # default layout: "t v" pairs, one per vector
        t = data[:, 0]
        y = data[:, 1::2]
    elif data.shape[1] == k + 1:  # `set wr_singlescale` layout: one time column
        t = data[:, 0]
        y = data[:, 1:]
    else:
        raise NgspiceError(
            f"unexpected wrdata layout: {data.shape[1]} columns for {k} vectors"
        )
    return np.ascontiguousarray(t), np.ascontiguousarray(y)


def _tran_stop(netlist: str) -> float | None:
    """t_stop of the first ``.tran`` line, if it is a plain number (else None)."""
    m = re.search(r"^\s*\.tran\s+(\S+)\s+(\S+)", netlist, flags=re.IGNORECASE | re.MULTILINE)
    if m is None:
        return None
    try:
        return float(m.group(2))
    except ValueError:  # SPICE suffixes (1u, 10n, ...) or expressions: not checked
        return None


def run_netlist(
    netlist: str,
    nodes: list[str],
    *,
    ngspice: str = "ngspice",
    timeout: float = 300.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Run a transient netlist in ngspice batch mode and return node voltages.

    ``netlist`` must end (optionally) with ``.end`` and hold no ``.control`` block; a
    ``.control`` block with ``run`` and ``wrdata`` of ``v(node)`` for each of ``nodes``
    is appended. Returns ``(t, Y)`` with ``Y.shape == (len(t), len(nodes))``. ngspice does
    not store t = 0 for a ``uic`` transient, so a t = 0 row of zeros is prepended when the
    first stored time is > 0 (all states start at 0 V).

    Raises :class:`NgspiceError` if ngspice is missing, fails, times out or writes no
    output; ValueError for bad node names.
    """
    nodes = list(nodes)
    if not nodes:
        raise ValueError("nodes must not be empty")
    for node in nodes:
        if not isinstance(node, str) or not _NODE_RE.match(node):
            raise ValueError(f"bad node name {node!r} (letters, digits and _ only)")
    text = _with_control(netlist, nodes)
    with tempfile.TemporaryDirectory(prefix="amcdyn_spice_") as tmp:
        with open(os.path.join(tmp, _NETFILE), "w") as f:
            f.write(text)
        try:
            proc = subprocess.run(
                [ngspice, "-b", _NETFILE],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError as e:
            raise NgspiceError(f"ngspice executable {ngspice!r} not found") from e
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (
                e.stderr or "")
            raise NgspiceError(f"ngspice timed out after {timeout} s\n{_tail(err)}") from e
        log = f"--- stderr ---\n{_tail(proc.stderr)}\n--- stdout ---\n{_tail(proc.stdout)}"
        if proc.returncode != 0:
            raise NgspiceError(f"ngspice exited with status {proc.returncode}\n{log}")
        if "simulation(s) aborted" in proc.stderr:
            raise NgspiceError(f"ngspice simulation aborted\n{log}")
        out = os.path.join(tmp, _OUTFILE)
        if not os.path.exists(out) or os.path.getsize(out) == 0:
            raise NgspiceError(f"ngspice wrote no output file\n{log}")
        try:
            t, y = _parse_wrdata(out, len(nodes))
        except ValueError as e:
            raise NgspiceError(f"cannot parse ngspice output: {e}\n{log}") from e
        except NgspiceError as e:
            raise NgspiceError(f"{e}\n{log}") from e
    t_stop = _tran_stop(text)
    if t_stop is not None and t[-1] < t_stop * (1.0 - 1e-9):
        raise NgspiceError(
            f"transient stopped early at t = {t[-1]!r} < t_stop = {t_stop!r}\n{log}"
        )
    if t[0] > 0:
        t = np.concatenate([[0.0], t])
        y = np.concatenate([np.zeros((1, y.shape[1])), y], axis=0)
    return t, y
