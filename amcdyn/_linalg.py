"""Dense linear solves written in plain JAX operations (no LAPACK custom call).

Why: on jaxlib 0.10.x, XLA:CPU's batched LAPACK kernels (`getrf`, `potrf`, `geev`, ...) split a
vmapped batch into chunks on the intra-op thread pool *they run on* and block until the chunks
finish. When as many such kernels run concurrently as the pool has threads (two on a 2-core
machine: e.g. the steady-state and the exact-answer solves of one batched simulation), every
worker waits for work that no worker is free to do, and the process hangs with the CPU idle.
We captured this with gdb (`jax::ParallelBatchMap` under `LuDecompositionKernel`); later jaxlib
releases compile that parallel path out. Circuits are small (n <= a few hundred), so an LU
factorization with partial pivoting as a `fori_loop` of rank-1 updates costs little, vmaps into
plain batched arithmetic, and runs the same on CPU, GPU and TPU. `solve` eliminates on the
augmented matrix instead (no factors kept), unrolled for 12 <= n <= 16 (`_stage_size`).
`solve_blocked`, for the hot solves of batched simulation, eliminates by blocks on Schur
complements above n = 16, mostly dense products, with a residual check and the pivoted
elimination as fallback (`_solve_checked`).
"""

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


@jax.jit
def lu_factor(a: Float[Array, "n n"]) -> tuple[Float[Array, "n n"], Int[Array, " n"]]:
    """LU factorization with partial (row) pivoting: `a[perm] = L U`, packed in one matrix."""
    n = a.shape[-1]
    idx = jnp.arange(n)

    def body(k, carry):
        # Only elementwise selects and one matvec: under vmap the pivot row `p` differs per
        # matrix, and a batched gather/scatter (`lu[p]`, `lu.at[p]`) is slower on CPU.
        lu, perm = carry
        col = jnp.where(idx >= k, jnp.abs(lu[:, k]), -1)
        p = jnp.argmax(col)
        at_p = idx == p
        at_k = idx == k
        row_p = at_p.astype(lu.dtype) @ lu
        row_k = lu[k]
        lu = jnp.where(at_k[:, None], row_p[None, :], jnp.where(at_p[:, None], row_k[None, :], lu))
        perm_p = jnp.sum(jnp.where(at_p, perm, 0))
        perm = jnp.where(at_k, perm_p, jnp.where(at_p, perm[k], perm))
        pivot = row_p[k]
        below = idx > k
        l_col = jnp.where(below, lu[:, k] / jnp.where(pivot != 0, pivot, 1), 0)
        lu = lu - l_col[:, None] * jnp.where(below, row_p, 0)[None, :]
        lu = jnp.where(at_k[None, :] & below[:, None], l_col[:, None], lu)
        return lu, perm

    return jax.lax.fori_loop(0, n, body, (a, idx))


@jax.jit
def lu_solve(lu: Float[Array, "n n"], perm: Int[Array, " n"], b: Float[Array, "n ..."]):
    """Solve with the factors of `lu_factor` (forward then back substitution)."""
    n = lu.shape[-1]
    idx = jnp.arange(n)
    y = b[perm]

    def forward(i, y):
        li = jnp.where(idx < i, lu[i], 0)
        return y.at[i].set(y[i] - li @ y)

    def backward(j, x):
        i = n - 1 - j
        ui = jnp.where(idx > i, lu[i], 0)
        return x.at[i].set((x[i] - ui @ x) / lu[i, i])

    y = jax.lax.fori_loop(0, n, forward, y)
    return jax.lax.fori_loop(0, n, backward, y)


# How the elimination is laid out, by size (a compile-time vs run-time trade):
# - n < _UNROLL_MIN: one `fori_loop` over the columns (cheapest to compile; these systems cost
#   little to solve either way);
# - _UNROLL_MIN <= n <= _UNROLL_MAX: every step unrolled, each on the shrinking trailing block
#   with static shapes (n^3/3 work instead of n^3: 3-4x faster on CPU under vmap, measured
#   n = 16: 1.6-2.2 vs 6.6-10 us per solve in a batch of 1024; ~1 s more to compile);
# - larger: `_STAGES` stages, each a `fori_loop` over its columns on a block that shrinks
#   between stages (compile time flat in n; n = 64: ~80 vs ~190 us).
_UNROLL_MIN = 12
_UNROLL_MAX = 16
_STAGES = 4


def _stage_size(n: int) -> int:
    if n < _UNROLL_MIN:
        return n
    if n <= _UNROLL_MAX:
        return 1
    return -(-n // _STAGES)


def _stage_unrolled(blk, rhs):
    """One elimination step on `blk` (m, w) and `rhs` (m, k): (the trailing block (m-1, w-1),
    the updated right-hand side (m-1, k), the pivot row of each (1, w), (1, k))."""
    m = blk.shape[0]
    j = jnp.argmax(jnp.abs(blk[:, 0]))
    row = jax.lax.dynamic_index_in_dim(blk, j, 0, keepdims=False)
    rrow = jax.lax.dynamic_index_in_dim(rhs, j, 0, keepdims=False)
    if m == 1:
        return blk[:0, 1:], rhs[:0], row[None, :], rrow[None, :]
    # The pivot row leaves the block; row 0 takes its place.
    sel = (jnp.arange(1, m) == j)[:, None]
    rest = jnp.where(sel, blk[0][None, :], blk[1:])
    rrest = jnp.where(sel, rhs[0][None, :], rhs[1:])
    pivot = row[0]
    l_col = rest[:, 0] / jnp.where(pivot != 0, pivot, 1)
    return (
        rest[:, 1:] - l_col[:, None] * row[None, 1:],
        rrest - l_col[:, None] * rrow[None, :],
        row[None, :],
        rrow[None, :],
    )


def _stage_loop(blk, rhs, steps):
    """`steps` elimination steps on `blk` (m, w) and `rhs` (m, k) in a `fori_loop` (rows are
    masked, not moved), then the remaining rows compacted: (trailing block (m-steps, w-steps),
    its right-hand side, the pivot rows of each)."""
    m, w = blk.shape
    ridx = jnp.arange(m)
    cidx = jnp.arange(w)

    def body(t, carry):
        blk, rhs, free, rows, rrows = carry
        col = jax.lax.dynamic_index_in_dim(blk, t, 1, keepdims=False)
        j = jnp.argmax(jnp.where(free, jnp.abs(col), -1))
        row = jax.lax.dynamic_index_in_dim(blk, j, 0, keepdims=False)
        rrow = jax.lax.dynamic_index_in_dim(rhs, j, 0, keepdims=False)
        free = free & (ridx != j)
        pivot = row[t]
        l_col = jnp.where(free, col / jnp.where(pivot != 0, pivot, 1), 0)
        blk = blk - l_col[:, None] * jnp.where(cidx > t, row, 0)[None, :]
        rhs = rhs - l_col[:, None] * rrow[None, :]
        rows = jax.lax.dynamic_update_index_in_dim(rows, row, t, 0)
        rrows = jax.lax.dynamic_update_index_in_dim(rrows, rrow, t, 0)
        return blk, rhs, free, rows, rrows

    init = (
        blk,
        rhs,
        jnp.ones(m, bool),
        jnp.zeros((steps, w), blk.dtype),
        jnp.zeros((steps, rhs.shape[1]), rhs.dtype),
    )
    blk, rhs, free, rows, rrows = jax.lax.fori_loop(0, steps, body, init)
    keep = jnp.argsort(~free, stable=True)[: m - steps]
    return jnp.take(blk, keep, axis=0)[:, steps:], jnp.take(rhs, keep, axis=0), rows, rrows


# Jitted so that an eager call (e.g. a wire-resistance reduction outside any `jit`) is one
# compiled program: op by op, the unrolled n = 16 elimination compiled ~240 small programs
# (18.6 s against 3.9 s). Inside a trace it is inlined as usual.
@jax.jit
def _eliminate(a: Float[Array, "n n"], rhs: Float[Array, "n k"]) -> Float[Array, "n k"]:
    r"""$A^{-1}$ `rhs` by Gaussian elimination with partial pivoting on $[A \mid$ `rhs`$]$,
    then back substitution. The matrix and the right-hand side are kept apart, so that the
    result is visibly linear in `rhs` (pivots and multipliers come from `a` alone): JAX can
    then transpose a solve whose right-hand side is a tangent (reverse mode through the
    eigenvector derivative of the analytic path)."""
    n = a.shape[-1]
    dtype = jnp.result_type(a, rhs)
    shape = rhs.shape
    blk, rhs = a.astype(dtype), rhs.astype(dtype)
    size = _stage_size(n)
    rows, rrows = [], []
    for start in range(0, n, size):
        steps = min(size, n - start)
        if steps == 1:
            blk, rhs, r, rr = _stage_unrolled(blk, rhs)
        else:
            blk, rhs, r, rr = _stage_loop(blk, rhs, steps)
        rows.append(jnp.pad(r, ((0, 0), (start, 0))))
        rrows.append(rr)
    u = jnp.concatenate(rows, axis=0)  # row i: U[i, i:] (zeros before)
    c = jnp.concatenate(rrows, axis=0)  # the transformed right-hand side
    cidx = jnp.arange(n)

    def backward(j, x):
        i = n - 1 - j
        r = jax.lax.dynamic_index_in_dim(u, i, 0, keepdims=False)
        ci = jax.lax.dynamic_index_in_dim(c, i, 0, keepdims=False)
        upper = jnp.where(cidx > i, r, 0)
        return jax.lax.dynamic_update_index_in_dim(x, (ci - upper @ x) / r[i], i, 0)

    return jax.lax.fori_loop(0, n, backward, jnp.zeros(shape, dtype))


# Systems larger than _SCHUR_MIN are solved by block elimination on Schur complements: halve
# the matrix, solve with the leading block (recursively, with its off-diagonal block as extra
# right-hand sides), eliminate by one matrix product, recurse on the Schur complement, down to
# blocks of at most _SCHUR_BASE (pivoted elimination). Nearly all the work is then in dense
# products, which XLA:CPU runs far faster than the rank-1 updates of an elimination loop
# (measured n = 64, float32, a batch of 1024 in chunks of 32: 27 vs 72 us per solve; LAPACK's
# batched getrf/getrs 28 us). It pivots only inside the base blocks, so it can be unstable
# where partial pivoting is not; every such solve is therefore checked by its residual
# (`_backward_ok`), and a batch with any failing system is solved again by the pivoted
# elimination (`_solve_checked`).
_SCHUR_MIN = 16
_SCHUR_BASE = 12
# Accepted residual, in units of eps (|A|_inf |x|_inf + |b|_inf): measured n = 32/64, float32,
# at most 3 for the pivoted elimination on any matrix; the block elimination reaches 1.5 on
# diagonally dominant matrices and a median 15 (up to 1e6 with near-zero leading blocks) on
# Gaussian ones, which then take the pivoted path.
_RESIDUAL_EPS = 8.0


def _schur(a, rhs):
    n = a.shape[-1]
    if n <= _SCHUR_BASE:
        return _eliminate(a, rhs)
    h = n // 2
    k = n - h
    head = _schur(a[:h, :h], jnp.concatenate([a[:h, h:], rhs[:h]], axis=1))
    x12, y = head[:, :k], head[:, k:]  # A11^-1 A12, A11^-1 b1
    z2 = _schur(a[h:, h:] - a[h:, :h] @ x12, rhs[h:] - a[h:, :h] @ y)
    return jnp.concatenate([y - x12 @ z2, z2], axis=0)


def _backward_ok(a, rhs, x):
    """Whether `x` solves `a x = rhs` to a backward error of a few roundoffs."""
    eps = jnp.finfo(x.dtype).eps
    res = jnp.max(jnp.abs(rhs - a @ x))
    scale = jnp.max(jnp.sum(jnp.abs(a), axis=1)) * jnp.max(jnp.abs(x)) + jnp.max(jnp.abs(rhs))
    return res <= _RESIDUAL_EPS * eps * scale


@jax.custom_batching.custom_vmap
def _solve_checked(a, rhs):
    x = _schur(a, rhs)
    return jax.lax.cond(_backward_ok(a, rhs, x), lambda: x, lambda: _eliminate(a, rhs))


@_solve_checked.def_vmap
def _solve_checked_batched(axis_size, in_batched, a, rhs):
    # Decided once per batch (a per-system `cond` becomes a select under `vmap`, which would
    # run both eliminations for every system): the pivoted one runs only if some system of the
    # batch fails its residual check, and replaces only those.
    a, rhs = (
        x if batched else jnp.broadcast_to(x, (axis_size,) + x.shape)
        for x, batched in zip((a, rhs), in_batched)
    )
    x = jax.vmap(_schur)(a, rhs)
    ok = jax.vmap(_backward_ok)(a, rhs, x)

    def redo():
        return jnp.where(ok[:, None, None], x, jax.vmap(_eliminate)(a, rhs))

    return jax.lax.cond(jnp.all(ok), lambda: x, redo), True


def _uses_blocks(a, blocked):
    """Whether a solve takes the block path: `solve_blocked`, above _SCHUR_MIN."""
    return blocked and a.shape[-1] > _SCHUR_MIN


def _eliminate_any(a, rhs, blocked):
    if _uses_blocks(a, blocked):
        return _solve_checked(a, rhs)
    return _eliminate(a, rhs)


def _solve(a, b, blocked):
    bm = b[:, None] if b.ndim == 1 else b
    if _uses_blocks(a, blocked):
        # JAX cannot transpose through `custom_vmap`; `custom_linear_solve` tells it that the
        # solve is linear in the right-hand side, with A^T's solve as the transpose.
        x = jax.lax.custom_linear_solve(
            lambda v: a @ v,
            bm,
            solve=lambda _, r: _solve_checked(a, r),
            transpose_solve=lambda _, r: _solve_checked(a.T, r),
        )
    else:
        x = _eliminate(a, bm)
    return x[:, 0] if b.ndim == 1 else x


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _solve_p(a, b, blocked):
    return _solve(a, b, blocked)


def solve(a: Float[Array, "n n"], b: Float[Array, "n ..."]) -> Float[Array, "n ..."]:
    r"""`jnp.linalg.solve(a, b)` without LAPACK (Gaussian elimination with partial
    pivoting); derivative $dx = A^{-1}(db - dA\,x)$."""
    return _solve_p(a, b, False)


def solve_blocked(a: Float[Array, "n n"], b: Float[Array, "n ..."]) -> Float[Array, "n ..."]:
    r"""As `solve`, by block elimination on Schur complements above n = 16 (residual-checked,
    with the pivoted elimination as fallback): 2-3x faster in large batches, but 2-6x longer to
    compile (n = 64: 6.4 vs 1.9 s under vmap), so it serves the hot solves of batched
    simulation (an INV's equilibrium and exact answer), not every solve."""
    return _solve_p(a, b, True)


@_solve_p.defjvp
def _solve_jvp(blocked, primals, tangents):
    a, b = primals
    da, db = tangents
    n = a.shape[-1]
    bm = b[:, None] if b.ndim == 1 else b
    # One elimination gives both x and A^{-1}; the tangent is then a product with constants,
    # which reverse mode transposes.
    y = _eliminate_any(a, jnp.concatenate([bm, jnp.eye(n, dtype=bm.dtype)], axis=1), blocked)
    k = bm.shape[1]
    x, a_inv = y[:, :k], y[:, k:]
    x = x[:, 0] if b.ndim == 1 else x
    return x, a_inv @ (db - da @ x)
