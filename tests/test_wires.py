"""Wire (interconnect) resistance: `amcdyn._wires` against independent references.

- An unreduced nodal (MNA) model of the crossbar built here in NumPy/SciPy, every wire node
  kept: the port admittance from the dense Schur complement (Kron reduction) and, free of its
  cancellation, from the device currents of the full node solution; a sparse LU solve for
  sizes where dense is too big.
- ngspice on the full INV circuit with every wire resistor (`inv_wire_netlist`), against the
  exact solution of the reduced linear ODE built from `inv_row_operator`.
- Zero wire resistance against the ideal crossbar of `amcdyn.INV` / `amcdyn.MVM`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
from helpers import (
    exact_transient,
    max_err_fs,
    random_vector,
    rhs_for_unit_output,
    well_conditioned,
)

import amcdyn
from amcdyn import _spice, _wires


G0 = 1e-4
A0 = 1e5
F_GBW = 1e8
W_T = 2 * math.pi * F_GBW
W_0 = W_T / A0

REDUCTION_TOL = 1e-10  # vs the dense reference, relative to max|Y|: measured <= 1e-14
SPICE_WAVE_TOL = 1e-4  # ngspice vs exact reduced ODE, relative to full scale: measured ~5e-6


# ---------------------------------------------------------------------------------------
# independent reference: the unreduced resistive network
# ---------------------------------------------------------------------------------------


def _network(g, r_row, r_col):
    """Nodal matrix of the full crossbar, every wire node kept (r = 0 merges the nodes).

    Returns (K, B, vr, vc): K x = B p gives the free-node voltages x for port voltages
    p = [u; e]; vr / vc map (i, k) to the row / column node's voltage as a linear function
    of [x; p] (row vectors of the sparse matrices vr, vc of shape (m*n, N + m + n)).
    """
    m, n = g.shape
    nport = m + n
    idx = {}

    def node(key, port):
        # A node merged with a port by a zero-resistance wire is that port.
        if port is not None:
            return ("p", port)
        if key not in idx:
            idx[key] = len(idx)
        return ("x", idx[key])

    elements = []
    row_nodes = {}
    col_nodes = {}
    for i in range(m):
        prev = ("p", i)
        for k in range(n):
            cur = node(("r", i, k), i if r_row == 0 else None)
            row_nodes[i, k] = cur
            if r_row > 0:
                elements.append((prev, cur, 1.0 / r_row))
            prev = cur
    for j in range(n):
        prev = ("p", m + j)
        for i in range(m):
            cur = node(("c", i, j), m + j if r_col == 0 else None)
            col_nodes[i, j] = cur
            if r_col > 0:
                elements.append((prev, cur, 1.0 / r_col))
            prev = cur
    for i in range(m):
        for j in range(n):
            if g[i, j] > 0:
                elements.append((row_nodes[i, j], col_nodes[i, j], g[i, j]))
    nx = len(idx)
    k_mat = scipy.sparse.lil_matrix((nx, nx))
    b_mat = scipy.sparse.lil_matrix((nx, nport))
    k_pp = np.zeros((nport, nport))
    for a, b, gg in elements:
        for s, t in ((a, b), (b, a)):
            if s[0] == "x":
                k_mat[s[1], s[1]] += gg
                if t[0] == "x":
                    k_mat[s[1], t[1]] -= gg
                else:
                    b_mat[s[1], t[1]] += gg
            else:
                k_pp[s[1], s[1]] += gg
                if t[0] == "p":
                    k_pp[s[1], t[1]] -= gg

    def selector(nodes):
        sel = scipy.sparse.lil_matrix((m * n, nx + nport))
        for (i, k), nd in nodes.items():
            sel[i * n + k, nd[1] if nd[0] == "x" else nx + nd[1]] = 1.0
        return sel.tocsr()

    return k_mat.tocsc(), b_mat.tocsc(), k_pp, selector(row_nodes), selector(col_nodes)


def reference_admittance(g, r_row, r_col, *, sparse=False):
    """(Y from device currents, Y from the plain Schur complement or None), full (m+n)^2."""
    g = np.asarray(g, dtype=np.float64)
    m, n = g.shape
    k_mat, b_mat, k_pp, vr, vc = _network(g, r_row, r_col)
    rhs = b_mat.toarray()
    if sparse:
        x = scipy.sparse.linalg.splu(k_mat).solve(rhs)
    else:
        x = np.linalg.solve(k_mat.toarray(), rhs) if k_mat.shape[0] else rhs[:0]
    full = np.vstack([x, np.eye(m + n)])  # all node voltages for each unit port voltage
    dev = g.reshape(-1, 1) * (vr @ full - vc @ full)  # device currents, row -> column
    dev = dev.reshape(m, n, m + n)
    y_dev = np.vstack([dev.sum(axis=1), -dev.sum(axis=0)])
    y_schur = None if sparse else k_pp - rhs.T @ x
    return y_dev, y_schur


def full_y(g, r_row, r_col=None):
    y_rr, y_rc, y_cc = (np.asarray(y) for y in _wires.port_admittance(g, r_row, r_col))
    return np.block([[y_rr, y_rc], [y_rc.T, y_cc]])


def random_g(rng, m, n, holes=0.2):
    g = rng.uniform(0.05, 2.0, (m, n)) * G0
    g[rng.random((m, n)) < holes] = 0.0
    return g


# ---------------------------------------------------------------------------------------
# the reduction
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (4, 4), (5, 3), (3, 6), (16, 16), (9, 16)])
@pytest.mark.parametrize(
    "r_row,r_col", [(1.0, 1.0), (10.0, 0.7), (0.0, 5.0), (5.0, 0.0), (1e4, 1e3)]
)
def test_matches_dense_mna(shape, r_row, r_col):
    rng = np.random.default_rng([*shape, int(r_row * 10), int(r_col * 10)])
    g = random_g(rng, *shape, holes=0.0 if shape == (1, 1) else 0.2)
    y = full_y(g, r_row, r_col)
    y_dev, y_schur = reference_admittance(g, r_row, r_col)
    scale = np.max(np.abs(y_dev))
    assert np.max(np.abs(y - y_dev)) < REDUCTION_TOL * scale
    # The literal Kron reduction K_pp - K_pi K_ii^-1 K_ip (it cancels ~1/(r G) digits).
    assert np.max(np.abs(y - y_schur)) < REDUCTION_TOL * scale
    # A passive reciprocal network: symmetric, no current for equal terminal voltages.
    np.testing.assert_allclose(y, y.T, rtol=0, atol=1e-14 * scale)
    np.testing.assert_allclose(y.sum(axis=1), 0.0, rtol=0, atol=1e-13 * scale)
    if r_row or r_col:
        assert not np.allclose(y, full_y(g, 0.0), rtol=1e-6, atol=0)  # the wires matter


def test_matches_sparse_mna_medium():
    # Beyond dense sizes: 2*48*32 = 3072 wire nodes, against a sparse LU solve.
    rng = np.random.default_rng(3)
    g = random_g(rng, 48, 32)
    for r_row, r_col in [(2.0, 2.0), (10.0, 1.0)]:
        y = full_y(g, r_row, r_col)
        y_ref, _ = reference_admittance(g, r_row, r_col, sparse=True)
        err = np.max(np.abs(y - y_ref)) / np.max(np.abs(y_ref))
        assert err < REDUCTION_TOL
    # and the transposed array takes the other code path (n > m)
    yt = full_y(g.T, r_col, r_row)
    m, n = g.shape
    perm = np.r_[m : m + n, 0:m]
    np.testing.assert_allclose(yt, y[np.ix_(perm, perm)], rtol=0, atol=1e-12 * np.abs(y).max())


def test_zero_resistance_is_ideal_crossbar():
    rng = np.random.default_rng(0)
    g = random_g(rng, 6, 5)
    y_rr, y_rc, y_cc = _wires.port_admittance(g, 0.0)
    np.testing.assert_array_equal(y_rr, np.diag(g.sum(axis=1)))
    np.testing.assert_array_equal(y_rc, -g)
    np.testing.assert_array_equal(y_cc, np.diag(g.sum(axis=0)))


def test_inv_operator_zero_resistance_is_ideal_inv():
    n = 7
    a = well_conditioned(n, seed=1, signed=True)
    b = random_vector(n, seed=2)
    inv = amcdyn.INV.from_matrix(a, b, g0=G0)
    dyn = inv.dynamics()
    p, c = _wires.inv_row_operator(inv.g_pos, inv.g_neg, inv.input_current(), 0.0)
    np.testing.assert_array_equal(p, dyn.p)
    np.testing.assert_array_equal(c, dyn.c)
    # no inverters: a non-negative matrix
    inv = amcdyn.INV.from_matrix(well_conditioned(n, seed=3), b, g0=G0)
    assert inv.inverters == "none"
    p, c = _wires.inv_row_operator(inv.g_pos, None, inv.input_current(), 0.0)
    assert p.shape == (n, n)
    np.testing.assert_array_equal(p, inv.dynamics().p)
    np.testing.assert_array_equal(c, inv.dynamics().c)
    # voltage input through g_in
    inv = amcdyn.INV.from_matrix(a, b, g0=G0, input_mode="voltage", g_in=5e-5)
    p, c = _wires.inv_row_operator(inv.g_pos, inv.g_neg, inv.input_current(), 0.0, g_in=5e-5)
    np.testing.assert_array_equal(p, inv.dynamics().p)
    np.testing.assert_array_equal(c, inv.dynamics().c)


def test_mvm_operator_zero_resistance_is_ideal_mvm():
    rng = np.random.default_rng(4)
    a = rng.uniform(-1, 1, (5, 8))
    x = random_vector(8, seed=5)
    mvm = amcdyn.MVM.from_matrix(a, x, g0=G0, g_f=2e-4)
    a_op, d = _wires.mvm_row_operator(mvm.g_pos, mvm.g_neg, x, mvm.g_f, 0.0)
    denom = np.asarray(mvm.row_conductance() + mvm.g_f)
    np.testing.assert_array_equal(a_op, np.diag(2e-4 / denom))
    np.testing.assert_allclose(d, (np.asarray(mvm.g_pos - mvm.g_neg) @ x) / denom, rtol=1e-14)
    # u = a V + d reproduces the MVM's ODE: dV = -w0 V - wT u
    dyn = mvm.dynamics()
    v = random_vector(5, seed=6)
    u = np.asarray(a_op) @ v + np.asarray(d)
    np.testing.assert_allclose(
        dyn.vector_field(jnp.asarray(v)), -mvm.amp.w0 * v - mvm.amp.w_t * u, rtol=1e-12
    )


def _kcl_residual_inv(g_pos, g_neg, i_in, r_row, r_col, v, z):
    """u from the unreduced network's admittance, by KCL at the row terminals."""
    yp, _ = reference_admittance(g_pos, r_row, r_col)
    yn, _ = reference_admittance(g_neg, r_row, r_col)
    n = g_pos.shape[0]
    y_rr = yp[:n, :n] + yn[:n, :n]
    return np.linalg.solve(y_rr, i_in - yp[:n, n:] @ v - yn[:n, n:] @ z)


def test_row_operators_match_unreduced_network():
    rng = np.random.default_rng(8)
    n = 6
    a = well_conditioned(n, seed=9, signed=True)
    gp, gn = G0 * np.maximum(a, 0), G0 * np.maximum(-a, 0)
    i_in = G0 * random_vector(n, seed=10)
    v, z = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    p, c = _wires.inv_row_operator(gp, gn, i_in, 7.0, 3.0)
    u = np.asarray(p) @ np.r_[v, z] + np.asarray(c)
    u_ref = _kcl_residual_inv(gp, gn, i_in, 7.0, 3.0, v, z)
    np.testing.assert_allclose(u, u_ref, rtol=0, atol=1e-12 * np.abs(u_ref).max())

    # MVM with a TIA: Y_rr u + Y_rc [x; -x] + g_f (u - V) = 0
    am = rng.uniform(-1, 1, (5, 7))
    gp, gn = G0 * np.maximum(am, 0), G0 * np.maximum(-am, 0)
    x, big_v, g_f = rng.uniform(-1, 1, 7), rng.uniform(-1, 1, 5), rng.uniform(1e-4, 3e-4, 5)
    a_op, d = _wires.mvm_row_operator(gp, gn, x, g_f, 4.0, 6.0)
    u = np.asarray(a_op) @ big_v + np.asarray(d)
    yp, _ = reference_admittance(gp, 4.0, 6.0)
    yn, _ = reference_admittance(gn, 4.0, 6.0)
    resid = (yp[:5, :5] + yn[:5, :5]) @ u + yp[:5, 5:] @ x - yn[:5, 5:] @ x + g_f * (u - big_v)
    assert np.max(np.abs(resid)) < 1e-12 * G0


# ---------------------------------------------------------------------------------------
# autodiff, jit, vmap
# ---------------------------------------------------------------------------------------


@jax.jit
def _objective(g, r_row, r_col):
    y_rr, y_rc, y_cc = _wires.port_admittance(g, r_row, r_col)
    w = jnp.cos(jnp.arange(y_rc.size, dtype=y_rc.dtype)).reshape(y_rc.shape)
    return (jnp.sum(y_rr**2) + jnp.sum(w * y_rc) * G0 + jnp.sum(jnp.tril(y_cc))) / G0


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(11)
    g = jnp.asarray(random_g(rng, 6, 5))
    r_row, r_col = 3.0, 8.0
    grad = jax.jit(jax.grad(_objective, argnums=(0, 1, 2)))
    d_g, d_rr, d_rc = grad(g, r_row, r_col)

    def fd(f, x, h):
        return (f(x + h) - f(x - h)) / (2 * h)

    np.testing.assert_allclose(d_rr, fd(lambda r: _objective(g, r, r_col), r_row, 1e-3), rtol=1e-6)
    np.testing.assert_allclose(d_rc, fd(lambda r: _objective(g, r_row, r), r_col, 1e-3), rtol=1e-6)
    direction = jnp.asarray(rng.normal(size=g.shape)) * (g > 0)
    dd = fd(lambda t: _objective(g + t * direction, r_row, r_col), 0.0, 1e-7)
    np.testing.assert_allclose(jnp.sum(d_g * direction), dd, rtol=1e-6)
    # At r = 0 (the ideal crossbar), against a one-sided second-order difference.
    h = 1e-3
    f0 = [_objective(g, k * h, r_col) for k in range(3)]
    one_sided = (-3 * f0[0] + 4 * f0[1] - f0[2]) / (2 * h)
    d0 = grad(g, 0.0, r_col)[1]
    np.testing.assert_allclose(d0, one_sided, rtol=1e-5)


def test_gradient_through_inv_operator():
    # d(steady-state error)/d r_w of an INV, the quantity a wire-aware mapping would train on.
    n = 5
    a = well_conditioned(n, seed=12, signed=True)
    b = random_vector(n, seed=13)
    gp, gn = G0 * np.maximum(a, 0), G0 * np.maximum(-a, 0)

    @jax.jit
    def err(r):
        p, c = _wires.inv_row_operator(gp, gn, G0 * b, r)
        m = p[:, :n] - p[:, n:]  # ideal inverters: z = -v; steady state u = 0
        v = jnp.linalg.solve(m, -c)
        return jnp.sum((v + jnp.linalg.solve(a, b)) ** 2)

    grad = jax.jit(jax.grad(err))(4.0)
    fd = (err(4.0 + 1e-3) - err(4.0 - 1e-3)) / 2e-3
    np.testing.assert_allclose(grad, fd, rtol=1e-6)
    assert grad > 0


def test_jit_and_vmap():
    rng = np.random.default_rng(14)
    gs = jnp.asarray(np.stack([random_g(rng, 5, 4) for _ in range(3)]))
    rs = jnp.asarray([0.0, 2.0, 9.0])
    batched = jax.jit(jax.vmap(_wires.port_admittance, in_axes=(0, 0, None)))(gs, rs, 1.5)
    for k in range(3):
        single = _wires.port_admittance(gs[k], float(rs[k]), 1.5)
        for got, want in zip(batched, single):
            np.testing.assert_allclose(got[k], want, rtol=1e-13, atol=1e-20)
    # vmap of the INV operator over the wire resistance
    n = 4
    a = well_conditioned(n, seed=15, signed=True)
    gp, gn = G0 * np.maximum(a, 0), G0 * np.maximum(-a, 0)
    i_in = G0 * random_vector(n, seed=16)
    ps, cs = jax.jit(jax.vmap(lambda r: _wires.inv_row_operator(gp, gn, i_in, r)))(rs)
    for k in range(3):
        p, c = _wires.inv_row_operator(gp, gn, i_in, float(rs[k]))
        np.testing.assert_allclose(ps[k], p, rtol=1e-13)
        np.testing.assert_allclose(cs[k], c, rtol=1e-13)


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------


def test_bad_input_raises():
    g = np.full((3, 3), G0)
    i_in = np.zeros(3)
    with pytest.raises(ValueError, match="r_row"):
        _wires.port_admittance(g, -1.0)
    with pytest.raises(ValueError, match="r_col"):
        _wires.port_admittance(g, 1.0, -0.5)
    with pytest.raises(ValueError, match="r_row"):
        _wires.port_admittance(g, float("nan"))
    with pytest.raises(ValueError, match="r_col"):
        _wires.port_admittance(g, 1.0, float("inf"))
    with pytest.raises(ValueError, match="r_row"):
        _wires.port_admittance(g, np.ones(3))
    with pytest.raises(ValueError, match="`g`"):
        _wires.port_admittance(-g, 1.0)
    with pytest.raises(ValueError, match="`g`"):
        _wires.port_admittance(g[0], 1.0)
    with pytest.raises(ValueError, match="r_row"):
        _wires.inv_row_operator(g, g, i_in, -2.0)
    with pytest.raises(ValueError, match="g_neg"):
        _wires.inv_row_operator(g, g[:2], i_in, 1.0)
    with pytest.raises(ValueError, match="g_pos"):
        _wires.inv_row_operator(g[:2], None, i_in[:2], 1.0)
    with pytest.raises(ValueError, match="i_in"):
        _wires.inv_row_operator(g, g, i_in[:2], 1.0)
    with pytest.raises(ValueError, match="float"):
        _wires.inv_row_operator(g * np.array([[1], [0], [1]]), None, i_in, 1.0)
    with pytest.raises(ValueError, match="r_col"):
        _wires.mvm_row_operator(g, g, np.zeros(3), G0, 1.0, -1.0)
    with pytest.raises(ValueError, match="g_f"):
        _wires.mvm_row_operator(g, g, np.zeros(3), 0.0, 1.0)
    with pytest.raises(ValueError, match="`x`"):
        _wires.mvm_row_operator(g, g, np.zeros(2), G0, 1.0)
    with pytest.raises(ValueError, match="r_row"):
        _wires.inv_wire_netlist(
            g, g, i_in, r_row=-1.0, a0=A0, f_gbw=F_GBW, t_stop=1e-6, t_step=1e-9
        )


# ---------------------------------------------------------------------------------------
# ngspice: the full INV with every wire resistor against the reduced ODE
# ---------------------------------------------------------------------------------------


def _inv_ode(p, c, n):
    """J, c of dv = -w0 v - wT (p [v; z] + c), dz = -w0 z - wT (v + z)/2."""
    jac = np.zeros((2 * n, 2 * n))
    jac[:n] = -W_T * np.asarray(p)
    jac[:n, :n] -= W_0 * np.eye(n)
    jac[n:, :n] = -(W_T / 2) * np.eye(n)
    jac[n:, n:] = -(W_0 + W_T / 2) * np.eye(n)
    return jac, np.r_[-W_T * np.asarray(c), np.zeros(n)]


# The row operator as one compiled program per shape, shared by the cases below. (Called
# eagerly, its plain-JAX solve dispatches op by op: at N = 16, whose elimination is unrolled,
# that is ~240 separately compiled primitives, measured 18 s of CPU against 4 s under jit.)
_inv_row_operator = jax.jit(_wires.inv_row_operator)


@pytest.mark.parametrize(
    "n,r_row,r_col",
    [
        (8, 0.0, 0.0),
        (8, 1.0, 1.0),
        (8, 5.0, 5.0),
        (8, 10.0, 10.0),
        (8, 2.0, 8.0),
        (8, 5.0, 0.0),
        (16, 1.0, 1.0),
        (16, 5.0, 5.0),
        (16, 10.0, 10.0),
    ],
)
def test_inv_with_wires_matches_ngspice(n, r_row, r_col, ngspice):
    a = well_conditioned(n, seed=n, signed=True)
    b = rhs_for_unit_output(a, seed=100 + n)
    gp, gn = G0 * np.maximum(a, 0), G0 * np.maximum(-a, 0)
    i_in = G0 * b
    p, c = _inv_row_operator(gp, gn, i_in, r_row, r_col)
    jac, cvec = _inv_ode(p, c, n)
    decay = -np.max(np.linalg.eigvals(jac).real)
    assert decay > 0
    t_stop = 1.5 * math.log(1e4) / decay
    netlist = _wires.inv_wire_netlist(
        gp,
        gn,
        i_in,
        r_row=r_row,
        r_col=r_col,
        a0=A0,
        f_gbw=F_GBW,
        inverter_f_gbw=F_GBW,
        g_inv=G0,
        t_stop=t_stop,
        t_step=t_stop / 2000,
    )
    n_wires = sum(line.startswith(("RPw", "RNw")) for line in netlist.splitlines())
    # 2 arrays x n lines x n segments, for the rows and for the columns (r = 0: shorted)
    assert n_wires == 2 * n * n * ((r_row > 0) + (r_col > 0))
    nodes = _spice.inv_output_nodes(n, inverters=True)
    ts, ys = _spice.run_netlist(netlist, nodes, ngspice=ngspice)
    exact, y_ss = exact_transient(jac, cvec, ts)
    err = max_err_fs(ys, exact, y_ss)
    # the ideal crossbar's ODE (no wires), against the same waveforms
    s = gp.sum(axis=1) + gn.sum(axis=1)
    exact0, _ = exact_transient(*_inv_ode(np.hstack([gp, gn]) / s[:, None], i_in / s, n), ts)
    err_ideal = max_err_fs(ys, exact0, y_ss)
    print(
        f"INV N={n} r_row={r_row} r_col={r_col}: max err/FS vs reduced ODE {err:.2e} "
        f"(ideal-crossbar ODE {err_ideal:.2e}); {len(ts)} ngspice points"
    )
    assert err < SPICE_WAVE_TOL
    if r_row > 0 or r_col > 0:
        assert err_ideal > 5 * SPICE_WAVE_TOL  # the wires are visible in the waveforms
