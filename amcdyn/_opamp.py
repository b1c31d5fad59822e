"""The operational-amplifier model: one or two poles, input offset, static power, and the
optional output rails and slew-rate limit."""

import math
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._validate import check_finite, check_nonnegative, check_positive, is_concrete


# Default static power model P = P_STATIC + K_GBW * f_GBW (W per amplifier). amc-physics.md
# §13 has no op-amp power figure ([NA]), so the defaults are a straight line through two
# discrete op-amps that the reference names, both at a 10 V supply span and their
# datasheets' typical quiescent currents: AD823 (2.6 mA per amplifier, 16 MHz) -> 26 mW and
# OPA690 (5.5 mA, about 300 MHz gain-bandwidth; 500 MHz small-signal bandwidth at G = 1)
# -> 55 mW. Slope (55 - 26) mW / (300 - 16) MHz ~ 1e-10 W/Hz, intercept ~ 25 mW. These
# are board-level parts; an integrated amplifier is one to three orders of magnitude below:
# set `p_static`/`k_gbw` (or `power_model`) for the technology being studied.
P_STATIC = 25e-3  # W
K_GBW = 1e-10  # W/Hz (0.1 mW per MHz of gain-bandwidth)

# Rail knee: outward motion is throttled by 1 - (V/v_sat)^RAIL_POWER (linear within 1% up to
# 0.56 v_sat, and a stiffness of only RAIL_POWER * rate / v_sat at the rail).
RAIL_POWER = 8
# A limit counts as "hit" when |V| > LIMIT_FLAG * v_sat or |dV/dt| > LIMIT_FLAG * SR.
LIMIT_FLAG = 0.9


def limit_rate(rate, state, v_sat, slew_rate, w_t):
    r"""Apply an amplifier stage's slew-rate limit and output rails to its rate (V/s).

    Slew: $r \to \mathrm{SR}\tanh(r/\mathrm{SR})$ (the tanh transfer of a differential input
    pair whose tail current charges the compensation capacitor). Rails: motion towards a rail
    is multiplied by $1 - (V/v_\mathrm{sat})^8$ (the sign of the rate taken smoothly), so the
    state stops at $\pm v_\mathrm{sat}$ without wind-up while motion away from the rail is
    unaffected. `None` limits are skipped (the linear model).

    **Returns:** `(rate, rail_excess, slew_excess)`; the excesses are
    $\sum_i \max(0, |V_i|/v_\mathrm{sat} - 0.9)$ and the same for $|\dot V_i|/\mathrm{SR}$:
    zero exactly while the stage stays clear of its limits.
    """
    zero = jnp.zeros((), rate.dtype)
    rail, slew = zero, zero
    if slew_rate is not None:
        rate = slew_rate * jnp.tanh(rate / slew_rate)
    if v_sat is not None:
        # Smooth sign of the rate; its width (1e-6 of w_T v_sat, i.e. a rate that crosses the
        # range in 1e6 unity-gain periods) only matters where the rate changes sign at a rail.
        up = 0.5 * (1 + jnp.tanh(rate / (1e-6 * w_t * v_sat)))
        g_up = (jnp.maximum(state, 0) / v_sat) ** RAIL_POWER
        g_dn = (jnp.maximum(-state, 0) / v_sat) ** RAIL_POWER
        rate = rate * (1 - up * g_up - (1 - up) * g_dn)
        rail = jnp.sum(jnp.maximum(jnp.abs(state) / v_sat - LIMIT_FLAG, 0))
    if slew_rate is not None:
        slew = jnp.sum(jnp.maximum(jnp.abs(rate) / slew_rate - LIMIT_FLAG, 0))
    return rate, rail, slew


def _check_limit(name, value):
    """None (no limit) or the validated positive, finite array."""
    if value is None:
        return None
    check_positive(name, value)
    return jnp.asarray(value)


def _check_f_p2(name, f_p2):
    """None for a single pole (None, or inf for every amplifier); else the array."""
    if f_p2 is None:
        return None
    if not is_concrete(f_p2):
        return jnp.asarray(f_p2)
    check_positive(name, f_p2, allow_inf=True)
    inf = np.isinf(np.asarray(f_p2, dtype=float))
    if np.all(inf):
        return None
    if np.any(inf):
        raise ValueError(
            f"`{name}` must be finite for every amplifier, or inf (no second pole) for all of "
            f"them; got {f_p2!r}"
        )
    return jnp.asarray(f_p2)


class OpAmp(eqx.Module):
    r"""Operational amplifier with one or two poles, an input offset and a static power.

    Open-loop gain, single pole (`f_p2=None`, the default) or two poles:

    $$A(s) = \frac{A_0}{1 + s/\omega_0}, \qquad
      A(s) = \frac{A_0}{(1 + s/\omega_0)(1 + s/\omega_{p2})},$$

    with $\omega_T = A_0\omega_0 = 2\pi f_\mathrm{GBW}$ and $\omega_{p2} = 2\pi f_{p2}$. The
    input offset $v_\mathrm{os}$ is a DC source in series with the non-inverting input, so the
    amplifier sees $v_+ + v_\mathrm{os} - v_-$. In state-space form (single pole):

    $$\dot V_\mathrm{out} = -\omega_0 V_\mathrm{out} + \omega_T (v_+ + v_\mathrm{os} - v_-),$$

    and with the second pole an internal first-pole state $x$ drives the output through a
    unity-gain low-pass:

    $$\dot x = -\omega_0 x + \omega_T (v_+ + v_\mathrm{os} - v_-), \qquad
      \dot V_\mathrm{out} = \omega_{p2} (x - V_\mathrm{out}).$$

    `a0 = inf` gives the integrator limit ($\omega_0 = 0$). The static power drawn is
    $P = P_\mathrm{static} + k_\mathrm{GBW} f_\mathrm{GBW}$ (see `power`).

    **Arguments:**

    - `a0`: DC open-loop gain (V/V); a scalar or one value per amplifier.
    - `f_gbw`: gain-bandwidth product (Hz); a scalar or one value per amplifier.
    - `f_p2`: second-pole frequency (Hz, > 0); `None` (default) or `inf` for a single pole.
      A scalar or one value per amplifier, finite for all of them.
    - `v_os`: input offset voltage (V), scalar or per amplifier; default 0.
    - `p_static`: power drawn at zero gain-bandwidth (W, >= 0); default 25 mW.
    - `k_gbw`: power per hertz of gain-bandwidth (W/Hz, >= 0); default 1e-10 W/Hz. The
      defaults are a line through the AD823 and OPA690 datasheet figures (see
      `amcdyn._opamp.P_STATIC`); amc-physics.md gives no op-amp power.
    - `power_model`: optional callable `f_gbw -> W per amplifier` that replaces the linear
      model (it must be written in `jax.numpy` to be differentiable).
    - `v_sat`: output rail (V, > 0): the output stays within $\pm v_\mathrm{sat}$ (smooth
      knee, see `amcdyn._opamp.limit_rate`); `None` (default): no rails.
    - `slew_rate`: slew-rate limit SR (V/s, > 0): $|\dot V| < \mathrm{SR}$ through
      $\mathrm{SR}\tanh(\cdot/\mathrm{SR})$ on the rate; `None` (default): no limit.
      With either limit the circuit is nonlinear: only [`amcdyn.simulate`][] accepts it.

    **Raises:** `ValueError` naming the argument for a non-positive `a0`/`f_gbw`/`f_p2`/
    `v_sat`/`slew_rate`, a non-finite `v_os`, a negative `p_static`/`k_gbw`.
    """

    a0: Float[Array, "*amps"]
    f_gbw: Float[Array, "*amps"]
    f_p2: Float[Array, "*amps"] | None
    v_os: Float[Array, "*amps"]
    p_static: Float[Array, "*amps"]
    k_gbw: Float[Array, "*amps"]
    power_model: Callable[[Array], Array] | None = eqx.field(static=True)
    v_sat: Float[Array, "*amps"] | None = None
    slew_rate: Float[Array, "*amps"] | None = None

    def __init__(
        self,
        a0: Float[ArrayLike, "*amps"] = 1e5,
        f_gbw: Float[ArrayLike, "*amps"] = 1e8,
        *,
        f_p2: Float[ArrayLike, "*amps"] | None = None,
        v_os: Float[ArrayLike, "*amps"] = 0.0,
        p_static: Float[ArrayLike, "*amps"] = P_STATIC,
        k_gbw: Float[ArrayLike, "*amps"] = K_GBW,
        power_model: Callable[[Array], Array] | None = None,
        v_sat: Float[ArrayLike, "*amps"] | None = None,
        slew_rate: Float[ArrayLike, "*amps"] | None = None,
    ):
        check_positive("a0", a0, allow_inf=True)
        check_positive("f_gbw", f_gbw)
        check_finite("v_os", v_os)
        check_nonnegative("p_static", p_static)
        check_nonnegative("k_gbw", k_gbw)
        if power_model is not None and not callable(power_model):
            raise ValueError(f"`power_model` must be callable or None, got {power_model!r}")
        self.a0 = jnp.asarray(a0)
        self.f_gbw = jnp.asarray(f_gbw)
        self.f_p2 = _check_f_p2("f_p2", f_p2)
        self.v_os = jnp.asarray(v_os)
        self.p_static = jnp.asarray(p_static)
        self.k_gbw = jnp.asarray(k_gbw)
        self.power_model = power_model
        self.v_sat = _check_limit("v_sat", v_sat)
        self.slew_rate = _check_limit("slew_rate", slew_rate)

    @property
    def w_t(self) -> Float[Array, "*amps"]:
        """Unity-gain angular frequency $\\omega_T = 2\\pi f_\\mathrm{GBW}$ (rad/s)."""
        return 2 * math.pi * self.f_gbw

    @property
    def w0(self) -> Float[Array, "*amps"]:
        """Open-loop pole $\\omega_0 = \\omega_T / A_0$ (rad/s); 0 when `a0 = inf`."""
        return self.w_t / self.a0

    @property
    def w_p2(self) -> Float[Array, "*amps"] | None:
        """Second pole $\\omega_{p2} = 2\\pi f_{p2}$ (rad/s), or `None` for a single pole."""
        return None if self.f_p2 is None else 2 * math.pi * self.f_p2

    @property
    def nonlinear(self) -> bool:
        """Whether rails or a slew-rate limit are set (a static, structural property)."""
        return self.v_sat is not None or self.slew_rate is not None

    @property
    def two_pole(self) -> bool:
        """Whether the amplifier has a second pole (a static, structural property)."""
        return self.f_p2 is not None

    def power(self) -> Float[Array, "*amps"]:
        """Static power per amplifier (W): $P_\\mathrm{static} + k_\\mathrm{GBW} f_\\mathrm{GBW}$,
        or `power_model(f_gbw)`. Differentiable in `f_gbw` (and in `p_static`, `k_gbw`)."""
        if self.power_model is not None:
            return jnp.asarray(self.power_model(self.f_gbw))
        return self.p_static + self.k_gbw * self.f_gbw
