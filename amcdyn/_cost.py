r"""Hardware cost of one big INV array and of BlockAMC: area, amplifier count, and the
energy of a solve with a shared amplifier bank.

**Area model.** The silicon area (µm²) is a sum of four parts, each a count times a
user-set unit area ([`amcdyn.CostModel`][]):

$$A = N_\mathrm{cell}\,a_\mathrm{cell}
      + N_\mathrm{amp}\,(a_\mathrm{amp} + k_\mathrm{area} f_\mathrm{GBW})
      + N_\mathrm{S/H}\,a_\mathrm{S/H} + N_\mathrm{sw}\,a_\mathrm{sw}.$$

The counts come from the circuits amcdyn simulates (`amcdyn._blockamc`):

- **Cells.** An INV or MVM array of a signed $r\times c$ matrix is a differential pair of
  arrays $G^\pm$: $2rc$ 1T1R cells. A BlockAMC MVM also has its identity columns (the
  right-hand side enters through one $G_0$ device per row): $r$ more cells.
  One $N\times N$ INV: $2N^2$; one-stage BlockAMC ($A_{11}$, $S$, $A_{21}$, $A_{12}$):
  $2N^2 + N$; two-stage: $2N^2 + 2N$ (each stage adds $N$ identity cells).
- **Amplifiers.** One INV of size $r$ uses $r$ op-amps and $r$ inverters (for the $G^-$
  columns); an MVM with $r$ rows and $c$ matrix columns uses $r$ TIAs and $c$ inverters (the
  $G^-$ columns are driven by $-v$). With `inverters="ideal"` the inverters are not counted
  (and not powered). One big INV is hard-wired: $2N$ amplifiers. BlockAMC's macro **shares**
  one amplifier bank across its sequential steps (transmission gates reconnect it to the
  array of the current step, amc-physics.md §8.5), so the bank is the largest need of any
  step: $N$ for one stage ($2\cdot N/2$ for the INV steps, $N/2 + N/2$ for the MVMs) and also
  $N$ for two stages, where the two top-level MVMs still have $N/2$ rows and $N/2$ matrix
  columns (the $N/4$ INV steps need only $N/2$).
- **Sample-and-hold.** One S/H channel (hold capacitor and switch) per held voltage, reused
  once its value has been read for the last time: the count is the peak, over the steps, of
  the held vectors still to be read (a vector is freed as a whole). The right-hand side comes
  from DACs and the last step's outputs go straight to the ADCs, as for one INV, so DACs and
  ADCs (equal in both schemes) are not counted. One stage: $N$ channels; two stages:
  $3N/2$. One INV: none.
- **Switches.** One transmission gate per array line connected to the shared bank: each row
  and each $G^+$ and $G^-$ column of a block array (and each identity column): $3r$ for an
  $r\times r$ INV array, $r + 2c + r$ for an MVM array. One INV: none (hard-wired).

**Energy model.** A solve of $K$ sequential steps, step $k$ lasting $t_k$ (its settling time
plus the per-step `t_hold`), with $n_k$ amplifiers of static power $p$ (W, from the op-amp
power model, [`amcdyn.OpAmp.power`][]) costs

$$E = p\sum_k n^\mathrm{on}_k t_k + \sum_k E_{\mathrm{res},k},$$

where $E_{\mathrm{res},k}$ is the crossbar (resistive) energy of step $k$'s transient, and
$n^\mathrm{on}_k$ the amplifiers powered during step $k$: `powered="active"` (idle amplifiers
of the bank are power-gated: $n^\mathrm{on}_k$ = the step's own need $n_k$) or
`powered="bank"` (no power gating: the whole bank is on for the whole solve,
$n^\mathrm{on}_k = N_\mathrm{amp}$). S/H channels (passive capacitors) and switches draw no
static power in this model.

**Efficiencies.** For the same problem, *area efficiency* is $1/A$ (problems per µm²) and
*energy efficiency* $1/E$ (solves per joule); BlockAMC "improves" one by $X$ % when
$A_\mathrm{INV}/A_\mathrm{Block} = 1 + X/100$. *Throughput per area* is $1/(A\,T)$ with $T$
the total solve time. `compare_blockamc` reports all of them against one INV.
"""

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._validate import is_concrete


# Default unit areas (µm²); amc-physics.md gives none, so these are stated assumptions.
# A 1T1R cell of 12 F^2 at F = 40 nm (the HP-INV chip's node, amc-physics.md §10).
CELL_AREA = 12 * 0.040**2  # µm² per device
# An integrated two-stage op-amp at ~100 MHz GBW, dominated by its ~1 pF compensation
# capacitor (MIM, ~2 fF/µm²): ~1000 µm².
AMP_AREA = 1000.0  # µm²
# A S/H channel: a 0.5 pF hold capacitor (MIM, ~2 fF/µm²) plus its switch.
SH_AREA = 250.0  # µm²
# A transmission gate (two transistors and their wiring).
SWITCH_AREA = 1.0  # µm²

_INVERTERS = ("opamp", "ideal")
POWERED = ("active", "bank")


def _check_area(name, value):
    if np.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a scalar, got shape {np.shape(value)}")
    if is_concrete(value):
        v = float(np.asarray(value))
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"`{name}` must be finite and >= 0, got {value!r}")
    return jnp.asarray(value, dtype=float)


class CostModel(eqx.Module):
    r"""Unit areas of the hardware cost model (module `amcdyn._cost`). All fields are array
    leaves, so an area is differentiable in them (`jax.grad`, `jax.vmap` over designs).

    **Arguments:**

    - `cell_area`: area of one 1T1R device (µm²); default $12F^2$ at $F = 40$ nm
      (0.0192 µm²); for $k F^2$ at feature size $F$ (µm) pass `k * F**2`.
    - `amp_area`: area of one op-amp at zero gain-bandwidth (µm²); default 1000 µm².
    - `amp_area_per_hz`: extra op-amp area per hertz of gain-bandwidth (µm²/Hz); default 0
      (a faster amplifier with bigger input devices or compensation costs more: set it).
    - `sh_area`: area of one sample-and-hold channel (µm²); default 250 µm².
    - `switch_area`: area of one transmission gate (µm²); default 1 µm².

    The defaults are assumptions (amc-physics.md gives no area figure); only the ratios
    matter for the comparisons of `compare_blockamc`.

    **Raises:** `ValueError` naming the argument for a negative, non-finite or non-scalar
    value.
    """

    cell_area: Float[Array, ""]
    amp_area: Float[Array, ""]
    amp_area_per_hz: Float[Array, ""]
    sh_area: Float[Array, ""]
    switch_area: Float[Array, ""]

    def __init__(
        self,
        cell_area: float | Float[ArrayLike, ""] = CELL_AREA,
        amp_area: float | Float[ArrayLike, ""] = AMP_AREA,
        amp_area_per_hz: float | Float[ArrayLike, ""] = 0.0,
        sh_area: float | Float[ArrayLike, ""] = SH_AREA,
        switch_area: float | Float[ArrayLike, ""] = SWITCH_AREA,
    ):
        self.cell_area = _check_area("cell_area", cell_area)
        self.amp_area = _check_area("amp_area", amp_area)
        self.amp_area_per_hz = _check_area("amp_area_per_hz", amp_area_per_hz)
        self.sh_area = _check_area("sh_area", sh_area)
        self.switch_area = _check_area("switch_area", switch_area)

    def amplifier_area(self, f_gbw: float | Float[ArrayLike, ""]) -> Float[Array, ""]:
        """Area of one op-amp of gain-bandwidth `f_gbw` (Hz): $a_\\mathrm{amp} +
        k_\\mathrm{area} f_\\mathrm{GBW}$ (µm²)."""
        return self.amp_area + self.amp_area_per_hz * f_gbw


class HardwareCost(eqx.Module):
    """What [`amcdyn.inv_cost`][] and [`amcdyn.blockamc_cost`][] return. Areas in µm².

    **Fields:**

    - `n`, `stages`: the problem size and the number of BlockAMC stages (0: one INV).
    - `arrays`: `(name, rows, cols, extra)` of every physical array (`extra`: the identity
      devices of an MVM); `step_names`: the steps in order, as in
      [`amcdyn.BlockAMCSolution`][]; `step_amplifiers`: the amplifiers each step uses.
    - `cells`, `amplifiers` (the shared bank: the largest step need), `sh_channels`,
      `switches`: the counts (ints).
    - `cell_area`, `amplifier_area`, `sh_area`, `switch_area`: the four parts of the area,
      and `area` their sum (µm², differentiable in the [`amcdyn.CostModel`][] and `f_gbw`).
    """

    cell_area: Float[Array, ""]
    amplifier_area: Float[Array, ""]
    sh_area: Float[Array, ""]
    switch_area: Float[Array, ""]
    area: Float[Array, ""]
    n: int = eqx.field(static=True)
    stages: int = eqx.field(static=True)
    inverters: str = eqx.field(static=True)
    arrays: tuple[tuple[str, int, int, int], ...] = eqx.field(static=True)
    step_names: tuple[str, ...] = eqx.field(static=True)
    step_amplifiers: tuple[int, ...] = eqx.field(static=True)
    cells: int = eqx.field(static=True)
    amplifiers: int = eqx.field(static=True)
    sh_channels: int = eqx.field(static=True)
    switches: int = eqx.field(static=True)

    def summary(self) -> dict:
        """A JSON-ready dict of the counts and areas (unbatched, concrete)."""
        f = lambda x: float(np.asarray(x))
        return {
            "area_um2": f(self.area),
            "cell_area_um2": f(self.cell_area),
            "amplifier_area_um2": f(self.amplifier_area),
            "sh_area_um2": f(self.sh_area),
            "switch_area_um2": f(self.switch_area),
            "cells": self.cells,
            "amplifiers": self.amplifiers,
            "sh_channels": self.sh_channels,
            "switches": self.switches,
        }


class _Plan:
    """A symbolic BlockAMC chain (same recursion as `amcdyn._blockamc._Chain.solve`): the
    steps with their sizes, and which held vectors each step reads."""

    def __init__(self, inverters: str):
        self.real_inverters = inverters == "opamp"
        self.names: list[str] = []
        self.amps: list[int] = []
        self.arrays: dict[str, tuple[int, int, int]] = {}
        self.sizes: list[int] = []  # held vector -> size
        self.produced: list[int] = []  # held vector -> producing step
        self.last_use: list[int] = []  # held vector -> last step reading it

    def _step(self, kind, array, rows, cols, extra, inputs, amps):
        k = len(self.names)
        self.names.append(f"{kind}({array})")
        self.amps.append(amps)
        self.arrays[array] = (rows, cols, extra)
        for vid, _ in inputs:
            if vid is not None:
                self.last_use[vid] = max(self.last_use[vid], k)
        self.sizes.append(rows)
        self.produced.append(k)
        self.last_use.append(k)
        return [(len(self.sizes) - 1, rows)]

    def inv(self, r, v, array):
        return self._step("INV", array, r, r, 0, v, r + (r if self.real_inverters else 0))

    def mvm(self, r, c, v, array):
        return self._step("MVM", array, r, c, r, v, r + (c if self.real_inverters else 0))

    def solve(self, n, v, stages, path):
        if stages == 0:
            return self.inv(n, v, path)
        n1 = (n + 1) // 2
        n2 = n - n1
        pre = "" if path == "A" else path + "."
        v_top, v_bot = _split(v, n1)
        v1 = self.solve(n1, v_top, stages - 1, pre + "A11")
        v2 = self.mvm(n2, n1, v1 + v_bot, pre + "A21")
        v3 = self.solve(n2, v2, stages - 1, pre + "S")
        v4 = self.mvm(n1, n2, v3 + v_top, pre + "A12")
        v5 = self.solve(n1, v4, stages - 1, pre + "A11")
        return v5 + v3

    def sh_channels(self, result) -> int:
        """Peak held voltages: a vector is held from its step to its last reader; the result
        is read out after the last step; the last step's own outputs go to the ADCs."""
        n_steps = len(self.names)
        last = list(self.last_use)
        for vid, _ in result:
            last[vid] = n_steps
        peak = 0
        for k in range(n_steps):
            live = sum(
                s
                for s, p, l in zip(self.sizes, self.produced, last)
                if p <= k <= l and p != n_steps - 1 and l > p
            )
            peak = max(peak, live)
        return peak


def _split(v, n1):
    """Split a list of `(vector id, size)` segments after `n1` elements."""
    top, bot, seen = [], [], 0
    for vid, s in v:
        take = min(max(n1 - seen, 0), s)
        if take:
            top.append((vid, take))
        if s - take:
            bot.append((vid, s - take))
        seen += s
    return top, bot


def _check_size(n, stages, inverters):
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 0:
        raise ValueError(f"`stages` must be an int >= 0, got {stages!r}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"`n` must be an int >= 1, got {n!r}")
    if n % 2**stages:
        raise ValueError(
            f"`n` = {n} is not divisible by 2**stages = {2**stages}: the cost model assumes "
            "equal blocks (each stage halves them)"
        )
    if inverters not in _INVERTERS:
        raise ValueError(f"`inverters` must be one of {_INVERTERS}, got {inverters!r}")


def blockamc_cost(
    n: int,
    stages: int = 1,
    *,
    cost: CostModel | None = None,
    f_gbw: float | Float[ArrayLike, ""] = 1e8,
    inverters: Literal["opamp", "ideal"] = "opamp",
) -> HardwareCost:
    """Area and component counts of a BlockAMC solver for an `n x n` system (`stages=0`:
    one `n x n` INV). See the module docstring of `amcdyn._cost` for the counting rules.

    **Arguments:**

    - `n`: the problem size; divisible by `2**stages` (equal blocks).
    - `stages`: 0 (one INV), 1 (four $n/2$ blocks), 2 (blocks of $n/4$), ...
    - `cost`: the unit areas, a [`amcdyn.CostModel`][] (default: its defaults).
    - `f_gbw`: gain-bandwidth of every amplifier (Hz), for `CostModel.amp_area_per_hz`.
    - `inverters`: `"opamp"` (inverters for the $G^-$ columns are op-amps, counted) or
      `"ideal"` (not counted), as in [`amcdyn.blockamc_solve`][].

    **Returns:** a [`amcdyn.HardwareCost`][]. Works under `jax.jit`/`jax.grad`/`jax.vmap`
    with respect to `cost` and `f_gbw` (`n`, `stages`, `inverters` static).

    **Raises:** `ValueError` naming the argument for `n` not divisible by `2**stages`, a bad
    `stages`/`inverters`, a non-positive `f_gbw`, or a `cost` that is not a `CostModel`.
    """
    _check_size(n, stages, inverters)
    if cost is None:
        cost = CostModel()
    if not isinstance(cost, CostModel):
        raise ValueError(f"`cost` must be an amcdyn.CostModel or None, got {cost!r}")
    if np.ndim(f_gbw) != 0:
        raise ValueError(f"`f_gbw` must be a scalar (Hz), got shape {np.shape(f_gbw)}")
    if is_concrete(f_gbw):
        fv = float(np.asarray(f_gbw))
        if not np.isfinite(fv) or fv <= 0:
            raise ValueError(f"`f_gbw` must be finite and > 0 (Hz), got {f_gbw!r}")
    n = int(n)
    plan = _Plan(inverters)
    result = plan.solve(n, [(None, n)], stages, "A")
    arrays = tuple((name, r, c, e) for name, (r, c, e) in plan.arrays.items())
    cells = sum(2 * r * c + e for _, r, c, e in arrays)
    amplifiers = max(plan.amps)
    if stages == 0:
        sh, switches = 0, 0  # one hard-wired INV: nothing held, nothing switched
    else:
        sh = plan.sh_channels(result)
        switches = sum(r + 2 * c + e for _, r, c, e in arrays)
    parts = (
        cells * cost.cell_area,
        amplifiers * cost.amplifier_area(f_gbw),
        sh * cost.sh_area,
        switches * cost.switch_area,
    )
    return HardwareCost(
        cell_area=parts[0],
        amplifier_area=parts[1],
        sh_area=parts[2],
        switch_area=parts[3],
        area=parts[0] + parts[1] + parts[2] + parts[3],
        n=n,
        stages=stages,
        inverters=inverters,
        arrays=arrays,
        step_names=tuple(plan.names),
        step_amplifiers=tuple(plan.amps),
        cells=cells,
        amplifiers=amplifiers,
        sh_channels=sh,
        switches=switches,
    )


def inv_cost(
    n: int,
    *,
    cost: CostModel | None = None,
    f_gbw: float | Float[ArrayLike, ""] = 1e8,
    inverters: Literal["opamp", "ideal"] = "opamp",
) -> HardwareCost:
    """Area and counts of one hard-wired `n x n` INV: $2n^2$ cells ($G^\\pm$), $n$ op-amps and
    $n$ inverters, no S/H or switches. Same as `blockamc_cost(n, 0, ...)`; arguments as
    [`amcdyn.blockamc_cost`][]."""
    return blockamc_cost(n, 0, cost=cost, f_gbw=f_gbw, inverters=inverters)


class BlockAMCEnergy(eqx.Module):
    """What [`amcdyn.blockamc_energy`][] returns (J).

    - `energy`: `amplifier_energy + resistive_energy`.
    - `amplifier_energy`: $p \\sum_k n^\\mathrm{on}_k t_k$; `resistive_energy`:
      $\\sum_k E_{\\mathrm{res},k}$.
    - `step_energies`: each step's share, $p\\,n^\\mathrm{on}_k t_k + E_{\\mathrm{res},k}$.
    - `powered`: `"active"` or `"bank"`; `step_amplifiers`: $n^\\mathrm{on}_k$.
    """

    energy: Float[Array, ""]
    amplifier_energy: Float[Array, ""]
    resistive_energy: Float[Array, ""]
    step_energies: Float[Array, " steps"]
    powered: str = eqx.field(static=True)
    step_amplifiers: tuple[int, ...] = eqx.field(static=True)


def blockamc_energy(
    sol,
    *,
    amp_power: float | Float[ArrayLike, ""],
    powered: Literal["active", "bank"] = "active",
    inverters: Literal["opamp", "ideal"] = "opamp",
) -> BlockAMCEnergy:
    r"""Energy of a BlockAMC (or single-INV, `stages=0`) solve with the macro's amplifier
    bank, from its simulated steps (module docstring of `amcdyn._cost`).

    Step $k$ lasts $t_k$ = its settling time plus the per-step hold time
    (`(settling_time - sum(step_times)) / n_steps` of the solution); its resistive energy is
    what its [`amcdyn.Solution`][] counts beyond the amplifiers,
    $E_{\mathrm{res},k} = E_k - P_k t_{s,k}$ (crossbar dissipation up to its settling time).

    **Arguments:**

    - `sol`: a [`amcdyn.BlockAMCSolution`][] (unbatched; square problem, size divisible by
      `2**stages`).
    - `amp_power`: static power of one amplifier of the bank (W), e.g.
      `amcdyn.OpAmp(f_gbw=...).power()`; differentiable.
    - `powered`: `"active"` (idle amplifiers power-gated: each step powers only what it uses)
      or `"bank"` (the whole bank on for the whole solve).
    - `inverters`: as in [`amcdyn.blockamc_cost`][]; use the `inverters` of the solve.

    **Returns:** a [`amcdyn.BlockAMCEnergy`][].

    **Raises:** `ValueError` naming the argument for an unknown `powered`, a negative
    `amp_power`, or a solution whose steps do not match the BlockAMC schedule.
    """
    if powered not in POWERED:
        raise ValueError(f"`powered` must be one of {POWERED}, got {powered!r}")
    if is_concrete(amp_power):
        pv = np.asarray(amp_power, dtype=float)
        if pv.ndim != 0 or not np.isfinite(pv) or pv < 0:
            raise ValueError(f"`amp_power` must be a finite scalar >= 0 (W), got {amp_power!r}")
    n = int(np.shape(sol.solution)[-1])
    hw = blockamc_cost(n, sol.stages, inverters=inverters)
    if tuple(sol.step_names) != hw.step_names:
        raise ValueError(
            f"`sol`: its steps {sol.step_names} do not match the schedule {hw.step_names}"
        )
    n_steps = len(hw.step_names)
    t_hold = (sol.settling_time - jnp.sum(sol.step_times)) / n_steps
    times = sol.step_times + t_hold
    e_res = jnp.stack([s.energy - s.power * s.settling_time for s in sol.steps])
    if powered == "active":
        on = hw.step_amplifiers
    else:
        on = (hw.amplifiers,) * n_steps
    e_amp = jnp.asarray(amp_power) * jnp.asarray(on, dtype=times.dtype) * times
    return BlockAMCEnergy(
        energy=jnp.sum(e_amp) + jnp.sum(e_res),
        amplifier_energy=jnp.sum(e_amp),
        resistive_energy=jnp.sum(e_res),
        step_energies=e_amp + e_res,
        powered=powered,
        step_amplifiers=tuple(on),
    )
