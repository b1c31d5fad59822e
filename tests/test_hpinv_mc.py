"""Monte Carlo of HP-INV (`amcdyn._hpinv.hpinv_monte_carlo`) and `amcdyn mc hpinv`.

HP-INV's refinement loop stops on a concrete test, so its samples run in a host loop (not the
batched engine); these tests check that this loop is the engine's contract all the same:
sample i is `hpinv_solve` with the key `fold_in(key, i)`, nothing is recompiled per sample,
interrupted runs resume to identical results, and the CLI report has the fields of every other
`amcdyn mc` circuit. One 4 x 4 problem with no negative entry, the analytic path and the
defaults of the CLI (3-bit cells, A0 = 1e5, 100 MHz, tol 1e-3) throughout, so that one
compiled set of steps serves the whole file (the first sample compiles, ~20 s; later samples
take ~0.05 s each).
"""

import hashlib
import json
import logging
import os

import jax
import jax.random as jr
import numpy as np
import pytest
from helpers import cli, strict_json, well_conditioned

import amcdyn
from amcdyn._hpinv import HP_STATUS, hpinv_mc_summary, hpinv_monte_carlo, hpinv_solve


N = 4
A = well_conditioned(N, 0)  # I + 0.8 R, R >= 0: a stable INV, no inverters
B = np.random.default_rng(1).uniform(-1.0, 1.0, N)
SEED = 3
SAMPLES = 6
SIGMA = 0.05
# The CLI's options (analytic path, A0 and GBW given explicitly, the rest hpinv_solve's
# defaults), so the CLI runs reuse the library runs' compiled steps.
OPTS = dict(method="analytic", a0=1e5, f_gbw=1e8)
FIELDS = (
    "settling_time",
    "analog_time",
    "energy",
    "rel_error",
    "bits",
    "contraction",
    "max_abs_output",
    "cycles",
    "status",
)


def _key():
    return jr.key(SEED)


def _variation(sigma=SIGMA):
    return amcdyn.Variation(sigma)


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _load(path):
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"][()]))
        return meta, {k: z[k] for k in z.files if k != "__meta__"}


class _Compiles(logging.Handler):
    """Counts XLA compilations (`jax.log_compiles` messages) per sample index."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.sample = 0
        self.counts: dict[int, int] = {}

    def emit(self, record):
        if record.getMessage().startswith("Compiling "):
            self.counts[self.sample] = self.counts.get(self.sample, 0) + 1

    def callback(self, n_done, n_samples):
        self.sample = n_done  # the next compilations belong to sample n_done


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """One uninterrupted run of SAMPLES samples into `full.npz`, counting compilations."""
    out = str(tmp_path_factory.mktemp("hpinv_mc") / "full.npz")
    compiles = _Compiles()
    logger = logging.getLogger("jax")
    logger.addHandler(compiles)
    try:
        with jax.log_compiles(True):
            res = hpinv_monte_carlo(
                A,
                B,
                _key(),
                SAMPLES,
                variation=_variation(),
                out=out,
                progress=False,
                callback=compiles.callback,
                **OPTS,
            )
    finally:
        logger.removeHandler(compiles)
    return dict(res=res, out=out, compiles=compiles.counts)


def test_samples_are_direct_solves_with_folded_keys(full):
    res = full["res"]
    assert res.n_samples == SAMPLES and set(res.fields) == set(FIELDS)
    for i in (0, SAMPLES - 1):
        sol = hpinv_solve(A, B, variation=_variation(), key=jr.fold_in(_key(), i), **OPTS)
        expect = {
            "settling_time": sol.settling_time,
            "analog_time": sol.analog_time,
            "energy": sol.energy,
            "rel_error": sol.rel_error,
            "bits": sol.bits,
            "contraction": sol.contraction,
            "max_abs_output": sol.max_abs_voltage,
            "cycles": sol.cycles,
            "status": HP_STATUS.index(sol.status),
        }
        for name, v in expect.items():
            # Same compiled programs on the same inputs: bitwise equal on CPU.
            assert res[name][i] == np.asarray(v), (i, name)
    # Each sample draws its own devices: the contraction factor of the programmed LP-INV (and
    # hence the error) differs between samples; all converge (rho ~ 0.1 << 1 at 5 %).
    assert len(set(res["contraction"].tolist())) == SAMPLES
    assert np.all(res["status"] == HP_STATUS.index("converged"))
    assert np.all(res["bits"] >= 24) and np.all(res["contraction"] < 1)
    # Total time = analog settling + one HP-MVM (t_mvm = 60 ns) per cycle.
    np.testing.assert_allclose(
        res["settling_time"], res["analog_time"] + 60e-9 * res["cycles"], rtol=1e-12
    )  # rounding of the per-cycle sums only


def test_no_recompilation_per_sample(full):
    # Sample 0 compiles every step (unless an earlier test did); samples 1.. reuse all of it.
    later = {i: c for i, c in full["compiles"].items() if i >= 1}
    assert later == {}, later
    t = full["res"].stats["sample_s"]
    assert len(t) == SAMPLES
    print(f"sample wall times (s): {[round(x, 3) for x in t]}")
    if full["compiles"].get(0):  # sample 0 compiled: the others are far faster
        assert max(t[1:]) < 0.5 * t[0], t


def test_summary_against_numpy(full):
    res = full["res"]
    s = hpinv_mc_summary(res, max_rel_error=2.0**-26)
    bits = res["bits"]
    np.testing.assert_allclose(
        [s["fields"]["bits"][k] for k in ("p5", "p50", "p95")],
        np.quantile(bits, [0.05, 0.5, 0.95]),
        rtol=1e-12,
    )  # same numpy quantile rule, rounding only
    assert s["status_counts"] == {
        name: (SAMPLES if name == "converged" else 0) for name in HP_STATUS
    }
    expect = np.mean(res["rel_error"] <= 2.0**-26)
    assert s["yield"] == pytest.approx(expect, abs=0)
    assert s["settle_all"]["p50"] == pytest.approx(np.median(res["settling_time"]), rel=1e-12)


def test_resume_after_interruption_is_identical(full, tmp_path):
    out = str(tmp_path / "part.npz")

    def stop_after(k):
        def callback(n_done, n_samples):
            if n_done == k:
                raise KeyboardInterrupt

        return callback

    with pytest.raises(KeyboardInterrupt):
        hpinv_monte_carlo(
            A,
            B,
            _key(),
            SAMPLES,
            variation=_variation(),
            out=out,
            progress=False,
            callback=stop_after(2),
            **OPTS,
        )
    meta, arrays = _load(out)
    assert meta["n_done"] == 2 and arrays["bits"].shape == (2,)
    with pytest.raises(RuntimeError, match="stop"):  # a second interruption, after sample 4

        def stop(n_done, n_samples):
            if n_done == 4:
                raise RuntimeError("stop")

        hpinv_monte_carlo(
            A,
            B,
            _key(),
            SAMPLES,
            variation=_variation(),
            out=out,
            progress=False,
            callback=stop,
            **OPTS,
        )
    assert _load(out)[0]["n_done"] == 4
    res = hpinv_monte_carlo(
        A, B, _key(), SAMPLES, variation=_variation(), out=out, progress=False, **OPTS
    )
    assert res.stats["n_resumed"] == 4 and res.stats["n_computed"] == SAMPLES - 4
    full_arrays = _load(full["out"])[1]
    for name in FIELDS:
        np.testing.assert_array_equal(res[name], full["res"][name], err_msg=name)
        np.testing.assert_array_equal(_load(out)[1][name], full_arrays[name], err_msg=name)
    # A complete file: nothing is recomputed.
    again = hpinv_monte_carlo(
        A, B, _key(), SAMPLES, variation=_variation(), out=out, progress=False, **OPTS
    )
    assert again.stats["n_computed"] == 0 and again.stats["n_resumed"] == SAMPLES


def test_progress_line(capsys):
    hpinv_monte_carlo(A, B, _key(), 2, variation=_variation(), progress=True, **OPTS)
    err = capsys.readouterr().err
    assert "monte_carlo: 2/2 (100.0%)" in err and "samples/s" in err and "ETA" in err


def test_not_traceable_says_so():
    # A host-level loop (it stops on concrete tests): under jit the key is a tracer, which the
    # engine's key check refuses with a message instead of failing deep inside the loop.
    with pytest.raises(ValueError, match="`key` must be a concrete PRNG key"):
        jax.jit(lambda k: hpinv_monte_carlo(A, B, k, 2, progress=False, **OPTS))(_key())


@pytest.mark.parametrize(
    "change, differs",
    [
        (dict(variation=_variation(0.1)), "config"),
        (dict(key=jr.key(SEED + 1)), "key"),
        (dict(n_samples=SAMPLES + 1), "n_samples"),
        (dict(bits=4), "config"),
    ],
)
def test_refuses_another_configuration(full, change, differs):
    out = full["out"]
    before, mtime = _sha(out), os.path.getmtime(out)
    kwargs = dict(variation=_variation(), **OPTS)
    key, n = change.pop("key", _key()), change.pop("n_samples", SAMPLES)
    kwargs.update(change)
    with pytest.raises(ValueError, match=rf"different Monte Carlo configuration.*{differs}"):
        hpinv_monte_carlo(A, B, key, n, out=out, progress=False, **kwargs)
    assert _sha(out) == before and os.path.getmtime(out) == mtime


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((A, B, jr.key(0), 0), {}, "`n_samples`"),
        ((A, B, jr.key(0), 2.5), {}, "`n_samples`"),
        ((A, B, 0, 2), {}, "`key`"),
        ((A, B, jr.key(0), 2), dict(variation=0.05), "`variation`"),
        ((A, B, jr.key(0), 2), dict(out="x.txt"), "`out`"),
        ((A, B, jr.key(0), 2), dict(progress="yes"), "`progress`"),
        ((A, B, jr.key(0), 2), dict(callback=3), "`callback`"),
        ((A[:, :3], B, jr.key(0), 2), {}, "`a`"),
        ((A, np.full(N, np.nan), jr.key(0), 2), {}, "`b`"),
        ((A, B, jr.key(0), 2), dict(bits=0), "`bits`"),
        ((A, B, jr.key(0), 2), dict(g0=1e-4), "`g0`"),
    ],
)
def test_bad_input(args, kwargs, match, tmp_path):
    kwargs = dict(dict(out=str(tmp_path / "bad.npz"), progress=False), **kwargs)
    with pytest.raises(ValueError, match=match):
        hpinv_monte_carlo(*args, **kwargs)
    assert not os.path.exists(tmp_path / "bad.npz")  # nothing written


# --------------------------------------------------------------------------------------------
# The command line


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hpinv_cli")
    np.save(d / "a.npy", A)
    np.save(d / "b.npy", B)
    return dict(dir=d, a=str(d / "a.npy"), b=str(d / "b.npy"))


def _mc(files, circuit="hpinv", *extra, samples=SAMPLES):
    return (
        "mc",
        circuit,
        "--matrix",
        files["a"],
        "--rhs",
        files["b"],
        "--samples",
        samples,
        "--sigma",
        SIGMA,
        "--seed",
        SEED,
        "--json",
        "--no-progress",
        *extra,
    )


def _stat_keys(report):
    """The report's fields, and the keys of its dict-valued fields (not status_counts)."""
    return {
        k: sorted(v) if isinstance(v, dict) and k != "status_counts" else None
        for k, v in report.items()
    }


def test_cli_is_the_library_run_with_blockamc_fields(full, files):
    out = str(files["dir"] / "cli.npz")
    rc, text, err = cli(*_mc(files, "hpinv", "--out", out))
    assert rc == 0, err
    r = strict_json(text)
    # The CLI's sample i is the library's sample i (same seed, same defaults).
    stored = _load(out)[1]
    for name in FIELDS:
        np.testing.assert_array_equal(stored[name], full["res"][name], err_msg=name)
    bits = full["res"]["bits"]
    assert r["bits"]["p50"] == pytest.approx(np.quantile(bits, 0.5), rel=1e-12)
    assert r["bits"]["min"] == bits.min() and r["bits"]["n_finite"] == SAMPLES
    assert r["samples"] == SAMPLES and r["yield"] == 1.0 and r["yield_criterion"] == "converged"
    assert r["status_counts"] == {n: (SAMPLES if n == "converged" else 0) for n in HP_STATUS}
    # The nominal solve (no variation) converges with a smaller error than the worst sample.
    assert r["nominal"]["status"] == "converged"
    assert r["nominal"]["rel_error"] < r["rel_error"]["max"]
    assert r["stats"]["n_computed"] == SAMPLES and r["out"] == out

    # A 2 x 2 BlockAMC without variation compiles fastest; the fields do not depend on it.
    argv = ("mc", "blockamc", "--matrix", "random-dd:2", "--samples", 1, "--json")
    rc, text_b, err = cli(*argv, "--no-progress")
    assert rc == 0, err
    assert _stat_keys(r) == _stat_keys(strict_json(text_b))

    # --min-bits: the yield counts converged samples with bits >= B.
    cut = float(np.median(bits))
    rc, text, err = cli(*_mc(files, "hpinv", "--min-bits", cut))
    assert rc == 0, err
    r = strict_json(text)
    assert r["yield"] == pytest.approx(np.mean(bits >= cut), abs=0)
    assert r["yield_criterion"] == f"converged and bits >= {cut:g}"


def test_cli_resume_and_refuse(full, files):
    src = str(files["dir"] / "cli.npz")
    if not os.path.exists(src):
        pytest.skip("needs test_cli_is_the_library_run_with_blockamc_fields")
    # An interrupted run: the file holds the first 2 samples.
    part = str(files["dir"] / "cli_part.npz")
    meta, arrays = _load(src)
    meta["n_done"] = 2
    np.savez(part, __meta__=np.array(json.dumps(meta)), **{k: v[:2] for k, v in arrays.items()})
    rc, text, err = cli(*_mc(files, "hpinv", "--out", part))
    assert rc == 0, err
    r = strict_json(text)
    assert r["stats"]["n_resumed"] == 2 and r["stats"]["n_computed"] == SAMPLES - 2
    for name in FIELDS:
        np.testing.assert_array_equal(_load(part)[1][name], full["res"][name], err_msg=name)
    before = _sha(part)
    rc, text, err = cli(*_mc(files, "hpinv", "--out", part, "--bits", "4"))
    assert rc == 2 and text == "" and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("amcdyn mc hpinv: error: argument --out:"), last
    assert "different Monte Carlo configuration" in last
    assert _sha(part) == before


@pytest.mark.parametrize(
    "extra, flag",
    [
        (("--samples", "0"), "--samples"),
        (("--bits", "0"), "--bits"),
        (("--sigma", "-0.1"), "--sigma"),
        (("--offset-v", "1e-3"), "--offset-v"),
        (("--levels", "8"), "--levels"),
        (("--out", "x.txt"), "--out"),
        (("--min-bits", "0"), "--min-bits"),
    ],
)
def test_cli_bad_input_exits_2(files, extra, flag):
    rc, out, err = cli("mc", "hpinv", "--matrix", files["a"], "--no-progress", *extra)
    assert rc == 2 and out == "", err
    assert f"argument {flag}" in err and "Traceback" not in err, err
