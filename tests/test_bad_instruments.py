"""Issue 12's three cases, built as the issue describes them, on a two-household rig.

* A 1 Wh meter (the PZEM-017's file declares its counter's rollover at 10,000,000 Wh) wraps
  from 9,999,990-odd Wh to 0 mid-run: unwrapped, settled right. A counter that jumps
  backwards instead: the rig leaves the bus, its interval is disputed and not settled, and
  ``testbed ledger verify`` says ok and names the disputed interval.
* A converter served by pymodbus's own server classes refuses function 06: its file's
  ``write_function = 16`` makes it work; without it, one error line naming the device and
  the request, exit 1, and a complete safe state (the converter is disabled all the same).
* A meter that answers "busy" to every 10th request at a 0.25 s control period trips no rig.

These run in real time (the emulators and the pymodbus server are real sockets and ptys).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from contracts import ledger as rules
from drivers.bench.base import SetupFailed
from drivers.clock import RealClock, VirtualClock
from drivers.emulators.bench import EmulatedBench
from drivers.instruments import load_instrument
from drivers.instruments.model import ModbusMap
from drivers.registry import build_bench
from drivers.spec import DeviceSpec, RigSpec
from testbed.config.rig import load_rig, rig_from_dict
from testbed.config.scenario import Scenario, load_scenario
from testbed.ledger.store import Store
from testbed.report.terminal import summarise
from testbed.run.controller import Controller
from testbed.run.runner import RunOutcome, run_scenario
from tests.pymodbus_served import rig_with, serve_map

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
CLI = [sys.executable, "-m", "testbed.cli"]
ROLLOVER_WH = 10_000_000
pytestmark = pytest.mark.serial


def two_households() -> tuple[RigSpec, Scenario]:
    """The mock rig and scenario 2 cut to households 1 (buys 3 kWh) and 2 (sells 2.1)."""
    rig = load_rig("mock")
    sc = load_scenario("scenario2")
    return (dataclasses.replace(rig, households=rig.households[:2]),
            dataclasses.replace(sc, households=sc.households[:2]))


def scaled(rig: RigSpec, k: float) -> RigSpec:
    """``rig`` with its power scale and every rating (power, current, capacity) times ``k``:
    the same day, ``k`` times the lab energy (a 5 s day moves Wh a 1 Wh counter resolves)."""
    def dev(spec: DeviceSpec) -> DeviceSpec:
        lim = spec.limits
        limits = dataclasses.replace(lim, **{key: getattr(lim, key) * k for key in (
            "max_power_w", "max_current_a") if getattr(lim, key) is not None})
        params = {key: v * k if key == "capacity_wh" else v for key, v in spec.params.items()}
        return dataclasses.replace(spec, limits=limits, params=params)
    return dataclasses.replace(
        rig, power_scale=rig.power_scale * k, grid=dev(rig.grid),
        households=tuple(dataclasses.replace(h, devices={r: dev(d) for r, d in
                                                         h.devices.items()})
                         for h in rig.households))


def fast(emu: EmulatedBench, period_s: float = 0.25,
         tolerance_pct: float | None = None) -> RigSpec:
    """The emulated rig with a market day in 5 s, short timeouts; ``tolerance_pct`` wide
    enough for a coarse meter, which pre-flight refuses at the rig's 0.5 %."""
    data = emu.rig_dict(time_scale=17280, control_period_s=period_s)
    if tolerance_pct is not None:
        data["tolerance_pct"] = tolerance_pct
    for table in [data["grid"], *(t for h in data["households"] for t in h.values()
                                  if isinstance(t, dict))]:
        table["timeout_s"] = 0.3
    return rig_from_dict("emulated", data)


async def _run(emu: EmulatedBench, sc: Scenario, store: Store, *, period_s: float = 0.25,
               during: Any = None, tolerance_pct: float | None = None
               ) -> tuple[RunOutcome, Controller]:
    seen: list[Controller] = []
    task = asyncio.create_task(during()) if during else None
    out = await run_scenario(sc, fast(emu, period_s, tolerance_pct), store, clock=RealClock(),
                             on_controller=seen.append)
    if task is not None:
        await task
    return out, seen[0]


def _cli(*args: str, cwd: Path) -> asyncio.subprocess.Process:
    return asyncio.create_subprocess_exec(*CLI, *args, env=ENV, cwd=cwd,
                                          stdout=asyncio.subprocess.PIPE,
                                          stderr=asyncio.subprocess.PIPE)


# -- the wrapped counter ---------------------------------------------------------------------


async def test_a_wrapped_1wh_counter_is_unwrapped_and_settled_right(tmp_path: Path) -> None:
    rig, sc = two_households()
    store = Store(tmp_path / "wrap.db")
    async with EmulatedBench(scaled(rig, 1000), models={"meter": "peacefair-pzem017"}) as emu:
        quirks = emu.device("household 1 meter").quirks  # type: ignore[union-attr]
        # the counter shows 9,999,990 Wh at the start; household 1 draws ~17 Wh in the day
        quirks.counter_offset["import_wh"] = ROLLOVER_WH - 10
        quirks.counter_rollover["import_wh"] = ROLLOVER_WH
        # 1 Wh counts 2.1 kWh (12.15 lab Wh) to 8.2 %: pre-flight refuses it at 0.5 %
        out, _ = await _run(emu, sc, store, tolerance_pct=10)
        drawn = emu.plant.rigs["1"].meter.import_wh
    assert drawn > 10.5, "the counter really passed its rollover"
    iv = out.intervals[0]
    assert out.status == "finished"
    assert iv.measurement.tripped == {} and iv.measurement.disputed == {}
    h1 = next(h for h in iv.settlement.households if h.id == "1")
    assert -4.0 < float(h1.metered_kwh) < -2.0  # 3 kWh bought, at 1 Wh (0.6 kWh) resolution
    assert abs(h1.grid_aud) < 1  # not 17 million AUD
    assert sum(out.balances.values()) == sum(out.opening.values())


async def test_a_counter_that_jumps_back_disputes_the_interval_and_settles_nothing(
        tmp_path: Path) -> None:
    rig, sc = two_households()
    store = Store(tmp_path / "back.db")
    async with EmulatedBench(scaled(rig, 1000), models={"meter": "peacefair-pzem017"}) as emu:
        quirks = emu.device("household 1 meter").quirks  # type: ignore[union-attr]
        quirks.counter_offset["import_wh"] = 5_000.0

        async def jump_back() -> None:
            await asyncio.sleep(2.0)  # mid-day: the meter loses 1,000 Wh
            quirks.counter_offset["import_wh"] = 4_000.0

        out, _ = await _run(emu, sc, store, during=jump_back, tolerance_pct=10)
        relay_closed = emu.plant.rigs["1"].relay_closed
    iv = out.intervals[0]
    assert out.status == "finished"
    assert "counter" in iv.measurement.tripped["1"] and not relay_closed  # off the bus
    assert "went backwards" in iv.measurement.disputed["1"]
    h1 = next(h for h in iv.settlement.households if h.id == "1")
    assert h1.disputed and h1.grid_aud == 0 and h1.market_aud == 0
    assert not [t for t in iv.settlement.transfers if "1" in (t.source, t.target)]
    assert iv.settlement.held and all("1" in (f.buyer, f.seller) for f in iv.settlement.held)
    assert out.balances["1"] == out.opening["1"]  # nothing settled for it
    assert "went backwards" in summarise(out)["disputed"]["interval 0 household 1"]
    op = store.db["keys"].get((out.run_id, "operator"))["public_key"]
    state, err = rules.replay(store.blocks(out.run_id), op)
    assert err is None
    assert [(d[1], d[2]) for d in state.disputes] == [(0, "1")]
    assert [owner for owner, _ in state.frozen.values()] == ["1"]  # its escrow stays held
    store.close()

    proc = await _cli("ledger", "verify", "back.db", cwd=tmp_path)
    stdout, stderr = await proc.communicate()
    text = stdout.decode()
    assert proc.returncode == 0, stderr.decode()
    assert "ok" in text and "disputed, not settled: interval 0 household 1" in text, text
    assert "went backwards" in text


# -- the converter that refuses function 06 --------------------------------------------------

CONVERTER_VALUES = {"soc": 0.5, "voltage_v": 48.0, "energy_wh": 12.5, "capacity_wh": 25.0,
                    "temperature_c": 25.0, "enabled": 1.0}


def _converter_rig(port: int, model: str) -> RigSpec:
    """The two-household rig, household 1's battery on the pymodbus server."""
    return rig_with(two_households()[0], "1", "battery", port, model)


def _only16(tmp_path: Path) -> str:
    text = (ROOT / "drivers/instruments/testbed-bms-converter.toml").read_text()
    path = tmp_path / "converter-fc16.toml"
    path.write_text(text.replace('word_order = "big"\n',
                                 'word_order = "big"\nwrite_function = 16\n', 1))
    return str(path)


async def test_a_converter_refusing_06_fails_set_up_in_one_line_and_still_goes_safe() -> None:
    instrument = load_instrument("testbed-bms-converter")
    assert isinstance(instrument, ModbusMap)
    async with serve_map(instrument, CONVERTER_VALUES, refuse_functions={6}) as served:
        rig = _converter_rig(served.port, "testbed-bms-converter")
        controller = Controller(build_bench(rig, VirtualClock()), VirtualClock())
        with pytest.raises(SetupFailed) as info:
            await controller.connect_rigs()
        failed = await controller.safe_state()
        await controller.close()
    message = str(info.value)
    assert "\n" not in message
    assert "household 1 battery" in message and "watchdog_s=5" in message
    assert "write holding 259" in message and "function 06" in message
    assert "illegal function" in message
    assert failed == []  # complete: every device off, every read-back confirmed
    assert served.registers[0x100] == 0  # the converter really was disabled (function 16)
    assert served.functions[16] >= 1


async def test_the_same_converter_is_driven_with_16_once_its_file_says_so(
        tmp_path: Path) -> None:
    instrument = load_instrument("testbed-bms-converter")
    assert isinstance(instrument, ModbusMap)
    async with serve_map(instrument, CONVERTER_VALUES, refuse_functions={6}) as served:
        rig = _converter_rig(served.port, _only16(tmp_path))
        controller = Controller(build_bench(rig, VirtualClock()), VirtualClock())
        await controller.connect_rigs()
        reading = await controller.bench.households["1"].battery.read()
        failed = await controller.safe_state()
        await controller.close()
    assert reading.enabled and reading.soc == pytest.approx(0.5)
    assert failed == []
    assert served.functions[6] == 0 and served.functions[16] >= 3  # watchdog, enable, off
    assert served.registers[0x103] == 5  # the watchdog armed (rig file: watchdog_s = 5)


async def test_testbed_run_on_that_converter_exits_2_with_one_line(tmp_path: Path) -> None:
    """Its set-up (the watchdog write, function 06) fails when the run asks every
    instrument who it is, before anything is switched on: a set-up error, exit 2, one
    line; the converter is still sent its safe state (disabled with function 16)."""
    instrument = load_instrument("testbed-bms-converter")
    assert isinstance(instrument, ModbusMap)
    mock = (ROOT / "rigs/rigs/mock.toml").read_text()
    async with serve_map(instrument, CONVERTER_VALUES, refuse_functions={6}) as served:
        (tmp_path / "lab.toml").write_text(
            mock.replace('[[households]]\nid = "1"\n', '[[households]]\nid = "1"\n'
                         '[households.battery]\ndriver = "modbus"\n'
                         f'resource = "modbus+tcp://127.0.0.1:{served.port}?unit=1"\n'
                         'model = "testbed-bms-converter"\ntimeout_s = 0.5\n', 1))
        proc = await _cli("run", "scenario2", "--rig", "lab.toml", "--db", "r.db",
                          cwd=tmp_path)
        _, stderr = await asyncio.wait_for(proc.communicate(), 120)
        enabled = served.registers.get(0x100)
    err = stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "household 1 battery" in errors[0] and "function 06" in errors[0]
    assert "failed at identify and set-up, nothing was switched on" in errors[0]
    assert enabled == 0


# -- busy every 10th request ----------------------------------------------------------------


async def test_busy_on_every_10th_request_at_a_quarter_second_trips_no_rig(
        tmp_path: Path) -> None:
    rig, sc = two_households()
    store = Store(tmp_path / "busy.db")
    async with EmulatedBench(rig) as emu:
        meters = [emu.device(f"household {h} meter") for h in ("1", "2")]
        for m in meters:
            m.quirks.busy_every = 10  # type: ignore[union-attr]
        out, controller = await _run(emu, sc, store, period_s=0.25)
        served = [m.requests for m in meters]
    iv = out.intervals[0]
    assert out.status == "finished"
    assert iv.measurement.tripped == {}, iv.measurement.tripped
    assert all(n >= 20 for n in served), served  # two busy answers each, at least
    assert controller.bench.households["1"].meter.link.busy_retries >= 4  # one RTU line
    assert all(c.passed for c in iv.checks), [c for c in iv.checks if not c.passed]
