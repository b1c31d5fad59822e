"""The LAPACK-free dense solve (`amcdyn._linalg`) against NumPy, under jit, vmap and grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amcdyn._linalg import solve


# Under jit: called eagerly, the unrolled elimination (n = 16) dispatches ~240 primitives, each
# compiled on its own (measured 18.6 s of CPU against 3.9 s for the one jitted program).
_solve_jit = jax.jit(solve)


# 1, 2, 7: one loop; 16: unrolled (the largest); 17: staged (the smallest); 33: uneven stages;
# 64: four stages of 16.
@pytest.mark.parametrize("n", [1, 2, 7, 16, 17, 33, 64])
def test_solve_matches_numpy(n):
    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, n))
    b = rng.normal(size=n)
    bm = rng.normal(size=(n, 3))
    # Backward-stable LU with partial pivoting: residual at roundoff times the condition.
    tol = 1e-13 * np.linalg.cond(a)
    np.testing.assert_allclose(np.asarray(_solve_jit(a, b)), np.linalg.solve(a, b), atol=tol)
    np.testing.assert_allclose(np.asarray(_solve_jit(a, bm)), np.linalg.solve(a, bm), atol=tol)


def test_solve_complex():
    # The eigenvector solves of the analytic path are complex.
    rng = np.random.default_rng(5)
    for n in (5, 20):
        a = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
        b = rng.normal(size=(n, 2)) + 1j * rng.normal(size=(n, 2))
        tol = 1e-13 * np.linalg.cond(a)
        np.testing.assert_allclose(np.asarray(solve(a, b)), np.linalg.solve(a, b), atol=tol)


@pytest.mark.parametrize("n", [4, 20, 40])
def test_solve_is_linear_in_rhs(n):
    # Reverse mode through a solve whose right-hand side is a tangent (the analytic path's
    # eigenvector derivative) needs JAX to see it as linear in b: its transpose is A^-T.
    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, n)) + n * np.eye(n)
    ct = rng.normal(size=(n, 2))
    (got,) = jax.linear_transpose(lambda b: solve(a, b), np.zeros((n, 2)))(ct)
    np.testing.assert_allclose(np.asarray(got), np.linalg.solve(a.T, ct), atol=1e-12)


def test_solve_needs_pivoting():
    a = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    np.testing.assert_allclose(np.asarray(solve(a, np.array([2.0, 3.0, 4.0]))), [3.0, 2.0, 2.0])


@pytest.mark.parametrize("n", [20, 40])
def test_solve_needs_pivoting_across_stages(n):
    # A permuted diagonal-dominant matrix with a zero diagonal: each stage must take its pivots
    # from rows below its first ones and carry the row exchanges into the later stages.
    rng = np.random.default_rng(n)
    perm = rng.permutation(n)
    while np.any(perm == np.arange(n)):
        perm = rng.permutation(n)
    a = (np.eye(n) * n + rng.uniform(-1, 1, (n, n)) * (rng.uniform(size=(n, n)) < 0.3))[perm]
    np.fill_diagonal(a, 0.0)
    b = rng.normal(size=(n, 2))
    tol = 1e-13 * np.linalg.cond(a)
    np.testing.assert_allclose(np.asarray(_solve_jit(a, b)), np.linalg.solve(a, b), atol=tol)


def test_solve_jit_vmap_grad():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 6, 6)) + 3 * np.eye(6)
    b = rng.normal(size=(4, 6))
    got = jax.jit(jax.vmap(solve))(a, b)
    np.testing.assert_allclose(
        np.asarray(got), np.linalg.solve(a, b[..., None])[..., 0], atol=1e-12
    )

    def f(a, b, lin):
        return jnp.sum(jnp.sin(lin(a, b)))

    for argnum in (0, 1):
        g = jax.grad(f, argnums=argnum)(a[0], b[0], solve)
        g_ref = jax.grad(f, argnums=argnum)(a[0], b[0], jnp.linalg.solve)
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=1e-12)
    jf = jax.jacfwd(f, argnums=0)(a[0], b[0], solve)
    np.testing.assert_allclose(
        np.asarray(jf),
        np.asarray(jax.jacfwd(f, argnums=0)(a[0], b[0], jnp.linalg.solve)),
        atol=1e-12,
    )
