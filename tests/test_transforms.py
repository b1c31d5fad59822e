"""jit, vmap and grad through every public entry point (INV/MVM.from_matrix, simulate,
simulate_analytic), and float32 dtype preservation.

Compile time dominates this file, so the shapes and the options are shared between tests
(N = 4 INV, 3 x 5 MVM; one option set for the batched/eager runs, one for the gradients).
"""

import functools
import inspect

import diffrax as dfx
import equinox as eqx
import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
import pytest

import amcdyn
import amcdyn._simulate as _simulate_module


# --------------------------------------------------------------------------------------------
# Shared problems.

N = 4
_rng = np.random.default_rng(0)
_m = _rng.normal(size=(N, N))
A = _m @ _m.T / N + np.eye(N)  # SPD, eigenvalues 0.92 .. 3.27
A[0, 1] = A[1, 0] = -0.3  # a negative entry: inverters are built (also when A is concrete)
B = _rng.normal(size=N)
D_INV = _rng.normal(size=(N, N)) * (A > 0)  # a random direction in g_pos (its non-zero entries)

AM = np.random.default_rng(1).normal(size=(3, 5))
XM = np.random.default_rng(2).normal(size=5)
D_MVM = np.random.default_rng(3).normal(size=(3, 5)) * (AM > 0)

# Batched / eager runs: the slowest mode of A has tau = 6.7 ns, so 120 ns settles to 1e-3.
T_MAX = 1.2e-7
KW = dict(t_max=T_MAX, n_save=0, stability=False, throw=False)
KW_ANA = dict(t_max=T_MAX, n_save=0, throw=False)


def _inv(a, b, **kw):
    return amcdyn.INV.from_matrix(a, b, **kw)


def _mvm(a, x, **kw):
    return amcdyn.MVM.from_matrix(a, x, **kw)


def _close(name, actual, desired, rtol):
    # rel_error = |x - x*| / |x*| is a difference of nearly equal vectors: an ulp of x moves it
    # by ~1e-16 absolute (~1e-11 relative), so it is compared absolutely, to rtol of |x*|.
    atol = rtol if name == "rel_error" else 0
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol, err_msg=name)


def _relerr(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    return np.max(np.abs(x - y) / np.abs(y))


# --------------------------------------------------------------------------------------------
# jit == eager.

_FIELDS = ("settling_time", "solution", "rel_error", "settle_integral", "v_final")


@pytest.mark.parametrize("kind", ["inv", "mvm"])
@pytest.mark.parametrize("path", ["simulate", "simulate_analytic"])
def test_jit_equals_eager(kind, path):
    build, a, v = (_inv, A, B) if kind == "inv" else (_mvm, AM, XM)
    sim = amcdyn.simulate if path == "simulate" else amcdyn.simulate_analytic
    kw = KW if path == "simulate" else KW_ANA

    eager = sim(build(a, v), **kw)
    # Everything, the circuit construction included, under one jit.
    jitted = jax.jit(lambda a, v: sim(build(a, v), **kw))(a, v)

    assert eager.status == jitted.status == "settled"
    for name in _FIELDS:
        _close(name, getattr(jitted, name), getattr(eager, name), 1e-12)


# --------------------------------------------------------------------------------------------
# vmap: 1024 circuits that differ only in values, one compiled call, no retrace.

BATCH = 1024


def _inv_batch(seed):
    rng = np.random.default_rng(seed)
    p = 0.05 * rng.normal(size=(BATCH, N, N))
    a = A[None] + (p + np.swapaxes(p, 1, 2)) / 2  # stays SPD with A[0, 1] < 0
    b = rng.normal(size=(BATCH, N))
    return a, b


def test_vmap_1024_inv_one_trace():
    n_traces = []

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def batched(a, b, t_max):
        n_traces.append(1)  # Python side effect: runs once per trace
        kw = dict(KW, t_max=t_max)
        return jax.vmap(lambda a, b: amcdyn.simulate(amcdyn.INV.from_matrix(a, b), **kw))(a, b)

    a1, b1 = _inv_batch(10)
    a2, b2 = _inv_batch(11)
    sol1 = batched(a1, b1, jnp.asarray(T_MAX))
    sol2 = batched(a2, b2, jnp.asarray(1.1 * T_MAX))  # new values (the options too): no retrace
    assert len(n_traces) == 1

    for sol, a, b, t_max in ((sol1, a1, b1, T_MAX), (sol2, a2, b2, 1.1 * T_MAX)):
        assert sol.settling_time.shape == (BATCH,)
        assert sol.solution.shape == (BATCH, N)
        assert sol.v_final.shape == (BATCH, N)
        assert sol.rel_error.shape == (BATCH,)
        assert sol.result._value.shape == (BATCH,)
        assert np.all(sol.status_names() == "settled")
        assert np.all(np.isfinite(sol.settling_time)) and np.all(sol.settling_time > 0)
        np.testing.assert_allclose(sol.t_max, t_max, rtol=1e-15)
        # The batched answer is A^-1 b to the finite-gain error (a0 = 1e5).
        exact = np.linalg.solve(a, b[..., None])[..., 0]
        assert np.max(np.abs(np.asarray(sol.solution) - exact)) < 1e-3

    # Equal to a loop over individual (eagerly built, unbatched) circuits.
    for i in (0, 1, 517, BATCH - 1):
        one = amcdyn.simulate(amcdyn.INV.from_matrix(a1[i], b1[i]), **KW)
        assert one.status == "settled"
        for name in ("settling_time", "solution", "rel_error", "settle_integral"):
            _close(name, getattr(sol1, name)[i], getattr(one, name), 1e-9)


@pytest.mark.parametrize("path", ["simulate", "simulate_analytic"])
def test_vmap_mvm_inputs(path):
    sim = amcdyn.simulate if path == "simulate" else amcdyn.simulate_analytic
    kw = KW if path == "simulate" else KW_ANA
    xs = np.random.default_rng(4).normal(size=(16, 5))
    n_traces = []

    @eqx.filter_jit
    def batched(a, xs):
        n_traces.append(1)
        return jax.vmap(lambda x: sim(amcdyn.MVM.from_matrix(a, x), **kw))(xs)

    sol = batched(AM, xs)
    batched(AM, xs[::-1] * 0.5)
    assert len(n_traces) == 1
    assert sol.solution.shape == (16, 3)
    assert np.all(sol.status_names() == "settled")
    for i in (0, 15):
        one = sim(amcdyn.MVM.from_matrix(AM, xs[i]), **kw)
        for name in ("settling_time", "solution", "rel_error"):
            _close(name, getattr(sol, name)[i], getattr(one, name), 1e-9)


# --------------------------------------------------------------------------------------------
# Gradients against central finite differences.
#
# Parameters p = (g0, f_gbw, t): G0 (S), the op-amps' gain-bandwidth (Hz), and a step t along
# the fixed random direction g0 * D in g_pos (a directional derivative). a0 = 1e3 makes the
# finite-gain error (rel_error ~ 1e-3) much larger than the perturbations, so rel_error is
# smooth on the FD scale. t_max is fixed (the default t_max carries no gradient anyway).
# G0 scales every conductance, so it cancels out of the dynamics unless something is not
# proportional to it: "inv-voltage" and "mvm" fix g_in / g_f, "inv-current" checks that the
# G0-derivative is then 0. "inv-current" is also run as a jax.vmap over two right-hand sides
# and differentiates the batch mean of settle_integral (a gradient through vmap).

T_G = 6e-8
G_IN = 1e-4
G_F = 1e-4
B2 = np.random.default_rng(6).normal(size=N)
P0 = np.array([5e-5, 1e8, 0.0])
SCALE = np.array([5e-5, 1e8, 1.0])  # derivatives are compared as d f / d log p (t: d f / d t)
PARAMS = ("g0", "f_gbw", "g_pos")

# FD steps h (relative to SCALE) and tolerances (rtol, with atol = rtol * |f|):
# - simulate: PIDController(rtol=1e-9, atol=1e-12) on a fixed [0, T_G]. The step sequence
#   moves with p (O(1e-12) noise in f) and rel_error = |x - x*| / |x*| curves on the scale
#   |x - x*| (a 1e-5 step gives 2e-5 truncation error for MVM), so h = 1e-6.
#   Tolerance 2e-5. Measured: rel_error <= 4e-7 relative (INV), <= 1e-5 |f| (MVM, whose
#   d rel_error / d log f_gbw is only 1e-2 |f|); settle_integral <= 4e-9 relative.
# - simulate_analytic: closed form, h = 1e-6; tolerance 1e-6. Measured <= 2e-7 relative
#   (rel_error), <= 5e-9 (settle_integral, settling_time).
FD = {"simulate": (1e-6, 2e-5), "simulate_analytic": (1e-6, 1e-6)}
TIGHT = dfx.PIDController(rtol=1e-9, atol=1e-12)


def _circuit(kind, p, b=B):
    g0, f_gbw, t = p[0], p[1], p[2]
    if kind == "inv-voltage":
        c = _inv(A, b, g0=g0, a0=1e3, f_gbw=f_gbw, input_mode="voltage", g_in=G_IN)
        d = D_INV
    elif kind == "inv-current":
        c = _inv(A, b, g0=g0, a0=1e3, f_gbw=f_gbw)
        d = D_INV
    else:
        c = _mvm(AM, XM, g0=g0, g_f=G_F, a0=1e3, f_gbw=f_gbw)
        d = D_MVM
    return eqx.tree_at(lambda c: c.g_pos, c, c.g_pos + t * g0 * d)


def _run(c, path, adjoint=dfx.RecursiveCheckpointAdjoint()):
    if path == "simulate":
        return amcdyn.simulate(
            c,
            t_max=T_G,
            n_save=0,
            stability=False,
            solver=dfx.Tsit5(),
            stepsize_controller=TIGHT,
            adjoint=adjoint,
            throw=False,
        )
    return amcdyn.simulate_analytic(c, t_max=T_G, n_save=0, throw=False)


def _quantities(kind, path):
    q = ["rel_error", "settle_integral"]
    if path == "simulate_analytic":
        q.append("settling_time")
    if kind == "inv-current":
        q.append("batch_mean_settle_integral")
    return tuple(q)


def _measures(kind, path, p, **run_kw):
    if kind == "inv-current":
        s = jax.vmap(lambda b: _run(_circuit(kind, p, b), path, **run_kw))(jnp.stack([B, B2]))
        s0 = jax.tree.map(lambda x: x[0], s)
    else:
        s = s0 = _run(_circuit(kind, p), path, **run_kw)
    out = {
        "rel_error": s0.rel_error,
        "settle_integral": s0.settle_integral / T_G,
        "settling_time": s0.settling_time / T_G,
        "batch_mean_settle_integral": jnp.mean(s.settle_integral) / T_G,
    }
    return jnp.stack([out[q] for q in _quantities(kind, path)])


_GRAD_CACHE = {}


def _grad_data(kind, path):
    """(value, AD Jacobian, FD Jacobian at h, FD Jacobian at 4h), once per (kind, path)."""
    key = (kind, path)
    if key not in _GRAD_CACHE:
        try:
            fn = functools.partial(_measures, kind, path)

            @jax.jit
            def value_and_jac(p):  # reverse mode (the default adjoint), one row per measure
                val, vjp = jax.vjp(fn, p)
                (jac,) = jax.vmap(vjp)(jnp.eye(val.shape[0], dtype=val.dtype))
                return val, jac

            # The FD evaluations reuse the same compiled function (one compile per case).
            f = lambda p: value_and_jac(p)[0]
            p0 = jnp.asarray(P0)
            val, jac = map(np.asarray, value_and_jac(p0))
            h_rel, _ = FD[path]
            fds = []
            for mult in (1, 4):
                cols = []
                for i in range(3):
                    h = mult * h_rel * SCALE[i]
                    e = np.zeros(3)
                    e[i] = h
                    cols.append((np.asarray(f(p0 + e)) - np.asarray(f(p0 - e))) / (2 * h))
                fds.append(np.stack(cols, axis=1))
            _GRAD_CACHE[key] = (None, (val, jac, fds[0], fds[1]))
        except Exception as e:  # re-raised by every test of this (kind, path)
            _GRAD_CACHE[key] = (e, None)
    err, data = _GRAD_CACHE[key]
    if err is not None:
        raise err
    return data


# Known library bugs (reported with patches). While a bug is present, the cases it breaks are
# marked xfail at run time, recognized by their exact symptom; once fixed they run normally.
# - eig: _simulate._eig returns jnp.linalg.eig's EigResult namedtuple and its custom JVP a plain
#   tuple -> TypeError "Custom JVP rule _eig_jvp ..." under jax.grad of simulate_analytic.
# - fs: fs_safe = stop_gradient(max|v_steady|) normalizes settle_integral and the settling band,
#   so their gradients miss d(fs)/dp wherever v_steady depends on p.
_EIG_BUG = "amcdyn bug: _eig custom JVP returns a tuple, jnp.linalg.eig an EigResult"
_FS_BUG = "amcdyn bug: stop_gradient on fs_safe (settle normalization) drops d fs/dp"
_FS_BUG_PRESENT = "stop_gradient(jnp.where(fs > 0" in inspect.getsource(_simulate_module)


def _grad_cases():
    return [
        (path, kind, q, param)
        for path in ("simulate", "simulate_analytic")
        for kind in ("inv-voltage", "inv-current", "mvm")
        for q in _quantities(kind, path)
        for param in PARAMS
    ]


@pytest.mark.parametrize("path, kind, quantity, param", _grad_cases())
def test_grad_matches_finite_differences(path, kind, quantity, param):
    try:
        val, jac, fd, fd4 = _grad_data(kind, path)
    except TypeError as e:
        if "_eig_jvp" in str(e):
            pytest.xfail(_EIG_BUG)
        raise
    q, i = _quantities(kind, path).index(quantity), PARAMS.index(param)
    _, rtol = FD[path]
    ad, num = jac[q, i] * SCALE[i], fd[q, i] * SCALE[i]
    assert np.isfinite(val[q]) and np.isfinite(ad)
    try:
        # FD step h = FD[path][0] * SCALE; tolerance rtol = FD[path][1], atol = rtol * |f|.
        np.testing.assert_allclose(ad, num, rtol=rtol, atol=rtol * abs(val[q]))
    except AssertionError:
        # v_steady (so fs) depends on g_pos always, and on G0 unless G0 cancels out.
        fs_moves = param == "g_pos" or (param == "g0" and kind != "inv-current")
        if _FS_BUG_PRESENT and quantity != "rel_error" and fs_moves:
            pytest.xfail(_FS_BUG)
        raise
    if quantity == "settling_time":
        # Piecewise smooth: no kink within 4h, i.e. FD at h and at 4h agree.
        np.testing.assert_allclose(fd4[q, i] * SCALE[i], num, rtol=rtol, atol=rtol * abs(val[q]))


def test_grad_g0_cancels_in_current_mode():
    # With the current input I = G0 b and no g_in, G0 scales every conductance: the dynamics,
    # hence all measures, do not depend on it (checked on the simulate path).
    val, jac, _, _ = _grad_data("inv-current", "simulate")
    np.testing.assert_allclose(jac[:, 0] * SCALE[0], 0, atol=1e-12 * np.max(np.abs(val)))
    assert np.all(np.abs(jac[:, 1]) > 0)
    assert np.all(jac[1:, 1] < 0)  # a faster op-amp settles sooner


def test_forward_mode_jacfwd_matches_jacrev():
    # Forward mode (jax.jacfwd / jax.jvp) needs adjoint=diffrax.ForwardMode(): the default
    # RecursiveCheckpointAdjoint is reverse-only. Both differentiate the same discrete solve.
    val, jac, _, _ = _grad_data("inv-voltage", "simulate")
    fn = functools.partial(_measures, "inv-voltage", "simulate", adjoint=dfx.ForwardMode())
    jac_fwd = np.asarray(jax.jit(jax.jacfwd(fn))(jnp.asarray(P0)))
    np.testing.assert_allclose(
        jac_fwd * SCALE, jac * SCALE, rtol=1e-9, atol=1e-12 * np.max(np.abs(val))
    )


# --------------------------------------------------------------------------------------------
# float32 in, float32 out (x64 enabled), close to float64.


@pytest.mark.parametrize("path", ["simulate", "simulate_analytic"])
def test_float32_preserved(path):
    sim = amcdyn.simulate if path == "simulate" else amcdyn.simulate_analytic
    kw = KW if path == "simulate" else KW_ANA
    c32 = _inv(A.astype(np.float32), B.astype(np.float32))
    assert c32.g_pos.dtype == jnp.float32
    s32 = sim(c32, **kw)
    s64 = sim(_inv(A, B), **kw)
    assert s32.status == s64.status == "settled"
    for name in (
        "ts",
        "vs",
        "v_final",
        "v_steady",
        "solution",
        "exact",
        "rel_error",
        "bits",
        "settling_time",
        "settle_integral",
        "t_max",
        "tol",
        "max_real_eig",
        "power",
        "energy",
    ):
        assert getattr(s32, name).dtype == jnp.float32, name
    if s32.eigenvalues is not None:
        assert s32.eigenvalues.dtype == jnp.complex64

    def normwise(x, y):
        x, y = np.asarray(x, float), np.asarray(y, float)
        return np.linalg.norm(x - y) / np.linalg.norm(y)

    # Measured: simulate 1.2e-5 (solution; both runs sit within the default controller's
    # rtol = 1e-5 of the true transient), 6e-4 (settling time: the dense output near the
    # crossing is good to ~rtol of full scale, i.e. ~1 % of the 1e-3 band, and rounding moves
    # the accepted steps), 3e-7 (settle_integral); simulate_analytic <= 5e-7.
    assert normwise(s32.solution, s64.solution) < 1e-4
    assert normwise(s32.v_steady, s64.v_steady) < 1e-5
    tol_settle = 2e-3 if path == "simulate" else 1e-4
    assert _relerr(s32.settling_time, s64.settling_time) < tol_settle
    assert _relerr(s32.settle_integral, s64.settle_integral) < 1e-4
