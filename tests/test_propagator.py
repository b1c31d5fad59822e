"""The exact-propagator path `simulate_expm` against the eigendecomposition reference.

References: `helpers.exact_transient` (NumPy eigendecomposition, checked against scipy's expm),
scipy.linalg.expm for the propagator itself, `simulate_analytic` for the settling time (exact
bisection on the closed form) and the closed-form `settle_integral`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from helpers import (
    exact_transient,
    laplacian_1d,
    linear_ode,
    rhs_for_unit_output,
    value_and_jacrev,
    well_conditioned,
)

import amcdyn
from amcdyn import _propagator
from amcdyn._propagator import expm_scaled


N = 8


def _inv(a, seed=0, **kw):
    return amcdyn.INV.from_matrix(a, rhs_for_unit_output(a, seed), **kw)


@pytest.mark.parametrize("scale", [1e-3, 0.3, 3.0, 40.0, 700.0])
def test_expm_scaled_matches_scipy(scale):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(12, 12)) / 12 - 0.5 * np.eye(12)
    a = a * scale
    ref = scipy.linalg.expm(a)
    got = np.asarray(expm_scaled(jnp.asarray(a)))
    # float64 Taylor-18 with ||A/2^s||_1 <= 1.09: roundoff-level, relative to ||expm||.
    assert np.max(np.abs(got - ref)) <= 1e-12 * max(1.0, np.max(np.abs(ref)))


@pytest.mark.parametrize("squarings", [0, 3])
def test_design_fixed_squaring_expm_matches_scipy(squarings):
    # `amcdyn.design`'s propagator: the degree-18 polynomial at the float64 bound its static
    # squaring count is chosen for (||A / 2^s||_1 = 1.09, `make_problem`), then s squarings.
    from amcdyn._design import _expm_fixed

    rng = np.random.default_rng(7)
    a = rng.normal(size=(10, 10)) - 2.0 * np.eye(10)
    a *= 1.09 * 2.0**squarings / np.max(np.sum(np.abs(a), axis=0))
    ref = scipy.linalg.expm(a)
    got = np.asarray(jax.jit(_expm_fixed, static_argnums=1)(jnp.asarray(a), squarings))
    # Roundoff level (the truncation error at the bound is ~4e-17), relative to ||expm||.
    assert np.max(np.abs(got - ref)) <= 1e-13 * max(1.0, np.max(np.abs(ref)))


def test_taylor18_is_the_degree_18_taylor_polynomial():
    # The five-product formula expanded as scalar polynomials: its coefficients are 1/k!
    # for k = 0..18 (to float64 rounding of the published constants), and it has degree 18.
    def poly(c):
        p = np.zeros(7)
        p[[0, 1, 2, 3, 6]] = c
        return p

    q31 = poly(_propagator._Q31)
    q61, q62, q63, q64 = (poly(c) for c in _propagator._Q6)
    q91 = np.polynomial.polynomial.polyadd(np.polynomial.polynomial.polymul(q31, q64), q63)
    y = np.polynomial.polynomial.polyadd(
        q61, np.polynomial.polynomial.polymul(np.polynomial.polynomial.polyadd(q62, q91), q91)
    )
    want = np.array([1 / math.factorial(k) for k in range(19)])
    assert y.shape == (19,)
    np.testing.assert_allclose(y, want, rtol=1e-14)


def test_expm_scaled_float32():
    rng = np.random.default_rng(2)
    a = (rng.normal(size=(16, 16)) / 16 - np.eye(16)) * 5.0
    got = np.asarray(expm_scaled(jnp.asarray(a, jnp.float32)))
    ref = scipy.linalg.expm(a)
    assert np.max(np.abs(got - ref)) <= 2e-6 * max(1.0, np.max(np.abs(ref)))


@pytest.mark.parametrize(
    "a, kw, int_tol",
    [
        # Hermite-corrected trapezoid on 64 intervals: ~1e-3 when the fast (inverter) modes
        # span a few intervals, 2 % for the stiff Laplacian whose fast modes do not.
        (well_conditioned(N, 3), {}, 2e-3),
        (well_conditioned(N, 4, signed=True), {}, 2e-3),
        (well_conditioned(N, 5, signed=True), {"inverters": "ideal"}, 2e-3),
        (laplacian_1d(N), {}, 2e-2),
    ],
    ids=["nonneg", "signed", "ideal-inv", "laplacian"],
)
def test_waveform_settling_and_integral_match_exact(a, kw, int_tol):
    c = _inv(a, **kw)
    ref = amcdyn.simulate_analytic(c)
    got = amcdyn.simulate_expm(c, save=True, n_steps=64)
    assert got.status == "settled"
    # Grid values are exact: compare to the independent eigendecomposition reference.
    jac, cc = linear_ode(c.dynamics())
    v_ref, v_ss = exact_transient(jac, cc, np.asarray(got.ts), n_outputs=N)
    err = np.max(np.abs(np.asarray(got.vs) - v_ref)) / np.max(np.abs(v_ss))
    assert err < 1e-11, err
    # Settling time bisected on the Hermite interpolant: (h r)^4/384 of the band.
    assert abs(float(got.settling_time) / float(ref.settling_time) - 1) < 1e-4
    assert abs(float(got.settle_integral) / float(ref.settle_integral) - 1) < int_tol
    # rel_error is that of the state at t_max (as for `simulate`), not of the equilibrium.
    x_end = np.asarray(c.decode(jnp.asarray(v_ref[-1])))
    x_star = np.linalg.solve(a, np.asarray(c.b))
    want = np.linalg.norm(x_end - x_star) / np.linalg.norm(x_star)
    assert abs(float(got.rel_error) / want - 1) < 1e-8
    np.testing.assert_allclose(np.asarray(got.eigenvalues), np.asarray(ref.eigenvalues))


def test_mvm_settling():
    rng = np.random.default_rng(7)
    a = rng.uniform(-1, 1, (6, 8))
    c = amcdyn.MVM.from_matrix(a, rng.uniform(-1, 1, 8))
    ref = amcdyn.simulate_analytic(c)
    got = amcdyn.simulate_expm(c)
    assert abs(float(got.settling_time) / float(ref.settling_time) - 1) < 1e-4


def test_stiff_ratio_does_not_change_cost_or_accuracy():
    # A 1-D Laplacian with stiffness ratio ~ 700 (N = 32): same grid, exact values.
    a = laplacian_1d(32)
    c = _inv(a)
    ref = amcdyn.simulate_analytic(c)
    got = amcdyn.simulate_expm(c, n_steps=128)
    assert got.status == "settled"
    assert int(got.num_steps) == 128
    assert abs(float(got.settling_time) / float(ref.settling_time) - 1) < 1e-4


def test_unstable_and_not_settled_statuses():
    a = well_conditioned(N, 3)
    a[0, 0] = -1.5  # makes S^-1 (G+ - G-) lose positive stability
    c = _inv(a, inverters="ideal")
    got = amcdyn.simulate_expm(c, throw=False)
    assert got.status == "unstable"
    assert float(got.max_real_eig) > 0
    assert np.isnan(float(got.settling_time))
    # Without eigenvalues the divergence itself is detected on the grid.
    ref_t = float(amcdyn.simulate_analytic(_inv(well_conditioned(N, 3))).t_max)
    got = amcdyn.simulate_expm(c, t_max=20 * ref_t, stability=False, throw=False)
    assert got.status == "unstable"
    # A too-short window is reported, not a fabricated settling time.
    c = _inv(well_conditioned(N, 3))
    got = amcdyn.simulate_expm(c, t_max=0.2 * ref_t, throw=False)
    assert got.status == "not_settled" and np.isinf(float(got.settling_time))
    with pytest.raises(Exception, match="did not settle"):
        amcdyn.simulate_expm(c, t_max=0.2 * ref_t)


def test_bad_options():
    c = _inv(well_conditioned(N, 3))
    for bad in (0, 3, 2.5, True):
        with pytest.raises(ValueError, match="n_steps"):
            amcdyn.simulate_expm(c, n_steps=bad)
    with pytest.raises(ValueError, match="tol"):
        amcdyn.simulate_expm(c, tol=2.0)


def test_jit_vmap_grad():
    a = well_conditioned(N, 4, signed=True)
    b = rhs_for_unit_output(a, 0)
    t_max = float(amcdyn.simulate_analytic(amcdyn.INV.from_matrix(a, b)).t_max)

    def run(g0, f_gbw, bb):
        c = amcdyn.INV.from_matrix(a, bb, g0=g0, f_gbw=f_gbw, input_mode="voltage", g_in=1e-4)
        s = amcdyn.simulate_expm(c, t_max=t_max, stability=False, throw=False)
        return s.settling_time, s.settle_integral, s.rel_error

    bs = jnp.stack([jnp.asarray(b) * (1 + 0.1 * k) for k in range(4)])
    out = jax.jit(jax.vmap(run, in_axes=(None, None, 0)))(1e-4, 1e8, bs)
    for k in range(4):
        ref = amcdyn.simulate_analytic(
            amcdyn.INV.from_matrix(a, np.asarray(bs[k]), input_mode="voltage", g_in=1e-4),
            t_max=t_max,
        )
        assert abs(float(out[0][k]) / float(ref.settling_time) - 1) < 1e-4

    # Gradients (reverse mode, all three outputs at once) vs central finite differences
    # (float64), wrt G0 and f_GBW; relative tolerance 1e-4 on the settling time (a bisected
    # crossing), 1e-5 otherwise.
    def vec(p):
        return jnp.stack(run(p[0], p[1], jnp.asarray(b)))

    p0 = jnp.asarray([1e-4, 1e8])
    vec_jit = value_and_jacrev(vec)  # one compile: values (FD) and reverse-mode AD
    val, jac = (np.asarray(x) for x in vec_jit(p0))
    for which in (0, 1):
        x0 = float(p0[which])
        h = 1e-5 * x0
        step = np.zeros(2)
        step[which] = h
        fd = (np.asarray(vec_jit(p0 + step)[0]) - np.asarray(vec_jit(p0 - step)[0])) / (2 * h)
        for k, rtol in ((0, 1e-4), (1, 1e-5), (2, 1e-5)):
            g = jac[k, which]
            assert abs(g - fd[k]) <= rtol * abs(fd[k]) + 1e-9 * abs(val[k]) / x0, (
                which,
                k,
                g,
                fd[k],
            )
