"""Strict rig and scenario files: a typo stops the run, naming FILE:LINE, the household by
its id, the key and the nearest known key (issue 13, finding 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rigs import builtin
from testbed.cli.app import app
from testbed.config.rig import load_rig
from testbed.config.scenario import load_scenario
from testbed.config.tomlfile import locate, nearest
from testbed.errors import InputError

MOCK = builtin("rigs")["mock"].read_text("utf-8")
SCENARIO2 = builtin("scenarios")["scenario2"].read_text("utf-8")


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def _rig_with_load_typo(tmp_path: Path) -> tuple[Path, int]:
    text = MOCK.replace('[[households]]\nid = "3"\n',
                        '[[households]]\nid = "3"\n[households.load]\nmax_powr_w = 50.0\n')
    path = tmp_path / "typo.toml"
    path.write_text(text)
    return path, _line_of(text, "max_powr_w")


def test_typo_in_a_household_limit_names_file_line_id_and_nearest_key(tmp_path: Path) -> None:
    path, line = _rig_with_load_typo(tmp_path)
    with pytest.raises(InputError) as err:
        load_rig(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line} [households id=3.load] key 'max_powr_w'"), msg
    assert "did you mean 'max_power_w'?" in msg


def test_a_misspelt_driver_is_refused_at_its_line_not_when_the_bench_is_built(
        tmp_path: Path) -> None:
    text = MOCK.replace('[[households]]\nid = "2"\n',
                        '[[households]]\nid = "2"\n[households.pv]\ndriver = "scip"\n')
    path = tmp_path / "driver.toml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_rig(str(path))
    assert str(err.value).startswith(f"{path}:{_line_of(text, 'scip')} [households id=2.pv] "
                                     "key 'driver': unknown driver 'scip'; did you mean "
                                     "'scpi'?"), str(err.value)
    result = CliRunner().invoke(app, ["rig", "check", str(path), "--json"])
    assert result.exit_code == 2 and json.loads(result.stdout)["exit"] == 2


def test_wrong_case_unit_in_defaults_is_refused_with_its_line(tmp_path: Path) -> None:
    text = MOCK.replace("capacity_wh = 25", "capacity_Wh = 25")
    path = tmp_path / "case.toml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_rig(str(path))
    msg = str(err.value)
    assert f"{path}:{_line_of(text, 'capacity_Wh')} [defaults.battery]" in msg, msg
    assert "did you mean 'capacity_wh'?" in msg


def test_a_battery_parameter_on_a_load_is_unknown(tmp_path: Path) -> None:
    path = tmp_path / "role.toml"
    path.write_text(MOCK.replace("[defaults.load]", "[defaults.load]\ncapacity_wh = 3"))
    with pytest.raises(InputError, match=r"\[defaults.load\] key 'capacity_wh': unknown key"):
        load_rig(str(path))


def test_misspelt_required_key_is_named_not_reported_missing(tmp_path: Path) -> None:
    text = SCENARIO2.replace('{ id = "4",  net_kwh', '{ id = "4",  net_kw')
    path = tmp_path / "sc.toml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_scenario(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}:{_line_of(text, 'net_kw =')} [households id=4] key "
                          "'net_kw': unknown key; did you mean 'net_kwh'"), msg


def test_scenario_top_level_typo_suggests_the_key(tmp_path: Path) -> None:
    text = SCENARIO2.replace("interval_hours = 24", "interval_hours = 24\nalpah = 0.3")
    path = tmp_path / "sc.toml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_scenario(str(path))
    assert f":{_line_of(text, 'alpah')} key 'alpah': unknown key; did you mean 'alpha'?" \
        in str(err.value)


def test_locate_arrays_of_tables_and_inline_arrays() -> None:
    lines = locate('a = 1\n[[h]]\nid = "x"\n[h.load]\nk = 2\n[[h]]\nid = "y"\n'
                   'rows = [\n  { id = "1", v = 2 },\n  { id = "2" },\n]\n')
    assert lines[("a",)] == 1
    assert lines[("h", "0", "load", "k")] == 5
    assert lines[("h", "1", "id")] == 7
    assert lines[("h", "1", "rows", "1", "id")] == 10
    assert nearest("max_powr_w", ["max_power_w", "max_current_a"]) == "max_power_w"
    assert nearest("zzz", ["max_power_w"]) is None


def test_run_with_the_typo_exits_2_naming_the_key(tmp_path: Path) -> None:
    path, line = _rig_with_load_typo(tmp_path)
    result = CliRunner().invoke(app, ["run", "scenario2", "--rig", str(path),
                                      "--db", str(tmp_path / "t.db")])
    assert result.exit_code == 2, result.output
    assert f"{path}:{line}" in result.output and "max_power_w" in result.output
    assert "Traceback" not in result.output


def test_rig_check_json_prints_json_on_a_config_error(tmp_path: Path) -> None:
    path, line = _rig_with_load_typo(tmp_path)
    result = CliRunner().invoke(app, ["rig", "check", str(path), "--json"])
    assert result.exit_code == 2
    payload = json.loads(result.stdout)
    assert payload["error"].startswith(f"{path}:{line}")


def test_run_json_prints_json_on_a_config_error(tmp_path: Path) -> None:
    path, line = _rig_with_load_typo(tmp_path)
    result = CliRunner().invoke(app, ["run", "scenario2", "--rig", str(path), "--json",
                                      "--db", str(tmp_path / "t.db")])
    assert result.exit_code == 2
    payload = json.loads(result.stdout)
    assert payload == {"error": payload["error"], "exit": 2}
    assert payload["error"].startswith(f"{path}:{line}") and "max_power_w" in payload["error"]


def test_a_missing_instrument_file_is_one_line_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "rig.toml"
    path.write_text(MOCK.replace('[defaults.meter]         # DC energy meter at the rig\'s bus '
                                 'connection\ndriver = "mock"',
                                 '[defaults.meter]\ndriver = "modbus"\nmodel = "./nowhere.toml"'
                                 '\nresource = "modbus+tcp://127.0.0.1:9?unit=1"'))
    result = CliRunner().invoke(app, ["run", "scenario2", "--rig", str(path),
                                      "--db", str(tmp_path / "t.db")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "key 'model'" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_split_battery_needs_both_parts_named_at_their_line(tmp_path: Path) -> None:
    text = MOCK.replace('[[households]]\nid = "2"\n',
                        '[[households]]\nid = "2"\n[households.battery.bms]\n'
                        'driver = "modbus"\nmodel = "testbed-bms"\n'
                        'resource = "modbus+tcp://127.0.0.1:9?unit=1"\n'
                        '[households.battery.convertor]\ndriver = "scpi"\n')
    path = tmp_path / "split.toml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_rig(str(path))
    msg = str(err.value)
    assert f"{path}:{_line_of(text, 'convertor')}" in msg
    assert "did you mean 'converter'" in msg, msg


def test_a_split_battery_part_must_serve_its_role(tmp_path: Path) -> None:
    parts = ('[households.battery.bms]\ndriver = "modbus"\nmodel = "testbed-bms"\n'
             'resource = "modbus+tcp://127.0.0.1:9?unit=1"\n[households.battery.converter]\n'
             'driver = "scpi"\nmodel = "generic-scpi-bidirectional"\n'
             'resource = "TCPIP::127.0.0.1::9::SOCKET"\nchannel = 2\n')
    path = tmp_path / "split.toml"
    path.write_text(MOCK.replace('[[households]]\nid = "2"\n', '[[households]]\nid = "2"\n'
                                 + parts).replace('[defaults.battery]       # BMS + '
                                                  'bidirectional converter (15 kWh, 5 kW '
                                                  'market)\ndriver = "mock"',
                                                  '[defaults.battery]'))
    with pytest.raises(InputError, match=r"households id=1\.battery.*key 'driver': missing"):
        load_rig(str(path))  # household 1 has no parts and now no driver
    path.write_text(path.read_text().replace('[defaults.battery]', '[defaults.battery]\n'
                                             'driver = "mock"'))
    with pytest.raises(InputError, match="driver 'split' is a role served by two instruments "
                       r"\(a battery of two instruments gives its bms and converter"):
        load_rig(str(path))  # household 2: parts beside a driver
