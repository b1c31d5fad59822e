"""The quasi-Newton local method (`design(optimizer="bfgs")`) and the sharpness continuation
(`sharpen=`) of `amcdyn._design`, on the 3 x 3 case of study (a) whose optimum is a narrow
cancellation notch (I - 0.49 (shift up + down), main-amplifier GBW at equal power).

References: a brute-force grid of the *true* settling time (exact-propagator transients,
`amcdyn.simulate_expm`, independent of the surrogate) over the same unconstrained
parameters; `scipy.optimize.minimize(method="BFGS")` on the same loss; central finite
differences for the gradient of the sharpened loss.

One circuit and one option set are shared by every test (compile time dominates).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import amcdyn
from amcdyn import _design as D


TOL = 1e-3
VARIABLES = ("gbw_main",)


@pytest.fixture(scope="module")
def case():
    n = 3
    a = np.eye(n) - 0.49 * (np.eye(n, k=1) + np.eye(n, k=-1))
    b = np.random.default_rng(1).uniform(-1, 1, n)
    c = amcdyn.INV.from_matrix(a, b, f_gbw=np.full(n, 1e8), inverter_f_gbw=np.full(n, 1e8))
    prob = D.make_problem(c, variables=VARIABLES)
    return c, prob


def _true_settling(prob, c):
    t_end = 2 * float(amcdyn._ngspice.default_t_stop(c, TOL))

    @jax.jit
    def settle(theta):  # theta: (3,) unconstrained main-amplifier GBW parameters
        ci = prob.circuit({"gbw_main": theta})
        t = amcdyn.simulate_expm(
            ci, tol=TOL, t_max=t_end, n_steps=1024, stability=False, throw=False
        ).settling_time
        return jnp.where(jnp.isnan(t), jnp.inf, t)

    return settle


def test_multistart_bfgs_sharpen_reaches_grid_optimum(case):
    """The method of study (a) matches or beats a grid of the true settling time, at under
    half its simulations; the continuation ends on the last sharpness."""
    c, prob = case
    settle = _true_settling(prob, c)
    k = 9
    g = np.linspace(-2.5, 2.5, k)
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    ts = np.asarray(jax.lax.map(settle, jnp.asarray(grid)))
    t_grid = float(ts.min())
    res = D.design_multistart(
        c,
        starts=16,
        seed=0,
        variables=VARIABLES,
        optimizer="bfgs",
        steps=30,
        sharpen=(0.1, 0.05),
        sharpen_top=2,
        evaluate_designs=False,
    )
    t_design = float(settle(jnp.asarray(res.params["gbw_main"])))
    # The design's true settling time: at most the grid's best (no tolerance: "matches or
    # beats"); simulations (loss-and-gradient evaluations, line search and continuation
    # included) under half the grid's.
    assert t_design <= t_grid, (t_design, t_grid)
    assert res.n_loss_evals < 0.5 * grid.shape[0]
    # Equal power: the budget projection holds the amplifier power at the initial design's
    # (relative 1e-9: floating-point rounding of the projection).
    assert float(res.optimized.amplifier_power()) <= float(c.amplifier_power()) * (1 + 1e-9)
    # The continuation ends at sharpness 0.05 on a grid refined 5x (256 * 0.25 / 0.05), and
    # the reported loss is that problem's loss at the returned parameters (relative 1e-12:
    # the same compiled function, re-evaluated).
    assert res.problem.objective.sharpness == 0.05
    assert res.problem.objective.n_grid == 1280
    loss = float(res.problem.loss({k: jnp.asarray(v) for k, v in res.params.items()}))
    assert loss == pytest.approx(res.history[res.best_step], rel=1e-12)


def test_bfgs_matches_scipy_and_counts_evaluations(case):
    """`optimizer="bfgs"` from the initial design reaches the same local minimum of the
    surrogate loss as SciPy's BFGS, within its evaluation budget, monotonically."""
    c, prob = case
    steps = 40
    res = D.design(c, variables=VARIABLES, optimizer="bfgs", steps=steps, evaluate_designs=False)
    hist = res.history
    assert res.n_loss_evals <= steps + 1
    assert len(hist) <= res.n_loss_evals  # accepted iterates <= evaluations
    assert np.all(np.diff(hist) <= 0)  # Armijo line search: every accepted step descends
    assert res.best_step == len(hist) - 1

    vg = jax.jit(jax.value_and_grad(lambda th: prob.loss({"gbw_main": th})))

    def f(x):
        v, g = vg(jnp.asarray(x))
        return float(v), np.asarray(g)

    x0 = np.asarray(prob.init_params()["gbw_main"])
    ref = scipy.optimize.minimize(f, x0, jac=True, method="BFGS", options=dict(gtol=1e-9))
    # Same minimum: loss within 1e-6 (the loss is a log, so 1e-6 relative in the surrogate
    # settling time); parameters within 1e-2 (the minimum is flat to that order).
    assert hist[-1] == pytest.approx(ref.fun, abs=1e-6)
    np.testing.assert_allclose(res.params["gbw_main"], ref.x, atol=1e-2)


def test_sharpened_loss_grad_fd_jit(case):
    """The continuation's loss (sharpness 0.05, 1280-interval grid) is differentiable: its
    gradient (value_and_grad under jit) matches central finite differences of its value,
    and jit agrees with eager evaluation. (vmap of `DesignProblem.loss` is tested in
    tests/test_design.py; the sharpened problem differs only in two objective numbers.)"""
    c, prob = case
    sharp = D._sharpened(prob, 0.05)
    theta = jnp.asarray([0.4, 0.6, -0.8])

    def loss(th):
        return sharp.loss({"gbw_main": th})

    vg = jax.jit(jax.value_and_grad(loss))
    value, g = vg(theta)
    h = 1e-5
    fd = np.array(
        [(float(vg(theta + h * e)[0]) - float(vg(theta - h * e)[0])) / (2 * h) for e in np.eye(3)]
    )
    # Central differences, h = 1e-5 on an O(1) loss: truncation O(h^2) and roundoff
    # O(eps/h) ~ 1e-11, so relative 1e-5 on the gradient.
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-5, atol=1e-7)
    # jit vs eager: the same operations, relative 1e-12.
    assert float(loss(theta)) == pytest.approx(float(value), rel=1e-12)


def test_bad_options(case):
    c, _ = case
    kw = dict(variables=VARIABLES, steps=1, evaluate_designs=False)
    with pytest.raises(ValueError, match="`optimizer`"):
        D.design(c, optimizer="lbfgs", **kw)
    with pytest.raises(ValueError, match="`sharpen`"):
        D.design(c, sharpen=(0.3,), **kw)  # not below the objective's 0.25
    with pytest.raises(ValueError, match="`sharpen`"):
        D.design(c, sharpen=(0.05, 0.1), **kw)  # not decreasing
    with pytest.raises(ValueError, match="`sharpen`"):
        D.design(c, sharpen=0.1, **kw)  # not a sequence
    with pytest.raises(ValueError, match="`sharpen_steps`"):
        D.design(c, sharpen=(0.1,), sharpen_steps=0, **kw)
    with pytest.raises(ValueError, match="`sharpen_top`"):
        D.design_multistart(c, starts=2, sharpen=(0.1,), sharpen_top=0, **kw)
