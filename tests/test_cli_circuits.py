"""`amcdyn simulate|mc CIRCUIT` for the circuit library (ginv, ridge, zf-detect, zf-precode,
dft; amcdyn._cli's circuit registry).

Compilation dominates the run time: the simulations use `--method analytic` on small problems
(5 x 3 real, 4 x 2 complex, N = 4 DFT), and the Monte Carlo runs 4 samples in one chunk.
References are independent: numpy's lstsq / pinv / solve / fft.
"""

import json

import numpy as np
import pytest
from helpers import cli, strict_json as _strict_json

from amcdyn import _cli


def sim_json(*argv):
    rc, out, err = cli("simulate", *argv, "--method", "analytic", "--json")
    assert rc == 0, err
    return _strict_json(out)


# Fields every circuit's `simulate --json` report has (the INV/MVM ones).
SHARED = {
    "circuit",
    "matrix",
    "status",
    "settling_time_s",
    "settling_time_note",
    "solution",
    "exact",
    "rel_error",
    "bits",
    "stable",
    "max_real_eig",
    "slowest_time_constant_s",
    "oscillatory",
    "t_max_s",
    "tol",
    "power_w",
    "energy_j",
    "parameters",
    "nonidealities",
    "nonfinite",
}
ISSUE_NAMES = (
    "ginv",
    "ridge",
    "egv",
    "zf-detect",
    "zf-precode",
    "dft",
    "blockamc",
    "macro",
    "hpinv",
    "cs",
)


def _shared_fields(r, name):
    assert SHARED <= set(r), SHARED - set(r)
    assert r["circuit"] == name and r["status"] == "settled" and r["stable"] is True
    assert 0 < r["settling_time_s"] < r["t_max_s"]
    assert r["energy_j"] > 0 and set(r["nonfinite"]) <= {"parameters.a0"}  # a0 inf
    x, exact = np.asarray(r["solution"]), np.asarray(r["exact"])
    rel = np.linalg.norm(x - exact) / np.linalg.norm(exact)
    assert r["rel_error"] == pytest.approx(rel, rel=1e-6, abs=1e-15)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("circuits")
    rng = np.random.default_rng(7)
    arrays = {
        # 8 x 4 and 4 x 8: the shapes of the real-equivalent 4 x 2 and 2 x 4 channels, so the
        # GINV and ZF runs share their compilations.
        "x": rng.normal(size=(8, 4)),  # tall: least squares
        "y": rng.normal(size=8),
        "xw": rng.normal(size=(4, 8)),  # wide: minimum norm
        "yw": rng.normal(size=4),
        "h": (rng.normal(size=(4, 2)) + 1j * rng.normal(size=(4, 2))) / np.sqrt(2),
        "hy": rng.normal(size=4) + 1j * rng.normal(size=4),
        "hp": (rng.normal(size=(2, 4)) + 1j * rng.normal(size=(2, 4))) / np.sqrt(2),
        "s": np.array([0.3 + 0.9j, -0.9 - 0.3j]),
        "dx": rng.normal(size=4) + 1j * rng.normal(size=4),
    }
    paths = {}
    for name, arr in arrays.items():
        np.save(d / f"{name}.npy", arr)
        paths[name] = str(d / f"{name}.npy")
    return dict(dir=d, arr=arrays, **paths)


# ---------------------------------------------------------------------------------------
# simulate: solutions against numpy
# ---------------------------------------------------------------------------------------


def test_ginv_left_least_squares(data):
    x, y = data["arr"]["x"], data["arr"]["y"]
    ref = np.linalg.lstsq(x, y, rcond=None)[0]
    r = sim_json("ginv", "--matrix", data["x"], "--rhs", data["y"])
    _shared_fields(r, "ginv")
    assert (r["m"], r["n"], r["side"]) == (8, 4, "left")
    p = r["parameters"]
    assert p["side"] == "left" and p["inverters"] == "opamp" and p["g_f_s"] > 0
    np.testing.assert_allclose(r["exact"], ref, rtol=1e-9)  # normal equations, kappa(X) < 10
    # Finite gain A0 = 1e5: ~1e-4 relative error; 2e-3 leaves a margin and is still far below
    # the error of any wrong answer (e.g. ||ref - X^T y|| / ||ref|| ~ 1).
    assert np.linalg.norm(np.asarray(r["solution"]) - ref) < 2e-3 * np.linalg.norm(ref)
    assert 1e-3 > r["rel_error"] > 0 and r["bits"] > 9
    # Ideal op-amps (and so inverters): the steady state is the least-squares answer.
    r = sim_json("ginv", "--matrix", data["x"], "--rhs", data["y"], "--a0", "inf", "--gf", "2e-3")
    assert r["parameters"]["g_f_s"] == 2e-3 and r["parameters"]["a0"] is None  # inf
    np.testing.assert_allclose(r["solution"], ref, rtol=1e-9, atol=1e-12)
    # Op-amp inverters add a pole: a G_f far below the default (1.4 mS here) latches
    # (amcdyn._ginv's stability rule); reported as exit status 3 with a GINV-specific hint.
    rc, out, _ = cli(
        "simulate",
        "ginv",
        "--matrix",
        data["x"],
        "--rhs",
        data["y"],
        "--a0",
        "inf",
        "--gf",
        "2e-4",
        "--method",
        "analytic",
    )
    assert rc == 3 and "UNSTABLE" in out and "--gf" in out.split("hint:")[1]


def test_ginv_right_minimum_norm(data):
    xw, yw = data["arr"]["xw"], data["arr"]["yw"]
    ref = np.linalg.pinv(xw) @ yw
    r = sim_json(
        "ginv", "--matrix", data["xw"], "--rhs", data["yw"], "--side", "right", "--a0", "inf"
    )
    _shared_fields(r, "ginv")
    assert r["parameters"]["side"] == "right" and len(r["solution"]) == 8
    np.testing.assert_allclose(r["solution"], ref, rtol=1e-9, atol=1e-12)  # ideal limit


def test_ridge_left(data):
    x, y, lam = data["arr"]["x"], data["arr"]["y"], 0.3
    ref = np.linalg.solve(x.T @ x + lam * np.eye(4), x.T @ y)
    r = sim_json("ridge", "--matrix", data["x"], "--rhs", data["y"], "--lam", lam)
    _shared_fields(r, "ridge")
    assert r["parameters"]["lam"] == lam
    g = r["parameters"]
    assert g["g_lambda_s"] == pytest.approx(lam * g["g0_s"] ** 2 / g["g_f_s"], rel=1e-12)
    np.testing.assert_allclose(r["exact"], ref, rtol=1e-9)
    # Finite gain (A0 = 1e5), as for GINV: 2e-3 relative.
    assert np.linalg.norm(np.asarray(r["solution"]) - ref) < 2e-3 * np.linalg.norm(ref)


def test_zf_detect_from_files(data):
    h, hy = data["arr"]["h"], data["arr"]["hy"]
    ref = np.linalg.lstsq(h, hy, rcond=None)[0]
    r = sim_json(
        "zf-detect", "--matrix", data["h"], "--rhs", data["hy"], "--a0", "inf", "--qam", "4"
    )
    _shared_fields(r, "zf-detect")
    assert (r["users"], r["antennas"], r["m"], r["n"]) == (2, 4, 4, 2)
    z = np.asarray(r["solution_complex"]["re"]) + 1j * np.asarray(r["solution_complex"]["im"])
    np.testing.assert_allclose(z, ref, rtol=1e-9, atol=1e-12)  # ideal limit
    np.testing.assert_allclose(
        r["solution"], np.concatenate([ref.real, ref.imag]), rtol=1e-9, atol=1e-12
    )
    d = np.asarray(r["digital_zf"]["re"]) + 1j * np.asarray(r["digital_zf"]["im"])
    np.testing.assert_allclose(d, ref, rtol=1e-9)
    # Unknown sent symbols: only the agreement with digital ZF decisions (identical here).
    assert "ser" not in r and r["ser_vs_digital_zf"] == 0 and r["ber_vs_digital_zf"] == 0
    assert r["n_symbols"] == 2 and r["mimo"]["symbols_known"] is False


def test_zf_detect_generated_channel_and_summary():
    argv = ("zf-detect", "--users", "2", "--antennas", "4", "--snr-db", "40", "--channel-seed", "3")
    r = sim_json(*argv)
    _shared_fields(r, "zf-detect")
    assert r["matrix"] == "rayleigh:4x2:channel-seed=3" and r["mimo"]["qam"] == 16
    assert r["mimo"]["noise_var"] == pytest.approx(1e-4)
    for k in ("ser", "ber", "ser_digital_zf", "ber_digital_zf", "ser_vs_digital_zf"):
        assert 0 <= r[k] <= 1
    # 40 dB on a 4 x 2 channel: both detectors decide every symbol right (a 0.2 % error in
    # the analog estimate moves a point by ~1e-3 of the 0.63 decision distance).
    assert r["ser"] == r["ser_digital_zf"] == r["ber"] == 0
    assert sim_json(*argv)["solution"] == r["solution"]  # the channel seed fixes everything
    rc, out, err = cli("simulate", *argv, "--method", "analytic")
    assert rc == 0, err
    assert "ZF detection: 2 users x 4 antennas" in out and "SER 0" in out


def test_zf_precode_from_files(data):
    hp, s = data["arr"]["hp"], data["arr"]["s"]
    ref = np.linalg.pinv(hp) @ s  # minimum-norm: H^H (H H^H)^-1 s
    r = sim_json(
        "zf-precode", "--matrix", data["hp"], "--rhs", data["s"], "--a0", "inf", "--snr-db", "30"
    )
    _shared_fields(r, "zf-precode")
    z = np.asarray(r["solution_complex"]["re"]) + 1j * np.asarray(r["solution_complex"]["im"])
    np.testing.assert_allclose(z, ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hp @ z, s, atol=1e-9)  # zero forcing: H x = s
    assert r["ser_vs_digital_zf"] == 0 and r["n_symbols"] == 2


def test_dft_and_idft(data):
    dx = data["arr"]["dx"]
    r = sim_json("dft", "--size", "4", "--input", data["dx"])
    _shared_fields(r, "dft")
    assert r["n"] == 4 and r["matrix"] == "dft:4:backward"
    z = np.asarray(r["solution_complex"]["re"]) + 1j * np.asarray(r["solution_complex"]["im"])
    ref = np.fft.fft(dx)
    np.testing.assert_allclose(np.asarray(r["exact_complex"]["re"]), ref.real, atol=1e-12)
    # Finite gain A0 = 1e5 in an open-loop MVM: relative error ~ (1 + fan-in) / A0 ~ 1e-4.
    assert np.max(np.abs(z - ref)) < 1e-3 * np.max(np.abs(ref))
    r = sim_json(
        "dft", "--size", "4", "--input", data["dx"], "--inverse", "--norm", "ortho", "--a0", "inf"
    )
    z = np.asarray(r["solution_complex"]["re"]) + 1j * np.asarray(r["solution_complex"]["im"])
    np.testing.assert_allclose(z, np.fft.ifft(dx, norm="ortho"), atol=1e-12)  # ideal limit
    assert r["parameters"]["inverse"] is True and r["parameters"]["norm"] == "ortho"


# ---------------------------------------------------------------------------------------
# Monte Carlo
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("circuit", ["ginv", "ridge"])
def test_mc_ginv_ridge(data, circuit):
    extra = ("--lam", "0.3") if circuit == "ridge" else ()
    rc, out, err = cli(
        "mc",
        circuit,
        "--matrix",
        data["x"],
        "--rhs",
        data["y"],
        *extra,
        "--samples",
        4,
        "--chunk-size",
        4,
        "--sigma",
        "0.05",
        "--seed",
        1,
        "--no-progress",
        "--json",
    )
    assert rc == 0, err
    r = _strict_json(out)
    assert r["circuit"] == circuit and r["samples"] == 4
    assert r["status_counts"]["settled"] == 4 and r["yield"] == 1
    for key in ("settling_time_s", "rel_error", "bits", "energy_j"):
        assert 0 < r[key]["p5"] <= r[key]["p50"] <= r[key]["p95"]
    # 5 % device variation: percent-level errors, far above the nominal finite-gain error.
    assert r["nominal"]["rel_error"] < 1e-3 < r["rel_error"]["p5"]
    assert r["rel_error"]["p95"] < 0.5


# ---------------------------------------------------------------------------------------
# registry, help and bad input
# ---------------------------------------------------------------------------------------


def test_registry_has_every_issue_circuit_and_shared_flags():
    assert set(ISSUE_NAMES) <= set(_cli.CIRCUITS)
    parser = _cli.build_parser()
    cmds = {a.dest: a for a in parser._actions if a.dest == "command"}["command"].choices

    def options(cmd, name):
        sub = cmds[cmd]._actions[-1].choices[name]
        return {s for a in sub._actions for s in a.option_strings}

    mc_only = {"--samples", "--out", "--chunk-size", "--min-bits", "--no-progress"}
    for name, spec in _cli.CIRCUITS.items():
        if spec.implemented:
            assert options("mc", name) == options("simulate", name) | mc_only, name


def test_registry_entry_without_implementation_exits_2(monkeypatch):
    """An entry without `load` is listed as "not implemented yet" and refused (status 2)."""
    spec = _cli.CircuitSpec("future", "a circuit to come", "A circuit to come.")
    monkeypatch.setitem(_cli.CIRCUITS, "future", spec)
    rc, out, _ = cli("simulate", "--help")
    assert rc == 0 and "future" in out and "(not implemented yet)" in out
    for cmd in ("simulate", "mc"):
        rc, stdout, err = cli(cmd, "future", "--matrix", "a.npy", "--whatever")
        assert rc == 2 and stdout == ""
        assert "circuit 'future' is not implemented yet" in err and "Traceback" not in err
    # An implemented circuit still refuses unknown flags.
    rc, _, err = cli("simulate", "ginv", "--matrix", "a.npy", "--whatever")
    assert rc == 2 and "unrecognized arguments: --whatever" in err


def test_mc_egv():
    """EGV Monte Carlo runs amcdyn.simulate_egv per sample (ODE path only)."""
    rc, _, err = cli("mc", "egv", "--matrix", "random-nonneg:4", "--samples", "2")
    assert rc == 2 and "--method" in err
    rc, out, _ = cli(
        "mc", "egv", "--matrix", "random-nonneg:4", "--samples", "3", "--sigma", "0.01",
        "--method", "ode", "--json", "--no-progress",
    )
    assert rc == 0
    r = json.loads(out)
    assert r["samples"] == 3 and r["nominal"]["status"] == "settled"
    # With the default lambda (1 % of the spectral gap below lambda_1) a 1 % variation moves
    # lambda_1 - lambda by its own size: growth slows and some samples do not reach the rails
    # by t_max (measured 4 of 6 settled); none may be reported unstable or non-finite.
    counts = r["status_counts"]
    assert counts["settled"] >= 1 and counts["settled"] + counts["not_settled"] == 3
    assert 0 < r["rel_error"]["p50"] < 0.05


def test_mc_blockamc_and_macro(tmp_path):
    """Solver-style circuits through the generic engine: per-sample draws, resumable --out."""
    out = str(tmp_path / "b.npz")
    argv = ["mc", "blockamc", "--matrix", "wishart:4", "--samples", "3", "--sigma", "0.05",
            "--json", "--no-progress", "--out", out]
    rc, text, _ = cli(*argv)
    assert rc == 0
    r = json.loads(text)
    assert r["samples"] == 3 and r["status_counts"]["settled"] == 3
    # 5 % variation: every sample's error is far above the nominal (finite-gain) error
    assert r["rel_error"]["min"] > 10 * r["nominal"]["rel_error"]
    assert r["rel_error"]["max"] > r["rel_error"]["min"]  # distinct draws per sample
    rc, text2, _ = cli(*argv)  # resumes: nothing recomputed, same numbers
    r2 = json.loads(text2)
    assert rc == 0 and r2["stats"]["n_resumed"] == 3 and r2["rel_error"] == r["rel_error"]
    # --offset-v in `mc` is the sigma of a random offset per amplifier and sample (it was once
    # silently dropped for blockamc): without programming variation, the samples still differ.
    rc, text, _ = cli("mc", "blockamc", "--matrix", "wishart:4", "--samples", "3",
                      "--offset-v", "5e-3", "--json", "--no-progress")
    r = json.loads(text)
    assert rc == 0 and r["rel_error"]["max"] > r["rel_error"]["min"]
    assert r["rel_error"]["min"] > 10 * r["nominal"]["rel_error"]
    rc, text, _ = cli("mc", "macro", "--function", "inv", "--matrix", "random-dd:4",
                      "--samples", "3", "--json", "--no-progress")
    assert rc == 0
    r = json.loads(text)
    assert r["status_counts"]["settled"] == 3 and r["rel_error"]["p50"] < 0.2


def test_mc_hpinv_is_available():
    """`amcdyn mc hpinv` runs (tests/test_hpinv_mc.py checks its results); here only that it is
    no longer refused, and that a flag it cannot model exits 2 naming the flag."""
    rc, out, err = cli("mc", "hpinv", "--matrix", "wishart:4", "--samples", "2", "--offset-v",
                       "1e-3")
    assert rc == 2 and out == "" and "Traceback" not in err
    assert "argument --offset-v" in err and "not available" not in err


def _bad(d, name, arr):
    path = d / name
    np.save(path, arr)
    return str(path)


BAD = [
    # (id, argv builder, flag named in the message, text in the message)
    ("ginv-no-matrix", lambda d: ["simulate", "ginv"], "--matrix", "required"),
    (
        "ginv-wide-left",
        lambda d: ["simulate", "ginv", "--matrix", _bad(d, "w.npy", np.ones((2, 3)))],
        "--matrix",
        "tall",
    ),
    (
        "ginv-tall-right",
        lambda d: ["mc", "ginv", "--side", "right", "--matrix", _bad(d, "t.npy", np.eye(3)[:, :2])],
        "--matrix",
        "wide",
    ),
    (
        "ginv-rank",
        lambda d: ["simulate", "ginv", "--matrix", _bad(d, "r.npy", np.ones((3, 2)))],
        "--matrix",
        "rank-deficient",
    ),
    (
        "ginv-rhs-length",
        lambda d: [
            "simulate",
            "ginv",
            "--matrix",
            _bad(d, "x.npy", np.eye(3)[:, :2]),
            "--rhs",
            _bad(d, "y.npy", np.ones(2)),
        ],
        "--rhs",
        "length 2",
    ),
    (
        "ginv-complex",
        lambda d: ["simulate", "ginv", "--matrix", _bad(d, "c.npy", 1j * np.eye(2))],
        "--matrix",
        "complex",
    ),
    (
        "ginv-nan",
        lambda d: ["simulate", "ginv", "--matrix", _bad(d, "n.npy", np.array([[1.0], [np.nan]]))],
        "--matrix",
        "NaN",
    ),
    (
        "ginv-gf",
        lambda d: ["simulate", "ginv", "--matrix", "random-dd:2", "--gf", "0"],
        "--gf",
        "> 0",
    ),
    (
        "zf-offset",  # GINV, Ridge and ZF take --wire-r and --f-p2, not offsets
        lambda d: ["simulate", "zf-detect", "--offset-v", "1e-3"],
        "--offset-v",
        "not supported for zf-detect",
    ),
    (
        "ridge-offset",
        lambda d: ["mc", "ridge", "--matrix", "random-dd:2", "--lam", "1", "--offset-v", "1e-3"],
        "--offset-v",
        "not supported",
    ),
    (
        "ridge-no-lam",
        lambda d: ["simulate", "ridge", "--matrix", "random-dd:2"],
        "--lam",
        "required",
    ),
    (
        "ridge-lam-negative",
        lambda d: ["simulate", "ridge", "--matrix", "random-dd:2", "--lam", "-0.1"],
        "--lam",
        ">= 0",
    ),
    (
        "zf-users-with-matrix",
        lambda d: [
            "simulate",
            "zf-detect",
            "--users",
            "2",
            "--matrix",
            _bad(d, "h.npy", np.ones((4, 2)) + 1j),
        ],
        "--users",
        "cannot be combined with --matrix",
    ),
    (
        "zf-antennas",
        lambda d: ["simulate", "zf-detect", "--users", "4", "--antennas", "2"],
        "--antennas",
        ">= --users",
    ),
    (
        "zf-rhs-alone",
        lambda d: ["simulate", "zf-precode", "--rhs", _bad(d, "s.npy", np.ones(2))],
        "--rhs",
        "needs --matrix",
    ),
    (
        "zf-rhs-length",
        lambda d: [
            "simulate",
            "zf-detect",
            "--matrix",
            _bad(d, "h.npy", np.eye(4)[:, :2] + 0j),
            "--rhs",
            _bad(d, "y.npy", np.ones(3) + 0j),
        ],
        "--rhs",
        "length 3",
    ),
    (
        "zf-precode-tall",
        lambda d: ["simulate", "zf-precode", "--matrix", _bad(d, "h.npy", np.eye(4)[:, :2] + 0j)],
        "--matrix",
        "wide",
    ),
    ("zf-qam", lambda d: ["simulate", "zf-detect", "--qam", "64"], "--qam", "invalid choice"),
    ("zf-snr", lambda d: ["simulate", "zf-detect", "--snr-db", "inf"], "--snr-db", "finite"),
    ("dft-size", lambda d: ["simulate", "dft", "--size", "0"], "--size", ">= 1"),
    (
        "dft-input-length",
        lambda d: ["mc", "dft", "--size", "4", "--input", _bad(d, "x.npy", np.ones(3))],
        "--input",
        "length 3",
    ),
    ("dft-norm", lambda d: ["simulate", "dft", "--norm", "unit"], "--norm", "invalid choice"),
    # Entries of the other circuit modules (checked before anything is simulated).
    (
        "egv-square",
        lambda d: ["simulate", "egv", "--matrix", _bad(d, "r.npy", np.ones((2, 3)))],
        "--matrix",
        "square",
    ),
    (
        "egv-method",
        lambda d: ["simulate", "egv", "--matrix", "random-nonneg:3", "--method", "analytic"],
        "--method",
        "only --method ode",
    ),
    ("cs-no-lam", lambda d: ["simulate", "cs", "--matrix", "random-dd:3"], "--lam", "required"),
    (
        "cs-method",
        lambda d: ["mc", "cs", "--matrix", "random-dd:3", "--lam", "0.1"],
        "--method",
        "only --method ode",
    ),
    (
        "blockamc-stages",
        lambda d: ["simulate", "blockamc", "--stages", "3"],
        "--stages",
        "invalid choice",
    ),
    (
        "blockamc-plot",
        lambda d: ["simulate", "blockamc", "--matrix", "wishart:4", "--plot", str(d / "x.png")],
        "--plot",
        "no waveform",
    ),
    (
        "hpinv-levels",
        lambda d: ["simulate", "hpinv", "--matrix", "wishart:4", "--levels", "8"],
        "--levels",
        "--bits",
    ),
    ("hpinv-bits", lambda d: ["simulate", "hpinv", "--bits", "0"], "--bits", ">= 1"),
    (
        "macro-function",
        lambda d: ["simulate", "macro", "--matrix", "wishart:4"],
        "--function",
        "required",
    ),
    (
        "macro-square",
        lambda d: [
            "simulate",
            "macro",
            "--function",
            "inv",
            "--matrix",
            _bad(d, "r.npy", np.ones((2, 3))),
        ],
        "--matrix",
        "square",
    ),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(tmp_path, case):
    _, build, flag, text = case
    rc, out, err = cli(*build(tmp_path))
    assert rc == 2
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert f"argument {flag}" in last, last
    assert text in last, last
    assert "Traceback" not in err


def test_amplifier_limits_and_node_capacitance_flags():
    """--v-sat / --slew-rate (nonlinear: ODE only) and --c-node on inv and mvm."""
    rc, out, err = cli("simulate", "inv", "--matrix", "random-dd:4", "--v-sat", "0.5", "--json")
    assert rc == 0, err
    r = json.loads(out)
    # the answer's largest output is 1 V: a 0.5 V rail clips it, and the report says so
    assert r["rail_hit"] is True and r["status_text"] == "settled (output rail hit)"
    assert r["rel_error"] > 0.1
    rc, out, _ = cli("simulate", "mvm", "--matrix", "random-dd:4", "--slew-rate", "1e7", "--json")
    assert rc == 0 and json.loads(out)["slew_hit"] is True
    t = {}
    for c in (None, "1e-12"):
        extra = () if c is None else ("--c-node", c)
        rc, out, _ = cli("simulate", "inv", "--matrix", "random-dd:4", "--method", "analytic",
                         "--json", *extra)
        assert rc == 0
        t[c] = json.loads(out)["settling_time_s"]
    assert t["1e-12"] > 1.5 * t[None]  # the node pole S/C ~ w_T slows the loop
    for argv, flag, text in (
        (("simulate", "inv", "--v-sat", "0.5", "--method", "analytic"), "--v-sat", "--method ode"),
        (("mc", "inv", "--slew-rate", "1e7"), "--slew-rate", "--method ode"),
        (("simulate", "ginv", "--v-sat", "1"), "--v-sat", "only for: inv, mvm"),
        (("simulate", "mvm", "--c-node", "1e-12"), "--c-node", "only for: inv"),
        (("simulate", "inv", "--c-node", "1e-12", "--wire-r", "1"), "--c-node", "r_w"),
    ):
        rc, out, err = cli(*argv[:2], "--matrix", "random-dd:4", *argv[2:])
        assert rc == 2 and out == "" and flag in err and text in err, err
