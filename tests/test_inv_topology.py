"""INV builds inverters only for a matrix with negative entries, and decides it the same way
eagerly and inside a trace (a NumPy matrix closed over by `jit`, `vmap` or `grad`)."""

import jax
import jax.numpy as jnp
import numpy as np

import amcdyn


A_POS = np.array([[1.0, 0.2, 0.1], [0.1, 1.0, 0.3], [0.2, 0.1, 1.0]])
B = np.array([0.5, -0.2, 0.3])


def _states(b):
    c = amcdyn.INV.from_matrix(A_POS, b)
    return c.inverter is None, c.dynamics().jacobian().shape[0]


def test_nonnegative_matrix_has_no_inverters_eager_and_traced():
    eager = _states(B)
    assert eager == (True, 3)
    # Inside jit, vmap and grad: the topology (static) and the state count are the eager ones.
    traced = {}

    def f(b):
        c = amcdyn.INV.from_matrix(A_POS, b)
        traced["no_inv"] = c.inverter is None
        traced["states"] = c.dynamics().jacobian().shape[0]
        return amcdyn.simulate_analytic(c, n_save=0, throw=False).energy

    e_jit = jax.jit(f)(B)
    assert traced == {"no_inv": True, "states": 3}
    e_eager = amcdyn.simulate_analytic(amcdyn.INV.from_matrix(A_POS, B), n_save=0).energy
    # Same circuit, so the same energy (float64 rounding only).
    np.testing.assert_allclose(e_jit, e_eager, rtol=1e-10)
    jax.vmap(f)(jnp.stack([B, 2 * B]))
    assert traced == {"no_inv": True, "states": 3}
    jax.grad(f)(B)
    assert traced == {"no_inv": True, "states": 3}
    # A signed matrix does get its inverters, traced or not.
    a_signed = A_POS - 0.3
    c = jax.jit(lambda b: amcdyn.INV.from_matrix(a_signed, b))(B)
    assert c.inverter is not None and c.dynamics().jacobian().shape[0] == 6
