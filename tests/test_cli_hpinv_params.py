"""The `parameters` of an hpinv report are the ones HP-INV used: G0 = gmax / max|A| for its
low-precision array (not the generic 100 uS default)."""

import json

import numpy as np

from amcdyn._cli import main, resolve_matrix


def test_hpinv_report_g0_is_the_arrays(capsys):
    for extra, g_max in (([], 35e-6), (["--gmax", "20e-6"], 20e-6)):
        assert main(["simulate", "hpinv", "--matrix", "wishart:4", "--json", *extra]) == 0
        report = json.loads(capsys.readouterr().out)
        a = resolve_matrix("wishart:4")
        # Same arithmetic as the library's mapping: equal to rounding.
        np.testing.assert_allclose(
            report["parameters"]["g0_s"], g_max / np.max(np.abs(a)), rtol=1e-12
        )
