"""The settling observer's pieces (`amcdyn._observe`), each against an independent reference:
a crossing known by construction, einsum, one-hot derivatives, finite differences of the
analytic path."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import amcdyn
from amcdyn import _observe


jax.config.update("jax_enable_x64", True)


def _observer(m=8, tol=1e-3):
    return _observe.SettleObserver(
        dfx.Tsit5(),
        n_outputs=2,
        v_ref=jnp.zeros(2),
        fs=jnp.asarray(1.0),
        tol=jnp.asarray(tol),
        substeps=m,
    )


def _track(dev, t0, t1, found=True):
    last = _observe.Crossing(
        found=jnp.asarray(found), t0=jnp.asarray(t0), t1=jnp.asarray(t1), dev=jnp.asarray(dev)
    )
    return _observe.Track(integral=jnp.asarray(0.0), max_dev=jnp.asarray(1.0), last=last)


@pytest.mark.parametrize("root", [0.03, 0.31, 0.55, 0.97])
def test_crossing_of_a_quartic_is_exact(root):
    # A deviation that is a decreasing positive quartic in the step fraction theta and equals
    # the band exactly at theta = root: tol * e4(1.5 (root - theta)), with e4 the degree-4
    # Taylor polynomial of exp (positive everywhere, increasing for x > -1.59). Sampled at
    # the 9 sub-points, which bracket the crossing only within 1/8 of the step, `t_last`
    # must return root's time to rounding.
    tol, t0, t1 = 1e-3, 2.0, 3.5
    theta = np.arange(9) / 8
    x = 1.5 * (root - theta)
    dev = tol * (1 + x + x**2 / 2 + x**3 / 6 + x**4 / 24)
    assert np.all(np.diff(dev) < 0) and np.all(dev > 0)
    got = _observer(tol=tol).t_last(_track(dev, t0, t1))
    # Measured 0 to 2.2e-16 relative; 1e-12 allows for rounding in the Newton steps.
    np.testing.assert_allclose(float(got), t0 + (t1 - t0) * root, rtol=1e-12)


def test_crossing_end_and_none():
    obs = _observer()
    # Still above the band at the end of the recorded step: the end of the step.
    dev = np.linspace(3e-3, 2e-3, 9)
    assert float(obs.t_last(_track(dev, 1.0, 2.0))) == 2.0
    # Never outside the band: the start time (the empty record's step, set by `init`).
    assert float(obs.t_last(_track(np.zeros(9), 0.25, 0.25, found=False))) == 0.25
    term = dfx.ODETerm(lambda t, y, args: -y)
    _, track = obs.init(term, 0.25, 1.0, jnp.zeros(2), None)
    assert float(obs.t_last(track)) == 0.25


def test_crossing_between_two_kinks_stays_bracketed():
    # The deviation switches between outputs (a kink): no polynomial fits it, but the
    # result stays within the sub-interval that brackets the crossing.
    tol = 1e-3
    dev = np.array([5, 4, 3, 2.5, 2.4, 0.5, 0.4, 0.3, 0.2]) * tol
    got = float(_observer(tol=tol).t_last(_track(dev, 0.0, 8.0)))
    assert 4.0 <= got <= 5.0


def test_max_abs_value_and_gradient():
    rng = np.random.default_rng(0)
    d = jnp.asarray(rng.standard_normal((5, 7)))
    np.testing.assert_array_equal(_observe._max_abs(d), np.max(np.abs(np.asarray(d)), axis=-1))
    # The derivative selects the largest |d_i| with its sign; one-hot reference.
    g = jax.grad(lambda x: jnp.sum(_observe._max_abs(x)))(d)
    ref = np.zeros(d.shape)
    i = np.argmax(np.abs(np.asarray(d)), axis=-1)
    ref[np.arange(5), i] = np.sign(np.asarray(d)[np.arange(5), i])
    np.testing.assert_array_equal(g, ref)
    # Forward mode agrees, and odd lengths (a carried last entry) work.
    for n in (1, 2, 3, 5, 16):
        x = jnp.asarray(rng.standard_normal(n))
        t = jnp.asarray(rng.standard_normal(n))
        _, jv = jax.jvp(_observe._max_abs, (x,), (t,))
        k = int(np.argmax(np.abs(np.asarray(x))))
        np.testing.assert_allclose(jv, np.sign(x[k]) * t[k], rtol=1e-15)


def test_weighted_sum_and_its_derivatives():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((9, 9))
    y0, y1 = jnp.asarray(rng.standard_normal(4)), jnp.asarray(rng.standard_normal(4))
    k = jnp.asarray(rng.standard_normal((7, 4)))

    def ref(y0, y1, k):
        return jnp.einsum("pj,jn->pn", jnp.asarray(w), jnp.concatenate([y0[None], y1[None], k]))

    f = lambda *z: _observe._weighted_sum(w, *z)  # noqa: E731
    np.testing.assert_allclose(f(y0, y1, k), ref(y0, y1, k), rtol=1e-13, atol=1e-13)
    t = (jnp.asarray(rng.standard_normal(4)), jnp.asarray(rng.standard_normal(4)), k[::-1])
    np.testing.assert_allclose(
        jax.jvp(f, (y0, y1, k), t)[1], jax.jvp(ref, (y0, y1, k), t)[1], rtol=1e-13, atol=1e-13
    )
    ct = jnp.asarray(rng.standard_normal((9, 4)))
    g = jax.vjp(f, y0, y1, k)[1](ct)
    g_ref = jax.vjp(ref, y0, y1, k)[1](ct)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
    # Under vmap as well (how `simulate` runs it).
    kb = jnp.stack([k, 2 * k])
    np.testing.assert_allclose(
        jax.vmap(f, in_axes=(None, None, 0))(y0, y1, kb),
        jax.vmap(ref, in_axes=(None, None, 0))(y0, y1, kb),
        rtol=1e-13,
        atol=1e-13,
    )


def test_settling_time_gradient_is_finite_and_matches_finite_differences():
    # d t_s / d f_GBW through the observer (the path that gave NaN with jnp.max's derivative
    # under the tests' XLA flags). Reference: central differences of the settling time.
    a = jnp.asarray([[1.0, 0.3, -0.2], [0.1, 1.0, 0.25], [-0.3, 0.2, 1.0]])
    b = jnp.asarray([0.5, -0.4, 0.3])

    def ts(gbw):
        c = amcdyn.INV.from_matrix(a, b, f_gbw=gbw)
        s = amcdyn.simulate(
            c,
            t_max=2e-7,
            n_save=0,
            stepsize_controller=dfx.PIDController(rtol=1e-9, atol=1e-11),
            throw=False,
        )
        return s.settling_time

    def ts_exact(gbw):
        c = amcdyn.INV.from_matrix(a, b, f_gbw=gbw)
        return float(amcdyn.simulate_analytic(c, n_save=0).settling_time)

    g = float(jax.grad(ts)(1e8))
    h = 1e5
    fd = (float(ts(1e8 + h)) - float(ts(1e8 - h))) / (2 * h)
    fd_exact = (ts_exact(1e8 + h) - ts_exact(1e8 - h)) / (2 * h)
    assert np.isfinite(g) and g < 0  # a faster amplifier settles sooner
    # Measured 3.3e-7 relative against both (the settling time is piecewise smooth in f_GBW).
    np.testing.assert_allclose(g, fd, rtol=1e-4)
    np.testing.assert_allclose(g, fd_exact, rtol=1e-4)
