"""Devices under test: a BMS whose firmware misreports its energy fails its JUnit check."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rigs import builtin
from testbed.cli.app import app


def dut_rig(tmp_path: Path, gain: float) -> Path:
    """The built-in mock rig with household 1's BMS and meter marked as devices under test."""
    text = builtin("rigs")["mock"].read_text()
    text = text.replace(
        '[[households]]\nid = "1"\n',
        '[[households]]\nid = "1"\n[households.battery]\ndut = true\n'
        f"firmware_energy_gain = {gain}\n[households.meter]\ndut = true\n", 1)
    path = tmp_path / f"dut-{gain}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("gain", "exit_code"), [(1.0, 0), (1.2, 1)])
def test_dut_checks_in_junit(tmp_path: Path, gain: float, exit_code: int) -> None:
    junit = tmp_path / "report.xml"
    result = CliRunner().invoke(app, [
        "run", "scenario2", "--rig", str(dut_rig(tmp_path, gain)),
        "--db", str(tmp_path / "t.db"), "--junit", str(junit), "--json"])
    assert result.exit_code == exit_code, result.output
    cases = ET.parse(junit).getroot().iter("testcase")
    dut = {c.get("name"): c.find("failure") is None for c in cases
           if "DUT" in (c.get("classname") or "")}
    assert set(dut) == {"household 1 BMS energy change",
                        "household 1 BMS SOC against its energy",
                        "household 1 meter counters"}
    assert dut["household 1 meter counters"]
    assert dut["household 1 BMS SOC against its energy"]
    assert dut["household 1 BMS energy change"] is (gain == 1.0)
