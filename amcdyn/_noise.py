r"""Input-referred amplifier noise: the circuit as a stochastic differential equation.

Every amplifier has a white input voltage noise of (one-sided, datasheet) density $e_n$
(V/$\sqrt{\mathrm{Hz}}$) in series with its non-inverting input, like the offset $v_\mathrm{os}$.
A white noise of one-sided density $e_n^2$ (V²/Hz) has the autocorrelation
$\tfrac12 e_n^2\,\delta(\tau)$, i.e. $n(t)\,dt = (e_n/\sqrt2)\,dW$ with $W$ a standard Wiener
process. The circuit then obeys

$$dy = f(y)\,dt + B\,dW, \qquad B = \frac{1}{\sqrt2}\,\frac{\partial f}{\partial v_+}\,
  \mathrm{diag}(e_n),$$

where $\partial f/\partial v_+$ (1/s) is `AbstractDynamics.noise_input`: $\omega_T$ on each
amplifier's first-pole (integrator) state. For the linear model $f(y) = Jy + c$ the stationary
state covariance $P$ (V²) solves the continuous Lyapunov equation

$$J P + P J^\top + B B^\top = 0,$$

and the output noise is $\sqrt{(CPC^\top)_{ii}}$ with $C$ the output selection.
"""

import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._circuits import AbstractCircuit
from ._linalg import solve
from ._simulate import _prelude, _time_unit
from ._validate import check_finite, check_nonnegative, check_positive


class NoiseSolution(eqx.Module):
    """What [`amcdyn.simulate_noise`][] returns. Voltages in V, times in s.

    **Fields:**

    - `ts`: the sample times in the stationary window, shape `(samples,)`.
    - `vs`: the noisy outputs at `ts`, shape `(paths, samples, outputs)`.
    - `v_clean`: the noise-free outputs at `ts` (same solver, same steps, $e_n = 0$), shape
      `(samples, outputs)`.
    - `v_rms`: per-output rms of `vs - v_clean` over all paths and samples (V): the sample
      estimate of the output noise.
    - `v_rms_exact`: $\\sqrt{(CPC^\\top)_{ii}}$ from the Lyapunov covariance (V).
    - `cov`: the stationary output covariance $CPC^\\top$ (V²), shape `(outputs, outputs)`;
      `state_cov`: the full $P$, shape `(states, states)`.
    - `rel_error_clean`: $\\|x - x^*\\|/\\|x^*\\|$ of the noise-free final outputs.
    - `rel_error`: rms relative error of the decoded solution with noise,
      $\\sqrt{\\overline{\\|x - x^*\\|^2}}/\\|x^*\\|$ over all paths and samples.
    - `rel_error_exact`: the same from the covariance,
      $\\sqrt{\\|x_\\mathrm{clean} - x^*\\|^2 + \\mathrm{tr}(D\\,CPC^\\top D^\\top)}/\\|x^*\\|$ with
      $D$ the Jacobian of the decoding (V⁻¹).
    - `bits`, `bits_exact`, `bits_clean`: $-\\log_2$ of the three relative errors.
    - `dt`: the fixed SDE step (s).
    """

    ts: Float[Array, " samples"]
    vs: Float[Array, "paths samples outputs"]
    v_clean: Float[Array, "samples outputs"]
    v_rms: Float[Array, " outputs"]
    v_rms_exact: Float[Array, " outputs"]
    cov: Float[Array, "outputs outputs"]
    state_cov: Float[Array, "states states"]
    rel_error_clean: Float[Array, ""]
    rel_error: Float[Array, ""]
    rel_error_exact: Float[Array, ""]
    bits_clean: Float[Array, ""]
    bits: Float[Array, ""]
    bits_exact: Float[Array, ""]
    dt: Float[Array, ""]

    def summary(self) -> dict:
        """A JSON-ready dict of the headline numbers (unbatched)."""
        f = lambda x: float(np.asarray(x))
        return {
            "v_rms_v": [float(v) for v in np.asarray(self.v_rms)],
            "v_rms_exact_v": [float(v) for v in np.asarray(self.v_rms_exact)],
            "rel_error_clean": f(self.rel_error_clean),
            "rel_error": f(self.rel_error),
            "rel_error_exact": f(self.rel_error_exact),
            "bits_clean": f(self.bits_clean),
            "bits": f(self.bits),
            "bits_exact": f(self.bits_exact),
            "paths": int(np.shape(self.vs)[0]),
            "samples": int(np.shape(self.vs)[1]),
            "dt_s": f(self.dt),
        }


def lyapunov(a: Float[Array, "n n"], q: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """The solution $P$ of $A P + P A^\\top + Q = 0$ for a stable $A$.

    Solved as the $n^2 \\times n^2$ linear system $(A \\otimes I + I \\otimes A)\\,
    \\mathrm{vec}(P) = -\\mathrm{vec}(Q)$ (row-major vec) with the plain-JAX LU of
    `amcdyn._linalg`: exact, differentiable, and cheap for the small state counts
    ($n \\lesssim 30$) this is meant for; the cost grows as $n^6$.
    """
    n = a.shape[0]
    eye = jnp.eye(n, dtype=a.dtype)
    k = jnp.kron(a, eye) + jnp.kron(eye, a)
    p = solve(k, -q.reshape(n * n)).reshape(n, n)
    return (p + p.T) / 2


def _densities(name, value, n):
    check_finite(name, value)
    check_nonnegative(name, value)
    if np.ndim(value) > 0 and np.shape(value) != (n,):
        raise ValueError(
            f"`{name}` must be a scalar or have one value per amplifier, shape ({n},); "
            f"got shape {np.shape(value)}"
        )


def simulate_noise(
    circuit: AbstractCircuit,
    key: PRNGKeyArray,
    *,
    e_n: float | Float[ArrayLike, "*amps"],
    inverter_e_n: float | Float[ArrayLike, "*amps"] = 0.0,
    n_paths: int = 256,
    n_samples: int = 16,
    t_settle: float | Float[ArrayLike, ""] | None = None,
    t_window: float | Float[ArrayLike, ""] | None = None,
    dt: float | Float[ArrayLike, ""] | None = None,
    solver: dfx.AbstractSolver | None = None,
    max_steps: int = 65536,
) -> NoiseSolution:
    r"""Transient of a circuit with white input-referred amplifier noise, as an SDE.

    Integrates $dy = f(y)\,dt + B\,dW$ from rest ($y = 0$, input stepped on at $t = 0$) with
    diffrax (a `ControlTerm` driven by a `VirtualBrownianTree`, fixed step `dt`), for
    `n_paths` independent Brownian paths (`vmap` over keys) plus one noise-free path. The
    outputs are sampled at `n_samples` times spread uniformly over the stationary window
    $[t_\mathrm{settle}, t_\mathrm{settle} + t_\mathrm{window}]$; `v_rms` is their rms
    deviation from the noise-free path. The exact stationary covariance comes from the
    Lyapunov equation of the linearization $J$ (for a nonlinear circuit, rails or slew, the
    small-signal covariance at the origin). Works under `jit`, `vmap` (over keys or circuits)
    and `grad`.

    **Arguments:**

    - `circuit`: an [`amcdyn.INV`][] or [`amcdyn.MVM`][].
    - `key`: a JAX PRNG key.
    - `e_n`: input voltage-noise density of the main amplifiers (V/$\sqrt{\mathrm{Hz}}$,
      one-sided, as in datasheets; >= 0), a scalar or one value per amplifier.
    - `inverter_e_n`: the same for the real inverters of an INV (default 0: noiseless).
    - `n_paths`: number of noisy paths (an int >= 2).
    - `n_samples`: samples per path in the window (an int >= 1).
    - `t_settle`: start of the window (s). Default: [`amcdyn.simulate`][]'s default
      `t_max` for `tol=1e-3`, where the deterministic transient has settled.
    - `t_window`: window length (s). Default: `3 * n_samples` slowest time constants, so
      that successive samples are nearly independent (correlation $\le e^{-3}$).
    - `dt`: fixed step (s). Default: $0.1/\max|\lambda(J)|$ (the Heun step then biases the
      stationary variance by well under 1%).
    - `solver`: a diffrax SDE solver; default `diffrax.Heun()` (strong order 1 for this
      additive noise). Stochastic Runge–Kutta solvers such as `diffrax.ShARK()` get the
      space-time Lévy area they need.
    - `max_steps`: step budget of each path (an error is raised when `t_settle + t_window`
      needs more steps of `dt`).

    **Returns:** a [`amcdyn.NoiseSolution`][].

    **Raises:** `ValueError` naming the argument for a negative or non-finite `e_n`, a wrong
    shape, non-positive times or bad counts.
    """
    dyn = circuit.dynamics()
    dens = _check_noise_args(dyn, e_n, inverter_e_n)
    for name, value, lo in (
        ("n_paths", n_paths, 2),
        ("n_samples", n_samples, 1),
        ("max_steps", max_steps, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"`{name}` must be an int >= {lo}, got {value!r}")
    for name, value in (("t_settle", t_settle), ("t_window", t_window), ("dt", dt)):
        if value is not None:
            check_positive(name, value)
    if solver is None:
        solver = dfx.Heun()
    opt = lambda x: None if x is None else jnp.asarray(x)
    return _simulate_noise(
        circuit,
        key,
        dens,
        opt(t_settle),
        opt(t_window),
        opt(dt),
        n_paths,
        n_samples,
        solver,
        max_steps,
    )


def _diffusion(dyn, dens):
    """B (V/s per sqrt(s)): one-sided density e_n -> white noise of intensity e_n^2 / 2."""
    return dyn.noise_input() * dens.astype(dyn.dtype)[None, :] / math.sqrt(2)


def _state_covariance(dyn, b, w_ref):
    # Lyapunov in scaled time (J / w_ref, B B^T / w_ref) for a well-scaled solve.
    return lyapunov(dyn.jacobian() / w_ref, (b @ b.T) / w_ref)


def _check_noise_args(dyn, e_n, inverter_e_n):
    n = dyn.n_outputs
    _densities("e_n", e_n, n)
    _densities("inverter_e_n", inverter_e_n, n)
    dens = jnp.broadcast_to(jnp.asarray(e_n), (n,))
    if dyn.noise_input().shape[1] > n:
        dens = jnp.concatenate([dens, jnp.broadcast_to(jnp.asarray(inverter_e_n), (n,))])
    return dens


def noise_covariance(
    circuit: AbstractCircuit,
    *,
    e_n: float | Float[ArrayLike, "*amps"],
    inverter_e_n: float | Float[ArrayLike, "*amps"] = 0.0,
) -> Float[Array, "outputs outputs"]:
    r"""Stationary covariance of the output noise (V²) from the Lyapunov equation.

    $C P C^\top$ with $J P + P J^\top + B B^\top = 0$ and $B$ as in
    [`amcdyn.simulate_noise`][] (one-sided densities, $B = \partial f/\partial v_+\,
    \mathrm{diag}(e_n)/\sqrt2$). The rms noise of output $i$ is the square root of the
    diagonal. For a nonlinear circuit, $J$ is the linearization at the origin. Exact, and
    differentiable in the circuit and in `e_n`.

    **Arguments:** `circuit`, `e_n`, `inverter_e_n` as for [`amcdyn.simulate_noise`][].

    **Raises:** `ValueError` for a negative or non-finite `e_n` or a wrong shape.
    """
    dyn = circuit.dynamics()
    dens = _check_noise_args(dyn, e_n, inverter_e_n)
    return _noise_covariance(circuit, dens)


@eqx.filter_jit
def _noise_covariance(circuit, dens):
    dyn = circuit.dynamics()
    w_ref = _time_unit(circuit).astype(dyn.dtype)
    p = _state_covariance(dyn, _diffusion(dyn, dens), w_ref)
    return p[: dyn.n_outputs, : dyn.n_outputs]


@eqx.filter_jit
def _simulate_noise(
    circuit, key, dens, t_settle, t_window, dt, n_paths, n_samples, solver, max_steps
):
    (dyn, dtype, _, y_ss, v_ss, _, w_ref, lam, maxre, tau_slow, _, stable, t_end) = _prelude(
        circuit, jnp.asarray(1e-3), None, True
    )
    b = _diffusion(dyn, dens)
    p = _state_covariance(dyn, b, w_ref)
    n_out = dyn.n_outputs
    cov = p[:n_out, :n_out]

    t0 = jax.lax.stop_gradient(t_end) if t_settle is None else t_settle.astype(dtype)
    if t_window is None:
        tw = jax.lax.stop_gradient(3.0 * n_samples * tau_slow)
    else:
        tw = t_window.astype(dtype)
    if dt is None:
        h = jax.lax.stop_gradient(0.1 / jnp.max(jnp.abs(lam)))
    else:
        h = dt.astype(dtype)
    # Sample times: the window's end points are included when n_samples > 1.
    frac = jnp.linspace(0, 1, n_samples, dtype=dtype) if n_samples > 1 else jnp.ones(1, dtype)
    ts = t0 + tw * frac
    t1 = ts[-1]
    levy = dfx.SpaceTimeLevyArea if isinstance(solver, dfx.AbstractSRK) else dfx.BrownianIncrement

    def path(k, scale):
        bm = dfx.VirtualBrownianTree(
            jnp.zeros((), dtype),
            t1 * w_ref,
            tol=h * w_ref / 8,
            shape=(b.shape[1],),
            key=k,
            levy_area=levy,
        )
        # Scaled time tau = w_ref t; W(t) = W(tau) / sqrt(w_ref).
        drift = dfx.ODETerm(lambda t, y, args: dyn.vector_field(y) / w_ref)
        diff = dfx.ControlTerm(lambda t, y, args: scale * b / jnp.sqrt(w_ref), bm)
        sol = dfx.diffeqsolve(
            dfx.MultiTerm(drift, diff),
            solver,
            jnp.zeros((), dtype),
            t1 * w_ref,
            h * w_ref,
            jnp.zeros(dyn.n_states, dtype),
            saveat=dfx.SaveAt(ts=ts * w_ref, fn=lambda t, y, args: dyn.outputs(y)),
            max_steps=max_steps,
            throw=True,
        )
        return sol.ys

    keys = jr.split(key, n_paths + 1)
    scales = jnp.ones(n_paths + 1, dtype).at[0].set(0.0)
    ys = jax.vmap(path)(keys, scales)
    v_clean, vs = ys[0], ys[1:]
    dev = vs - v_clean[None]
    v_rms = jnp.sqrt(jnp.mean(dev * dev, axis=(0, 1)))

    x_exact = circuit.exact_solution()
    norm = jnp.linalg.norm(x_exact)
    x_clean = circuit.decode(v_clean[-1])
    err_clean = jnp.linalg.norm(x_clean - x_exact) / norm
    x_noisy = circuit.decode(vs)
    err = jnp.sqrt(jnp.mean(jnp.sum((x_noisy - x_exact) ** 2, axis=-1))) / norm
    d = jax.jacfwd(circuit.decode)(v_clean[-1])
    var_x = jnp.trace(d @ cov @ d.T)
    err_exact = jnp.sqrt(jnp.sum((x_clean - x_exact) ** 2) + var_x) / norm
    return NoiseSolution(
        ts=ts,
        vs=vs,
        v_clean=v_clean,
        v_rms=v_rms,
        v_rms_exact=jnp.sqrt(jnp.diagonal(cov)),
        cov=cov,
        state_cov=p,
        rel_error_clean=err_clean,
        rel_error=err,
        rel_error_exact=err_exact,
        bits_clean=-jnp.log2(err_clean),
        bits=-jnp.log2(err),
        bits_exact=-jnp.log2(err_exact),
        dt=h,
    )
