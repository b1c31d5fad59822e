r"""The reconfigurable AMC macro: one set of crossbar tiles and one amplifier bank, whose
connection configuration selects the function (GRAMC, arXiv 2501.01586; amc-physics.md §9).

A [`amcdyn.Macro`][] is *state*: the conductances currently programmed in its tiles (1T1R
differential pairs $G^\pm$), the conductance window and write-verify scheme of its devices, and
its amplifier bank. A task is *data*: a function name from `CONNECTIONS` (`"mvm"`, `"inv"`,
`"egv"`, `"ginv"`) plus its matrix and input. Running a task

1. maps the matrix to target conductances $G^\pm = G_0 A^\pm$ (placed in the top-left corner of
   the tile; unused cells are deselected by their access transistor), quantized to the window's
   levels;
2. reprograms the tile with write-verify *starting from the conductances the previous task left*
   (so the pulse count, time and energy of reprogramming depend on the task sequence);
3. builds the circuit that the connection table prescribes (the same circuit classes as
   everywhere else in amcdyn: [`amcdyn.MVM`][], [`amcdyn.INV`][], [`amcdyn.GINV`][], and the EGV
   circuit) on the *achieved* conductances and the macro's amplifier bank, and simulates its
   transient.

The connection table is `CONNECTIONS` below (derived in amc-physics.md §9 from §2–§5; the
paper's switch matrix is not published); docs/circuits/macro.md shows it as a table.

Programming cost model (behavioural; amc-physics.md gives no figures, so both constants are
user-set assumptions): the rows of a tile are programmed one after the other and the cells of
a row in parallel, so a reprogramming takes $\sum_\text{rows} \max_\text{row}(\text{pulses})
\cdot t_\text{pulse}$ seconds, where $t_\text{pulse}$ is one write-plus-verify cycle; it costs
$(\text{total pulses}) \cdot E_\text{pulse}$ joules.
"""

from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._circuits import INV, MVM, AbstractCircuit
from ._devices import ConductanceWindow, WriteVerify
from ._ginv import GINV
from ._opamp import OpAmp
from ._propagator import simulate_expm
from ._simulate import simulate
from ._solution import Solution
from ._validate import check_positive


CONNECTIONS: dict[str, dict[str, Any]] = {
    "mvm": {
        "rows": "TIA inverting inputs (feedback G_f)",
        "columns": "DAC inputs x",
        "tiles": 1,
    },
    "inv": {
        "rows": "op-amp inverting inputs + input currents G0*b",
        "columns": "op-amp outputs (global loop); inverters for G-",
        "tiles": 1,
    },
    "egv": {
        "rows": "TIA inverting inputs (feedback G_lambda), no input",
        "columns": "inverted TIA outputs",
        "tiles": 1,
    },
    "ginv": {
        "rows": "tile 1: TIAs (feedback G_f); tile 2: non-inverting op-amps + input currents",
        "columns": "tile 1: op-amp outputs; tile 2: TIA outputs",
        "tiles": 2,
    },
}


class ProgramReport(eqx.Module):
    """What one reprogramming of the macro cost.

    - `pulses`: write-verify pulses per device, shape `(tiles, 2, rows, cols)` ($G^+$, $G^-$).
    - `time`: reprogramming time (s); `energy`: reprogramming energy (J).
    - `converged`: fraction of the programmed devices within the verify tolerance.
    - `max_error`: largest $|G - G_\\mathrm{target}|$ over the programmed devices (S).
    """

    pulses: Int[Array, "tiles 2 rows cols"]
    time: Float[Array, ""]
    energy: Float[Array, ""]
    converged: Float[Array, ""]
    max_error: Float[Array, ""]


class MacroResult(eqx.Module):
    """One task run on the macro: its transient, its reprogramming, and the macro afterwards.

    `time` and `energy` are the totals: reprogramming plus the solve (settling time, and the
    solve energy of [`amcdyn.Solution`][]).
    """

    function: str = eqx.field(static=True)
    solution: Solution
    program: ProgramReport
    macro: "Macro"
    circuit: AbstractCircuit

    @property
    def time(self) -> Array:
        return self.program.time + self.solution.settling_time

    @property
    def energy(self) -> Array:
        return self.program.energy + self.solution.energy


class Macro(eqx.Module):
    r"""A reconfigurable AMC macro: `tiles` crossbar tiles of `rows x cols` differential 1T1R
    pairs and one amplifier bank.

    Build one with [`amcdyn.Macro.create`][]; run tasks with [`amcdyn.Macro.run`][], which
    returns the macro with its new conductances, so a sequence of tasks is a fold:

    ```python
    macro = amcdyn.Macro.create(rows=8, cols=8)
    r1 = macro.run("inv", a, b, key=k1)
    r2 = r1.macro.run("mvm", a2, x, key=k2)   # reprograms from what "inv" left
    ```

    Fields: `g_pos`, `g_neg` (tiles, rows, cols) the programmed conductances (S);
    `window` the devices' [`amcdyn.ConductanceWindow`][]; `write` the
    [`amcdyn.WriteVerify`][] scheme; `amp` the amplifier bank's [`amcdyn.OpAmp`][] (one
    model for every amplifier); `g0` the conductance unit (S), `None` to choose
    $G_0 = G_\max/\max|A|$ per task; `t_pulse` (s) and `e_pulse` (J) the programming cost
    model (see the module docstring).
    """

    g_pos: Float[Array, "tiles rows cols"]
    g_neg: Float[Array, "tiles rows cols"]
    window: ConductanceWindow
    write: WriteVerify
    amp: OpAmp
    g0: Float[Array, ""] | None
    t_pulse: Float[Array, ""]
    e_pulse: Float[Array, ""]

    @classmethod
    def create(
        cls,
        rows: int = 8,
        cols: int = 8,
        *,
        tiles: int = 2,
        g_min: float = 0.5e-6,
        g_max: float = 35e-6,
        levels: int | None = 16,
        tolerance: float | None = None,
        max_pulses: int = 64,
        step: float = 0.5,
        sigma_write: float = 0.1,
        a0: float = 1e5,
        f_gbw: float = 1e8,
        p_static: float | None = None,
        k_gbw: float | None = None,
        g0: float | None = None,
        t_pulse: float = 1e-6,
        e_pulse: float = 1e-12,
    ) -> "Macro":
        """A fresh macro with every device at `g_min` (formed, high-resistance state).

        **Arguments:**

        - `rows`, `cols`: tile size (cells); `tiles`: number of tiles (GINV needs 2).
        - `g_min`, `g_max`, `levels`: the device window (S) and its levels (16 = the 4-bit
          on-chip write-verify of GRAMC; `None`: continuous).
        - `tolerance`: write-verify tolerance (S); default a quarter of the level spacing
          (or 1 % of the window when continuous).
        - `max_pulses`, `step`, `sigma_write`: the [`amcdyn.WriteVerify`][] model.
        - `a0`, `f_gbw`, `p_static`, `k_gbw`: the amplifier bank ([`amcdyn.OpAmp`][]).
        - `g0`: conductance unit (S); `None` (default): $G_\\max/\\max|A|$ for each task.
        - `t_pulse`: one write-plus-verify cycle (s); `e_pulse`: energy per pulse (J). Both are
          assumptions to be set for the technology (defaults 1 µs, 1 pJ).

        **Raises:** `ValueError` naming the argument for non-positive sizes or values.
        """
        for name, value in (("rows", rows), ("cols", cols), ("tiles", tiles)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
        for name, value in (("t_pulse", t_pulse), ("e_pulse", e_pulse)):
            check_positive(name, value)
        if g0 is not None:
            check_positive("g0", g0)
        window = ConductanceWindow(g_min, g_max, levels)
        if tolerance is None:
            width = g_max - g_min
            tolerance = width / (levels - 1) / 4 if levels is not None else width / 100
        write = WriteVerify(tolerance, max_pulses, step, sigma_write, g_start=g_min)
        opts = {}
        if p_static is not None:
            opts["p_static"] = p_static
        if k_gbw is not None:
            opts["k_gbw"] = k_gbw
        amp = OpAmp(a0, f_gbw, **opts)
        g = jnp.full((tiles, rows, cols), float(g_min))
        return cls(
            g_pos=g,
            g_neg=g,
            window=window,
            write=write,
            amp=amp,
            g0=None if g0 is None else jnp.asarray(g0),
            t_pulse=jnp.asarray(t_pulse),
            e_pulse=jnp.asarray(e_pulse),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(np.shape(self.g_pos))

    def _unit(self, mats):
        if self.g0 is not None:
            return self.g0
        top = jnp.max(jnp.stack([jnp.max(jnp.abs(m)) for m in mats]))
        return self.window.g_max / top

    def _check_fit(self, function, mats):
        tiles, rows, cols = self.shape
        need = CONNECTIONS[function]["tiles"]
        if need > tiles:
            raise ValueError(f"`function='{function}'` needs {need} tiles; this macro has {tiles}")
        for m in mats:
            r, c = np.shape(m)
            if r > rows or c > cols:
                raise ValueError(f"a {r}x{c} matrix does not fit the macro's {rows}x{cols} tiles")

    def program(
        self, targets: list[tuple[Array, Array]], *, key: PRNGKeyArray
    ) -> tuple["Macro", list[tuple[Array, Array]], ProgramReport]:
        """Write-verify each tile `i` toward `targets[i] = (G+, G-)` (top-left corner).

        Devices start from their current conductance; cells outside the target block, and
        cells whose target is 0 (no device: the access transistor stays off), are not
        programmed. **Returns** `(macro, achieved, report)`.
        """
        tiles, rows, cols = self.shape
        dtype = self.g_pos.dtype
        new_pos, new_neg = self.g_pos, self.g_neg
        pulses = jnp.zeros((tiles, 2, rows, cols), jnp.int32)
        achieved = []
        conv, total, max_err = jnp.zeros(()), jnp.zeros(()), jnp.zeros((), dtype)
        keys = jr.split(key, 2 * len(targets))
        for i, (tp, tn) in enumerate(targets):
            r, c = np.shape(tp)
            pair = []
            for s, (target, current) in enumerate(((tp, self.g_pos[i]), (tn, self.g_neg[i]))):
                target = self.window(jnp.asarray(target, dtype), key=keys[2 * i + s])
                start = current[:r, :c]
                wv = eqx.tree_at(lambda w: w.g_start, self.write, start)
                g, n_p = wv.program(target, key=keys[2 * i + s])
                present = target != 0
                err = jnp.where(present, jnp.abs(jax.lax.stop_gradient(g - target)), 0)
                conv = conv + jnp.sum(present & (err <= self.write.tolerance))
                total = total + jnp.sum(present)
                max_err = jnp.maximum(max_err, jnp.max(err))
                pulses = pulses.at[i, s, :r, :c].set(n_p)
                # A deselected cell keeps its conductance in the tile.
                stored = jnp.where(present, g, start)
                if s == 0:
                    new_pos = new_pos.at[i, :r, :c].set(stored)
                else:
                    new_neg = new_neg.at[i, :r, :c].set(stored)
                pair.append(g)
            achieved.append(tuple(pair))
        # Rows one after the other, a row's cells (both arrays of a tile) in parallel.
        row_max = jnp.max(pulses, axis=(1, 3))  # (tiles, rows)
        time = jnp.sum(row_max).astype(dtype) * self.t_pulse
        energy = jnp.sum(pulses).astype(dtype) * self.e_pulse
        report = ProgramReport(
            pulses=pulses,
            time=time,
            energy=energy,
            converged=conv / jnp.maximum(total, 1),
            max_error=max_err,
        )
        macro = eqx.tree_at(lambda m: (m.g_pos, m.g_neg), self, (new_pos, new_neg))
        return macro, achieved, report

    def run(
        self,
        function: Literal["mvm", "inv", "egv", "ginv"],
        matrix: Float[ArrayLike, "r c"],
        rhs: Float[ArrayLike, " k"] | None = None,
        *,
        key: PRNGKeyArray,
        method: Literal["expm", "ode"] = "expm",
        **options,
    ) -> MacroResult:
        """Configure the macro for `function`, reprogram it for `matrix`, and run the transient.

        **Arguments:**

        - `function`: a key of `CONNECTIONS`.
        - `matrix`: the matrix $A$ (dimensionless) — square for `inv`/`egv`, `(m, n)` for
          `mvm`, tall (least squares) for `ginv`. It must fit one tile.
        - `rhs`: the input: $x$ for `mvm`, $b$ for `inv`/`ginv`; unused for `egv`.
        - `key`: PRNG key for the write-verify noise.
        - `method`: `"expm"` ([`amcdyn.simulate_expm`][], linear functions) or `"ode"`
          ([`amcdyn.simulate`][]); `egv` always uses its own simulation.
        - `**options`: passed to the simulator (`tol`, `t_max`, `throw`, ...) and, for `egv`,
          to its circuit's `from_matrix` (e.g. `lam`).

        **Returns:** a [`amcdyn.MacroResult`][].

        **Raises:** `ValueError` for an unknown function, a matrix that does not fit, or a
        missing input.
        """
        if function not in CONNECTIONS:
            raise ValueError(f"`function` must be one of {sorted(CONNECTIONS)}, got {function!r}")
        if method not in ("expm", "ode"):
            raise ValueError(f"`method` must be 'expm' or 'ode', got {method!r}")
        if np.ndim(matrix) != 2:
            raise ValueError(f"`matrix` must be 2-D, got shape {np.shape(matrix)}")
        if function != "egv" and rhs is None:
            raise ValueError(f"`rhs` is required for function '{function}'")
        a = jnp.asarray(matrix, self.g_pos.dtype)
        if function == "ginv":
            mats = [a, a.T]
        else:
            mats = [a]
        self._check_fit(function, mats)
        g0 = self._unit(mats)
        targets = [(g0 * jnp.maximum(m, 0), g0 * jnp.maximum(-m, 0)) for m in mats]
        macro, achieved, report = self.program(targets, key=key)
        circuit = self._circuit(function, a, rhs, g0, achieved, options)
        sim_opts = {k: v for k, v in options.items() if k not in _EGV_OPTIONS}
        if function == "egv":
            from ._egv import simulate_egv

            sol = simulate_egv(circuit, **sim_opts)
        elif method == "expm":
            sol = simulate_expm(circuit, **sim_opts)
        else:
            sol = simulate(circuit, **sim_opts)
        return MacroResult(
            function=function, solution=sol, program=report, macro=macro, circuit=circuit
        )

    def _circuit(self, function, a, rhs, g0, achieved, options):
        amp = self.amp
        kw = dict(g0=g0, a0=amp.a0, f_gbw=amp.f_gbw, p_static=amp.p_static, k_gbw=amp.k_gbw)
        (gp, gn) = achieved[0]
        if function == "mvm":
            c = MVM.from_matrix(a, jnp.asarray(rhs, a.dtype), **kw)
            return eqx.tree_at(lambda c: (c.g_pos, c.g_neg), c, (gp, gn))
        if function == "inv":
            c = INV.from_matrix(a, jnp.asarray(rhs, a.dtype), inverters="opamp", **kw)
            return eqx.tree_at(lambda c: (c.g_pos, c.g_neg), c, (gp, gn))
        if function == "ginv":
            c = GINV.from_matrix(a, jnp.asarray(rhs, a.dtype), g0=g0, a0=amp.a0, f_gbw=amp.f_gbw)
            # Tile 1 holds A (read by the TIAs), tile 2 holds A^T (read by the second stage):
            # two physically separate arrays, each with its own programming error.
            gp2, gn2 = achieved[1]
            return eqx.tree_at(
                lambda c: (c.g_pos, c.g_neg, c.g_pos_2, c.g_neg_2),
                c,
                (gp, gn, gp2.T, gn2.T),
                is_leaf=lambda x: x is None,
            )
        from ._egv import EGV

        egv_kw = {k: v for k, v in options.items() if k in _EGV_OPTIONS}
        c = EGV.from_matrix(a, g0=g0, a0=amp.a0, f_gbw=amp.f_gbw, **egv_kw)
        return eqx.tree_at(lambda c: (c.g_pos, c.g_neg), c, (gp, gn))


_EGV_OPTIONS = ("lam", "v_sat")
