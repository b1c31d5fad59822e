"""Built-in test matrices and vectors for the command line and examples (pure NumPy).

Every generator returns a float64 NumPy array and is reproducible from its `seed`. The
string form used by `amcdyn simulate --matrix` is parsed by [`generate`][]:

    name:n              e.g. "random-dd:16"
    name:n:seed=s       e.g. "wishart:32:seed=3"

- `random-dd`: $A = I + 0.8R$, $R$ signed with zero diagonal and rows of $|R|$ summing to 1
  (strictly diagonally dominant; the INV circuit needs inverters).
- `random-nonneg`: the same with $R \\ge 0$ (no inverters).
- `wishart`: $X^\\top X/m + 10^{-2} I$, $X$ standard normal $m\\times n$, $m = 2n$ (SPD).
- `toeplitz`: $a_{ij} = 0.5^{|i-j|}$ (symmetric positive definite).
- `laplacian`: 1-D Dirichlet Laplacian, $a_{ii} = 1$, $a_{i,i\\pm1} = -0.4995$ (SPD and
  ill-conditioned: a slow-settling case).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np


__all__ = [
    "GENERATORS",
    "default_rhs",
    "default_vector",
    "generate",
    "laplacian",
    "parse_spec",
    "random_dd",
    "random_nonneg",
    "toeplitz",
    "wishart",
]


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}")
    return int(n)


def _rows_to_one(rng: np.random.Generator, n: int, signed: bool) -> np.ndarray:
    """Zero-diagonal R whose rows of |R| sum to 1 (a zero matrix when n = 1)."""
    r = rng.uniform(0.1, 1.0, (n, n))
    np.fill_diagonal(r, 0.0)
    if n > 1:
        r /= r.sum(axis=1, keepdims=True)
    if signed:
        r *= rng.choice([-1.0, 1.0], (n, n))
    return r


def random_dd(n: int, *, seed: int = 0, weight: float = 0.8) -> np.ndarray:
    """Signed, strictly diagonally dominant $A = I + wR$ (zero-diagonal $R$, rows of $|R|$
    summing to 1, random signs). Its eigenvalues lie in the disc $|\\lambda - 1| \\le w$, so
    for $w < 1$ the INV circuit is stable."""
    n = _check_n(n)
    if not 0 <= weight < 1:
        raise ValueError(f"`weight` must be in [0, 1), got {weight!r}")
    return np.eye(n) + weight * _rows_to_one(np.random.default_rng(seed), n, signed=True)


def random_nonneg(n: int, *, seed: int = 0, weight: float = 0.8) -> np.ndarray:
    """Non-negative, strictly diagonally dominant $A = I + wR$, $R \\ge 0$ (no inverters)."""
    n = _check_n(n)
    if not 0 <= weight < 1:
        raise ValueError(f"`weight` must be in [0, 1), got {weight!r}")
    return np.eye(n) + weight * _rows_to_one(np.random.default_rng(seed), n, signed=False)


def wishart(n: int, *, seed: int = 0, m: int | None = None, ridge: float = 1e-2) -> np.ndarray:
    """Symmetric positive definite $X^\\top X / m + \\rho I$ with $X \\sim N(0,1)^{m\\times n}$,
    $m = 2n$ by default."""
    n = _check_n(n)
    m = 2 * n if m is None else _check_n(m)
    if not ridge > 0:
        raise ValueError(f"`ridge` must be > 0, got {ridge!r}")
    x = np.random.default_rng(seed).standard_normal((m, n))
    a = x.T @ x / m + ridge * np.eye(n)
    return (a + a.T) / 2


def toeplitz(n: int, *, seed: int = 0, r: float = 0.5) -> np.ndarray:
    """Symmetric positive definite Toeplitz (Kac-Murdock-Szegő) $a_{ij} = r^{|i-j|}$,
    $|r| < 1$. Deterministic: `seed` is accepted for a uniform interface and ignored."""
    n = _check_n(n)
    if not -1 < r < 1:
        raise ValueError(f"`r` must be in (-1, 1), got {r!r}")
    k = np.arange(n)
    return np.power(float(r), np.abs(k[:, None] - k[None, :]).astype(float))


def laplacian(n: int, *, seed: int = 0, off: float = 0.4995) -> np.ndarray:
    """1-D Dirichlet Laplacian scaled to unit diagonal: $a_{ii} = 1$, $a_{i,i\\pm1} = -$`off`.

    Eigenvalues $1 - 2\\,\\mathrm{off}\\cos(k\\pi/(n+1))$, so it is SPD for `off` $\\le 1/2$
    and, with the default 0.4995, ill-conditioned (smallest eigenvalue about $10^{-3}$ for
    large $n$): a slow-settling case. Deterministic: `seed` is ignored.
    """
    n = _check_n(n)
    if not 0 <= off <= 0.5:
        raise ValueError(f"`off` must be in [0, 0.5], got {off!r}")
    a = np.eye(n)
    i = np.arange(n - 1)
    a[i, i + 1] = -off
    a[i + 1, i] = -off
    return a


GENERATORS: dict[str, Callable[..., np.ndarray]] = {
    "random-dd": random_dd,
    "random-nonneg": random_nonneg,
    "wishart": wishart,
    "toeplitz": toeplitz,
    "laplacian": laplacian,
}

_SPEC_RE = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_-]*):(?P<n>[^:]*)(?::(?P<opts>.*))?$")


def parse_spec(spec: str) -> tuple[str, int, int]:
    """Split `"name:n[:seed=s]"` into `(name, n, seed)`; raise `ValueError` if malformed."""
    if not isinstance(spec, str):
        raise ValueError(f"a matrix spec must be a str, got {type(spec).__name__}")
    known = ", ".join(GENERATORS)
    m = _SPEC_RE.match(spec.strip())
    if m is None:
        raise ValueError(
            f"{spec!r} is not a matrix spec of the form name:n[:seed=s] (generators: {known})"
        )
    name = m["name"]
    if name not in GENERATORS:
        raise ValueError(f"unknown matrix generator {name!r} (generators: {known})")
    try:
        n = int(m["n"])
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"the size in {spec!r} must be a positive integer, got {m['n']!r}")
    seed = 0
    if m["opts"] is not None:
        key, sep, value = m["opts"].partition("=")
        if key.strip() != "seed" or not sep:
            raise ValueError(f"unknown option {m['opts']!r} in {spec!r} (only seed=<int>)")
        try:
            seed = int(value)
        except ValueError:
            seed = -1
        if seed < 0:
            raise ValueError(f"the seed in {spec!r} must be a non-negative integer")
    return name, n, seed


def generate(spec: str) -> np.ndarray:
    """Build a matrix from a spec such as `"random-dd:16"` or `"wishart:32:seed=3"`.

    **Raises:** `ValueError` for an unknown generator, a non-positive size or a bad option.
    """
    name, n, seed = parse_spec(spec)
    return GENERATORS[name](n, seed=seed)


def default_vector(n: int, *, seed: int = 0) -> np.ndarray:
    """The built-in input vector: uniform on $[-1, 1)$ from `numpy.random.default_rng(seed)`."""
    n = _check_n(n)
    return np.random.default_rng(seed).uniform(-1.0, 1.0, n)


def default_rhs(a, *, seed: int = 0) -> np.ndarray:
    """The built-in INV right-hand side: `default_vector` scaled so that $\\max|A^{-1}b| = 1$
    (the INV outputs then span $\\pm 1$ V)."""
    a = np.asarray(a, dtype=float)
    b = default_vector(a.shape[0], seed=seed)
    x = np.linalg.solve(a, b)
    return b / np.max(np.abs(x))
