"""Monte Carlo of one circuit: `amcdyn.monte_carlo_circuit` (amcdyn._mc) and `amcdyn mc`.

Compilation dominates, so the tests share a few configurations: a 4 x 4 INV on the `expm` path
with 8 samples in chunks of 8 (one compilation per configuration, reused across seeds and
resumes), and the analytic path for `amcdyn simulate`.
"""

import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import cli, strict_json as _strict_json, user_environment

import amcdyn
from amcdyn import _matrices as M
from amcdyn._mc import monte_carlo_circuit, perturb_circuit


N_MC = 8
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("mc")
    a = M.random_dd(4, seed=1)
    b = np.array([0.3, -0.2, 0.5, 0.1])
    w = np.array([[0.5, -0.25, 1.0], [-1.0, 0.75, 0.0]])
    x = np.array([0.2, -0.4, 0.6])
    paths = {}
    for name, arr in dict(a=a, b=b, w=w, x=x).items():
        np.save(d / f"{name}.npy", arr)
        paths[name] = str(d / f"{name}.npy")
    return dict(dir=d, a_arr=a, b_arr=b, w_arr=w, x_arr=x, **paths)


def _mc_args(data, *extra, seed=3, sigma=0.05, samples=N_MC):
    return ("mc", "inv", "--matrix", data["a"], "--rhs", data["b"], "--samples", samples,
            "--sigma", sigma, "--seed", seed, "--chunk-size", 8, "--no-progress", *extra)


@pytest.fixture(scope="module")
def base_run(data):
    """The shared run: 8 samples, sigma 0.05, seed 3, saved, with histograms."""
    out = data["dir"] / "base.npz"
    png = data["dir"] / "hist.png"
    rc, stdout, err = cli(*_mc_args(data, "--out", out, "--plot", png, "--json"))
    assert rc == 0, err
    return dict(report=_strict_json(stdout), out=out, png=png, a=data["a"], b=data["b"])


def _load(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if not k.startswith("__")}


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---------------------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------------------


def test_sigma0_equals_nominal_inv_and_mvm(data):
    """Zero variation and zero offsets: every sample is the nominal simulation."""
    key = jax.random.key(0)
    prog = amcdyn.Programming((amcdyn.Variation(0.0),))
    inv = amcdyn.INV.from_matrix(data["a_arr"], data["b_arr"])
    mvm = amcdyn.MVM.from_matrix(data["w_arr"], data["x_arr"])
    for circuit in (inv, mvm):
        t_max = 2 * float(amcdyn.simulate_analytic(circuit, n_save=0).t_max)
        res = monte_carlo_circuit(circuit, key, N_MC, programming=prog, offset_sigma=0.0,
                                  method="expm", progress=False)
        assert res.fields == ("bits", "energy", "max_abs_output", "rel_error", "result",
                              "settling_time")
        nom = amcdyn.simulate_expm(circuit, t_max=t_max, save=True, stability=False,
                                   throw=False)
        assert nom.status == "settled"
        np.testing.assert_array_equal(res["result"], 0)
        for field, value in (("settling_time", nom.settling_time),
                             ("rel_error", nom.rel_error), ("bits", nom.bits)):
            np.testing.assert_allclose(res[field], float(value), rtol=1e-9, err_msg=field)
        peak = max(float(np.max(np.abs(nom.vs))), float(np.max(np.abs(nom.v_final))))
        np.testing.assert_allclose(res["max_abs_output"], peak, rtol=1e-9)
        energy = getattr(nom, "energy", None)
        if energy is not None:
            np.testing.assert_allclose(res["energy"], float(energy), rtol=1e-6)


def test_perturb_circuit_keeps_absent_devices_and_draws_offsets(data):
    inv = amcdyn.INV.from_matrix(data["a_arr"], data["b_arr"])
    prog = amcdyn.Programming((amcdyn.Variation(0.1, kind="lognormal"),))
    c = perturb_circuit(inv, jax.random.key(1), programming=prog, offset_sigma=1e-3)
    for name in ("g_pos", "g_neg"):
        nominal, varied = np.asarray(getattr(inv, name)), np.asarray(getattr(c, name))
        np.testing.assert_array_equal(varied == 0, nominal == 0)  # absent stays absent
        assert not np.allclose(varied[nominal > 0], nominal[nominal > 0])
    assert np.shape(c.amp.v_os) == (4,) and np.shape(c.inverter.v_os) == (4,)
    assert 0 < np.std(np.asarray(c.amp.v_os)) < 1e-2
    # The conductance draws do not depend on whether offsets are drawn too.
    c2 = perturb_circuit(inv, jax.random.key(1), programming=prog)
    np.testing.assert_array_equal(np.asarray(c2.g_pos), np.asarray(c.g_pos))
    np.testing.assert_array_equal(np.asarray(c.a), np.asarray(inv.a))  # ideal answer kept
    with pytest.raises(ValueError, match="offset_sigma"):
        monte_carlo_circuit(inv, jax.random.key(0), 4, offset_sigma=-1.0)
    with pytest.raises(ValueError, match="method"):
        monte_carlo_circuit(inv, jax.random.key(0), 4, method="euler")
    with pytest.raises(ValueError, match="programming"):
        monte_carlo_circuit(inv, jax.random.key(0), 4, programming=0.05)


# ---------------------------------------------------------------------------------------
# amcdyn mc
# ---------------------------------------------------------------------------------------


def test_json_summary_matches_npz_samples(base_run):
    r, s = base_run["report"], _load(base_run["out"])
    assert r["samples"] == N_MC and r["circuit"] == "inv" and r["n"] == 4
    assert set(s) == {"bits", "energy", "max_abs_output", "rel_error", "result",
                      "settling_time"}
    assert all(v.shape == (N_MC,) for v in s.values())
    for field, key in (("settling_time", "settling_time_s"), ("rel_error", "rel_error"),
                       ("bits", "bits"), ("energy", "energy_j"),
                       ("max_abs_output", "max_abs_output_v")):
        x = s[field][np.isfinite(s[field])]
        for q in (5, 50, 95):
            got = r[key][f"p{q}"]
            if x.size == 0:
                assert got is None
            else:
                assert got == pytest.approx(float(np.quantile(x, q / 100)), rel=1e-12)
    assert r["yield"] == pytest.approx(float(np.mean(s["result"] == 0)))
    assert r["yield_criterion"] == "settled"
    assert r["status_counts"]["settled"] == int(np.sum(s["result"] == 0))
    assert sum(r["status_counts"].values()) == N_MC
    # A 5 % variation costs far more precision than the nominal circuit's finite gain.
    assert r["nominal"]["status"] == "settled"
    assert r["rel_error"]["p50"] > 100 * r["nominal"]["rel_error"]
    nominal = amcdyn.INV.from_matrix(np.load(base_run["a"]), np.load(base_run["b"]))
    assert r["t_max_s"] == pytest.approx(2 * float(amcdyn.simulate_analytic(nominal).t_max))
    assert r["nonidealities"]["sigma"] == 0.05 and r["nonidealities"]["seed"] == 3
    assert r["stats"]["n_computed"] == N_MC and r["stats"]["n_resumed"] == 0
    assert r["out"] == str(base_run["out"])


def test_histograms_written(base_run):
    png = base_run["png"]
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 10_000
    assert base_run["report"]["plot"] == str(png)


def test_same_seed_same_samples_other_seed_differs(data, base_run):
    base = _load(base_run["out"])
    again, other = data["dir"] / "again.npz", data["dir"] / "other.npz"
    assert cli(*_mc_args(data, "--out", again, "--json"))[0] == 0
    assert cli(*_mc_args(data, "--out", other, "--json", seed=4))[0] == 0
    same, diff = _load(again), _load(other)
    for field in base:
        np.testing.assert_array_equal(same[field], base[field], err_msg=field)
    assert not np.array_equal(diff["rel_error"], base["rel_error"])


def test_resume_and_refuse_other_config(data, base_run):
    full = _load(base_run["out"])
    # An interrupted run: the file holds the first 4 samples (as the engine writes after a
    # chunk of 4).
    part = data["dir"] / "part.npz"
    with np.load(base_run["out"], allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"][()]))
        meta["n_done"] = 4
        arrays = {k: z[k][:4] for k in z.files if k != "__meta__"}
    np.savez(part, __meta__=np.array(json.dumps(meta)), **arrays)
    rc, out, err = cli(*_mc_args(data, "--out", part, "--json"))
    assert rc == 0, err
    r = _strict_json(out)
    assert r["stats"]["n_resumed"] == 4 and r["stats"]["n_computed"] == 4
    resumed = _load(part)
    for field in full:
        np.testing.assert_array_equal(resumed[field], full[field], err_msg=field)
    # A complete file: nothing left to compute.
    rc, out, _ = cli(*_mc_args(data, "--out", part, "--json"))
    assert rc == 0 and _strict_json(out)["stats"]["n_computed"] == 0

    # Another configuration into the same file: refused, file untouched.
    before, mtime = _sha(part), os.path.getmtime(part)
    for extra, differs in ((dict(sigma=0.1), "programming"), (dict(seed=9), "key"),
                           (dict(samples=16), "n_samples")):
        rc, out, err = cli(*_mc_args(data, "--out", part, **extra))
        assert rc == 2, err
        assert out == ""
        last = err.strip().splitlines()[-1]
        assert last.startswith("amcdyn mc inv: error: argument --out:"), last
        assert "different Monte Carlo configuration" in last and differs in last, last
        assert "Traceback" not in err
    rc, _, err = cli(*_mc_args(data, "--out", part, "--wire-r", "1.73"))
    assert rc == 2 and "circuit" in err
    assert _sha(part) == before and os.path.getmtime(part) == mtime


def test_readable_table_mvm_and_yield_bits(data):
    rc, out, err = cli("mc", "mvm", "--matrix", data["w"], "--input", data["x"], "--samples",
                       N_MC, "--sigma", "0.05", "--offset-v", "1e-3", "--min-bits", "3",
                       "--chunk-size", 8, "--no-progress")
    assert rc == 0, err
    for text in ("amcdyn MC MVM 2x3", "samples=8", "p50", "settling time", "rel. error",
                 "energy", "yield:", "settled and bits >= 3", "status:",
                 "offset sigma 1 mV"):
        assert text in out, (text, out)


# ---------------------------------------------------------------------------------------
# amcdyn simulate with the same non-ideality flags
# ---------------------------------------------------------------------------------------


def _sim(data, *extra):
    rc, out, err = cli("simulate", "inv", "--matrix", data["a"], "--rhs", data["b"],
                       "--method", "analytic", "--json", *extra)
    assert rc == 0, err
    return _strict_json(out)


def test_simulate_seed_and_sigma(data, base_run):
    r0 = _sim(data)
    r1 = _sim(data, "--sigma", "0.05", "--seed", "1")
    r2 = _sim(data, "--sigma", "0.05", "--seed", "2")
    assert r1["solution"] != r2["solution"] and r1["solution"] != r0["solution"]
    assert r0["rel_error"] < 1e-4 < min(r1["rel_error"], r2["rel_error"])
    assert r1["nonidealities"]["seed"] == 1 and r0["nonidealities"]["sigma"] == 0
    assert _sim(data, "--sigma", "0.05", "--seed", "1")["solution"] == r1["solution"]
    # `simulate --seed s` is sample 0 of `mc --seed s` (same flags, no offsets).
    r3 = _sim(data, "--sigma", "0.05", "--seed", "3")
    sample0 = _load(base_run["out"])
    assert r3["rel_error"] == pytest.approx(float(sample0["rel_error"][0]), rel=1e-6)
    assert r3["settling_time_s"] == pytest.approx(float(sample0["settling_time"][0]),
                                                  rel=1e-4)


def test_simulate_offset_f_p2_window(data):
    r = _sim(data, "--offset-v", "-2e-3", "--f-p2", "3e8")
    assert r["nonidealities"]["offset_v"] == -2e-3 and r["nonidealities"]["f_p2_hz"] == 3e8
    assert r["rel_error"] > 1e-3  # a 2 mV offset on ~0.5 V outputs
    rc, out, err = cli("simulate", "inv", "--matrix", data["a"], "--rhs", data["b"],
                       "--method", "analytic", "--json", "--levels", "4", "--gmin", "1e-5")
    assert rc == 0, err
    r = _strict_json(out)
    assert r["parameters"]["g0_s"] == pytest.approx(35e-6 / np.max(np.abs(data["a_arr"])))
    assert r["warnings"] and "outside the window" in r["warnings"][0]
    assert "amcdyn: warning:" in err
    rc, out, err = cli("simulate", "inv", "--matrix", data["a"], "--rhs", data["b"],
                       "--levels", "4", "--gmin", "1e-5", "--window-mode", "error")
    assert rc == 2 and out == ""
    assert "argument --window-mode" in err and "outside the window" in err


def test_wire_resistance_increases_error_16x16():
    rel = {}
    for r_w in ("0", "1.73"):
        rc, out, err = cli("simulate", "inv", "--matrix", "random-dd:16", "--method",
                           "analytic", "--wire-r", r_w, "--json")
        assert rc == 0, err
        rel[r_w] = _strict_json(out)["rel_error"]
    assert rel["1.73"] > 10 * rel["0"]


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------

BAD = [
    # (id, argv, flag named in the message, text in the message)
    ("samples-0", ["mc", "inv", "--samples", "0"], "--samples", ">= 1"),
    ("samples-text", ["mc", "inv", "--samples", "many"], "--samples", "integer"),
    ("sigma-negative-mc", ["mc", "inv", "--sigma", "-0.05"], "--sigma", ">= 0"),
    ("sigma-negative-sim", ["simulate", "inv", "--sigma", "-1e-2"], "--sigma", ">= 0"),
    ("sigma-nan", ["mc", "mvm", "--sigma", "nan"], "--sigma", "finite"),
    ("wire-r-negative-mc", ["mc", "inv", "--wire-r", "-1.73"], "--wire-r", ">= 0"),
    ("wire-r-negative-sim", ["simulate", "mvm", "--wire-r", "-1"], "--wire-r", ">= 0"),
    ("levels-1", ["mc", "inv", "--levels", "1"], "--levels", ">= 2"),
    ("levels-sim", ["simulate", "inv", "--levels", "0"], "--levels", ">= 2"),
    ("min-bits-0", ["mc", "inv", "--min-bits", "0"], "--min-bits", "> 0"),
    ("min-bits-negative", ["mc", "inv", "--min-bits", "-3"], "--min-bits", "> 0"),
    ("offset-sigma-negative", ["mc", "inv", "--offset-v", "-1e-3"], "--offset-v", ">= 0"),
    ("f-p2-zero", ["simulate", "inv", "--f-p2", "0"], "--f-p2", "> 0"),
    ("f-p2-negative-mc", ["mc", "inv", "--f-p2", "-3e8"], "--f-p2", "> 0"),
    ("seed-negative", ["mc", "inv", "--seed", "-1"], "--seed", ">= 0"),
    ("chunk-size-0", ["mc", "inv", "--chunk-size", "0"], "--chunk-size", ">= 1"),
    ("gmax-below-gmin", ["mc", "inv", "--gmin", "2e-5", "--gmax", "1e-5"], "--gmax",
     "gmax > gmin"),
    ("gmax-zero", ["simulate", "inv", "--gmax", "0"], "--gmax", "> 0"),
    ("window-mode-alone", ["mc", "inv", "--window-mode", "error"], "--window-mode",
     "needs a conductance window"),
    ("variation-kind", ["mc", "inv", "--variation", "uniform"], "--variation",
     "invalid choice"),
    ("method-mc", ["mc", "inv", "--method", "euler"], "--method", "invalid choice"),
    ("out-not-npz", ["mc", "inv", "--out", "run.npy"], "--out", ".npz"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(tmp_path, case):
    _, argv, flag, text = case
    rc, out, err = cli(*argv)
    assert rc == 2
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert f"argument {flag}" in last, last
    assert text in last, last
    assert "Traceback" not in err


def test_bad_out_folder(tmp_path):
    rc, _, err = cli("mc", "inv", "--out", tmp_path / "nope" / "run.npz")
    assert rc == 2 and "argument --out" in err and "does not exist" in err


def test_help_mentions_offset_semantics():
    rc, out, _ = cli("mc", "inv", "--help")
    assert rc == 0
    assert "--samples" in out and "--offset-v" in out and "random" in out
    rc, out, _ = cli("simulate", "inv", "--help")
    assert rc == 0 and "fixed input offset" in out and "--wire-r" in out


# ---------------------------------------------------------------------------------------
# the README's main command
# ---------------------------------------------------------------------------------------


def _readme_main_command():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        line = f.read().splitlines()[1]
    install, run = line.split(" && ", 1)
    assert install == "pip install ."
    return shlex.split(run)


def _console_script():
    here = os.path.join(os.path.dirname(sys.executable), "amcdyn")
    if os.path.exists(here):
        return here
    found = shutil.which("amcdyn")
    if found is None:
        pytest.fail("the `amcdyn` console script is not installed (pip install .)")
    return found


def test_readme_main_command():
    """The README's first command after the install: a 256-sample Monte Carlo, < 60 s."""
    argv = _readme_main_command()
    assert argv[:3] == ["amcdyn", "mc", "inv"] and "--json" in argv
    # As a user runs it: without the compile-time flags that tests/conftest.py sets for the
    # in-process tests (LLVM optimizations off).
    env = user_environment(os.environ)
    t = time.perf_counter()
    proc = subprocess.run([_console_script(), *argv[1:]], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - t
    assert proc.returncode == 0, proc.stderr
    r = _strict_json(proc.stdout)
    assert r["samples"] == 256 and r["n"] == 16
    for key in ("settling_time_s", "rel_error"):
        assert set(r[key]) >= {"p5", "p50", "p95"}
        assert 0 < r[key]["p5"] <= r[key]["p50"] <= r[key]["p95"]
    assert 1e-9 < r["settling_time_s"]["p50"] < 1e-6
    assert 0.005 < r["rel_error"]["p50"] < 0.2  # 5 % device variation
    assert 0 <= r["yield"] <= 1 and sum(r["status_counts"].values()) == 256
    assert "p50" in r["energy_j"]
    assert "Traceback" not in proc.stderr
    assert wall < 120, f"the README's main command took {wall:.0f} s"
    assert math.isfinite(r["stats"]["samples_per_s"])
