"""`simulate` (diffrax ODE path) and `simulate_analytic` (eigendecomposition path)."""

import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._circuits import AbstractCircuit
from ._linalg import solve
from ._observe import SettleObserver, StopWhenSettled, resolve_implicit_tolerances
from ._rk import Unrolled
from ._solution import RESULTS, Solution
from ._validate import check_flag, check_positive, is_concrete


# Settling band is checked against max|v_steady|; a zero steady state falls back to 1 V.
_STIFF_RATIO = 100.0  # above this ratio of decay rates, `solver=None` picks an implicit method
_DIVERGED = 1e3  # a deviation of 1000 full scales during the transient means divergence
# Checkpoints of the default reverse-mode adjoint. diffrax's own default, O(sqrt(max_steps)),
# is 180 for max_steps = 16384, and the checkpointed loop's cost per step grows with the number
# of checkpoints; an AMC transient takes 20-60 steps (explicit RK), and up to about 2000 steps
# 64 checkpoints still recompute each step at most once (online treeverse). Measured on the
# benchmark's INV gradients (studies/bench_core.py, 256 circuits): 2-10 % faster at N = 16
# and 64, same values.
_CHECKPOINTS = 64
# First step of an adaptive controller, in the scaled time tau = w_ref t (w_ref = 2 pi max
# f_GBW, so the loop's rates are O(1) or less). diffrax's own initial-step heuristic (dt0=None)
# costs two more field evaluations and, from rest, starts at 0.01, so the first two steps are
# spent growing the step tenfold each. Measured on the benchmark's 1024 INV circuits at N = 16
# (stop when settled): 16 -> 15 steps (median), 18.1 -> 14.4 us per circuit, settling time
# against the eigendecomposition 1.7e-3 -> 1.5e-3 (largest), 1.3e-4 -> 1.4e-4 (median).
_DT0 = 0.1


@jax.custom_jvp
def _eig(a):
    lam, v = jnp.linalg.eig(a)
    return lam, v


@_eig.defjvp
def _eig_jvp(primals, tangents):
    # jnp.linalg.eig has no eigenvector derivative. For a diagonalizable matrix with distinct
    # eigenvalues, A = V L V^-1 gives dL = diag(V^-1 dA V) and dV = V (F * (V^-1 dA V)) with
    # F_ij = 1/(l_j - l_i) off the diagonal. This fixes the gauge of each eigenvector (no
    # component along itself); every quantity amcdyn derives (V^-1 y0 scaled back by V) is
    # gauge-invariant. Degenerate pairs get F = 0.
    (a,), (da,) = primals, tangents
    lam, v = _eig(a)
    ctype = lam.dtype
    vinv_da_v = solve(v, da.astype(ctype) @ v)
    diff = lam[None, :] - lam[:, None]
    tiny = jnp.finfo(a.dtype).eps * jnp.max(jnp.abs(lam)) * 16
    f = jnp.where(jnp.abs(diff) > tiny, 1 / jnp.where(jnp.abs(diff) > tiny, diff, 1), 0)
    dlam = jnp.diagonal(vinv_da_v)
    dv = v @ (f * vinv_da_v)
    return (lam, v), (dlam, dv)


def _time_unit(circuit: AbstractCircuit):
    # Integrate in tau = w_ref * t so that a step is O(1) whatever f_GBW is (float32 friendly).
    # The answer does not depend on this choice, so it carries no gradient.
    return jax.lax.stop_gradient(2 * math.pi * jnp.max(circuit.amplifier_gbw()))


def _eig_summary(lam, w_ref):
    maxre = jnp.max(lam.real)
    slow = jnp.argmax(lam.real)
    stable = maxre < -1e-9 * w_ref
    tau = jnp.where(stable, -1 / maxre, jnp.inf)
    osc = jnp.abs(lam[slow].imag) > 1e-6 * jnp.abs(lam[slow])
    return maxre, tau, osc, stable


def _default_t_max(maxre, stable, tol, w_ref):
    # Stable: the slowest mode needs ln(1/tol)/r; take 1.5 ln(10/tol)/r to leave room for
    # mode amplitudes above full scale (non-normal matrices) and oscillatory approach.
    # Unstable: run long enough to see the offending mode grow by ~1000x.
    settle = 1.5 * jnp.log(10 / tol) / jnp.maximum(-maxre, 1e-12 * w_ref)
    grow = jnp.log(1e3) / jnp.maximum(maxre, 1e-3 * w_ref)
    return jax.lax.stop_gradient(jnp.where(stable, settle, grow))


def _settling_or_flag(t_settle, result):
    """The settling time when settled; inf when not settled in time; nan when it never can."""
    never = (result == RESULTS.unstable) | (result == RESULTS.nonfinite)
    return jnp.where(result == RESULTS.settled, t_settle, jnp.where(never, jnp.nan, jnp.inf))


def _energy(circuit, t_settle, result, e_resistive):
    """(amplifier power (W), energy of one solve (J)) given the resistive energy over
    [0, t_settle]; inf/nan exactly when the settling time is."""
    dtype = jnp.result_type(t_settle)
    power = circuit.amplifier_power().astype(dtype)
    t_s = jnp.where(result == RESULTS.settled, t_settle, 0)
    e = power * t_s + e_resistive + circuit.converter_energy().astype(dtype)
    return power, _settling_or_flag(e.astype(dtype), result)


def _quadratic_power(circuit, y_ss):
    """(Q, g, q_ss) with resistive power q(y* + e) = q_ss + g.e + e^T Q e (W): exact for the
    quadratic `circuit.resistive_power`, derived by autodiff at the equilibrium."""
    power = circuit.resistive_power
    return jax.hessian(power)(y_ss) / 2, jax.grad(power)(y_ss), power(y_ss)


def _rel_error(x, x_exact):
    err = jnp.linalg.norm(x - x_exact) / jnp.linalg.norm(x_exact)
    return err, -jnp.log2(err)


def _prelude(circuit, tol, t_max, stability):
    """What the time-domain paths share: the equilibrium and full scale, the time unit, the
    eigenvalue summary (if `stability`) and the end time."""
    dyn = circuit.dynamics()
    dtype = dyn.dtype
    tol = tol.astype(dtype)
    y_ss = dyn.steady_state()
    v_ss = dyn.outputs(y_ss)
    fs = jnp.max(jnp.abs(v_ss))
    fs_safe = jnp.where(fs > 0, fs, 1.0)
    w_ref = _time_unit(circuit).astype(dtype)
    if stability:
        lam = jnp.linalg.eigvals(jax.lax.stop_gradient(dyn.jacobian()))
        maxre, tau_slow, osc, stable = _eig_summary(lam, w_ref)
    else:
        lam = None
        maxre, tau_slow = jnp.asarray(jnp.nan, dtype), jnp.asarray(jnp.nan, dtype)
        osc, stable = jnp.asarray(False), jnp.asarray(True)
    t_end = _default_t_max(maxre, stable, tol, w_ref) if t_max is None else t_max.astype(dtype)
    return dyn, dtype, tol, y_ss, v_ss, fs_safe, w_ref, lam, maxre, tau_slow, osc, stable, t_end


def _check_options(tol, t_max, n_save):
    check_positive("tol", tol)
    if is_concrete(tol) and np.any(np.asarray(tol) >= 1):
        raise ValueError(f"`tol` must be < 1 (a relative band), got {tol!r}")
    if t_max is not None:
        check_positive("t_max", t_max)
    if not isinstance(n_save, int) or n_save < 0:
        raise ValueError(f"`n_save` must be a non-negative int, got {n_save!r}")


def _pick_solver(circuit):
    """Tsit5 (stages unrolled) for well-conditioned circuits, Kvaerno5 for stiff ones (decided
    eagerly)."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(circuit, eqx.is_array))
    if not all(is_concrete(x) for x in leaves):
        return Unrolled(dfx.Tsit5())  # traced: no value-dependent (static) choice possible
    lam = np.linalg.eigvals(np.asarray(circuit.dynamics().jacobian(), dtype=float))
    re = -lam.real
    if np.all(re > 0) and re.max() / re.min() > _STIFF_RATIO:
        return dfx.Kvaerno5()
    return Unrolled(dfx.Tsit5())


def simulate(
    circuit: AbstractCircuit,
    *,
    tol: float | Float[Array, ""] = 1e-3,
    t_max: float | Float[Array, ""] | None = None,
    solver: dfx.AbstractSolver | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    adjoint: dfx.AbstractAdjoint = dfx.RecursiveCheckpointAdjoint(checkpoints=_CHECKPOINTS),
    n_save: int = 201,
    max_steps: int = 16384,
    stability: bool = True,
    substeps: int = 8,
    energy: bool = True,
    stop_when_settled: bool = False,
    throw: bool = True,
) -> Solution:
    r"""Integrate a circuit's transient from rest (all outputs 0 V, input stepped on at $t=0$).

    The ODE is solved with diffrax in the scaled time $\tau = \omega_\mathrm{ref} t$. The
    settling time is measured during integration on each step's dense interpolant (see
    `SettleObserver`), so it is not snapped to a saved step.

    A nonlinear circuit (op-amp rails or slew-rate limits, [`amcdyn.OpAmp`][]) is integrated
    twice: the first pass gives the final state, which is then `v_steady` (the reference of
    the settling band) and `v_final`; the error is that of the transient's final outputs. It
    counts as settled when the outputs stay within the band around that final value for at
    least the last 10% of the run. `rail_hit`/`slew_hit` report whether a limit was
    approached within 10% during the transient. The default `t_max` adds twice the slew time
    $|V^*|/\mathrm{SR}$ to the linear estimate; eigenvalues describe the linearization at
    the origin.

    **Arguments:**

    - `circuit`: an [`amcdyn.INV`][], [`amcdyn.MVM`][], ...
    - `tol`: relative settling band $\varepsilon$ (default 1e-3).
    - `t_max`: end time (s). Default: $1.5\ln(10/\varepsilon)/r$ with $r$ the slowest decay
      rate from the eigenvalues of the linearized system.
    - `solver`: any diffrax solver. Default: `Unrolled(Tsit5())` (Tsit5 with its stages
      unrolled, see [`amcdyn.Unrolled`][]) for well-conditioned circuits, `Kvaerno5` when the
      ratio of decay rates exceeds 100 (decided only for concrete circuits: under `jit`/`vmap`
      the default is `Unrolled(Tsit5())`; pass a solver, or use
      [`amcdyn.simulate_analytic`][]).
    - `stepsize_controller`: default `PIDController(rtol=1e-2·tol, atol=1e-2·tol·FS)`
      (`1e-3·tol` for a nonlinear circuit). An adaptive controller starts from a first step
      of $0.1/\omega_\mathrm{ref}$ ($\omega_\mathrm{ref} = 2\pi\max f_\mathrm{GBW}$, the
      scale of the loop's fastest rates) instead of diffrax's initial-step heuristic.
    - `adjoint`: any diffrax adjoint (default `RecursiveCheckpointAdjoint(checkpoints=64)`;
      diffrax's default keeps about $\sqrt{2\,\mathrm{max\_steps}}$ checkpoints, which costs
      more per step).
    - `n_save`: number of uniformly spaced saved waveform points (0 saves none: fastest).
    - `max_steps`: diffrax step budget.
    - `stability`: compute the eigenvalues of the linearized system (a dense `eig`; skip it in
      large batches when `t_max` is given: instability is then detected from the transient).
    - `substeps`: sub-intervals per step on which the interpolant is evaluated for the
      settling measurement.
    - `energy`: integrate the resistive power alongside the circuit (one more state, whose
      right-hand side costs about as much as the circuit's own). With `False`,
      `Solution.energy` is NaN (not computed): the cheaper choice for large batches that only
      need settling time and error. The other fields then agree with `energy=True` to the
      solver's tolerance, not bitwise, since the energy state no longer enters the step-size
      control.
    - `stop_when_settled`: end the transient as soon as settling is *certified*, instead of
      at `t_max` (linear circuits, `n_save=0`). The certificate: when the Jacobian's
      $\infty$-norm logarithmic norm $\mu_\infty(J) = \max_i (J_{ii} + \sum_{j\ne i}
      |J_{ij}|)$ is $\le 0$, $\max_k |y_k - y^*_k|$ never increases, so once every state is
      within $\varepsilon\cdot$FS of its equilibrium no output can leave the band again and
      the settling time is final. That holds for diagonally dominant loops (e.g.
      `random-dd`); otherwise the run goes on to `t_max` as without the option. When it
      stops early, `t_max` is the stop time, `v_final`/`solution`/`rel_error` are the outputs
      at that time (within the band of the equilibrium `v_steady`, not at it), and
      `settle_integral` covers $[0, t_\mathrm{stop}]$ (the tail it leaves out is
      $O(\varepsilon^2)$ of it). Under `vmap` a batch stops when all its circuits have.
    - `throw`: raise on any outcome other than `settled`; with `False` read `Solution.result`.

    **Returns:** a [`amcdyn.Solution`][].
    """
    _check_simulator(circuit, "simulate")
    _check_options(tol, t_max, n_save)
    if not isinstance(substeps, int) or substeps < 2 or substeps % 2:
        raise ValueError(f"`substeps` must be an even int >= 2, got {substeps!r}")
    check_flag("energy", energy)
    check_flag("stop_when_settled", stop_when_settled)
    if stop_when_settled:
        if n_save:
            raise ValueError(
                "`stop_when_settled` needs `n_save=0` (the saved waveform spans [0, t_max])"
            )
        if circuit.nonlinear:
            raise ValueError(
                "`stop_when_settled` needs a linear circuit (its certificate uses the "
                "Jacobian; this circuit has op-amp rails or slew-rate limits)"
            )
    if solver is None:
        solver = _pick_solver(circuit)
    return _simulate(
        circuit,
        jnp.asarray(tol),
        None if t_max is None else jnp.asarray(t_max),
        solver,
        stepsize_controller,
        adjoint,
        n_save,
        max_steps,
        stability or t_max is None,
        substeps,
        energy,
        stop_when_settled,
        throw,
    )


@eqx.filter_jit
def _simulate(
    circuit,
    tol,
    t_max,
    solver,
    controller,
    adjoint,
    n_save,
    max_steps,
    stability,
    substeps,
    energy: bool,
    stop_when_settled: bool,
    throw,
):
    (dyn, dtype, tol, y_ss, v_ss, fs_safe, w_ref, lam, maxre, tau_slow, osc, stable, t_end) = (
        _prelude(circuit, tol, t_max, stability)
    )
    nonlinear = dyn.nonlinear
    if nonlinear and t_max is None:
        # Slewing to the (linear) equilibrium adds up to |dV|/SR to the linear estimate.
        t_end = t_end + jax.lax.stop_gradient(2 * dyn.slew_time(y_ss))
    t1 = t_end * w_ref

    if controller is None:
        # A nonlinear transient has corners (slewing starts and ends abruptly) that the
        # dense interpolant of the settling measurement must resolve: 10x tighter there.
        rtol = (1e-3 if nonlinear else 1e-2) * jax.lax.stop_gradient(tol)
        controller = dfx.PIDController(rtol=rtol, atol=rtol * jax.lax.stop_gradient(fs_safe))
    if (
        isinstance(adjoint, dfx.ForwardMode)
        and isinstance(solver, dfx.AbstractRungeKutta)
        and solver.scan_kind is None
    ):
        # What ForwardMode does to an unwrapped solver (it cannot reach through the wrapper).
        solver = eqx.tree_at(lambda s: s.scan_kind, solver, "lax", is_leaf=lambda x: x is None)
    inner = resolve_implicit_tolerances(solver, controller)
    # An adaptive controller takes the first step from `_DT0`; a fixed one (e.g. StepTo,
    # which refuses a dt0) decides on its own.
    adaptive = isinstance(controller, dfx.AbstractAdaptiveStepSizeController)
    dt0 = jnp.asarray(_DT0, dtype) if adaptive else None
    observer = SettleObserver(
        inner, n_outputs=dyn.n_outputs, v_ref=v_ss, fs=fs_safe, tol=tol, substeps=substeps
    )

    # With `energy`, state n_states accumulates the resistive energy: dE/dt =
    # resistive_power(y). A nonlinear circuit adds two more: the integrated rail and slew
    # excesses (zero unless a limit is approached within 10% anywhere along the trajectory,
    # not only at saved points).
    n_st = dyn.n_states
    n_e = int(energy)

    def field(t, y, args):
        ys = y[:n_st]
        parts = [dyn.vector_field(ys)]
        if energy:
            parts.append(circuit.resistive_power(ys)[None])
        if nonlinear:
            parts.append(dyn.limit_excess(ys))
        return jnp.concatenate(parts) / w_ref

    term = dfx.ODETerm(field)
    y0 = jnp.zeros(n_st + n_e + 2 * nonlinear, dtype)
    if nonlinear:
        # The equilibrium of the nonlinear circuit is not known in closed form (a rail may
        # hold an output away from the linear equilibrium): a first pass finds the final
        # value, which is then the reference of the settling band and of the error.
        pre = dfx.diffeqsolve(
            term,
            inner,
            jnp.zeros((), dtype),
            t1,
            dt0,
            y0,
            saveat=dfx.SaveAt(t1=True),
            stepsize_controller=controller,
            adjoint=adjoint,
            max_steps=max_steps,
            throw=False,
        )
        y_ss = pre.ys[-1][:n_st]
        v_ss = dyn.outputs(y_ss)
        fs = jnp.max(jnp.abs(v_ss))
        fs_safe = jnp.where(fs > 0, fs, 1.0)
        observer = SettleObserver(
            inner, n_outputs=dyn.n_outputs, v_ref=v_ss, fs=fs_safe, tol=tol, substeps=substeps
        )
    if n_save > 0:
        ts = jnp.linspace(0, 1, n_save, dtype=dtype) * t1
        saveat = dfx.SaveAt(
            subs=[
                dfx.SubSaveAt(ts=ts, fn=lambda t, y, args: dyn.outputs(y)),
                dfx.SubSaveAt(t1=True),
            ],
            solver_state=True,
        )
    else:
        saveat = dfx.SaveAt(t1=True, solver_state=True)
    if stop_when_settled:
        controller = _settled_stop(controller, dyn, y_ss, tol * fs_safe)
    sol = dfx.diffeqsolve(
        term,
        observer,
        jnp.zeros((), dtype),
        t1,
        dt0,
        y0,
        saveat=saveat,
        stepsize_controller=controller,
        adjoint=adjoint,
        max_steps=max_steps,
        throw=False,
    )
    if stop_when_settled:
        # The simulated interval ends at the stop time (t_max when it did not stop early): a
        # step boundary, chosen discretely, so without a derivative (as the default t_max).
        t_stop = jax.lax.stop_gradient(sol.ts[-1] / w_ref)
        t_end = jnp.where(sol.result == dfx.RESULTS.event_occurred, t_stop, t_end)
    if n_save > 0:
        vs, y_final = sol.ys[0], sol.ys[1][-1]
        ts = ts / w_ref
    else:
        y_final = sol.ys[-1]
        ts = jnp.zeros((0,), dtype)
        vs = jnp.zeros((0, dyn.n_outputs), dtype)
    if nonlinear:
        rail_hit, slew_hit = y_final[n_st + n_e] > 0, y_final[n_st + n_e + 1] > 0
    else:
        rail_hit, slew_hit = jnp.asarray(False), jnp.asarray(False)
    e_int = y_final[n_st] if energy else None
    y_final = y_final[:n_st]
    track = sol.solver_state[1]
    t_last = observer.t_last(track)

    v_final = dyn.outputs(y_final)
    x = circuit.decode(v_final)
    x_exact = circuit.exact_solution()
    rel_error, bits = _rel_error(x, x_exact)
    dev_final = jnp.max(jnp.abs(v_final - v_ss)) / fs_safe
    finite = (
        jnp.all(jnp.isfinite(y_final))
        & jnp.isfinite(t_last)
        & jnp.isfinite(track.max_dev)
        & jnp.all(jnp.isfinite(x_exact))
    )
    unstable = (~stable) | (track.max_dev > _DIVERGED)
    if nonlinear:
        # The band is centred on the final value itself, so ask instead that the outputs
        # stayed inside it for the last 10% of the run (a transient still drifting at t_max
        # leaves the band shortly before the end).
        dev_final = jnp.where(t_last > 0.9 * t1, jnp.inf, dev_final)
    result = RESULTS.where(
        ~finite,
        RESULTS.nonfinite,
        RESULTS.where(
            sol.result == dfx.RESULTS.max_steps_reached,
            RESULTS.max_steps,
            RESULTS.where(
                unstable,
                RESULTS.unstable,
                RESULTS.where(dev_final > tol, RESULTS.not_settled, RESULTS.settled),
            ),
        ),
    )
    diverged = (result == RESULTS.unstable) | (result == RESULTS.nonfinite)
    rel_error = jnp.where(diverged, jnp.nan, rel_error)
    bits = jnp.where(diverged, jnp.nan, bits)
    t_settle = t_last / w_ref
    # After settling the power stays within O(tol) of its equilibrium value, so the resistive
    # energy up to the settling time is E(t_max) - q* (t_max - t_s), to O(tol (t_max - t_s)/t_s)
    # of itself (the exact paths integrate to t_s). Without `energy`, NaN.
    if energy:
        e_settle = e_int - circuit.resistive_power(y_ss) * (t_end - jnp.minimum(t_settle, t_end))
    else:
        e_settle = jnp.asarray(jnp.nan, dtype)
    power, e_solve = _energy(circuit, t_settle, result, e_settle)
    t_settle = _settling_or_flag(t_settle, result)
    out = Solution(
        ts=ts,
        vs=vs,
        v_final=v_final,
        v_steady=v_ss,
        solution=x,
        exact=x_exact,
        rel_error=rel_error,
        bits=bits,
        settling_time=t_settle,
        settle_integral=track.integral / w_ref,
        t_max=t_end,
        tol=tol,
        eigenvalues=lam,
        max_real_eig=maxre,
        slowest_time_constant=tau_slow,
        oscillatory=osc,
        stable=stable & ~unstable,
        result=result,
        num_steps=sol.stats["num_accepted_steps"],
        power=power,
        energy=e_solve,
        rail_hit=rail_hit,
        slew_hit=slew_hit,
    )
    if throw:
        out = result.error_if(out, result != RESULTS.settled)
    return out


def _settled_stop(controller, dyn, y_ss, band):
    """`controller`, made to stop the solve once settling is certified: the Jacobian's
    infinity-norm log norm is <= 0 (so max_k |y_k - y*_k| cannot grow) and every state is
    within `band` of the equilibrium."""
    jac = jax.lax.stop_gradient(dyn.jacobian())
    diag = jnp.diagonal(jac)
    lognorm = jnp.max(diag + jnp.sum(jnp.abs(jac), axis=1) - jnp.abs(diag))
    y_ss, band = jax.lax.stop_gradient((y_ss, band))
    return StopWhenSettled(controller, y_ref=y_ss, band=band, certified=lognorm <= 0)


def _check_simulator(circuit, name):
    """Refuse a circuit that has its own simulation function (e.g. EGV)."""
    own = getattr(circuit, "simulator", None)
    if own is not None:
        raise ValueError(
            f"{type(circuit).__name__} is simulated by amcdyn.{own}, not amcdyn.{name}"
        )


def _check_linear(circuit, name):
    _check_simulator(circuit, name)
    if circuit.nonlinear:
        reason = getattr(circuit, "nonlinear_reason", "op-amp rails or slew-rate limit set")
        raise ValueError(f"`circuit` is nonlinear ({reason}): use amcdyn.simulate, not {name}")


def simulate_analytic(
    circuit: AbstractCircuit,
    *,
    tol: float | Float[Array, ""] = 1e-3,
    t_max: float | Float[Array, ""] | None = None,
    n_save: int = 201,
    n_grid: int = 256,
    throw: bool = True,
) -> Solution:
    r"""Exact transient of a linear circuit, without integrating.

    With $\dot y = Jy + c$, $y(0) = 0$ and $J = V\Lambda V^{-1}$,
    $y(t) = y^* + V e^{\Lambda t} V^{-1}(0 - y^*)$, which is evaluated at any time. The
    settling time is the exact last crossing of the band: located on an `n_grid`-point grid over
    $[0, t_\max]$, then bisected to machine precision on the closed form (its gradient is the
    implicit-function derivative). `settle_integral` is the closed form
    $\sum_{kl} a_k^\top a_l (e^{(\lambda_k+\lambda_l)t_\max} - 1)/(\lambda_k + \lambda_l)$.
    `v_final` is the equilibrium $y^*$. Works under `jit`, `vmap` and `grad` (the
    eigendecomposition has a custom derivative).

    **Arguments:** as [`amcdyn.simulate`][]; `n_grid` sets the crossing-search grid.
    **Returns:** a [`amcdyn.Solution`][] (`num_steps` = 0).
    """
    _check_linear(circuit, "simulate_analytic")
    _check_options(tol, t_max, n_save)
    if not isinstance(n_grid, int) or n_grid < 8:
        raise ValueError(f"`n_grid` must be an int >= 8, got {n_grid!r}")
    return _simulate_analytic(
        circuit,
        jnp.asarray(tol),
        None if t_max is None else jnp.asarray(t_max),
        n_save,
        n_grid,
        throw,
    )


@eqx.filter_jit
def _simulate_analytic(circuit, tol, t_max, n_save, n_grid, throw):
    dyn = circuit.dynamics()
    dtype = dyn.dtype
    tol = tol.astype(dtype)
    w_ref = _time_unit(circuit).astype(dtype)
    y_ss = dyn.steady_state()
    v_ss = dyn.outputs(y_ss)
    fs = jnp.max(jnp.abs(v_ss))
    fs_safe = jnp.where(fs > 0, fs, 1.0)
    jac = dyn.jacobian()
    lam, vec = _eig(jac)
    # Output deviation e(t) = sum_k a_k exp(lam_k t), a_k = C v_k (V^-1 (0 - y*))_k.
    w = solve(vec, -y_ss.astype(lam.dtype))
    amp = dyn.outputs(vec.T).T * w[None, :]  # (outputs, states)
    maxre, tau_slow, osc, stable = _eig_summary(jax.lax.stop_gradient(lam), w_ref)
    if t_max is None:
        t_end = _default_t_max(maxre, stable, tol, w_ref)
    else:
        t_end = t_max.astype(dtype)

    def deviation(t):
        e = (amp @ jnp.exp(lam * t)).real
        return e

    def dev_norm(t):
        return jnp.max(jnp.abs(deviation(t))) / fs_safe

    grid = jax.lax.stop_gradient(jnp.linspace(0, 1, n_grid, dtype=dtype) * t_end)
    e_grid = (jnp.exp(grid[:, None] * jax.lax.stop_gradient(lam)[None, :]) @ amp.T).real
    e_grid = jax.lax.stop_gradient(e_grid)
    dev = jnp.max(jnp.abs(e_grid), axis=1) / fs_safe
    above = dev > tol
    k = jnp.max(jnp.where(above, jnp.arange(n_grid), -1))
    kk = jnp.clip(k, 0, n_grid - 2)

    def bisect(_, bracket):
        lo, hi = bracket
        mid = (lo + hi) / 2
        out = dev_norm(mid) > tol
        return jnp.where(out, mid, lo), jnp.where(out, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 60, bisect, jax.lax.stop_gradient((grid[kk], grid[kk + 1])))
    t_b = jax.lax.stop_gradient((lo + hi) / 2)
    # Implicit-function gradient: g(t*, p) = tol, so dt*/dp = -(dg/dp) / (dg/dt).
    g = dev_norm(t_b)
    dgdt = jax.lax.stop_gradient(jax.grad(dev_norm)(t_b))
    t_settle = t_b - (g - jax.lax.stop_gradient(g)) / jnp.where(dgdt != 0, dgdt, 1)
    t_settle = jnp.where(k < 0, jnp.zeros((), dtype), t_settle)

    lsum = lam[:, None] + lam[None, :]
    safe = jnp.where(lsum == 0, 1, lsum)
    kern = jnp.where(lsum == 0, t_end, jnp.expm1(lsum * t_end) / safe)
    integral = (jnp.sum((amp.T @ amp) * kern)).real / fs_safe**2

    if n_save > 0:
        ts = jnp.linspace(0, 1, n_save, dtype=dtype) * t_end
        vs = v_ss[None, :] + jax.vmap(deviation)(ts)
    else:
        ts = jnp.zeros((0,), dtype)
        vs = jnp.zeros((0, dyn.n_outputs), dtype)

    x = circuit.decode(v_ss)
    x_exact = circuit.exact_solution()
    rel_error, bits = _rel_error(x, x_exact)
    # An unstable circuit never reaches its equilibrium: its error is not a number to report.
    rel_error = jnp.where(stable, rel_error, jnp.nan)
    bits = jnp.where(stable, bits, jnp.nan)
    finite = (
        jnp.all(jnp.isfinite(v_ss)) & jnp.all(jnp.isfinite(lam)) & jnp.all(jnp.isfinite(x_exact))
    )
    result = RESULTS.where(
        ~finite,
        RESULTS.nonfinite,
        RESULTS.where(
            ~stable,
            RESULTS.unstable,
            RESULTS.where(dev[-1] > tol, RESULTS.not_settled, RESULTS.settled),
        ),
    )
    # Resistive energy over [0, t_s]: q(y* + e) = q* + g.e + e^T Q e, in closed form.
    q_mat, q_lin, q_ss = _quadratic_power(circuit, y_ss)
    full = vec * w[None, :]  # (states, modes): e(t) = full @ exp(lam t)
    t_s = jnp.where(result == RESULTS.settled, t_settle, 0)
    lam_safe = jnp.where(lam == 0, 1, lam)
    int_exp = jnp.where(lam == 0, t_s, jnp.expm1(lam * t_s) / lam_safe)
    kern_s = jnp.where(lsum == 0, t_s, jnp.expm1(lsum * t_s) / safe)
    e_settle = (
        q_ss * t_s
        + jnp.sum((q_lin @ full) * int_exp).real
        + jnp.sum((full.T @ q_mat @ full) * kern_s).real
    )
    power, energy = _energy(circuit, t_settle, result, e_settle)
    t_settle = _settling_or_flag(t_settle, result)
    out = Solution(
        ts=ts,
        vs=vs,
        v_final=v_ss,
        v_steady=v_ss,
        solution=x,
        exact=x_exact,
        rel_error=rel_error,
        bits=bits,
        settling_time=t_settle,
        settle_integral=integral,
        t_max=t_end,
        tol=tol,
        eigenvalues=jax.lax.stop_gradient(lam),
        max_real_eig=maxre,
        slowest_time_constant=tau_slow,
        oscillatory=osc,
        stable=stable,
        result=result,
        num_steps=jnp.zeros((), jnp.int32),
        power=power,
        energy=energy,
    )
    if throw:
        out = result.error_if(out, result != RESULTS.settled)
    return out
