r"""Conductance mapping and RRAM programming non-idealities.

Each effect is a small [`amcdyn.AbstractDeviceStage`][]: an `eqx.Module` whose physical
parameters are array leaves (so a stage can be `jax.vmap`ped over and differentiated), called as
`stage(g, *, key)` on a target conductance array `g` (S, any shape) and returning an array of the
same shape and dtype. Random stages take an explicit `key: PRNGKeyArray`; deterministic ones
accept and ignore it. [`amcdyn.Programming`][] chains stages in order, splitting the key per stage:

```python
prog = amcdyn.Programming((
    amcdyn.ConductanceWindow(0.5e-6, 35e-6, levels=8),
    amcdyn.WriteVerify(tolerance=0.2e-6, max_pulses=20, step=0.7, sigma_write=0.1),
    amcdyn.StuckAt(rate_min=1e-3, rate_max=1e-3, g_min=0.5e-6, g_max=35e-6),
))
g_programmed = prog(g_target, key=jax.random.PRNGKey(0))
```

!!! note "Absent devices"

    A conductance of exactly `0` marks an absent device (for example the $G^-$ entry of a
    positive matrix element, see `INV.from_matrix`). Every stage leaves such entries at exactly
    `0`: the window does not quantize them up to `g_min`, variation and stuck-at faults do not
    touch them, and write-verify does not program them. A device that should sit in its
    high-resistance state must be given that conductance explicitly.
"""

import abc
import warnings
from typing import Literal

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._validate import check_nonnegative, is_concrete


# --------------------------------------------------------------------------------------------
# Helpers


def _check_real(name, x, *, lo=None, lo_open=False, hi=None, hi_open=False):
    """Raise a `ValueError` naming `name` if the concrete value `x` is NaN/inf or out of range."""
    if not is_concrete(x):
        return
    a = np.asarray(x, dtype=float)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"`{name}` must be finite (no NaN or inf), got {x!r}")
    if lo is not None and np.any(a <= lo if lo_open else a < lo):
        raise ValueError(f"`{name}` must be {'>' if lo_open else '>='} {lo}, got {x!r}")
    if hi is not None and np.any(a >= hi if hi_open else a > hi):
        raise ValueError(f"`{name}` must be {'<' if hi_open else '<='} {hi}, got {x!r}")


def _check_int(name, x, *, lo):
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise ValueError(f"`{name}` must be a Python int, got {x!r}")
    if x < lo:
        raise ValueError(f"`{name}` must be >= {lo}, got {x!r}")


def _check_choice(name, x, choices):
    if x not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}; got {x!r}")


def _as_float_array(g) -> Array:
    g = jnp.asarray(g)
    if not jnp.issubdtype(g.dtype, jnp.floating):
        g = g.astype(jnp.result_type(float))
    return g


def _check_g(g) -> Array:
    """Convert the input conductances; for concrete input check they are finite and >= 0."""
    check_nonnegative("g", g)
    return _as_float_array(g)


def _cast(x, dtype) -> Array:
    # Parameters are cast to the dtype of `g`, so a float32 conductance array stays float32 even
    # when the parameters were built as (weakly typed) float64 under `jax_enable_x64`.
    return jnp.asarray(x).astype(dtype)


def _lerp(t, lo, hi):
    # (1 - t) lo + t hi rather than lo + t (hi - lo): exact at both ends, so the top level is
    # exactly `g_max` and the bottom one exactly `g_min`.
    return (1 - t) * lo + t * hi


def _soft_round(u, alpha):
    """Soft rounding of Agustsson & Theis (2020): `round` as `alpha -> inf`, identity as `-> 0`.

    Continuous and increasing in `u`, and exact at integers (so the window ends stay fixed).
    `floor` is piecewise constant and contributes no gradient; the gradient is that of `tanh`.
    """
    m = jnp.floor(u) + 0.5
    return m + jnp.tanh(alpha * (u - m)) / (2 * jnp.tanh(alpha / 2))


@eqx.filter_jit
def _jit_apply(stage, g, key):
    # Stages validate concrete input eagerly in `__call__`, then run their arithmetic through
    # this one compiled function. Called eagerly, the arithmetic would otherwise dispatch (and on
    # first use compile) every primitive on its own, and an eager `lax.while_loop` recompiles
    # at every call; compiled once per stage structure, shape and dtype, eager use is as fast as
    # jitted use. Inside an outer `jit`/`vmap`/`grad` this is simply inlined.
    return stage._apply(g, key)


# --------------------------------------------------------------------------------------------
# Interface


class AbstractDeviceStage(eqx.Module):
    """A map from an array of conductances to another of the same shape and dtype (S).

    Subclasses are final and implement `__call__(g, *, key)`. Random stages require `key`;
    deterministic ones ignore it and also accept `key=None`.
    """

    @abc.abstractmethod
    def __call__(
        self, g: Float[ArrayLike, "*shape"], *, key: PRNGKeyArray
    ) -> Float[Array, "*shape"]:
        """Apply the stage to the conductances `g` (S), drawing any randomness from `key`."""


# --------------------------------------------------------------------------------------------
# Window and quantization


class ConductanceWindow(AbstractDeviceStage):
    r"""Map target conductances into the device window $[G_\mathrm{min}, G_\mathrm{max}]$,
    optionally onto $L$ uniformly spaced levels.

    With `levels=L` every non-zero conductance becomes the nearest of

    $$G_k = (1 - k/(L-1))\,G_\mathrm{min} + (k/(L-1))\,G_\mathrm{max},\qquad k = 0, \dots, L-1,$$

    e.g. 8 levels (3 bit) in 0.5–35 µS for 40-nm TaOx 1T1R cells, or 16 levels (4 bit) with
    on-chip write-verify. The levels are available as `window.grid()`. Quantizing twice gives the
    same result as quantizing once.

    **Gradients.** Rounding has zero derivative almost everywhere, which would stop any gradient
    from reaching the target conductances. By default the rounding uses a *straight-through
    estimator*: the forward value is exactly the rounded level, and the backward pass treats
    rounding as the identity, so $\partial G_\mathrm{out}/\partial G = 1$ inside the window,
    bounds included (and `0` outside, where the clip is flat); the derivatives with respect to
    `g_min` and `g_max` are those of the chosen level, $1 - k/(L-1)$ and $k/(L-1)$.

    With `smooth=τ` the hard rounding is replaced by the soft rounding of Agustsson & Theis
    (2020) at temperature `τ` (in units of the level spacing): the forward value is then no
    longer exactly on a level, tends to hard rounding as `τ → 0` and to the identity (plain
    clipping) as `τ → ∞`, and the gradient is its true derivative.

    **Out-of-window targets.** For concrete input (outside `jit`/`vmap`/`grad` tracing),
    `mode="error"` raises a `ValueError` naming `g`, and `mode="clip"` clips and emits a
    `UserWarning`. When `g` is traced, `mode="clip"` clips silently and `mode="error"` raises at
    run time through `eqx.error_if`. A relative slack of $10^{-6}$ of the window width absorbs
    round-off, e.g. from `g0 * a` landing a hair above `g_max`.

    **Absent devices.** A conductance of exactly `0` stays `0` (it is neither clipped nor
    quantized up to `g_min`, and its gradient is `0`): it marks a device that is not there, such
    as the $G^-$ entry of a positive matrix element. Negative conductances are out of the window.

    **Arguments:**

    - `g_min`, `g_max`: window bounds (S), $0 \le G_\mathrm{min} < G_\mathrm{max}$; scalars or
      arrays broadcastable to `g`.
    - `levels`: number of levels $L \ge 2$, or `None` (default) for a continuous window.
    - `mode`: `"clip"` (default) or `"error"`.
    - `smooth`: soft-rounding temperature `τ > 0` (dimensionless, in level spacings), or `None`
      (default) for hard rounding with the straight-through gradient. Needs `levels`.

    **Raises:** `ValueError` naming the argument for a non-finite or negative `g_min`,
    `g_max <= g_min`, `levels` not an int >= 2, an unknown `mode`, a non-positive `smooth`, or
    `smooth` without `levels`.

    ??? cite "References"

        ```bibtex
        @inproceedings{agustsson2020universally,
            title={Universally Quantized Neural Compression},
            author={Agustsson, Eirikur and Theis, Lucas},
            booktitle={Advances in Neural Information Processing Systems},
            year={2020}
        }
        ```
    """

    g_min: Float[Array, "*#shape"]
    g_max: Float[Array, "*#shape"]
    smooth: Float[Array, ""] | None
    levels: int | None = eqx.field(static=True)
    mode: Literal["clip", "error"] = eqx.field(static=True)

    def __init__(
        self,
        g_min: Float[ArrayLike, "*#shape"],
        g_max: Float[ArrayLike, "*#shape"],
        levels: int | None = None,
        mode: Literal["clip", "error"] = "clip",
        *,
        smooth: float | Float[ArrayLike, ""] | None = None,
    ):
        _check_real("g_min", g_min, lo=0.0)
        _check_real("g_max", g_max, lo=0.0, lo_open=True)
        if is_concrete(g_min) and is_concrete(g_max):
            if np.any(np.asarray(g_max, float) <= np.asarray(g_min, float)):
                raise ValueError(f"`g_max` must be > `g_min`, got g_min={g_min!r}, g_max={g_max!r}")
        if levels is not None:
            _check_int("levels", levels, lo=2)
        _check_choice("mode", mode, ("clip", "error"))
        if smooth is not None:
            if levels is None:
                raise ValueError("`smooth` needs `levels`: without levels nothing is rounded")
            _check_real("smooth", smooth, lo=0.0, lo_open=True)
        self.g_min = jnp.asarray(g_min)
        self.g_max = jnp.asarray(g_max)
        self.smooth = None if smooth is None else jnp.asarray(smooth)
        self.levels = None if levels is None else int(levels)
        self.mode = mode

    def grid(self, dtype=None) -> Float[Array, "levels *#shape"]:
        """The `levels` conductance levels (S), from `g_min` to `g_max`, along the first axis."""
        if self.levels is None:
            raise ValueError("`levels` is None: a continuous window has no grid of levels")
        dtype = jnp.result_type(float) if dtype is None else dtype
        g_min, g_max = _cast(self.g_min, dtype), _cast(self.g_max, dtype)
        k = jnp.arange(self.levels, dtype=dtype).reshape((-1,) + (1,) * jnp.ndim(g_min + g_max))
        # Snap approximate levels through the window itself (with hard rounding), so that the
        # grid is bit-for-bit what the window outputs: the compiled arithmetic may contract
        # `(1 - t) lo + t hi` into a fused multiply-add, which an op-by-op evaluation does not.
        approx = _lerp(k / (self.levels - 1), g_min, g_max)
        return _jit_apply(eqx.tree_at(lambda w: w.smooth, self, None), approx, None)

    def __call__(
        self, g: Float[ArrayLike, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        """Map `g` (S) into the window (and onto the levels); zeros stay zero. `key` is unused."""
        del key
        if is_concrete(g) and is_concrete(self.g_min) and is_concrete(self.g_max):
            a = np.asarray(g, dtype=float)
            if not np.all(np.isfinite(a)):
                raise ValueError(f"`g` must be finite (no NaN or inf), got {g!r}")
            lo, hi = np.asarray(self.g_min, float), np.asarray(self.g_max, float)
            # Round-off slack, e.g. for `g0 * a` landing a hair above `g_max`.
            slack = 1e-6 * (hi - lo)
            n_out = int(np.sum((a != 0) & ((a < lo - slack) | (a > hi + slack))))
            if n_out:
                msg = (
                    f"`g` has {n_out} of {a.size} conductances outside the window "
                    f"[g_min, g_max] = [{np.min(lo):.4g}, {np.max(hi):.4g}] S (observed range "
                    f"[{np.min(a):.4g}, {np.max(a):.4g}] S)"
                )
                if self.mode == "error":
                    raise ValueError(msg + "; use mode='clip' to clip them")
                warnings.warn(msg + "; clipping them to the window", UserWarning, stacklevel=2)
        return _jit_apply(self, _as_float_array(g), None)

    def _apply(self, g, key):
        del key
        dtype = g.dtype
        g_min, g_max = _cast(self.g_min, dtype), _cast(self.g_max, dtype)
        absent = g == 0
        if self.mode == "error":
            # Concrete input was already checked in `__call__`; this catches traced input.
            slack = 1e-6 * (g_max - g_min)
            outside = ~absent & ((g < g_min - slack) | (g > g_max + slack))
            g = eqx.error_if(
                g, jnp.any(outside), "`g` has conductances outside [g_min, g_max] (mode='error')"
            )
        # Not `jnp.clip`: its derivative is 1/2 at a bound, but `g_min` and `g_max` are valid
        # targets (the end levels), so the derivative there must be 1 as inside.
        out = jnp.where(g < g_min, g_min, jnp.where(g > g_max, g_max, g))
        if self.levels is not None:
            n = self.levels - 1
            u = (out - g_min) / (g_max - g_min) * n
            if self.smooth is None:
                # Straight-through estimator. `out - stop_gradient(out)` is exactly 0 in the
                # forward pass (so the value is exactly the level) and has derivative 1 with
                # respect to `g` inside the window. The levels themselves keep their true
                # derivatives 1 - k/n and k/n with respect to `g_min` and `g_max`.
                level = _lerp(lax.stop_gradient(jnp.round(u)) / n, g_min, g_max)
                out = level + (out - lax.stop_gradient(out))
            else:
                out = _lerp(_soft_round(u, 1 / _cast(self.smooth, dtype)) / n, g_min, g_max)
        return jnp.where(absent, jnp.zeros((), dtype), out)


# --------------------------------------------------------------------------------------------
# Random stages


class Variation(AbstractDeviceStage):
    r"""Device-to-device conductance variation (one draw per device and per `key`).

    With $\xi \sim \mathcal N(0, 1)$ independent per device:

    - `kind="gaussian"` (default): relative, $G(1 + \sigma\xi)$, clipped at 0 (mean $G$ when
      $\sigma \lesssim 1/3$; the clip adds a bias above that).
    - `kind="lognormal"`: $G e^{\sigma\xi}$, always positive; $\ln(G_\mathrm{out}/G)$ has mean 0
      and standard deviation $\sigma$, so the mean conductance is $G e^{\sigma^2/2}$ (it is not
      corrected to $G$).
    - `kind="absolute"`: $G + \sigma\xi$ with $\sigma$ in S, clipped at 0.

    Absent devices (`g == 0`) stay 0 for every kind. The result is differentiable in `g` and in
    `sigma` (zero derivative where clipped).

    **Arguments:**

    - `sigma`: $\sigma \ge 0$: dimensionless for `"gaussian"`/`"lognormal"`, in S for
      `"absolute"`; a scalar or an array broadcastable to `g`.
    - `kind`: `"gaussian"`, `"lognormal"` or `"absolute"`.

    **Raises:** `ValueError` naming the argument for a negative or non-finite `sigma` or an
    unknown `kind`.
    """

    sigma: Float[Array, "*#shape"]
    kind: Literal["gaussian", "lognormal", "absolute"] = eqx.field(static=True)

    def __init__(
        self,
        sigma: Float[ArrayLike, "*#shape"],
        kind: Literal["gaussian", "lognormal", "absolute"] = "gaussian",
    ):
        _check_real("sigma", sigma, lo=0.0)
        _check_choice("kind", kind, ("gaussian", "lognormal", "absolute"))
        self.sigma = jnp.asarray(sigma)
        self.kind = kind

    def __call__(
        self, g: Float[ArrayLike, "*shape"], *, key: PRNGKeyArray
    ) -> Float[Array, "*shape"]:
        """Draw varied conductances (S) for the nominal conductances `g` (S)."""
        return _jit_apply(self, _check_g(g), key)

    def _apply(self, g, key):
        sigma = _cast(self.sigma, g.dtype)
        xi = jr.normal(key, g.shape, g.dtype)
        if self.kind == "gaussian":
            return jnp.maximum(g * (1 + sigma * xi), 0)
        if self.kind == "lognormal":
            return g * jnp.exp(sigma * xi)
        return jnp.where(g == 0, 0, jnp.maximum(g + sigma * xi, 0))


class ReadNoise(AbstractDeviceStage):
    r"""Relative Gaussian read noise: each call is one read, $G(1 + \sigma\xi)$ clipped at 0.

    A fresh $\xi \sim \mathcal N(0, 1)$ is drawn per device and per `key`, so `jax.vmap` over
    keys gives independent reads of the same programmed array; unlike [`amcdyn.Variation`][],
    which models a frozen programming error, this models a fluctuation that changes from one read
    (one circuit evaluation) to the next. The clip at 0 only matters for $\sigma \gtrsim 1/3$.

    **Arguments:**

    - `sigma`: relative standard deviation $\sigma \ge 0$ (dimensionless); a scalar or an array
      broadcastable to `g`.

    **Raises:** `ValueError` naming `sigma` if it is negative or non-finite.
    """

    sigma: Float[Array, "*#shape"]

    def __init__(self, sigma: Float[ArrayLike, "*#shape"]):
        _check_real("sigma", sigma, lo=0.0)
        self.sigma = jnp.asarray(sigma)

    def __call__(
        self, g: Float[ArrayLike, "*shape"], *, key: PRNGKeyArray
    ) -> Float[Array, "*shape"]:
        """One noisy read (S) of the conductances `g` (S)."""
        return _jit_apply(self, _check_g(g), key)

    def _apply(self, g, key):
        xi = jr.normal(key, g.shape, g.dtype)
        return jnp.maximum(g * (1 + _cast(self.sigma, g.dtype) * xi), 0)


class StuckAt(AbstractDeviceStage):
    r"""Stuck-at faults: each device independently is stuck at `g_min` with probability
    `rate_min`, stuck at `g_max` with probability `rate_max`, and otherwise keeps its value.

    One uniform draw $u \sim U[0, 1)$ per device decides: $u <$ `rate_min` gives `g_min`,
    `rate_min` $\le u <$ `rate_min + rate_max` gives `g_max`. The two faults are therefore
    mutually exclusive and their rates are exact marginals. Absent devices (`g == 0`) stay 0.
    The result is differentiable in `g` (derivative 1 on healthy devices, 0 on stuck ones) and
    in `g_min`/`g_max`; the rates enter only through comparisons (no gradient).

    **Arguments:**

    - `rate_min`, `rate_max`: fault probabilities in $[0, 1]$ with `rate_min + rate_max <= 1`
      (dimensionless); scalars or arrays broadcastable to `g`.
    - `g_min`, `g_max`: the stuck conductances (S), $0 \le$ `g_min` $<$ `g_max`, e.g. the
      high- and low-resistance states.

    **Raises:** `ValueError` naming the argument for a rate outside $[0, 1]$, rates summing to
    more than 1, or conductances that are negative, non-finite or in the wrong order.
    """

    rate_min: Float[Array, "*#shape"]
    rate_max: Float[Array, "*#shape"]
    g_min: Float[Array, "*#shape"]
    g_max: Float[Array, "*#shape"]

    def __init__(
        self,
        rate_min: Float[ArrayLike, "*#shape"],
        rate_max: Float[ArrayLike, "*#shape"],
        g_min: Float[ArrayLike, "*#shape"],
        g_max: Float[ArrayLike, "*#shape"],
    ):
        _check_real("rate_min", rate_min, lo=0.0, hi=1.0)
        _check_real("rate_max", rate_max, lo=0.0, hi=1.0)
        if is_concrete(rate_min) and is_concrete(rate_max):
            total = np.asarray(rate_min, float) + np.asarray(rate_max, float)
            if np.any(total > 1):
                raise ValueError(
                    f"`rate_min` + `rate_max` must be <= 1, got {rate_min!r} + {rate_max!r}"
                )
        _check_real("g_min", g_min, lo=0.0)
        _check_real("g_max", g_max, lo=0.0, lo_open=True)
        if is_concrete(g_min) and is_concrete(g_max):
            if np.any(np.asarray(g_max, float) <= np.asarray(g_min, float)):
                raise ValueError(f"`g_max` must be > `g_min`, got g_min={g_min!r}, g_max={g_max!r}")
        self.rate_min = jnp.asarray(rate_min)
        self.rate_max = jnp.asarray(rate_max)
        self.g_min = jnp.asarray(g_min)
        self.g_max = jnp.asarray(g_max)

    def __call__(
        self, g: Float[ArrayLike, "*shape"], *, key: PRNGKeyArray
    ) -> Float[Array, "*shape"]:
        """Apply stuck-at faults (S) to the conductances `g` (S)."""
        return _jit_apply(self, _check_g(g), key)

    def _apply(self, g, key):
        dtype = g.dtype
        rate_min = _cast(self.rate_min, dtype)
        rate_max = _cast(self.rate_max, dtype)
        u = jr.uniform(key, g.shape, dtype)
        out = jnp.where(u < rate_min, _cast(self.g_min, dtype), g)
        out = jnp.where((u >= rate_min) & (u < rate_min + rate_max), _cast(self.g_max, dtype), out)
        return jnp.where(g == 0, 0, out)


class WriteVerify(AbstractDeviceStage):
    r"""Iterative program-and-verify with noisy write pulses (a phenomenological model).

    This is a behavioural model of a write-verify loop (such as the ASAP scheme used for HP-INV
    or GRAMC's on-chip write-verify), not a model of the device physics: it says nothing about
    pulse amplitudes, widths or the filament. Every device starts at `g_start` and is read
    (an ideal, noise-free verify) before each pulse. While $|G - G_\mathrm{target}| >$
    `tolerance` and the pulse budget is not spent, one pulse moves it a fraction `step` of the
    remaining distance toward the target, with multiplicative write noise on that move:

    $$G_{k+1} = \max\bigl(0,\; G_k + \eta\,(G_\mathrm{target} - G_k)\,(1 + \sigma_w \xi_k)\bigr),
      \qquad \xi_k \sim \mathcal N(0, 1)\ \text{per device and pulse}.$$

    Without noise the error shrinks by $(1 - \eta)$ per pulse; the noise makes pulses under- or
    overshoot, so the number of pulses varies from device to device. A device stops at the first
    verify within `tolerance`, so on convergence $|G - G_\mathrm{target}| \le$ `tolerance`;
    otherwise it stops after `max_pulses` pulses at whatever it reached. Absent devices
    (`g == 0`) are not programmed (0 pulses, stay 0). Chain a [`amcdyn.ReadNoise`][] or
    [`amcdyn.Variation`][] after it to model read noise or post-programming relaxation.

    The loop is a `jax.lax.while_loop` that stops when every device is done (so it is
    `jit`/`vmap`-able), with masking per device. The draws depend only on `key` and the pulse
    index, so a device's result does not depend on whether it was `vmap`ped or batched.

    **Gradients.** Reverse-mode differentiation through the loop is not supported by JAX and
    would be meaningless for a discrete stopping rule, so the output is straight-through: its
    value is the programmed conductance and its derivative with respect to `g` is 1 (and 0 with
    respect to the parameters of this stage).

    **Arguments:**

    - `tolerance`: verify tolerance on $|G - G_\mathrm{target}|$ (S), $\ge 0$; scalar or
      broadcastable to `g`.
    - `max_pulses`: pulse budget per device (a Python int $\ge 1$).
    - `step`: fraction $\eta \in (0, 1]$ of the remaining error moved per pulse (dimensionless).
    - `sigma_write`: relative write noise $\sigma_w \ge 0$ on each move (dimensionless).
    - `g_start`: conductance before the first pulse (S), $\ge 0$, default `0.0`; for example
      the high-resistance state.

    **Raises:** `ValueError` naming the argument for a negative or non-finite value, `step`
    outside $(0, 1]$, or `max_pulses` not an int >= 1.
    """

    tolerance: Float[Array, "*#shape"]
    step: Float[Array, "*#shape"]
    sigma_write: Float[Array, "*#shape"]
    g_start: Float[Array, "*#shape"]
    max_pulses: int = eqx.field(static=True)

    def __init__(
        self,
        tolerance: Float[ArrayLike, "*#shape"],
        max_pulses: int,
        step: Float[ArrayLike, "*#shape"] = 0.5,
        sigma_write: Float[ArrayLike, "*#shape"] = 0.1,
        *,
        g_start: Float[ArrayLike, "*#shape"] = 0.0,
    ):
        _check_real("tolerance", tolerance, lo=0.0)
        _check_int("max_pulses", max_pulses, lo=1)
        _check_real("step", step, lo=0.0, lo_open=True, hi=1.0)
        _check_real("sigma_write", sigma_write, lo=0.0)
        _check_real("g_start", g_start, lo=0.0)
        self.tolerance = jnp.asarray(tolerance)
        self.max_pulses = int(max_pulses)
        self.step = jnp.asarray(step)
        self.sigma_write = jnp.asarray(sigma_write)
        self.g_start = jnp.asarray(g_start)

    def program(
        self, g: Float[ArrayLike, "*shape"], *, key: PRNGKeyArray
    ) -> tuple[Float[Array, "*shape"], Int[Array, "*shape"]]:
        """Program the target conductances `g` (S).

        **Returns:** `(g_programmed, pulses)`: the achieved conductances (S, same shape and
        dtype as `g`) and the number of pulses each device received (int32, `<= max_pulses`).
        A device converged if `abs(g_programmed - g) <= tolerance`.
        """
        return _jit_apply(self, _check_g(g), key)

    def _apply(self, g, key):
        dtype, shape = g.dtype, g.shape
        # The loop runs on stop-gradient copies so that no tangent enters the while_loop; the
        # straight-through derivative is added back at the end.
        target = lax.stop_gradient(g)
        tol, step, sigma, g_start = (
            jnp.broadcast_to(lax.stop_gradient(_cast(p, dtype)), shape)
            for p in (self.tolerance, self.step, self.sigma_write, self.g_start)
        )
        absent = target == 0
        g_cur = jnp.where(absent, 0, g_start)
        done = absent | (jnp.abs(g_cur - target) <= tol)
        pulses = jnp.zeros(shape, jnp.int32)

        def cond(carry):
            i, _, done, _ = carry
            return (i < self.max_pulses) & ~jnp.all(done)

        def body(carry):
            i, g_cur, done, pulses = carry
            xi = jr.normal(jr.fold_in(key, i), shape, dtype)
            g_new = jnp.maximum(g_cur + step * (target - g_cur) * (1 + sigma * xi), 0)
            g_cur = jnp.where(done, g_cur, g_new)
            pulses = pulses + (~done).astype(jnp.int32)
            done = done | (jnp.abs(g_cur - target) <= tol)
            return i + 1, g_cur, done, pulses

        init = (jnp.asarray(0, jnp.int32), g_cur, done, pulses)
        _, g_cur, _, pulses = lax.while_loop(cond, body, init)
        return g_cur + (g - target), pulses

    def __call__(
        self, g: Float[ArrayLike, "*shape"], *, key: PRNGKeyArray
    ) -> Float[Array, "*shape"]:
        """The programmed conductances (S) only; see `program` for the pulse counts."""
        return self.program(g, key=key)[0]


# --------------------------------------------------------------------------------------------
# Composition


class Programming(AbstractDeviceStage):
    """A sequence of device stages applied in order, e.g. window → write-verify → faults.

    `key` is split into one key per stage (`jax.random.split(key, len(stages))`, deterministic
    stages included), so each stage draws independently and the same `key` reproduces the same
    result. A `Programming` is itself a stage and can be nested.

    **Arguments:**

    - `stages`: a tuple (or any iterable) of [`amcdyn.AbstractDeviceStage`][]s.

    **Raises:** `ValueError` naming `stages[i]` if an entry is not a stage.
    """

    stages: tuple[AbstractDeviceStage, ...]

    def __init__(self, stages: tuple[AbstractDeviceStage, ...]):
        stages = tuple(stages)
        for i, stage in enumerate(stages):
            if not isinstance(stage, AbstractDeviceStage):
                raise ValueError(
                    f"`stages[{i}]` must be an AbstractDeviceStage (e.g. ConductanceWindow, "
                    f"Variation), got {type(stage).__name__}"
                )
        self.stages = stages

    def __call__(
        self, g: Float[ArrayLike, "*shape"], *, key: PRNGKeyArray
    ) -> Float[Array, "*shape"]:
        """Apply every stage to `g` (S) in order and return the resulting conductances (S)."""
        g = _as_float_array(g)
        if not self.stages:
            return g
        keys = jr.split(key, len(self.stages))
        for stage, k in zip(self.stages, keys):
            g = stage(g, key=k)
        return g
