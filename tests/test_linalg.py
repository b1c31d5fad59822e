"""The LAPACK-free dense solve (`amcdyn._linalg`) against NumPy, under jit, vmap and grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amcdyn import _linalg as _lin
from amcdyn._linalg import solve, solve_blocked


# Under jit: called eagerly, the unrolled elimination (n = 16) dispatches ~240 primitives, each
# compiled on its own (measured 18.6 s of CPU against 3.9 s for the one jitted program).
_solve_jit = jax.jit(solve)
_blocked_jit = jax.jit(solve_blocked)


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


def _dominant(rng, n):
    r = rng.uniform(-1, 1, (n, n))
    np.fill_diagonal(r, 0.0)
    return np.eye(n) + 0.8 * r / np.abs(r).sum(1, keepdims=True)


def _swapped_halves(rng, n):
    # Well conditioned, but its leading half block is nearly zero: block elimination on Schur
    # complements without pivoting across blocks breaks down, partial pivoting does not.
    h = n // 2
    a = 1e-3 * rng.normal(size=(n, n))
    a[:h, h:] += _dominant(rng, n - h)[:h, :]
    a[h:, :h] += _dominant(rng, h)
    return a


@pytest.mark.parametrize("n", [24, 40])
def test_block_solve_path_and_fallback(n):
    # `solve_blocked`, n > 16: the block (Schur-complement) elimination, checked by its
    # residual. On a diagonally dominant matrix it passes the check; on one whose leading
    # block is nearly zero it fails it, and the pivoted elimination answers instead. Both
    # agree with NumPy to roundoff times the condition number.
    rng = np.random.default_rng(n)
    b = rng.normal(size=(n, 2))
    for make, fast in ((_dominant, True), (_swapped_halves, False)):
        a = make(rng, n)
        assert bool(_lin._backward_ok(a, b, _lin._schur(a, b))) is fast, make.__name__
        tol = 1e-13 * np.linalg.cond(a)
        np.testing.assert_allclose(np.asarray(_blocked_jit(a, b)), np.linalg.solve(a, b), atol=tol)


def test_block_solve_batches_mix_both_paths():
    # Under vmap the residual check is decided per batch: a batch with one failing system
    # re-solves that one by pivoting and keeps the others; nested vmaps and float32 too.
    rng = np.random.default_rng(7)
    n = 32
    a = np.stack([_dominant(rng, n), _swapped_halves(rng, n), _dominant(rng, n)])
    b = rng.normal(size=(3, n))
    want = np.linalg.solve(a, b[..., None])[..., 0]
    tol = 1e-13 * max(np.linalg.cond(m) for m in a)
    np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(solve_blocked))(a, b)), want, atol=tol)
    good = np.stack([_dominant(rng, n) for _ in range(3)])
    np.testing.assert_allclose(
        np.asarray(jax.jit(jax.vmap(solve_blocked))(good, b)),
        np.linalg.solve(good, b[..., None])[..., 0],
        atol=1e-13 * max(np.linalg.cond(m) for m in good),
    )
    # vmap of vmap, and one matrix for many right-hand sides (unbatched a).
    a2, b2 = np.stack([a, good]), np.stack([b, b])
    got = jax.jit(jax.vmap(jax.vmap(solve_blocked)))(a2, b2)
    np.testing.assert_allclose(
        np.asarray(got), np.linalg.solve(a2, b2[..., None])[..., 0], atol=tol
    )
    got = jax.vmap(solve_blocked, in_axes=(None, 0))(a[1], b)
    np.testing.assert_allclose(
        np.asarray(got), np.linalg.solve(a[1], b.T).T, atol=1e-13 * np.linalg.cond(a[1])
    )
    # float32: the block path's answer is a backward-stable one.
    a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    got = np.asarray(jax.jit(jax.vmap(solve_blocked))(a32, b32), float)
    res = np.einsum("bij,bj->bi", a, got) - b
    scale = np.abs(a).sum(2).max(1) * np.abs(got).max(1) + np.abs(b).max(1)
    assert np.all(np.abs(res).max(1) <= 8 * np.finfo(np.float32).eps * scale * 1.5)


def test_block_solve_grad_and_transpose():
    # Gradients through the block path (n > 16) equal jnp.linalg.solve's, on both paths of
    # the residual check; the transpose (linear in b) is A^-T b.
    rng = np.random.default_rng(3)
    n = 24
    b = rng.normal(size=n)

    def f(a, b, lin):
        return jnp.sum(jnp.sin(lin(a, b)))

    for a in (_dominant(rng, n), _swapped_halves(rng, n)):
        for argnum in (0, 1):
            g = jax.jit(jax.grad(f, argnums=argnum), static_argnums=2)(a, b, solve_blocked)
            g_ref = jax.grad(f, argnums=argnum)(a, b, jnp.linalg.solve)
            np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=1e-11)
        (got,) = jax.linear_transpose(lambda v: solve_blocked(a, v), np.zeros(n))(b)
        np.testing.assert_allclose(np.asarray(got), np.linalg.solve(a.T, b), atol=1e-11)


def test_plain_solve_keeps_the_pivoted_elimination():
    # `solve` (every solve but an INV's equilibrium and exact answer) compiles no block path.
    a = _swapped_halves(np.random.default_rng(1), 24)
    # The block path's residual check is a `cond`, lowered to stablehlo.case.
    text = jax.jit(solve).lower(a, np.ones(24)).as_text()
    assert "stablehlo.case" not in text
    assert "stablehlo.case" in jax.jit(solve_blocked).lower(a, np.ones(24)).as_text()
