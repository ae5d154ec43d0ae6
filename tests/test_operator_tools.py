"""`testbed instrument check` and `testbed scenario show|copy` (issue 13, item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drivers.instruments.model import available_instruments, load_instrument
from testbed.cli.app import app
from testbed.config.scenario import load_scenario


@pytest.mark.parametrize("name", available_instruments())
def test_every_shipped_instrument_file_passes_check(name: str) -> None:
    result = CliRunner().invoke(app, ["instrument", "check", name, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"] == name


def test_check_names_the_overlapping_register_with_exit_2(tmp_path: Path) -> None:
    text = load_instrument("peacefair-pzem017").source
    src = (Path(__file__).resolve().parent.parent / "drivers" / "instruments" /
           text).read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(src.replace("address = 0x0001, type", "address = 0x0000, type", 1))
    result = CliRunner().invoke(app, ["instrument", "check", str(bad), "--json"])
    assert result.exit_code == 2
    assert "overlaps voltage_v" in json.loads(result.stdout)["error"]


def test_check_warns_of_missing_ratings_and_reports_a_meter_resolution() -> None:
    result = CliRunner().invoke(app, ["instrument", "check", "peacefair-pzem017", "--json"])
    assert json.loads(result.stdout)["energy_resolution_wh"] == 1.0
    supply = CliRunner().invoke(app, ["instrument", "check", "generic-scpi-supply"])
    assert "[ratings] voltage_v is not stated" in supply.output
    rated = CliRunner().invoke(app, ["instrument", "check", "rigol-dp800"])
    assert "not stated" not in rated.output


def test_scenario_copy_then_run_from_the_copy(tmp_path: Path) -> None:
    dest = tmp_path / "mine.toml"
    runner = CliRunner()
    assert runner.invoke(app, ["scenario", "copy", "scenario2", str(dest)]).exit_code == 0
    assert load_scenario(str(dest)).name == "scenario2"
    again = runner.invoke(app, ["scenario", "copy", "scenario2", str(dest)])
    assert again.exit_code == 2 and "exists" in again.output
    shown = runner.invoke(app, ["scenario", "show", "scenario2"])
    assert shown.stdout == dest.read_text()
    assert runner.invoke(app, ["scenario", "show", "nope"]).exit_code == 2


def test_every_example_is_reachable_by_name_and_copies(tmp_path: Path) -> None:
    from rigs import EXAMPLES, builtin

    shipped = {f.stem for f in (Path(__file__).resolve().parent.parent / "rigs" /
                                "examples").glob("*.toml")}
    assert shipped == {n for names in EXAMPLES.values() for n in names}
    assert "university-lab3" in builtin("rigs") and "lab3-scenario" in builtin("scenarios")
    runner = CliRunner()
    dest = tmp_path / "rig.toml"
    assert runner.invoke(app, ["rig", "copy", "university-lab3", str(dest)]).exit_code == 0
    assert runner.invoke(app, ["rig", "show", "university-lab3"]).stdout == dest.read_text()
    again = runner.invoke(app, ["rig", "copy", "university-lab3", str(dest)])
    assert again.exit_code == 2 and "exists" in again.output
    from testbed.config.rig import load_rig

    assert [h.id for h in load_rig(str(dest)).households] == ["1", "2", "3"]
    assert load_rig("university-lab3").name == "university-lab3"
