"""Every injected fault, on every kind of link: one retry on a fresh connection, then the
device is defective, fails fast while backing off, and recovers once the fault is gone."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from drivers.bench.health import DeviceUnavailable
from drivers.clock import VirtualClock
from drivers.emulators.bench import EmulatedBench
from drivers.registry import Bench
from tests.drivers.conftest import SHORT_TIMEOUT_S, drivers_for

# device -> (how the driver reads it, the link it sits on)
READS: dict[str, Callable[[Bench], Awaitable[Any]]] = {
    "household 1 battery": lambda b: b.households["1"].battery.read(),  # Modbus TCP
    "household 2 meter": lambda b: b.households["2"].meter.read(),  # Modbus RTU on a pty
    "household 1 pv": lambda b: b.households["1"].pv.read(),  # SCPI over TCP
    "household 2 load": lambda b: b.households["2"].load.read(),  # SCPI, Rigol command set
}
LINK_FAULTS = ["no_reply", "late_reply", "crc_error", "disconnect"]


@pytest_asyncio.fixture
async def clocked(emulator: EmulatedBench) -> AsyncIterator[tuple[Bench, VirtualClock]]:
    """Drivers whose back-off runs on a clock the test moves (readings, too)."""
    clock = VirtualClock(start=100.0)
    bench = drivers_for(emulator, clock)
    yield bench, clock
    for device in bench.devices():
        await device.close()


def _fault_options(kind: str, lasting: bool = False) -> dict[str, float]:
    """A late reply misses the timeout: by half of it once, by far when the fault lasts."""
    late = SHORT_TIMEOUT_S * (4 if lasting else 1.5)
    return {"delay_s": late} if kind == "late_reply" else {}


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", LINK_FAULTS)
@pytest.mark.parametrize("device", list(READS))
async def test_one_fault_is_absorbed_by_a_retry_on_a_fresh_connection(
        emulator: EmulatedBench, clocked: tuple[Bench, VirtualClock], device: str,
        kind: str) -> None:
    bench, _ = clocked
    read = READS[device]
    await read(bench)  # connected and set up
    plan = emulator.device(device).faults
    plan.inject(kind, count=1, **_fault_options(kind))
    reading = await read(bench)
    assert plan.served == 1 and plan.active is None, "the fault really fired"
    assert reading.at == 100.0
    assert not bench.ctx.extras["defects"].is_defective(device)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", LINK_FAULTS)
@pytest.mark.parametrize("device", list(READS))
async def test_a_lasting_fault_makes_the_device_defective_then_it_recovers(
        emulator: EmulatedBench, clocked: tuple[Bench, VirtualClock], device: str,
        kind: str) -> None:
    bench, clock = clocked
    read = READS[device]
    await read(bench)
    emulated = emulator.device(device)
    emulated.faults.inject(kind, **_fault_options(kind, lasting=True))
    with pytest.raises(DeviceUnavailable) as info:
        await read(bench)
    message = str(info.value)
    assert device in message and emulator.endpoints[device].resource in message
    assert "fresh connection" in message
    busy_rtu = kind == "late_reply" and "meter" in device  # a busy RTU device hears no retry
    assert emulated.faults.served >= (1 if busy_rtu else 2), "tried, then on a fresh connection"

    # Defective: the next call fails at once, without touching the instrument.
    served = emulated.faults.served
    started = time.perf_counter()
    with pytest.raises(DeviceUnavailable, match=r"defective.*next try in"):
        await read(bench)
    assert time.perf_counter() - started < 0.05 and emulated.faults.served == served

    # After the back-off, one probe goes through; the fault is gone, so it recovers.
    emulated.faults.clear()
    await clock.sleep_until(clock.now() + 1.01)
    reading = await read(bench)
    assert reading.at == clock.now()
    assert not bench.ctx.extras["defects"].is_defective(device)


@pytest.mark.asyncio
async def test_back_off_doubles_while_the_fault_lasts(
        emulator: EmulatedBench, clocked: tuple[Bench, VirtualClock]) -> None:
    bench, clock = clocked
    defects = bench.ctx.extras["defects"]
    emulator.device("household 1 battery").faults.inject("no_reply")
    waits = []
    for _ in range(3):
        with pytest.raises(DeviceUnavailable):
            await bench.households["1"].battery.read()
        waits.append(defects.seconds_to_retry("household 1 battery"))
        await clock.sleep_until(clock.now() + waits[-1])
    assert waits == pytest.approx([1.0, 2.0, 4.0])


@pytest.mark.asyncio
@pytest.mark.parametrize("device", ["household 1 battery", "household 2 meter"])
async def test_a_modbus_exception_is_reported_at_once_without_retry(
        emulator: EmulatedBench, clocked: tuple[Bench, VirtualClock], device: str) -> None:
    bench, _ = clocked
    emulated = emulator.device(device)
    emulated.faults.inject("exception", code=4)
    before = emulated.requests
    with pytest.raises(DeviceUnavailable, match=r"Modbus exception 4 \(server device failure\)"):
        await READS[device](bench)
    assert emulated.faults.served == 1 and emulated.requests == before, "asked once, no retry"


@pytest.mark.asyncio
async def test_a_refused_scpi_setting_raises_and_changes_nothing(
        emulator: EmulatedBench, clocked: tuple[Bench, VirtualClock]) -> None:
    bench, _ = clocked
    load = bench.households["2"].load
    await load.set_power(50.0)
    emulator.device("household 2 load").faults.inject("scpi_error", count=1, code=-222)
    with pytest.raises(DeviceUnavailable, match="SCPI error -222, Data out of range"):
        await load.set_power(60.0)
    assert emulator.plant.rigs["2"].load.setpoint_w == 50.0


@pytest.mark.asyncio
async def test_a_setting_beyond_the_rating_is_an_scpi_error(
        emulator: EmulatedBench, clocked: tuple[Bench, VirtualClock]) -> None:
    """The emulated load is rated at the rig's limit; the guard is bypassed to reach it."""
    bench, _ = clocked
    raw_load = bench.households["1"].load._inner  # past the limit guard, straight to the wire
    with pytest.raises(DeviceUnavailable, match="-222"):
        await raw_load.set_power(10_000.0)


@pytest.mark.asyncio
async def test_safe_state_is_tried_even_while_defective(
        emulator: EmulatedBench, clocked: tuple[Bench, VirtualClock]) -> None:
    bench, _ = clocked
    pv = bench.households["1"].pv
    await pv.set_output(True)
    emulator.device("household 1 pv").faults.inject("no_reply", count=2)
    with pytest.raises(DeviceUnavailable):
        await pv.read()
    await pv.safe_state()  # not refused by the back-off: the fault is over, so it lands
    assert emulator.plant.rigs["1"].pv.on is False


@pytest.mark.asyncio
async def test_an_unreachable_instrument_is_unavailable(
        emulator: EmulatedBench, clocked: tuple[Bench, VirtualClock]) -> None:
    bench, _ = clocked
    await emulator.close()
    with pytest.raises(DeviceUnavailable, match="household 3 battery at modbus"):
        await bench.households["3"].battery.read()
