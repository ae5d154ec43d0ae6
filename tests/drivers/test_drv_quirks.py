"""Each kind of misbehaving instrument from issue 12, switched on in our emulators, and the
instrument-file key (or driver rule) that copes with it.

Every test here failed without its fix (see the commit log for the deliberate breaks)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from drivers.bench.base import ReadbackMismatch
from drivers.bench.health import DefectiveDevices, DeviceUnavailable
from drivers.bench.modbus_devices import InvalidReading, check_value
from drivers.clock import RealClock, VirtualClock
from drivers.emulators.bench import EmulatedBench
from drivers.instruments.model import InstrumentFileError, ModbusMap, load_instrument
from drivers.protocol.errors import InstrumentMessage
from drivers.protocol.scpi import ScpiLink
from drivers.registry import build_bench
from drivers.spec import RigSpec
from drivers.transport.tcp import TcpTransport
from tests.drivers.conftest import emulated_rig

INSTRUMENTS = Path(__file__).resolve().parents[2] / "drivers" / "instruments"


def _file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(text, "utf-8")
    return str(path)


def _edited(tmp_path: Path, model: str, old: str, new: str) -> str:
    text = (INSTRUMENTS / f"{model}.toml").read_text("utf-8")
    assert old in text
    return _file(tmp_path, f"{model}-edited", text.replace(old, new, 1))


def _with_model(emu: EmulatedBench, role: str, model: str, **over: Any) -> RigSpec:
    """The emulated rig, every device of ``role`` driven with instrument file ``model``."""
    rig = emulated_rig(emu, **over)

    def swap(spec: Any) -> Any:
        return dataclasses.replace(spec, model=model) if spec.role == role else spec

    return dataclasses.replace(rig, households=tuple(
        dataclasses.replace(h, devices={r: swap(d) for r, d in h.devices.items()})
        for h in rig.households))


# -- transient answers ------------------------------------------------------------------------


async def test_busy_answers_are_asked_again_within_the_period(emulator: EmulatedBench) -> None:
    meter = emulator.device("household 2 meter")
    meter.quirks.busy_every = 3  # type: ignore[union-attr]
    bench = build_bench(emulated_rig(emulator, control_period_s=0.25), RealClock())
    try:
        dev = bench.households["2"].meter
        for _ in range(12):
            await dev.read()  # never DeviceUnavailable
        assert dev.link.busy_retries >= 3
        assert not bench.ctx.extras["defects"].is_defective("household 2 meter")
    finally:
        for d in bench.devices():
            await d.close()


async def test_scpi_busy_codes_declared_in_the_file_are_retried(
        emulator: EmulatedBench, tmp_path: Path) -> None:
    supply = emulator.device("household 1 pv")
    supply.quirks.busy_every = 2  # type: ignore[union-attr]
    model = _edited(tmp_path, "generic-scpi-supply", 'init = ["*CLS"]',
                    'init = ["*CLS"]\nbusy_errors = [-213]')
    bench = build_bench(_with_model(emulator, "pv", model), RealClock())
    try:
        pv = bench.households["1"].pv
        for watts in (10.0, 20.0, 30.0, 40.0):
            await pv.set_power(watts)
        assert pv.inner.link.busy_retries >= 2  # type: ignore[attr-defined]
    finally:
        for d in bench.devices():
            await d.close()


def test_the_back_off_scales_with_the_control_period() -> None:
    clock = VirtualClock()
    defects = DefectiveDevices.for_period(clock, 0.25)
    defects.add("m", "busy")
    assert defects.seconds_to_retry("m") == 0.25  # under the 3-period staleness limit
    defects.add("m", "busy")
    assert defects.seconds_to_retry("m") == 0.5


# -- readings checked before use -----------------------------------------------------------


@pytest.mark.parametrize("value, problem", [
    (math.nan, "not a number"), (math.inf, "infinite"), (-math.inf, "infinite"),
    (2.5e-41, "denormal"), (1e6, "outside its valid range"),
])
def test_impossible_values_make_the_reading_invalid(value: float, problem: str) -> None:
    pzem = load_instrument("peacefair-pzem017")
    eastron = load_instrument("eastron-sdm630")
    assert isinstance(pzem, ModbusMap) and isinstance(eastron, ModbusMap)
    point = pzem.point("voltage_v") if problem.startswith("outside") \
        else eastron.point("frequency_hz")
    with pytest.raises(InvalidReading, match=problem):
        check_value(point, value)
    assert check_value(eastron.point("frequency_hz"), 50.0) == 50.0


async def test_a_map_off_by_one_register_reads_invalid_not_2_5e_41_hz(
        emulator: EmulatedBench, tmp_path: Path) -> None:
    # the frequency one register late: its low word and the import counter's high word,
    # as a datasheet read one register off gives (the 2.5e-41 Hz)
    shifted = (INSTRUMENTS / "eastron-sdm630.toml").read_text()
    for hexa in ("0x0156", "0x004A", "0x0048", "0x0046", "0x0034", "0x000C", "0x0006",
                 "0x0004", "0x0002", "0x0000"):
        shifted = shifted.replace(f"address = {hexa}", f"address = {int(hexa, 16) + 1}")
    model = _file(tmp_path, "sdm630-off-by-one", shifted)
    emulator.plant.rigs["2"].meter.import_wh = 1234.5
    bench = build_bench(_with_model(emulator, "meter", model), RealClock())
    try:
        with pytest.raises(DeviceUnavailable, match=r"frequency_hz = .*e-41 is a denormal"):
            await bench.households["2"].meter.identify()  # what rig check calls
        assert bench.ctx.extras["defects"].is_defective("household 2 meter")  # flagged
    finally:
        for d in bench.devices():
            await d.close()


# -- RS-485 turnaround -------------------------------------------------------------------------


async def test_a_slow_rs485_device_hears_every_request_once_its_turnaround_is_declared(
        small_rig: RigSpec, tmp_path: Path) -> None:
    async def unheard(model: str | None) -> tuple[int, int]:
        """(requests the slow meter did not hear, reads that failed)"""
        failed = 0
        async with EmulatedBench(small_rig) as emu:
            meter = emu.device("household 1 meter")
            meter.quirks.turnaround_s = 0.03  # type: ignore[union-attr]
            rig = _with_model(emu, "meter", model) if model else emulated_rig(emu)
            bench = build_bench(rig, RealClock())
            try:
                for _ in range(3):
                    for h in ("1", "2"):
                        try:
                            await bench.households[h].meter.read()
                        except DeviceUnavailable:
                            failed += 1
            finally:
                for d in bench.devices():
                    await d.close()
            return int(meter.quirks.unheard), failed  # type: ignore[union-attr]

    declared = _edited(tmp_path, "eastron-sdm630", 'word_order = "big"',
                       'word_order = "big"\nturnaround_s = 0.04')
    assert await unheard(declared) == (0, 0)
    lost, _ = await unheard(None)
    assert lost > 0  # the spec's 4 ms silent interval is not enough for this one


# -- relays as bits of one register -------------------------------------------------------------

RELAY_BITS = """
[instrument]
model = "relay-bits"
protocol = "modbus"
roles = ["relay"]
title = "Relay module: relay N is bit N of holding register 0"
follows = "a vendor sheet"
channels = 8
write_function = 6

[points]
closed = { table = "holding", address = 0, type = "u16", access = "rw", bit = 0 }
"""


async def test_relays_as_bits_of_one_register_switch_only_their_own(
        small_rig: RigSpec, tmp_path: Path) -> None:
    model = _file(tmp_path, "relay-bits", RELAY_BITS)
    async with EmulatedBench(small_rig, models={"relay": model}) as emu:
        bench = build_bench(_with_model(emu, "relay", model), RealClock())
        try:
            await bench.households["2"].relay.set_closed(True)
            states = [await bench.households[h].relay.read_closed() for h in ("1", "2", "3")]
            assert states == [False, True, False]
            assert [emu.plant.rigs[h].relay_closed for h in ("1", "2", "3")] == states
            await bench.households["1"].relay.set_closed(True)
            await bench.households["2"].relay.set_closed(False)
            assert [emu.plant.rigs[h].relay_closed for h in ("1", "2", "3")] == \
                [True, False, False]
        finally:
            for d in bench.devices():
                await d.close()


def test_a_multi_channel_whole_register_is_refused(tmp_path: Path) -> None:
    model = _file(tmp_path, "relay-word", RELAY_BITS.replace(", bit = 0", ""))
    with pytest.raises(InstrumentFileError, match="every channel would write the same one"):
        load_instrument(model)


async def test_a_switch_that_does_not_take_is_a_fault(emulator: EmulatedBench,
                                                      bench: Any) -> None:
    board = emulator.device("household 1 relay").binding  # type: ignore[union-attr]
    board.setters["closed"] = lambda ch, v: None  # the contactor is welded open
    with pytest.raises(ReadbackMismatch, match="closed reads back 0 after 1"):
        await bench.households["1"].relay.set_closed(True)


# -- numbering ----------------------------------------------------------------------------------


def test_datasheet_numbering_is_refused_with_a_hint_or_declared(tmp_path: Path) -> None:
    text = (INSTRUMENTS / "eastron-sdm630.toml").read_text("utf-8")
    datasheet = text.replace("address = 0x0046", "address = 30071")
    with pytest.raises(InstrumentFileError, match=r"30071 looks like datasheet numbering.*"
                       r"give 70.*numbering = \"one-based\""):
        load_instrument(_file(tmp_path, "ds", datasheet))
    one_based = text.replace('word_order = "big"', 'word_order = "big"\nnumbering = '
                             '"one-based"')
    for hexa in ("0x0000", "0x0002", "0x0004", "0x0006", "0x000C", "0x0034", "0x0046",
                 "0x0048", "0x004A", "0x0156"):
        one_based = one_based.replace(f"address = {hexa}", f"address = {30001 + int(hexa, 16)}")
    declared = load_instrument(_file(tmp_path, "one", one_based))
    shipped = load_instrument("eastron-sdm630")
    assert isinstance(declared, ModbusMap) and isinstance(shipped, ModbusMap)
    assert {n: p.address for n, p in declared.points.items()} == \
        {n: p.address for n, p in shipped.points.items()}


@pytest.mark.parametrize("key, value, problem", [
    ("write_function", "3", "expected 6 or 16"),
    ("coil_write_function", "6", "expected 5 or 15"),
    ("max_read_registers", "200", "1..125"),
    ("turnaround_s", "-1", "seconds"),
    ("wirte_function", "16", "unknown key"),
])
def test_quirk_keys_are_checked(tmp_path: Path, key: str, value: str, problem: str) -> None:
    model = _edited(tmp_path, "testbed-bms-converter", 'word_order = "big"',
                    f'word_order = "big"\n{key} = {value}')
    with pytest.raises(InstrumentFileError, match=problem):
        load_instrument(model)


async def test_a_device_that_reads_few_registers_at_a_time_is_asked_so(
        emulator: EmulatedBench, tmp_path: Path) -> None:
    meter = emulator.device("household 2 meter")
    meter.quirks.max_read = 4  # type: ignore[union-attr]
    bench = build_bench(emulated_rig(emulator), RealClock())
    try:
        with pytest.raises(DeviceUnavailable, match="Modbus exception 3"):
            await bench.households["2"].meter.read()
    finally:
        for d in bench.devices():
            await d.close()
    model = _edited(tmp_path, "eastron-sdm630", 'word_order = "big"',
                    'word_order = "big"\nmax_read_registers = 4')
    bench = build_bench(_with_model(emulator, "meter", model), RealClock())
    try:
        assert (await bench.households["2"].meter.read()).voltage_v == 48.0
    finally:
        for d in bench.devices():
            await d.close()


def test_max_read_registers_splits_the_requests() -> None:
    from drivers.bench.modbus_devices import plan_reads

    eastron = load_instrument("eastron-sdm630")
    assert isinstance(eastron, ModbusMap)
    points = [eastron.point(n) for n in ("voltage_v", "voltage_l2_v", "voltage_l3_v",
                                         "current_a")]
    assert len(plan_reads(points)) == 1
    assert [b.count for b in plan_reads(points, max_registers=4)] == [4, 4]


# -- SCPI: remote, settling, echo, the instrument's own words ------------------------------------


async def test_a_local_mode_reply_is_reported_verbatim_then_remote_fixes_it(
        emulator: EmulatedBench, tmp_path: Path) -> None:
    supply = emulator.device("household 1 pv")
    supply.quirks.local_until = "SYST:REM"  # type: ignore[union-attr]
    bench = build_bench(emulated_rig(emulator), RealClock())
    try:
        with pytest.raises(DeviceUnavailable) as info:
            await bench.households["1"].pv.set_power(10.0)
        assert isinstance(info.value.__cause__, InstrumentMessage)
        assert "the instrument answered 'LOCAL MODE'" in str(info.value)
    finally:
        for d in bench.devices():
            await d.close()
    model = _edited(tmp_path, "generic-scpi-supply", 'init = ["*CLS"]',
                    'init = ["*CLS"]\nremote = ["SYST:REM"]')
    bench = build_bench(_with_model(emulator, "pv", model), RealClock())
    try:
        await bench.households["1"].pv.set_power(10.0)
        assert (await bench.households["1"].pv.read()).voltage_v == 48.0
    finally:
        for d in bench.devices():
            await d.close()


async def test_a_supply_that_needs_to_settle_after_a_setting_gets_its_pause(
        emulator: EmulatedBench, tmp_path: Path) -> None:
    supply = emulator.device("household 1 pv")
    supply.quirks.settle_s = 0.05  # type: ignore[union-attr]
    model = _edited(tmp_path, "generic-scpi-supply", 'init = ["*CLS"]',
                    'init = ["*CLS"]\nsettle_s = 0.06')
    bench = build_bench(_with_model(emulator, "pv", model), RealClock())
    try:
        for watts in (10.0, 20.0):
            await bench.households["1"].pv.set_power(watts)
        assert supply.quirks.unheard == 0  # type: ignore[union-attr]
    finally:
        for d in bench.devices():
            await d.close()


async def test_an_echoing_instrument_is_understood(emulator: EmulatedBench,
                                                   tmp_path: Path) -> None:
    supply = emulator.device("household 1 pv")
    supply.quirks.echo = True  # type: ignore[union-attr]
    model = _edited(tmp_path, "generic-scpi-supply", 'init = ["*CLS"]',
                    'init = ["*CLS"]\necho = true\nopc = true')
    bench = build_bench(_with_model(emulator, "pv", model), RealClock())
    try:
        await bench.households["1"].pv.set_power(10.0)
        assert (await bench.households["1"].pv.read()).voltage_v == 48.0
    finally:
        for d in bench.devices():
            await d.close()


def test_quirks_are_switched_on_by_text_as_emulate_takes_them() -> None:
    from drivers.emulators.faults import Quirks, apply_quirk

    q = Quirks()
    for text in ("busy_every:10", "refuse_functions:6", "counter_offset:import_wh=9999990",
                 "counter_rollover:import_wh=10000000", "echo:true", "local_until:SYST:REM"):
        apply_quirk(q, text)
    assert q.busy_every == 10 and q.refuse_functions == {6} and q.echo
    assert q.counter("import_wh", 15.0) == 5.0 and q.local_until == "SYST:REM"
    with pytest.raises(ValueError, match="unknown quirk 'bussy'"):
        apply_quirk(q, "bussy:1")


async def test_the_late_reply_of_a_cancelled_query_does_not_answer_the_next_one() -> None:
    """A signal cancels ``OUTP?`` while the instrument is answering; the safe state then asks
    ``OUTP?`` again on the same link and must hear the instrument's *present* answer. Without
    the drain, the late ``1`` (output on) arrived after the input was discarded and was read
    as the read-back of ``OUTP OFF``: a run stopped by Ctrl-C ended 'safe state incomplete'."""
    output = ["1"]

    async def answer_late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := (await reader.readline()).decode().strip():
            if line.startswith("OUTP "):
                output[0] = "0" if line.endswith("OFF") else "1"
                continue
            reply = output[0] if line == "OUTP?" else "0,\"No error\""
            await asyncio.sleep(0.08)  # answers, but after the asker has given up
            writer.write(f"{reply}\n".encode())
            await writer.drain()

    server = await asyncio.start_server(answer_late, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = ScpiLink(lambda: TcpTransport("127.0.0.1", port), timeout_s=0.5, error_query=None)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.03):  # cancelled mid-exchange
                await link.query("OUTP?")
        await link.write("OUTP OFF")
        assert await link.query("OUTP?") == "0"
    finally:
        await link.close()
        server.close()
        await server.wait_closed()
