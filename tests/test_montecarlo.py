"""`monte_carlo`: chunk/device invariance, resumable saving, summary statistics, bad input."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import amcdyn
from amcdyn._montecarlo import MCResult, monte_carlo


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY_SEED = 1234


def cheap(key):
    """A cheap sample (quick to compile) with float, int and non-finite fields."""
    u = jr.uniform(key, (3,))
    t = jnp.where(u[1] > 0.9, jnp.inf, jnp.where(u[1] < 0.05, jnp.nan, jnp.exp(u[1])))
    return {
        "a": -jnp.log(u[0]),
        "settling_time": t,
        "rel_error": u[2],
        "result": (u[0] > 0.8).astype(jnp.int32),
    }


def circuit_sample(key):
    """A random diagonally dominant 4x4 INV, simulated with the analytic path."""
    k1, k2 = jr.split(key)
    n = 4
    r = jr.uniform(k1, (n, n), minval=-1, maxval=1) * (1 - jnp.eye(n))
    r = r / jnp.sum(jnp.abs(r), axis=1, keepdims=True)
    a = jnp.eye(n) + 0.6 * r
    b = jr.uniform(k2, (n,), minval=-1, maxval=1)
    sol = amcdyn.simulate_analytic(amcdyn.INV.from_matrix(a, b), n_save=0, throw=False)
    return {
        "settling_time": sol.settling_time,
        "rel_error": sol.rel_error,
        "bits": sol.bits,
        "result": sol.result,
    }


def circuit_expm_sample(key):
    """The same circuits on the exact-propagator path without eigenvalues (no LAPACK call), the
    form that shards on CPU devices."""
    k1, k2 = jr.split(key)
    n = 4
    r = jr.uniform(k1, (n, n), minval=-1, maxval=1) * (1 - jnp.eye(n))
    r = r / jnp.sum(jnp.abs(r), axis=1, keepdims=True)
    b = jr.uniform(k2, (n,), minval=-1, maxval=1)
    c = amcdyn.INV.from_matrix(jnp.eye(n) + 0.6 * r, b)
    sol = amcdyn.simulate_expm(c, t_max=2e-7, n_steps=32, stability=False, throw=False)
    return {"settling_time": sol.settling_time, "rel_error": sol.rel_error, "result": sol.result}


def _mc(fn=cheap, n=100, **kw):
    kw.setdefault("progress", False)
    return monte_carlo(fn, jr.key(KEY_SEED), n, **kw)


def _assert_same(r1: MCResult, r2: MCResult):
    assert r1.fields == r2.fields
    for name in r1.fields:
        assert r1[name].dtype == r2[name].dtype
        np.testing.assert_array_equal(r1[name], r2[name], err_msg=name)


def test_chunk_size_invariance_and_reference():
    results = [_mc(chunk_size=c) for c in (1, 7, 64)]
    assert [r.stats["chunk_size"] for r in results] == [1, 7, 64]
    for r in results[1:]:
        _assert_same(results[0], r)
    # Against a direct evaluation with the documented keys.
    keys = jax.vmap(lambda i: jr.fold_in(jr.key(KEY_SEED), i))(jnp.arange(100, dtype=jnp.uint32))
    ref = jax.vmap(cheap)(keys)
    for name in ref:
        np.testing.assert_allclose(results[1][name], np.asarray(ref[name]), rtol=1e-12, atol=0)
    assert results[0].n_samples == 100 and results[0]["a"].shape == (100,)
    assert results[0]["result"].dtype == np.int32


def test_compiled_once_and_default_chunk():
    traces = []

    def counted(key):
        traces.append(1)
        return cheap(key)

    r = _mc(counted, n=100, chunk_size=7)  # last chunk padded: 15 chunks, one compile
    assert len(traces) == 2  # one eval_shape + one compile
    traces.clear()
    # The output structure is cached with the function: a later call traces only to compile
    # its new chunk size, and not at all when that is compiled already.
    r_default = _mc(counted, n=100)
    assert len(traces) == 1 and r_default.stats["chunk_size"] == 100
    _assert_same(r, r_default)
    traces.clear()
    _assert_same(r, _mc(counted, n=100))
    assert len(traces) == 0
    # A tiny memory budget shrinks the default chunk (one recompile), down to 1 per device.
    r_small = _mc(counted, n=5, memory_budget=1)
    assert r_small.stats["chunk_size"] == 1 and len(traces) == 2
    np.testing.assert_array_equal(r_small["a"], r["a"][:5])


@pytest.fixture(scope="module")
def circuit_run():
    """One device, one chunk; shared by the tests below (the circuit path compiles slowly)."""
    return _mc(circuit_sample, n=12, chunk_size=12)


def test_circuit_path(circuit_run):
    r8 = circuit_run
    assert r8["result"].dtype.kind == "i"
    for i in (0, 7):  # eager, unbatched reference
        sol = circuit_sample(jr.fold_in(jr.key(KEY_SEED), i))
        np.testing.assert_allclose(r8["settling_time"][i], sol["settling_time"], rtol=1e-12)
        # rel_error = |x - x*|/|x*| ~ 2e-5 is a difference of nearly equal numbers: batched and
        # unbatched solves may sum in another order, so compare it to 1e-14 of |x| (absolute).
        np.testing.assert_allclose(r8["rel_error"][i], sol["rel_error"], rtol=0, atol=1e-14)
    s = r8.summary(max_rel_error=1e-3)
    assert s["yield"] == 1.0 and s["status_counts"] == {"settled": 12}
    assert np.all(np.isfinite(r8["settling_time"])) and np.all(r8["settling_time"] > 0)
    assert s["settle_all"]["p95"] == pytest.approx(np.quantile(r8["settling_time"], 0.95))


_CHILD = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {tests!r})
    from amcdyn._xla_flags import disable_cpu_eigen_threads
    disable_cpu_eigen_threads()
    import jax
    jax.config.update("jax_enable_x64", True)
    import warnings
    import numpy as np
    import pytest
    import test_montecarlo as t
    assert len(jax.devices()) == 4, jax.devices()
    out = {{}}
    for name, fn, n, chunk, size in (
        ("cheap", t.cheap, 50, 6, 8),  # rounded up to a multiple of the devices
        ("expm", t.circuit_expm_sample, 12, 4, 4),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            r = t._mc(fn, n=n, chunk_size=chunk)
        assert r.stats["n_devices"] == 4 and r.stats["chunk_size"] == size, r.stats
        out.update({{name + "." + k: v for k, v in r.samples.items()}})
    # The analytic path calls LAPACK (eig), which deadlocks on several CPU devices at once
    # (jaxlib 0.10): the engine warns and runs it on one device.
    with pytest.warns(RuntimeWarning, match="LAPACK"):
        r = t._mc(t.circuit_sample, n=12, chunk_size=4)
    assert r.stats["n_devices"] == 1 and r.stats["chunk_size"] == 4, r.stats
    out.update({{"circuit." + k: v for k, v in r.samples.items()}})
    np.savez({path!r}, **out)
    """
)


def test_four_host_devices(tmp_path, circuit_run):
    path = str(tmp_path / "four.npz")
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    code = _CHILD.format(tests=os.path.join(REPO, "tests"), path=path)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    four = np.load(path)
    expm = _mc(circuit_expm_sample, n=12, chunk_size=12)
    assert np.all(np.asarray(expm["result"]) == 0)  # settled: the shards compare real values
    for name, one in (
        ("cheap", _mc(n=50, chunk_size=50)),
        ("expm", expm),
        ("circuit", circuit_run),
    ):
        for k, v in one.samples.items():
            got = four[name + "." + k]
            assert got.dtype == v.dtype
            # Per-device shards are smaller batches, which XLA may vectorize with another
            # summation order: equal to 1e-12, and rel_error (a cancellation, see above) to 1e-14
            # absolute.
            atol = 1e-14 if k == "rel_error" else 0
            np.testing.assert_allclose(got, v, rtol=1e-12, atol=atol, err_msg=f"{name}.{k}")


class _Stop(Exception):
    pass


def _stop_after(k, exc=_Stop):
    def callback(n_done, n_samples):
        if n_done >= k:
            raise exc(n_done)

    return callback


def _meta(path):
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["__meta__"][()])), {k: z[k] for k in z.files if k != "__meta__"}


def test_resume_after_interruption(tmp_path):
    out = tmp_path / "mc.npz"
    full = _mc(chunk_size=16)
    config = {"circuit": "cheap", "sigma": 0.1}
    with pytest.raises(_Stop):
        _mc(chunk_size=16, out=out, config=config, callback=_stop_after(40))
    meta, arrays = _meta(out)
    assert meta["n_done"] == 48 and arrays["a"].shape == (48,)
    np.testing.assert_array_equal(arrays["a"], full["a"][:48])
    assert not [p for p in os.listdir(tmp_path) if p != "mc.npz"]  # no temp file left
    # Ctrl-C between chunks also leaves a complete file; resume with another chunk size.
    with pytest.raises(KeyboardInterrupt):
        _mc(chunk_size=7, out=out, config=config, callback=_stop_after(60, KeyboardInterrupt))
    assert _meta(out)[0]["n_done"] == 48 + 14
    resumed = _mc(chunk_size=9, out=out, config=config)
    assert resumed.stats["n_resumed"] == 62 and resumed.stats["n_computed"] == 38
    _assert_same(resumed, full)
    meta, arrays = _meta(out)
    assert meta["n_done"] == 100
    np.testing.assert_array_equal(arrays["settling_time"], full["settling_time"])
    # A finished file is returned as is, without computing.
    again = _mc(out=out, config=config)
    assert again.stats["n_computed"] == 0 and again.stats["n_resumed"] == 100
    _assert_same(again, full)


def test_refuses_other_configuration(tmp_path):
    out = tmp_path / "mc.npz"
    with pytest.raises(_Stop):
        _mc(n=20, chunk_size=5, out=out, config={"n": 4}, callback=_stop_after(5))
    before = out.read_bytes()
    mtime = os.stat(out).st_mtime_ns
    with pytest.raises(ValueError, match="different Monte Carlo configuration.*config"):
        _mc(n=20, out=out, config={"n": 5})
    with pytest.raises(ValueError, match="different Monte Carlo configuration.*n_samples"):
        _mc(n=21, out=out, config={"n": 4})
    with pytest.raises(ValueError, match="different Monte Carlo configuration.*key"):
        monte_carlo(cheap, jr.key(0), 20, out=out, config={"n": 4}, progress=False)
    with pytest.raises(ValueError, match="different Monte Carlo configuration.*fields"):
        _mc(lambda k: {"a": cheap(k)["a"]}, n=20, out=out, config={"n": 4})
    assert out.read_bytes() == before and os.stat(out).st_mtime_ns == mtime


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "short_field"])
def test_corrupted_file_untouched(tmp_path, damage):
    out = tmp_path / "mc.npz"
    if damage == "foreign":
        np.savez(out, a=np.zeros(3))
    else:
        with pytest.raises(_Stop):
            _mc(n=20, chunk_size=5, out=out, callback=_stop_after(10))
        data = out.read_bytes()
        if damage == "garbage":
            out.write_bytes(b"not a zip file at all" * 10)
        elif damage == "truncated":
            out.write_bytes(data[: len(data) // 2])
        else:
            meta, arrays = _meta(out)
            arrays["a"] = arrays["a"][:3]
            np.savez(out, __meta__=np.array(json.dumps(meta)), **arrays)
    before = out.read_bytes()
    with pytest.raises(ValueError, match="cannot be read"):
        _mc(n=20, chunk_size=5, out=out)
    assert out.read_bytes() == before
    assert os.listdir(tmp_path) == ["mc.npz"]


def test_summary_vs_numpy():
    r = _mc(n=400, chunk_size=128)
    qs = (0.05, 0.25, 0.5, 0.95)
    s = r.summary(qs)
    t = r["settling_time"]
    fin = t[np.isfinite(t)]
    st = s["fields"]["settling_time"]
    assert 0 < st["n_nan"] and 0 < st["n_posinf"] and st["n_neginf"] == 0
    assert st["n_finite"] + st["n_nan"] + st["n_posinf"] == 400
    for q, name in zip(qs, ("p5", "p25", "p50", "p95")):
        assert st[name] == pytest.approx(np.quantile(fin, q), rel=1e-12)
        assert s["fields"]["a"][name] == pytest.approx(np.quantile(r["a"], q), rel=1e-12)
    assert st["mean"] == pytest.approx(np.mean(fin), rel=1e-12)
    ok = r["result"] == 0
    assert s["yield"] == pytest.approx(np.mean(ok))
    assert s["status_counts"] == {"settled": int(ok.sum()), "not_settled": int((~ok).sum())}
    assert r.summary(max_rel_error=0.5)["yield"] == pytest.approx(
        np.mean(ok & (r["rel_error"] <= 0.5))
    )
    assert s["yield_stderr"] == pytest.approx(np.sqrt(s["yield"] * (1 - s["yield"]) / 400))
    # settle_all counts unsettled samples (non-finite or status != 0) as +inf.
    t_all = np.where(np.isfinite(t) & ok, t, 1e300)
    assert s["settle_all"]["p5"] == pytest.approx(np.quantile(t_all, 0.05), rel=1e-12)
    assert s["settle_all"]["p95"] == np.inf
    json.dumps(s)  # JSON-ready
    # Generic: no status field means no yield.
    r2 = _mc(lambda k: {"x": jr.normal(k)}, n=10)
    s2 = r2.summary()
    assert s2["yield"] is None and "settle_all" not in s2
    with pytest.raises(ValueError, match="error_field"):
        r2.summary(max_rel_error=0.1)
    with pytest.raises(ValueError, match="quantiles"):
        r2.summary((0.5, 1.5))


def test_progress_line(capsys):
    _mc(n=20, chunk_size=8, progress=True)
    err = capsys.readouterr().err
    assert "20/20 (100.0%)" in err and "samples/s" in err and "ETA" in err
    _mc(n=20, chunk_size=8, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("n", [0, -3, 2.5, True, "10", None])
def test_bad_n_samples(n):
    with pytest.raises(ValueError, match="`n_samples`"):
        monte_carlo(cheap, jr.key(0), n, progress=False)


@pytest.mark.parametrize("c", [0, -1, 1.5])
def test_bad_chunk_size(c):
    with pytest.raises(ValueError, match="`chunk_size`"):
        monte_carlo(cheap, jr.key(0), 10, chunk_size=c, progress=False)


def test_bad_input(tmp_path):
    key = jr.key(0)
    with pytest.raises(ValueError, match="field 'v' has shape \\(3,\\)"):
        monte_carlo(lambda k: {"v": jr.normal(k, (3,))}, key, 10, progress=False)
    with pytest.raises(ValueError, match="must return a dict"):
        monte_carlo(lambda k: jr.normal(k), key, 10, progress=False)
    with pytest.raises(ValueError, match="empty dict"):
        monte_carlo(lambda k: {}, key, 10, progress=False)
    with pytest.raises(ValueError, match="non-array value for field 's'"):
        monte_carlo(lambda k: {"s": "text"}, key, 10, progress=False)
    with pytest.raises(ValueError, match="`key`"):
        monte_carlo(cheap, 0, 10, progress=False)
    with pytest.raises(ValueError, match="`key`"):
        monte_carlo(cheap, jr.split(key, 3), 10, progress=False)
    with pytest.raises(ValueError, match="`config`"):
        monte_carlo(cheap, key, 10, config={"f": cheap}, progress=False)
    with pytest.raises(ValueError, match="`out`"):
        monte_carlo(cheap, key, 10, out=tmp_path / "x.npy", progress=False)
    with pytest.raises(ValueError, match="`out`"):
        monte_carlo(cheap, key, 10, out=tmp_path / "nodir" / "x.npz", progress=False)
    with pytest.raises(ValueError, match="`devices`"):
        monte_carlo(cheap, key, 10, devices=[], progress=False)
    with pytest.raises(ValueError, match="`sample_fn`"):
        monte_carlo(None, key, 10, progress=False)
    # A legacy uint32 key works and gives the same samples as the typed key.
    r_legacy = monte_carlo(cheap, jr.PRNGKey(KEY_SEED), 10, progress=False)
    _assert_same(r_legacy, _mc(n=10))
    assert os.listdir(tmp_path) == []
