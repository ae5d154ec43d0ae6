"""Every instrument file loads, and every point or command it declares works on its emulator.

Each file is served by an emulator on loopback and driven through the real protocol layer
(pymodbus client, SCPI link): readable points read back the plant's value, writable points
and settings take effect and read back, queries parse.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from drivers.clock import RealClock
from drivers.emulators.bindings import (
    BatteryBinding,
    Binding,
    ConverterScpiBinding,
    GridBinding,
    GridScpiBinding,
    GridSinkScpiBinding,
    GridSourceScpiBinding,
    LoadBinding,
    MeterBinding,
    RelayBoardBinding,
    SupplyBinding,
)
from drivers.emulators.modbus_device import EmulatedModbusDevice
from drivers.emulators.modbus_server import ModbusTcpServer
from drivers.emulators.scpi_server import EmulatedScpiDevice, ScpiTcpServer
from drivers.instruments import (
    InstrumentFileError,
    ModbusMap,
    ScpiCommandSet,
    available_instruments,
    load_instrument,
)
from drivers.mock.plant import Plant
from drivers.protocol.modbus import ModbusLink
from drivers.protocol.scpi import ScpiLink
from drivers.resources import parse_resource
from drivers.spec import RigSpec
from drivers.transport.tcp import TcpTransport

SHIPPED = available_instruments()
WRITE_VALUES = {"bit": 1.0, "u16": 1.0, "s16": -3.0, "u32": 7.0, "s32": -7.0, "f32": -20.5}
SETTINGS: dict[str, Any] = {"voltage": 50.4, "current": 2.0, "power": 100.0, "output": True,
                            "input": True}


def test_the_required_set_is_shipped() -> None:
    assert {"generic-scpi-supply", "generic-scpi-load", "rigol-dp800", "rigol-dl3000",
            "testbed-bms-converter", "peacefair-pzem017", "eastron-sdm630",
            "waveshare-relay8"} <= set(SHIPPED)


@pytest.mark.parametrize("model", SHIPPED)
def test_file_names_its_document(model: str) -> None:
    instrument = load_instrument(model)
    assert instrument.model == model
    assert len(instrument.follows) > 20 and instrument.roles


def _binding(role: str, plant: Plant, instrument: Any) -> Binding:
    args = (plant, RealClock(), f"test {role}", f"emu,{instrument.model},0,1")
    alarms = instrument.points["alarms"].bits if "alarms" in getattr(instrument, "points", {}) \
        else ()
    builders = {
        "pv": lambda: SupplyBinding(*args, "1"),
        "load": lambda: LoadBinding(*args, "1"),
        "battery": lambda: BatteryBinding(*args, "1", alarm_bits=instrument.point("alarms").bits),
        "meter": lambda: MeterBinding(*args, "1", unit=1),
        "relay": lambda: RelayBoardBinding(*args, rig_ids=["1", "2", "3"]),
        "grid": lambda: (GridScpiBinding(*args) if instrument.protocol == "scpi"
                         else GridBinding(*args)),
        "grid_source": lambda: GridSourceScpiBinding(*args),
        "grid_sink": lambda: GridSinkScpiBinding(*args),
        "bms": lambda: BatteryBinding(*args, "1", alarm_bits=alarms),
        "converter": lambda: (ConverterScpiBinding(*args, "1")
                              if instrument.protocol == "scpi" else BatteryBinding(*args, "1")),
    }
    return builders[role]()


def _lively_plant(rig: RigSpec) -> Plant:
    """A plant with something flowing, so no point reads a trivial zero by accident."""
    plant = Plant.from_rig(rig, start=RealClock().now())
    r = plant.rigs["1"]
    r.relay_closed, r.pv.on, r.pv.setpoint_w = True, True, 80
    r.load.on, r.load.setpoint_w = True, 30
    r.battery.enabled, r.battery.setpoint_w = True, 20
    plant.advance_to(plant.t + 60)
    return plant


@pytest.mark.asyncio
@pytest.mark.parametrize("model", [m for m in SHIPPED
                                   if isinstance(load_instrument(m), ModbusMap)])
async def test_modbus_map_against_emulator(model: str, small_rig: RigSpec) -> None:
    instrument = load_instrument(model)
    assert isinstance(instrument, ModbusMap)
    plant = _lively_plant(small_rig)
    binding = _binding(instrument.roles[0], plant, instrument)
    binding.sync = lambda: None  # type: ignore[method-assign]  # freeze time: exact compares
    server = ModbusTcpServer({1: EmulatedModbusDevice(instrument, binding)})
    port = await server.start()
    link = ModbusLink(parse_resource(f"modbus+tcp://127.0.0.1:{port}?unit=1&timeout=1"))
    try:
        for point in instrument.points.values():
            moves = instrument.channels > 1 and instrument.channel_offset(point, 1) != 0
            for ch in range(instrument.channels) if moves else range(1):
                at = point.address + instrument.channel_offset(point, ch)
                if point.readable:
                    words = await link.read(point.table, at, point.count, 1)
                    expected = point.codec.decode(point.codec.encode(
                        float(binding.get(point.name, ch))))
                    assert point.codec.decode(words) == pytest.approx(expected), point.name
                if point.writable:
                    value = WRITE_VALUES[point.codec.type]
                    await link.write(point.table, at, point.codec.encode(value), 1)
                    assert float(binding.get(point.name, ch)) == pytest.approx(
                        point.codec.decode(point.codec.encode(value))), point.name
                    words = await link.read(point.table, at, point.count, 1)
                    assert point.codec.decode(words) == pytest.approx(
                        point.codec.decode(point.codec.encode(value))), point.name
    finally:
        await link.close()
        await server.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("model", [m for m in SHIPPED
                                   if isinstance(load_instrument(m), ScpiCommandSet)])
async def test_scpi_command_set_against_emulator(model: str, small_rig: RigSpec) -> None:
    instrument = load_instrument(model)
    assert isinstance(instrument, ScpiCommandSet)
    plant = _lively_plant(small_rig)
    binding = _binding(instrument.roles[0], plant, instrument)
    device = EmulatedScpiDevice(instrument, binding)
    server = ScpiTcpServer(device)
    port = await server.start()
    link = ScpiLink(lambda: TcpTransport("127.0.0.1", port), timeout_s=1.0,
                    error_query=instrument.error_query)
    ch = instrument.channel
    try:
        for line in instrument.init:
            await link.write(line)  # raises if the instrument queued an error
        for cmd in instrument.commands.values():
            if cmd.set:
                await link.write(cmd.setting(SETTINGS[cmd.name], ch))
        await asyncio.sleep(0.05)
        for cmd in instrument.commands.values():
            if not cmd.get:
                continue
            value = cmd.parse(await link.query(cmd.query(ch)))
            if cmd.name in SETTINGS:
                assert value == pytest.approx(SETTINGS[cmd.name]), cmd.name
            elif cmd.name == "identify":
                assert value == binding.identity
            else:
                assert value == pytest.approx(binding.get(cmd.name, ch), rel=1e-5), cmd.name
        if "measured_power" in instrument.commands:
            on_power = binding.get("measured_power", ch)
            assert on_power > 0, "the settings made power flow"
        assert device.errors == type(device.errors)(), "no command left an error queued"
    finally:
        await link.close()
        await server.close()


def test_a_bad_file_is_refused_with_where(tmp_path: Any) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[instrument]\nmodel = "x"\nprotocol = "modbus"\nroles = ["meter"]\n'
                   'title = "t"\nfollows = "nothing"\n[points]\n'
                   'power_w = { table = "input", address = 0, type = "f32", access = "rw" }\n')
    with pytest.raises(InstrumentFileError, match=r"power_w.*writable"):
        load_instrument(str(bad))
    bad.write_text(bad.read_text().replace('access = "rw"', 'access = "r"'))
    with pytest.raises(InstrumentFileError, match="role meter needs point"):
        load_instrument(str(bad))


def test_a_reply_with_its_unit_parses_as_the_number() -> None:
    psb = load_instrument("ea-psb10000")  # its programming guide: "43.50V"
    assert isinstance(psb, ScpiCommandSet)
    assert psb.command("measured_voltage").parse("43.50V") == 43.5
    assert psb.command("measured_current").parse("-12.5 A") == -12.5
    with pytest.raises(ValueError):
        psb.command("measured_current").parse("12.5V")  # another unit is no current
