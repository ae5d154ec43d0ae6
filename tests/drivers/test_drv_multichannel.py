"""Multi-channel Modbus instruments beyond relay boards (issue 13, item 3): a four-channel
DC meter, one register block per channel (``channel_stride``), serves three households'
meters over one connection; drivers and emulator both address a channel's block."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from drivers.clock import RealClock
from drivers.emulators.bench import EmulatedBench
from drivers.instruments.model import InstrumentFileError, ModbusMap, load_instrument
from drivers.registry import build_bench
from testbed.config.rig import load_rig, rig_from_dict

ROOT = Path(__file__).resolve().parents[2]
RIG = ROOT / "rigs" / "examples" / "university-lab3.toml"
METER = '''[defaults.meter]  # one four-channel DC meter on the RS-485 line: channel = household
driver = "modbus"
model = "testbed-dc-meter4"
resource = "modbus+rtu:///dev/ttyUSB0?baud=9600&unit=5"
'''


def _rig_file(tmp_path: Path) -> Path:
    text = RIG.read_text()
    start, end = text.index("[defaults.meter]"), text.index("[defaults.relay]")
    text = text[:start] + METER + "\n" + text[end:]
    for h in "123":
        text = text.replace(f'meter = {{ resource = "modbus+rtu:///dev/ttyUSB0?baud=9600&'
                            f'unit={h}" }}', f"meter = {{ channel = {int(h) - 1} }}")
    path = tmp_path / "lab3-meter4.toml"
    path.write_text(text)
    return path


async def test_one_meter_serves_three_households_by_channel(tmp_path: Path) -> None:
    rig = load_rig(str(_rig_file(tmp_path)))
    assert [h.devices["meter"].params["channel"] for h in rig.households] == [0, 1, 2]
    async with EmulatedBench(rig) as emu:
        data = emu.rig_dict()
        resources = {h["meter"]["resource"] for h in data["households"]}
        assert len(resources) == 1 and "unit=5" in next(iter(resources))  # one line, one unit
        for k, r in enumerate(emu.plant.rigs.values()):
            r.meter.import_wh, r.meter.export_wh = 10.0 * (k + 1), 0.5 * (k + 1)
        bench = build_bench(rig_from_dict("lab3-meter4", data), RealClock())
        try:
            meters = [bench.households[h].meter for h in "123"]
            readings = [await m.read() for m in meters]
            links = {id(getattr(m, "link", None)) for m in meters}
            identity = await meters[2].identify()
        finally:
            for d in bench.devices():
                await d.close()
        device = emu.device("household 2 meter")
    assert [r.import_wh for r in readings] == pytest.approx([10.0, 20.0, 30.0])
    assert [r.export_wh for r in readings] == pytest.approx([0.5, 1.0, 1.5])
    assert len(links) == 1, "one connection serves the three channels"
    assert "ch 2" in identity
    # the requests of channel 2 went to its own block: input registers 0x20..
    assert device.functions[4] >= 3


def test_a_stride_smaller_than_a_channel_block_is_refused(tmp_path: Path) -> None:
    text = (ROOT / "drivers" / "instruments" / "testbed-dc-meter4.toml").read_text()
    bad = tmp_path / "meter.toml"
    bad.write_text(text.replace("channel_stride = 0x10", "channel_stride = 8"))
    with pytest.raises(InstrumentFileError, match=r"channel_stride: 8 registers, but "
                                                  r"channel 0's input block spans 10"):
        load_instrument(str(bad))
    bad.write_text(text.replace("channel_stride = 0x10\n", ""))
    with pytest.raises(InstrumentFileError, match="give channel_stride"):
        load_instrument(str(bad))


def test_channel_offsets_move_registers_by_the_stride() -> None:
    meter = load_instrument("testbed-dc-meter4")
    relays = load_instrument("waveshare-relay8")
    assert isinstance(meter, ModbusMap) and isinstance(relays, ModbusMap)
    assert meter.channel_offset(meter.point("import_wh"), 3) == 0x30
    assert relays.channel_offset(relays.point("closed"), 3) == 3  # a coil per channel
    assert relays.channel_offset(relays.point("version"), 3) == 0  # device-wide register
    assert dataclasses.replace(meter, channels=1).channel_offset(meter.point("power_w"), 0) == 0
