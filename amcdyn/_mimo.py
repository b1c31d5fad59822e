r"""Complex-valued signal processing on real AMC circuits: massive-MIMO detection and precoding,
and the DFT/IDFT for OFDM (amc-physics.md §7; the review arXiv 2512.04365).

A complex matrix $H = H_r + iH_i$ acts on $x = x_r + ix_i$ as the real matrix

$$\tilde H = \begin{bmatrix} H_r & -H_i \\ H_i & H_r \end{bmatrix},\qquad
  \tilde x = \begin{bmatrix} x_r \\ x_i \end{bmatrix},$$

so $\widetilde{Hx} = \tilde H\tilde x$. The map is an algebra homomorphism with
$\widetilde{H^\mathsf{H}} = \tilde H^\top$, hence $\widetilde{H^+} = \tilde H^+$ and
$\widetilde{(H^\mathsf{H}H + \lambda I)^{-1}H^\mathsf{H}} =
(\tilde H^\top\tilde H + \lambda I)^{-1}\tilde H^\top$: complex ZF/MMSE detection and ZF
precoding are the real [`amcdyn.GINV`][] / [`amcdyn.Ridge`][] circuits on $\tilde H$
(twice the size, signed, so with $G^\pm$ arrays). The singular values of $\tilde H$ are those
of $H$, each twice.

Conventions:

- Channel $H$: `(n_rx, n_tx)`, i.i.d. $\mathcal{CN}(0, 1)$ entries (Rayleigh fading).
- Symbols: square Gray-coded $M$-QAM ($M = 4, 16$), unit average energy $E_s = 1$.
- Noise: $\mathcal{CN}(0, N_0)$ per receive antenna, $\mathrm{SNR} = E_s/N_0$ (so
  $N_0 = 10^{-\mathrm{SNR_{dB}}/10}$). The MMSE regularization is $\lambda = N_0/E_s$, the same
  for the real-equivalent problem (both sides of every real dimension halve).
- Uplink detection: $y = Hx + n$, $H$ is `(n_antennas, n_users)` (tall).
- Downlink ZF precoding: users receive $r = Hx + n$, $H$ is `(n_users, n_antennas)`
  (wide); $x = H^+ s = H^\mathsf{H}(HH^\mathsf{H})^{-1}s$ gives $r = s + n$ (transmit power is
  not normalized here).
"""

import math
from typing import Literal

import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Complex, Float, Int, PRNGKeyArray

from ._circuits import MVM
from ._ginv import GINV, Ridge
from ._validate import check_finite, check_ndim, check_nonnegative, is_concrete


# ------------------------------------------------------------------------------------------
# real-equivalent mapping


def _check_complex_matrix(name, h):
    check_ndim(name, h, 2)
    check_finite(name, h)


def real_equivalent_matrix(h: Complex[ArrayLike, "m n"]) -> Float[Array, "2*m 2*n"]:
    """$\\tilde H = [[H_r, -H_i], [H_i, H_r]]$, shape `(2m, 2n)`.

    **Raises:** `ValueError` naming `h` if it is not 2-D or not finite.
    """
    _check_complex_matrix("h", h)
    h = jnp.asarray(h)
    hr, hi = jnp.real(h), jnp.imag(h)
    return jnp.block([[hr, -hi], [hi, hr]])


def real_equivalent_vector(x: Complex[ArrayLike, "*batch n"]) -> Float[Array, "*batch 2*n"]:
    """$\\tilde x = [x_r; x_i]$ along the last axis."""
    x = jnp.asarray(x)
    return jnp.concatenate([jnp.real(x), jnp.imag(x)], axis=-1)


def complex_from_real(v: Float[ArrayLike, "*batch two_n"]) -> Complex[Array, "*batch n"]:
    """Inverse of [`amcdyn.mimo.real_equivalent_vector`][]: $v_{:n} + i v_{n:}$.

    **Raises:** `ValueError` naming `v` if its last axis has odd length.
    """
    if np.shape(v)[-1] % 2:
        raise ValueError(f"`v` must have an even last axis ([re; im]), got shape {np.shape(v)}")
    v = jnp.asarray(v)
    n = v.shape[-1] // 2
    return v[..., :n] + 1j * v[..., n:]


# ------------------------------------------------------------------------------------------
# channel, symbols, noise


def rayleigh_channel(
    key: PRNGKeyArray, n_rx: int, n_tx: int, *, dtype=jnp.complex128
) -> Complex[Array, "n_rx n_tx"]:
    """An i.i.d. Rayleigh-fading channel: entries $\\mathcal{CN}(0, 1)$, shape `(n_rx, n_tx)`."""
    for name, n in (("n_rx", n_rx), ("n_tx", n_tx)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"`{name}` must be a positive int, got {n!r}")
    real = jnp.finfo(dtype).dtype  # the real dtype of the same precision
    kr, ki = jr.split(key)
    hr = jr.normal(kr, (n_rx, n_tx), real)
    hi = jr.normal(ki, (n_rx, n_tx), real)
    return ((hr + 1j * hi) / math.sqrt(2)).astype(dtype)


def _check_order(order):
    if order not in (4, 16):
        raise ValueError(f"`order` must be 4 or 16 (square QAM), got {order!r}")


def _levels(order):
    """Per-dimension PAM levels (ascending) and their Gray codes, unit-energy QAM scaling."""
    m = int(round(math.sqrt(order)))
    levels = np.arange(-(m - 1), m, 2, dtype=float) / math.sqrt(2 * (order - 1) / 3)
    gray = np.array([k ^ (k >> 1) for k in range(m)])
    return levels, gray


def qam_constellation(order: Literal[4, 16]) -> Complex[Array, " order"]:
    """The $M$-QAM points, unit average energy; index $k = m\\,k_I + k_Q$ with $k_I$, $k_Q$
    the ascending level indices of the in-phase and quadrature parts."""
    _check_order(order)
    levels, _ = _levels(order)
    m = len(levels)
    ki, kq = np.divmod(np.arange(order), m)
    return jnp.asarray(levels[ki] + 1j * levels[kq])


def qam_symbols(
    key: PRNGKeyArray, shape: int | tuple[int, ...], order: Literal[4, 16]
) -> tuple[Complex[Array, "..."], Int[Array, "..."]]:
    """Uniform random $M$-QAM symbols: `(symbols, indices)` into `qam_constellation(order)`."""
    _check_order(order)
    idx = jr.randint(key, (shape,) if isinstance(shape, int) else shape, 0, order)
    return qam_constellation(order)[idx], idx


def qam_detect(x: Complex[ArrayLike, "..."], order: Literal[4, 16]) -> Int[Array, "..."]:
    """Nearest-point (hard) decision: the constellation index of each entry of `x`."""
    _check_order(order)
    points = qam_constellation(order)
    d = jnp.abs(jnp.asarray(x)[..., None] - points)
    return jnp.argmin(d, axis=-1)


def _bits(idx, order):
    levels, gray = _levels(order)
    m = len(levels)
    k = int(round(math.log2(m)))
    ki, kq = jnp.divmod(jnp.asarray(idx), m)
    codes = jnp.asarray(gray)
    word = codes[ki] * m + codes[kq]  # Gray code per dimension: adjacent points differ by 1 bit
    return (word[..., None] >> jnp.arange(2 * k)) & 1


def error_rates(
    idx_hat: Int[ArrayLike, "..."], idx: Int[ArrayLike, "..."], order: Literal[4, 16]
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """`(symbol error rate, bit error rate)` of decided indices against the sent ones (Gray
    mapping per dimension)."""
    _check_order(order)
    if np.shape(idx_hat) != np.shape(idx):
        raise ValueError(
            f"`idx_hat` has shape {np.shape(idx_hat)}, but `idx` has shape {np.shape(idx)}"
        )
    real = jnp.result_type(float)  # float64 under x64, else float32
    ser = jnp.mean((jnp.asarray(idx_hat) != jnp.asarray(idx)).astype(real))
    ber = jnp.mean((_bits(idx_hat, order) != _bits(idx, order)).astype(real))
    return ser, ber


def noise_variance(snr_db: float | Float[ArrayLike, ""]) -> Float[Array, ""]:
    """$N_0 = E_s / \\mathrm{SNR}$ with $E_s = 1$: $10^{-\\mathrm{SNR_{dB}}/10}$."""
    return 10.0 ** (-jnp.asarray(snr_db) / 10)


def awgn(
    key: PRNGKeyArray, y: Complex[ArrayLike, "..."], snr_db: float | Float[ArrayLike, ""]
) -> tuple[Complex[Array, "..."], Float[Array, ""]]:
    """Add $\\mathcal{CN}(0, N_0)$ noise, $N_0 = 10^{-\\mathrm{SNR_{dB}}/10}$ (unit-energy
    symbols). Returns `(y + n, N_0)`."""
    check_finite("snr_db", snr_db)
    y = jnp.asarray(y)
    n0 = noise_variance(snr_db)
    real = jnp.finfo(y.dtype).dtype
    kr, ki = jr.split(key)
    n = jr.normal(kr, y.shape, real) + 1j * jr.normal(ki, y.shape, real)
    return y + jnp.sqrt(n0 / 2) * n, n0


# ------------------------------------------------------------------------------------------
# digital references


def zf_detect(h: Complex[ArrayLike, "m k"], y: Complex[ArrayLike, " m"]) -> Complex[Array, " k"]:
    """Digital ZF detection $(H^\\mathsf{H}H)^{-1}H^\\mathsf{H}y$ (least squares)."""
    h, y = jnp.asarray(h), jnp.asarray(y)
    return jnp.linalg.lstsq(h, y)[0]


def mmse_detect(
    h: Complex[ArrayLike, "m k"], y: Complex[ArrayLike, " m"], noise_var: float
) -> Complex[Array, " k"]:
    """Digital MMSE detection $(H^\\mathsf{H}H + N_0 I)^{-1}H^\\mathsf{H}y$ ($E_s = 1$)."""
    h, y = jnp.asarray(h), jnp.asarray(y)
    g = h.conj().T @ h + noise_var * jnp.eye(h.shape[1], dtype=h.dtype)
    return jnp.linalg.solve(g, h.conj().T @ y)


def zf_precode(h: Complex[ArrayLike, "k m"], s: Complex[ArrayLike, " k"]) -> Complex[Array, " m"]:
    """Digital ZF precoding $H^\\mathsf{H}(HH^\\mathsf{H})^{-1}s$ (minimum norm)."""
    h, s = jnp.asarray(h), jnp.asarray(s)
    return h.conj().T @ jnp.linalg.solve(h @ h.conj().T, s)


# ------------------------------------------------------------------------------------------
# analog circuits on the real-equivalent channel


def _check_pair(h, v, hname, vname, axis):
    _check_complex_matrix(hname, h)
    check_ndim(vname, v, 1)
    if np.shape(v)[0] != np.shape(h)[axis]:
        raise ValueError(
            f"`{vname}` has length {np.shape(v)[0]}, but `{hname}` of shape {np.shape(h)} "
            f"needs length {np.shape(h)[axis]}"
        )
    check_finite(vname, v)


def zf_detector(h: Complex[ArrayLike, "m k"], y: Complex[ArrayLike, " m"], **kwargs) -> GINV:
    """Uplink ZF detection as a left [`amcdyn.GINV`][] on $\\tilde H$ (`(2m, 2k)`) and
    $\\tilde y$. `complex_from_real(sol.solution)` is $\\hat x$ (the circuit's outputs settle
    to $-\\tilde x$, which `decode` undoes). `kwargs` go to `GINV.from_matrix`.

    **Raises:** `ValueError` naming `h` or `y` (shape, non-finite), or as `GINV.from_matrix`.
    """
    _check_pair(h, y, "h", "y", 0)
    return GINV.from_matrix(
        real_equivalent_matrix(h), real_equivalent_vector(y), mode="left", **kwargs
    )


def mmse_detector(
    h: Complex[ArrayLike, "m k"],
    y: Complex[ArrayLike, " m"],
    noise_var: float | Float[ArrayLike, ""],
    **kwargs,
) -> Ridge:
    """Uplink MMSE detection as a left [`amcdyn.Ridge`][] on $\\tilde H$ with
    $\\lambda = N_0$ (unit-energy symbols). `kwargs` go to `Ridge.from_matrix`."""
    _check_pair(h, y, "h", "y", 0)
    if is_concrete(noise_var):
        check_nonnegative("noise_var", noise_var)
    return Ridge.from_matrix(
        real_equivalent_matrix(h), real_equivalent_vector(y), noise_var, mode="left", **kwargs
    )


def zf_precoder(h: Complex[ArrayLike, "k m"], s: Complex[ArrayLike, " k"], **kwargs) -> GINV:
    """Downlink ZF precoding as a right [`amcdyn.GINV`][] on $\\tilde H$ (`(2k, 2m)`):
    `complex_from_real(sol.solution)` is $x = H^+ s$. `kwargs` go to `GINV.from_matrix`."""
    _check_pair(h, s, "h", "s", 0)
    return GINV.from_matrix(
        real_equivalent_matrix(h), real_equivalent_vector(s), mode="right", **kwargs
    )


# ------------------------------------------------------------------------------------------
# DFT / IDFT by MVM


def dft_matrix(
    n: int, *, inverse: bool = False, norm: Literal["backward", "ortho", "forward"] = "backward"
) -> Complex[Array, "n n"]:
    """The $n$-point DFT matrix $F_{kl} = e^{-2\\pi i kl/n}$ (or the IDFT, $e^{+2\\pi i kl/n}/n$),
    scaled as `numpy.fft.fft`/`ifft` with the same `norm`."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}")
    if norm not in ("backward", "ortho", "forward"):
        raise ValueError(f"`norm` must be 'backward', 'ortho' or 'forward', got {norm!r}")
    k = np.arange(n)
    sign = 1.0 if inverse else -1.0
    # Reduce k*l mod n before the angle so that large n keeps full precision.
    f = np.exp(sign * 2j * np.pi * ((k[:, None] * k[None, :]) % n) / n)
    # cos/sin of multiples of pi/2 come out as ~6e-17, not 0: make them exact zeros, so that
    # the crossbar has no device there (not a 1e20-ohm resistor in the netlist).
    f = np.where(np.abs(f.real) < 1e-12, 0.0, f.real) + 1j * np.where(
        np.abs(f.imag) < 1e-12, 0.0, f.imag
    )
    scale = {
        ("backward", False): 1.0,
        ("backward", True): 1.0 / n,
        ("ortho", False): 1.0 / math.sqrt(n),
        ("ortho", True): 1.0 / math.sqrt(n),
        ("forward", False): 1.0 / n,
        ("forward", True): 1.0,
    }[(norm, inverse)]
    return jnp.asarray(f * scale)


def dft_mvm(
    x: Complex[ArrayLike, " n"],
    *,
    inverse: bool = False,
    norm: Literal["backward", "ortho", "forward"] = "backward",
    **kwargs,
) -> MVM:
    """The (I)DFT of `x` as an [`amcdyn.MVM`][] of the real-equivalent `(2n, 2n)` DFT matrix
    on $\\tilde x$ (column splitting for the signs). `complex_from_real(sol.solution)` equals
    `numpy.fft.fft(x, norm=norm)` (or `ifft`). `kwargs` go to `MVM.from_matrix` (e.g. `g_f`:
    with `norm="backward"` the outputs grow like $n\\max|x|$ volts, so scale `g_f`).

    **Raises:** `ValueError` naming `x` (not 1-D, not finite), or as `MVM.from_matrix`.
    """
    check_ndim("x", x, 1)
    check_finite("x", x)
    f = dft_matrix(int(np.shape(x)[0]), inverse=inverse, norm=norm)
    return MVM.from_matrix(real_equivalent_matrix(f), real_equivalent_vector(x), **kwargs)
