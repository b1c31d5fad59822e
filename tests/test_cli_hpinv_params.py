"""The `parameters` of an hpinv or macro report are the ones the circuit used: both map their
arrays with G0 = gmax / max|A| (not the generic 100 uS default)."""

import json

import numpy as np

from amcdyn._cli import main, resolve_matrix


def test_hpinv_and_macro_report_g0_is_the_arrays(capsys):
    runs = (
        (["hpinv"], 35e-6),
        (["hpinv", "--gmax", "20e-6"], 20e-6),
        (["macro", "--function", "inv"], 35e-6),
    )
    for args, g_max in runs:
        assert main(["simulate", *args, "--matrix", "wishart:4", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        a = resolve_matrix("wishart:4")
        # Same arithmetic as the library's mapping: equal to rounding.
        np.testing.assert_allclose(
            report["parameters"]["g0_s"], g_max / np.max(np.abs(a)), rtol=1e-12
        )
