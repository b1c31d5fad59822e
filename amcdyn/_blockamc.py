r"""BlockAMC: a linear system solved as a sequence of half-size INV and MVM transients.

The matrix is partitioned as $A = \begin{bmatrix}A_{11} & A_{12}\\ A_{21} & A_{22}\end{bmatrix}$
($A_{11}$ of size $n_1 = \lceil n/2\rceil$) with the Schur complement
$S = A_{22} - A_{21}A_{11}^{-1}A_{12}$, which is computed digitally once and programmed on its
own array (amc-physics.md §8). Then $x = A^{-1}b$ follows from five steps:

1. $y = A_{11}^{-1} b_1$ (INV on the $A_{11}$ array),
2. $t = b_2 - A_{21} y$ (MVM on the $A_{21}$ array),
3. $x_2 = S^{-1} t$ (INV on the $S$ array),
4. $u = b_1 - A_{12} x_2$ (MVM on the $A_{12}$ array),
5. $x_1 = A_{11}^{-1} u$ (INV on the $A_{11}$ array again).

**Signs and voltages.** Every step is an [`amcdyn.INV`][] or [`amcdyn.MVM`][] built with
`from_matrix`, whose input is the vector of voltages held from the previous step (ideal
sample-and-hold, in units of $V_0 = 1$ V, current-mode INV input $G_0 v$, MVM feedback
$G_f = G_0$); an INV settles to $-M^{-1}v$ and an MVM to $-Mv$. The right-hand-side parts
$b_1, b_2$ enter the MVM steps through $n_i$ extra columns holding the identity (one device of
conductance $G_0$ per row, i.e. the summing resistor of an adder), so the MVMs compute
$[\,\cdot\,, I]\,[v; b]$. Let $\sigma = \pm 1$ be the sign of the sub-solver
($V = \sigma M^{-1}v$; $\sigma = -1$ for one INV). With the MVM matrices
$[-\sigma A_{21},\, I]$ and $[\sigma A_{12},\, I]$ the held voltages are

$$V_1 = \sigma y,\quad V_2 = -t,\quad V_3 = -\sigma x_2,\quad V_4 = -u,\quad V_5 = -\sigma x_1,$$

so the block solver outputs $[V_5; V_3] = -\sigma x$: a one-stage BlockAMC (INV sub-solvers)
has sign $+1$, a two-stage one (one-stage sub-solvers) $-1$, and so on. The sign of a column
only swaps which of $G^\pm$ holds the device, so it costs nothing.

**Two-stage** (`stages=2`): each INV of a half-size block ($A_{11}$ twice, $S$ once) is itself
a one-stage BlockAMC of that block with its own digitally computed Schur complement: 9 INV of
size $\approx n/4$ and 8 MVM (6 of $n/4 \times n/2$, 2 of $n/2\times n$) in sequence.

**Scaling.** The held vectors $y, t, x_2, u$ are not rescaled: each one is its mathematical
value (up to sign) in volts, so the full chain is linear in $b$ with unit gains and the
answer needs no digital correction. The caller scales $b$ (as for a single INV) so that the
largest held voltage, reported as `max_abs_voltage`, stays inside the amplifiers' swing;
$\|y\|_\infty \le \|A_{11}^{-1}\|_\infty\|b\|_\infty$ and
$\|t\|_\infty,\|u\|_\infty \le (1 + \|A_{21}\|_\infty\|A_{11}^{-1}\|_\infty)\,\|b\|_\infty$
bound them before the solve.

**Time and energy.** The steps run one after another: the total time is the sum of the step
settling times (plus an optional fixed `t_hold` per step for the S/H and switching), and the
energy is the sum of the steps' `Solution.energy`. The held value is the output at the
moment the step settles (`sample="settled"`, the default: a controller samples as soon as the
band $\pm\varepsilon$ is reached, so the settling error of each step is passed on), or at the
end of the simulated window (`sample="final"`).

**Non-idealities** pass through: every step circuit gets the same op-amp and wire keyword
arguments (`g0`, `a0`, `f_gbw`, `r_w`, ...), and with `programming`/`offset_sigma` each
*array* is programmed once by [`amcdyn.perturb_circuit`][] with a key derived from the array
(so steps 1 and 5 use the same programmed $A_{11}$).
"""

from collections.abc import Callable, Sequence
from typing import Literal

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._circuits import INV, MVM
from ._cost import CostModel, blockamc_cost, blockamc_energy
from ._devices import AbstractDeviceStage
from ._linalg import solve
from ._mc import _check_offset_sigma, _check_programming, perturb_circuit
from ._opamp import OpAmp
from ._propagator import expm_scaled, simulate_expm
from ._simulate import simulate, simulate_analytic
from ._solution import RESULTS, STATUS_NAMES, Solution
from ._validate import check_finite, check_ndim, check_positive, is_concrete


# Keyword arguments accepted by both INV.from_matrix and MVM.from_matrix.
_SHARED_KW = ("g0", "a0", "f_gbw", "f_p2", "v_os", "r_w", "r_w_col", "p_static", "k_gbw")
# INV-only keyword arguments (the MVM steps do not get them).
_INV_KW = ("inverters", "inverter_a0", "inverter_f_gbw", "inverter_f_p2", "inverter_v_os")
# Rejected: they would change the unit gain of a step (g_in, g_f, input_mode) or quantize the
# held voltages (dac, adc), which the chain does not model.
_REJECTED_KW = ("g_in", "g_f", "input_mode", "dac", "adc")
METHODS = ("expm", "ode", "analytic")
SAMPLES = ("settled", "final")
# Severity of each RESULTS item, for "the worst status of the steps" (a status added to
# RESULTS later ranks with max_steps until it is placed here).
_SEVERITY_BY_NAME = {"settled": 0, "not_settled": 1, "max_steps": 2, "unstable": 3, "nonfinite": 4}
_SEVERITY = tuple(_SEVERITY_BY_NAME.get(name, 2) for name in STATUS_NAMES)


def _check_kwargs(kwargs: dict) -> None:
    for name in kwargs:
        if name in _REJECTED_KW:
            raise ValueError(
                f"`{name}` is not supported by BlockAMC: every step must have unit gain "
                "(current-mode INV input, MVM feedback G_f = g0) and ideal sample-and-hold"
            )
        if name not in _SHARED_KW + _INV_KW:
            raise ValueError(
                f"unknown circuit option `{name}`; BlockAMC passes these to its steps: "
                f"{', '.join(_SHARED_KW + _INV_KW)}"
            )
        value = kwargs[name]
        if name not in ("inverters",) and value is not None and np.ndim(value) > 0:
            raise ValueError(
                f"`{name}` must be a scalar: the step circuits have different sizes, got "
                f"shape {np.shape(value)}"
            )


def check_problem(a, b, stages: int) -> None:
    """Validate `a`, `b` and `stages`; for concrete `a`, check every leading block A11 and the
    matrix itself are invertible (raises `ValueError` naming the argument)."""
    check_ndim("a", a, 2)
    n = np.shape(a)[0]
    if np.shape(a) != (n, n):
        raise ValueError(f"`a` must be square, got shape {np.shape(a)}")
    check_finite("a", a)
    check_ndim("b", b, 1)
    if np.shape(b)[0] != n:
        raise ValueError(f"`b` has length {np.shape(b)[0]}, but `a` is {n} x {n}")
    check_finite("b", b)
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 0:
        raise ValueError(f"`stages` must be an int >= 0, got {stages!r}")
    if n < 2**stages:
        raise ValueError(
            f"`stages` = {stages} is too many for a {n} x {n} `a` (each stage halves the "
            f"blocks: needs n >= {2**stages})"
        )
    if is_concrete(a):
        _check_blocks(np.asarray(a, dtype=float), stages, "a")


def _check_blocks(a: np.ndarray, stages: int, name: str) -> None:
    n = a.shape[0]
    rank = np.linalg.matrix_rank(a)
    if rank < n:
        raise ValueError(f"`a`: {name} is singular (rank {rank} < {n}); nothing to solve")
    if stages == 0:
        return
    n1 = (n + 1) // 2
    a11 = a[:n1, :n1]
    r11 = np.linalg.matrix_rank(a11)
    if r11 < n1:
        raise ValueError(
            f"`a`: the leading block A11 = {name}[:{n1}, :{n1}] is singular (rank {r11} < {n1}), "
            "so BlockAMC cannot invert it; permute the rows/columns of `a` (or use fewer "
            "`stages`)"
        )
    s = a[n1:, n1:] - a[n1:, :n1] @ np.linalg.solve(a11, a[:n1, n1:])
    _check_blocks(a11, stages - 1, f"{name}.A11")
    _check_blocks(s, stages - 1, f"{name}.S")


def _worst(results: Sequence[RESULTS]) -> RESULTS:
    """The most severe of several RESULTS items (works on traced and batched items)."""
    severity = jnp.asarray(_SEVERITY)
    out = results[0]
    for r in results[1:]:
        out = RESULTS.where(severity[r._value] > severity[out._value], r, out)
    return out


def _sampled_outputs(circuit, sol: Solution) -> Float[Array, " outputs"]:
    """Outputs at the settling time, $y(t_s) = y^* - e^{J t_s} y^*$ (V): what a S/H that
    samples as soon as the band is reached holds. Not settled: the value at `t_max`."""
    dyn = circuit.dynamics()
    y_ss = dyn.steady_state()
    t = jnp.where(jnp.isfinite(sol.settling_time), sol.settling_time, sol.t_max)
    y = y_ss - expm_scaled(dyn.jacobian() * t) @ y_ss
    return dyn.outputs(y)


@eqx.filter_jit
def _step(circuit, tol, n_steps, method):
    """One step's transient and its outputs at the settling time, compiled once per circuit
    structure and method (simulation and sampling in one program, whatever `sample` is:
    compilation dominates small chains)."""
    if method == "expm":
        sol = simulate_expm(circuit, tol=tol, n_steps=n_steps, throw=False)
    elif method == "analytic":
        sol = simulate_analytic(circuit, tol=tol, n_save=0, throw=False)
    else:
        sol = simulate(circuit, tol=tol, n_save=0, throw=False)
    return sol, _sampled_outputs(circuit, sol)


@eqx.filter_jit
def _steady_outputs(circuit):
    """A step's equilibrium outputs (V), compiled once per circuit structure (also under an
    eager `jax.grad`, where each compiled call is differentiated on its own)."""
    dyn = circuit.dynamics()
    return dyn.outputs(dyn.steady_state())


@eqx.filter_jit
def _perturb(circuit, key, programming, offset_sigma):
    # Compiled: one program per circuit structure instead of many eager dispatches. Traced
    # conductances also make a `ConductanceWindow` clip silently (as in
    # `amcdyn.monte_carlo_circuit`): small targets below `g_min` go to the bottom level by
    # design of the level mapping, not by mistake.
    return perturb_circuit(circuit, key, programming=programming, offset_sigma=offset_sigma)


class _Chain:
    """Runs the steps of one BlockAMC solve (a Python-level recursion over JAX arrays)."""

    def __init__(
        self,
        *,
        kwargs,
        g_max,
        method,
        tol,
        n_steps,
        sample,
        programming,
        offset_sigma,
        key,
        hold=None,
    ):
        self.kwargs = kwargs
        self.g_max = g_max
        self.method = method
        self.tol = tol
        self.n_steps = n_steps
        self.sample = sample
        self.programming = programming
        self.offset_sigma = offset_sigma
        self.key = key
        # What a step holds: a callable circuit -> voltages (e.g. its equilibrium), or None
        # for the transient sampled as `sample` says.
        self.hold = hold
        self.circuits: list = []
        self.array_ids: dict[str, int] = {}
        self.names: list[str] = []
        self.solutions: list[Solution] = []
        self.holds: list[Array] = []

    def _g0(self, m):
        if self.g_max is None:
            return {}
        # The largest |entry| of the step's matrix sits at the top of the window.
        return {"g0": self.g_max / jnp.max(jnp.abs(m))}

    def _perturb(self, circuit, array):
        if self.programming is None and self.offset_sigma is None:
            return circuit
        idx = self.array_ids.setdefault(array, len(self.array_ids))
        k = jr.fold_in(self.key, idx)
        return _perturb(circuit, k, self.programming, self.offset_sigma)

    def _run(self, circuit, name, array):
        circuit = self._perturb(circuit, array)
        self.names.append(name)
        self.circuits.append(circuit)
        if self.hold is not None:
            v = jnp.asarray(self.hold(circuit))
            self.holds.append(v)
            return v
        sol, v = _step(circuit, jnp.asarray(self.tol), self.n_steps, self.method)
        if self.sample == "final":
            v = sol.v_final
        self.solutions.append(sol)
        self.holds.append(v)
        return v

    def inv(self, m, v, path):
        kw = dict(self.kwargs, **self._g0(m))
        circuit = INV.from_matrix(m, v, **kw)
        return self._run(circuit, f"INV({path})", path)

    def mvm(self, m, v, path):
        kw = {k: val for k, val in self.kwargs.items() if k in _SHARED_KW}
        kw.update(self._g0(m))
        circuit = MVM.from_matrix(m, v, **kw)
        return self._run(circuit, f"MVM({path})", path)

    def solve(self, a, v, stages, path):
        """Held output voltages $\\sigma A^{-1} v$ and the sign $\\sigma$."""
        if stages == 0:
            return self.inv(a, v, path), -1
        n = a.shape[0]
        n1 = (n + 1) // 2
        n2 = n - n1
        a11, a12 = a[:n1, :n1], a[:n1, n1:]
        a21, a22 = a[n1:, :n1], a[n1:, n1:]
        s = a22 - a21 @ solve(a11, a12)  # programmed digitally (amc-physics.md §8)
        pre = "" if path == "A" else path + "."
        v1, sig = self.solve(a11, v[:n1], stages - 1, pre + "A11")
        m2 = jnp.concatenate([-sig * a21, jnp.eye(n2, dtype=a.dtype)], axis=1)
        v2 = self.mvm(m2, jnp.concatenate([v1, v[n1:]]), pre + "A21")  # -t
        v3, _ = self.solve(s, v2, stages - 1, pre + "S")  # -sig x2
        m4 = jnp.concatenate([sig * a12, jnp.eye(n1, dtype=a.dtype)], axis=1)
        v4 = self.mvm(m4, jnp.concatenate([v3, v[:n1]]), pre + "A12")  # -u
        v5, _ = self.solve(a11, v4, stages - 1, pre + "A11")  # -sig x1
        return jnp.concatenate([v5, v3]), -sig


class BlockAMCSolution(eqx.Module):
    """What [`amcdyn.blockamc_solve`][] returns. Times in s, energies in J, voltages in V.

    **Fields:**

    - `solution`: $x$, decoded from the last held voltages; `exact`: $A^{-1}b$ (LU, float64
      under x64); `rel_error` $\\|x - x^*\\|_2/\\|x^*\\|_2$ and `bits` $= -\\log_2$ of it.
    - `settling_time`: total time, the sum of `step_times` plus `t_hold` per step;
      `step_times`: each step's settling time, shape `(steps,)`.
    - `energy`: the sum of `step_energies` (each step's `Solution.energy`).
    - `max_abs_voltage`: the largest held voltage of any step (V), to compare with the swing.
    - `result`: the worst [`amcdyn.RESULTS`][] of the steps (`status` gives its name);
      `step_results`: each step's code.
    - `steps`: each step's [`amcdyn.Solution`][], in order; `step_names`: e.g. `"INV(A11)"`,
      `"MVM(A21)"`, `"INV(S)"`, `"MVM(A12)"`, `"INV(A11)"` (two-stage: `"INV(A11.S)"`, ...).
    - `stages`: the number of halvings; `sign`: the sign of the final voltages ($V = \\pm x$).
    """

    solution: Float[Array, " n"]
    exact: Float[Array, " n"]
    rel_error: Float[Array, ""]
    bits: Float[Array, ""]
    settling_time: Float[Array, ""]
    step_times: Float[Array, " steps"]
    energy: Float[Array, ""]
    step_energies: Float[Array, " steps"]
    max_abs_voltage: Float[Array, ""]
    result: RESULTS
    steps: tuple[Solution, ...]
    step_names: tuple[str, ...] = eqx.field(static=True)
    stages: int = eqx.field(static=True)
    sign: int = eqx.field(static=True)

    @property
    def n_steps(self) -> int:
        return len(self.step_names)

    @property
    def status(self) -> str:
        """The worst step's status name (unbatched, concrete solutions only)."""
        return STATUS_NAMES[int(np.asarray(self.result._value))]

    def summary(self) -> dict:
        """A JSON-ready dict of the headline numbers (unbatched solutions)."""
        f = lambda x: float(np.asarray(x))
        return {
            "status": self.status,
            "stages": self.stages,
            "settling_time_s": f(self.settling_time),
            "energy_j": f(self.energy),
            "solution": [float(v) for v in np.asarray(self.solution)],
            "exact": [float(v) for v in np.asarray(self.exact)],
            "rel_error": f(self.rel_error),
            "bits": f(self.bits),
            "max_abs_voltage_v": f(self.max_abs_voltage),
            "steps": [
                {
                    "name": name,
                    "status": s.status,
                    "settling_time_s": f(s.settling_time),
                    "energy_j": f(s.energy),
                }
                for name, s in zip(self.step_names, self.steps)
            ],
            **self._hardware_summary(),
        }

    def _hardware_summary(self) -> dict:
        # Area and counts of the hardware (`amcdyn.blockamc_cost`, default `CostModel`, op-amp
        # inverters); absent when the blocks are unequal (n not divisible by 2**stages).
        n = int(np.shape(self.solution)[-1])
        if n % 2**self.stages:
            return {}
        hw = blockamc_cost(n, self.stages).summary()
        return {"area_um2": hw.pop("area_um2"), "hardware": hw}


def _check_common(
    method, sample, tol, n_steps, g_max, t_hold, programming, offset_sigma, key, kwargs
):
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    if sample not in SAMPLES:
        raise ValueError(f"`sample` must be one of {SAMPLES}, got {sample!r}")
    check_positive("tol", tol)
    if is_concrete(tol) and np.any(np.asarray(tol) >= 1):
        raise ValueError(f"`tol` must be < 1 (a relative band), got {tol!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 4:
        raise ValueError(f"`n_steps` must be an int >= 4, got {n_steps!r}")
    if g_max is not None:
        check_positive("g_max", g_max)
        if "g0" in kwargs:
            raise ValueError("pass either `g0` or `g_max`, not both")
    if "g0" in kwargs:
        check_positive("g0", kwargs["g0"])
    check_finite("t_hold", t_hold)
    if is_concrete(t_hold) and np.any(np.asarray(t_hold) < 0):
        raise ValueError(f"`t_hold` must be >= 0 (s), got {t_hold!r}")
    _check_programming(programming)
    offset_sigma = _check_offset_sigma(offset_sigma)
    if (programming is not None or offset_sigma is not None) and key is None:
        raise ValueError("`key` is required with `programming` or `offset_sigma`")
    _check_kwargs(kwargs)
    return offset_sigma


def blockamc_solve(
    a: Float[ArrayLike, "n n"],
    b: Float[ArrayLike, " n"],
    *,
    stages: int = 1,
    method: Literal["expm", "ode", "analytic"] = "expm",
    tol: float | Float[ArrayLike, ""] = 1e-3,
    n_steps: int = 64,
    sample: Literal["settled", "final"] = "settled",
    g_max: float | Float[ArrayLike, ""] | None = None,
    t_hold: float | Float[ArrayLike, ""] = 0.0,
    programming: AbstractDeviceStage | None = None,
    offset_sigma: float | None = None,
    key: PRNGKeyArray | None = None,
    throw: bool = True,
    **circuit_kwargs,
) -> BlockAMCSolution:
    r"""Solve $A x = b$ by BlockAMC: a sequence of INV and MVM transients on block arrays.

    See the module documentation (`amcdyn._blockamc`) and `docs/circuits/blockamc.md` for the
    steps, signs and scaling. Works under `jax.jit` (options static), `jax.vmap` (over `b`,
    `a`, `key`) and `jax.grad`.

    **Arguments:**

    - `a`: the matrix, shape `(n, n)`; every leading block $A_{11}$ (at each stage) must be
      invertible, and for stable steps $A_{11}$ and $S$ positive-stable (e.g. $A$ symmetric
      positive definite). Odd sizes split as $n_1 = \lceil n/2\rceil$.
    - `b`: the right-hand side, shape `(n,)` (units of 1 V).
    - `stages`: the number of halvings: 1 (one-stage), 2 (two-stage), ... ; 0 is a single INV.
    - `method`: the transient simulator of every step: `"expm"` ([`amcdyn.simulate_expm`][]),
      `"ode"` ([`amcdyn.simulate`][]) or `"analytic"` ([`amcdyn.simulate_analytic`][]).
    - `tol`: relative settling band of every step; `n_steps`: grid of the `"expm"` path.
    - `sample`: `"settled"` (hold the output at the step's settling time) or `"final"` (at the
      end of its window).
    - `g_max`: if given, each array is mapped with its own $G_0 = G_\max/\max|M|$ (S), so its
      largest entry sits at $G_\max$ (what a device window needs); else `g0` applies to all.
    - `t_hold`: S/H and switching time added per step (s).
    - `programming`, `offset_sigma`, `key`: program every array (and draw amplifier offsets)
      with [`amcdyn.perturb_circuit`][]; one key per array, derived from `key`.
    - `throw`: raise unless every step settled.
    - `**circuit_kwargs`: scalar options of [`amcdyn.INV.from_matrix`][] and
      [`amcdyn.MVM.from_matrix`][] for every step: `g0`, `a0`, `f_gbw`, `f_p2`, `v_os`, `r_w`,
      `r_w_col`, `p_static`, `k_gbw` (both), `inverters`, `inverter_*` (INV steps only).

    **Returns:** a [`amcdyn.BlockAMCSolution`][].

    **Raises:** `ValueError` naming the argument for a non-square or non-finite `a`, a `b` of
    the wrong length, `stages` too large for $n$, a singular $A$ or leading block $A_{11}$
    (concrete `a`), an unknown or unsupported circuit option, or a bad option value.
    """
    check_problem(a, b, stages)
    offset_sigma = _check_common(
        method,
        sample,
        tol,
        n_steps,
        g_max,
        t_hold,
        programming,
        offset_sigma,
        key,
        circuit_kwargs,
    )
    chain = _Chain(
        kwargs=circuit_kwargs,
        g_max=g_max,
        method=method,
        tol=tol,
        n_steps=n_steps,
        sample=sample,
        programming=programming,
        offset_sigma=offset_sigma,
        key=key,
    )
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    v_out, sign = chain.solve(a, b, stages, "A")
    x = sign * v_out
    exact = solve(a, b)
    err = jnp.linalg.norm(x - exact) / jnp.linalg.norm(exact)
    steps = tuple(chain.solutions)
    step_times = jnp.stack([s.settling_time for s in steps])
    step_energies = jnp.stack([s.energy for s in steps])
    result = _worst([s.result for s in steps])
    out = BlockAMCSolution(
        solution=x,
        exact=exact,
        rel_error=err,
        bits=-jnp.log2(err),
        settling_time=jnp.sum(step_times) + len(steps) * jnp.asarray(t_hold),
        step_times=step_times,
        energy=jnp.sum(step_energies),
        step_energies=step_energies,
        max_abs_voltage=jnp.max(jnp.stack([jnp.max(jnp.abs(h)) for h in chain.holds])),
        result=result,
        steps=steps,
        step_names=tuple(chain.names),
        stages=stages,
        sign=sign,
    )
    if throw:
        out = result.error_if(out, result != RESULTS.settled)
    return out


def _held_chain(circuit_kwargs, g_max, hold, programming, offset_sigma, key) -> _Chain:
    """A chain whose steps hold `hold(circuit)` instead of a sampled transient (the
    method/tol/n_steps/sample fields are then unused)."""
    return _Chain(
        kwargs=circuit_kwargs,
        g_max=g_max,
        method="expm",
        tol=1e-3,
        n_steps=64,
        sample="final",
        programming=programming,
        offset_sigma=offset_sigma,
        key=key,
        hold=hold,
    )


def blockamc_steady(
    a: Float[ArrayLike, "n n"],
    b: Float[ArrayLike, " n"],
    *,
    stages: int = 1,
    g_max: float | Float[ArrayLike, ""] | None = None,
    programming: AbstractDeviceStage | None = None,
    offset_sigma: float | None = None,
    key: PRNGKeyArray | None = None,
    **circuit_kwargs,
) -> Float[Array, " n"]:
    """The $t\\to\\infty$ answer of the BlockAMC chain: every step held at its equilibrium
    (finite gain, wires and programming included; no transient). Same arguments as
    [`amcdyn.blockamc_solve`][]; returns $x$. It is affine in `b`, so `jax.jacfwd` of it with
    respect to `b` is the effective inverse $\\hat A^{-1}$ of the hardware."""
    check_problem(a, b, stages)
    offset_sigma = _check_common(
        "expm", "final", 1e-3, 64, g_max, 0.0, programming, offset_sigma, key, circuit_kwargs
    )
    chain = _held_chain(circuit_kwargs, g_max, _steady_outputs, programming, offset_sigma, key)
    v_out, sign = chain.solve(jnp.asarray(a), jnp.asarray(b), stages, "A")
    return sign * v_out


def blockamc_step_circuits(
    a: Float[ArrayLike, "n n"],
    b: Float[ArrayLike, " n"],
    *,
    stages: int = 1,
    hold: Callable[[INV | MVM], Float[ArrayLike, " outputs"]] | None = None,
    g_max: float | Float[ArrayLike, ""] | None = None,
    **circuit_kwargs,
) -> list[tuple[str, INV | MVM]]:
    """The step circuits of a BlockAMC solve, in order, each fed by the voltages held from
    the previous steps (for export, e.g. to ngspice with `amcdyn.simulate_spice`).

    **Arguments:**

    - `a`, `b`, `stages`, `g_max`, `**circuit_kwargs`: as [`amcdyn.blockamc_solve`][]
      (no device programming or offsets: the nominal circuits).
    - `hold`: what a step holds for the next ones, a callable from the step circuit to its
      output voltages (V), e.g. `lambda c: simulate_spice(c).v_final` to chain ngspice runs.
      Default: the step's equilibrium outputs (the chain of `blockamc_steady`); the outputs
      at the end of the default window, `lambda c: simulate_expm(c).v_final`, reproduce
      `blockamc_solve(..., sample="final")`.

    **Returns:** a list of `(name, circuit)` pairs, e.g. `("INV(A11)", INV)`,
    `("MVM(A21)", MVM)`, `("INV(S)", INV)`, `("MVM(A12)", MVM)`, `("INV(A11)", INV)` for one
    stage. The answer is $x = \\sigma [V_5; V_3]$ with $V_k$ what step $k$ holds and
    $\\sigma = (-1)^{\\mathrm{stages}+1}$ (module docstring).

    **Raises:** `ValueError` as [`amcdyn.blockamc_solve`][].
    """
    check_problem(a, b, stages)
    _check_common("expm", "final", 1e-3, 64, g_max, 0.0, None, None, None, circuit_kwargs)
    if hold is None:
        hold = _steady_outputs
    elif not callable(hold):
        raise ValueError(f"`hold` must be a callable (circuit -> voltages) or None, got {hold!r}")
    chain = _held_chain(circuit_kwargs, g_max, hold, None, None, None)
    chain.solve(jnp.asarray(a), jnp.asarray(b), stages, "A")
    return list(zip(chain.names, chain.circuits))


def compare_blockamc(
    a: Float[ArrayLike, "n n"],
    b: Float[ArrayLike, " n"],
    key: PRNGKeyArray,
    *,
    n_samples: int = 8,
    stages: Sequence[int] = (0, 1, 2),
    programming: AbstractDeviceStage | None = None,
    offset_sigma: float | None = None,
    cost: CostModel | None = None,
    **options,
) -> dict:
    """Accuracy, time, energy and area of one big INV (`stages=0`) against BlockAMC (1, 2
    stages) on the same problem, under the same variation (`programming`, `offset_sigma`) and
    wire resistance (`r_w` in `options`).

    Sample $i$ uses the key `fold_in(key, i)` for every configuration (the arrays differ, so
    the draws do too, but the statistics are comparable). Configurations are run eagerly, one
    sample at a time (each step's compiled simulation is reused).

    **Arguments:** `a`, `b` as [`amcdyn.blockamc_solve`][]; `key`; `n_samples` (int >= 1);
    `stages`: the configurations to compare; `programming`, `offset_sigma`; `cost`: the unit
    areas of the hardware model ([`amcdyn.CostModel`][], default its defaults); `**options`:
    anything else [`amcdyn.blockamc_solve`][] takes (`r_w`, `f_gbw`, `tol`, `method`, ...).

    **Returns:** a dict keyed by stages (`0`, `1`, `2`) of dicts of NumPy arrays over samples:
    `rel_error`, `bits`, `time_s`, `energy_j` (the sum of the steps' `Solution.energy`),
    `energy_active_j` and `energy_bank_j` ([`amcdyn.blockamc_energy`][] with
    `powered="active"` / `"bank"`: the shared amplifier bank, idle amplifiers power-gated or
    not), `status`; and, when $n$ is divisible by `2**stages`, `area_um2` (float) and
    `hardware` (the counts, [`amcdyn.blockamc_cost`][]). `"median"`: for each configuration
    the medians of `rel_error`, `time_s`, `energy_j`, `energy_active_j`, `energy_bank_j` (and
    its `area_um2`). With `0` in `stages`, `"gains"`: for each other configuration, from the
    medians, `area_saving` $1 - A/A_\\mathrm{INV}$, `area_efficiency_gain`
    $A_\\mathrm{INV}/A - 1$ (same problem), `throughput_per_area_gain`
    $A_\\mathrm{INV}T_\\mathrm{INV}/(A\\,T) - 1$, `energy_efficiency_gain_active` and
    `energy_efficiency_gain_bank` $E_\\mathrm{INV}/E - 1$.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"`n_samples` must be an int >= 1, got {n_samples!r}")
    if isinstance(stages, int):
        raise ValueError(f"`stages` must be a sequence of ints, got {stages!r}")
    for s in stages:
        check_problem(a, b, s)
    if cost is not None and not isinstance(cost, CostModel):
        raise ValueError(f"`cost` must be an amcdyn.CostModel or None, got {cost!r}")
    n = int(np.shape(a)[0])
    inverters = options.get("inverters", "opamp")
    f_gbw = options.get("f_gbw", 1e8)
    # One amplifier of the bank: the op-amp model of the steps (amcdyn.OpAmp power model).
    power_kw = {k: options[k] for k in ("p_static", "k_gbw") if options.get(k) is not None}
    amp_power = OpAmp(f_gbw=f_gbw, **power_kw).power()
    out: dict = {}
    for s in stages:
        rows = {
            "rel_error": [],
            "bits": [],
            "time_s": [],
            "energy_j": [],
            "energy_active_j": [],
            "energy_bank_j": [],
            "status": [],
        }
        for i in range(n_samples):
            sol = blockamc_solve(
                a,
                b,
                stages=s,
                programming=programming,
                offset_sigma=offset_sigma,
                key=jr.fold_in(key, i),
                throw=False,
                **options,
            )
            rows["rel_error"].append(float(sol.rel_error))
            rows["bits"].append(float(sol.bits))
            rows["time_s"].append(float(sol.settling_time))
            rows["energy_j"].append(float(sol.energy))
            if n % 2**s == 0:
                for powered in ("active", "bank"):
                    e = blockamc_energy(
                        sol, amp_power=amp_power, powered=powered, inverters=inverters
                    )
                    rows[f"energy_{powered}_j"].append(float(e.energy))
            rows["status"].append(sol.status)
        out[s] = {k: np.asarray(v) for k, v in rows.items()}
        if n % 2**s == 0:
            hw = blockamc_cost(n, s, cost=cost, f_gbw=f_gbw, inverters=inverters).summary()
            out[s]["area_um2"] = hw.pop("area_um2")
            out[s]["hardware"] = hw
    keys = ("rel_error", "time_s", "energy_j", "energy_active_j", "energy_bank_j")
    out["median"] = {
        s: {k: float(np.median(out[s][k])) if len(out[s][k]) else float("nan") for k in keys}
        for s in stages
    }
    for s in stages:
        if "area_um2" in out[s]:
            out["median"][s]["area_um2"] = out[s]["area_um2"]
    if 0 in stages:
        out["gains"] = {}
        ref = out["median"][0]
        for s in stages:
            m = out["median"][s]
            if s == 0 or "area_um2" not in m:
                continue
            out["gains"][s] = {
                "area_saving": 1 - m["area_um2"] / ref["area_um2"],
                "area_efficiency_gain": ref["area_um2"] / m["area_um2"] - 1,
                "throughput_per_area_gain": ref["area_um2"]
                * ref["time_s"]
                / (m["area_um2"] * m["time_s"])
                - 1,
                "energy_efficiency_gain_active": ref["energy_active_j"] / m["energy_active_j"] - 1,
                "energy_efficiency_gain_bank": ref["energy_bank_j"] / m["energy_bank_j"] - 1,
            }
    return out
