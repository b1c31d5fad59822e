"""Massive-MIMO and OFDM helpers on AMC circuits (public namespace `amcdyn.mimo`).

Real-equivalent mapping of complex matrices, Rayleigh channels, QAM symbols, AWGN, digital
ZF/MMSE references, the analog ZF/MMSE detectors and ZF precoder ([`amcdyn.GINV`][],
[`amcdyn.Ridge`][] on the real-equivalent channel), and the DFT/IDFT by [`amcdyn.MVM`][].
See `amcdyn._mimo` for the conventions (SNR, symbol energy, channel orientation).
"""

from ._mimo import (
    awgn as awgn,
    complex_from_real as complex_from_real,
    dft_matrix as dft_matrix,
    dft_mvm as dft_mvm,
    error_rates as error_rates,
    mmse_detect as mmse_detect,
    mmse_detector as mmse_detector,
    noise_variance as noise_variance,
    qam_constellation as qam_constellation,
    qam_detect as qam_detect,
    qam_symbols as qam_symbols,
    rayleigh_channel as rayleigh_channel,
    real_equivalent_matrix as real_equivalent_matrix,
    real_equivalent_vector as real_equivalent_vector,
    zf_detect as zf_detect,
    zf_detector as zf_detector,
    zf_precode as zf_precode,
    zf_precoder as zf_precoder,
)
