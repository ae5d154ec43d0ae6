"""The instrument files added for issue 13, driven by their drivers against the emulator."""

from __future__ import annotations

import asyncio

from drivers.clock import RealClock
from drivers.emulators.bench import EmulatedBench
from drivers.emulators.scpi_server import EmulatedScpiDevice
from drivers.registry import build_bench
from drivers.spec import RigSpec
from tests.drivers.conftest import emulated_rig


async def test_itech_it8500plus_load_draws_what_it_is_set_to(small_rig: RigSpec) -> None:
    async with EmulatedBench(small_rig, models={"load": "itech-it8500plus"}) as emu:
        bench = build_bench(emulated_rig(emu), RealClock())
        try:
            load = bench.households["1"].load
            assert "itech-it8500plus" in await load.identify()
            await bench.households["1"].relay.set_closed(True)
            await load.set_power(40.0)
            await load.set_input(True)
            await asyncio.sleep(0.05)
            reading = await load.read()
            assert reading.on and reading.power_w == 40.0
            device = emu.device("household 1 load")
            assert isinstance(device, EmulatedScpiDevice)
            assert "SYST:REM" in device.lines_seen  # remote mode first, accepted
            assert not device.errors
        finally:
            for d in bench.devices():
                await d.close()
