r"""Batched, sharded, resumable Monte Carlo over a per-sample JAX function.

[`amcdyn.monte_carlo`][] evaluates `sample_fn(key_i)` for `i = 0, ..., n_samples - 1` with
`key_i = jax.random.fold_in(key, i)`. Samples are computed in chunks: one compiled call
`jit(vmap(sample_fn))` per chunk, its batch axis sharded over every device given, so the same
code fills one CPU, several GPUs or several hosts. Because sample `i` depends only on `key` and
`i`, the results do not depend on the chunk size, on the number of devices, or on whether the run
was interrupted and resumed.

```python
def sample_fn(key):
    k1, k2 = jax.random.split(key)
    circuit = nominal_circuit_perturbed_by(k1)
    sol = amcdyn.simulate_analytic(circuit, n_save=0, throw=False)
    return {"settling_time": sol.settling_time, "rel_error": sol.rel_error,
            "result": sol.result}

res = amcdyn.monte_carlo(sample_fn, jax.random.key(0), 100_000, out="mc.npz",
                         config={"n": 16, "sigma": 0.05})
res.summary(max_rel_error=1e-2)
```
"""

import collections
import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, PRNGKeyArray, Shaped

from ._solution import RESULTS, STATUS_NAMES


_FORMAT = "amcdyn.monte_carlo/1"
_META = "__meta__"
# Default chunk rule (see `monte_carlo`): at most this many samples per device and per call
# (on CPU fewer: a chunk whose working set stays in cache measured 1.5x faster at 512 than at
# 4096 samples, N = 16 INV on the expm path)...
_MAX_PER_DEVICE = 4096
_MAX_PER_DEVICE_CPU = 512
# ...and at most this many bytes of per-call device memory, when the device does not report its
# memory (CPU). A device that reports `bytes_limit` (GPU, TPU) gets half of it.
_CPU_BUDGET = 1 << 30
# `fold_in` takes a 32-bit sample index.
_MAX_SAMPLES = 2**32
# The class of `eqx.Enumeration` items, reached through a public item (equinox does not export it).
_ENUM_ITEM = type(RESULTS.settled)


# --------------------------------------------------------------------------------------------
# Result


class MCResult(eqx.Module):
    """What [`amcdyn.monte_carlo`][] returns: one value per sample and per field.

    **Fields:**

    - `samples`: a dict from field name (the keys `sample_fn` returns) to a NumPy array of shape
      `(n_samples,)`; entry `i` is sample `i` (key `fold_in(key, i)`). An `eqx.Enumeration` item
      (such as `Solution.result`) is stored as its integer code.
    - `n_samples`: the number of samples.
    - `stats`: how the run went: `chunk_size` (samples per compiled call, 0 if nothing was
      computed), `n_devices`, `n_resumed` (samples read back from `out`), `n_computed` (samples
      computed by this call), `compile_s`, `run_s` (wall time of the chunk loop, s) and
      `samples_per_s`.

    `result[name]` is `result.samples[name]`.
    """

    samples: dict[str, np.ndarray]
    n_samples: int = eqx.field(static=True)
    stats: dict[str, Any]

    def __check_init__(self):
        for name, x in self.samples.items():
            if np.shape(x) != (self.n_samples,):
                raise ValueError(
                    f"`samples[{name!r}]` must have shape ({self.n_samples},), got {np.shape(x)}"
                )

    def __getitem__(self, name: str) -> np.ndarray:
        return self.samples[name]

    @property
    def fields(self) -> tuple[str, ...]:
        """The field names (sorted, as JAX orders dict keys)."""
        return tuple(self.samples)

    def summary(
        self,
        quantiles: Sequence[float] = (0.05, 0.5, 0.95),
        *,
        settle_field: str = "settling_time",
        status_field: str = "result",
        error_field: str = "rel_error",
        max_rel_error: float | None = None,
    ) -> dict:
        r"""Quantiles, non-finite counts and yield, as a JSON-ready dict.

        **Arguments:**

        - `quantiles`: probabilities in $[0, 1]$; each is reported as `"p<100 q>"` (`0.05` gives
          `"p5"`).
        - `settle_field`: the settling-time field (s). Besides its plain entry, it gets a
          `"settle_all"` entry: the same quantiles over *all* samples, a sample that did not
          settle (non-finite time, or status other than settled) counting as $+\infty$. Its
          `p95` is the time by which 95% of all circuits have settled (`inf` when fewer did).
        - `status_field`: the status-code field; `0` is settled (an [`amcdyn.RESULTS`][] code).
        - `error_field`: the relative-error field, used with `max_rel_error`.
        - `max_rel_error`: if given, a sample counts toward the yield only if it also has
          `error_field <= max_rel_error` (a NaN error fails).

        **Returns:** a dict with

        - `"n_samples"`;
        - `"fields"`: per field, `n_finite`, `n_nan`, `n_posinf`, `n_neginf`, `mean`, `min`,
          `max` and the quantiles, all over the finite values only (NaN when there are none);
          booleans are counted as 0/1; complex fields get the counts only;
        - `"settle_all"` (if `settle_field` is a field);
        - `"status_counts"` (if `status_field` is a field): samples per status name;
        - `"yield"`: the fraction of samples with status settled (and, with `max_rel_error`,
          error within the bound), `None` when neither `status_field` nor `max_rel_error`
          applies; `"yield_stderr"`: its binomial standard error $\sqrt{y(1-y)/n}$.

        **Raises:** `ValueError` for a quantile outside $[0, 1]$, or `max_rel_error` given while
        `error_field` is not a field.
        """
        qs = [float(q) for q in quantiles]
        for q in qs:
            if not 0 <= q <= 1:
                raise ValueError(f"`quantiles` must lie in [0, 1], got {q!r}")
        names = [_quantile_name(q) for q in qs]
        n = self.n_samples
        out: dict[str, Any] = {"n_samples": n, "fields": {}}
        for name, x in self.samples.items():
            out["fields"][name] = _field_summary(np.asarray(x), qs, names)

        status = self.samples.get(status_field)
        if settle_field in self.samples:
            t = np.asarray(self.samples[settle_field], dtype=float)
            bad = ~np.isfinite(t)
            if status is not None:
                bad |= np.asarray(status) != 0
            t = np.where(bad, np.inf, t)
            out["settle_all"] = {k: _quantile_with_inf(t, q) for k, q in zip(names, qs)}

        ok = None
        if status is not None:
            codes, counts = np.unique(np.asarray(status), return_counts=True)
            out["status_counts"] = {
                (STATUS_NAMES[c] if 0 <= c < len(STATUS_NAMES) else str(c)): int(k)
                for c, k in zip(codes.tolist(), counts.tolist())
            }
            ok = np.asarray(status) == 0
        if max_rel_error is not None:
            if error_field not in self.samples:
                raise ValueError(
                    f"`max_rel_error` needs the field `error_field`={error_field!r}, which is not "
                    f"among the fields {list(self.samples)}"
                )
            within = np.asarray(self.samples[error_field], dtype=float) <= max_rel_error
            ok = within if ok is None else ok & within
        if ok is None:
            out["yield"] = out["yield_stderr"] = None
        else:
            y = float(np.mean(ok)) if n else math.nan
            out["yield"] = y
            out["yield_stderr"] = math.sqrt(y * (1 - y) / n) if n else math.nan
        return out


def _quantile_name(q: float) -> str:
    return f"p{q * 100:g}"


def _field_summary(x: np.ndarray, qs, names) -> dict:
    if np.iscomplexobj(x):
        finite = np.isfinite(x)
        return {"n_finite": int(finite.sum()), "n_nonfinite": int((~finite).sum())}
    x = x.astype(float)
    finite = np.isfinite(x)
    xf = x[finite]
    s = {
        "n_finite": int(finite.sum()),
        "n_nan": int(np.isnan(x).sum()),
        "n_posinf": int(np.isposinf(x).sum()),
        "n_neginf": int(np.isneginf(x).sum()),
    }
    empty = xf.size == 0
    s["mean"] = math.nan if empty else float(np.mean(xf))
    s["min"] = math.nan if empty else float(np.min(xf))
    s["max"] = math.nan if empty else float(np.max(xf))
    for name, q in zip(names, qs):
        s[name] = math.nan if empty else float(np.quantile(xf, q))
    return s


def _quantile_with_inf(t: np.ndarray, q: float) -> float:
    # numpy's default (linear) quantile, except that a position touching an inf value is inf
    # (np.quantile can return nan there: inf - inf).
    if t.size == 0:
        return math.nan
    v = np.sort(t)
    h = (t.size - 1) * q
    lo, hi = math.floor(h), math.ceil(h)
    if not np.isfinite(v[hi]):
        return math.inf
    return float(v[lo] + (h - lo) * (v[hi] - v[lo]))


# --------------------------------------------------------------------------------------------
# Input checks


def _check_count(name: str, x, hi: int | None = None) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise ValueError(f"`{name}` must be a positive int, got {x!r}")
    if x <= 0:
        raise ValueError(f"`{name}` must be > 0, got {x!r}")
    if hi is not None and x > hi:
        raise ValueError(f"`{name}` must be <= {hi}, got {x!r}")
    return int(x)


def _check_key(key) -> None:
    if isinstance(key, jax.core.Tracer):
        raise ValueError("`key` must be a concrete PRNG key (monte_carlo cannot run under jit)")
    if not isinstance(key, (jax.Array, np.ndarray)):
        raise ValueError(f"`key` must be a PRNG key (e.g. `jax.random.key(0)`), got {key!r}")
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"`key` must be a single PRNG key, got a key array of {key.shape}")
        return
    raw_shape = jax.random.key_data(jax.random.key(0)).shape
    if key.dtype != np.uint32 or key.shape != raw_shape:
        raise ValueError(
            "`key` must be a single PRNG key (`jax.random.key(seed)`, or a legacy uint32 "
            f"`PRNGKey` of shape {raw_shape}), got dtype {key.dtype} and shape {key.shape}"
        )


def _key_info(key) -> dict:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        impl = str(jax.random.key_impl(key))
    else:
        impl = str(jax.config.jax_default_prng_impl)
    return {"impl": impl, "data": np.asarray(jax.random.key_data(key)).ravel().tolist()}


def _as_value(name, v):
    if isinstance(v, _ENUM_ITEM):
        # An `eqx.Enumeration` item (e.g. `Solution.result`): store its integer code.
        return v._value
    try:
        return jnp.asarray(v)
    except TypeError as e:
        raise ValueError(
            f"`sample_fn` returned a non-array value for field {name!r}: {type(v).__name__}"
        ) from e


def _per_sample(sample_fn: Callable) -> Callable:
    def one(key):
        out = sample_fn(key)
        if not isinstance(out, Mapping):
            raise ValueError(
                "`sample_fn` must return a dict from field name to a scalar array, got "
                f"{type(out).__name__}"
            )
        return {name: _as_value(name, v) for name, v in out.items()}

    return one


def _check_fields(shapes) -> dict[str, str]:
    if not shapes:
        raise ValueError("`sample_fn` returned an empty dict: there is nothing to collect")
    fields = {}
    for name, s in shapes.items():
        if not isinstance(name, str) or not name or name.startswith("__") or "/" in name:
            raise ValueError(
                f"`sample_fn` field names must be non-empty str without '/' and not starting "
                f"with '__', got {name!r}"
            )
        if s.shape != ():
            raise ValueError(
                f"`sample_fn` must return one scalar per field for one sample; field {name!r} "
                f"has shape {s.shape}. Reduce it (e.g. `jnp.max`) or return one field per entry."
            )
        fields[name] = np.dtype(s.dtype).name
    return fields


def _check_out(out) -> str | None:
    if out is None:
        return None
    out = os.fspath(out)
    if not out.endswith(".npz"):
        raise ValueError(f"`out` must be a path ending in '.npz', got {out!r}")
    d = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(d):
        raise ValueError(f"`out`: the directory {d!r} does not exist")
    return out


def _check_devices(devices) -> list:
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("`devices` must hold at least one device")
    for d in devices:
        if not isinstance(d, jax.Device):
            raise ValueError(f"`devices` must hold `jax.Device`s, got {d!r}")
    return devices


# --------------------------------------------------------------------------------------------
# Saving and resuming


def _fingerprint(ident: dict) -> str:
    text = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _corrupt(out, why) -> ValueError:
    return ValueError(
        f"`out` ({out}) exists but cannot be read as an amcdyn Monte Carlo file ({why}); it was "
        "left untouched. Move or delete it, or pass another `out`."
    )


def _load(out: str, ident: dict, fingerprint: str, done: dict[str, np.ndarray]) -> int:
    """Read a previous run from `out` into `done`; return how many samples it holds."""
    try:
        with np.load(out, allow_pickle=False) as z:
            meta = json.loads(str(z[_META][()]))
    except Exception as e:  # zipfile.BadZipFile, EOFError, OSError, KeyError, JSONDecodeError...
        raise _corrupt(out, f"{type(e).__name__}: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise _corrupt(out, "its metadata is not from amcdyn.monte_carlo")
    if meta.get("fingerprint") != fingerprint:
        old = meta.get("ident")
        old = old if isinstance(old, dict) else {}
        diff = [k for k in ident if old.get(k) != ident[k]] or ["fingerprint"]
        raise ValueError(
            f"`out` ({out}) holds results of a different Monte Carlo configuration (differs in: "
            f"{', '.join(diff)}); refusing to resume into it, nothing was written. Pass another "
            "`out`, or delete the file to start over."
        )
    n_done = meta.get("n_done")
    n_samples = ident["n_samples"]
    if isinstance(n_done, bool) or not isinstance(n_done, int) or not 0 <= n_done <= n_samples:
        raise _corrupt(out, f"n_done = {n_done!r} is not an int in [0, {n_samples}]")
    try:
        with np.load(out, allow_pickle=False) as z:
            arrays = {name: z[name] for name in done}
    except Exception as e:
        raise _corrupt(out, f"{type(e).__name__}: {e}") from e
    for name, x in arrays.items():
        if x.shape != (n_done,) or x.dtype != done[name].dtype:
            raise _corrupt(
                out,
                f"field {name!r} has shape {x.shape} and dtype {x.dtype}, expected ({n_done},) "
                f"and {done[name].dtype}",
            )
        done[name][:n_done] = x
    return n_done


def _save(out: str, meta: dict, done: dict[str, np.ndarray], n_done: int) -> None:
    """Write the first `n_done` samples to `out` atomically (temp file, fsync, rename)."""
    d = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(out) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            arrays = {name: x[:n_done] for name, x in done.items()}
            np.savez(f, **{_META: np.array(json.dumps({**meta, "n_done": n_done}))}, **arrays)
            f.flush()
            os.fsync(f.fileno())
        mode = os.stat(out).st_mode & 0o777 if os.path.exists(out) else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable (POSIX; not possible on every platform).
    with contextlib.suppress(OSError):
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


# --------------------------------------------------------------------------------------------
# Progress


def _open_store(out, config, n_samples, key, fields):
    """The per-sample arrays of a run, its identity (`meta`: format, fingerprint, ident) and
    the number of samples already done (resumed from `out` if it exists; a file of another
    run is refused by `_load`)."""
    done = {name: np.empty((n_samples,), dtype) for name, dtype in fields.items()}
    ident = {
        "config": config,
        "n_samples": n_samples,
        "key": _key_info(key),
        "fields": [[name, dtype] for name, dtype in fields.items()],
    }
    fingerprint = _fingerprint(ident)
    meta = {"format": _FORMAT, "fingerprint": fingerprint, "ident": ident}
    n_done = 0
    if out is not None and os.path.exists(out):
        n_done = _load(out, ident, fingerprint, done)
    return done, meta, n_done


def _fmt_rate(rate: float) -> str:
    """Samples per second with enough digits for slow runs (HP-INV: < 1 sample/s)."""
    if not math.isfinite(rate) or rate >= 100:
        return f"{rate:,.0f}"
    return f"{rate:.1f}" if rate >= 1 else f"{rate:.2g}"


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class _Progress:
    """One status line on stderr: redrawn in place on a terminal, else at most every 5 s."""

    def __init__(self, enabled: bool, n_samples: int, n_start: int):
        self.enabled = enabled
        self.n_samples = n_samples
        self.n_start = n_start
        self.tty = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.last = -math.inf

    def update(self, n_done: int, *, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not (self.tty or final or now - self.last >= 5.0):
            return
        self.last = now
        elapsed = now - self.t0
        rate = (n_done - self.n_start) / elapsed if elapsed > 0 else math.nan
        eta = (self.n_samples - n_done) / rate if rate > 0 else math.inf
        line = (
            f"monte_carlo: {n_done}/{self.n_samples} ({100 * n_done / self.n_samples:.1f}%)  "
            f"{_fmt_rate(rate)} samples/s  elapsed {_fmt_time(elapsed)}  ETA {_fmt_time(eta)}"
        )
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# The engine


def _device_budget(device) -> int:
    try:
        stats = device.memory_stats()
    except Exception:  # not implemented on some backends
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) // 2
    return _CPU_BUDGET


# Compiled chunk functions of recent calls, so that calling `monte_carlo` again with the same
# `sample_fn` (resuming in the same process, another key, more samples) does not recompile. Kept
# small: an entry holds `sample_fn` and whatever it closes over.
_CACHE: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()
_CACHE_SIZE = 8


def _cached(sample_fn, key, extra: tuple, build: Callable[[], Any]) -> Any:
    """`build()`, memoized in `_CACHE` under `sample_fn`, the key's type, the x64 and PRNG
    settings and `extra`. Only plain functions are cached: other callables (e.g. an
    `eqx.Module` with array fields) may be unhashable, or compare equal while holding
    different arrays."""
    if not isinstance(sample_fn, types.FunctionType):
        return build()
    cache_key = (
        sample_fn,
        *extra,
        key.dtype,
        key.shape,
        bool(jax.config.jax_enable_x64),
        str(jax.config.jax_default_prng_impl),
    )
    if cache_key in _CACHE:
        _CACHE.move_to_end(cache_key)
        return _CACHE[cache_key]
    value = _CACHE[cache_key] = build()
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return value


def _compile(sample_fn, key, per_device: int, mesh: Mesh):
    """`jit(vmap(sample_fn))` over `per_device * n_devices` consecutive indices from `start`.

    Returns the compiled function of `(key, start)` and its chunk size.
    """
    size = per_device * mesh.size
    build = lambda: _build_chunk(sample_fn, key, size, mesh)
    return _cached(sample_fn, key, ("chunk", size, mesh), build), size


def _build_chunk(sample_fn, key, size: int, mesh: Mesh):
    one = _per_sample(sample_fn)
    batch = NamedSharding(mesh, PartitionSpec("batch"))
    replicated = NamedSharding(mesh, PartitionSpec())

    def chunk(key, start):
        idx = start + jnp.arange(size, dtype=jnp.uint32)
        idx = jax.lax.with_sharding_constraint(idx, batch)
        return jax.vmap(lambda i: one(jax.random.fold_in(key, i)))(idx)

    specs = (
        jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated),
        jax.ShapeDtypeStruct((), jnp.uint32, sharding=replicated),
    )
    return jax.jit(chunk, out_shardings=batch).lower(*specs).compile()


def _compile_for(sample_fn, key, n_samples, chunk_size, memory_budget, devices):
    """Compile once for `devices`. Default chunk: probe at the cap; shrink (one recompile) only
    if over budget. Returns the compiled chunk, its size and the mesh."""
    mesh = Mesh(np.asarray(devices), ("batch",))
    n_dev = len(devices)
    most = -(-n_samples // n_dev)
    if chunk_size is not None:
        compiled, size = _compile(sample_fn, key, min(-(-chunk_size // n_dev), most), mesh)
        return compiled, size, mesh
    cap = _MAX_PER_DEVICE_CPU if devices[0].platform == "cpu" else _MAX_PER_DEVICE
    per_device = min(cap, most)
    compiled, size = _compile(sample_fn, key, per_device, mesh)
    per_sample = _per_sample_bytes(compiled, per_device)
    budget = memory_budget if memory_budget is not None else _device_budget(devices[0])
    if per_sample is not None and per_sample * per_device > budget:
        per_device = max(1, int(budget // per_sample))
        compiled, size = _compile(sample_fn, key, per_device, mesh)
    return compiled, size, mesh


def _calls_cpu_lapack(compiled) -> bool:
    """Whether a compiled chunk calls a LAPACK kernel (`lapack_sgeev_ffi`, ...).

    On jaxlib 0.10, XLA:CPU's batched LAPACK kernels split their batch over the intra-op pool
    they run on and wait for the pieces: two CPU devices running such a kernel at once wait on
    each other and the process hangs with the CPU idle (measured: an analytic-path Monte Carlo
    on two host devices; see `amcdyn/_linalg.py`, which avoids LAPACK for this reason).
    """
    try:
        text = compiled.as_text()
    except Exception:  # not available on every backend
        return False
    return 'custom_call_target="lapack_' in text


def _fields(sample_fn, key) -> dict[str, str]:
    """The checked field names and dtypes of `sample_fn`'s output (one trace by `eval_shape`).

    Cached for plain functions, like the compiled chunks: tracing the sample function again on
    every call costs milliseconds, which on a run of a thousand fast samples is several
    microseconds per sample.
    """
    build = lambda: _check_fields(jax.eval_shape(_per_sample(sample_fn), key))
    return dict(_cached(sample_fn, key, ("fields",), build))


def _per_sample_bytes(compiled, per_device: int) -> float | None:
    try:
        mem = compiled.memory_analysis()
    except Exception:  # not available on every backend
        return None
    if mem is None:
        return None
    total = mem.temp_size_in_bytes + mem.output_size_in_bytes + mem.argument_size_in_bytes
    return total / per_device


def _to_host(x) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    # Several hosts: every process gathers the whole chunk (only process 0 writes `out`).
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def monte_carlo(
    sample_fn: Callable[[PRNGKeyArray], Mapping[str, Shaped[Array, ""]]],
    key: PRNGKeyArray,
    n_samples: int,
    *,
    chunk_size: int | None = None,
    out: str | os.PathLike | None = None,
    config: Any = None,
    progress: bool = True,
    devices: Sequence[jax.Device] | None = None,
    memory_budget: int | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> MCResult:
    r"""Run `sample_fn` on `n_samples` keys, in compiled, sharded chunks, optionally saving.

    Sample `i` (for `i = 0, ..., n_samples - 1`) is `sample_fn(jax.random.fold_in(key, i))`, so
    the samples are identical whatever the chunk size, the number of devices, and however often
    the run was interrupted and resumed (up to the floating-point reproducibility of the compiled
    code, which is bitwise on CPU in our tests).

    Each chunk is one call of `jax.jit(jax.vmap(sample_fn))`, compiled once: the last chunk is
    padded to full size (the padding samples are computed and dropped). The chunk's batch axis
    is sharded over `devices` with `NamedSharding(Mesh(devices, ("batch",)), P("batch"))`.

    **Arguments:**

    - `sample_fn`: a pure JAX function of one PRNG key returning a dict from field name to a
      scalar array (settling time in s, relative error, bits, status code, energy in J, ...). An
      `eqx.Enumeration` item such as `Solution.result` is stored as its integer code. It is
      traced under `vmap`, so it must not branch in Python on traced values; use
      `throw=False` in the simulators so that one failed sample does not stop the run.
    - `key`: a PRNG key (`jax.random.key(seed)` or a legacy `jax.random.PRNGKey(seed)`).
    - `n_samples`: number of samples, an int in $[1, 2^{32}]$.
    - `chunk_size`: samples per compiled call, rounded up to a multiple of the number of
      devices (and capped at `n_samples` so rounded). Default: at most 4096 samples per device
      (512 on CPU),
      fewer if the compiled call's memory (XLA's memory analysis: arguments, outputs and
      temporaries, scaled per sample) would exceed `memory_budget` per device, and at least one
      sample per device.
    - `out`: a `.npz` path. After every chunk all samples so far are written to a temporary file
      in the same directory, flushed, fsynced and renamed onto `out`, so `out` is always a
      complete file (an interrupted run, `KeyboardInterrupt` included, leaves the last
      complete chunk). If `out` exists the run resumes from it: it must come from the same
      configuration (same `config`, `n_samples`, key and field names/dtypes), else a
      `ValueError` is raised and the file is not touched; a file that cannot be read is
      reported the same way.
    - `config`: a JSON-serializable description of what `sample_fn` simulates (circuit,
      non-idealities, tolerances, ...). It is hashed into the fingerprint that guards resuming;
      `sample_fn` itself cannot be hashed, so describe in `config` everything it depends on.
    - `progress`: print a progress line on stderr (samples done, samples/s, ETA) after every
      chunk (redrawn in place on a terminal, every 5 s otherwise).
    - `devices`: the devices to shard over; default `jax.devices()` (all devices of all hosts).
      On several CPU devices, a `sample_fn` that calls LAPACK (an eigendecomposition:
      [`amcdyn.simulate_analytic`][], or `stability=True`) runs on the first device only, with a
      `RuntimeWarning`: jaxlib 0.10's CPU LAPACK kernels deadlock when several devices run them
      at once. [`amcdyn.simulate_expm`][] with `t_max` and `stability=False` calls none.
    - `memory_budget`: bytes per device for the default chunk size; default half the device's
      `bytes_limit` where it reports one (GPU), else 1 GiB.
    - `callback`: called as `callback(n_done, n_samples)` after each chunk (after it is saved).
      An exception it raises stops the run and propagates, with `out` holding every chunk done.

    **Returns:** an [`amcdyn.MCResult`][].

    **Raises:** `ValueError` for `n_samples` or `chunk_size` that is not a positive int, a bad
    `key`, `out`, `config` or `devices`, a `sample_fn` that does not return a dict of scalars,
    an `out` from a different configuration, or an unreadable `out`.
    """
    n_samples = _check_count("n_samples", n_samples, _MAX_SAMPLES)
    if chunk_size is not None:
        chunk_size = _check_count("chunk_size", chunk_size)
    if memory_budget is not None:
        memory_budget = _check_count("memory_budget", memory_budget)
    if not isinstance(progress, bool):
        raise ValueError(f"`progress` must be a bool, got {progress!r}")
    if callback is not None and not callable(callback):
        raise ValueError(f"`callback` must be callable, got {callback!r}")
    if not callable(sample_fn):
        raise ValueError(f"`sample_fn` must be callable, got {sample_fn!r}")
    _check_key(key)
    out = _check_out(out)
    devices = _check_devices(devices)
    try:
        config = json.loads(json.dumps(config, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"`config` must be JSON-serializable (finite numbers): {e}") from e

    fields = _fields(sample_fn, key)
    done, meta, n_done = _open_store(out, config, n_samples, key, fields)
    n_resumed = n_done
    stats: dict[str, Any] = {
        "chunk_size": 0,
        "n_devices": len(devices),
        "n_resumed": n_resumed,
        "n_computed": 0,
        "compile_s": 0.0,
        "run_s": 0.0,
        "samples_per_s": math.nan,
    }
    if n_done == n_samples:
        return MCResult(samples=done, n_samples=n_samples, stats=stats)

    t = time.perf_counter()
    args = (sample_fn, key, n_samples, chunk_size, memory_budget)
    compiled, size, mesh = _compile_for(*args, devices)
    if len(devices) > 1 and devices[0].platform == "cpu" and _calls_cpu_lapack(compiled):
        warnings.warn(
            "amcdyn.monte_carlo: the sample function calls LAPACK (e.g. an eigendecomposition: "
            "simulate_analytic, or stability=True), and jaxlib's CPU LAPACK kernels deadlock "
            f"when {len(devices)} CPU devices run them at once; running on one device instead "
            "(the samples are the same). Pass t_max and stability=False to simulate_expm to "
            "shard it.",
            RuntimeWarning,
            stacklevel=2,
        )
        devices = devices[:1]
        stats["n_devices"] = 1
        compiled, size, mesh = _compile_for(*args, devices)
    stats["compile_s"] = time.perf_counter() - t
    stats["chunk_size"] = size

    writer = out is not None and jax.process_index() == 0
    n_saved = n_done
    bar = _Progress(progress, n_samples, n_done)
    key = jax.device_put(key, NamedSharding(mesh, PartitionSpec()))
    t0 = time.perf_counter()
    try:
        pending = compiled(key, np.uint32(n_done))
        while n_done < n_samples:
            start = n_done
            nxt = start + size
            # Dispatch the next chunk before blocking on this one (overlaps the host work).
            following = compiled(key, np.uint32(nxt)) if nxt < n_samples else None
            m = min(size, n_samples - start)
            for name, x in pending.items():
                done[name][start : start + m] = _to_host(x)[:m]
            n_done = start + m
            pending = following
            if writer:
                _save(out, meta, done, n_done)
                n_saved = n_done
            bar.update(n_done, final=n_done == n_samples)
            if callback is not None:
                callback(n_done, n_samples)
    finally:
        if bar.tty and n_done < n_samples:
            sys.stderr.write("\n")
        if writer and n_saved < n_done:  # only if a save itself failed; retry once
            with contextlib.suppress(Exception):
                _save(out, meta, done, n_done)
    run_s = time.perf_counter() - t0
    stats["n_computed"] = n_done - n_resumed
    stats["run_s"] = run_s
    stats["samples_per_s"] = stats["n_computed"] / run_s if run_s > 0 else math.nan
    return MCResult(samples=done, n_samples=n_samples, stats=stats)
