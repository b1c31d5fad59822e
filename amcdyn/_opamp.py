"""The single-pole operational-amplifier model."""

import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._validate import check_positive


class OpAmp(eqx.Module):
    r"""Single-pole operational amplifier.

    Open-loop gain $A(s) = A_0 / (1 + s/\omega_0)$ with unity-gain angular frequency
    $\omega_T = A_0\omega_0 = 2\pi f_\mathrm{GBW}$. In state-space form the output obeys

    $$\dot V_\mathrm{out} = -\omega_0 V_\mathrm{out} + \omega_T (v_+ - v_-).$$

    `a0 = inf` gives the integrator limit ($\omega_0 = 0$).

    **Arguments:**

    - `a0`: DC open-loop gain (V/V); a scalar or one value per amplifier.
    - `f_gbw`: gain-bandwidth product (Hz); a scalar or one value per amplifier.
    """

    a0: Float[Array, "*amps"]
    f_gbw: Float[Array, "*amps"]

    def __init__(
        self, a0: Float[ArrayLike, "*amps"] = 1e5, f_gbw: Float[ArrayLike, "*amps"] = 1e8
    ):
        check_positive("a0", a0, allow_inf=True)
        check_positive("f_gbw", f_gbw)
        self.a0 = jnp.asarray(a0)
        self.f_gbw = jnp.asarray(f_gbw)

    @property
    def w_t(self) -> Float[Array, "*amps"]:
        """Unity-gain angular frequency $\\omega_T = 2\\pi f_\\mathrm{GBW}$ (rad/s)."""
        return 2 * math.pi * self.f_gbw

    @property
    def w0(self) -> Float[Array, "*amps"]:
        """Open-loop pole $\\omega_0 = \\omega_T / A_0$ (rad/s); 0 when `a0 = inf`."""
        return self.w_t / self.a0
