"""Every role driver against the emulated rig over loopback: what it writes moves the plant,
what it reads is the plant, stamped with the driver's clock."""

from __future__ import annotations

import asyncio

import pytest

from drivers.bench.modbus_devices import plan_reads
from drivers.emulators.bench import EmulatedBench
from drivers.instruments import load_instrument
from drivers.registry import Bench
from drivers.roles import BatteryReading, MeterReading, PowerReading
from drivers.spec import RigSpec
from tests.drivers.conftest import drivers_for


@pytest.mark.asyncio
async def test_layout_speaks_every_protocol(emulator: EmulatedBench) -> None:
    resources = {e.name: e.resource for e in emulator.endpoints.values()}
    assert resources["household 1 pv"].startswith("TCPIP::127.0.0.1::")
    assert resources["household 2 load"].endswith("::SOCKET")
    assert resources["household 1 battery"].startswith("modbus+tcp://127.0.0.1:")
    assert resources["household 3 meter"].startswith("modbus+rtu:///")
    assert resources["household 3 meter"].endswith("unit=3")
    assert resources["household 1 relay"] == resources["household 3 relay"]  # one board
    models = {e.name: e.model for e in emulator.endpoints.values()}
    assert set(models.values()) >= {"generic-scpi-supply", "generic-scpi-load"}
    # the mock rig's 600 W PV on a 48 V bus is beyond a DP800 (40 V, 200 W) and its 500 W
    # load beyond a DL3000 (350 W): the emulator's turn passes them by, as pre-flight would
    assert models["household 2 pv"] == "generic-scpi-supply"
    assert models["household 2 load"] == "generic-scpi-load"


@pytest.mark.asyncio
async def test_rigol_models_are_served_when_asked_for(small_rig: RigSpec) -> None:
    async with EmulatedBench(small_rig, models={"pv": "rigol-dp800",
                                                "load": "rigol-dl3000"}) as emu:
        bench = drivers_for(emu)
        try:
            h = bench.households["2"]
            assert "rigol-dp800" in await h.pv.identify()
            assert "rigol-dl3000" in await h.load.identify()
        finally:
            for device in bench.devices():
                await device.close()


@pytest.mark.asyncio
async def test_every_role_drives_and_reads_the_plant(emulator: EmulatedBench,
                                                      bench: Bench) -> None:
    plant = emulator.plant
    for hid, h in bench.households.items():
        await h.relay.set_closed(True)
        await h.pv.set_output(True)
        await h.pv.set_power(120.0 + int(hid))
        await h.load.set_input(True)
        await h.load.set_power(40.0)
        await h.battery.set_enabled(True)
        await h.battery.set_power(-25.0)
        rig = plant.rigs[hid]
        assert rig.relay_closed and rig.pv.on and rig.load.on and rig.battery.enabled
        assert rig.pv.setpoint_w == pytest.approx(120.0 + int(hid), rel=1e-6)
        assert (rig.load.setpoint_w, rig.battery.setpoint_w) == (40.0, -25.0)
    await bench.grid.set_enabled(True)
    await asyncio.sleep(0.3)

    for hid, h in bench.households.items():
        before = bench.ctx.clock.now()
        pv, load, bat, meter = (await h.pv.read(), await h.load.read(), await h.battery.read(),
                                await h.meter.read())
        assert isinstance(pv, PowerReading) and pv.on
        assert pv.power_w == pytest.approx(120.0 + int(hid), rel=1e-5)
        assert pv.voltage_v == 48.0 and pv.current_a == pytest.approx(pv.power_w / 48, rel=1e-5)
        assert isinstance(load, PowerReading) and load.power_w == pytest.approx(40.0)
        assert isinstance(bat, BatteryReading) and bat.enabled and bat.power_w == -25.0
        assert bat.soc > 0.5 and bat.energy_wh == pytest.approx(bat.soc * 25, rel=1e-5)
        assert isinstance(meter, MeterReading)
        assert meter.power_w == pytest.approx(120.0 + int(hid) - 40 - 25, rel=1e-5)
        assert meter.export_wh > 0 and meter.import_wh == 0
        assert meter.export_wh == pytest.approx(plant.rigs[hid].meter.export_wh, rel=1e-3)
        assert await h.relay.read_closed() is True
        assert before <= pv.at <= meter.at <= bench.ctx.clock.now()
    grid = await bench.grid.read()
    total = sum(r.meter.power_w for r in plant.rigs.values())
    assert grid.power_w == pytest.approx(plant.grid.meter.power_w, rel=1e-5)
    assert abs(grid.power_w) == pytest.approx(abs(total), rel=1e-5)  # the grid balances the bus
    assert grid.import_wh + grid.export_wh > 0


@pytest.mark.asyncio
async def test_safe_state_leaves_outputs_off_and_relays_open(emulator: EmulatedBench,
                                                             bench: Bench) -> None:
    h = bench.households["2"]
    await h.relay.set_closed(True)
    await h.pv.set_output(True)
    await h.load.set_input(True)
    await h.battery.set_enabled(True)
    await h.battery.set_power(30)
    for device in bench.devices():
        await device.safe_state()
    rig = emulator.plant.rigs["2"]
    assert not (rig.relay_closed or rig.pv.on or rig.load.on or rig.battery.enabled)
    assert rig.battery.setpoint_w == 0.0
    assert emulator.plant.grid.enabled, "the grid node keeps holding the bus"


@pytest.mark.asyncio
async def test_identify_names_the_instrument(bench: Bench) -> None:
    h = bench.households["2"]
    assert "generic-scpi-supply" in await h.pv.identify()
    assert "generic-scpi-load" in await h.load.identify()
    assert "eastron-sdm630" in await h.meter.identify()
    assert "ch 1" in await h.relay.identify()
    assert "capacity_wh=25" in await h.battery.identify()


@pytest.mark.asyncio
async def test_relays_of_one_board_are_independent(emulator: EmulatedBench,
                                                   bench: Bench) -> None:
    await bench.households["1"].relay.set_closed(True)
    await bench.households["3"].relay.set_closed(False)
    assert [r.relay_closed for r in emulator.plant.rigs.values()] == [True, False, False]
    assert await bench.households["1"].relay.read_closed()
    assert not await bench.households["2"].relay.read_closed()


def test_adjacent_points_are_read_together() -> None:
    sdm = load_instrument("eastron-sdm630")
    points = [sdm.point(n) for n in ("import_wh", "export_wh", "voltage_v", "power_w")]
    blocks = plan_reads(points)
    assert [(b.address, b.count) for b in blocks] == [(0x00, 2), (0x34, 2), (0x48, 4)]


@pytest.mark.asyncio
async def test_battery_alarm_bits_reach_the_reading(emulator: EmulatedBench,
                                                    bench: Bench) -> None:
    emulator.plant.rigs["1"].battery.alarms.add("soc_high")
    emulator.plant.rigs["1"].battery.energy_wh = 0.96 * 25
    reading = await bench.households["1"].battery.read()
    assert reading.alarms == ("soc_high",)
