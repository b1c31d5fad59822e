r"""HP-INV: high-precision solves by iterative refinement around a low-precision analog INV.

Scheme (amc-physics.md §10; Nature Electronics 2025). With $x_0 = 0$ and $r_0 = b$, cycle $k$:

1. scale the residual to full scale, $\tilde r = r_k/s_k$ with $s_k = \|r_k\|_\infty$;
2. solve $\hat A\,\tilde\delta = \tilde r$ on the **low-precision analog INV** (LP-INV): the
   arrays hold $A$ quantized to `bits`-bit cells ($2^\mathrm{bits}$ levels in
   $[G_\min, G_\max]$, by default 8 levels in 0.5–35 µS, each array mapped with
   $G_0 = G_\max/\max|M|$), plus any programming variation; the transient is simulated
   ([`amcdyn.INV`][] or, with `block=True`, a one-stage [`amcdyn.blockamc_solve`][] on
   half-size arrays) and its output sampled when it settles;
3. $x_{k+1} = x_k + s_k\tilde\delta$;
4. $r_{k+1} = b - A x_{k+1}$ by the **high-precision MVM** (HP-MVM).

It stops when $\|r_k\|_\infty \le 2^{-\mathrm{target\_bits}}\|b\|_\infty$ (24-bit fixed point by
default) or after `iterations` cycles.

**HP-MVM model.** The residual is computed digitally in float64 from the matrix the HP-MVM
stores: $A$ itself (`hp_slices=None`), or $A$ rounded to `hp_slices` 3-bit slices,
$A \approx \max|A|\sum_{i=1}^{S} 2^{-3i} Q_i$ with integer slices $Q_i \in \{-7..7\}$ (the
shift-and-add of exact slice products, i.e. a fixed-point $A$ with $3S$ fraction bits). The
refinement then converges to the solution of the *stored* matrix, so $S$ slices cap the
precision near $3S - \log_2\kappa$ bits. Its cost per cycle is a documented model, not a
transient: `t_mvm` (s, default 60 ns, the HP-MVM response reported in [S]) and `e_mvm` (J,
default: $S$ arrays of $n$ TIAs with the [`amcdyn.OpAmp`][] power model at `f_gbw` for
`t_mvm`; crossbar dissipation neglected).

**Convergence.** The LP-INV at steady state is a linear map $\tilde r \mapsto L\tilde r$
(finite gain, quantization, variation and wires included; $L \approx \hat A^{-1}$), obtained
exactly by `jax.jacfwd` of the steady-state chain. The residual obeys
$r_{k+1} = (I - A L)\, r_k$, so it contracts iff $\rho(I - A L) < 1$, and asymptotically by
the factor $\rho$ per cycle, i.e. $\log_2(1/\rho)$ bits per cycle (the sampling at the
settling band adds a perturbation of order `tol`). `contraction` reports $\rho$; when
$\rho \ge 1$ the refinement diverges and the status is `"not_converged"`.

`hpinv_solve` is a host-level controller (it stops on a concrete test), so it is not
`jit`/`vmap`-able; each cycle's analog transients are compiled once and reused.
`hpinv_refine` is the traceable form: exactly `iterations` cycles under `jax.lax.scan`, with
per-cycle residuals and statuses as arrays, for `jax.jit`, `jax.vmap` and `jax.grad` (gradients
through the 3-bit levels are straight-through estimates; see its docstring).

**Monte Carlo.** `hpinv_monte_carlo` runs `hpinv_solve` once per sample with the key
`fold_in(key, i)` (each sample programs its own LP-INV arrays), in a Python loop over samples
that reuses the compiled steps, with the progress line and the resumable `.npz` store of
[`amcdyn.monte_carlo`][]; `hpinv_mc_summary` summarizes it.
"""

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from ._blockamc import (
    _check_common,
    _perturb,
    _step,
    blockamc_solve,
    blockamc_steady,
    check_problem,
)
from ._circuits import INV
from ._devices import AbstractDeviceStage, ConductanceWindow, Programming
from ._linalg import solve
from ._mc import describe
from ._montecarlo import (
    _MAX_SAMPLES,
    MCResult,
    _check_count,
    _check_key,
    _check_out,
    _open_store,
    _Progress,
    _save,
)
from ._opamp import K_GBW, P_STATIC
from ._solution import RESULTS, STATUS_NAMES
from ._validate import check_finite, check_positive, is_concrete


HP_STATUS = ("converged", "not_converged") + STATUS_NAMES[1:]


class HPINVSolution(eqx.Module):
    """What [`amcdyn.hpinv_solve`][] returns. Times in s, energies in J.

    **Fields:**

    - `solution`: $x$ (float64); `exact`: $A^{-1}b$ (LU); `rel_error`:
      $\\|x - x^*\\|_\\infty/\\|x^*\\|_\\infty$ and `bits` $= -\\log_2$ of it (fixed-point bits).
    - `cycles`: refinement cycles run; `bits_history`, `residual_history`: after each cycle,
      the fixed-point bits of $x_k$ and $\\|r_k\\|_\\infty/\\|b\\|_\\infty$, shape `(cycles,)`.
    - `settling_time`: total time, the sum of `cycle_times` (analog settling + `t_mvm`);
      `analog_time`: the analog part; `energy`: the sum of `cycle_energies`.
    - `contraction`: $\\rho(I - AL)$ of the programmed LP-INV; `contraction_norm`:
      $\\|I - AL\\|_2$.
    - `max_abs_voltage`: the largest held output voltage $|V|$ of any LP-INV step of any
      cycle (V), to compare with the amplifiers' swing (0 when no cycle ran).
    - `status`: `"converged"` (target reached), `"not_converged"` (not within `iterations`,
      e.g. $\\rho \\ge 1$), or the status of a failed analog step (`"not_settled"`,
      `"unstable"`, ...), which stops the loop.
    """

    solution: Float[Array, " n"]
    exact: Float[Array, " n"]
    rel_error: Float[Array, ""]
    bits: Float[Array, ""]
    bits_history: Float[Array, " cycles"]
    residual_history: Float[Array, " cycles"]
    settling_time: Float[Array, ""]
    analog_time: Float[Array, ""]
    cycle_times: Float[Array, " cycles"]
    energy: Float[Array, ""]
    cycle_energies: Float[Array, " cycles"]
    contraction: Float[Array, ""]
    contraction_norm: Float[Array, ""]
    max_abs_voltage: Float[Array, ""]
    cycles: int = eqx.field(static=True)
    status: str = eqx.field(static=True)

    def summary(self) -> dict:
        """A JSON-ready dict of the headline numbers."""
        f = lambda x: float(np.asarray(x))
        return {
            "status": self.status,
            "cycles": self.cycles,
            "bits": f(self.bits),
            "rel_error": f(self.rel_error),
            "solution": [float(v) for v in np.asarray(self.solution)],
            "exact": [float(v) for v in np.asarray(self.exact)],
            "settling_time_s": f(self.settling_time),
            "analog_time_s": f(self.analog_time),
            "energy_j": f(self.energy),
            "contraction": f(self.contraction),
            "contraction_norm": f(self.contraction_norm),
            "max_abs_voltage_v": f(self.max_abs_voltage),
            "bits_history": [float(v) for v in np.asarray(self.bits_history)],
            "residual_history": [float(v) for v in np.asarray(self.residual_history)],
        }


def sliced_matrix(a: Float[ArrayLike, "n n"], slices: int) -> Float[Array, "n n"]:
    """$A$ as stored by `slices` 3-bit slices: $\\max|A|\\,\\mathrm{round}(A 2^{3S}/\\max|A|)
    /2^{3S}$ (the sum $\\sum_i 2^{-3i}Q_i$ of the slices' signed 3-bit digits)."""
    a = jnp.asarray(a)
    scale = jnp.max(jnp.abs(a))
    q = 2.0 ** (3 * slices)
    return scale * jnp.round(a / scale * q) / q


def _fixed_bits(x, exact):
    err = jnp.max(jnp.abs(x - exact)) / jnp.max(jnp.abs(exact))
    return err, -jnp.log2(err)


# Compiled once per shape and options: called eagerly, the linear solves' loops would be traced
# and compiled again on every call (~0.1 s each, most of a small solve's time in a Monte Carlo).
_solve = jax.jit(solve)


@eqx.filter_jit
def _lp_map(a, r, g0, programming, key, block, g_max, circuit_kwargs):
    """$L$: the Jacobian of the LP-INV's steady state in its (scaled) input `r`."""

    def lp_steady(r):
        if block:
            return blockamc_steady(
                a, r, stages=1, g_max=g_max, programming=programming, key=key, **circuit_kwargs
            )
        circuit = _perturb(INV.from_matrix(a, r, g0=g0, **circuit_kwargs), key, programming, None)
        dyn = circuit.dynamics()
        return circuit.decode(dyn.outputs(dyn.steady_state()))

    return jax.jacfwd(lp_steady)(r)


def _check_options(
    a,
    b,
    bits,
    g_min,
    g_max,
    iterations,
    target_bits,
    block,
    variation,
    key,
    hp_slices,
    t_mvm,
    e_mvm,
    method,
    tol,
    n_steps,
    circuit_kwargs,
):
    """Validate the options shared by `hpinv_solve` and `hpinv_refine` (concrete values only;
    traced ones pass); returns `(programming, key)`."""
    stages = 1 if block else 0
    check_problem(a, b, stages)
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise ValueError(f"`bits` must be an int >= 1, got {bits!r}")
    window = ConductanceWindow(g_min, g_max, levels=2**bits)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"`iterations` must be an int >= 1, got {iterations!r}")
    check_positive("target_bits", target_bits)
    if hp_slices is not None and (
        isinstance(hp_slices, bool) or not isinstance(hp_slices, int) or hp_slices < 1
    ):
        raise ValueError(f"`hp_slices` must be an int >= 1 or None, got {hp_slices!r}")
    check_finite("t_mvm", t_mvm)
    if is_concrete(t_mvm) and np.any(np.asarray(t_mvm) < 0):
        raise ValueError(f"`t_mvm` must be >= 0 (s), got {t_mvm!r}")
    if e_mvm is not None:
        check_finite("e_mvm", e_mvm)
        if is_concrete(e_mvm) and np.any(np.asarray(e_mvm) < 0):
            raise ValueError(f"`e_mvm` must be >= 0 (J), got {e_mvm!r}")
    if "g0" in circuit_kwargs:
        raise ValueError("`g0` is set per array from `g_max`; do not pass it to hpinv_solve")
    if variation is not None and key is None:
        raise ValueError("`key` is required with `variation`")
    stages_list = (window,) if variation is None else (window, variation)
    programming = Programming(stages_list)
    key = jr.PRNGKey(0) if key is None else key  # the window alone draws nothing
    _check_common(
        method, "settled", tol, n_steps, g_max, 0.0, programming, None, key, circuit_kwargs
    )
    return programming, key


def _prepare(a, b, hp_slices, g_max, programming, key, block, circuit_kwargs):
    """What both refinement loops start from: `a`, `b` as float arrays, the HP-MVM's matrix
    (bit-sliced or not), the exact solution, the LP array's G0 (gmax/max|A|) and the LP-INV's
    linear map at steady state."""
    a = jnp.asarray(a, dtype=jnp.result_type(float))
    b = jnp.asarray(b, dtype=a.dtype)
    a_hp = a if hp_slices is None else sliced_matrix(a, hp_slices)
    exact = _solve(a, b)
    g0 = g_max / jnp.max(jnp.abs(a))
    lmap = _lp_map(a, b / jnp.max(jnp.abs(b)), g0, programming, key, block, g_max, circuit_kwargs)
    return a, b, a_hp, exact, g0, lmap


def _default_e_mvm(n, hp_slices, target_bits, t_mvm, circuit_kwargs):
    """$S$ arrays of $n$ TIAs at the `OpAmp` power model for `t_mvm` (J)."""
    f_gbw = circuit_kwargs.get("f_gbw", 1e8)
    n_arrays = hp_slices if hp_slices is not None else math.ceil(target_bits / 3)
    return n_arrays * n * (P_STATIC + K_GBW * f_gbw) * t_mvm


def _lp_transient(a, r, g0, programming, key, block, g_max, method, tol, n_steps, kwargs):
    """One LP-INV solve of the scaled residual `r`: the held output decoded ($\\tilde\\delta$),
    its settling time (s), energy (J), `RESULTS` and largest held |V| (V)."""
    if block:
        sol = blockamc_solve(
            a,
            r,
            stages=1,
            g_max=g_max,
            programming=programming,
            key=key,
            method=method,
            tol=tol,
            n_steps=n_steps,
            throw=False,
            **kwargs,
        )
        return sol.solution, sol.settling_time, sol.energy, sol.result, sol.max_abs_voltage
    circuit = INV.from_matrix(a, r, g0=g0, **kwargs)
    if circuit.inverters != "none" and is_concrete(a) and not np.any(np.asarray(a) < 0):
        # Under a trace (`hpinv_refine`'s scan) `INV.from_matrix` tests the signs of `a` after
        # converting it to a tracer, and builds inverters that an eager call would not (they
        # would drive only absent devices but add their power): the eager topology.
        circuit = dataclasses.replace(circuit, inverters="none", inverter=None)
    circuit = _perturb(circuit, key, programming, None)
    sol, v = _step(circuit, jnp.asarray(tol), n_steps, method)
    return circuit.decode(v), sol.settling_time, sol.energy, sol.result, jnp.max(jnp.abs(v))


def hpinv_solve(
    a: Float[ArrayLike, "n n"],
    b: Float[ArrayLike, " n"],
    *,
    bits: int = 3,
    g_min: float = 0.5e-6,
    g_max: float = 35e-6,
    iterations: int = 20,
    target_bits: float = 24.0,
    block: bool = False,
    variation: AbstractDeviceStage | None = None,
    key: PRNGKeyArray | None = None,
    hp_slices: int | None = None,
    t_mvm: float = 60e-9,
    e_mvm: float | None = None,
    method: Literal["expm", "ode", "analytic"] = "expm",
    tol: float = 1e-3,
    n_steps: int = 64,
    **circuit_kwargs,
) -> HPINVSolution:
    r"""Solve $Ax = b$ to high precision by analog iterative refinement (HP-INV).

    See the module documentation (`amcdyn._hpinv`) and `docs/circuits/hpinv.md`.

    **Arguments:**

    - `a`: the matrix, shape `(n, n)` (for a stable LP-INV, e.g. symmetric positive definite);
      `b`: the right-hand side, shape `(n,)`.
    - `bits`: bits per LP-INV cell ($2^\mathrm{bits}$ levels); `g_min`, `g_max`: the device
      window (S).
    - `iterations`: the most cycles; `target_bits`: stop at
      $\|r\|_\infty \le 2^{-\mathrm{target\_bits}}\|b\|_\infty$.
    - `block`: solve on half-size arrays with a one-stage BlockAMC (16 × 16 on 8 × 8 arrays).
    - `variation`, `key`: a device stage applied after the level mapping (e.g.
      `amcdyn.Variation(0.05)`), and its key; each array is programmed once and reused by
      every cycle.
    - `hp_slices`: 3-bit slices of the HP-MVM's copy of $A$ (`None`: exact float64 $A$).
    - `t_mvm`, `e_mvm`: time (s) and energy (J) of one HP-MVM (see the module docs).
    - `method`, `tol`, `n_steps`: the LP-INV transient simulation (as
      [`amcdyn.blockamc_solve`][]); the output is held at the settling time.
    - `**circuit_kwargs`: scalar op-amp and wire options of the analog steps (`a0`, `f_gbw`,
      `r_w`, `inverters`, ...); not `g0` (set per array from `g_max`).

    **Returns:** an [`amcdyn.HPINVSolution`][].

    **Raises:** `ValueError` naming the argument for bad shapes or values (as
    [`amcdyn.blockamc_solve`][]), `bits` not an int >= 1, `g_max <= g_min`, `iterations` not
    an int >= 1, a non-positive `target_bits`, or `hp_slices` not an int >= 1.
    """
    programming, key = _check_options(
        a,
        b,
        bits,
        g_min,
        g_max,
        iterations,
        target_bits,
        block,
        variation,
        key,
        hp_slices,
        t_mvm,
        e_mvm,
        method,
        tol,
        n_steps,
        circuit_kwargs,
    )
    a, b, a_hp, exact, g0, lmap = _prepare(
        a, b, hp_slices, g_max, programming, key, block, circuit_kwargs
    )
    n = a.shape[0]
    if e_mvm is None:
        e_mvm = float(_default_e_mvm(n, hp_slices, target_bits, t_mvm, circuit_kwargs))

    # The contraction of the refinement, from the LP-INV's linear map at steady state.
    e_mat = np.asarray(jnp.eye(n, dtype=a.dtype) - a_hp @ lmap)
    rho = float(np.max(np.abs(np.linalg.eigvals(e_mat))))
    rho_norm = float(np.linalg.norm(e_mat, 2))

    def lp_transient(r):
        return _lp_transient(
            a, r, g0, programming, key, block, g_max, method, tol, n_steps, circuit_kwargs
        )

    x = jnp.zeros(n, a.dtype)
    r = b
    b_norm = float(jnp.max(jnp.abs(b)))
    bits_hist, res_hist, times, energies = [], [], [], []
    analog = 0.0
    peak = 0.0
    status = "not_converged"
    for _ in range(iterations):
        scale = jnp.max(jnp.abs(r))
        delta, t_a, e_a, result, v_peak = lp_transient(r / scale)
        code = int(np.asarray(result._value))
        if code != RESULTS.settled._value:
            status = STATUS_NAMES[code]
            break
        x = x + scale * delta
        r = b - a_hp @ x
        analog += float(t_a)
        peak = max(peak, float(v_peak))
        times.append(float(t_a) + t_mvm)
        energies.append(float(e_a) + e_mvm)
        bits_hist.append(float(_fixed_bits(x, exact)[1]))
        rel_res = float(jnp.max(jnp.abs(r))) / b_norm
        res_hist.append(rel_res)
        if rel_res <= 2.0 ** (-target_bits):
            status = "converged"
            break
    err, fixed_bits = _fixed_bits(x, exact)
    # `device_put`, not `jnp.asarray`: the latter compiles a transfer for every new length.
    arr = lambda v: jax.device_put(np.asarray(v, dtype=float))
    return HPINVSolution(
        solution=x,
        exact=exact,
        rel_error=err,
        bits=fixed_bits,
        bits_history=arr(bits_hist),
        residual_history=arr(res_hist),
        settling_time=arr(sum(times)),
        analog_time=arr(analog),
        cycle_times=arr(times),
        energy=arr(sum(energies)),
        cycle_energies=arr(energies),
        contraction=arr(rho),
        contraction_norm=arr(rho_norm),
        max_abs_voltage=arr(peak),
        cycles=len(times),
        status=status,
    )


_STATUS_OFFSET = len(HP_STATUS) - len(STATUS_NAMES)  # RESULTS code c >= 1 -> HP_STATUS c + 1


class HPINVTrace(eqx.Module):
    """What [`hpinv_refine`][amcdyn._hpinv.hpinv_refine] returns: exactly `iterations` cycles,
    everything as arrays (so it batches under `jax.vmap`). Times in s, energies in J.

    **Fields:** (K = `iterations`)

    - `solution`: $x_K$ (float64); `exact`: $A^{-1}b$ (LU); `rel_error`:
      $\\|x_K - x^*\\|_\\infty/\\|x^*\\|_\\infty$ and `bits` $= -\\log_2$ of it.
    - `residual_history`, `bits_history`: after each cycle, $\\|r_k\\|_\\infty/\\|b\\|_\\infty$
      and the fixed-point bits of $x_k$, shape `(K,)`.
    - `cycle_status`: shape `(K,)`, the `RESULTS` code of each cycle's LP-INV transient (an
      index into `amcdyn.STATUS_NAMES`: 0 settled, 1 not_settled, 2 unstable, ...).
    - `applied`: shape `(K,)`, whether the cycle's update was applied: a cycle is applied iff
      its LP-INV settled and every earlier one did. After the first failed cycle $x$ and $r$
      stay frozen (what `hpinv_solve` returns when it stops there), and the failure is in
      `status`, never a silent number.
    - `cycle_times`, `cycle_energies`: shape `(K,)`, LP-INV settling time + `t_mvm` and
      LP-INV energy + `e_mvm` of each attempted cycle; `settling_time`, `analog_time`, `energy`:
      their sums over the applied cycles.
    - `cycles`: the number of applied cycles (int32).
    - `cycles_to_target`: the first cycle $k$ (1-based) with
      $\\|r_k\\|_\\infty \\le 2^{-\\mathrm{target\\_bits}}\\|b\\|_\\infty$, where `hpinv_solve`
      would stop, or 0 if no applied cycle reaches it (int32); `time_to_target`: the sum of
      `cycle_times` up to that cycle (s; $+\\infty$ if none).
    - `contraction`, `contraction_norm`: $\\rho(I - AL)$ and $\\|I - AL\\|_2$ of the programmed
      LP-INV (no gradient: `stop_gradient`).
    - `max_abs_voltage`: the largest held LP-INV output of the applied cycles (V).
    - `status`: an index into `HP_STATUS` (int32): 0 `"converged"` (the final residual is at
      or below the target), 1 `"not_converged"`, or 2 + the `RESULTS` code of the first
      failed cycle minus 1 (`"not_settled"`, `"unstable"`, ...). `status_name` gives the name
      (concrete, unbatched values only).
    """

    solution: Float[Array, " n"]
    exact: Float[Array, " n"]
    rel_error: Float[Array, ""]
    bits: Float[Array, ""]
    residual_history: Float[Array, " cycles"]
    bits_history: Float[Array, " cycles"]
    cycle_status: Int[Array, " cycles"]
    applied: Bool[Array, " cycles"]
    cycle_times: Float[Array, " cycles"]
    cycle_energies: Float[Array, " cycles"]
    settling_time: Float[Array, ""]
    analog_time: Float[Array, ""]
    energy: Float[Array, ""]
    cycles: Int[Array, ""]
    cycles_to_target: Int[Array, ""]
    time_to_target: Float[Array, ""]
    contraction: Float[Array, ""]
    contraction_norm: Float[Array, ""]
    max_abs_voltage: Float[Array, ""]
    status: Int[Array, ""]

    @property
    def status_name(self) -> str:
        """The name of `status` in `HP_STATUS` (needs a concrete, unbatched `status`)."""
        return HP_STATUS[int(np.asarray(self.status))]


def hpinv_refine(
    a: Float[ArrayLike, "n n"],
    b: Float[ArrayLike, " n"],
    *,
    iterations: int,
    bits: int = 3,
    g_min: float | Float[ArrayLike, ""] = 0.5e-6,
    g_max: float | Float[ArrayLike, ""] = 35e-6,
    target_bits: float = 24.0,
    block: bool = False,
    variation: AbstractDeviceStage | None = None,
    key: PRNGKeyArray | None = None,
    hp_slices: int | None = None,
    t_mvm: float | Float[ArrayLike, ""] = 60e-9,
    e_mvm: float | Float[ArrayLike, ""] | None = None,
    method: Literal["expm", "ode", "analytic"] = "expm",
    tol: float | Float[ArrayLike, ""] = 1e-3,
    n_steps: int = 64,
    **circuit_kwargs,
) -> HPINVTrace:
    r"""HP-INV as one traceable computation: exactly `iterations` refinement cycles.

    The same cycle as [`amcdyn.hpinv_solve`][] (scale the residual, LP-INV transient held at
    its settling time, update, HP-MVM residual), run under `jax.lax.scan` with no host-side
    stop, so it works under `jax.jit`, `jax.vmap` (over `b`, `key`, `g_max`, op-amp options,
    ...) and `jax.grad`. Per-cycle residuals, bits, times, energies and statuses are returned
    as arrays. For the same number of cycles it gives the host loop's answer (to rounding,
    ~1e-15 relative: the scan is one compiled program): with $K$ = `hpinv_solve(...).cycles`
    its `solution` and histories are `hpinv_solve`'s. Cycles after the target is reached keep
    refining (down to the float64 floor); `cycles_to_target` says where the host loop stops.
    A cycle whose LP-INV did not settle is not applied and freezes the state (see
    [`HPINVTrace`][amcdyn._hpinv.HPINVTrace]).

    **Gradients.** The map $b \mapsto x_K$ is differentiated exactly, cycle by cycle: the
    scale $\|r_k\|_\infty$ (piecewise smooth: a kink where two entries tie), the LP-INV
    transient and its hold time (the settling time moves with the parameters; its derivative
    is the implicit one of the band crossing, valid while the last crossing stays on the same
    output and lobe; on the `"expm"` path the crossing is located on a grid interpolant whose
    spacing carries no gradient, ~1e-4 relative on a settling time), and the HP-MVM.
    With respect to `b`, `t_mvm`, `e_mvm` and op-amp or wire options (`a0`, `f_gbw`, `r_w`,
    ...) this is the true derivative, since the programmed conductances do not depend on them.
    With respect to `a`, `g_min` and `g_max` the gradient passes through the level
    quantization of `amcdyn.ConductanceWindow`, which uses a *straight-through estimator*
    (forward: the exact level; backward: rounding treated as the identity, plus the levels'
    own dependence on `g_min`, `g_max`): a useful surrogate for design, not the derivative of
    the piecewise-constant programmed map, and finite differences do not reproduce it.
    `hp_slices` rounds the HP-MVM's copy of $A$ with zero derivative. `contraction` and
    `contraction_norm` carry no gradient.

    **Arguments:** as [`amcdyn.hpinv_solve`][], except:

    - `iterations`: the number of cycles $K$ (an int >= 1; static). Every cycle runs, whatever
      the residual.
    - `target_bits`: only defines `cycles_to_target`, `time_to_target` and `status`.
    - `g_min`, `g_max`, `t_mvm`, `e_mvm`, `tol` and scalar `circuit_kwargs` values may be
      traced (JAX arrays). `a` should be concrete (a closure under `jit`): for a traced `a`
      the LP-INV builds inverters for every column, as `amcdyn.INV.from_matrix` does, so its
      structure differs from the host loop's for a matrix with no negative entry. With
      `block=True` the BlockAMC steps are always built from traced blocks, so they all have
      op-amp inverters: same outputs and times, more amplifier energy (measured +1.8 % for
      n = 4).

    **Returns:** an [`HPINVTrace`][amcdyn._hpinv.HPINVTrace].

    **Raises:** `ValueError` naming the argument, as [`amcdyn.hpinv_solve`][] (for concrete
    values).
    """
    programming, key = _check_options(
        a,
        b,
        bits,
        g_min,
        g_max,
        iterations,
        target_bits,
        block,
        variation,
        key,
        hp_slices,
        t_mvm,
        e_mvm,
        method,
        tol,
        n_steps,
        circuit_kwargs,
    )
    dtype = jnp.result_type(float)
    # The LP-INV gets `a` as NumPy when it is concrete: under `jit` even `jnp.asarray` of a
    # constant is traced, and `INV.from_matrix` decides on inverters from a concrete `a`.
    a_lp = np.asarray(a, dtype=dtype) if is_concrete(a) else a
    a, b, a_hp, exact, g0, lmap = _prepare(
        a, b, hp_slices, g_max, programming, key, block, circuit_kwargs
    )
    n = a.shape[0]
    t_mvm = jnp.asarray(t_mvm, dtype)
    if e_mvm is None:
        e_mvm = _default_e_mvm(n, hp_slices, target_bits, t_mvm, circuit_kwargs)
    e_mvm = jnp.asarray(e_mvm, dtype)
    b_norm = jnp.max(jnp.abs(b))
    e_mat = jax.lax.stop_gradient(jnp.eye(n, dtype=dtype) - a_hp @ lmap)
    rho = jnp.max(jnp.abs(jnp.linalg.eigvals(e_mat))).astype(dtype)
    # The barrier orders the two LAPACK calls: under `vmap` two batched LAPACK kernels running
    # at once can deadlock on CPU (jaxlib 0.10).
    rho, e_mat = jax.lax.optimization_barrier((rho, e_mat))
    rho_norm = jnp.sqrt(jnp.max(jnp.linalg.eigvalsh(e_mat.T @ e_mat)))

    def cycle(carry, _):
        x, r, ok = carry
        scale = jnp.max(jnp.abs(r))
        delta, t_a, e_a, result, v_peak = _lp_transient(
            a_lp,
            r / scale,
            g0,
            programming,
            key,
            block,
            g_max,
            method,
            tol,
            n_steps,
            circuit_kwargs,
        )
        code = result._value
        apply = ok & (code == RESULTS.settled._value)
        x = jnp.where(apply, x + scale * delta, x)
        r = jnp.where(apply, b - a_hp @ x, r)
        out = (
            jnp.max(jnp.abs(r)) / b_norm,
            _fixed_bits(x, exact)[1],
            code.astype(jnp.int32),
            apply,
            t_a + t_mvm,
            e_a + e_mvm,
            t_a,
            v_peak,
        )
        return (x, r, apply), out

    init = (jnp.zeros(n, dtype), b, jnp.asarray(True))
    (x, _, _), hist = jax.lax.scan(cycle, init, None, length=iterations)
    res, bits_hist, codes, applied, times, energies, analog, peaks = hist

    zero = jnp.zeros((), dtype)
    used = lambda v: jnp.where(applied, v, zero)  # noqa: E731
    reached = applied & (res <= 2.0 ** (-target_bits))
    first = jnp.argmax(reached)
    any_reached = jnp.any(reached)
    cycles_to_target = jnp.where(any_reached, first + 1, 0).astype(jnp.int32)
    upto = jnp.arange(iterations) <= first
    time_to_target = jnp.where(any_reached, jnp.sum(jnp.where(upto, times, zero)), jnp.inf)
    failed = ~applied
    first_fail = jnp.argmax(failed)
    fail_code = codes[first_fail] + _STATUS_OFFSET
    ok_code = jnp.where(res[-1] <= 2.0 ** (-target_bits), 0, 1)
    status = jnp.where(jnp.any(failed), fail_code, ok_code).astype(jnp.int32)
    err, fixed_bits = _fixed_bits(x, exact)
    return HPINVTrace(
        solution=x,
        exact=exact,
        rel_error=err,
        bits=fixed_bits,
        residual_history=res,
        bits_history=bits_hist,
        cycle_status=codes,
        applied=applied,
        cycle_times=times,
        cycle_energies=energies,
        settling_time=jnp.sum(used(times)),
        analog_time=jnp.sum(used(analog)),
        energy=jnp.sum(used(energies)),
        cycles=jnp.sum(applied).astype(jnp.int32),
        cycles_to_target=cycles_to_target,
        time_to_target=time_to_target,
        contraction=rho,
        contraction_norm=rho_norm,
        max_abs_voltage=jnp.max(used(peaks)),
        status=status,
    )


# --------------------------------------------------------------------------------------------
# Monte Carlo over device variation

_MC_FORMAT = "amcdyn.hpinv_monte_carlo/1"
# Per-sample fields and their stored dtypes (fixed, so that a file written with or without x64
# resumes the same way).
_MC_FIELDS = {
    "settling_time": "float64",
    "analog_time": "float64",
    "energy": "float64",
    "rel_error": "float64",
    "bits": "float64",
    "contraction": "float64",
    "max_abs_output": "float64",
    "cycles": "int32",
    "status": "int32",
}
# `out` is rewritten at most this often (s), and always at the end or on an interruption: one
# sample takes ~0.1-1 s, and rewriting the whole file after each of 10^4 samples would write
# gigabytes.
_MC_SAVE_EVERY_S = 2.0


def hpinv_monte_carlo(
    a: Float[ArrayLike, "n n"],
    b: Float[ArrayLike, " n"],
    key: PRNGKeyArray,
    n_samples: int,
    *,
    variation: AbstractDeviceStage | None = None,
    out: str | None = None,
    progress: bool = True,
    callback: Callable[[int, int], None] | None = None,
    **hpinv_kwargs,
) -> MCResult:
    r"""Monte Carlo of HP-INV over device variation: one [`amcdyn.hpinv_solve`][] per sample.

    Sample $i$ (for $i = 0, \dots, n_\mathrm{samples}-1$) is
    `hpinv_solve(a, b, variation=variation, key=jax.random.fold_in(key, i), **hpinv_kwargs)`:
    every LP-INV array is programmed (levels, then `variation`) with the sample's own draws and
    reused by all cycles of that sample. The HP-MVM is digital here (exact $A$ or its 3-bit
    slices), so it has no variation. Sample $i$ depends only on `key`, $i$ and the
    configuration, so the results do not depend on interruptions and resumes.

    The refinement loop stops on a concrete test, so the samples run one after the other in a
    Python loop (not in compiled batches as [`amcdyn.monte_carlo`][]); each sample's analog
    steps are compiled on the first sample and reused by all others (same shapes, same
    options). Progress and the resumable file are those of [`amcdyn.monte_carlo`][].

    **Arguments:**

    - `a`, `b`: the problem, as [`amcdyn.hpinv_solve`][].
    - `key`: a PRNG key (`jax.random.key(seed)` or a legacy `jax.random.PRNGKey(seed)`).
    - `n_samples`: number of samples, an int in $[1, 2^{32}]$.
    - `variation`: the device stage applied after the level mapping, e.g.
      `amcdyn.Variation(0.05)`; `None`: no random draw (every sample is the nominal solve).
    - `out`: a `.npz` path, the resumable store of [`amcdyn.monte_carlo`][]: the samples done
      so far are written atomically (temporary file, fsync, rename) at most every 2 s, at the
      end, and when the run is interrupted (an exception, `KeyboardInterrupt` included); an
      existing file of the same configuration ($A$, $b$, `variation`, options, `n_samples`,
      key) is resumed (finished samples are not recomputed), one of another configuration is
      refused with a `ValueError` and left untouched.
    - `progress`: a progress line on stderr (samples done, samples/s, ETA).
    - `callback`: called as `callback(n_done, n_samples)` after each sample; an exception it
      raises stops the run (and propagates) with `out` holding every finished sample.
    - `**hpinv_kwargs`: the other options of [`amcdyn.hpinv_solve`][] (`bits`, `g_min`,
      `g_max`, `iterations`, `target_bits`, `block`, `hp_slices`, `t_mvm`, `e_mvm`, `method`,
      `tol`, `n_steps`, op-amp and wire options).

    **Returns:** an [`amcdyn.MCResult`][] with per-sample fields `settling_time` (the total
    time, s: analog settling plus `t_mvm` over all cycles), `analog_time` (s), `energy` (J),
    `rel_error` and `bits` (fixed-point, against the exact solution of $A$), `cycles`,
    `contraction` ($\rho(I - AL)$), `max_abs_output` (the largest held LP-INV output, V) and
    `status` (an index into `HP_STATUS`: 0 converged, 1 not_converged, 2 not_settled,
    3 unstable, 4 nonfinite, 5 max_steps). `stats` as [`amcdyn.monte_carlo`][]'s, with
    `chunk_size` 1, `compile_s` the wall time of the first sample this call computed (it
    includes the one-time compilation) and `sample_s` the wall time of each computed sample.
    Summarize it with [`hpinv_mc_summary`][amcdyn._hpinv.hpinv_mc_summary] (status names of
    HP-INV; the yield is the converged fraction).

    **Raises:** `ValueError` naming the argument for a bad `a`, `b`, `key`, `n_samples`,
    `variation`, `out` or option (as [`amcdyn.hpinv_solve`][]), or an `out` from another
    configuration or not readable.
    """
    n_samples = _check_count("n_samples", n_samples, _MAX_SAMPLES)
    _check_key(key)
    if variation is not None and not isinstance(variation, AbstractDeviceStage):
        raise ValueError(
            "`variation` must be an AbstractDeviceStage (e.g. amcdyn.Variation(0.05)) or None, "
            f"got {variation!r}"
        )
    if not isinstance(progress, bool):
        raise ValueError(f"`progress` must be a bool, got {progress!r}")
    if callback is not None and not callable(callback):
        raise ValueError(f"`callback` must be callable, got {callback!r}")
    check_problem(a, b, 1 if hpinv_kwargs.get("block", False) else 0)
    out = _check_out(out)
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)

    config = {
        "format": _MC_FORMAT,
        "a": describe(a),
        "b": describe(b),
        "variation": describe(variation),
        "options": describe(dict(sorted(hpinv_kwargs.items()))),
        "x64": bool(jax.config.jax_enable_x64),
    }
    try:
        config = json.loads(json.dumps(config, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"`hpinv_kwargs` must be JSON-describable options: {e}") from e
    done, meta, n_done = _open_store(out, config, n_samples, key, _MC_FIELDS)
    n_resumed = n_done

    writer = out is not None and jax.process_index() == 0
    n_saved = n_done
    last_save = time.perf_counter()
    bar = _Progress(progress, n_samples, n_done)
    sample_s: list[float] = []
    t0 = time.perf_counter()
    try:
        while n_done < n_samples:
            t = time.perf_counter()
            sol = hpinv_solve(
                a, b, variation=variation, key=jr.fold_in(key, n_done), **hpinv_kwargs
            )
            row = {
                "settling_time": sol.settling_time,
                "analog_time": sol.analog_time,
                "energy": sol.energy,
                "rel_error": sol.rel_error,
                "bits": sol.bits,
                "contraction": sol.contraction,
                "max_abs_output": sol.max_abs_voltage,
                "cycles": sol.cycles,
                "status": HP_STATUS.index(sol.status),
            }
            for name, v in row.items():
                done[name][n_done] = np.asarray(v)
            n_done += 1
            sample_s.append(time.perf_counter() - t)
            now = time.perf_counter()
            if writer and (n_done == n_samples or now - last_save >= _MC_SAVE_EVERY_S):
                _save(out, meta, done, n_done)
                n_saved, last_save = n_done, time.perf_counter()
            bar.update(n_done, final=n_done == n_samples)
            if callback is not None:
                callback(n_done, n_samples)
    finally:
        if bar.tty and n_done < n_samples:
            sys.stderr.write("\n")
        if writer and n_saved < n_done:  # interrupted between saves: keep every finished sample
            with contextlib.suppress(Exception):
                _save(out, meta, done, n_done)
    run_s = time.perf_counter() - t0
    n_computed = n_done - n_resumed
    stats = {
        "chunk_size": 1,
        "n_devices": 1,
        "n_resumed": n_resumed,
        "n_computed": n_computed,
        "compile_s": sample_s[0] if sample_s else 0.0,
        "run_s": run_s,
        "samples_per_s": n_computed / run_s if n_computed and run_s > 0 else math.nan,
        "sample_s": sample_s,
    }
    return MCResult(samples=done, n_samples=n_samples, stats=stats)


def hpinv_mc_summary(
    res: MCResult,
    quantiles: Sequence[float] = (0.05, 0.5, 0.95),
    *,
    max_rel_error: float | None = None,
) -> dict:
    r"""The summary of an [`hpinv_monte_carlo`][amcdyn._hpinv.hpinv_monte_carlo] run.

    `res.summary(quantiles, status_field="status", max_rel_error=max_rel_error)` (quantiles of
    every field, `settle_all` counting a sample that did not converge as $+\infty$, the yield
    and its standard error) with `status_counts` by HP-INV status name (every name of
    `HP_STATUS`, zeros included). The yield is the fraction of converged samples (and, with
    `max_rel_error`, of those with `rel_error <= max_rel_error`).

    **Raises:** `ValueError` as `MCResult.summary`, or when `res` has no `status` field.
    """
    if "status" not in res.samples:
        raise ValueError("`res` must come from hpinv_monte_carlo (it has no `status` field)")
    s = res.summary(quantiles, status_field="status", max_rel_error=max_rel_error)
    codes = np.asarray(res["status"])
    s["status_counts"] = {name: int(np.sum(codes == i)) for i, name in enumerate(HP_STATUS)}
    return s
