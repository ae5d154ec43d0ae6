"""The link budget: how long one control period's exchanges take on each shared serial line.

A Modbus RTU line carries one request at a time, so every device behind it is asked in
turn. Per control period the controller asks each rig's meter, BMS and contactor once and
writes the PV, load and battery setpoints once (``testbed.run.controller``). For each serial
line this sums, per exchange, the request and reply frames at 11 bits a byte at the line's
baud, plus the line's quiet time before each request (RTU silent interval, or the larger
turnaround a device asks for: ``ModbusLink.quiet_s``). Sources: Modbus over serial line
V1.02 (frame layouts, 2.5.1.1 silent interval), the instrument files' register maps.

A line kept in step after a timeout (``ModbusLink._in_step``) costs nothing while every
device answers, so the budget is the fault-free one; a timeout costs the line the device's
timeout plus one reply frame and turnaround, and a failing device is not asked again until
its back-off has passed (``drivers/bench/base.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.bench.modbus_devices import (
    BATTERY_POINTS,
    METER_POINTS,
    ModbusDevice,
)
from drivers.protocol.modbus import ModbusLink
from drivers.registry import Bench

BITS_PER_BYTE = 11  # start, 8 data, parity or a second stop, stop
READ_REQUEST_BYTES = 8  # unit, function, address (2), count (2), CRC (2)
WRITE_FRAME_BYTES = 8  # single write, request and echo alike; a multiple write's reply
READ_REPLY_OVERHEAD = 5  # unit, function, byte count, CRC (2)

# role -> the point names read each period (None: not read), and whether it is written
_PERIOD: dict[str, tuple[list[str] | None, bool]] = {
    "meter": ([*METER_POINTS, "export_wh"], False),
    "battery": ([*BATTERY_POINTS, "alarms"], True),
    "relay": (["closed"], False), "pv": (None, True), "load": (None, True),
}


@dataclass
class LineLoad:
    """One serial line: its name, baud, and the seconds one control period's exchanges
    take on it (``seconds``), over ``exchanges`` requests from ``devices``."""

    link: str
    baud: int
    seconds: float = 0.0
    exchanges: int = 0
    devices: list[str] = field(default_factory=list)


def _inner(device: object) -> object:
    return getattr(device, "inner", device)


def line_loads(bench: Bench) -> list[LineLoad]:
    """The period's load on every Modbus RTU line of ``bench`` (unconnected drivers do)."""
    loads: dict[str, LineLoad] = {}
    for h in bench.households.values():
        for role, (points, writes) in _PERIOD.items():
            dev = _inner(getattr(h, role))
            if not isinstance(dev, ModbusDevice) or not isinstance(dev.link, ModbusLink) \
                    or dev.resource.link != "serial":
                continue
            link = dev.link
            load = loads.setdefault(link.description, LineLoad(link.description,
                                                                dev.resource.baud))
            load.devices.append(dev.name)
            frames: list[int] = []
            if points is not None:
                names = tuple(p for p in points if p in dev.instrument.points)
                frames += [READ_REQUEST_BYTES + READ_REPLY_OVERHEAD + 2 * b.count
                           for b in dev._plan(names)]
            if writes:
                frames.append(2 * WRITE_FRAME_BYTES)
            load.exchanges += len(frames)
            load.seconds += sum(f * BITS_PER_BYTE / load.baud + link.quiet_s for f in frames)
    return sorted(loads.values(), key=lambda x: -x.seconds)


def over_budget(bench: Bench, period_s: float, share: float = 0.5) -> list[str]:
    """One line per serial line whose period's exchanges need more than ``share`` of the
    control period (the controller's exchange deadline is half a period), with figures."""
    return [f"{load.link}: {load.exchanges} exchanges of {len(load.devices)} devices at "
            f"{load.baud} baud take {load.seconds * 1000:.1f} ms a control period, more "
            f"than {share:g} x the {period_s:g} s period ({share * period_s * 1000:.1f} ms)"
            for load in line_loads(bench) if load.seconds > share * period_s]
