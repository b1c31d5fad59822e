"""The reconfigurable macro (amcdyn/_macro.py) and GINV's independently programmed array 2.

Independent references: the programming cost is recomputed here in NumPy from the pulse counts;
each function's answer is recomputed from the *achieved* conductances with NumPy linear algebra
(MVM: G x; INV: G^-1 b; GINV with arrays A1, A2: w = (A2^T A1)^-1 A2^T b, derived from the
loop's KCL in the ideal limit); the two-array GINV netlist is checked against ngspice.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import exact_transient, linear_ode, max_err_fs

import amcdyn
from amcdyn import _ngspice
from amcdyn._macro import CONNECTIONS, Macro


_rng = np.random.default_rng(3)
A = np.eye(4) * 2.0 + 0.3 * _rng.standard_normal((4, 4))  # signed, well conditioned
B = _rng.standard_normal(4)
X = _rng.standard_normal((6, 3))  # tall, for GINV
Y = _rng.standard_normal(6)


def _macro(**kw):
    opts = dict(rows=6, cols=6, tiles=2, a0=1e7, levels=None, tolerance=1e-8, max_pulses=200)
    opts.update(kw)
    return Macro.create(**opts)


def _achieved(result, tile=0, shape=None):
    """A as programmed: the tile's conductances where the target has a device (a cell whose
    target is 0 is deselected by its access transistor and does not conduct)."""
    g0 = float(np.asarray(result.circuit.g0))
    r, c = shape
    gp = np.asarray(result.macro.g_pos[tile, :r, :c])
    gn = np.asarray(result.macro.g_neg[tile, :r, :c])
    a = np.asarray(result.circuit.a)
    a = a if a.shape == (r, c) else a.T
    return (np.where(a > 0, gp, 0) - np.where(a < 0, gn, 0)) / g0


def test_connection_table():
    assert set(CONNECTIONS) == {"mvm", "inv", "egv", "ginv"}
    assert CONNECTIONS["ginv"]["tiles"] == 2


def test_inv_on_macro_solves_programmed_matrix():
    res = _macro().run("inv", A, B, key=jr.PRNGKey(0), t_max=2e-6)
    a_hat = _achieved(res, shape=A.shape)
    # The circuit solves the system it was programmed with (finite gain A0 = 1e7: ~1e-6).
    np.testing.assert_allclose(
        np.asarray(res.solution.solution), np.linalg.solve(a_hat, B), rtol=1e-4, atol=1e-5
    )
    # ... which is close to A (verify tolerance 1e-8 S on G0 = 35 uS / max|A|).
    g0 = float(np.asarray(res.circuit.g0))
    assert np.max(np.abs(a_hat - A)) <= 1e-8 / g0 * 1.0001
    assert res.solution.status == "settled"
    assert float(res.program.converged) == 1.0


def test_programming_cost_model():
    m = _macro(levels=16, tolerance=None, max_pulses=30, t_pulse=2e-6, e_pulse=3e-12)
    res = m.run("mvm", A, B, key=jr.PRNGKey(1), t_max=1e-6)
    pulses = np.asarray(res.program.pulses)
    assert pulses.shape == (2, 2, 6, 6)
    assert pulses.max() <= 30 and pulses.sum() > 0
    # rows in sequence, a row's cells (both arrays of the tile) in parallel
    expect_t = pulses.max(axis=(1, 3)).sum() * 2e-6
    np.testing.assert_allclose(float(res.program.time), expect_t, rtol=1e-12)
    np.testing.assert_allclose(float(res.program.energy), pulses.sum() * 3e-12, rtol=1e-12)
    # unused cells (outside the 4x4 block, tile 2) get no pulse
    assert pulses[1].sum() == 0 and pulses[:, :, 4:, :].sum() == 0
    # totals
    np.testing.assert_allclose(
        float(res.time), float(res.program.time) + float(res.solution.settling_time)
    )
    np.testing.assert_allclose(
        float(res.energy), float(res.program.energy) + float(res.solution.energy)
    )
    # MVM of the achieved (16-level) conductances: y = A_hat x (A0 = 1e7, ideal TIAs ~1e-6)
    a_hat = _achieved(res, shape=A.shape)
    np.testing.assert_allclose(
        np.asarray(res.solution.solution), a_hat @ B, rtol=1e-4, atol=1e-5 * np.abs(a_hat @ B).max()
    )
    # levels: achieved conductances sit within the verify tolerance of a level
    grid = np.asarray(m.window.grid())
    g = np.asarray(res.macro.g_pos[0, :4, :4])
    g = g[g > np.asarray(m.window.g_min) * 1.01]
    tol = float(np.asarray(m.write.tolerance))
    assert np.all(np.min(np.abs(g[:, None] - grid[None, :]), axis=1) <= tol * 1.0001)


def test_reprogramming_depends_on_history():
    m = _macro(max_pulses=100, tolerance=1e-7)
    r1 = m.run("inv", A, B, key=jr.PRNGKey(2), t_max=2e-6)
    # Same matrix again: every device already verifies, so no pulse is needed.
    r2 = r1.macro.run("inv", A, B, key=jr.PRNGKey(3), t_max=2e-6)
    assert int(np.asarray(r1.program.pulses).sum()) > 0
    assert int(np.asarray(r2.program.pulses).sum()) == 0
    assert float(r2.program.time) == 0.0
    # A different matrix costs pulses again.
    r3 = r2.macro.run("mvm", -A, B, key=jr.PRNGKey(4), t_max=1e-6)
    assert int(np.asarray(r3.program.pulses).sum()) > 0


def test_ginv_two_tiles_independent_arrays():
    m = _macro(max_pulses=40, tolerance=2e-7, sigma_write=0.3)
    # X's smallest entry maps below g_min: it is clipped up to g_min, with a warning.
    with pytest.warns(UserWarning, match="outside the window"):
        res = m.run("ginv", X, Y, key=jr.PRNGKey(5), t_max=5e-6)
    a1 = _achieved(res, tile=0, shape=X.shape)
    a2 = _achieved(res, tile=1, shape=X.T.shape).T
    assert not np.allclose(a1, a2)  # two separate arrays, two programming errors
    w = np.linalg.solve(a2.T @ a1, a2.T @ Y)  # ideal-limit steady state of the two-array loop
    np.testing.assert_allclose(np.asarray(res.solution.solution), w, rtol=1e-4, atol=1e-5)
    assert res.solution.status == "settled"


def test_bad_input():
    m = _macro()
    with pytest.raises(ValueError, match="function"):
        m.run("fft", A, B, key=jr.PRNGKey(0))
    with pytest.raises(ValueError, match="does not fit"):
        m.run("inv", np.eye(7), np.ones(7), key=jr.PRNGKey(0))
    with pytest.raises(ValueError, match="rhs"):
        m.run("inv", A, None, key=jr.PRNGKey(0))
    with pytest.raises(ValueError, match="tiles"):
        Macro.create(tiles=1).run("ginv", X, Y, key=jr.PRNGKey(0))
    with pytest.raises(ValueError, match="rows"):
        Macro.create(rows=0)
    with pytest.raises(ValueError, match="t_pulse"):
        Macro.create(t_pulse=-1.0)


def test_jit_vmap_grad():
    m = _macro(tolerance=1e-7, max_pulses=60)
    a, b = jnp.asarray(A), jnp.asarray(B)

    @eqx.filter_jit
    def err(macro, key):
        return macro.run("inv", a, b, key=key, t_max=2e-6, throw=False).solution.rel_error

    keys = jr.split(jr.PRNGKey(7), 3)
    batched = jax.vmap(err, in_axes=(None, 0))(m, keys)
    assert batched.shape == (3,)
    eager = m.run("inv", a, b, key=keys[1], t_max=2e-6, throw=False).solution.rel_error
    np.testing.assert_allclose(np.asarray(batched[1]), np.asarray(eager), rtol=1e-9)

    # d settle_integral / d f_GBW of the bank, through write-verify (straight-through) and the
    # expm path, against central differences (same key: the same programmed devices).
    def settle(f):
        mm = eqx.tree_at(lambda q: q.amp, m, amcdyn.OpAmp(m.amp.a0, f))
        r = mm.run("inv", a, b, key=keys[0], t_max=2e-6, throw=False)
        return r.solution.settle_integral

    f0 = jnp.asarray(1e8)
    g = jax.grad(settle)(f0)
    h = 1e5
    fd = (settle(f0 + h) - settle(f0 - h)) / (2 * h)
    np.testing.assert_allclose(float(g), float(fd), rtol=1e-4)


# Two-array GINV against ngspice: the netlist writes array 2 from its own conductances.
SPICE_POINTS = 8000
SPICE_WAVE_TOL = 1e-4  # of full scale, as tests/test_ginv.py


def test_ginv_second_array_matches_ngspice(ngspice):
    circuit = amcdyn.GINV.from_matrix(X, Y)
    rng = np.random.default_rng(11)
    a2 = X * (1 + 0.05 * rng.standard_normal(X.shape))
    g0 = float(circuit.g0)
    circuit = dataclasses.replace(
        circuit, g_pos_2=g0 * np.maximum(a2, 0), g_neg_2=g0 * np.maximum(-a2, 0)
    )
    sp = _ngspice.simulate_spice(circuit, ngspice=ngspice, n_points=SPICE_POINTS)
    jac, c = linear_ode(circuit.dynamics())
    exact, v_ss = exact_transient(jac, c, sp.ts, 3)
    assert max_err_fs(sp.vs, exact, v_ss) < SPICE_WAVE_TOL
    w = np.linalg.solve(a2.T @ X, a2.T @ Y)
    # finite gain A0 = 1e5: steady state within ~1e-4 of the ideal-limit answer
    np.testing.assert_allclose(sp.solution, w, atol=1e-3 * np.max(np.abs(w)))
