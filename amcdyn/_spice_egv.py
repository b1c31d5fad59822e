"""ngspice netlist of the EGV circuit's linear model (pure NumPy; see `amcdyn._egv`).

The EGV is built with output rails ($\\pm v_\\mathrm{sat}$, the smooth factor
$1 - v^2/v_\\mathrm{sat}^2$ of `amcdyn._egv`), which the linear SPICE op-amp macromodel of
`amcdyn._spice` does not have: the netlist is the circuit **with the rails removed**, i.e. its
small-signal model at rest (`dynamics().jacobian()`), which is exactly amcdyn's EGV while
$|v| \\ll v_\\mathrm{sat}$ (the growth phase). The netlist title says so.

Written from the circuit's physical leaves (conductances, op-amp parameters, the seed
`v_init`), not from its `dynamics()`, so that ngspice checks the ODE amcdyn derives. Nodes:

- TIA `i`: inverting input (row node) `u{i}`, output `y{i}`, feedback `Rl{i}` (1/G_lambda)
  between them; non-inverting input ground (plus its input offset, if any).
- inverters: `vb{j} = -y{j}`, a single-pole op-amp with inverting input `m{j}` and two
  resistors 1/g_inv (`Rvi{j}` from `y{j}`, `Rvf{j}` from `vb{j}`), or an ideal VCVS of gain
  -1 (`Evb{j}`).
- crossbar: `Rp{i}_{j}` joins `u{i}` to `vb{j}` (1/G+), `Rn{i}_{j}` joins `u{i}` to `y{j}`
  (1/G-: $y = -V$ already carries the sign, so $G^-$ needs no inverter).
- balance: `Rb{i}` from `u{i}` to ground (1/G_b) where $G_{b,i} > 0$.

There is no input source: the transient starts from the seed state (`IC=` on the op-amps'
integrator capacitors, TIAs at `v_init`, inverters at `-v_init`, with `uic`) and grows.
"""

from __future__ import annotations

import math

import numpy as np

from . import _spice
from ._egv import EGV


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def output_nodes(circuit: EGV) -> list[str]:
    """The output nodes (the TIA outputs `y{i}`), in the order of `dynamics().outputs`."""
    return [f"y{i}" for i in range(circuit.n)]


def _with_ic(lines: list[str], tag: str, v0: float) -> list[str]:
    """Give the integrator capacitor of op-amp `tag` (single pole: its voltage is the output)
    the initial condition `v0` (V)."""
    prefix = f"C{tag} p_{tag} 0 "
    out, found = [], False
    for line in lines:
        if line.startswith(prefix):
            line = f"{line} IC={_spice._num(v0)}"
            found = True
        out.append(line)
    if not found:  # the macromodel changed: fail loudly rather than start at 0 V
        raise RuntimeError(f"no integrator capacitor for op-amp {tag!r} in the macromodel")
    return out


def _amp(name: str, amp, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a0, f_gbw, v_os) of the single-pole `amp`, each broadcast to shape (n,)."""
    if amp.f_p2 is not None:
        raise ValueError(f"`{name}` must be a single-pole OpAmp for EGV")
    a0 = _spice._per_amp(f"{name}.a0", _f64(amp.a0), n, allow_inf=True)
    f = _spice._per_amp(f"{name}.f_gbw", _f64(amp.f_gbw), n)
    v_os = _spice._per_amp(f"{name}.v_os", _f64(amp.v_os), n, positive=False)
    return a0, f, v_os


def netlist(circuit: EGV, *, t_stop: float, t_step: float, tight: bool = True) -> str:
    """The ngspice netlist of the linear (rails removed) EGV from its seed state.

    **Arguments:**

    - `circuit`: an unbatched [`amcdyn.EGV`][] with concrete leaves.
    - `t_stop`: end of the transient (s); `t_step`: print step and maximal time step (s).
    - `tight`: tight tolerances (`reltol=1e-6`, ...); else ngspice's defaults.

    **Raises:** `ValueError` for a batched circuit or non-finite / negative leaves.
    """
    if not isinstance(circuit, EGV):
        raise TypeError(f"expected an EGV, got {type(circuit).__name__}")
    n = circuit.n
    if np.shape(circuit.a) != (n, n):
        raise ValueError(
            f"only unbatched EGV circuits can be written; `a` has shape {np.shape(circuit.a)}"
        )
    gp = _spice._matrix("g_pos", circuit.g_pos, (n, n))
    gn = _spice._matrix("g_neg", circuit.g_neg, (n, n))
    g_lam = _spice._per_amp("g_lambda", circuit.g_lambda, n)
    g_bal = _spice._per_amp("g_bal", circuit.g_bal, n, positive=False)
    if np.any(g_bal < 0):
        raise ValueError("g_bal must be >= 0 (conductances)")
    v_init = _spice._vector("v_init", circuit.v_init, n)
    a0, f_gbw, v_os = _amp("amp", circuit.amp, n)
    t_stop, t_step = _spice._time(t_stop, t_step)
    num = _spice._num

    lines = [
        _spice._title(
            f"amcdyn EGV n={n} inverters={circuit.inverters} linear model (rails removed)"
        ),
        f"* EGV, {n} TIAs, by amcdyn._spice_egv: the linear small-signal model, without the "
        f"rails v_sat = {float(_f64(circuit.v_sat))!r} V; valid while |v| << v_sat",
        "* TIAs: - = u{i}, out = y{i}, seeded at v_init",
    ]
    for i in range(n):
        tag = f"t{i}"
        amp_lines = _spice._opamp(
            tag, "0", f"u{i}", f"y{i}", float(a0[i]), float(f_gbw[i]), v_os=float(v_os[i])
        )
        lines += _with_ic(amp_lines, tag, float(v_init[i]))
        lines.append(f"Rl{i} u{i} y{i} {num(1.0 / g_lam[i])}")
    lines.append("* inverters: vb{j} = -y{j}")
    if circuit.inverter is None:
        for j in range(n):
            lines.append(f"Evb{j} vb{j} 0 y{j} 0 -1")
    else:
        ia0, if_, ivos = _amp("inverter", circuit.inverter, n)
        g_inv = float(_f64(circuit.g_inv))
        if not (math.isfinite(g_inv) and g_inv > 0):
            raise ValueError(f"g_inv must be finite and > 0, got {g_inv!r}")
        for j in range(n):
            tag = f"i{j}"
            amp_lines = _spice._opamp(
                tag, "0", f"m{j}", f"vb{j}", float(ia0[j]), float(if_[j]), v_os=float(ivos[j])
            )
            lines += _with_ic(amp_lines, tag, -float(v_init[j]))
            lines.append(f"Rvi{j} y{j} m{j} {num(1.0 / g_inv)}")
            lines.append(f"Rvf{j} vb{j} m{j} {num(1.0 / g_inv)}")
    lines.append("* crossbar: G+ from the inverted outputs, G- from the TIA outputs")
    for i, j in zip(*np.nonzero(gp > 0)):
        lines.append(f"Rp{i}_{j} u{i} vb{j} {num(1.0 / gp[i, j])}")
    for i, j in zip(*np.nonzero(gn > 0)):
        lines.append(f"Rn{i}_{j} u{i} y{j} {num(1.0 / gn[i, j])}")
    if np.any(g_bal > 0):
        lines.append("* balance conductances to ground")
        for i in np.flatnonzero(g_bal > 0):
            lines.append(f"Rb{i} u{i} 0 {num(1.0 / g_bal[i])}")
    lines += _spice._tran(t_stop, t_step, tight)
    lines.append(".end")
    return "\n".join(lines) + "\n"
