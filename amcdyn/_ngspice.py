"""ngspice as an independent reference for amcdyn circuits.

Glue between the circuit PyTrees ([`amcdyn.INV`][], [`amcdyn.MVM`][]) and the pure-NumPy
netlist writer and runner in `amcdyn._spice`:

- `spice_netlist(circuit, t_stop=...)` writes the circuit's transistor-free SPICE netlist (the
  same op-amp macromodel — one or two poles, input offset —, crossbar resistors, every wire
  resistor when the circuit has wire resistance, and sources as the ODE of
  `circuit.dynamics()`), from the float64 values of the circuit's leaves. GINV/Ridge are
  written by `amcdyn._spice_ginv`; the EGV by `amcdyn._spice_egv`, as its linear model (rails
  removed, seeded from `v_init`: valid in the growth phase).
- `simulate_spice(circuit)` runs it in ngspice and returns a `SpiceSolution` whose settling
  time uses the same definition as amcdyn's.
- `settling_time_from_samples(ts, vs, v_ref, tol)` is that definition on sampled waveforms.

Only unbatched circuits with concrete (not traced) leaves can be written out.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from . import _spice, _spice_egv, _spice_ginv
from ._circuits import INV, MVM, V0, AbstractCircuit
from ._egv import EGV
from ._ginv import GINV, Ridge


__all__ = [
    "SpiceSolution",
    "default_t_stop",
    "settling_time_from_samples",
    "simulate_spice",
    "spice_netlist",
]


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _check_unbatched(circuit: AbstractCircuit) -> None:
    a = np.shape(circuit.a)
    if len(a) != 2:
        raise ValueError(
            f"only unbatched circuits can be written as a netlist; `a` has shape {a}"
        )


def _check_points(n_points) -> int:
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 2:
        raise ValueError(f"`n_points` must be an int >= 2, got {n_points!r}")
    return int(n_points)


def _output_nodes(circuit: AbstractCircuit) -> list[str]:
    if isinstance(circuit, INV):
        return _spice.inv_output_nodes(circuit.n)
    if isinstance(circuit, MVM):
        return _spice.mvm_output_nodes(circuit.m)
    if isinstance(circuit, (GINV, Ridge)):
        return _spice_ginv.output_nodes(circuit)
    if isinstance(circuit, EGV):
        return _spice_egv.output_nodes(circuit)
    raise TypeError(
        f"no ngspice netlist for {type(circuit).__name__}; expected INV, MVM, GINV, Ridge or EGV"
    )


def _amp_kw(amp, prefix: str = "") -> dict:
    """The optional op-amp non-idealities of `amp` as netlist-writer keyword arguments."""
    return {
        prefix + "f_p2": None if amp.f_p2 is None else _f64(amp.f_p2),
        prefix + "v_os": _f64(amp.v_os),
    }


def _wire_kw(circuit) -> dict:
    if circuit.r_w is None:
        return {}
    return {"r_row": float(_f64(circuit.r_w)), "r_col": float(_f64(circuit.r_w_col))}


def spice_netlist(
    circuit: AbstractCircuit,
    *,
    t_stop: float,
    n_points: int = 2000,
    tight: bool = True,
) -> str:
    """The ngspice netlist of `circuit`'s step response on $[0, t_\\mathrm{stop}]$.

    **Arguments:**

    - `circuit`: an unbatched [`amcdyn.INV`][] or [`amcdyn.MVM`][].
    - `t_stop`: end of the transient (s).
    - `n_points`: the print step and maximal time step are `t_stop / n_points`.
    - `tight`: tight tolerances (`reltol=1e-6`, ...) and a maximal step of
      `t_stop / n_points`; else ngspice's defaults.

    INV: the main op-amps are single-pole (`circuit.amp`); `inverters="opamp"` gives
    single-pole inverters (`circuit.inverter`, resistors `1/g_inv`), `"ideal"` gives ideal
    VCVS inverters (gain -1) and `"none"` no negative array. `input_mode="current"` injects
    `circuit.input_current()` into the row nodes; `"voltage"` applies $b\\cdot$1 V through
    `g_in`. MVM: TIAs with feedback `g_f` and column splitting of the input voltages.

    Every op-amp carries its second pole (an RC stage and a buffer after the first-pole node)
    and its input offset (a DC source in series with the non-inverting input) when it has
    them; a circuit with wire resistance (`r_w`) is written with every wire resistor (the
    geometry of `amcdyn._wires`).
    """
    _check_unbatched(circuit)
    n_points = _check_points(n_points)
    t_stop = float(t_stop)
    if not (math.isfinite(t_stop) and t_stop > 0):
        raise ValueError(f"`t_stop` must be finite and > 0, got {t_stop!r}")
    t_step = t_stop / n_points
    if isinstance(circuit, EGV):  # its linear model: the rails removed (said in the title)
        return _spice_egv.netlist(circuit, t_stop=t_stop, t_step=t_step, tight=tight)
    if getattr(circuit, "nonlinear", False):
        raise ValueError(
            "`circuit` is nonlinear (op-amp rails or slew-rate limit set): the ngspice "
            "macromodel is the linear single/two-pole op-amp, so there is no equivalent netlist"
        )
    if isinstance(circuit, INV):
        kw = dict(
            a0=_f64(circuit.amp.a0),
            f_gbw=_f64(circuit.amp.f_gbw),
            t_stop=t_stop,
            t_step=t_step,
            tight=tight,
            title=f"amcdyn INV n={circuit.n} inverters={circuit.inverters} "
            f"input={circuit.input_mode}",
            **_amp_kw(circuit.amp),
            **_wire_kw(circuit),
        )
        g_neg = None if circuit.inverters == "none" else _f64(circuit.g_neg)
        if circuit.inverters == "opamp":
            kw.update(
                inverter_a0=_f64(circuit.inverter.a0),
                inverter_f_gbw=_f64(circuit.inverter.f_gbw),
                g_inv=_f64(circuit.g_inv),
                **_amp_kw(circuit.inverter, "inverter_"),
            )
            if circuit.inverter.f_p2 is None:
                kw["inverter_f_p2"] = math.inf  # not "same as the main amplifiers"
        if circuit.input_mode == "current":
            drive = _f64(circuit.input_current())
        else:
            drive = _f64(circuit.b) * V0
            kw.update(g_in=_f64(circuit.g_in))
        if circuit.c_node is not None:
            kw.update(c_node=_f64(circuit.c_node))
        return _spice.inv_netlist(_f64(circuit.g_pos), g_neg, drive, **kw)
    if isinstance(circuit, MVM):
        return _spice.mvm_netlist(
            _f64(circuit.g_pos),
            _f64(circuit.g_neg),
            _f64(circuit.x),
            _f64(circuit.g_f),
            a0=_f64(circuit.amp.a0),
            f_gbw=_f64(circuit.amp.f_gbw),
            v0=V0,
            t_stop=t_stop,
            t_step=t_step,
            tight=tight,
            title=f"amcdyn MVM {circuit.m}x{np.shape(circuit.a)[1]}",
            **_amp_kw(circuit.amp),
            **_wire_kw(circuit),
        )
    if isinstance(circuit, (GINV, Ridge)):
        return _spice_ginv.netlist(circuit, t_stop=t_stop, t_step=t_step, tight=tight)
    raise TypeError(
        f"no ngspice netlist for {type(circuit).__name__}; expected INV, MVM, GINV, Ridge or EGV"
    )


def settling_time_from_samples(ts, vs, v_ref, tol) -> float:
    """Last time any output lies outside $\\pm$`tol`$\\cdot\\max|v_\\mathrm{ref}|$ around `v_ref`.

    The waveform is taken as the piecewise-linear interpolant of the samples, and the exact
    last exit of that interpolant from each output's band is returned (the maximum over
    outputs). A zero `v_ref` uses a 1 V full scale, as amcdyn does.

    **Arguments:** `ts` (times,) increasing; `vs` (times, outputs); `v_ref` (outputs,);
    `tol` the relative band.

    **Returns:** the settling time (s): `ts[0]` if every sample is inside the band, `inf` if the
    last sample is outside it.
    """
    ts = _f64(ts)
    vs = _f64(vs)
    if vs.ndim == 1:
        vs = vs[:, None]
    v_ref = np.broadcast_to(_f64(v_ref), vs.shape[1:])
    if ts.ndim != 1 or vs.shape[0] != ts.shape[0] or ts.shape[0] == 0:
        raise ValueError(f"`ts` {ts.shape} and `vs` {vs.shape} do not match")
    tol = float(tol)
    if not tol > 0:
        raise ValueError(f"`tol` must be > 0, got {tol!r}")
    fs = float(np.max(np.abs(v_ref))) if v_ref.size else 0.0
    band = tol * (fs if fs > 0 else 1.0)
    d = vs - v_ref  # (times, outputs)
    out = np.abs(d) > band
    if not np.any(out):
        return float(ts[0])
    if np.any(out[-1]):
        return math.inf
    k_last = len(ts) - 1 - np.argmax(out[::-1], axis=0)  # last outside sample per output
    t_exit = []
    for i in np.flatnonzero(np.any(out, axis=0)):
        k = k_last[i]
        d0, d1 = d[k, i], d[k + 1, i]
        s = math.copysign(1.0, d0)  # the band edge crossed: +band if d0 > band, else -band
        frac = (abs(d0) - band) / (s * (d0 - d1))  # in (0, 1] since |d1| <= band < |d0|
        t_exit.append(ts[k] + frac * (ts[k + 1] - ts[k]))
    return float(max(t_exit))


def _max_real_eig(circuit: AbstractCircuit) -> tuple[float, float]:
    jac = _f64(circuit.dynamics().jacobian())
    maxre = float(np.max(np.linalg.eigvals(jac).real))
    w_ref = 2 * math.pi * float(np.max(_f64(circuit.amplifier_gbw())))
    return maxre, w_ref


def default_t_stop(circuit: AbstractCircuit, tol: float = 1e-3) -> float:
    """amcdyn's default `t_max` (see `simulate`), from the eigenvalues of the Jacobian.

    Stable: $1.5\\ln(10/\\varepsilon)/r$ with $r$ the slowest decay rate; unstable:
    $\\ln(10^3)/\\max\\mathrm{Re}\\,\\lambda$ (the offending mode grows ~1000x).
    """
    return _t_stop_rule(*_max_real_eig(circuit), tol)


def _t_stop_rule(maxre: float, w_ref: float, tol: float) -> float:
    if maxre < -1e-9 * w_ref:  # amcdyn's stability threshold
        return 1.5 * math.log(10 / tol) / max(-maxre, 1e-12 * w_ref)
    return math.log(1e3) / max(maxre, 1e-3 * w_ref)


@dataclasses.dataclass(frozen=True, eq=False)
class SpiceSolution:
    """An ngspice transient of an amcdyn circuit.

    **Fields:**

    - `ts`: ngspice's time points (s), `t = 0` included; `vs`: output voltages (V), shape
      `(times, outputs)` (the op-amp outputs, in the order of `circuit.dynamics().outputs`).
    - `v_final`: the outputs at the last time point; `solution`: `circuit.decode(v_final)`.
    - `settling_time`: last exit (s) from the band $\\pm$`tol`$\\cdot\\max|v_\\mathrm{final}|$
      around `v_final`, on the linear interpolant of the samples; `nan` when the circuit's
      linearized system is unstable (as amcdyn reports it).
    - `wall_time_s`: wall time of the ngspice run (s), including writing the netlist and
      reading back the waveform files.
    - `netlist`: the netlist that was run (without the appended `.control` block).
    """

    ts: np.ndarray
    vs: np.ndarray
    v_final: np.ndarray
    solution: np.ndarray
    settling_time: float
    wall_time_s: float
    netlist: str


def simulate_spice(
    circuit: AbstractCircuit,
    *,
    tol: float = 1e-3,
    t_stop: float | None = None,
    n_points: int = 2000,
    tight: bool = True,
    ngspice: str = "ngspice",
    timeout: float = 300.0,
) -> SpiceSolution:
    """Simulate `circuit`'s step response (all states start at 0 V; an EGV's linear model
    starts from its seed `v_init` and grows) in ngspice.

    **Arguments:**

    - `circuit`: an unbatched [`amcdyn.INV`][] or [`amcdyn.MVM`][] with concrete leaves.
    - `tol`: relative settling band (as in [`amcdyn.simulate`][]).
    - `t_stop`: end time (s); default the same rule as `amcdyn.simulate`'s default `t_max`.
    - `n_points`, `tight`: see `spice_netlist`.
    - `ngspice`: the executable; `timeout`: seconds before the run is abandoned.

    **Returns:** a `SpiceSolution`.

    **Raises:** `amcdyn._spice.NgspiceError` if ngspice is missing, fails or times out.
    """
    tol = float(tol)
    if not 0 < tol < 1:
        raise ValueError(f"`tol` must be in (0, 1), got {tol!r}")
    nodes = _output_nodes(circuit)  # raises for other circuit types
    _check_unbatched(circuit)
    maxre, w_ref = _max_real_eig(circuit)
    stable = maxre < -1e-9 * w_ref
    if t_stop is None:
        t_stop = _t_stop_rule(maxre, w_ref, tol)
    netlist = spice_netlist(circuit, t_stop=t_stop, n_points=n_points, tight=tight)
    start = time.perf_counter()
    ts, vs = _spice.run_netlist(netlist, nodes, ngspice=ngspice, timeout=timeout)
    wall = time.perf_counter() - start
    if isinstance(circuit, EGV):
        # ngspice does not store t = 0 of a `uic` transient (run_netlist writes 0 V there):
        # the EGV starts from its seed instead.
        vs[0] = _f64(circuit.v_init)
    v_final = vs[-1].copy()
    solution = np.asarray(circuit.decode(v_final), dtype=np.float64)
    return SpiceSolution(
        ts=ts,
        vs=vs,
        v_final=v_final,
        solution=solution,
        settling_time=settling_time_from_samples(ts, vs, v_final, tol) if stable else math.nan,
        wall_time_s=wall,
        netlist=netlist,
    )
