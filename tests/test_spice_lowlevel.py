"""amcdyn._spice: ngspice netlists checked against independent closed-form solutions.

Each circuit is a linear ODE y' = J y + c with y(0) = 0, so the exact waveform is
y(t) = y_ss + expm(J t) (y0 - y_ss), y_ss = -J^-1 c, evaluated at ngspice's own time
points (no interpolation). NumPy/SciPy only (no JAX).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from amcdyn import _spice


A0 = 1e5
F_GBW = 1e8
TOL = 1e-4  # max |error| / max |y_ss|

needs_ngspice = pytest.mark.skipif(
    not _spice.ngspice_available(), reason="ngspice not installed"
)


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _rows_to_one(rng, n, signed=False):
    """Zero-diagonal matrix R whose rows of |R| sum to 1 (R >= 0 unless signed)."""
    r = rng.uniform(0.1, 1.0, (n, n))
    np.fill_diagonal(r, 0.0)
    r /= r.sum(axis=1, keepdims=True)
    if signed:
        r *= rng.choice([-1.0, 1.0], (n, n))
    return r


def _exact(jac, c, t):
    """y(t) = y_ss + expm(J t)(0 - y_ss) at each t; returns (Y, y_ss, slowest rate)."""
    y_ss = -np.linalg.solve(jac, c)
    y = np.array([y_ss - scipy.linalg.expm(jac * ti) @ y_ss for ti in t])
    return y, y_ss


def _t_stop(jac):
    """About 10 / slowest decay rate."""
    sigma_min = np.min(-np.linalg.eigvals(jac).real)
    assert sigma_min > 0, "test circuit must be stable"
    return 10.0 / sigma_min


def _rel_err(y_spice, y_exact, y_ss):
    return np.max(np.abs(y_spice - y_exact)) / np.max(np.abs(y_ss))


def _w(a0, f_gbw):
    wt = 2 * np.pi * np.asarray(f_gbw, dtype=float)
    return wt / np.asarray(a0, dtype=float), wt


# ---------------------------------------------------------------------------------------
# (1) INV with nonnegative G and current input
# ---------------------------------------------------------------------------------------


@needs_ngspice
def test_inv_nonneg_matches_expm():
    rng = np.random.default_rng(0)
    n = 4
    g = 1e-4 * (np.eye(n) + 0.8 * _rows_to_one(rng, n))
    i_in = 1e-4 * rng.uniform(-1, 1, n)
    w0, wt = _w(A0, F_GBW)
    s = g.sum(axis=1)
    jac = -w0 * np.eye(n) - wt * g / s[:, None]
    c = -wt * i_in / s
    t_stop = _t_stop(jac)

    net = _spice.inv_netlist(g, np.zeros_like(g), i_in, a0=A0, f_gbw=F_GBW,
                             t_stop=t_stop, t_step=t_stop / 2000)
    assert "Rn" not in net and "Einv" not in net  # no negative part, no inverters
    t, y = _spice.run_netlist(net, _spice.inv_output_nodes(n))
    assert y.shape == (len(t), n)
    assert t[0] == 0.0 and np.all(np.diff(t) > 0)
    assert t[-1] == pytest.approx(t_stop, rel=1e-9)
    assert len(t) >= 2000
    y_ex, y_ss = _exact(jac, c, t)
    err = _rel_err(y, y_ex, y_ss)
    print(f"INV nonneg: max err / FS = {err:.3e}")
    assert err < TOL
    # the finite-A0 steady state is -(G + D/A0)^-1 I
    np.testing.assert_allclose(y_ss, -np.linalg.solve(g + np.diag(s) / A0, i_in), rtol=1e-12)


# ---------------------------------------------------------------------------------------
# (2) signed INV with single-pole op-amp inverters (2n states)
# ---------------------------------------------------------------------------------------


@needs_ngspice
def test_inv_signed_real_inverters_matches_expm():
    rng = np.random.default_rng(1)
    n = 4
    a_mat = np.eye(n) + 0.8 * _rows_to_one(rng, n, signed=True)
    g_pos = 1e-4 * np.clip(a_mat, 0, None)
    g_neg = 1e-4 * np.clip(-a_mat, 0, None)
    i_in = 1e-4 * rng.uniform(-1, 1, n)
    w0, wt = _w(A0, F_GBW)
    w0i, wti = _w(A0, F_GBW)
    s = (g_pos + g_neg).sum(axis=1)
    eye = np.eye(n)
    jac = np.block([
        [-w0 * eye - wt * g_pos / s[:, None], -wt * g_neg / s[:, None]],
        [-wti / 2 * eye, -w0i * eye - wti / 2 * eye],
    ])
    c = np.concatenate([-wt * i_in / s, np.zeros(n)])
    t_stop = _t_stop(jac)

    net = _spice.inv_netlist(g_pos, g_neg, i_in, a0=A0, f_gbw=F_GBW, inverter_a0=A0,
                             inverter_f_gbw=F_GBW, g_inv=1e-4,
                             t_stop=t_stop, t_step=t_stop / 2000)
    nodes = _spice.inv_output_nodes(n, inverters=True)
    assert nodes == [f"v{i}" for i in range(n)] + [f"u{i}" for i in range(n)]
    t, y = _spice.run_netlist(net, nodes)
    assert y.shape == (len(t), 2 * n)
    y_ex, y_ss = _exact(jac, c, t)
    err = _rel_err(y, y_ex, y_ss)
    print(f"INV signed, real inverters: max err / FS = {err:.3e}")
    assert err < TOL
    # u ~ -v at steady state
    np.testing.assert_allclose(y[-1, n:], -y[-1, :n], atol=1e-3 * np.max(np.abs(y_ss)))


# ---------------------------------------------------------------------------------------
# (2b) per-amplifier a0/f_gbw (a0 = inf included), voltage input via g_in, ideal inverters
# ---------------------------------------------------------------------------------------


@needs_ngspice
def test_inv_per_amp_params_voltage_input_ideal_inverters():
    rng = np.random.default_rng(2)
    n = 3
    a_mat = np.eye(n) + 0.8 * _rows_to_one(rng, n, signed=True)
    g_pos = 1e-4 * np.clip(a_mat, 0, None)
    g_neg = 1e-4 * np.clip(-a_mat, 0, None)
    b = rng.uniform(-1, 1, n)  # volts
    g_in = 5e-5
    a0 = np.array([1e5, np.inf, 3e4])
    f_gbw = np.array([1e8, 1.5e8, 0.7e8])
    w0, wt = _w(a0, f_gbw)
    s = (g_pos + g_neg).sum(axis=1) + g_in
    # n = (g_in b + (G+ - G-) v)/S, u = -v exactly; dv/dt = -w0 v - wT n
    jac = -np.diag(w0) - wt[:, None] * (g_pos - g_neg) / s[:, None]
    c = -wt * g_in * b / s
    t_stop = _t_stop(jac)

    net = _spice.inv_netlist(g_pos, g_neg, b, a0=a0, f_gbw=f_gbw, g_in=g_in,
                             t_stop=t_stop, t_step=t_stop / 2000)
    assert "Ra1 " not in net and "Ra0 " in net  # a0 = inf: no Rp for amp 1
    assert "Einv0 u0 0 v0 0 -1" in net
    t, y = _spice.run_netlist(net, _spice.inv_output_nodes(n, inverters=True))
    y_ex, y_ss = _exact(jac, c, t)
    err = _rel_err(y[:, :n], y_ex, y_ss)
    print(f"INV per-amp params, g_in, ideal inverters: max err / FS = {err:.3e}")
    assert err < TOL
    np.testing.assert_allclose(y[:, n:], -y[:, :n], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------
# (3) MVM with column splitting
# ---------------------------------------------------------------------------------------


@needs_ngspice
def test_mvm_matches_expm():
    rng = np.random.default_rng(3)
    m, n = 3, 5
    w_mat = rng.uniform(-1, 1, (m, n))
    g_pos = 1e-4 * np.clip(w_mat, 0, None)
    g_neg = 1e-4 * np.clip(-w_mat, 0, None)
    x = rng.uniform(-1, 1, n)
    v0 = 0.5
    g_f = 1e-4 * np.array([1.0, 0.8, 1.3])
    w0, wt = _w(A0, F_GBW)
    s = (g_pos + g_neg).sum(axis=1) + g_f
    jac = -w0 * np.eye(m) - wt * np.diag(g_f / s)
    c = -wt * ((g_pos - g_neg) @ (v0 * x)) / s
    t_stop = _t_stop(jac)

    net = _spice.mvm_netlist(g_pos, g_neg, x, g_f, a0=A0, f_gbw=F_GBW, v0=v0,
                             t_stop=t_stop, t_step=t_stop / 2000)
    t, y = _spice.run_netlist(net, _spice.mvm_output_nodes(m))
    assert y.shape == (len(t), m)
    y_ex, y_ss = _exact(jac, c, t)
    err = _rel_err(y, y_ex, y_ss)
    print(f"MVM: max err / FS = {err:.3e}")
    assert err < TOL
    # close to the ideal MVM -(G+ - G-) x v0 / g_f (finite A0 error ~ 1/A0)
    ideal = -((g_pos - g_neg) @ (v0 * x)) / g_f
    np.testing.assert_allclose(y[-1], ideal, atol=1e-3 * np.max(np.abs(ideal)))


@needs_ngspice
def test_loose_options():
    g = 1e-4 * np.array([[1.0, 0.5], [0.3, 1.0]])
    net = _spice.inv_netlist(g, None, [1e-5, -2e-5], a0=A0, f_gbw=F_GBW,
                             t_stop=1e-7, t_step=1e-9, tight=False)
    assert ".options" not in net and ".tran 1e-09 1e-07 uic" in net
    t, y = _spice.run_netlist(net, ["v0", "v1"])
    v_ss = -np.linalg.solve(g + np.diag(g.sum(1)) / A0, [1e-5, -2e-5])
    np.testing.assert_allclose(y[-1], v_ss, rtol=1e-3)


# ---------------------------------------------------------------------------------------
# (4) errors
# ---------------------------------------------------------------------------------------


def test_netlist_text_basics():
    g = 1e-4 * np.eye(2)
    net = _spice.inv_netlist(g, None, [1e-5, 0.0], a0=A0, f_gbw=F_GBW, t_stop=1e-6,
                             t_step=1e-9, title="my\ntitle")
    lines = net.splitlines()
    assert lines[0] == "my title"
    assert lines[-1] == ".end"
    assert "Iin0 0 n0 DC 1e-05" in lines
    assert ".tran 1e-09 1e-06 0 1e-09 uic" in lines
    assert ".control" not in net
    assert _spice.mvm_output_nodes(3) == ["y0", "y1", "y2"]
    assert _spice.inv_output_nodes(2) == ["v0", "v1"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(g_pos=np.ones((2, 3))), "g_pos"),
        (dict(g_neg=np.ones((3, 3))), "g_neg"),
        (dict(i_in=np.ones(3)), "i_in"),
        (dict(g_pos=-np.eye(2)), "g_pos"),
        (dict(g_pos=np.array([[np.nan, 0], [0, 1.0]])), "g_pos"),
        (dict(g_neg=np.array([[np.inf, 0], [0, 1.0]])), "g_neg"),
        (dict(a0=np.ones(3)), "a0"),
        (dict(f_gbw=0.0), "f_gbw"),
        (dict(inverter_f_gbw=np.ones(5)), "inverter_f_gbw"),
        (dict(g_in=np.ones(3)), "g_in"),
        (dict(g_pos=np.array([[1e-4, 0.0], [0.0, 0.0]]), g_neg=None), "no conductance"),
        (dict(t_step=2e-6), "t_step"),
    ],
)
def test_inv_bad_args(kwargs, match):
    args = dict(g_pos=1e-4 * np.eye(2), g_neg=1e-5 * np.ones((2, 2)), i_in=np.ones(2) * 1e-5,
                a0=A0, f_gbw=F_GBW, t_stop=1e-6, t_step=1e-9)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        _spice.inv_netlist(args.pop("g_pos"), args.pop("g_neg"), args.pop("i_in"), **args)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(g_pos=np.ones(3)), "g_pos"),
        (dict(g_neg=np.ones((3, 2))), "g_neg"),
        (dict(x=np.ones(2)), "x"),
        (dict(g_f=np.ones(3)), "g_f"),
        (dict(g_f=0.0), "g_f"),
        (dict(a0=-1.0), "a0"),
        (dict(f_gbw=np.ones(2) * np.inf), "f_gbw"),
    ],
)
def test_mvm_bad_args(kwargs, match):
    args = dict(g_pos=1e-4 * np.ones((2, 3)), g_neg=1e-5 * np.ones((2, 3)), x=np.ones(3),
                g_f=1e-4, a0=A0, f_gbw=F_GBW, t_stop=1e-6, t_step=1e-9)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        _spice.mvm_netlist(args.pop("g_pos"), args.pop("g_neg"), args.pop("x"),
                           args.pop("g_f"), **args)


@needs_ngspice
def test_broken_netlist_raises():
    # an instance of an undefined subcircuit: ngspice rejects the netlist
    broken = "broken\nR1 a 0 1k\nX1 a b nosuchsub\n.tran 1n 10n uic\n.end\n"
    with pytest.raises(_spice.NgspiceError):
        _spice.run_netlist(broken, ["a"])
    # an element ngspice parses but cannot simulate (T line without z0): run aborted
    aborted = "aborted\nR1 a 0 1k\nTbad a 0 b 0\n.tran 1n 10n uic\n.end\n"
    with pytest.raises(_spice.NgspiceError, match="aborted"):
        _spice.run_netlist(aborted, ["a"])


@needs_ngspice
def test_unknown_node_raises():
    net = _spice.mvm_netlist(1e-4 * np.ones((1, 1)), None, [1.0], 1e-4, a0=A0,
                             f_gbw=F_GBW, t_stop=1e-8, t_step=1e-10)
    with pytest.raises(_spice.NgspiceError, match="no such vector"):
        _spice.run_netlist(net, ["y0", "nope"])


def test_missing_executable_raises():
    assert not _spice.ngspice_available("definitely-not-ngspice-xyz")
    with pytest.raises(_spice.NgspiceError, match="not found"):
        _spice.run_netlist("t\nR1 a 0 1\n.tran 1 2\n.end\n", ["a"],
                           ngspice="definitely-not-ngspice-xyz")


def test_bad_node_names():
    with pytest.raises(ValueError):
        _spice.run_netlist("t\n.end\n", ["v(0)"])
    with pytest.raises(ValueError):
        _spice.run_netlist("t\n.end\n", [])


@needs_ngspice
def test_timeout_raises():
    g = 1e-4 * np.eye(2)
    net = _spice.inv_netlist(g, None, [1e-5, 0.0], a0=A0, f_gbw=F_GBW, t_stop=1e-6,
                             t_step=1e-10)
    with pytest.raises(_spice.NgspiceError, match="timed out"):
        _spice.run_netlist(net, ["v0"], timeout=1e-4)
