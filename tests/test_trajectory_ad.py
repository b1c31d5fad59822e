"""The exact propagator's trajectory has a hand-written JVP (`_propagator._trajectory`): its
forward and reverse derivatives must equal those of the plain loop, which JAX differentiates
itself."""

import jax
import jax.numpy as jnp
import numpy as np

from amcdyn._propagator import _trajectory


def _plain(phi, e0, n):
    out = [e0]
    for _ in range(n):
        out.append(phi @ out[-1])
    return jnp.stack(out)


def test_trajectory_jvp_and_vjp_match_plain_loop():
    rng = np.random.default_rng(0)
    n, steps = 6, 9
    phi = jnp.asarray(0.9 * np.eye(n) + 0.05 * rng.standard_normal((n, n)))
    e0 = jnp.asarray(rng.standard_normal(n))
    dphi = jnp.asarray(rng.standard_normal((n, n)))
    de0 = jnp.asarray(rng.standard_normal(n))
    ct = jnp.asarray(rng.standard_normal((steps + 1, n)))

    y, dy = jax.jvp(lambda p, e: _trajectory(p, e, steps), (phi, e0), (dphi, de0))
    y_ref, dy_ref = jax.jvp(lambda p, e: _plain(p, e, steps), (phi, e0), (dphi, de0))
    # Same float64 operations in another order: agreement to rounding (1e-13 relative).
    np.testing.assert_allclose(y, y_ref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(dy, dy_ref, rtol=1e-12, atol=1e-14)

    _, vjp = jax.vjp(lambda p, e: _trajectory(p, e, steps), phi, e0)
    _, vjp_ref = jax.vjp(lambda p, e: _plain(p, e, steps), phi, e0)
    for g, g_ref in zip(vjp(ct), vjp_ref(ct)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-14)

    # Under jit and vmap (a batch of three propagators), still the plain loop's gradient.
    def loss(f):
        return lambda p, e: jnp.sum(jnp.sin(jax.vmap(lambda pi, ei: f(pi, ei, steps))(p, e)))

    phis = jnp.stack([phi, 0.5 * phi, phi.T])
    e0s = jnp.stack([e0, -e0, 2 * e0])
    g = jax.jit(jax.grad(loss(_trajectory), argnums=(0, 1)))(phis, e0s)
    g_ref = jax.grad(loss(_plain), argnums=(0, 1))(phis, e0s)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
