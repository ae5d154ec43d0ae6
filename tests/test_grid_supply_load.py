"""The grid node as a supply plus a load (issue 13 item 2): a one-direction supply sources
into the bus when the community imports, an electronic load sinks when it exports. The
rig example university-lab3-supply-load is described, checked against both instruments'
ratings, emulated as written and run to a passing JUnit file."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from drivers.bench.scpi_devices import ScpiGrid, ScpiGridSink
from drivers.bench.split import SplitGrid
from drivers.clock import RealClock
from drivers.emulators.bench import EmulatedBench
from drivers.emulators.scpi_server import EmulatedScpiDevice
from drivers.registry import build_bench
from rigs import builtin
from testbed.config.rig import load_rig, rig_from_dict
from testbed.config.scenario import load_scenario
from testbed.errors import InputError
from testbed.ledger.store import Store
from testbed.run.preflight import PreflightError, ensure_fits, ratings_refusals
from testbed.run.runner import run_scenario
from testbed.run.validation import write_junit

RIG_NAME = "university-lab3-supply-load"


def _rig_file(tmp_path: Path, old: str = "", new: str = "") -> Path:
    path = tmp_path / "rig.toml"
    path.write_text(builtin("rigs")[RIG_NAME].read_text().replace(old, new))
    return path


def test_the_grid_node_of_two_instruments_is_described() -> None:
    rig = load_rig(RIG_NAME)
    grid = rig.grid
    assert grid.driver == "split"
    assert {k: (p.role, p.model) for k, p in grid.parts.items()} == {
        "supply": ("grid_source", "rigol-dp800"), "load": ("grid_sink", "generic-scpi-load-cv")}
    assert ratings_refusals(rig) == []
    bench = build_bench(rig, RealClock(), read_only=True)
    assert isinstance(bench.grid, SplitGrid)
    assert isinstance(bench.grid.supply, ScpiGrid) and type(bench.grid.supply) is ScpiGrid
    assert isinstance(bench.grid.load, ScpiGridSink)


def test_a_typo_in_a_grid_part_names_file_line_and_key(tmp_path: Path) -> None:
    path = _rig_file(tmp_path, 'model = "generic-scpi-load-cv"',
                     'model = "generic-scpi-load-cv"\ntimeout_z = 1')
    with pytest.raises(InputError) as err:
        load_rig(str(path))
    text = str(err.value)
    lines = path.read_text().splitlines()
    line = next(i for i, t in enumerate(lines, 1) if t.startswith("timeout_z"))
    assert f"{path}:{line}" in text and "grid.load" in text and "timeout_s" in text
    # one part only: the other is named as missing, at the grid's table
    path = _rig_file(tmp_path, '[grid.load]', '[grid.lod]')
    with pytest.raises(InputError, match=r"grid.*'load'"):
        load_rig(str(path))


def test_both_instruments_ratings_are_checked_before_the_bench_moves(tmp_path: Path) -> None:
    # a 48 V bus: the DP811 supply is rated 40 V, and 300 W is above its 200 W
    path = _rig_file(tmp_path, "bus_voltage_v = 24.0", "bus_voltage_v = 48.0")
    path.write_text(path.read_text().replace("max_power_w = 150      #",
                                             "max_power_w = 300      #"))
    rig = load_rig(str(path))
    with pytest.raises(PreflightError, match="grid supply: max_power_w = 300 W"):
        ensure_fits(rig, [])  # the run stops before the bench moves
    refusals = {(r.device, r.text) for r in ratings_refusals(rig)}
    supply = [t for d, t in refusals if d == "grid supply"]
    assert any("max_power_w = 300 W but rigol-dp800 is rated 200 W" in t for t in supply)
    assert any("the bus needs 48 V" in t and "rated 40 V" in t for t in supply)
    # a file that says it can serve as the grid's supply but is rated to sink only
    sink_only = tmp_path / "sink-only.toml"
    sink_only.write_text(
        (Path(__file__).parent.parent / "drivers" / "instruments"
         / "generic-scpi-supply.toml").read_text()
        .replace('model = "generic-scpi-supply"', 'model = "sink-only"')
        .replace('directions = ["source"]', 'directions = ["sink"]'))
    path = _rig_file(tmp_path, 'model = "rigol-dp800"', f'model = "{sink_only}"')
    refusals = {(r.device, r.text) for r in ratings_refusals(load_rig(str(path)))}
    assert ("grid supply", "role grid_source must source power but sink-only is rated to "
            "sink only: use an instrument that can") in refusals


class SteppedClock:
    """Time the test moves by hand, shared by the emulated plant and the drivers (whose
    energy samplers wait for it): an hour passes in one step, over real sockets."""

    waits = True

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, deadline: float) -> None:
        while self.t < deadline:
            await asyncio.sleep(0.005)


async def test_emulated_as_written_import_and_export_and_safe_state() -> None:
    rig = load_rig(RIG_NAME)
    clock = SteppedClock()
    async with EmulatedBench(rig, clock=clock) as emu:
        data = emu.rig_dict()
        served = data["grid"]
        assert served["supply"]["model"] == "rigol-dp800"
        assert served["load"]["model"] == "generic-scpi-load-cv"
        assert served["supply"]["resource"] != served["load"]["resource"]
        assert served["max_power_w"] == 150
        live = rig_from_dict("x", data)
        bench = build_bench(live, clock)
        grid = bench.grid
        assert isinstance(grid, SplitGrid)
        try:
            await grid.set_enabled(True)
            supply = emu.device("grid supply")
            load = emu.device("grid load")
            assert isinstance(supply, EmulatedScpiDevice)
            assert isinstance(load, EmulatedScpiDevice)
            assert ":SOUR1:VOLT 24.0000" in supply.lines_seen  # CV at the bus
            assert "SOUR:VOLT 24.4800" in load.lines_seen  # CV at 24 x 1.02
            assert "SOUR:FUNC VOLT" in load.lines_seen
            plant = emu.plant
            # the community imports: the supply sources, its output integrated as import
            rig1 = plant.rigs["1"]
            rig1.relay_closed, rig1.load.on, rig1.load.setpoint_w = True, True, 40.0
            clock.t += 1  # the plant's powers follow its setpoints from its next step
            first = await grid.read()
            clock.t += 3600
            after = await grid.read()
            assert after.import_wh - first.import_wh == pytest.approx(40.0, rel=0.02)
            assert after.export_wh == first.export_wh == 0.0
            assert after.power_w == pytest.approx(-40.0, rel=0.02)
            # it exports: the load sinks, its input integrated as export
            rig1.load.on, rig1.pv.on, rig1.pv.setpoint_w = False, True, 30.0
            clock.t += 1
            await grid.read()
            before = await grid.read()
            clock.t += 3600
            end = await grid.read()
            assert end.export_wh - before.export_wh == pytest.approx(30.0, rel=0.02)
            assert end.import_wh == pytest.approx(before.import_wh, abs=0.5)
            assert end.power_w == pytest.approx(30.0, rel=0.02)
            # safe state: the load's input off (read back), the supply still holds the bus
            await grid.safe_state()
            assert "INP OFF" in load.lines_seen
            assert not any(line.startswith(":OUTP CH1,OFF") for line in supply.lines_seen)
            assert plant.grid.enabled
        finally:
            await grid.close()


@pytest.mark.serial
async def test_the_lab3_bench_with_a_supply_plus_load_grid_runs_to_a_passing_junit(
        tmp_path: Path) -> None:
    sc = load_scenario("lab3-scenario")
    assert len(sc.households) == 3
    async with EmulatedBench(load_rig(RIG_NAME)) as emu:
        data = emu.rig_dict(time_scale=4320, control_period_s=0.8)
        for table in [data["grid"]["supply"], data["grid"]["load"],
                      *(t for h in data["households"] for t in h.values()
                        if isinstance(t, dict))]:
            table["timeout_s"] = 0.5
        out = await run_scenario(sc, rig_from_dict("lab3-supply-load", data),
                                 Store(tmp_path / "sl.db"), clock=RealClock())
        plant_import = emu.plant.grid.meter.import_wh
        plant_export = emu.plant.grid.meter.export_wh
    assert out.status == "finished"
    measured = [iv.measurement for iv in out.intervals]
    export = sum(m.grid_export_wh for m in measured)
    imported = sum(m.grid_import_wh for m in measured)
    # import is the supply's integrated output, export the load's integrated input, each
    # against the plant's own grid meter
    assert export == pytest.approx(plant_export, rel=0.05) and export > 0
    assert imported <= plant_import + 0.05 * plant_export
    junit = tmp_path / "sl.xml"
    write_junit(junit, out.checks, "testbed.lab3-supply-load")
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    assert int(suite.get("tests", "0")) > 0
    assert suite.get("failures") == "0" and suite.get("errors", "0") == "0", \
        ET.tostring(suite, "unicode")
