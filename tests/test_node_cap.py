"""Summing-node parasitic capacitance in INV (`c_node`): the row node becomes a state.

Independent references: the linear system written again here in NumPy from KCL
(C du/dt = I + G+ v + G- z - S u, op-amps driven by v_os - u, real inverters), its exact
transient by eigendecomposition, and ngspice on the netlist with the capacitors present.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import exact_transient, max_err_fs

import amcdyn
from amcdyn import _ngspice


_rng = np.random.default_rng(0)
N = 4
A = np.eye(N) * 1.5 + 0.3 * _rng.standard_normal((N, N))  # signed: real inverters
B = _rng.standard_normal(N)
G0, F_GBW, A0 = 1e-4, 1e8, 1e5
V_OS = np.array([1e-3, -2e-3, 0.5e-3, 0.0])
C = 0.5e-12


def _numpy_system(a, b, c_node, v_os):
    """J, c of y = [v, z, u] from KCL, independently of amcdyn's dynamics()."""
    n = len(b)
    gp, gn = G0 * np.maximum(a, 0), G0 * np.maximum(-a, 0)
    s = gp.sum(1) + gn.sum(1)
    wt = 2 * np.pi * F_GBW
    w0 = wt / A0
    i_in = G0 * b
    jac = np.zeros((3 * n, 3 * n))
    const = np.zeros(3 * n)
    v, z, u = slice(0, n), slice(n, 2 * n), slice(2 * n, 3 * n)
    # main op-amps: dv = -w0 v + wT (v_os - u)
    jac[v, v] = -w0 * np.eye(n)
    jac[v, u] = -wt * np.eye(n)
    const[v] = wt * v_os
    # inverters (- at (v + z)/2 through two equal resistors; their offset defaults to the main
    # amplifiers'): dz = -w0 z + wT (v_os - (v + z)/2)
    jac[z, z] = -(w0 + wt / 2) * np.eye(n)
    jac[z, v] = -wt / 2 * np.eye(n)
    const[z] = wt * v_os
    # node: C du = I + G+ v + G- z - S u
    jac[u, v] = gp / c_node
    jac[u, z] = gn / c_node
    jac[u, u] = -np.diag(s) / c_node
    const[u] = i_in / c_node
    return jac, const


def _circuit(c_node=C, **kw):
    return amcdyn.INV.from_matrix(A, B, g0=G0, a0=A0, f_gbw=F_GBW, v_os=V_OS, c_node=c_node, **kw)


def test_dynamics_match_kcl():
    circuit = _circuit()
    dyn = circuit.dynamics()
    jac, const = _numpy_system(A, B, C, V_OS)
    # amcdyn state order: [v | z | u]
    np.testing.assert_allclose(np.asarray(dyn.jacobian()), jac, rtol=1e-12, atol=1e-3)
    np.testing.assert_allclose(
        np.asarray(dyn.vector_field(jnp.zeros(3 * N))), const, rtol=1e-12, atol=1e-3
    )
    # the equilibrium: -J^-1 c, and the outputs are those of the circuit without capacitance
    y_ss = np.linalg.solve(jac, -const)
    np.testing.assert_allclose(np.asarray(dyn.steady_state()), y_ss, rtol=1e-9, atol=1e-12)
    no_cap = _circuit(c_node=None).dynamics().steady_state()[:N]
    np.testing.assert_allclose(y_ss[:N], np.asarray(no_cap), rtol=1e-9)


def test_extra_pole_slows_then_destabilizes():
    """S/C well above w_T: a negligible change; comparable: slower (ringing); larger C: the
    loop goes unstable, reported as such by the eigenvalues and the transient."""
    t_none = amcdyn.simulate_expm(_circuit(c_node=None)).settling_time
    t_small = amcdyn.simulate_expm(_circuit(c_node=1e-15)).settling_time
    t_mid = amcdyn.simulate_expm(_circuit(c_node=1e-12)).settling_time
    np.testing.assert_allclose(float(t_small), float(t_none), rtol=2e-2)
    assert float(t_mid) > 2 * float(t_none)
    big = amcdyn.simulate_expm(_circuit(c_node=5e-12), throw=False)
    assert big.status == "unstable" and not bool(big.stable)
    jac, _ = _numpy_system(A, B, 5e-12, V_OS)
    np.testing.assert_allclose(
        float(big.max_real_eig), np.max(np.linalg.eigvals(jac).real), rtol=1e-6
    )


def test_expm_and_ode_match_exact_transient():
    circuit = _circuit()
    sol = amcdyn.simulate_expm(circuit, save=True)
    jac, const = _numpy_system(A, B, C, V_OS)
    exact, v_ss = exact_transient(jac, const, np.asarray(sol.ts), N)
    assert max_err_fs(np.asarray(sol.vs), exact, v_ss) < 1e-9  # float64 propagator
    ode = amcdyn.simulate(circuit, n_save=0)
    np.testing.assert_allclose(float(ode.settling_time), float(sol.settling_time), rtol=5e-3)


def test_matches_ngspice(ngspice):
    circuit = _circuit()
    sp = _ngspice.simulate_spice(circuit, ngspice=ngspice, n_points=4000)
    assert "Cn0 n0 0" in sp.netlist
    jac, const = _numpy_system(A, B, C, V_OS)
    exact, v_ss = exact_transient(jac, const, sp.ts, N)
    assert max_err_fs(sp.vs, exact, v_ss) < 1e-4  # of full scale, as tests/test_ngspice.py
    sol = amcdyn.simulate_expm(circuit)
    assert abs(sp.settling_time / float(sol.settling_time) - 1) < 5e-3


def test_grad_jit_vmap():
    def settle(c):
        return amcdyn.simulate_expm(_circuit(c_node=c), t_max=4e-7).settling_time

    c0 = jnp.asarray(C)
    g = jax.grad(settle)(c0)
    h = 1e-15
    fd = (settle(c0 + h) - settle(c0 - h)) / (2 * h)
    np.testing.assert_allclose(float(g), float(fd), rtol=1e-3)
    cs = jnp.asarray([0.2e-12, 0.5e-12, 0.8e-12])
    batched = jax.jit(jax.vmap(settle))(cs)
    np.testing.assert_allclose(np.asarray(batched)[1], float(settle(c0)), rtol=1e-9)
    assert np.all(np.diff(np.asarray(batched)) > 0)  # more capacitance, slower


def test_bad_input():
    with pytest.raises(ValueError, match="c_node"):
        _circuit(c_node=-1e-12)
    with pytest.raises(ValueError, match="c_node"):
        _circuit(c_node=np.ones(N + 1) * 1e-12)
    with pytest.raises(ValueError, match="r_w"):
        _circuit(c_node=1e-12, r_w=1.0)


def test_design_trades_g0_against_node_capacitance(tmp_path):
    """With summing-node capacitance a small G0 costs speed (pole S/C): optimizing G0 alone
    raises it, and the exported design keeps its capacitance."""
    from amcdyn._design import design, load_design

    c = amcdyn.INV.from_matrix(A, B, g0=3e-5, a0=A0, f_gbw=F_GBW, c_node=C)
    res = design(c, variables=("g0",), steps=20, key=jax.random.PRNGKey(0))
    opt = res.optimized
    assert float(opt.g0) > 2 * 3e-5
    t0 = float(amcdyn.simulate_expm(c).settling_time)
    t1 = float(amcdyn.simulate_expm(opt).settling_time)
    assert t1 < 0.5 * t0  # measured 221 ns -> 35 ns for a 6 x 6 example
    path = tmp_path / "d.json"
    res.export(str(path))
    back = load_design(str(path))
    np.testing.assert_allclose(np.asarray(back.c_node), C)
    np.testing.assert_allclose(float(amcdyn.simulate_expm(back).settling_time), t1, rtol=1e-9)
