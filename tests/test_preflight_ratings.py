"""Ratings and meter resolution as data, refused before the bench moves (issue 13,
finding 3): the 30 V supply on a 48 V bus, and the 1 Wh meter at --speed 1440."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rigs import builtin
from testbed.cli.app import app
from testbed.config.rig import load_rig
from testbed.config.scenario import load_scenario
from testbed.run.preflight import ensure_fits, lab_plan, resolution_refusals
from testbed.run.runner import apply_speed, plans_for

MOCK = builtin("rigs")["mock"].read_text("utf-8")
# Nothing listens here: a refused run never connects.
NOWHERE = "modbus+tcp://127.0.0.1:9?unit=1"


def _rig(tmp_path: Path, old: str, new: str) -> Path:
    assert old in MOCK
    path = tmp_path / "rig.toml"
    path.write_text(MOCK.replace(old, new))
    return path


def test_30_v_supply_on_a_48_v_bus_is_refused_with_the_figures(tmp_path: Path) -> None:
    path = _rig(tmp_path, '[defaults.pv]            # programmable DC supply emulating PV '
                '(6 kW market)\ndriver = "mock"\nmax_power_w = 600\nmax_voltage_v = 60\n'
                'max_current_a = 12.5',
                '[defaults.pv]\ndriver = "scpi"\nmodel = "rigol-dp832"\n'
                'resource = "TCPIP::127.0.0.1::9::SOCKET"\nmax_power_w = 80\nmax_current_a = 3')
    result = CliRunner().invoke(app, ["run", "scenario2", "--rig", str(path), "--speed", "60",
                                      "--db", str(tmp_path / "t.db")])
    assert result.exit_code == 2, result.output
    assert "the bus needs 50.4 V (bus_voltage_v 48 x headroom 1.05) but rigol-dp832 is " \
           "rated 30 V" in result.output
    assert "Traceback" not in result.output


def test_a_limit_above_the_rating_is_refused(tmp_path: Path) -> None:
    path = _rig(tmp_path, 'max_power_w = 600\nmax_voltage_v = 60\nmax_current_a = 12.5',
                'max_power_w = 600\nmax_voltage_v = 60\nmax_current_a = 12.5\n'
                'model = "rigol-dp832"\nresource = "TCPIP::127.0.0.1::9::SOCKET"')
    text = path.read_text().replace('[defaults.pv]            # programmable DC supply '
                                    'emulating PV (6 kW market)\ndriver = "mock"',
                                    '[defaults.pv]\ndriver = "scpi"')
    path.write_text(text)
    rig = load_rig(str(path))
    sc = load_scenario("scenario2")
    with pytest.raises(Exception) as err:
        ensure_fits(rig, [(0.0, sc.interval_hours, plans_for(sc))])
    assert "max_power_w = 600 W but rigol-dp832 is rated 90 W" in str(err.value)
    assert "max_current_a = 12.5 A but rigol-dp832 is rated 3 A" in str(err.value)


def _pzem_rig(tmp_path: Path) -> Path:
    return _rig(tmp_path, '[defaults.meter]         # DC energy meter at the rig\'s bus '
                'connection\ndriver = "mock"',
                f'[defaults.meter]\ndriver = "modbus"\nmodel = "peacefair-pzem017"\n'
                f'resource = "{NOWHERE}"')


def test_1_wh_meter_at_speed_1440_is_refused_with_the_figures(tmp_path: Path) -> None:
    path = _pzem_rig(tmp_path)
    result = CliRunner().invoke(app, ["run", "scenario2", "--rig", str(path), "--speed",
                                      "1440", "--db", str(tmp_path / "t.db")])
    assert result.exit_code == 2, result.output
    # households 6 and 10 trade 1.1 kWh: 1.1 * 1000 * 0.1 / 1440 = 0.07639 lab Wh
    assert "peacefair-pzem017 counts 1 Wh, but household 6's trade of 1.1 kWh is " \
           "0.07639 lab Wh at power_scale 0.1 and time_scale 1440" in result.output
    assert "Traceback" not in result.output


def test_the_resolution_rule_passes_exactly_at_the_largest_speed(tmp_path: Path) -> None:
    rig = load_rig(str(_pzem_rig(tmp_path)))
    sc = load_scenario("scenario2")
    plans = plans_for(sc)
    # 1 Wh at 0.5 %: the smallest trade (1.1 kWh) must be >= 200 lab Wh:
    # time_scale <= 1.1 * 1000 * 0.1 * 0.005 / 1 = 0.55
    ok, _ = apply_speed(rig, "0.55")
    assert resolution_refusals(ok, plans, sc.interval_hours) == []
    slow, _ = apply_speed(rig, "0.6")
    refused = resolution_refusals(slow, plans, sc.interval_hours)
    assert [r.device for r in refused] == ["household 6 meter", "household 10 meter"]
    assert "at most 0.55" in refused[0].text


def test_lab_plan_states_lab_energy_and_power() -> None:
    rig = load_rig("mock")
    sc = load_scenario("scenario2")
    lines = lab_plan(rig, plans_for(sc)[:1], sc.interval_hours)
    # -3 kWh * 1000 * 0.1 / 60 = -5 lab Wh over 24 h / 60 = 1440 lab s: mean -12.5 W
    assert lines == ["household 1: -3 kWh -> -5 lab Wh over 1440 lab s (mean -12.5 W)"]
