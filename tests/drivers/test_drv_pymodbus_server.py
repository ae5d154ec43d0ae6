"""The Modbus quirk kinds against pymodbus's own server classes (``SimDevice`` on
``ModbusTcpServer``), a server this project did not write: busy answers, relays as bits of
one register, impossible values. (Function 06 refused: tests/test_bad_instruments.py.)"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from drivers.bench.health import DeviceUnavailable
from drivers.clock import RealClock
from drivers.instruments.model import ModbusMap, load_instrument
from drivers.registry import build_bench
from drivers.spec import RigSpec
from tests.drivers.test_drv_quirks import RELAY_BITS
from tests.pymodbus_served import rig_with, serve_map

METER = {"voltage_v": 48.0, "current_a": 1.0, "power_w": -48.0, "import_wh": 1234.0,
         "export_wh": 10.0}


def _sdm630() -> ModbusMap:
    m = load_instrument("eastron-sdm630")
    assert isinstance(m, ModbusMap)
    return m


async def test_busy_on_every_10th_request_costs_no_reading(small_rig: RigSpec) -> None:
    async with serve_map(_sdm630(), METER, busy_every=10) as served:
        rig = dataclasses.replace(rig_with(small_rig, "1", "meter", served.port,
                                           "eastron-sdm630"), control_period_s=0.25)
        bench = build_bench(rig, RealClock())
        try:
            meter = bench.households["1"].meter
            for _ in range(15):  # 4 requests each: 6 busy answers
                reading = await meter.read()
            assert reading.import_wh == pytest.approx(1234.0)
            assert meter.link.busy_retries >= 5
        finally:
            for d in bench.devices():
                await d.close()


async def test_relays_as_bits_are_written_read_modify_write(small_rig: RigSpec,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "relay-bits.toml"
    path.write_text(RELAY_BITS)
    relays = load_instrument(str(path))
    assert isinstance(relays, ModbusMap)
    async with serve_map(relays, {}) as served:
        rig = rig_with(small_rig, "1", "relay", served.port, str(path), channel=0)
        rig = rig_with(rig, "2", "relay", served.port, str(path), channel=1)
        bench = build_bench(rig, RealClock())
        try:
            await bench.households["2"].relay.set_closed(True)
            await bench.households["1"].relay.set_closed(True)
            await bench.households["2"].relay.set_closed(False)
            assert served.registers[0] == 0b01  # household 2 left household 1's alone
            assert await bench.households["1"].relay.read_closed()
            assert not await bench.households["2"].relay.read_closed()
            assert served.functions[6] >= 3 and served.functions[16] == 0
        finally:
            for d in bench.devices():
                await d.close()


@pytest.mark.parametrize("frequency", [math.nan, math.inf, 2.5e-41])
async def test_an_impossible_value_is_an_invalid_reading(small_rig: RigSpec,
                                                         frequency: float) -> None:
    async with serve_map(_sdm630(), {**METER, "frequency_hz": frequency}) as served:
        bench = build_bench(rig_with(small_rig, "1", "meter", served.port, "eastron-sdm630"),
                            RealClock())
        try:
            with pytest.raises(DeviceUnavailable, match=r"frequency_hz = .* is (not a number|"
                                                        r"infinite|a denormal float)"):
                await bench.households["1"].meter.identify()
        finally:
            for d in bench.devices():
                await d.close()
