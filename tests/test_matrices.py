"""Built-in matrix generators (amcdyn._matrices): shapes, structure, seeds, spec parsing."""

import numpy as np
import pytest

import amcdyn
from amcdyn import _matrices as M


NAMES = list(M.GENERATORS)


def _off_diag_abs_row_sums(a):
    return np.sum(np.abs(a), axis=1) - np.abs(np.diag(a))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 2, 7, 16])
def test_shape_dtype_finite(name, n):
    a = M.generate(f"{name}:{n}")
    assert a.shape == (n, n)
    assert a.dtype == np.float64
    assert np.all(np.isfinite(a))
    assert np.linalg.matrix_rank(a) == n


@pytest.mark.parametrize("name", NAMES)
def test_spec_matches_named_function(name):
    np.testing.assert_array_equal(M.generate(f"{name}:6:seed=2"), M.GENERATORS[name](6, seed=2))
    np.testing.assert_array_equal(M.generate(f"{name}:6"), M.GENERATORS[name](6, seed=0))


@pytest.mark.parametrize("name", ["random-dd", "random-nonneg", "wishart"])
def test_seed_reproducible_and_distinct(name):
    a = M.generate(f"{name}:9:seed=3")
    np.testing.assert_array_equal(a, M.generate(f"{name}:9:seed=3"))
    np.testing.assert_array_equal(M.generate(f"{name}:9"), M.generate(f"{name}:9:seed=0"))
    assert not np.array_equal(a, M.generate(f"{name}:9:seed=4"))


def test_random_dd_structure():
    a = M.random_dd(12, seed=1)
    np.testing.assert_allclose(np.diag(a), 1.0)
    # A = I + 0.8 R with rows of |R| summing to 1: strictly diagonally dominant by 0.2.
    np.testing.assert_allclose(_off_diag_abs_row_sums(a), 0.8, rtol=1e-12)
    assert np.all(np.abs(np.diag(a)) > _off_diag_abs_row_sums(a))
    assert np.any(a < 0) and np.any((a > 0) & ~np.eye(12, dtype=bool))  # signed


def test_random_nonneg_structure():
    a = M.random_nonneg(12, seed=1)
    assert np.all(a >= 0)
    np.testing.assert_allclose(np.diag(a), 1.0)
    np.testing.assert_allclose(_off_diag_abs_row_sums(a), 0.8, rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wishart_spd(seed):
    a = M.wishart(10, seed=seed)
    np.testing.assert_array_equal(a, a.T)
    assert np.linalg.eigvalsh(a).min() >= 1e-2 * (1 - 1e-9)  # at least the ridge


def test_toeplitz_values_spd():
    a = M.toeplitz(6)
    i, j = np.indices((6, 6))
    np.testing.assert_allclose(a, 0.5 ** np.abs(i - j))
    np.testing.assert_array_equal(a, a.T)
    assert np.linalg.eigvalsh(a).min() > 0


def test_laplacian_values_spd():
    n = 16
    a = M.laplacian(n)
    np.testing.assert_array_equal(np.diag(a), np.ones(n))
    np.testing.assert_array_equal(np.diag(a, 1), np.full(n - 1, -0.4995))
    np.testing.assert_array_equal(np.diag(a, -1), np.full(n - 1, -0.4995))
    assert np.count_nonzero(a) == n + 2 * (n - 1)  # tridiagonal
    lam = np.linalg.eigvalsh(a)
    k = np.arange(1, n + 1)
    np.testing.assert_allclose(np.sort(lam), np.sort(1 - 0.999 * np.cos(k * np.pi / (n + 1))))
    assert lam.min() > 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("inverters", ["opamp", "ideal"])
def test_generators_give_stable_inv_circuits(name, inverters):
    """Every built-in matrix gives a stable INV circuit (no simulation: eigenvalues of J)."""
    a = M.generate(f"{name}:8:seed=1")
    circuit = amcdyn.INV.from_matrix(a, M.default_rhs(a), inverters=inverters)
    lam = np.linalg.eigvals(np.asarray(circuit.dynamics().jacobian(), dtype=float))
    assert lam.real.max() < 0


def test_default_vectors():
    v = M.default_vector(50)
    np.testing.assert_array_equal(v, np.random.default_rng(0).uniform(-1, 1, 50))
    assert np.all((v >= -1) & (v < 1))
    a = M.random_dd(7)
    b = M.default_rhs(a)
    assert np.max(np.abs(np.linalg.solve(a, b))) == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(b / np.max(np.abs(np.linalg.solve(a, b))), b)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("", "not a matrix spec"),
        ("random-dd", "not a matrix spec"),
        ("foo:4", "unknown matrix generator 'foo'"),
        ("Random-DD:4", "unknown matrix generator"),
        ("random-dd:0", "positive integer"),
        ("random-dd:-3", "positive integer"),
        ("random-dd:x", "positive integer"),
        ("random-dd:2.5", "positive integer"),
        ("random-dd:4:seed=-1", "seed"),
        ("random-dd:4:seed=a", "seed"),
        ("random-dd:4:seed=1:x", "seed"),
        ("random-dd:4:rho=1", "unknown option"),
        ("random-dd:4:seed", "unknown option"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        M.generate(spec)


def test_bad_named_arguments():
    with pytest.raises(ValueError, match="`n`"):
        M.random_dd(0)
    with pytest.raises(ValueError, match="`n`"):
        M.wishart(2.0)
    with pytest.raises(ValueError, match="`weight`"):
        M.random_dd(3, weight=1.0)
    with pytest.raises(ValueError, match="`r`"):
        M.toeplitz(3, r=1.0)
    with pytest.raises(ValueError, match="`off`"):
        M.laplacian(3, off=0.6)
    with pytest.raises(ValueError, match="`ridge`"):
        M.wishart(3, ridge=0.0)
