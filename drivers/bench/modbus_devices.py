"""Modbus devices by role: battery (BMS + converter), meter, relay, grid node.

Points are read by semantic name from the instrument's register map; points that sit next
to each other in one table are fetched in one request, so a meter costs one or two
round trips, not five.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from drivers.bench.base import InstrumentDevice, ReadbackMismatch, watchdog_seconds
from drivers.instruments.model import ModbusMap, Point
from drivers.protocol.errors import ModbusExceptionError
from drivers.protocol.modbus import MAX_READ, WRITE_FUNCTIONS, ModbusLink
from drivers.roles import BatteryReading, MeterReading, PowerReading

BIT_TABLES = ("coil", "discrete")
F32_MIN_NORMAL = 1.1754943508222875e-38
F64_MIN_NORMAL = sys.float_info.min
ILLEGAL_FUNCTION = 1


class InvalidReading(ValueError):
    """A value that cannot be a measurement: NaN, infinite, denormal, or outside the point's
    declared range (a register map off by one reads exactly such values)."""


def check_value(point: Point, value: float) -> float:
    """``value`` if it can be a reading of ``point``; else raise :class:`InvalidReading`."""
    raw = value / point.codec.scale
    tiny = {"f32": F32_MIN_NORMAL, "f64": F64_MIN_NORMAL}.get(point.codec.type, 0.0)
    problem = ("not a number" if math.isnan(value) else "infinite" if math.isinf(value)
               else "a denormal float" if raw != 0 and abs(raw) < tiny
               else None)
    if problem is None and point.valid is not None \
            and not point.valid[0] <= value <= point.valid[1]:
        problem = f"outside its valid range [{point.valid[0]:g}, {point.valid[1]:g}]"
    if problem is not None:
        raise InvalidReading(f"{point.name} = {value!r} is {problem}: reading invalid")
    return value


@dataclass(frozen=True, slots=True)
class Block:
    """One read request covering several adjacent points of one table."""

    table: str
    address: int
    count: int
    points: tuple[Point, ...]


def plan_reads(points: list[Point], offset: int = 0, max_registers: int = 125) -> list[Block]:
    """Group points into as few requests as contiguity, the protocol's size limit and the
    device's own (``max_read_registers``; bits count 16 to a register) allow."""
    blocks: list[Block] = []
    for p in sorted(points, key=lambda p: (p.table, p.address)):
        start = p.address + offset
        last = blocks[-1] if blocks else None
        limit = min(MAX_READ[p.table], max_registers * (16 if p.table in BIT_TABLES else 1))
        if (last is not None and last.table == p.table and start == last.address + last.count
                and last.count + p.count <= limit):
            blocks[-1] = Block(p.table, last.address, last.count + p.count, (*last.points, p))
        else:
            blocks.append(Block(p.table, start, p.count, (p,)))
    return blocks


class ModbusDevice(InstrumentDevice):
    link: ModbusLink

    def __init__(self, *args: Any, instrument: ModbusMap, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instrument = instrument
        self.unit = self.resource.unit
        self.channel = int(self.spec.params.get("channel", 0))
        self._plans: dict[tuple[str, ...], list[Block]] = {}
        if not 0 <= self.channel < instrument.channels:
            raise ValueError(f"{self.name}: channel {self.channel} outside 0.."
                             f"{instrument.channels - 1} of {instrument.model}")

    async def _setup(self) -> None:
        """Arm the communication watchdog the instrument file declares."""
        if self.instrument.watchdog is not None:
            point = self.instrument.point(self.instrument.watchdog)
            seconds = watchdog_seconds(self.spec, self.period_s)
            await self._setup_step(f"write {point.name}={seconds:g}",
                                   lambda: self._write_now(point, seconds))

    def _field_channel(self) -> int:
        return self.channel if self.instrument.channels > 1 else 0

    def _offset(self, point: Point) -> int:
        """Per-channel points move with the device's channel (ModbusMap.channel_offset)."""
        return self.instrument.channel_offset(point, self.channel)

    def _plan(self, names: tuple[str, ...]) -> list[Block]:
        """The requests for ``names``, planned once per set of names (a device reads the
        same set every control period)."""
        plan = self._plans.get(names)
        if plan is None:
            points = self._with_fillers([self.instrument.point(n) for n in names])
            plan = [block for offset in sorted({self._offset(p) for p in points})
                    for block in plan_reads([p for p in points if self._offset(p) == offset],
                                            offset, self.instrument.max_read_registers)]
            self._plans[names] = plan
        return plan

    def _with_fillers(self, points: list[Point]) -> list[Point]:
        """Add the declared readable registers lying between requested ones, so one request
        spans a gap that would otherwise split it (a round trip costs more than a word)."""
        out = list(points)
        for table in {p.table for p in points if p.table in ("input", "holding")}:
            mine = [p for p in points if p.table == table]
            low = min(p.address for p in mine)
            high = max(p.address + p.count for p in mine)
            out += [p for p in self.instrument.points.values()
                    if p.table == table and p.readable and p not in mine
                    and low < p.address and p.address + p.count < high]
        return out

    async def _read_now(self, names: list[str]) -> dict[str, float]:
        values: dict[str, float] = {}
        for block in self._plan(tuple(names)):
            words = await self.link.read(block.table, block.address, block.count, self.unit)
            at = 0
            for p in block.points:
                values[p.name] = p.codec.decode(words[at:at + p.count]) if p.mask is None \
                    else p.field_value(words[at], self._field_channel())
                at += p.count
        return {n: check_value(self.instrument.point(n), values[n]) for n in names}

    async def read_points(self, *names: str) -> dict[str, float]:
        return await self._run(f"read {', '.join(names)}", lambda: self._read_now(list(names)))

    async def write_point(self, name: str, value: float, *, always: bool = False) -> None:
        point = self.instrument.point(name)
        if not point.writable:
            raise ValueError(f"{self.name}: point {name} of {self.instrument.model} is read-only")
        self._writing(f"write {name}={value:g}")
        await self._run(f"write {name}={value:g}", lambda: self._write_now(point, value,
                                                                         fallback=always),
                        always=always)

    async def _write_now(self, point: Point, value: float, *, fallback: bool = False) -> None:
        """Write one point with the function its instrument file declares. ``fallback``
        (the safe state): a device that answers "illegal function" to the single-write
        function is written with the multiple-write one, which says the same."""
        if point.mask is not None:  # a bit field: read-modify-write under the link's lock
            channel = self._field_channel()
            await self.link.update(point.address,
                                   lambda word: point.field_word(word, value, channel),
                                   self.unit, function=self.instrument.write_function)
            return
        words = point.codec.encode(value)
        address = point.address + self._offset(point)
        function = self.instrument.write_function_for(point.table) if len(words) == 1 else None
        try:
            await self.link.write(point.table, address, words, self.unit, function=function)
        except ModbusExceptionError as err:
            single, multiple = WRITE_FUNCTIONS[point.table]
            if not (fallback and function == single and err.code == ILLEGAL_FUNCTION):
                raise
            await self.link.write(point.table, address, words, self.unit, function=multiple)

    async def confirm(self, name: str, expected: float) -> None:
        """Read ``name`` back (even while defective); raise :class:`ReadbackMismatch`
        unless it holds ``expected``."""
        got = (await self._run(f"read back {name}", lambda: self._read_now([name]),
                               always=True))[name]
        if got != expected:
            raise ReadbackMismatch(self.name, str(self.resource),
                                   f"{name} reads back {got:g} after {expected:g} was written")

    async def identify(self) -> str:
        names = list(self.instrument.identify)
        values = await self.read_points(*names) if names else {}
        shown = ", ".join(f"{k}={v:g}" for k, v in values.items())
        return (f"{self.instrument.title} [{self.instrument.model}] unit {self.unit}"
                + (f" ch {self.channel}" if self.instrument.channels > 1 else "")
                + (f" ({shown})" if shown else ""))

    def _optional(self, name: str) -> list[str]:
        return [name] if name in self.instrument.points else []


METER_POINTS = ["import_wh", "power_w", "voltage_v", "current_a"]
COUNTERS = ("import_wh", "export_wh")


@dataclass
class EnergyCounter:
    """A meter's energy register as the counter it is: a wrap past its declared rollover is
    unwrapped (a drop of more than half the range); any other drop is passed on as read,
    for the controller to judge (a counter must never go backwards)."""

    rollover: float | None
    last: float | None = None
    offset: float = 0.0

    def unwrap(self, raw: float) -> float:
        if self.last is not None and self.rollover and raw < self.last - self.rollover / 2:
            self.offset += self.rollover
        self.last = raw
        return raw + self.offset


class _MetersEnergy(ModbusDevice):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counters = {n: EnergyCounter(self.instrument.point(n).rollover)
                          for n in COUNTERS if n in self.instrument.points}
        self.resolution_wh = max(self.instrument.point(n).resolution for n in self._counters)

    async def read(self) -> MeterReading:
        v = await self.read_points(*METER_POINTS, *self._optional("export_wh"))
        energy = {n: c.unwrap(v[n]) for n, c in self._counters.items()}
        return MeterReading(self.clock.now(), energy["import_wh"], energy.get("export_wh", 0.0),
                            v["power_w"], v["voltage_v"], v["current_a"], self.resolution_wh)


class ModbusMeter(_MetersEnergy):
    """An energy meter; a one-direction meter (no export_wh point) reports export 0."""

    async def safe_state(self) -> None:
        return None  # nothing to switch off


class ModbusGrid(_MetersEnergy):
    """The bus-forming grid node: its meter, and one point that enables it."""

    async def set_enabled(self, on: bool) -> None:
        await self.write_point("enabled", 1.0 if on else 0.0)
        await self.confirm("enabled", 1.0 if on else 0.0)

    async def safe_state(self) -> None:
        return None  # the grid node stays up to hold the bus while rigs disconnect


class ModbusRelay(ModbusDevice):
    """A contactor; every switch is read back (a mismatch is :class:`ReadbackMismatch`)."""

    async def set_closed(self, closed: bool, *, always: bool = False) -> None:
        await self.write_point("closed", 1.0 if closed else 0.0, always=always)
        await self.confirm("closed", 1.0 if closed else 0.0)

    async def read_closed(self) -> bool:
        return bool((await self.read_points("closed"))["closed"])

    async def safe_state(self) -> None:
        await self.set_closed(False, always=True)


BATTERY_POINTS = ["soc", "energy_wh", "power_w", "voltage_v", "current_a", "temperature_c",
                  "enabled"]


class ModbusBattery(ModbusDevice):
    """BMS readings and the converter's setpoint."""

    async def set_power(self, watts: float) -> None:
        await self.write_point("power_setpoint_w", watts)

    async def set_enabled(self, on: bool, *, always: bool = False) -> None:
        await self.write_point("enabled", 1.0 if on else 0.0, always=always)
        await self.confirm("enabled", 1.0 if on else 0.0)

    async def read(self) -> BatteryReading:
        v = await self.read_points(*BATTERY_POINTS, *self._optional("alarms"))
        alarms = self.instrument.point("alarms").flags(v["alarms"]) if "alarms" in v else ()
        return BatteryReading(self.clock.now(), v["soc"], v["energy_wh"], v["power_w"],
                              v["voltage_v"], v["current_a"], v["temperature_c"],
                              bool(v["enabled"]), tuple(sorted(alarms)))

    async def safe_state(self) -> None:
        await self.set_enabled(False, always=True)


BMS_POINTS = ["soc", "voltage_v", "current_a", "temperature_c"]


class ModbusBms(ModbusDevice):
    """A stand-alone BMS: readings only (the battery's converter is another instrument).
    ``read()`` gives a :class:`BatteryReading` whose power is V x I and ``enabled`` True;
    its energy is the ``energy_wh`` point, or ``remaining_ah`` x ``voltage_v`` for a BMS
    that counts charge (Ah), not energy."""

    async def read(self) -> BatteryReading:
        energy = "energy_wh" if "energy_wh" in self.instrument.points else "remaining_ah"
        v = await self.read_points(*BMS_POINTS, energy, *self._optional("alarms"))
        alarms = self.instrument.point("alarms").flags(v["alarms"]) if "alarms" in v else ()
        energy_wh = v["energy_wh"] if energy == "energy_wh" \
            else v["remaining_ah"] * v["voltage_v"]
        return BatteryReading(self.clock.now(), v["soc"], energy_wh,
                              v["voltage_v"] * v["current_a"], v["voltage_v"], v["current_a"],
                              v["temperature_c"], True, tuple(sorted(alarms)))

    async def safe_state(self) -> None:
        """A BMS has no output of its own: the converter is what is turned off."""


class ModbusConverter(ModbusDevice):
    """A battery's bidirectional converter over Modbus: signed setpoint, enable, power."""

    async def set_power(self, watts: float) -> None:
        await self.write_point("power_setpoint_w", watts)

    async def set_enabled(self, on: bool, *, always: bool = False) -> None:
        await self.write_point("enabled", 1.0 if on else 0.0, always=always)
        await self.confirm("enabled", 1.0 if on else 0.0)

    async def read(self) -> PowerReading:
        v = await self.read_points("power_w", "enabled", *self._optional("voltage_v"),
                                   *self._optional("current_a"))
        volts = v.get("voltage_v", 0.0)
        amps = v.get("current_a", v["power_w"] / volts if volts else 0.0)
        return PowerReading(self.clock.now(), volts, amps, v["power_w"], bool(v["enabled"]))

    async def safe_state(self) -> None:
        await self.set_enabled(False, always=True)


MODBUS_ROLES: dict[str, type[ModbusDevice]] = {
    "bms": ModbusBms,
    "converter": ModbusConverter,
    "battery": ModbusBattery,
    "meter": ModbusMeter,
    "relay": ModbusRelay,
    "grid": ModbusGrid,
}
