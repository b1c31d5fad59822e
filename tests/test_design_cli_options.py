"""`amcdyn design inv --optimizer bfgs --starts K --sharpen ...`: the CLI runs the library's
multistart / quasi-Newton / continuation method, and its result is the library call's."""

import json

import jax.random as jr
import numpy as np

import amcdyn
from amcdyn._cli import main


A = np.array([[1.0, 0.45, -0.3], [0.2, 1.0, 0.4], [-0.35, 0.3, 1.0]])
B = np.array([0.4, -0.3, 0.5])


def test_cli_bfgs_multistart_sharpen_equals_library(tmp_path, capsys):
    np.save(tmp_path / "A.npy", A)
    np.save(tmp_path / "b.npy", B)
    argv = ["design", "inv", "--matrix", str(tmp_path / "A.npy"), "--rhs", str(tmp_path / "b.npy")]
    opts = ["--variables", "col_scale", "--optimizer", "bfgs", "--starts", "2", "--steps", "5"]
    assert main(argv + opts + ["--sharpen", "0.1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    lib = amcdyn.design_multistart(
        amcdyn.INV.from_matrix(A, B),
        starts=2,
        seed=0,
        variables=("col_scale",),
        objective=amcdyn.Objective(),
        optimizer="bfgs",
        steps=5,
        key=jr.key(0),
        sharpen=(0.1,),
    )
    # The same deterministic computation: equal to rounding.
    np.testing.assert_allclose(
        report["optimized"]["settling_time_s"],
        lib.summary()["optimized"]["settling_time_s"],
        rtol=1e-9,
    )
    assert report["optimized"]["settling_time_s"] <= report["initial"]["settling_time_s"]
    # Bad values name their flag.
    assert main(argv + ["--sharpen", "0.5"]) == 2
    assert "--sharpen" in capsys.readouterr().err
    assert main(argv + ["--sharpen", "x"]) == 2
    assert "--sharpen" in capsys.readouterr().err
    assert main(argv + ["--starts", "0"]) == 2
    assert "--starts" in capsys.readouterr().err
