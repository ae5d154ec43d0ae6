"""``testbed instrument read|set`` (issue 13, item 6) and set-up errors of an instrument
switched off (connection refused, reset, no reply): one line, exit 2, JSON under --json.

The command runs as a subprocess against instruments on real sockets: the project's
emulators (SCPI and Modbus) and pymodbus's own server classes (a server we did not write).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drivers.emulators.bench import EmulatedBench
from drivers.emulators.toml_out import dumps
from drivers.instruments.model import ModbusMap, load_instrument
from drivers.spec import RigSpec
from testbed.config.rig import load_rig
from tests.pymodbus_served import serve_map

INSTRUMENTS = Path(__file__).resolve().parents[2] / "drivers" / "instruments"
RATED_SUPPLY = """
[ratings]
voltage_v = 60
current_a = 5
power_w = 300
directions = ["source"]
"""
RATED_CONVERTER = """
[ratings]
voltage_v = 60
current_a = 10
power_w = 500
directions = ["source", "sink"]
"""


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


async def testbed(*args: str) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "testbed.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def one_line_error(r: Result, *words: str) -> None:
    """Exit 2, one line on stderr naming ``words``, no traceback."""
    assert r.code == 2, (r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.err
    assert "Traceback" not in r.err + r.out
    for word in words:
        assert word in lines[0], lines[0]


def rated(tmp_path: Path, model: str, ratings: str) -> str:
    path = tmp_path / f"{model}-rated.toml"
    text = re.sub(r"\n\[ratings\].*?(?=\n\[)", "", (INSTRUMENTS / f"{model}.toml").read_text(),
                  flags=re.S)
    path.write_text(text + ratings)
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_read_every_command_and_one_of_an_scpi_supply(small_rig: RigSpec) -> None:
    async with EmulatedBench(small_rig) as emu:
        pv = emu.endpoints["household 1 pv"]
        every = await testbed("instrument", "read", pv.resource, "--model", pv.model, "--json")
        one = await testbed("instrument", "read", pv.resource, "--model", pv.model,
                            "measured_voltage")
    assert every.code == 0, every.err
    values = {r["name"]: r["value"] for r in every.json}
    assert values["identify"] == pv.emulated.binding.identity
    assert values["measured_voltage"] == small_rig.bus_voltage_v
    assert values["output"] is False
    assert one.code == 0 and one.out.startswith("measured_voltage = 48 V")


async def test_set_is_guarded_by_the_ratings_and_read_back(small_rig: RigSpec,
                                                           tmp_path: Path) -> None:
    model = rated(tmp_path, "generic-scpi-supply", RATED_SUPPLY)
    async with EmulatedBench(small_rig) as emu:
        pv = emu.endpoints["household 1 pv"]
        ok = await testbed("instrument", "set", pv.resource, "--model", model, "current", "2",
                           "--json")
        over = await testbed("instrument", "set", pv.resource, "--model", model, "current",
                             "5.5")
        negative = await testbed("instrument", "set", pv.resource, "--model", model,
                                 "voltage", "-1")
        unrated = await testbed("instrument", "set", pv.resource, "--model",
                                "generic-scpi-supply", "current", "1")
        after = await testbed("instrument", "read", pv.resource, "--model", model, "current",
                              "--json")
    assert ok.code == 0, ok.err
    assert ok.json == [{"name": "current", "value": 2.0, "unit": "A", "where": "SOUR:CURR?"}]
    one_line_error(over, "current = 5.5 A refused", "beyond the rating 5 A")
    one_line_error(negative, "voltage = -1 V refused", "both sources and sinks")
    one_line_error(unrated, "states no [ratings] current_a")
    assert after.json[0]["value"] == 2.0, "no refused setting reached the instrument"


async def test_modbus_set_on_the_emulated_converter_both_directions(small_rig: RigSpec,
                                                                    tmp_path: Path) -> None:
    model = rated(tmp_path, "testbed-bms-converter", RATED_CONVERTER)
    async with EmulatedBench(small_rig) as emu:
        bat = emu.endpoints["household 1 battery"]
        sink = await testbed("instrument", "set", bat.resource, "--model", model,
                             "power_setpoint_w", "-120.5")
        over = await testbed("instrument", "set", bat.resource, "--model", model,
                             "power_setpoint_w", "501", "--json")
        on = await testbed("instrument", "set", bat.resource, "--model", model, "enabled", "on")
        setpoint = emu.plant.rigs["1"].battery.setpoint_w
    assert sink.code == 0, sink.err
    assert sink.out.startswith("power_setpoint_w = -120.5 W  (holding 257 unit 1)")
    assert setpoint == -120.5
    assert over.json["exit"] == 2 and "beyond the rating 500 W" in over.json["error"]
    assert on.code == 0 and on.out.startswith("enabled = 1")


async def test_read_and_set_against_pymodbus_own_server() -> None:
    bms = load_instrument("testbed-bms-converter")
    assert isinstance(bms, ModbusMap)
    values = {"soc": 0.42, "voltage_v": 51.2, "temperature_c": 23.4, "watchdog_s": 0}
    async with serve_map(bms, values) as served:
        resource = f"modbus+tcp://127.0.0.1:{served.port}?unit=1"
        read = await testbed("instrument", "read", resource, "--model", bms.model, "--json")
        wrote = await testbed("instrument", "set", resource, "--model", bms.model,
                              "watchdog_s", "9")
        writes = served.functions[6]
        too_big = await testbed("instrument", "set", resource, "--model", bms.model,
                                "watchdog_s", "70000")
    assert read.code == 0, read.err
    got = {r["name"]: r["value"] for r in read.json}
    assert got["soc"] == pytest.approx(0.42) and got["voltage_v"] == pytest.approx(51.2)
    assert got["temperature_c"] == pytest.approx(23.4)
    assert wrote.code == 0, wrote.err
    assert served.registers[0x0103] == 9 and writes > 0 and served.functions[16] == 0
    one_line_error(too_big, "outside the u16 register's range")
    assert served.functions[6] == writes, "the refused value never left"


async def test_what_the_operator_typed_wrong_is_one_line_exit_2(small_rig: RigSpec) -> None:
    async with EmulatedBench(small_rig) as emu:
        pv = emu.endpoints["household 1 pv"]
        meter = emu.endpoints["household 1 meter"]
        cases = await asyncio.gather(
            testbed("instrument", "read", "TCPIP::nowhere::SOCKET", "--model", pv.model),
            testbed("instrument", "read", pv.resource, "--model", "no-such-model"),
            testbed("instrument", "read", pv.resource, "--model", pv.model, "volts"),
            testbed("instrument", "set", pv.resource, "--model", pv.model, "output", "maybe"),
            testbed("instrument", "read", pv.resource, "--model", meter.model),
            testbed("instrument", "read", meter.resource, "--model", meter.model,
                    "--channel", "3"),
            testbed("instrument", "set", meter.resource, "--model", meter.model, "power_w",
                    "1", "--json"))
    resource, model, point, value, protocol, channel, readonly = cases
    one_line_error(resource, "TCPIP::nowhere::SOCKET", "expected")
    one_line_error(model, "no-such-model", "no such built-in instrument")
    one_line_error(point, "no name 'volts'", "measured_voltage")
    one_line_error(value, "output", "on/off")
    one_line_error(protocol, "is a scpi resource", "speaks modbus")
    one_line_error(channel, "channel 3 outside 0..0")
    assert readonly.code == 2 and "no writable name 'power_w'" in readonly.json["error"]


# -- an instrument switched off ------------------------------------------------------------

async def test_read_from_an_instrument_switched_off_is_exit_2(small_rig: RigSpec) -> None:
    refused = f"TCPIP::127.0.0.1::{free_port()}::SOCKET"
    async with EmulatedBench(small_rig) as emu:
        pv = emu.endpoints["household 1 pv"]
        bat = emu.endpoints["household 1 battery"]
        emu.device(pv.name).faults.inject("disconnect")
        emu.device(bat.name).faults.inject("no_reply")
        cases = await asyncio.gather(
            testbed("instrument", "read", refused, "--model", pv.model, "--json"),
            testbed("instrument", "read", pv.resource, "--model", pv.model, "--json"),
            testbed("instrument", "read", bat.resource + "&timeout=0.3", "--model", bat.model,
                    "soc", "--json"))
    for r, why in zip(cases, ("cannot connect", "closed", "No response"), strict=True):
        assert r.code == 2, (r.out, r.err)
        assert "Traceback" not in r.err + r.out
        error = r.json["error"]
        assert why in error and "is the instrument on" in error, error
        assert r.err.strip().splitlines() == [f"error: {error}"]


def _rig_file(emu: EmulatedBench, path: Path) -> Path:
    data = emu.rig_dict()
    for table in [data["grid"], *(t for h in data["households"] for t in h.values()
                                  if isinstance(t, dict))]:
        table["timeout_s"] = 0.3
    path.write_text(dumps(data))
    return path


@pytest.mark.parametrize(("device", "fault", "why"), [
    ("household 2 pv", "disconnect", "connection closed by the instrument"),
    ("grid", "no_reply", "No response"),
])
async def test_a_run_with_an_instrument_switched_off_stops_before_the_bench_moves(
        tmp_path: Path, device: str, fault: str, why: str) -> None:
    async with EmulatedBench(load_rig("mock")) as emu:
        emu.device(device).faults.inject(fault)
        rig = _rig_file(emu, tmp_path / "lab.toml")
        r = await testbed("run", "scenario2", "--rig", str(rig), "--db",
                          str(tmp_path / "t.db"), "--json")
        relays = [r.relay_closed for r in emu.plant.rigs.values()]
        outputs = [r.pv.on or r.load.on for r in emu.plant.rigs.values()]
    assert r.code == 2, (r.out[-500:], r.err[-500:])
    assert "Traceback" not in r.err + r.out
    error = r.json["error"]
    assert f"{device}: {device} at" in error and why in error, error
    assert "failed at identify and set-up, nothing was switched on" in error
    assert error in r.err.strip().splitlines()[-1]
    assert not any(relays) and not any(outputs), "no relay closed, no output on"


async def test_a_commercial_bms_map_read_from_pymodbus_own_server() -> None:
    """seplos-v3: temperature in 0.1 K (scale and offset), current + charging negated,
    SoC in 0.1 % as a fraction."""
    bms = load_instrument("seplos-v3")
    assert isinstance(bms, ModbusMap)
    values = {"voltage_v": 53.12, "current_a": -4.2, "remaining_ah": 87.5, "soc": 0.734,
              "temperature_c": 24.85, "cell_count": 16}
    async with serve_map(bms, values) as served:
        resource = f"modbus+tcp://127.0.0.1:{served.port}?unit=1"
        read = await testbed("instrument", "read", resource, "--model", bms.model, "--json")
        raw = dict(served.registers)
    assert read.code == 0, read.err
    got = {r["name"]: r["value"] for r in read.json}
    assert got["voltage_v"] == pytest.approx(53.12) and got["soc"] == pytest.approx(0.734)
    assert got["temperature_c"] == pytest.approx(24.85, abs=0.051)
    assert got["current_a"] == pytest.approx(-4.2) and got["cell_count"] == 16
    assert bms.point("temperature_c").codec.encode(24.85) == [2980]  # 298.0 K in 0.1 K
    assert bms.point("current_a").codec.encode(-4.2) == [420]  # 4.2 A charging: + on the wire
    assert raw == {}, "a read wrote nothing"
