"""The `amcdyn` command line (amcdyn._cli), mostly called in-process through `main(argv)`.

Compilation dominates the run time, so the tests share a few circuit structures: the ODE
path is exercised on 8 x 8 signed matrices (op-amp inverters), everything else uses
`--method analytic` on small matrices.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from amcdyn import _cli, _matrices as M


def _strict_json(text):
    """json.loads that rejects NaN/Infinity tokens (not valid JSON)."""

    def bad(token):
        raise ValueError(f"invalid JSON constant {token}")

    return json.loads(text, parse_constant=bad)


@pytest.fixture
def run(capsys):
    def _run(*argv):
        rc = _cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return _run


@pytest.fixture
def files(tmp_path):
    """A small INV problem and a rectangular MVM problem in .npy and .csv form."""
    a = M.random_dd(4, seed=1)
    b = np.array([0.3, -0.2, 0.5, 0.1])
    w = np.array([[0.5, -0.25, 1.0], [-1.0, 0.75, 0.0]])
    x = np.array([0.2, -0.4, 0.6])
    p = {}
    for name, arr in dict(a=a, b=b, w=w, x=x).items():
        np.save(tmp_path / f"{name}.npy", arr)
        np.savetxt(tmp_path / f"{name}.csv", np.atleast_2d(arr), delimiter=",")
        p[name] = str(tmp_path / f"{name}.npy")
        p[name + "_csv"] = str(tmp_path / f"{name}.csv")
    p.update(a_arr=a, b_arr=b, w_arr=w, x_arr=x, dir=tmp_path)
    return p


REQUIRED = {
    "settling_time_s", "settling_time_note", "solution", "exact", "rel_error", "bits", "stable",
    "max_real_eig", "slowest_time_constant_s", "oscillatory", "status", "circuit", "n",
    "parameters", "nonfinite",
}


def test_inv_json_npy_matches_numpy(run, files):
    rc, out, err = run("simulate", "inv", "--matrix", files["a"], "--rhs", files["b"],
                       "--method", "analytic", "--json")
    assert rc == 0, err
    r = _strict_json(out)
    assert REQUIRED <= set(r)
    assert r["circuit"] == "inv" and r["n"] == 4 and r["status"] == "settled"
    exact = np.linalg.solve(files["a_arr"], files["b_arr"])
    np.testing.assert_allclose(r["exact"], exact, rtol=1e-12)
    x = np.asarray(r["solution"])
    np.testing.assert_allclose(x, exact, rtol=1e-3, atol=1e-4)  # finite gain: ~1e-5 error
    rel = np.linalg.norm(x - exact) / np.linalg.norm(exact)
    assert r["rel_error"] == pytest.approx(rel, rel=1e-6)
    assert r["bits"] == pytest.approx(-math.log2(rel), rel=1e-6)
    assert r["stable"] is True and r["max_real_eig"] < 0
    assert 0 < r["settling_time_s"] < r["t_max_s"]
    assert r["parameters"] == {
        "g0_s": 1e-4, "a0": 1e5, "f_gbw_hz": 1e8, "tol": 1e-3, "method": "analytic",
        "t_max_s": None, "inverters": "opamp", "input_mode": "current", "g_in_s": None,
    }
    assert r["nonfinite"] == {}


def test_inv_csv_same_as_npy(run, files):
    args = ("simulate", "inv", "--method", "analytic", "--json")
    rc1, out1, _ = run(*args, "--matrix", files["a"], "--rhs", files["b"])
    rc2, out2, _ = run(*args, "--matrix", files["a_csv"], "--rhs", files["b_csv"])
    assert rc1 == rc2 == 0
    r1, r2 = _strict_json(out1), _strict_json(out2)
    np.testing.assert_allclose(r1["solution"], r2["solution"], rtol=1e-12)
    # A column-vector csv (one value per line) also works.
    col = files["dir"] / "b_col.csv"
    np.savetxt(col, files["b_arr"][:, None], delimiter=",")
    rc3, out3, _ = run(*args, "--matrix", files["a_csv"], "--rhs", col)
    assert rc3 == 0
    np.testing.assert_allclose(_strict_json(out3)["solution"], r1["solution"], rtol=1e-12)


def test_inv_ode_generator_default_rhs(run):
    """ODE path on a built-in generator, default right-hand side scaled to max|x| = 1."""
    rc, out, err = run("simulate", "inv", "--matrix", "random-dd:8:seed=2", "--json")
    assert rc == 0, err
    r = _strict_json(out)
    a = M.generate("random-dd:8:seed=2")
    exact = np.linalg.solve(a, M.default_rhs(a))
    assert np.max(np.abs(exact)) == pytest.approx(1.0)
    np.testing.assert_allclose(r["solution"], exact, atol=1e-3)
    assert r["status"] == "settled" and r["num_steps"] > 0
    assert 1e-9 < r["settling_time_s"] < 1e-6
    assert r["bits"] > 10


def test_inv_voltage_input_and_ideal_inverters(run, files):
    rc, out, err = run("simulate", "inv", "--matrix", files["a"], "--rhs", files["b"],
                       "--input-mode", "voltage", "--g-in", "2e-4", "--inverters", "ideal",
                       "--method", "analytic", "--json")
    assert rc == 0, err
    r = _strict_json(out)
    assert r["parameters"]["input_mode"] == "voltage"
    assert r["parameters"]["g_in_s"] == 2e-4
    assert r["parameters"]["inverters"] == "ideal"
    np.testing.assert_allclose(r["solution"], np.linalg.solve(files["a_arr"], files["b_arr"]),
                               rtol=1e-3, atol=1e-4)


def test_mvm_csv_json(run, files):
    rc, out, err = run("simulate", "mvm", "--matrix", files["w_csv"], "--input", files["x_csv"],
                       "--gf", "5e-5", "--json")
    assert rc == 0, err
    r = _strict_json(out)
    assert r["circuit"] == "mvm" and (r["m"], r["n"]) == (2, 3)
    assert r["parameters"]["g_f_s"] == 5e-5
    np.testing.assert_allclose(r["solution"], files["w_arr"] @ files["x_arr"], rtol=1e-3)
    assert r["status"] == "settled" and r["settling_time_s"] > 0


def test_unstable_is_reported_as_valid_json(run, tmp_path):
    a = np.array([[-1.0, 0.0], [0.0, 1.0]])  # non-singular, but -1 makes the loop unstable
    np.save(tmp_path / "a.npy", a)
    rc, out, _ = run("simulate", "inv", "--matrix", tmp_path / "a.npy", "--method", "analytic",
                     "--json")
    assert rc == _cli.EXIT_NOT_SETTLED == 3
    r = _strict_json(out)
    assert r["status"] == "unstable" and r["stable"] is False
    assert r["settling_time_s"] is None
    assert "unstable" in r["settling_time_note"]
    assert r["nonfinite"]["settling_time_s"] == "nan"
    assert r["max_real_eig"] > 0
    assert r["status_message"]


def test_not_settled_readable(run, files):
    rc, out, _ = run("simulate", "inv", "--matrix", files["a"], "--method", "analytic",
                     "--t-max", "1e-10")
    assert rc == 3
    assert "not_settled" in out and "not settled within t_max" in out and "--t-max" in out


def test_readable_summary(run, files):
    rc, out, _ = run("simulate", "inv", "--matrix", files["a"], "--method", "analytic")
    assert rc == 0
    for text in ("status:        settled", "settling time:", " ns", "rel. error:", "bits",
                 "stability:     stable", "slowest time constant", "oscillatory:"):
        assert text in out


def test_plot_writes_png(run, files):
    png = files["dir"] / "wave.png"
    rc, out, err = run("simulate", "inv", "--matrix", files["a"], "--method", "analytic",
                       "--plot", png)
    assert rc == 0, err
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 10_000
    assert str(png) in out


def _bad_npy(tmp_path, name, arr):
    path = tmp_path / name
    np.save(path, arr)
    return str(path)


BAD = [
    # (id, argv builder, flag named in the message, text in the message)
    ("non-square", lambda d: ["inv", "--matrix", _bad_npy(d, "r.npy", np.ones((2, 3)))],
     "--matrix", "square"),
    ("not-2d", lambda d: ["inv", "--matrix", _bad_npy(d, "v.npy", np.ones((2, 2, 2)))],
     "--matrix", "2-D"),
    ("rhs-length", lambda d: ["inv", "--matrix", "random-dd:3",
                              "--rhs", _bad_npy(d, "b.npy", np.ones(4))], "--rhs", "length 4"),
    ("rhs-matrix", lambda d: ["inv", "--matrix", "random-dd:3",
                              "--rhs", _bad_npy(d, "b.npy", np.ones((3, 3)))], "--rhs", "vector"),
    ("mvm-input-length", lambda d: ["mvm", "--matrix", _bad_npy(d, "r.npy", np.ones((2, 3))),
                                    "--input", _bad_npy(d, "x.npy", np.ones(2))],
     "--input", "length 2"),
    ("matrix-nan", lambda d: ["inv", "--matrix", _bad_npy(d, "n.npy", np.array([[1, np.nan],
                                                                                [0, 1]]))],
     "--matrix", "NaN"),
    ("rhs-inf", lambda d: ["inv", "--matrix", "random-dd:2",
                           "--rhs", _bad_npy(d, "b.npy", np.array([1, np.inf]))], "--rhs", "inf"),
    ("singular", lambda d: ["inv", "--matrix", _bad_npy(d, "s.npy", np.array([[1.0, 2.0],
                                                                              [2.0, 4.0]]))],
     "--matrix", "singular (rank 1 < 2)"),
    ("g0-zero", lambda d: ["inv", "--g0", "0"], "--g0", "> 0"),
    ("g0-negative", lambda d: ["mvm", "--g0", "-1e-4"], "--g0", "> 0"),
    ("g0-text", lambda d: ["inv", "--g0", "big"], "--g0", "number"),
    ("a0-negative", lambda d: ["inv", "--a0", "-5"], "--a0", "> 0"),
    ("gbw-zero", lambda d: ["inv", "--gbw", "0"], "--gbw", "> 0"),
    ("gbw-nan", lambda d: ["inv", "--gbw", "nan"], "--gbw", "nan"),
    ("tol-zero", lambda d: ["inv", "--tol", "0"], "--tol", "> 0"),
    ("tol-one", lambda d: ["inv", "--tol", "1"], "--tol", "< 1"),
    ("t-max", lambda d: ["inv", "--t-max", "-1e-9"], "--t-max", "> 0"),
    ("gf-zero", lambda d: ["mvm", "--gf", "0"], "--gf", "> 0"),
    ("g-in-without-voltage", lambda d: ["inv", "--g-in", "1e-4"], "--g-in", "voltage"),
    ("missing-file", lambda d: ["inv", "--matrix", str(d / "nope.npy")], "--matrix", "not found"),
    ("missing-rhs", lambda d: ["inv", "--rhs", str(d / "nope.csv")], "--rhs", "not found"),
    ("garbage-npy", lambda d: ["inv", "--matrix", _write(d / "g.npy", b"not numpy")],
     "--matrix", "cannot read"),
    ("garbage-csv", lambda d: ["mvm", "--input", _write(d / "g.csv", b"1,2\nx,y\n")],
     "--input", "cannot read"),
    ("unknown-extension", lambda d: ["inv", "--matrix", _write(d / "a.mat", b"")],
     "--matrix", ".npy or .csv"),
    ("unknown-generator", lambda d: ["inv", "--matrix", "hilbert:4"], "--matrix",
     "unknown matrix generator 'hilbert'"),
    ("not-file-not-spec", lambda d: ["inv", "--matrix", "nosuchthing"], "--matrix",
     "neither a file nor a generator spec"),
    ("bad-size", lambda d: ["inv", "--matrix", "wishart:0"], "--matrix", "positive integer"),
    ("bad-inverters", lambda d: ["inv", "--inverters", "none"], "--inverters", "invalid choice"),
    ("bad-method", lambda d: ["mvm", "--method", "euler"], "--method", "invalid choice"),
    ("plot-folder", lambda d: ["inv", "--plot", str(d / "no" / "x.png")], "--plot", "folder"),
]


def _write(path, data):
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(run, tmp_path, case):
    _, build, flag, text = case
    rc, out, err = run("simulate", *build(tmp_path))
    assert rc == 2
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("amcdyn simulate ") and ": error: " in last
    assert f"argument {flag}" in last, last
    assert text in last, last
    assert "Traceback" not in err


def test_usage_errors_without_circuit(run):
    rc, _, err = run("simulate")
    assert rc == 2 and "error" in err
    rc, _, err = run("frobnicate")
    assert rc == 2 and "invalid choice" in err
    rc, out, _ = run("--help")
    assert rc == 0 and "simulate" in out


def test_library_errors_map_to_flags():
    e = _cli._library_error("inv", ValueError("`f_gbw` must be > 0, got -1"))
    assert str(e) == "argument --gbw: must be > 0, got -1"
    e = _cli._library_error("mvm", ValueError("`x` has length 2, but an MVM needs length 3"))
    assert str(e).startswith("argument --input: has length 2")
    assert str(_cli._library_error("inv", ValueError("something else"))) == "something else"


def test_json_sanitizes_nonfinite():
    text = _cli.to_json({"a": math.inf, "b": [1.0, math.nan], "c": {"d": -math.inf}, "e": 2})
    r = _strict_json(text)
    assert r["a"] is None and r["b"] == [1.0, None] and r["c"]["d"] is None and r["e"] == 2
    assert r["nonfinite"] == {"a": "inf", "b[1]": "nan", "c.d": "-inf"}


@pytest.mark.parametrize("flag", [False, True])
def test_main_restores_x64_flag(run, flag):
    """main() runs in float64 but leaves the caller's jax_enable_x64 as it found it."""
    import jax

    prev = jax.config.jax_enable_x64
    try:
        jax.config.update("jax_enable_x64", flag)
        rc, _, err = run("simulate", "inv", "--matrix", "random-dd:3", "--rhs", "missing.npy")
        assert rc == 2 and "--rhs" in err
        assert jax.config.jax_enable_x64 == flag
    finally:
        jax.config.update("jax_enable_x64", prev)


def test_empty_csv(run, tmp_path):
    (tmp_path / "e.csv").write_text("")
    rc, _, err = run("simulate", "inv", "--matrix", tmp_path / "e.csv")
    assert rc == 2 and "argument --matrix" in err and "empty" in err


def _console_script():
    here = os.path.join(os.path.dirname(sys.executable), "amcdyn")
    if os.path.exists(here):
        return [here]
    found = shutil.which("amcdyn")
    if found is None:
        pytest.fail("the `amcdyn` console script is not installed (pip install .)")
    return [found]


def test_console_script_default_case():
    """The README's main job: `amcdyn` with no arguments (INV on random-dd:8)."""
    proc = subprocess.run(_console_script(), capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "default case" in proc.stdout
    assert "status:        settled" in proc.stdout
    assert "settling time:" in proc.stdout and " ns" in proc.stdout
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------
# README, docs and CI script stay in step with the code
# ---------------------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def test_ci_runs_the_readme_test_command():
    lines = _read("README.md").splitlines()
    assert lines[0].startswith("```")
    install_run, test_cmd = lines[1], lines[2]
    # The main job: a small Monte Carlo of the default case (run by tests/test_mc_cli.py).
    assert install_run == (
        "pip install . && amcdyn mc inv --matrix random-dd:16 --samples 256 --sigma 0.05 --json"
    )
    assert "pytest" in test_cmd and "ngspice" in test_cmd
    ci = _read(".ci", "run")
    assert ci.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in ci and "export CI=true" in ci
    assert ci.strip().splitlines()[-1] == test_cmd


@pytest.mark.parametrize("doc", ["README.md", "docs/index.md", "docs/model.md"])
def test_doc_examples_run(doc, capsys):
    import re

    blocks = re.findall(r"```python\n(.*?)```", _read(*doc.split("/")), flags=re.DOTALL)
    assert blocks, f"{doc} has no Python example"
    for i, code in enumerate(blocks):
        exec(compile(code, f"{doc}[python block {i}]", "exec"), {"__name__": "__doc_example__"})
