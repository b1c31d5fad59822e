r"""Interconnect (wire) resistance in crossbars, reduced exactly to the amplifiers' multiport.

Geometry of one `(m, n)` array $G$ (S; a zero is no device). Row line $i$ has a node
$r_{i,k}$ at every cell $k$, column line $j$ a node $c_{i,j}$ at every cell $i$; device
$(i, j)$ joins $r_{i,j}$ to $c_{i,j}$. Every segment between neighbouring cells has resistance
$r_\mathrm{row}$ (row lines) or $r_\mathrm{col}$ (column lines), and so has the segment
between a line's terminal and its first cell. Row terminals (the op-amp inputs) sit at the
column-0 end, column terminals (the drivers) at the row-0 end::

    row terminal i -- r[i,0] -- r[i,1] -- ... -- r[i,n-1]          (open end)
    col terminal j -- c[0,j] -- c[1,j] -- ... -- c[m-1,j]          (open end)

[`port_admittance`][] is the exact Kron reduction (Schur complement) of this network onto the
$m + n$ terminals. It is written in *resistance* form, so that $r = 0$ gives the ideal
crossbar exactly and every quantity is smooth in $r \ge 0$:

1. Each row line is eliminated for given column-node voltages. With the chain matrix
   $L_n = \mathrm{tridiag}(-1, 2, -1)$ whose last diagonal entry is 1 (Dirichlet at the
   terminal, open at the far end, $L_n \mathbf 1 = e_0$) and $D_i = \mathrm{diag}(G_{i,:})$,
   the device currents of row $i$ are $D_i(c_{i,:} - r_{i,:}) = W_i c_{i,:} - w_i u_i$ with
   $W_i = D_i - r_\mathrm{row} D_i (L_n + r_\mathrm{row} D_i)^{-1} D_i$ (symmetric PSD; one
   tridiagonal solve per row) and $w_i = W_i \mathbf 1$.
2. The column nodes obey the block-tridiagonal SPD system
   $T c = r_\mathrm{col}\,\Omega u + E e$ with $T = L_m \otimes I_n + r_\mathrm{col}\,
   \mathrm{blockdiag}(W_i)$ ($\Omega$: block $i$ is $w_i$ in column $i$; $E$: block 0 is $I_n$).
   Since $T (\mathbf 1 \otimes e) = E e + r_\mathrm{col} \bar W e$ ($\bar W$: blocks $W_i$),
   $c = \mathbf 1 \otimes e + r_\mathrm{col} T^{-1}(\Omega u - \bar W e)$: the ideal
   crossbar is the exact $r_\mathrm{col} = 0$ term. $T^{-1}[\Omega | \bar W]$ ($m + n$
   right-hand sides) is found by block-Cholesky (block Thomas) elimination along the column
   lines: $m$ dense $n \times n$ steps, $O(m n^3 + m n^2 (m + n))$ in all.
3. The terminal currents are sums of device currents (no $1/r$ anywhere):
   $I_r = \mathrm{diag}(s)\,u - \Omega^T c$ with $s_i = \mathbf 1^T w_i$, and
   $I_c = \sum_i (W_i c_{i,:} - w_i u_i)$. Hence $Y = Y_\mathrm{ideal} + \Delta Y$ with every
   term of $\Delta Y$ an explicit multiple of $r_\mathrm{row}$ or $r_\mathrm{col}$: no
   cancellation against the large wire conductances (the literal Schur complement
   $K_{pp} - K_{pi} K_{ii}^{-1} K_{ip}$ loses about $\log_{10}(1/(r G))$ digits), and exactly
   the ideal crossbar at $r = 0$.

When $n > m$ the transposed problem (rows and columns swap roles; the geometry is symmetric)
is solved instead, so the cost is $O(\min(m,n)^3 \max(m,n) + \dots)$.

[`inv_row_operator`][] and [`mvm_row_operator`][] turn the multiport into the row-node voltage
$u$ that the op-amp equations of [`amcdyn.INV`][] and [`amcdyn.MVM`][] need; with zero wire
resistance they reduce exactly to $u = P y + c$ of the ideal crossbar. [`inv_wire_netlist`][]
writes the unreduced circuit, every wire resistor included, as an ngspice netlist.

Units are SI: conductances in S, resistances in Ω, currents in A, voltages in V.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.lax.linalg import tridiagonal_solve
from jaxtyping import Array, ArrayLike, Float

from . import _spice
from ._linalg import solve
from ._validate import check_finite, check_ndim, check_nonnegative, is_concrete


__all__ = [
    "inv_row_operator",
    "inv_wire_netlist",
    "mvm_row_operator",
    "port_admittance",
]


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------


def _check_resistance(name: str, r) -> None:
    if np.ndim(r) != 0:
        raise ValueError(f"`{name}` must be a scalar wire resistance (Ω), got shape {np.shape(r)}")
    if not is_concrete(r):
        return
    x = float(np.asarray(r, dtype=float))
    if not math.isfinite(x):
        raise ValueError(f"`{name}` must be finite, got {r!r}")
    if x < 0:
        raise ValueError(f"`{name}` must be >= 0 (a wire resistance in Ω), got {r!r}")


def _check_conductances(name: str, g, shape=None) -> None:
    check_ndim(name, g, 2)
    if shape is not None and np.shape(g) != tuple(shape):
        raise ValueError(f"`{name}` must have shape {tuple(shape)}, got {np.shape(g)}")
    if 0 in np.shape(g):
        raise ValueError(f"`{name}` must not be empty, got shape {np.shape(g)}")
    check_nonnegative(name, g)


def _resistances(r_row, r_col):
    _check_resistance("r_row", r_row)
    if r_col is None:
        r_col = r_row
    else:
        _check_resistance("r_col", r_col)
    return r_row, r_col


# ---------------------------------------------------------------------------------------
# the reduction
# ---------------------------------------------------------------------------------------


def _row_lines(g, r_row):
    """X_i = D_i (L_n + r D_i)^{-1} D_i for every row i, shape (m, n, n): W_i = D_i - r X_i."""
    m, n = g.shape
    dtype = g.dtype
    main = jnp.full((n,), 2.0, dtype).at[-1].set(1.0)
    main = main[None, :] + r_row * g  # (m, n)
    lower = jnp.broadcast_to(jnp.full((n,), -1.0, dtype).at[0].set(0.0), (m, n))
    upper = jnp.broadcast_to(jnp.full((n,), -1.0, dtype).at[-1].set(0.0), (m, n))
    eye = jnp.broadcast_to(jnp.eye(n, dtype=dtype), (m, n, n))
    # (L + r D_i)^{-1}: tridiagonal solves against the identity, O(n^2) per row.
    minv = tridiagonal_solve(lower, main, upper, eye)
    minv = 0.5 * (minv + jnp.swapaxes(minv, -1, -2))
    return g[:, :, None] * minv * g[:, None, :]


@jax.jit
def _reduce(g, r_row, r_col):
    """The wire corrections (dY_rr, dY_rc, dY_cc) to the ideal crossbar's admittance.

    Y_rr = diag(sum_j G_ij) + dY_rr, Y_rc = -G + dY_rc, Y_cc = diag(sum_i G_ij) + dY_cc;
    every correction is an explicit multiple of r_row or r_col, hence exactly 0 when both
    are 0. No validation; cost O(m n^3 + m n^2 (m + n)).
    """
    m, n = g.shape
    dtype = g.dtype
    x_mat = _row_lines(g, r_row)  # (m, n, n)
    xi = jnp.sum(x_mat, axis=-1)  # (m, n): X_i 1
    w_mat = jax.vmap(jnp.diag)(g) - r_row * x_mat  # W_i
    w_vec = g - r_row * xi  # w_i = W_i 1
    eye = jnp.eye(n, dtype=dtype)
    k = m + n
    # Column-node voltages c = 1 (x) e + r_col T^{-1} (Omega u - Wbar e), Wbar = [W_0; ...],
    # so the ideal crossbar is the exact r_col = 0 term and the wires add an explicit
    # O(r_col) correction. Right-hand sides of the block solve: F_i = [w_i e_i^T | W_i].

    def rhs(i):
        omega = w_vec[i][:, None] * (jnp.arange(m) == i).astype(dtype)[None, :]
        return jnp.concatenate([omega, w_mat[i]], axis=1)  # (n, k)

    # Block Cholesky / Thomas on T = L_m (x) I_n + r_col blockdiag(W_i) (SPD): diagonal
    # blocks B_i = 2 I + r_col W_i (B_{m-1} = I + r_col W_{m-1}), off-diagonal blocks -I.
    # Forward: Phi_i = (B_i - Phi_{i-1})^{-1}, y_i = F_i + Phi_{i-1} y_{i-1}.
    def forward(carry, i):
        phi_prev, y_prev = carry
        diag = jnp.where(i == m - 1, 1.0, 2.0).astype(dtype) * eye + r_col * w_mat[i]
        # (An LU solve in plain JAX: batched LAPACK potrf can hang XLA:CPU, see _linalg.)
        phi = solve(diag - phi_prev, eye)
        phi = 0.5 * (phi + phi.T)
        y = rhs(i) + phi_prev @ y_prev
        return (phi, y), (phi, y)

    init = (jnp.zeros((n, n), dtype), jnp.zeros((n, k), dtype))
    _, (phis, ys) = jax.lax.scan(forward, init, jnp.arange(m))

    # Backward: Z_i = Phi_i (y_i + Z_{i+1}) is block i of T^{-1} F; only the reductions
    # q_i = w_i^T Z_i (rows of Omega^T Z) and acc = sum_i W_i Z_i are kept.
    def backward(carry, xs):
        z_next, acc = carry
        phi, y, w_i, wv_i = xs
        z = phi @ (y + z_next)
        return (z, acc + w_i @ z), wv_i @ z

    init = (jnp.zeros((n, k), dtype), jnp.zeros((n, k), dtype))
    (_, acc), q = jax.lax.scan(backward, init, (phis, ys, w_mat, w_vec), reverse=True)
    # Y_rr = diag(s) - r_col q_u, s = sum_k w_ik = sum_k G_ik - r_row sum_k xi_ik;
    # Y_rc = -w + r_col q_e;  Y_cc = sum_i W_i - r_col acc_e.
    d_rr = -r_row * jnp.diag(jnp.sum(xi, axis=-1)) - r_col * q[:, :m]
    d_rr = 0.5 * (d_rr + d_rr.T)
    d_rc = r_row * xi + r_col * q[:, m:]
    d_cr = r_row * xi.T + r_col * acc[:, :m]
    d_rc = 0.5 * (d_rc + d_cr.T)
    d_cc = -r_row * jnp.sum(x_mat, axis=0) - r_col * acc[:, m:]
    d_cc = 0.5 * (d_cc + d_cc.T)
    return d_rr, d_rc, d_cc


def port_admittance(
    g: Float[ArrayLike, "m n"],
    r_row: float | Float[ArrayLike, ""],
    r_col: float | Float[ArrayLike, ""] | None = None,
) -> tuple[Float[Array, "m m"], Float[Array, "m n"], Float[Array, "n n"]]:
    r"""Exact multiport admittance of a crossbar with wire resistance, seen from its terminals.

    Currents *into* the network at the row terminals ($I_r$) and column terminals ($I_c$) are

    $$I_r = Y_{rr} u + Y_{rc} e,\qquad I_c = Y_{rc}^T u + Y_{cc} e$$

    for row-terminal voltages $u$ and column-terminal voltages $e$. With no wire resistance,
    $Y_{rr} = \mathrm{diag}(\sum_j G_{ij})$, $Y_{rc} = -G$, $Y_{cc} =
    \mathrm{diag}(\sum_i G_{ij})$ exactly. Differentiable in `g`, `r_row` and `r_col`;
    `jit`/`vmap`-able. Cost $O(m n^3 + m n^2(m+n))$ for $m \ge n$ (about 0.3 s at
    $m = n = 128$ in float64 on two CPU cores).

    **Arguments:**

    - `g`: device conductances, shape `(m, n)` (S, $\ge 0$; zero = no device).
    - `r_row`: resistance of each row-line segment (Ω, $\ge 0$), scalar.
    - `r_col`: resistance of each column-line segment (Ω, $\ge 0$), scalar; default `r_row`.

    **Returns:** `(Y_rr, Y_rc, Y_cc)` of shapes `(m, m)`, `(m, n)`, `(n, n)` (S); `Y_rr` and
    `Y_cc` are symmetric.

    **Raises:** `ValueError` naming the argument for a wrong shape, a negative or non-finite
    conductance or resistance.
    """
    _check_conductances("g", g)
    r_row, r_col = _resistances(r_row, r_col)
    dtype = jnp.result_type(g, r_row, r_col, float)
    g = jnp.asarray(g, dtype)
    r_row = jnp.asarray(r_row, dtype)
    r_col = jnp.asarray(r_col, dtype)
    d_rr, d_rc, d_cc = _corrections(g, r_row, r_col)
    return jnp.diag(jnp.sum(g, axis=1)) + d_rr, -g + d_rc, jnp.diag(jnp.sum(g, axis=0)) + d_cc


@jax.jit
def _corrections(g, r_row, r_col):
    m, n = g.shape
    if n > m:  # cheaper transposed: rows <-> columns (the geometry maps onto itself)
        d_cc, d_rc_t, d_rr = _reduce(g.T, r_col, r_row)
        return d_rr, d_rc_t.T, d_cc
    return _reduce(g, r_row, r_col)


# ---------------------------------------------------------------------------------------
# row-node operators for the circuits
# ---------------------------------------------------------------------------------------


def _two_arrays(g_pos, g_neg, r_row, r_col):
    """(g_pos, g_neg, dY_rr of both arrays, dY_rc of g_pos, dY_rc of g_neg or None)."""
    _check_conductances("g_pos", g_pos)
    if g_neg is not None:
        _check_conductances("g_neg", g_neg, np.shape(g_pos))
    r_row, r_col = _resistances(r_row, r_col)
    dtype = jnp.result_type(g_pos, r_row, r_col, float)
    r_row = jnp.asarray(r_row, dtype)
    r_col = jnp.asarray(r_col, dtype)
    g_pos = jnp.asarray(g_pos, dtype)
    if g_neg is None:
        dp_rr, dp_rc, _ = _corrections(g_pos, r_row, r_col)
        return g_pos, None, dp_rr, dp_rc, None
    g_neg = jnp.asarray(g_neg, dtype)
    # Both arrays in one batched reduction (one loop, not two concurrent ones).
    d_rr, d_rc, _ = jax.vmap(_corrections, in_axes=(0, None, None))(
        jnp.stack([g_pos, g_neg]), r_row, r_col
    )
    return g_pos, g_neg, d_rr[0] + d_rr[1], d_rc[0], d_rc[1]


def inv_row_operator(
    g_pos: Float[ArrayLike, "n n"],
    g_neg: Float[ArrayLike, "n n"] | None,
    i_in: Float[ArrayLike, " n"],
    r_row: float | Float[ArrayLike, ""],
    r_col: float | Float[ArrayLike, ""] | None = None,
    *,
    g_in: float | Float[ArrayLike, "*n"] | None = None,
) -> tuple[Float[Array, "n k"], Float[Array, " n"]]:
    r"""Row-node voltages of an INV crossbar with wire resistance: $u = p\,[v; z] + c$.

    The arrays $G^+$ (columns driven by the op-amp outputs $v$) and $G^-$ (columns driven by
    the inverter outputs $z$) are separate crossbars whose row lines meet at the op-amp
    inputs. With the input current $I_\mathrm{in}$ injected into row terminal $i$ (as in
    [`amcdyn.INV`][]), KCL at the terminals is
    $(Y^+_{rr} + Y^-_{rr}) u + Y^+_{rc} v + Y^-_{rc} z = I_\mathrm{in}$, so

    $$p = -(Y^+_{rr} + Y^-_{rr})^{-1} [Y^+_{rc} \,|\, Y^-_{rc}],\qquad
      c = (Y^+_{rr} + Y^-_{rr})^{-1} I_\mathrm{in}.$$

    With zero wire resistance $p = [G^+|G^-]/S$ and $c = I/S$ exactly (the `p` and `c` of the
    ideal INV dynamics). For ideal inverters ($z = -v$) use `p[:, :n] - p[:, n:]`.

    **Arguments:**

    - `g_pos`, `g_neg`: conductances, shape `(n, n)` (S); `g_neg=None` for no inverters
      (then `p` has shape `(n, n)` and multiplies $v$ alone).
    - `i_in`: current injected into each row terminal, shape `(n,)` (A).
    - `r_row`, `r_col`: wire segment resistances (Ω), as in [`port_admittance`][].
    - `g_in`: for a voltage input, the conductance (S) from each row terminal to its input
      source; then `i_in` is the short-circuit current $G_\mathrm{in} b$ and $G_\mathrm{in}$
      is added to the diagonal of $Y_{rr}$.

    **Returns:** `(p, c)`: `p` of shape `(n, 2n)` (or `(n, n)`), `c` of shape `(n,)` (V).
    """
    check_ndim("g_pos", g_pos, 2)
    if np.shape(g_pos)[0] != np.shape(g_pos)[1]:
        raise ValueError(f"`g_pos` must be square for INV, got shape {np.shape(g_pos)}")
    n = np.shape(g_pos)[0]
    check_ndim("i_in", i_in, 1)
    if np.shape(i_in) != (n,):
        raise ValueError(f"`i_in` must have shape ({n},), got {np.shape(i_in)}")
    check_finite("i_in", i_in)
    if g_in is not None:
        if np.ndim(g_in) not in (0, 1) or (np.ndim(g_in) == 1 and np.shape(g_in) != (n,)):
            raise ValueError(f"`g_in` must be a scalar or have shape ({n},), got {np.shape(g_in)}")
        check_nonnegative("g_in", g_in)
    g_pos, g_neg, d_rr, dp_rc, dn_rc = _two_arrays(g_pos, g_neg, r_row, r_col)
    _check_rows_connected(g_pos, g_neg, g_in)
    return _inv_row_core(g_pos, g_neg, d_rr, dp_rc, dn_rc, i_in, g_in)


# The numerical cores of the row operators are jitted: called eagerly (a circuit built
# outside `jit`), op by op they compiled ~50 small programs (~5 s at n = 16).
@jax.jit
def _inv_row_core(g_pos, g_neg, d_rr, dp_rc, dn_rc, i_in, g_in):
    n = g_pos.shape[0]
    # KCL: (diag S + dY_rr) u = I_in + (G - dY_rc) e. Dividing by S first makes r = 0 give
    # the ideal P = G / S and c = I / S bit for bit (S summed as `amcdyn.INV` does).
    s = jnp.sum(g_pos, axis=1)
    g_cat, d_rc = g_pos, dp_rc
    if g_neg is not None:
        s = s + jnp.sum(g_neg, axis=1)
        g_cat = jnp.concatenate([g_pos, g_neg], axis=1)
        d_rc = jnp.concatenate([dp_rc, dn_rc], axis=1)
    if g_in is not None:
        s = s + jnp.asarray(g_in, s.dtype)
    # (Each division on the same shape as in `amcdyn.INV`: XLA may round a division
    # differently inside a wider array.)
    p_ideal = (g_cat - d_rc) / s[:, None]
    c_ideal = jnp.asarray(i_in, s.dtype) / s
    rhs = jnp.concatenate([p_ideal, c_ideal[:, None]], axis=1)
    mat = jnp.eye(n, dtype=s.dtype) + d_rr / s[:, None]
    sol = solve(mat, rhs)
    return sol[:, :-1], sol[:, -1]


def _check_rows_connected(g_pos, g_neg, g_extra):
    if not all(is_concrete(x) for x in (g_pos, g_neg, g_extra)):
        return
    s = np.sum(np.asarray(g_pos, float), axis=1)
    if g_neg is not None:
        s = s + np.sum(np.asarray(g_neg, float), axis=1)
    if g_extra is not None:
        s = s + np.asarray(g_extra, float)
    empty = np.flatnonzero(s <= 0)
    if empty.size:
        raise ValueError(
            f"rows {empty.tolist()} of `g_pos` + `g_neg` have no conductance: the row node floats"
        )


def mvm_row_operator(
    g_pos: Float[ArrayLike, "m n"],
    g_neg: Float[ArrayLike, "m n"] | None,
    x: Float[ArrayLike, " n"],
    g_f: float | Float[ArrayLike, "*m"],
    r_row: float | Float[ArrayLike, ""],
    r_col: float | Float[ArrayLike, ""] | None = None,
) -> tuple[Float[Array, "m m"], Float[Array, " m"]]:
    r"""TIA-input voltages of a column-split MVM crossbar with wire resistance: $u = a V + d$.

    Ideal DAC drivers put $e = [x; -x]$ (V) on the columns of $G^+$ and $G^-$, whose row lines
    meet at the TIA inputs; TIA $i$ has feedback conductance $g_{f,i}$ from its input to its
    output $V_i$. KCL at the row terminals,
    $Y_{rr} u + Y^+_{rc} x - Y^-_{rc} x + g_f (u - V) = 0$, gives

    $$a = (Y_{rr} + \mathrm{diag}\,g_f)^{-1} \mathrm{diag}\,g_f,\qquad
      d = -(Y_{rr} + \mathrm{diag}\,g_f)^{-1} (Y^+_{rc} - Y^-_{rc})\, x.$$

    With zero wire resistance $a = \mathrm{diag}(g_f/(S+g_f))$ and
    $d = (G^+ - G^-) x / (S + g_f)$, as in [`amcdyn.MVM`][].

    **Arguments:**

    - `g_pos`, `g_neg`: conductances, shape `(m, n)` (S); `g_neg` may be None.
    - `x`: column input voltages, shape `(n,)` (V).
    - `g_f`: feedback conductance (S, > 0), scalar or shape `(m,)`.
    - `r_row`, `r_col`: wire segment resistances (Ω), as in [`port_admittance`][].

    **Returns:** `(a, d)` of shapes `(m, m)` and `(m,)`.
    """
    g_pos, g_neg, d_rr, dp_rc, dn_rc = _two_arrays(g_pos, g_neg, r_row, r_col)
    m, n = g_pos.shape
    check_ndim("x", x, 1)
    if np.shape(x) != (n,):
        raise ValueError(f"`x` must have shape ({n},), got {np.shape(x)}")
    check_finite("x", x)
    if np.ndim(g_f) not in (0, 1) or (np.ndim(g_f) == 1 and np.shape(g_f) != (m,)):
        raise ValueError(f"`g_f` must be a scalar or have shape ({m},), got {np.shape(g_f)}")
    if is_concrete(g_f):
        gf_np = np.asarray(g_f, dtype=float)
        if not np.all(np.isfinite(gf_np)) or np.any(gf_np <= 0):
            raise ValueError(f"`g_f` must be finite and > 0, got {g_f!r}")
    return _mvm_row_core(g_pos, g_neg, d_rr, dp_rc, dn_rc, x, g_f)


@jax.jit
def _mvm_row_core(g_pos, g_neg, d_rr, dp_rc, dn_rc, x, g_f):
    m = g_pos.shape[0]
    dtype = g_pos.dtype
    gf = jnp.asarray(g_f, dtype)
    x = jnp.asarray(x, dtype)
    # (diag(S + g_f) + dY_rr) u = g_f V + ((G+ - G-) - (dY+_rc - dY-_rc)) x, divided by
    # S + g_f first so that r = 0 gives `amcdyn.MVM`'s expressions bit for bit.
    if g_neg is None:
        denom = jnp.sum(g_pos, axis=1) + gf
        drive = g_pos @ x - dp_rc @ x
    else:
        denom = jnp.sum(g_pos + g_neg, axis=1) + gf
        drive = (g_pos - g_neg) @ x - (dp_rc - dn_rc) @ x
    mat = jnp.eye(m, dtype=dtype) + d_rr / denom[:, None]
    gf_col = jnp.broadcast_to(gf, (m,)) / denom
    rhs = jnp.concatenate([jnp.diag(gf_col), (drive / denom)[:, None]], axis=1)
    sol = solve(mat, rhs)
    return sol[:, :-1], sol[:, -1]


# ---------------------------------------------------------------------------------------
# ngspice netlist with every wire resistor
# ---------------------------------------------------------------------------------------


_crossbar_lines = _spice._crossbar_lines  # the writer of one wired crossbar (moved to _spice)


def inv_wire_netlist(
    g_pos,
    g_neg,
    i_in,
    *,
    r_row: float,
    r_col: float | None = None,
    a0,
    f_gbw,
    inverter_a0=None,
    inverter_f_gbw=None,
    g_inv=1e-4,
    t_stop,
    t_step,
    tight=True,
    title="amcdyn INV with wires",
) -> str:
    """ngspice netlist of the n x n INV circuit with every wire resistor (pure NumPy).

    Same circuit and node names as :func:`amcdyn._spice.inv_netlist` (op-amp i: + grounded,
    - input ``n{i}``, output ``v{i}``; inverter outputs ``u{j}``; input currents into
    ``n{i}``), but each crossbar is a full resistive grid: the G+ array has row lines from
    ``n{i}`` and column lines from ``v{j}``, the G- array row lines from ``n{i}`` and column
    lines from ``u{j}`` (see :func:`port_admittance` for the geometry). Inverters are
    single-pole op-amps with 1/g_inv from ``v{j}`` and from ``u{j}`` to their - input, or
    ideal (VCVS of gain -1) when ``inverter_f_gbw`` is None. ``g_neg`` may be None.
    """
    gp = _spice._matrix("g_pos", g_pos)
    n = gp.shape[0]
    if gp.shape != (n, n) or n == 0:
        raise ValueError(f"g_pos must be square and non-empty, got shape {gp.shape}")
    gn = np.zeros_like(gp) if g_neg is None else _spice._matrix("g_neg", g_neg, (n, n))
    r_row, r_col = _resistances(r_row, r_col)
    _check_rows_connected(gp, gn, None)
    return _spice.inv_netlist(
        gp,
        gn,
        i_in,
        a0=a0,
        f_gbw=f_gbw,
        inverter_a0=inverter_a0,
        inverter_f_gbw=inverter_f_gbw,
        g_inv=g_inv,
        r_row=float(r_row),
        r_col=float(r_col),
        t_stop=t_stop,
        t_step=t_step,
        tight=tight,
        title=title,
    )
