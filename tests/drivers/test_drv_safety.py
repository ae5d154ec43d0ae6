"""A bench left safe: rig check reads only, rig safe reads back, watchdogs armed and listed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from typer.testing import CliRunner

from drivers.clock import RealClock
from drivers.emulators.bench import EmulatedBench
from drivers.emulators.modbus_device import EmulatedModbusDevice
from drivers.emulators.scpi_server import EmulatedScpiDevice
from drivers.registry import build_bench
from drivers.spec import RigSpec
from testbed.cli.app import app
from testbed.ledger.store import Store
from testbed.run.bench import check_rig, make_safe
from testbed.run.preflight import unwatched
from tests.drivers.conftest import emulated_rig

READ_FUNCTIONS = {1, 2, 3, 4}


def _queries_only(emu: EmulatedBench) -> list[str]:
    """Every line or function an emulated instrument saw that was not a question."""
    sent = []
    for name, end in emu.endpoints.items():
        dev = end.emulated
        if isinstance(dev, EmulatedScpiDevice):
            sent += [f"{name}: {line}" for line in dev.lines_seen
                     if "?" not in line.split()[0]]
        elif isinstance(dev, EmulatedModbusDevice):
            sent += [f"{name}: function {fc}" for fc in dev.functions if fc not in READ_FUNCTIONS]
    return sent


async def test_rig_check_sends_nothing_but_questions(small_rig: RigSpec) -> None:
    async with EmulatedBench(small_rig) as emu:
        results = await check_rig(emulated_rig(emu))
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        assert _queries_only(emu) == []  # not even *CLS or the supply's voltage setting


async def test_rig_check_write_test_writes_and_reads_back(small_rig: RigSpec) -> None:
    async with EmulatedBench(small_rig) as emu:
        emu.plant.rigs["1"].relay_closed = True
        emu.plant.rigs["1"].pv.on = True
        results = {r.device: r for r in await check_rig(emulated_rig(emu), write_test=True)}
        assert all(r.ok for r in results.values())
        assert results["household 1 pv"].state["write_test"] == "ok"
        assert _queries_only(emu)  # it did write
        assert not emu.plant.rigs["1"].relay_closed and not emu.plant.rigs["1"].pv.on


def test_rig_check_warns_when_a_run_holds_the_rig(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    store.insert("runs", {"id": "r7", "scenario": "scenario2", "rig": "mock",
                          "status": "running", "started_at": "2026-11-30T15:00:00+00:00"})
    store.close()
    result = CliRunner().invoke(app, ["rig", "check", "mock", "--db", str(tmp_path / "t.db")])
    assert result.exit_code == 0
    assert "warning: run r7" in result.output and "running on rig mock" in result.output


async def test_rig_safe_turns_everything_off_and_reads_it_back(small_rig: RigSpec) -> None:
    async with EmulatedBench(small_rig) as emu:
        for rig in emu.plant.rigs.values():
            rig.relay_closed = rig.pv.on = rig.load.on = rig.battery.enabled = True
        results = await make_safe(emulated_rig(emu))
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        for rig in emu.plant.rigs.values():
            assert not (rig.relay_closed or rig.pv.on or rig.load.on or rig.battery.enabled)
        # a contactor welded shut: the read-back says so, and rig safe fails
        emu.plant.rigs["2"].relay_closed = True
        board = emu.device("household 2 relay").binding
        board.setters["closed"] = lambda ch, v: None
        failed = [r for r in await make_safe(emulated_rig(emu)) if not r.ok]
    assert [r.device for r in failed] == ["household 2 relay"]
    assert "closed reads back 1 after 0" in failed[0].error


async def test_the_controller_arms_every_declared_watchdog(small_rig: RigSpec) -> None:
    async with EmulatedBench(small_rig) as emu:
        rig = emulated_rig(emu, control_period_s=0.25)
        no_param = dataclasses.replace(rig, households=tuple(
            dataclasses.replace(h, devices={**h.devices, "battery": dataclasses.replace(
                h.devices["battery"], params={k: v for k, v in h.devices["battery"].params
                                              .items() if k != "watchdog_s"})})
            for h in rig.households))
        bench = build_bench(no_param, RealClock())
        try:
            await bench.households["1"].battery.set_power(0.0)
            binding = emu.device("household 1 battery").binding
            assert binding.watchdog_s == 5.0  # the default: 5 s or 10 periods, the larger
        finally:
            for d in bench.devices():
                await d.close()


async def test_preflight_lists_the_devices_without_a_watchdog(small_rig: RigSpec) -> None:
    async with EmulatedBench(small_rig) as emu:
        live = unwatched(emulated_rig(emu))
    assert live == [f"household {h} {role}" for h in ("1", "2", "3")
                    for role in ("pv", "load", "relay")]  # batteries have one
    assert unwatched(small_rig) == []  # mock devices end with the controller's process


def test_rig_safe_on_the_command_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["rig", "safe", "mock", "--json"])
    assert result.exit_code == 0, result.output
    assert '"identity": "safe"' in result.output and '"relay": "open"' in result.output
