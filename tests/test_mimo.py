"""Complex MIMO on real AMC circuits (`amcdyn.mimo`): the real-equivalent mapping, QAM, AWGN,
analog ZF/MMSE detection and ZF precoding against digital references, and the DFT by MVM.

Sizes are small (4 users x 8 antennas: real-equivalent 16 x 8 / 8 x 16; 8-point DFT) and the
analog runs are batched with `jax.vmap` over channels through `simulate_analytic`, one compile
per circuit kind.
"""

import functools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import amcdyn
from amcdyn import mimo


N_ANT, N_USER = 8, 4
BATCH = 24
KW_ANA = dict(n_save=0, throw=False)


def _channels(key, n_rx, n_tx, batch=BATCH):
    return jax.vmap(lambda k: mimo.rayleigh_channel(k, n_rx, n_tx))(jr.split(key, batch))


# ---------------------------------------------------------------------------------------
# mapping, symbols, noise


def test_real_equivalent_is_a_homomorphism():
    key = jr.PRNGKey(1)
    h = mimo.rayleigh_channel(key, 5, 3)
    g = mimo.rayleigh_channel(jr.PRNGKey(2), 3, 4)
    x = mimo.rayleigh_channel(jr.PRNGKey(3), 3, 1)[:, 0]
    re = mimo.real_equivalent_matrix
    hr = np.asarray(re(h))
    assert hr.shape == (10, 6)
    np.testing.assert_allclose(re(h @ g), hr @ np.asarray(re(g)), atol=1e-14)
    np.testing.assert_allclose(re(h.conj().T), hr.T, atol=0)
    np.testing.assert_allclose(re(jnp.linalg.pinv(h)), np.linalg.pinv(hr), atol=1e-12)
    np.testing.assert_allclose(
        mimo.real_equivalent_vector(h @ x),
        hr @ np.asarray(mimo.real_equivalent_vector(x)),
        atol=1e-14,
    )
    np.testing.assert_allclose(mimo.complex_from_real(mimo.real_equivalent_vector(x)), x, atol=0)
    sv = np.linalg.svd(np.asarray(h), compute_uv=False)
    np.testing.assert_allclose(np.linalg.svd(hr, compute_uv=False), np.repeat(sv, 2), rtol=1e-12)


def test_rayleigh_statistics():
    h = mimo.rayleigh_channel(jr.PRNGKey(4), 128, 128)
    assert h.dtype == jnp.complex128 and h.shape == (128, 128)
    p = np.asarray(jnp.abs(h) ** 2)
    assert abs(p.mean() - 1) < 0.03  # 16384 samples: std of the mean ~0.008
    assert abs(np.asarray(h.real).var() - 0.5) < 0.02


@pytest.mark.parametrize("order", [4, 16])
def test_qam_constellation_and_gray_mapping(order):
    pts = np.asarray(mimo.qam_constellation(order))
    assert pts.shape == (order,)
    assert np.mean(np.abs(pts) ** 2) == pytest.approx(1.0, rel=1e-12)  # unit energy
    np.testing.assert_array_equal(mimo.qam_detect(pts, order), np.arange(order))
    # Gray: nearest neighbours differ in exactly one bit.
    dmin = np.min(np.abs(pts[:, None] - pts[None, :]) + 10 * np.eye(order))
    for i in range(order):
        for j in range(order):
            if i != j and abs(pts[i] - pts[j]) < 1.01 * dmin:
                ser, ber = mimo.error_rates(np.array([i]), np.array([j]), order)
                bits = int(np.log2(order))
                assert float(ser) == 1 and float(ber) == pytest.approx(1 / bits)
    sym, idx = mimo.qam_symbols(jr.PRNGKey(0), (4000,), order)
    np.testing.assert_array_equal(np.asarray(sym), pts[np.asarray(idx)])
    assert set(np.unique(np.asarray(idx))) == set(range(order))


def test_awgn_noise_variance():
    y = jnp.zeros(20000, jnp.complex128)
    yn, n0 = mimo.awgn(jr.PRNGKey(7), y, 10.0)
    assert float(n0) == pytest.approx(0.1)
    assert float(jnp.mean(jnp.abs(yn) ** 2)) == pytest.approx(0.1, rel=0.03)
    assert float(jnp.mean(yn.real**2)) == pytest.approx(0.05, rel=0.04)


# ---------------------------------------------------------------------------------------
# analog detection and precoding vs digital


def _uplink(key, snr_db, order=16):
    kh, kx, kn = jr.split(key, 3)
    h = _channels(kh, N_ANT, N_USER)
    x, idx = mimo.qam_symbols(kx, (BATCH, N_USER), order)
    y, n0 = mimo.awgn(kn, jnp.einsum("bij,bj->bi", h, x), snr_db)
    return h, x, idx, y, n0


@functools.partial(jax.jit, static_argnames=("detector",))
def _steady_detection(h, y, n0, *, detector):
    """The circuits' exact equilibria (no transient), batched: A0 = inf, ideal inverters."""

    def one(h, y):
        kw = dict(a0=jnp.inf, inverters="ideal")
        c = mimo.zf_detector(h, y, **kw) if detector == "zf" else mimo.mmse_detector(h, y, n0, **kw)
        dyn = c.dynamics()
        return mimo.complex_from_real(c.decode(dyn.outputs(dyn.steady_state())))

    return jax.vmap(one)(h, y)


@pytest.mark.parametrize("detector", ["zf", "mmse"])
def test_ideal_analog_detection_equals_digital(detector):
    h, x, _, y, n0 = _uplink(jr.PRNGKey(10), 15.0)
    analog = np.asarray(_steady_detection(h, y, n0, detector=detector))
    if detector == "zf":
        digital = jax.vmap(mimo.zf_detect)(h, y)
        np.testing.assert_allclose(digital, jax.vmap(jnp.linalg.lstsq)(h, y)[0], atol=1e-12)
    else:
        digital = jax.vmap(mimo.mmse_detect, in_axes=(0, 0, None))(h, y, n0)
    np.testing.assert_allclose(analog, np.asarray(digital), rtol=0, atol=1e-11)


@jax.jit
def _analog_uplink(h, y, n0):
    """Realistic circuits (A0 = 1e5, op-amp inverters, default g_f), full transient."""
    zf = jax.vmap(lambda h, y: amcdyn.simulate_analytic(mimo.zf_detector(h, y), **KW_ANA))(h, y)
    mmse = jax.vmap(lambda h, y: amcdyn.simulate_analytic(mimo.mmse_detector(h, y, n0), **KW_ANA))(
        h, y
    )
    return zf, mmse


def test_uplink_ser_high_snr_and_bit_exact_decisions():
    """4 users, 8 antennas, 16-QAM at 30 dB over 24 channels: the analog ZF/MMSE decisions are
    those of digital ZF/MMSE and the SER is 0; at 10 dB both make (the same) errors."""
    for snr, expect_zero in ((30.0, True), (10.0, False)):
        h, x, idx, y, n0 = _uplink(jr.PRNGKey(20), snr)
        zf, mmse = _analog_uplink(h, y, n0)
        assert np.all(zf.status_names() == "settled") and np.all(mmse.status_names() == "settled")
        x_zf = mimo.complex_from_real(zf.solution)
        x_mmse = mimo.complex_from_real(mmse.solution)
        d_zf = jax.vmap(mimo.zf_detect)(h, y)
        d_mmse = jax.vmap(mimo.mmse_detect, in_axes=(0, 0, None))(h, y, n0)
        # Finite gain: the analog estimate is within ~1e-3 of the digital one.
        assert float(jnp.max(jnp.abs(x_zf - d_zf))) < 5e-3 * float(jnp.max(jnp.abs(d_zf)))
        assert float(jnp.max(jnp.abs(x_mmse - d_mmse))) < 5e-3 * float(jnp.max(jnp.abs(d_mmse)))
        rates = {
            name: mimo.error_rates(mimo.qam_detect(est, 16), idx, 16)
            for name, est in (("zf", x_zf), ("dzf", d_zf), ("mmse", x_mmse), ("dmmse", d_mmse))
        }
        print(snr, {k: (float(s), float(b)) for k, (s, b) in rates.items()})
        assert rates["zf"] == rates["dzf"] and rates["mmse"] == rates["dmmse"]
        if expect_zero:
            assert float(rates["zf"][0]) == 0 and float(rates["mmse"][0]) == 0
        else:
            assert float(rates["zf"][0]) > 0 and rates["mmse"][0] <= rates["zf"][0]
        # Settling is set by sigma_min of the channel: finite, tens to hundreds of ns.
        assert np.all(np.isfinite(zf.settling_time)) and np.all(zf.settling_time < 2e-6)


@jax.jit
def _analog_downlink(h, s, kn):
    sol = jax.vmap(lambda h, s: amcdyn.simulate_analytic(mimo.zf_precoder(h, s), **KW_ANA))(h, s)
    x = mimo.complex_from_real(sol.solution)
    r, _ = mimo.awgn(kn, jnp.einsum("bij,bj->bi", h, x), 30.0)
    return sol, x, r


def test_downlink_zf_precoding_end_to_end():
    """4 users, 8 antennas: x = H^+ s by the right GINV; the users receive H x + n = s + n and
    detect their 16-QAM symbols with SER 0 at 30 dB, as with digital ZF precoding."""
    kh, ks, kn = jr.split(jr.PRNGKey(30), 3)
    h = _channels(kh, N_USER, N_ANT)
    s, idx = mimo.qam_symbols(ks, (BATCH, N_USER), 16)
    sol, x, r = _analog_downlink(h, s, kn)
    assert np.all(sol.status_names() == "settled")
    x_dig = jax.vmap(mimo.zf_precode)(h, s)
    pinv_s = jnp.einsum("bij,bj->bi", jax.vmap(jnp.linalg.pinv)(h), s)
    np.testing.assert_allclose(x_dig, pinv_s, atol=1e-12)
    assert float(jnp.max(jnp.abs(x - x_dig))) < 2e-3 * float(jnp.max(jnp.abs(x_dig)))
    # Zero forcing: no inter-user interference left (to the finite-gain error).
    assert float(jnp.max(jnp.abs(jnp.einsum("bij,bj->bi", h, x) - s))) < 1e-2
    r_dig = jnp.einsum("bij,bj->bi", h, x_dig) + (r - jnp.einsum("bij,bj->bi", h, x))
    ser, ber = mimo.error_rates(mimo.qam_detect(r, 16), idx, 16)
    ser_d, ber_d = mimo.error_rates(mimo.qam_detect(r_dig, 16), idx, 16)
    assert float(ser) == float(ser_d) == 0 and float(ber) == float(ber_d) == 0
    # Minimum norm: x lies in range(H^H) (no component that H maps to 0), up to the finite-gain
    # error (the TIAs settle to -E^-1 G^T z with E = diag(g_f + D1/A0), not a multiple of I).
    proj = jax.vmap(lambda h, x: jnp.linalg.pinv(h) @ (h @ x))(h, x)
    assert float(jnp.max(jnp.abs(proj - x))) < 1e-3 * float(jnp.max(jnp.abs(x)))


def test_grad_of_precoding_error_matches_finite_differences():
    """jit + grad through `zf_precoder` and the circuit's equilibrium: the finite-gain error
    |x - x_ZF|^2 of the precoded vector against (log A0, log g_f, noise-free lam of an MMSE
    detector), vs central differences. (grad through `simulate`/`simulate_analytic` is tested
    on GINV itself in test_ginv.py.)"""
    kh, ks = jr.split(jr.PRNGKey(40))
    h = mimo.rayleigh_channel(kh, N_USER, N_ANT)
    s, _ = mimo.qam_symbols(ks, (N_USER,), 4)
    x_zf = mimo.zf_precode(h, s)
    y = h.T @ s

    @jax.jit
    def f(p):
        c = mimo.zf_precoder(h, s, a0=jnp.exp(p[0]), g_f=jnp.exp(p[1]))
        dyn = c.dynamics()
        x = mimo.complex_from_real(c.decode(dyn.outputs(dyn.steady_state())))
        d = mimo.mmse_detector(h.T, y, p[2], a0=jnp.inf, inverters="ideal")
        dd = d.dynamics()
        xd = mimo.complex_from_real(d.decode(dd.outputs(dd.steady_state())))
        return jnp.stack([jnp.sum(jnp.abs(x - x_zf) ** 2), jnp.sum(jnp.abs(xd) ** 2)])

    p0 = jnp.array([np.log(1e3), np.log(5e-4), 0.1])
    jac = np.asarray(jax.jit(jax.jacrev(f))(p0))
    val = np.asarray(f(p0))
    for i in range(3):
        e = np.zeros(3)
        e[i] = 1e-5
        fd = (np.asarray(f(p0 + e)) - np.asarray(f(p0 - e))) / (2 * e[i])
        # Closed forms: FD truncation ~1e-10, rounding ~1e-9 relative; rtol 1e-6.
        np.testing.assert_allclose(jac[:, i], fd, rtol=1e-6, atol=1e-6 * np.abs(val).max())
    assert jac[0, 0] < 0 and jac[1, 2] < 0  # more gain, less error; more lam, smaller |x|


# ---------------------------------------------------------------------------------------
# DFT / IDFT by MVM


def test_dft_matrix_matches_numpy():
    x = np.random.default_rng(0).normal(size=(6,)) + 1j * np.random.default_rng(1).normal(size=6)
    for norm in ("backward", "ortho", "forward"):
        np.testing.assert_allclose(
            mimo.dft_matrix(6, norm=norm) @ x, np.fft.fft(x, norm=norm), atol=1e-14
        )
        np.testing.assert_allclose(
            mimo.dft_matrix(6, inverse=True, norm=norm) @ x, np.fft.ifft(x, norm=norm), atol=1e-14
        )


def _mvm_settling(circuit, tol):
    """Each row i of the MVM is one pole: rate r_i = w0 + wT g_f / (S_i + g_f) and it leaves the
    band tol * FS at ln(|v_i*| / band) / r_i (amc-physics.md §2)."""
    a = np.asarray(circuit.g_pos + circuit.g_neg)
    wt = 2 * np.pi * float(circuit.amp.f_gbw)
    g_f = float(circuit.g_f)
    rate = wt / float(circuit.amp.a0) + wt * g_f / (a.sum(1) + g_f)
    dyn = circuit.dynamics()
    v = np.abs(np.asarray(dyn.outputs(dyn.steady_state())))
    band = tol * v.max()
    return float(np.max(np.maximum(np.log(v / band), 0) / rate))


@pytest.mark.parametrize("inverse", [False, True])
def test_dft_by_mvm(inverse):
    """8-point (I)DFT through a 16 x 16 real MVM: decode equals numpy.fft to 1e-12 with ideal
    op-amps, to the finite-gain error with A0 = 1e5; the settling time is the row closed form."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, 8) + 1j * rng.uniform(-1, 1, 8)
    ref = np.fft.ifft(x, norm="ortho") if inverse else np.fft.fft(x, norm="ortho")
    ideal = mimo.dft_mvm(x, inverse=inverse, norm="ortho", a0=np.inf)
    real = mimo.dft_mvm(x, inverse=inverse, norm="ortho", g_f=2e-4)
    sol_i = amcdyn.simulate_analytic(ideal, n_save=0)
    sol_r = amcdyn.simulate_analytic(real, n_save=0)
    np.testing.assert_allclose(mimo.complex_from_real(sol_i.solution), ref, rtol=0, atol=1e-12)
    # Finite gain: relative error (1 + S_i/g_f)/A0 per row, S_i <= ~1.3 sqrt(8) G0 * 2 here.
    np.testing.assert_allclose(mimo.complex_from_real(sol_r.solution), ref, rtol=0, atol=1e-4)
    for circuit, sol in ((ideal, sol_i), (real, sol_r)):
        assert float(sol.settling_time) == pytest.approx(_mvm_settling(circuit, 1e-3), rel=1e-6)
    # A larger g_f settles faster (fewer time constants of the TIA loop).
    assert float(sol_r.settling_time) < float(sol_i.settling_time)


# ---------------------------------------------------------------------------------------
# bad input


def test_bad_input_names_the_argument():
    h = np.ones((4, 2)) + 1j * np.eye(4, 2)
    cases = [
        (lambda: mimo.real_equivalent_matrix(np.ones(3)), "h"),
        (lambda: mimo.real_equivalent_matrix(np.array([[np.nan + 0j]])), "h"),
        (lambda: mimo.complex_from_real(np.ones(5)), "v"),
        (lambda: mimo.zf_detector(h, np.ones(3)), "y"),
        (lambda: mimo.zf_detector(h, np.array([1, 2, np.nan, 0j])), "y"),
        (lambda: mimo.zf_precoder(h.T, np.ones(4)), "s"),
        (lambda: mimo.mmse_detector(h, np.ones(4), -1.0), "noise_var"),
        (lambda: mimo.zf_detector(np.ones((4, 2)) + 0j, np.ones(4)), "a"),  # rank 1
        (lambda: mimo.qam_constellation(8), "order"),
        (lambda: mimo.error_rates(np.zeros(3, int), np.zeros(4, int), 4), "idx_hat"),
        (lambda: mimo.rayleigh_channel(jr.PRNGKey(0), 0, 2), "n_rx"),
        (lambda: mimo.dft_matrix(4, norm="unit"), "norm"),
        (lambda: mimo.dft_mvm(np.ones((2, 2))), "x"),
        (lambda: mimo.awgn(jr.PRNGKey(0), np.ones(2), np.nan), "snr_db"),
    ]
    for fn, name in cases:
        with pytest.raises(ValueError, match=f"`{name}`"):
            fn()
