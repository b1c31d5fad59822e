"""Conductance mapping and programming non-idealities (amcdyn/_devices.py).

Statistical checks use 10^5 draws and 5-sigma sampling tolerances, stated at each call site, so a
correct implementation fails them with probability ~1e-6 per assertion (and the keys are fixed).
"""

import math
import re
import warnings

import equinox as eqx
import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from amcdyn._devices import (
    AbstractDeviceStage,
    ConductanceWindow,
    Programming,
    ReadNoise,
    StuckAt,
    Variation,
    WriteVerify,
)


US = 1e-6  # 1 µS in S
G_MIN, G_MAX = 0.5 * US, 35 * US  # Nature Electronics 2025: 8 levels in 0.5-35 µS
N = 100_000  # samples for the statistical tests


def _arg(name):
    return re.escape(f"`{name}`")


def _in_window(seed, shape, lo=G_MIN, hi=G_MAX):
    # NumPy rather than jax.random: one compile fewer per shape, and these are only test inputs.
    return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, shape))


def _stages():
    """One instance of every stage, all accepting in-window targets without warnings."""
    window = ConductanceWindow(G_MIN, G_MAX, levels=8)
    return {
        "window": window,
        "window_smooth": ConductanceWindow(G_MIN, G_MAX, levels=16, smooth=0.2),
        "variation": Variation(0.05),
        "variation_lognormal": Variation(0.05, kind="lognormal"),
        "variation_absolute": Variation(0.3 * US, kind="absolute"),
        "read_noise": ReadNoise(0.01),
        "stuck_at": StuckAt(0.05, 0.05, G_MIN, G_MAX),
        "write_verify": WriteVerify(0.2 * US, 30, step=0.6, sigma_write=0.1),
        "programming": Programming(
            (
                window,
                WriteVerify(0.2 * US, 30, 0.6, 0.1),
                StuckAt(0.05, 0.05, G_MIN, G_MAX),
                Variation(0.02, kind="lognormal"),
                ReadNoise(0.01),
            )
        ),
    }


STAGES = _stages()


# --------------------------------------------------------------------------------------------
# ConductanceWindow: levels, idempotence, straight-through gradient, zeros, out-of-window


@pytest.mark.parametrize("levels", [8, 16])
def test_window_levels_exact_and_idempotent(getkey, levels):
    w = ConductanceWindow(G_MIN, G_MAX, levels=levels)
    grid = np.asarray(w.grid())
    assert grid.shape == (levels,)
    assert grid[0] == G_MIN and grid[-1] == G_MAX  # the end levels are exact
    spacing = (G_MAX - G_MIN) / (levels - 1)
    np.testing.assert_allclose(np.diff(grid), spacing, rtol=1e-12)  # uniform (round-off only)

    g = _in_window(1, (N,))
    q = np.asarray(w(g))
    # Every output is bit-for-bit one of the levels, every level is used, and it is the nearest.
    assert np.all(np.isin(q, grid))
    assert set(np.unique(q)) == set(grid)
    nearest = grid[np.argmin(np.abs(np.asarray(g)[:, None] - grid[None, :]), axis=1)]
    np.testing.assert_array_equal(q, nearest)
    assert np.max(np.abs(q - np.asarray(g))) <= spacing / 2 * (1 + 1e-12)
    np.testing.assert_array_equal(np.asarray(w(q)), q)  # idempotent, exactly
    np.testing.assert_array_equal(np.asarray(w(grid)), grid)


def test_window_ste_gradient_is_one(getkey):
    w = ConductanceWindow(G_MIN, G_MAX, levels=8)
    g = jnp.concatenate([jnp.array([G_MIN, G_MAX]), _in_window(2, (1000,))])
    grad = jax.grad(lambda g: jnp.sum(w(g)))(g)
    # d(out)/dg = (g_max - g_min)/(L-1) * (L-1)/(g_max - g_min): 1 up to float64 round-off,
    # including at the end levels.
    np.testing.assert_allclose(grad, 1.0, rtol=1e-12)
    # The elementwise map has a diagonal Jacobian: the per-element derivatives are also 1.
    per_elem = jax.vmap(jax.grad(lambda x: w(x)))(g[:50])
    np.testing.assert_allclose(per_elem, 1.0, rtol=1e-12)
    # Outside the window the clip is flat (clip mode warns for concrete input only, not here).
    out_grad = jax.grad(lambda g: jnp.sum(w(g)))(jnp.array([0.1 * US, 50 * US]))
    np.testing.assert_array_equal(out_grad, 0.0)


def test_window_zeros_stay_zero():
    w = ConductanceWindow(G_MIN, G_MAX, levels=8)
    g = jnp.array([0.0, 0.3 * US + G_MIN, 0.0, 34.9 * US])
    q = w(g)
    np.testing.assert_array_equal(q, [0.0, G_MIN, 0.0, G_MAX])
    grad = jax.grad(lambda g: jnp.sum(w(g)))(g)
    np.testing.assert_array_equal(grad, [0.0, 1.0, 0.0, 1.0])
    # Without levels: zeros stay zero and in-window values pass through unchanged.
    c = ConductanceWindow(G_MIN, G_MAX)
    np.testing.assert_array_equal(c(g), g)


def test_window_out_of_window_clip_warns_error_raises():
    g = np.array([0.0, 0.1 * US, 10 * US, 50 * US])
    clip = ConductanceWindow(G_MIN, G_MAX)
    with pytest.warns(UserWarning, match=r"`g` has 2 of 4 conductances outside the window"):
        out = clip(g)
    np.testing.assert_array_equal(out, [0.0, G_MIN, 10 * US, G_MAX])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in-window targets (and round-off above g_max) are silent
        clip(np.array([0.0, G_MIN, G_MAX * (1 + 1e-9)]))
    strict = ConductanceWindow(G_MIN, G_MAX, levels=8, mode="error")
    with pytest.raises(ValueError, match=_arg("g") + r" has 2 of 4"):
        strict(g)
    with pytest.raises(ValueError, match=_arg("g") + " has 1 of 1"):
        strict(np.array([-1 * US]))  # negative conductances are out of the window
    with pytest.raises(ValueError, match=_arg("g") + " must be finite"):
        strict(np.array([np.nan]))
    # Traced input: clip mode clips silently, error mode raises at run time (jit and vmap).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(eqx.filter_jit(clip)(g), [0.0, G_MIN, 10 * US, G_MAX])
    with pytest.raises(Exception, match="outside"):
        eqx.filter_jit(strict)(g)
    with pytest.raises(Exception, match="outside"):
        eqx.filter_vmap(strict)(jnp.stack([g, g]))
    np.testing.assert_array_equal(eqx.filter_jit(strict)(g[:3] * 0 + G_MIN), G_MIN)


def test_window_smooth_relaxation(getkey):
    hard = ConductanceWindow(G_MIN, G_MAX, levels=8)
    g = _in_window(3, (2000,))
    spacing = (G_MAX - G_MIN) / 7
    # tau -> 0: the soft rounding is hard rounding, except within ~tau*log(1/eps) of a
    # midpoint between levels; at tau = 1e-3 that band is < 4% of the draws.
    cold = ConductanceWindow(G_MIN, G_MAX, levels=8, smooth=1e-3)(g)
    close = np.abs(np.asarray(cold - hard(g))) < 1e-9 * spacing
    assert np.mean(close) > 0.96
    # tau -> inf: the identity (within the window), to O(1/tau^2) of a spacing.
    hot = ConductanceWindow(G_MIN, G_MAX, levels=8, smooth=1e3)(g)
    np.testing.assert_allclose(hot, g, rtol=0, atol=1e-6 * spacing)
    # Its gradient is the true derivative: compare with central finite differences.
    soft = ConductanceWindow(G_MIN, G_MAX, levels=8, smooth=0.3)
    grad = jax.vmap(jax.grad(lambda x: soft(x)))(g[:100])
    h = 1e-6 * spacing
    fd = (soft(g[:100] + h) - soft(g[:100] - h)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6)  # FD truncation error O(h^2)
    assert np.all(np.asarray(grad) > 0)
    # The grid is that of hard rounding.
    np.testing.assert_array_equal(soft.grid(), hard.grid())
    # The ends of the window are fixed points.
    np.testing.assert_allclose(soft(jnp.array([G_MIN, G_MAX])), [G_MIN, G_MAX], rtol=1e-14)


# --------------------------------------------------------------------------------------------
# Variation, read noise, stuck-at: statistics


@pytest.mark.parametrize("kind", ["gaussian", "lognormal", "absolute"])
def test_variation_statistics(getkey, kind):
    g0 = 10 * US
    sigma = 0.1 if kind != "absolute" else 1 * US  # clipping at 0 is a 10-sigma event here
    out = np.asarray(Variation(sigma, kind=kind)(jnp.full((N,), g0), key=getkey()))
    assert out.shape == (N,) and np.all(out > 0)
    if kind == "lognormal":
        z = np.log(out / g0)  # ~ N(0, sigma^2) exactly
        mean, std, s = np.mean(z), np.std(z), sigma
    else:
        z = (out - g0) / (g0 if kind == "gaussian" else 1.0)  # ~ N(0, sigma^2)
        mean, std, s = np.mean(z), np.std(z), sigma
    # 5-sigma sampling tolerances: sd(mean) = s/sqrt(N), sd(std) = s/sqrt(2N).
    assert abs(mean) < 5 * s / math.sqrt(N)
    assert abs(std - s) < 5 * s / math.sqrt(2 * N)
    if kind == "lognormal":
        # The mean conductance is g0 exp(sigma^2/2) (not corrected to g0); sd of the sample
        # mean is g0 sqrt(exp(s^2)(exp(s^2)-1)/N).
        sd = g0 * math.sqrt(math.exp(s**2) * (math.exp(s**2) - 1) / N)
        assert abs(np.mean(out) - g0 * math.exp(s**2 / 2)) < 5 * sd


def test_variation_clips_at_zero_and_keeps_absent(getkey):
    out = np.asarray(Variation(1.0)(jnp.full((N,), 10 * US), key=getkey()))
    assert np.all(out >= 0)
    # P(1 + xi < 0) = Phi(-1) = 0.158655; 5-sigma binomial tolerance.
    p = 0.5 * math.erfc(1 / math.sqrt(2))
    assert abs(np.mean(out == 0) - p) < 5 * math.sqrt(p * (1 - p) / N)
    g = jnp.array([0.0, 5 * US, 0.0])
    for stage in (Variation(0.5), Variation(0.5, "lognormal"), Variation(1 * US, "absolute")):
        out = stage(g, key=getkey())
        assert out[0] == 0 and out[2] == 0 and out[1] > 0


def test_variation_gradients(getkey):
    g = _in_window(4, (500,))
    key = getkey()
    xi = jr.normal(key, g.shape, g.dtype)  # the draw Variation makes with this key
    grad_g = jax.grad(lambda g: jnp.sum(Variation(0.1)(g, key=key)))(g)
    np.testing.assert_allclose(grad_g, 1 + 0.1 * xi, rtol=1e-12)
    grad_s = jax.grad(lambda s: jnp.sum(Variation(s)(g, key=key)))(0.1)
    np.testing.assert_allclose(grad_s, jnp.sum(g * xi), rtol=1e-12)
    grad_s = jax.grad(lambda s: jnp.sum(Variation(s, "lognormal")(g, key=key)))(0.1)
    np.testing.assert_allclose(grad_s, jnp.sum(g * xi * jnp.exp(0.1 * xi)), rtol=1e-12)


def test_read_noise_statistics_and_independent_reads(getkey):
    g0 = 20 * US
    keys = jr.split(getkey(), 10)
    reads = np.asarray(jax.vmap(lambda k: ReadNoise(0.02)(jnp.full((N // 10,), g0), key=k))(keys))
    assert reads.shape == (10, N // 10)
    rel = reads.ravel() / g0 - 1
    assert abs(np.mean(rel)) < 5 * 0.02 / math.sqrt(N)  # 5-sigma
    assert abs(np.std(rel) - 0.02) < 5 * 0.02 / math.sqrt(2 * N)  # 5-sigma
    # Different reads of the same device are uncorrelated: |corr| < 5/sqrt(n) for n pairs.
    corr = np.corrcoef(reads[0], reads[1])[0, 1]
    assert abs(corr) < 5 / math.sqrt(N // 10)


def test_stuck_at_rates(getkey):
    rate_min, rate_max = 0.01, 0.03
    g = _in_window(5, (N,), 1 * US, 34 * US)  # strictly inside: no accidental ties
    out = np.asarray(StuckAt(rate_min, rate_max, G_MIN, G_MAX)(g, key=getkey()))
    n_min, n_max = np.sum(out == G_MIN), np.sum(out == G_MAX)
    for count, p in ((n_min, rate_min), (n_max, rate_max)):
        assert abs(count - N * p) < 5 * math.sqrt(N * p * (1 - p))  # 5-sigma binomial
    healthy = (out != G_MIN) & (out != G_MAX)
    np.testing.assert_array_equal(out[healthy], np.asarray(g)[healthy])
    # Absent devices stay absent, and the rates 0 and 1 are exact.
    np.testing.assert_array_equal(StuckAt(0.5, 0.5, G_MIN, G_MAX)(jnp.zeros(100), key=getkey()), 0)
    np.testing.assert_array_equal(StuckAt(0.0, 0.0, G_MIN, G_MAX)(g, key=getkey()), g)
    np.testing.assert_array_equal(StuckAt(1.0, 0.0, G_MIN, G_MAX)(g, key=getkey()), G_MIN)
    np.testing.assert_array_equal(StuckAt(0.0, 1.0, G_MIN, G_MAX)(g, key=getkey()), G_MAX)
    # Derivative 1 on healthy devices, 0 on stuck ones.
    key = getkey()
    stage = StuckAt(0.2, 0.2, G_MIN, G_MAX)
    grad = np.asarray(jax.grad(lambda g: jnp.sum(stage(g, key=key)))(g[:1000]))
    healthy = np.asarray(stage(g[:1000], key=key)) == np.asarray(g[:1000])
    np.testing.assert_array_equal(grad, healthy.astype(float))


# --------------------------------------------------------------------------------------------
# WriteVerify


def test_write_verify_noise_free_matches_closed_form(getkey):
    # Without noise the error after k pulses from 0 is G (1 - step)^k exactly, so the pulse count
    # is the smallest k with G (1 - step)^k <= tol. Random targets make ties (k within 1e-9 of
    # an integer) improbable; they are excluded below to keep the reference unambiguous.
    step, tol = 0.5, 0.05 * US
    target = _in_window(6, (2000,))
    k_real = np.log(tol / np.asarray(target)) / math.log(1 - step)
    keep = np.abs(k_real - np.round(k_real)) > 1e-9
    expected = np.maximum(np.ceil(k_real), 0).astype(int)
    g, pulses = WriteVerify(tol, 50, step, 0.0).program(target, key=getkey())
    np.testing.assert_array_equal(np.asarray(pulses)[keep], expected[keep])
    np.testing.assert_allclose(
        g, target * (1 - (1 - step) ** np.asarray(pulses)), rtol=1e-12, atol=1e-12 * US
    )


def test_write_verify_converges_within_tolerance(getkey):
    tol, budget = 0.2 * US, 40
    target = ConductanceWindow(G_MIN, G_MAX, levels=8)(_in_window(7, (N,)))
    target = target.at[:10].set(0.0)  # a few absent devices
    g, pulses = WriteVerify(tol, budget, step=0.6, sigma_write=0.2).program(target, key=getkey())
    g, pulses, target = np.asarray(g), np.asarray(pulses), np.asarray(target)
    assert pulses.dtype == np.int32
    assert np.all(np.abs(g - target) <= tol)
    assert np.all(pulses <= budget)
    assert np.all(pulses[10:] >= 1) and np.all(pulses[:10] == 0) and np.all(g[:10] == 0)
    # Noise spreads the pulse counts: the noise-free count for 35 µS is ceil(log(tol/G)/log 0.4).
    assert pulses.max() > math.ceil(math.log(tol / G_MAX) / math.log(0.4))


def test_write_verify_respects_budget_when_unreachable(getkey):
    target = _in_window(8, (1000,)).at[0].set(0.0)
    # tolerance 0 with write noise: an exact hit has probability 0, so every device uses the
    # whole budget.
    g, pulses = WriteVerify(0.0, 7, 0.5, 0.3).program(target, key=getkey())
    np.testing.assert_array_equal(pulses[1:], 7)
    assert pulses[0] == 0 and g[0] == 0
    assert np.all(np.abs(np.asarray(g - target))[1:] > 0)
    # A device already within tolerance at g_start gets no pulse.
    g, pulses = WriteVerify(0.1 * US, 7, g_start=G_MIN).program(jnp.array([G_MIN]), key=getkey())
    assert pulses[0] == 0 and g[0] == G_MIN


def test_write_verify_straight_through_gradient(getkey):
    wv = WriteVerify(0.2 * US, 30, 0.6, 0.1)
    target = _in_window(9, (200,))
    key = getkey()
    grad = jax.grad(lambda t: jnp.sum(wv(t, key=key)))(target)
    np.testing.assert_array_equal(grad, 1.0)
    grad = jax.jit(jax.grad(lambda t: jnp.sum(wv(t, key=key))))(target)
    np.testing.assert_array_equal(grad, 1.0)


# --------------------------------------------------------------------------------------------
# Composition and transforms


def test_programming_in_order(getkey):
    window = ConductanceWindow(G_MIN, G_MAX, levels=8)
    wv = WriteVerify(0.2 * US, 30, 0.6, 0.1)
    stuck = StuckAt(0.05, 0.05, G_MIN, G_MAX)
    prog = Programming((window, wv, stuck))
    g = _in_window(10, (64, 64))
    key = getkey()
    k = jr.split(key, 3)
    by_hand = stuck(wv(window(g, key=k[0]), key=k[1]), key=k[2])
    np.testing.assert_array_equal(prog(g, key=key), by_hand)
    # Nested and empty containers.
    nested = Programming((Programming((window, wv)), stuck))
    assert nested(g, key=key).shape == g.shape
    np.testing.assert_array_equal(Programming(())(g, key=key), g)
    assert isinstance(prog, AbstractDeviceStage)


def test_reproducible_and_key_dependent(getkey):
    g = _in_window(20, (8, 5))
    for name, stage in STAGES.items():
        k1, k2 = getkey(), getkey()
        out = stage(g, key=k1)
        assert out.shape == g.shape and out.dtype == g.dtype, name
        np.testing.assert_array_equal(stage(g, key=k1), out, err_msg=name)  # same key
        if name.startswith("window"):
            np.testing.assert_array_equal(stage(g, key=k2), out, err_msg=name)  # deterministic
        else:
            assert not np.array_equal(stage(g, key=k2), out), name  # different draws


def test_jit_vmap_dtype(getkey):
    # One chain of every stage type (window, write-verify, stuck-at, variation, read noise)
    # exercises each under the transforms at the cost of a few compilations; the other kinds of
    # `Variation` differ only in their elementwise formula.
    stage = STAGES["programming"]
    g = _in_window(21, (8, 5))
    key = getkey()
    eager = stage(g, key=key)

    # jit equals eager, and a new key does not retrace. Same draws and arithmetic; allow
    # round-off for a different XLA fusion.
    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def run(stage, g, key):
        return stage(g, key=key)

    np.testing.assert_allclose(run(stage, g, key), eager, rtol=1e-13, atol=0)
    run(stage, g, getkey())
    # vmap over keys: one independent sample per key, each equal to the unbatched call. (Under
    # jit: one compilation instead of one per stage, to keep the file fast.)
    keys = jr.split(getkey(), 6)
    batch = eqx.filter_jit(jax.vmap(lambda k: stage(g, key=k)))(keys)
    assert batch.shape == (6, 8, 5)
    assert len({np.asarray(b).tobytes() for b in batch}) == 6
    np.testing.assert_allclose(batch[3], stage(g, key=keys[3]), rtol=1e-13, atol=0)
    # float32 stays float32 (the parameters are float64 under x64). The random draws differ
    # between float32 and float64, so only the dtype is compared.
    assert eqx.filter_jit(lambda g: stage(g, key=key))(g.astype(jnp.float32)).dtype == jnp.float32


def test_vmap_over_parameters(getkey):
    # Parameters are leaves: build modules inside vmap (validation is skipped for tracers).
    sigmas = jnp.array([0.0, 0.05, 0.2])
    g = jnp.full((20_000,), 10 * US)
    key = getkey()
    out = jax.vmap(lambda s: Variation(s)(g, key=key))(sigmas)
    assert out.shape == (3, 20_000)
    # Same key: the draws are identical and scale with sigma (relative std: 5-sigma tolerance).
    np.testing.assert_array_equal(out[0], g)
    std = np.std(np.asarray(out) / (10 * US) - 1, axis=1)
    np.testing.assert_allclose(std[1:], [0.05, 0.2], rtol=5 / math.sqrt(2 * 20_000))
    # A batch of windows, vmapped as a PyTree (static `levels` shared).
    windows = jax.vmap(lambda hi: ConductanceWindow(G_MIN, hi, levels=4))(jnp.array([10, 20]) * US)
    q = eqx.filter_vmap(lambda w: w(jnp.array([0.0, 7 * US])))(windows)
    np.testing.assert_allclose(q, [[0.0, 6.8333333333333333 * US], [0.0, 7 * US]], rtol=1e-12)
    # Tolerance batch through write-verify (while_loop under vmap).
    tols = jnp.array([0.5, 0.1, 0.02]) * US
    target = _in_window(12, (200,))
    k = getkey()
    g_b, p_b = jax.vmap(lambda t: WriteVerify(t, 60, 0.6, 0.1).program(target, key=k))(tols)
    assert g_b.shape == (3, 200) and p_b.shape == (3, 200)
    assert np.all(np.abs(np.asarray(g_b - target[None])) <= np.asarray(tols)[:, None])
    assert np.all(np.diff(np.asarray(p_b).mean(axis=1)) > 0)  # tighter -> more pulses


# --------------------------------------------------------------------------------------------
# Construction errors


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: ConductanceWindow(-1e-6, G_MAX), "g_min"),
        (lambda: ConductanceWindow(np.nan, G_MAX), "g_min"),
        (lambda: ConductanceWindow(G_MIN, 0.0), "g_max"),
        (lambda: ConductanceWindow(G_MIN, np.inf), "g_max"),
        (lambda: ConductanceWindow(G_MAX, G_MIN), "g_max"),
        (lambda: ConductanceWindow(G_MIN, G_MAX, levels=1), "levels"),
        (lambda: ConductanceWindow(G_MIN, G_MAX, levels=8.0), "levels"),
        (lambda: ConductanceWindow(G_MIN, G_MAX, levels=True), "levels"),
        (lambda: ConductanceWindow(G_MIN, G_MAX, mode="round"), "mode"),
        (lambda: ConductanceWindow(G_MIN, G_MAX, levels=8, smooth=0.0), "smooth"),
        (lambda: ConductanceWindow(G_MIN, G_MAX, smooth=0.1), "smooth"),
        (lambda: Variation(-0.1), "sigma"),
        (lambda: Variation(np.array([0.1, -0.1])), "sigma"),
        (lambda: Variation(np.inf), "sigma"),
        (lambda: Variation(0.1, kind="uniform"), "kind"),
        (lambda: ReadNoise(-0.01), "sigma"),
        (lambda: StuckAt(-0.1, 0.0, G_MIN, G_MAX), "rate_min"),
        (lambda: StuckAt(0.0, 1.5, G_MIN, G_MAX), "rate_max"),
        (lambda: StuckAt(0.6, 0.6, G_MIN, G_MAX), "rate_min"),
        (lambda: StuckAt(0.1, 0.1, -G_MIN, G_MAX), "g_min"),
        (lambda: StuckAt(0.1, 0.1, G_MAX, G_MIN), "g_max"),
        (lambda: WriteVerify(-1e-7, 10), "tolerance"),
        (lambda: WriteVerify(1e-7, 0), "max_pulses"),
        (lambda: WriteVerify(1e-7, 10.0), "max_pulses"),
        (lambda: WriteVerify(1e-7, 10, step=0.0), "step"),
        (lambda: WriteVerify(1e-7, 10, step=1.5), "step"),
        (lambda: WriteVerify(1e-7, 10, sigma_write=-0.1), "sigma_write"),
        (lambda: WriteVerify(1e-7, 10, g_start=-1e-6), "g_start"),
        (lambda: Programming((Variation(0.1), "window")), "stages[1]"),
    ],
)
def test_bad_construction_raises(build, name):
    with pytest.raises(ValueError, match=_arg(name)):
        build()


def test_bad_conductances_raise(getkey):
    for stage in (Variation(0.1), ReadNoise(0.1), StuckAt(0.1, 0.1, G_MIN, G_MAX)):
        with pytest.raises(ValueError, match=_arg("g") + " must be >= 0"):
            stage(np.array([1 * US, -1 * US]), key=getkey())
        with pytest.raises(ValueError, match=_arg("g") + " must be finite"):
            stage(np.array([np.nan]), key=getkey())
    with pytest.raises(ValueError, match=_arg("g")):
        WriteVerify(1e-7, 10).program(np.array([-1 * US]), key=getkey())
    with pytest.raises(ValueError, match=_arg("levels")):
        ConductanceWindow(G_MIN, G_MAX).grid()
