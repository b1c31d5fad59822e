"""Dense linear solves written in plain JAX operations (no LAPACK custom call).

Why: on jaxlib 0.10.x, XLA:CPU's batched LAPACK kernels (`getrf`, `potrf`, `geev`, ...) split a
vmapped batch into chunks on the intra-op thread pool *they run on* and block until the chunks
finish. When as many such kernels run concurrently as the pool has threads (two on a 2-core
machine: e.g. the steady-state and the exact-answer solves of one batched simulation), every
worker waits for work that no worker is free to do, and the process hangs with the CPU idle.
We captured this with gdb (`jax::ParallelBatchMap` under `LuDecompositionKernel`); later jaxlib
releases compile that parallel path out. Circuits are small (n <= a few hundred), so an LU
factorization with partial pivoting as a `fori_loop` of rank-1 updates costs little, vmaps into
plain batched arithmetic, and runs the same on CPU, GPU and TPU.
"""

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


@jax.custom_jvp
def solve(a: Float[Array, "n n"], b: Float[Array, "n ..."]) -> Float[Array, "n ..."]:
    """`jnp.linalg.solve(a, b)` without LAPACK; derivative $dx = A^{-1}(db - dA\\,x)$."""
    lu, perm = lu_factor(a)
    return lu_solve(lu, perm, b)


@solve.defjvp
def _solve_jvp(primals, tangents):
    a, b = primals
    da, db = tangents
    lu, perm = lu_factor(a)
    x = lu_solve(lu, perm, b)
    rhs = db - da @ x
    return x, lu_solve(lu, perm, rhs)
