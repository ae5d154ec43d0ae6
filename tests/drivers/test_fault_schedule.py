"""Faults switched on and cleared while the emulator serves (issue 15 item 1): the
``--fault`` grammar with its time window, the checks on it, the schedule on the bench's
clock, and the control socket (``testbed emulate --control PORT`` + ``testbed fault``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drivers.bench.health import DeviceUnavailable
from drivers.clock import VirtualClock
from drivers.emulators.bench import EmulatedBench
from drivers.emulators.control import ControlServer, send
from drivers.emulators.faults import ScheduledFault, parse_fault
from drivers.spec import RigSpec
from testbed.cli.app import app
from tests.drivers.conftest import drivers_for


def test_the_grammar_reads_device_kind_count_options_and_window() -> None:
    item = parse_fault("hh7.pv=silent@12s-20s")
    assert (item.device, item.fault.kind, item.fault.count) == ("household 7 pv", "no_reply",
                                                                 None)
    assert (item.start_s, item.end_s) == (12.0, 20.0)
    late = parse_fault("household 2 battery=late:3,delay_s=0.4@500ms")
    assert (late.fault.kind, late.fault.count, late.fault.delay_s) == ("late_reply", 3, 0.4)
    assert (late.start_s, late.end_s) == (0.5, None)
    assert parse_fault("hh1.battery.bms=exception,code=6").device == "household 1 battery bms"
    assert parse_fault("grid=drop").fault.kind == "disconnect"
    assert parse_fault(late.describe()) == late  # what is printed reads back the same


@pytest.mark.parametrize(("text", "says"), [
    ("hh7.pv", "expected DEVICE=KIND"),
    ("hh7.pv=melted", "unknown fault kind 'melted'"),
    ("hh7.pv=silent:0", "COUNT must be a whole number"),
    ("hh7.pv=late,delay=3", "unknown option 'delay=3'"),
    ("hh7.pv=late,delay_s=soon", "option delay_s expects a number"),
    ("hh7.pv=silent@12s-10s", "END (10 s) must come after START (12 s)"),
    ("hh7.pv=silent@noon", "START 'noon' is not a time"),
])
def test_a_malformed_fault_gets_one_clear_message(text: str, says: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_fault(text)
    assert says in str(caught.value) and repr(text) in str(caught.value)


async def test_the_bench_refuses_an_unknown_device_or_a_fault_of_the_other_protocol(
        emulator: EmulatedBench) -> None:
    with pytest.raises(ValueError, match="no device 'household 9 pv'"):
        emulator.schedule([parse_fault("hh9.pv=silent")])
    with pytest.raises(ValueError, match="household 1 meter is a modbus instrument: "
                                         "scpi_error is a scpi fault"):
        emulator.schedule([parse_fault("hh1.meter=refuse")])
    with pytest.raises(ValueError, match="household 1 pv is a scpi instrument"):
        emulator.schedule([parse_fault("hh1.pv=silent"), parse_fault("hh1.pv=exception")])
    assert emulator.active_faults() == {}, "one bad item schedules nothing"


async def test_a_scheduled_fault_comes_and_goes_on_the_bench_clock(small_rig: RigSpec) -> None:
    clock = VirtualClock()
    async with EmulatedBench(small_rig, clock=clock) as emu:
        bench = drivers_for(emu, clock)
        meter = bench.households["2"].meter
        emu.schedule([ScheduledFault("household 2 meter", parse_fault("x=silent").fault,
                                     2.0, 4.0)])
        seen = []
        for t in (1.0, 3.0, 5.0):
            await clock.sleep_until(t)
            await asyncio.sleep(0.02)  # the schedule's turn: it waits for the clock
            seen.append(emu.active_faults().get("household 2 meter"))
            if t == 3.0:
                with pytest.raises(DeviceUnavailable):
                    await meter.read()
        assert seen == [None, "no_reply", None]
        assert emu.device("household 2 meter").faults.served >= 1, "the fault reached the wire"
        for device in bench.devices():
            await device.close()


async def test_the_control_socket_injects_lists_and_clears(emulator: EmulatedBench) -> None:
    control = ControlServer(emulator)
    port = await control.start()
    try:
        assert await send("127.0.0.1", port, "inject hh1.load=crc:2") == {
            "ok": True, "fault": "household 1 load=crc_error:2@0s"}
        await asyncio.sleep(0.01)
        assert (await send("127.0.0.1", port, "list"))["faults"] == {
            "household 1 load": "crc_error"}
        assert await send("127.0.0.1", port, "clear hh1.load") == {
            "ok": True, "cleared": "household 1 load"}
        assert (await send("127.0.0.1", port, "list"))["faults"] == {}
        bad = await send("127.0.0.1", port, "inject hh1.load=melted")
        assert bad["ok"] is False and "unknown fault kind 'melted'" in bad["error"]
        assert (await send("127.0.0.1", port, "reboot"))["error"].startswith(
            "unknown command 'reboot'")
    finally:
        await control.close()


def test_testbed_fault_commands_talk_to_the_control_socket(
        emulator: EmulatedBench, tmp_path: Path) -> None:
    """The CLI against a control socket served from another thread's loop."""
    import threading

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    ports: list[int] = []

    async def serve() -> None:
        async with EmulatedBench(emulator.rig) as emu:
            control = ControlServer(emu)
            ports.append(await control.start())
            ready.set()
            while not stopping.is_set():
                await asyncio.sleep(0.01)
            await control.close()

    stopping = threading.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()))
    thread.start()
    try:
        assert ready.wait(10)
        port = str(ports[0])
        runner = CliRunner()
        ok = runner.invoke(app, ["fault", "inject", "hh2.battery=exception,code=4",
                                 "--control", port, "--json"])
        assert ok.exit_code == 0, ok.output
        assert json.loads(ok.output)["fault"] == "household 2 battery=exception,code=4@0s"
        listed = runner.invoke(app, ["fault", "list", "--control", port])
        assert "household 2 battery" in listed.output
        bad = runner.invoke(app, ["fault", "inject", "hh2.battery=refuse", "--control", port])
        assert bad.exit_code == 2 and "household 2 battery is a modbus instrument" in bad.output
        assert "Traceback" not in bad.output
        assert runner.invoke(app, ["fault", "clear", "hh2.battery", "--control",
                                   port]).exit_code == 0
    finally:
        stopping.set()
        thread.join(10)
        loop.close()
    nobody = CliRunner().invoke(app, ["fault", "list", "--control", "1"])
    assert nobody.exit_code == 2 and "no emulator control socket at 127.0.0.1:1" in \
        nobody.output


def test_emulate_refuses_a_bad_fault_before_serving(tmp_path: Path) -> None:
    out = tmp_path / "rig.toml"
    result = CliRunner().invoke(app, ["emulate", "mock", "--write-rig", str(out),
                                      "--fault", "hh7.pv=silent@12s-8s"])
    assert result.exit_code == 2 and "END (8 s) must come after START (12 s)" in result.output
    assert not out.exists() and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["emulate", "mock", "--write-rig", str(out),
                                      "--fault", "hh7.meter=refuse@12s"])
    assert result.exit_code == 2 and "household 7 meter is a modbus instrument" in \
        result.output and not out.exists()
