"""Test matrices and an independent NumPy reference for linear circuit transients."""

import contextlib
import io
import json

import numpy as np
import scipy.linalg


def rows_to_one(rng, n, *, signed=False):
    """Zero-diagonal R whose rows of |R| sum to 1 (R >= 0 unless `signed`: random signs)."""
    r = rng.uniform(0.1, 1.0, (n, n))
    np.fill_diagonal(r, 0.0)
    r /= r.sum(axis=1, keepdims=True)
    if signed:
        r *= rng.choice([-1.0, 1.0], (n, n))
    return r


def well_conditioned(n, seed, *, signed=False):
    """A = I + 0.8 R (baseline.md circuits 1a/1b): strictly diagonally dominant, stable INV."""
    rng = np.random.default_rng(seed)
    return np.eye(n) + 0.8 * rows_to_one(rng, n, signed=signed)


def laplacian_1d(n, off=-0.4995):
    """1-D Dirichlet Laplacian-like A_ii = 1, A_i,i+-1 = `off` (stiff signed INV)."""
    return np.eye(n) + off * (np.eye(n, k=1) + np.eye(n, k=-1))


def random_vector(n, seed):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, n)


def rhs_for_unit_output(a, seed):
    """Random b ~ U(-1, 1), scaled so that max|A^-1 b| = 1 (the ideal outputs span +-1 V)."""
    b = random_vector(a.shape[0], seed)
    return b / np.max(np.abs(np.linalg.solve(a, b)))


def linear_ode(dynamics):
    """(J, c) of a circuit's y' = J y + c in float64 NumPy, from amcdyn's dynamics object."""
    jac = np.asarray(dynamics.jacobian(), dtype=np.float64)
    c = np.asarray(dynamics.vector_field(np.zeros(dynamics.n_states)), dtype=np.float64)
    return jac, c


def exact_transient(jac, c, ts, n_outputs=None):
    """y(t) = y* + V exp(L t) V^-1 (0 - y*) at each t; returns (Y[:, :n_outputs], y*).

    Checked against scipy's expm at one time point (to guard against a badly conditioned
    eigenvector basis).
    """
    jac = np.asarray(jac, dtype=np.float64)
    ts = np.asarray(ts, dtype=np.float64)
    y_ss = -np.linalg.solve(jac, c)
    lam, vec = np.linalg.eig(jac)
    w = np.linalg.solve(vec, -y_ss.astype(complex))
    dev = (np.exp(np.outer(ts, lam)) * w[None, :]) @ vec.T
    ys = y_ss[None, :] + dev.real
    k = len(ts) // 8
    check = y_ss - scipy.linalg.expm(jac * ts[k]) @ y_ss
    scale = np.max(np.abs(y_ss))
    assert np.max(np.abs(check - ys[k])) < 1e-10 * scale, "eigenbasis too ill-conditioned"
    n = len(y_ss) if n_outputs is None else n_outputs
    return ys[:, :n], y_ss[:n]


def max_err_fs(v, v_exact, v_ss):
    """max |v - v_exact| over times and outputs, relative to full scale max|v_ss|."""
    return float(np.max(np.abs(np.asarray(v) - np.asarray(v_exact))) / np.max(np.abs(v_ss)))


def value_and_jacrev(f, argnums=0):
    """`jit(f)` and `jit(jacrev(f, argnums))` as one compiled program.

    Returns `call(*args) -> (f(*args), jacobian)`: the value is the forward pass of the same
    reverse-mode program (`has_aux`), so a test that needs values at central-difference points
    and the reverse-mode Jacobian at one point compiles once instead of twice.
    """
    import jax

    def both(*args):
        out = f(*args)
        return out, out

    jac_and_value = jax.jit(jax.jacrev(both, argnums=argnums, has_aux=True))

    def call(*args):
        jac, value = jac_and_value(*args)
        return value, jac

    return call


def strict_json(text):
    """`json.loads` that refuses NaN/Infinity (the CLI writes them as null)."""

    def bad(token):
        raise ValueError(f"invalid JSON constant {token}")

    return json.loads(text, parse_constant=bad)


def cli(*argv):
    """`amcdyn ARGV` in-process: (exit status, stdout, stderr)."""
    from amcdyn import _cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = _cli.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


# Compile-time XLA flags that tests/conftest.py adds for the in-process tests (LLVM's
# optimizations off: the suite is bound by compilation; see the comment there).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def user_environment(env):
    """`env` without the flags of `TEST_XLA_FLAGS`: a subprocess then runs as a user runs it."""
    env = dict(env)
    test_flags = set(TEST_XLA_FLAGS.split())
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if f not in test_flags)
    return env
