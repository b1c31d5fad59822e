r"""Data converters at the edges of an AMC circuit: a DAC on the inputs, an ADC on the outputs.

Both are $B$-bit two's-complement (mid-tread) quantizers: levels $k\Delta$ with
$\Delta = V_\mathrm{FS}/2^{B-1}$ and $k = -2^{B-1}, \dots, 2^{B-1} - 1$, so $0$ is a level and
the range is $[-V_\mathrm{FS}, V_\mathrm{FS} - \Delta]$; values beyond it saturate. The forward
value is the quantized one; the gradient is the straight-through estimator (that of the
clipped identity), so design gradients flow through the converters. Each conversion costs
`energy_per_conversion` (J), by default a Walden figure of merit $E = \mathrm{FOM}\cdot 2^B$
with FOM = 50 fJ/step for the ADC (a typical SAR ADC) and 5 fJ/step for the DAC; set it for
the technology under study.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._validate import check_nonnegative, check_positive


ADC_FOM = 50e-15  # J per conversion step (Walden FOM), typical SAR ADC
DAC_FOM = 5e-15


class _Quantizer(eqx.Module):
    bits: int = eqx.field(static=True)
    full_scale: Float[Array, ""]
    energy_per_conversion: Float[Array, ""]

    def __init__(
        self,
        bits: int,
        full_scale: float | Float[ArrayLike, ""] = 1.0,
        energy_per_conversion: float | Float[ArrayLike, ""] | None = None,
    ):
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits <= 0:
            raise ValueError(f"`bits` must be a positive int, got {bits!r}")
        if bits > 52:
            raise ValueError(f"`bits` must be <= 52, got {bits!r}")
        check_positive("full_scale", full_scale)
        self.bits = int(bits)
        self.full_scale = jnp.asarray(full_scale)
        if energy_per_conversion is None:
            energy_per_conversion = self._fom * 2.0**bits
        check_nonnegative("energy_per_conversion", energy_per_conversion)
        self.energy_per_conversion = jnp.asarray(energy_per_conversion)

    @property
    def step(self) -> Float[Array, ""]:
        """Level spacing $\\Delta = V_\\mathrm{FS}/2^{B-1}$ (V)."""
        return self.full_scale / 2 ** (self.bits - 1)

    def __call__(self, v: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """Quantize `v` (V); the gradient is that of the clipped identity (straight-through)."""
        v = jnp.asarray(v)
        half = 2 ** (self.bits - 1)
        clipped = jnp.clip(v, -self.full_scale, self.full_scale - self.step)
        q = jnp.clip(jnp.round(v / self.step), -half, half - 1) * self.step
        return clipped + jax.lax.stop_gradient(q - clipped)

    def energy(self, count: int) -> Float[Array, ""]:
        """Energy of `count` conversions (J)."""
        return count * self.energy_per_conversion


class DAC(_Quantizer):
    """Input digital-to-analog converter: quantizes the encoded input vector (V).

    **Arguments:** `bits` (a positive int), `full_scale` (V, > 0), `energy_per_conversion`
    (J, >= 0; default 5 fJ·2^bits).
    """

    _fom = DAC_FOM


class ADC(_Quantizer):
    """Output analog-to-digital converter: quantizes the output voltages (V) before decoding.

    **Arguments:** `bits` (a positive int), `full_scale` (V, > 0), `energy_per_conversion`
    (J, >= 0; default 50 fJ·2^bits).
    """

    _fom = ADC_FOM
