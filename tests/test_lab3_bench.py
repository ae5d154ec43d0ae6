"""The 3-household bench of issue 13, emulated as written and run to a passing JUnit file:
one 3-channel supply feeding three households' PV over one connection, three loads, the
batteries behind one Modbus TCP gateway, meters on one RTU line, relays on another."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from drivers.clock import RealClock
from drivers.emulators.bench import EmulatedBench
from drivers.emulators.scpi_server import EmulatedScpiDevice
from drivers.resources import parse_resource
from testbed.config.rig import load_rig, rig_from_dict
from testbed.config.scenario import load_scenario
from testbed.ledger.store import Store
from testbed.run.runner import run_scenario
from testbed.run.validation import write_junit

ROOT = Path(__file__).resolve().parent.parent
RIG = ROOT / "rigs" / "examples" / "university-lab3.toml"
SCENARIO = ROOT / "rigs" / "examples" / "lab3-scenario.toml"


def _scpi(emu: EmulatedBench, name: str) -> EmulatedScpiDevice:
    device = emu.device(name)
    assert isinstance(device, EmulatedScpiDevice)
    return device


async def test_emulate_serves_the_rig_as_written() -> None:
    rig = load_rig(str(RIG))
    async with EmulatedBench(rig) as emu:
        data = emu.rig_dict()
        got = {(h["id"], role): t for h in data["households"] for role, t in h.items()
               if isinstance(t, dict)}
        # the operator's models, not the emulator's generic ones
        assert {t["model"] for (_, role), t in got.items() if role == "pv"} == {"rigol-dp832"}
        assert got[("3", "meter")]["model"] == "eastron-sdm630"
        # one supply, one connection, three channels
        pv = {got[(h, "pv")]["resource"] for h in "123"}
        assert len(pv) == 1
        assert [got[(h, "pv")]["channel"] for h in "123"] == [1, 2, 3]
        supply = emu.device("household 1 pv")
        assert isinstance(supply, EmulatedScpiDevice) and sorted(supply.bindings) == [1, 2, 3]
        # meters and relays stay on RTU lines (two of them), with their unit ids
        meters = [parse_resource(got[(h, "meter")]["resource"]) for h in "123"]
        assert {m.link for m in meters} == {"serial"} and len({m.device for m in meters}) == 1
        assert [m.unit for m in meters] == [1, 2, 3]
        relay = parse_resource(got[("1", "relay")]["resource"])
        assert relay.link == "serial" and relay.device != meters[0].device
        # each battery is two instruments: BMSs behind one gateway (units 1..3), and a
        # bidirectional SCPI supply each as the converter
        bms = [parse_resource(got[(h, "battery")]["bms"]["resource"]) for h in "123"]
        assert len({b.link_key for b in bms}) == 1 and [b.unit for b in bms] == [1, 2, 3]
        assert all(b.host == "127.0.0.1" for b in bms)
        conv = [got[(h, "battery")]["converter"] for h in "123"]
        assert {c["model"] for c in conv} == {"generic-scpi-bidirectional"}
        assert len({c["resource"] for c in conv}) == 3
        assert rig_from_dict("x", data).household("2").devices["battery"].driver == "split"


@pytest.mark.serial
async def test_the_lab3_bench_runs_to_a_passing_junit(tmp_path: Path) -> None:
    sc = load_scenario(str(SCENARIO))
    async with EmulatedBench(load_rig(str(RIG))) as emu:
        # a day in 20 s, at a period its 9,600-baud meter line can carry (pre-flight checks)
        data = emu.rig_dict(time_scale=4320, control_period_s=0.8)
        for table in [data["grid"], *(t for h in data["households"] for t in h.values()
                                      if isinstance(t, dict))]:
            table["timeout_s"] = 0.5
        said: list[dict[str, Any]] = []
        out = await run_scenario(sc, rig_from_dict("lab3-emulated", data),
                                 Store(tmp_path / "lab3.db"), clock=RealClock(),
                                 observers=[lambda topic, p: said.append(p)
                                            if p.get("event") == "lab_plan" else None])
        settings = [float(line.split()[1]) for h in "123"
                    for line in _scpi(emu, f"household {h} battery converter").lines_seen
                    if line.upper().startswith("SOUR:POW ")]
        directions = {"source" if v > 0 else "sink" for v in settings if v}
        # channel 2 of the one supply really fed household 2; the converters both sourced
        # and sank (the battery charged and discharged through the sign of the setpoint)
        assert emu.plant.rigs["2"].meter.export_wh > 0
        assert directions == {"source", "sink"}
    assert out.status == "finished"
    # before the real-time run: -3 kWh * 1000 * power_scale / time_scale lab Wh over
    # 86400 / time_scale lab s, the mean power that is
    rig = rig_from_dict("lab3-emulated", data)
    lab_wh, lab_s = -3 * rig.energy_scale, 86_400 / rig.time_scale
    assert said[0]["households"][0] == (f"household 1: -3 kWh -> {lab_wh:.4g} lab Wh over "
                                        f"{lab_s:g} lab s (mean {lab_wh * 3600 / lab_s:.3g} W)")
    junit = tmp_path / "lab3.xml"
    write_junit(junit, out.checks, "testbed.lab3")
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    assert int(suite.get("tests", "0")) > 0
    assert suite.get("failures") == "0" and suite.get("errors", "0") == "0", \
        ET.tostring(suite, "unicode")


SCPI_GRID = '''[grid]                 # a regenerative supply holds the bus: sources and sinks
driver = "scpi"
model = "generic-scpi-bidirectional"
resource = "TCPIP::192.168.1.41::5025::SOCKET"
max_power_w = 300
'''


@pytest.mark.serial
async def test_the_lab3_bench_runs_with_a_bidirectional_scpi_supply_as_grid_node(
        tmp_path: Path) -> None:
    text = RIG.read_text()
    start = text.index("[grid]")
    end = text.index("[defaults.pv]")
    rig_file = tmp_path / "lab3-scpi-grid.toml"
    rig_file.write_text(text[:start] + SCPI_GRID + "\n" + text[end:])
    rig = load_rig(str(rig_file))
    assert rig.grid.driver == "scpi"
    sc = load_scenario(str(SCENARIO))
    async with EmulatedBench(rig) as emu:
        data = emu.rig_dict(time_scale=4320, control_period_s=0.8)
        assert data["grid"]["model"] == "generic-scpi-bidirectional"  # served as written
        for table in [data["grid"], *(t for h in data["households"] for t in h.values()
                                      if isinstance(t, dict))]:
            table["timeout_s"] = 0.5
        out = await run_scenario(sc, rig_from_dict("lab3-scpi-grid", data),
                                 Store(tmp_path / "grid.db"), clock=RealClock())
        grid = _scpi(emu, "grid")
        lines = [line.upper() for line in grid.lines_seen]
        plant_import, plant_export = emu.plant.grid.meter.import_wh, emu.plant.grid.meter.export_wh
    assert out.status == "finished"
    assert "SOUR:VOLT 24.0000" in lines and "OUTP ON" in lines  # CV at the bus, on
    assert "OUTP OFF" not in lines  # its safe state keeps holding the bus
    # the driver's energies, integrated from the node's power once per control period,
    # against the plant's own grid meter (the day exports: the rigs' surplus went to grid)
    measured = [iv.measurement for iv in out.intervals]
    export = sum(m.grid_export_wh for m in measured)
    assert export == pytest.approx(plant_export, rel=0.05) and export > 0
    assert sum(m.grid_import_wh for m in measured) <= plant_import + 0.05 * plant_export
    junit = tmp_path / "grid.xml"
    write_junit(junit, out.checks, "testbed.lab3-scpi-grid")
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    assert suite.get("failures") == "0" and suite.get("errors", "0") == "0", \
        ET.tostring(suite, "unicode")
