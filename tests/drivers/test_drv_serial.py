"""The serial paths: SCPI over a serial line (ASRL...::INSTR on a pty), RTU paced at its baud
rate, and the converter's communication watchdog."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from drivers.clock import RealClock
from drivers.emulators.bench import EmulatedBench
from drivers.emulators.bindings import SupplyBinding
from drivers.emulators.modbus_server import char_time, frame_gap
from drivers.emulators.pty_port import PtyPort
from drivers.emulators.scpi_server import EmulatedScpiDevice, ScpiPtyServer
from drivers.instruments import ScpiCommandSet, load_instrument
from drivers.mock.plant import Plant
from drivers.registry import Bench, BuildContext, build_bench, build_device
from drivers.spec import DeviceSpec, Limits, RigSpec
from testbed.config.rig import rig_from_dict
from tests.drivers.conftest import drivers_for


@pytest.mark.asyncio
async def test_scpi_supply_over_a_serial_line(small_rig: RigSpec, tmp_path: Path) -> None:
    instrument = load_instrument("rigol-dp800")
    assert isinstance(instrument, ScpiCommandSet)
    clock = RealClock()
    plant = Plant.from_rig(small_rig, start=clock.now())
    plant.rigs["1"].relay_closed = True
    binding = SupplyBinding(plant, clock, "household 1 pv", "RIGOL,DP832,EMU,00.01", "1")
    server = ScpiPtyServer(EmulatedScpiDevice(instrument, binding), PtyPort(tmp_path / "psu"))
    path = await server.start()
    spec = DeviceSpec("household 1 pv", "pv", "scpi", Limits(max_power_w=600, max_voltage_v=60),
                      resource=f"ASRL{path}::INSTR", model="rigol-dp800",
                      params={"baud": 115200, "timeout_s": 1.0})
    pv = build_device(spec, "1", BuildContext(small_rig, clock))
    try:
        assert await pv.identify() == "RIGOL,DP832,EMU,00.01"
        await pv.set_output(True)
        await pv.set_power(240.0)
        reading = await pv.read()
        assert reading.on and reading.power_w == pytest.approx(240.0, rel=1e-6)
        assert plant.rigs["1"].pv.setpoint_w == pytest.approx(240.0, rel=1e-6)
        assert binding.stored[("voltage", 1)] == pytest.approx(48 * 1.05)
    finally:
        await pv.close()
        await server.close()


async def _meter_read_s(emu: EmulatedBench) -> float:
    bench = drivers_for(emu)
    meter = bench.households["1"].meter
    try:
        await meter.read()  # connect first
        started = time.perf_counter()
        await meter.read()
        return time.perf_counter() - started
    finally:
        for device in bench.devices():
            await device.close()


@pytest.mark.asyncio
@pytest.mark.serial  # compares wall times
async def test_rtu_line_is_paced_at_its_baud_rate(small_rig: RigSpec) -> None:
    """An SDM630 read is 4 requests (2, 2, 2 and 4 registers): at 9600 baud, wire time.
    Load can only lengthen a read, so the paced one is bounded below by the wire time; the
    unpaced one is only required to be faster than the paced one."""
    wire = sum((8 + 5 + 2 * n) * char_time(9600) + 2 * frame_gap(9600) for n in (2, 2, 2, 4))
    async with EmulatedBench(small_rig, pace_baud=9600) as paced:
        paced_s = await _meter_read_s(paced)
    async with EmulatedBench(small_rig) as free:
        free_s = await _meter_read_s(free)
    assert paced_s >= wire * 0.95, (paced_s, wire)
    assert free_s < paced_s, (free_s, paced_s, wire)


@pytest.mark.asyncio
async def test_converter_watchdog_turns_a_silent_battery_off(small_rig: RigSpec) -> None:
    async with EmulatedBench(small_rig) as emu:
        data = emu.rig_dict()
        data["households"][0]["battery"] |= {"watchdog_s": 1, "timeout_s": 0.3}
        bench = drivers_for_data(data)
        battery = bench.households["1"].battery
        binding = emu.device("household 1 battery").binding
        try:
            await battery.set_enabled(True)
            await battery.set_power(20.0)
            assert binding.watchdog_s == 1.0, "the driver armed the watchdog on connect"
            for _ in range(4):  # fed by writes: stays on
                await asyncio.sleep(0.35)
                await battery.set_power(20.0)
            assert emu.plant.rigs["1"].battery.enabled and binding.watchdog_trips == 0
            await asyncio.sleep(1.3)  # silence: the emulator turns the converter off
            assert binding.watchdog_trips == 1
            reading = await battery.read()
            assert not reading.enabled and emu.plant.rigs["1"].battery.setpoint_w == 0.0
        finally:
            for device in bench.devices():
                await device.close()


def drivers_for_data(data: dict[str, Any]) -> Bench:
    return build_bench(rig_from_dict("emulated", data), RealClock())
