"""`amcdyn simulate zf-detect|zf-precode` take --wire-r and --f-p2 (the GINV under them models
both: tests/test_ginv_nonideal.py checks the physics), and refuse input offsets."""

import json

import pytest

from amcdyn._cli import main


# zf-precode only: both ZF commands build their GINV through the same `_make_zf` (the
# zf-detect run added ~30 s of compilation to the suite for no new path).
@pytest.mark.parametrize("circuit", ["zf-precode"])
def test_zf_wire_and_second_pole_flags(circuit, capsys):
    def run(*extra):
        assert main(["simulate", circuit, "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    ideal = run()
    wired = run("--wire-r", "10", "--f-p2", "5e8")
    assert wired["status"] == "settled"
    # 10 ohm per segment on these arrays costs precision (measured ~1e-1 vs ~1e-4 ideal), and
    # the second pole moves the settling time.
    assert wired["rel_error"] > 10 * ideal["rel_error"]
    assert wired["settling_time_s"] != pytest.approx(ideal["settling_time_s"], rel=1e-3)
    assert main(["simulate", circuit, "--offset-v", "1e-3"]) == 2
    assert "--offset-v" in capsys.readouterr().err
