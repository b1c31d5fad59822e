"""Construction-time validation helpers.

They check only Python-concrete values (numbers, NumPy arrays, concrete JAX arrays), so that
Modules stay constructible under `jit`, `vmap` and `grad`, where values are traced.
"""

import jax
import numpy as np


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _as_np(x):
    return np.asarray(x, dtype=complex if np.iscomplexobj(x) else float)


def check_finite(name: str, x) -> None:
    if is_concrete(x) and not np.all(np.isfinite(_as_np(x))):
        raise ValueError(f"`{name}` must be finite (no NaN or inf), got {x!r}")


def check_positive(name: str, x, *, allow_inf: bool = False) -> None:
    if not is_concrete(x):
        return
    a = _as_np(x)
    if np.any(np.isnan(a)):
        raise ValueError(f"`{name}` must not be NaN, got {x!r}")
    if np.any(a <= 0):
        raise ValueError(f"`{name}` must be > 0, got {x!r}")
    if not allow_inf and np.any(np.isinf(a)):
        raise ValueError(f"`{name}` must be finite, got {x!r}")


def check_nonnegative(name: str, x) -> None:
    if not is_concrete(x):
        return
    a = _as_np(x)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"`{name}` must be finite (no NaN or inf)")
    if np.any(a < 0):
        raise ValueError(f"`{name}` must be >= 0 (conductances are non-negative)")


def check_ndim(name: str, x, ndim: int) -> None:
    if np.ndim(x) != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimension(s), got shape {np.shape(x)}")


def check_flag(name: str, x) -> None:
    """A static option that changes what is computed (a Python bool, never a traced value)."""
    if not isinstance(x, bool | np.bool_):
        raise ValueError(f"`{name}` must be a Python bool (a static option), got {x!r}")
