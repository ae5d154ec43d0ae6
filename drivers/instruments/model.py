"""Parse and check instrument files; what the device layer and the emulators read from them."""

from __future__ import annotations

import math
import re
import string
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

from drivers.protocol.registers import TYPES, WORD_ORDERS, Codec

TABLES = ("holding", "input", "coil", "discrete")
WRITABLE_TABLES = ("holding", "coil")
ACCESS = ("r", "w", "rw")

# The semantic names each role's driver needs (beyond these, a file may declare anything).
ROLE_POINTS: dict[str, tuple[str, ...]] = {
    "meter": ("voltage_v", "current_a", "power_w", "import_wh"),
    "grid": ("voltage_v", "current_a", "power_w", "import_wh", "export_wh", "enabled"),
    "battery": ("soc", "energy_wh", "power_w", "voltage_v", "current_a", "temperature_c",
                "enabled", "power_setpoint_w"),
    "relay": ("closed",),
    # a battery of two instruments: the BMS's readings, the converter's setpoint (and the
    # stored energy: energy_wh, or remaining_ah, ENERGY_ALTERNATIVES)
    "bms": ("soc", "voltage_v", "current_a", "temperature_c"),
    "converter": ("power_w", "enabled", "power_setpoint_w"),
}
ROLE_COMMANDS: dict[str, tuple[str, ...]] = {
    "pv": ("identify", "output", "measured_voltage", "measured_current", "measured_power"),
    "load": ("identify", "input", "measured_voltage", "measured_current", "measured_power"),
    # a bidirectional supply as a battery's converter: the sign of the power setpoint is
    # the direction (+ source into the bus, - sink from it); measured_power is signed too
    "converter": ("identify", "output", "measured_voltage", "measured_current",
                  "measured_power"),
    # a bidirectional supply as the grid node: constant voltage at the bus voltage, it
    # sources what the rigs draw and sinks what they export; its power is V x I, the
    # measured current signed (+ sourcing into the bus, - sinking)
    "grid": ("identify", "output", "voltage", "measured_voltage", "measured_current"),
    # the grid node as two instruments (a rig's [grid.supply] and [grid.load]): a
    # unidirectional supply in constant voltage at the bus voltage sources what the rigs
    # draw (import), an electronic load in constant voltage a little above it (the file's
    # voltage_headroom; its init puts it in CV mode) sinks what they export (export)
    "grid_source": ("identify", "output", "voltage", "measured_voltage", "measured_current"),
    "grid_sink": ("identify", "input", "voltage", "measured_voltage", "measured_current"),
}
# Points a role needs one of: a BMS that counts charge, not energy, gives remaining_ah
# (the driver reports energy_wh = remaining_ah x voltage_v).
ENERGY_ALTERNATIVES: dict[str, tuple[str, ...]] = {"bms": ("energy_wh", "remaining_ah")}
# The SCPI roles driven by a power setpoint (they need the setpoint's commands too).
SETPOINT_ROLES = ("pv", "load", "converter")
SETPOINT_COMMANDS: dict[str, tuple[str, ...]] = {
    "current": ("voltage", "current"),  # CC into the bus: I = P / V_bus
    "power": ("power",),  # native constant-power mode
}
COMMAND_TYPES: dict[str, Callable[[str], Any]] = {"float": float, "int": int, "str": str}


DIRECTIONS = ("source", "sink")  # into the bus / out of it


@dataclass(frozen=True, slots=True)
class Ratings:
    """What the instrument can do, per channel, from its datasheet (``[ratings]``).

    ``voltage_v``, ``current_a``, ``power_w``: the largest magnitudes it can set or carry
    (None: not stated); ``directions``: ``source`` (into the bus) and/or ``sink`` (out of it);
    ``energy_resolution_wh``: one count of its energy counter (meters; None: the counter
    point's own step, 0 for a float). Read by :mod:`testbed.run.preflight`."""

    voltage_v: float | None = None
    current_a: float | None = None
    power_w: float | None = None
    directions: tuple[str, ...] = ()
    energy_resolution_wh: float | None = None


RATING_KEYS = ("voltage_v", "current_a", "power_w", "energy_resolution_wh")


def parse_ratings(source: str, data: dict[str, Any]) -> Ratings:
    """The file's ``[ratings]`` table (absent: nothing stated); InstrumentFileError naming
    the key when a value is not a positive number or an unknown direction."""
    table = data.get("ratings", {})
    if not isinstance(table, dict):
        raise InstrumentFileError(source, "[ratings]", "expected a table")
    unknown = sorted(set(table) - {*RATING_KEYS, "directions"})
    if unknown:
        raise InstrumentFileError(source, f"[ratings] {unknown[0]}", "unknown key (known: "
                                  f"{', '.join((*RATING_KEYS, 'directions'))})")
    values: dict[str, float] = {}
    for key in RATING_KEYS:
        v = table.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1e9:
            raise InstrumentFileError(source, f"[ratings] {key}",
                                      f"a positive number, got {v!r}")
        values[key] = float(v)
    directions = table.get("directions", [])
    if not isinstance(directions, list) or any(d not in DIRECTIONS for d in directions):
        raise InstrumentFileError(source, "[ratings] directions",
                                  f"a list of {' and/or '.join(DIRECTIONS)}, got {directions!r}")
    return Ratings(values.get("voltage_v"), values.get("current_a"), values.get("power_w"),
                   tuple(directions), values.get("energy_resolution_wh"))


def rating_problems(instrument: Instrument, role: str, limits: Any,
                    bus_voltage_v: float) -> list[str]:
    """Why ``instrument`` cannot serve a device of ``role`` with these rig ``limits``
    (a :class:`drivers.spec.Limits`) on a bus at ``bus_voltage_v``: a limit above a rating,
    or a bus voltage a current-setpoint supply cannot hold above (``bus_voltage_v x
    voltage_headroom``). One line each, with both figures and what to change; [] when it
    fits (a rating not stated is not checked). Read by pre-flight and the emulator."""
    r = instrument.ratings
    out: list[str] = []
    for key, limit, rating, unit in (("max_power_w", limits.max_power_w, r.power_w, "W"),
                                     ("max_voltage_v", limits.max_voltage_v, r.voltage_v, "V"),
                                     ("max_current_a", limits.max_current_a, r.current_a, "A")):
        if limit is not None and rating is not None and limit > rating:
            out.append(f"{key} = {limit:g} {unit} but {instrument.model} is rated "
                       f"{rating:g} {unit}: lower the limit or use a larger instrument")
    if r.voltage_v is not None and role in ("pv", "load", "battery", "converter", "grid",
                                            "grid_source", "grid_sink"):
        held_above = role == "grid_sink" or (role != "grid_source" and getattr(
            instrument, "setpoint", "") == "current")
        headroom = getattr(instrument, "voltage_headroom", 1.0) if held_above else 1.0
        needed = bus_voltage_v * headroom
        if needed > r.voltage_v:
            out.append(f"the bus needs {needed:.4g} V (bus_voltage_v {bus_voltage_v:g} x "
                       f"headroom {headroom:g}) but {instrument.model} is rated "
                       f"{r.voltage_v:g} V: lower bus_voltage_v or use a supply rated for it")
    direction = ROLE_DIRECTIONS.get(role)
    if direction is not None and r.directions and direction not in r.directions:
        out.append(f"role {role} must {direction} power but {instrument.model} is rated to "
                   f"{' and '.join(r.directions)} only: use an instrument that can")
    return out


# The direction a role's instrument must move power in (checked when the file states its
# directions): the grid node's two parts.
ROLE_DIRECTIONS: dict[str, str] = {"grid_source": "source", "grid_sink": "sink"}


def energy_resolution_wh(instrument: Instrument) -> float:
    """One count of the instrument's energy counter in Wh: the stated rating, else the
    ``import_wh`` point's step (0 for a float counter or an instrument without one)."""
    if instrument.ratings.energy_resolution_wh is not None:
        return instrument.ratings.energy_resolution_wh
    if isinstance(instrument, ModbusMap) and "import_wh" in instrument.points:
        return instrument.points["import_wh"].resolution
    return 0.0


class InstrumentFileError(ValueError):
    def __init__(self, source: str, where: str, problem: str) -> None:
        super().__init__(f"instrument file {source}: {where}: {problem}")


@dataclass(frozen=True, slots=True)
class Point:
    name: str
    table: str
    address: int
    codec: Codec
    unit: str = ""
    access: str = "r"
    bits: tuple[str, ...] = ()
    doc: str = ""
    rollover: float | None = None  # an energy counter wraps to 0 here (point units)
    valid: tuple[float, float] | None = None  # readings outside are invalid
    mask: int | None = None  # a bit field of one register: these bits (of channel 0)

    def field_mask(self, channel: int = 0) -> int:
        """The bits of this field for ``channel``: channel N's field sits N field-widths
        above channel 0's (relay N is bit N)."""
        assert self.mask is not None
        return self.mask << (channel * self.mask.bit_count())

    def field_value(self, word: int, channel: int = 0) -> float:
        mask = self.field_mask(channel)
        return float((word & mask) >> _shift(mask)) * self.codec.scale

    def field_word(self, word: int, value: float, channel: int = 0) -> int:
        """``word`` with this field set to ``value`` (read-modify-write)."""
        mask = self.field_mask(channel)
        bits = (round(value / self.codec.scale) << _shift(mask)) & mask
        return (word & ~mask & 0xFFFF) | bits

    @property
    def resolution(self) -> float:
        """The smallest step of the value: one count of an integer type, 0 for floats."""
        return abs(self.codec.scale) if TYPES[self.codec.type][2] is not None else 0.0

    @property
    def count(self) -> int:
        return self.codec.count

    @property
    def readable(self) -> bool:
        return "r" in self.access

    @property
    def writable(self) -> bool:
        return "w" in self.access

    def flags(self, raw_value: float) -> tuple[str, ...]:
        """Names of the bits set in a bitfield point's raw value."""
        value = int(raw_value)
        return tuple(name for i, name in enumerate(self.bits) if value >> i & 1)


def _shift(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


@dataclass(frozen=True, slots=True)
class ModbusMap:
    model: str
    title: str
    follows: str
    roles: tuple[str, ...]
    points: dict[str, Point]
    identify: tuple[str, ...] = ()
    channels: int = 1
    source: str = ""
    protocol: str = "modbus"
    write_function: int = 6  # one holding register: 06 (write single) or 16 (write multiple)
    coil_write_function: int = 5  # one coil: 05 or 15
    max_read_registers: int = 125  # the most registers (or 16x bits) one read may span
    timeout_s: float | None = None  # this device's reply timeout (else the link's)
    numbering: str = "zero-based"
    rtu_silent_s: float | None = None  # RTU: quiet before a request (default 3.5 chars)
    turnaround_s: float = 0.0  # RTU: the device's extra time before it listens again
    watchdog: str | None = None  # the point (seconds) arming its communication watchdog
    ratings: Ratings = Ratings()
    channel_stride: int = 0  # registers between channel blocks (a multi-channel meter)

    def channel_offset(self, point: Point, channel: int) -> int:
        """How far ``point`` of ``channel`` sits from channel 0's: coils one per channel (a
        relay board), whole registers ``channel_stride`` per channel (per-channel register
        blocks); bit fields stay put (their bits move, :meth:`Point.field_mask`)."""
        if self.channels == 1 or point.mask is not None:
            return 0
        if point.table == "coil":
            return channel
        return channel * self.channel_stride if point.table in ("holding", "input") else 0

    def write_function_for(self, table: str) -> int:
        """The function code that writes one value of ``table``."""
        return self.write_function if table == "holding" else self.coil_write_function

    def point(self, name: str) -> Point:
        try:
            return self.points[name]
        except KeyError:
            raise KeyError(f"instrument {self.model} has no point {name!r}") from None


@dataclass(frozen=True, slots=True)
class Command:
    """One SCPI function: a query and/or a setting template (``{value}``, ``{ch}``)."""

    name: str
    get: str | None = None
    set: str | None = None
    type: str = "float"
    true: str = "ON"
    false: str = "OFF"
    unit: str = ""

    def query(self, channel: int) -> str:
        assert self.get is not None, f"{self.name} has no query"
        return self.get.format(ch=channel)

    def setting(self, value: Any, channel: int) -> str:
        assert self.set is not None, f"{self.name} has no setting"
        if self.type == "bool":
            value = self.true if value else self.false
        return self.set.format(value=value, ch=channel)

    def parse(self, reply: str) -> Any:
        """An instrument's reply as a Python value; booleans accept 1/0 and the words."""
        text = reply.strip().strip('"')
        if self.type == "bool":
            word = text.upper()
            if word in ("1", self.true.upper(), "ON"):
                return True
            if word in ("0", self.false.upper(), "OFF"):
                return False
            raise ValueError(f"{self.name}: not a boolean reply {reply!r}")
        if self.unit and text.upper().endswith(self.unit.upper()) and self.type != "str":
            text = text[:-len(self.unit)].rstrip()  # "43.50V": a reply with its unit
        return COMMAND_TYPES[self.type](text)

    def setting_pattern(self, channel: int) -> re.Pattern[str]:
        """A regex matching this command's setting lines, capturing ``value`` (for emulators)."""
        assert self.set is not None
        parts = []
        for literal, field, _spec, _conv in string.Formatter().parse(self.set):
            parts.append(_loose(literal))
            if field == "value":
                parts.append(r"(?P<value>[^\s,;]+)")
            elif field == "ch":
                parts.append(re.escape(str(channel)))
        return re.compile("".join(parts) + r"\s*", re.IGNORECASE)


def _loose(literal: str) -> str:
    """Literal text, with any run of blanks matching any run of blanks."""
    return r"\s+".join(re.escape(chunk) for chunk in re.split(r"\s+", literal)) \
        if literal.strip() else (r"\s+" if literal else "")


@dataclass(frozen=True, slots=True)
class ScpiCommandSet:
    model: str
    title: str
    follows: str
    roles: tuple[str, ...]
    commands: dict[str, Command]
    init: tuple[str, ...] = ()
    setpoint: str = "power"
    voltage_headroom: float = 1.05
    channel: int = 1
    terminator: str = "\n"
    error_query: str | None = "SYST:ERR?"
    source: str = ""
    protocol: str = "scpi"
    remote: tuple[str, ...] = ()  # sent first on every connection (e.g. "SYST:REM")
    settle_s: float = 0.0  # the instrument ignores lines sent this soon after a setting
    opc: bool = False  # follow every setting with *OPC? and wait for its 1
    echo: bool = False  # the instrument echoes each line before its answer
    read_terminator: str | None = None  # replies end with this (default: terminator)
    busy_errors: tuple[int, ...] = ()  # error-queue codes that mean "busy, ask again"
    timeout_s: float | None = None
    watchdog: str | None = None  # the command (seconds) arming its communication watchdog
    ratings: Ratings = Ratings()

    def command(self, name: str) -> Command:
        try:
            return self.commands[name]
        except KeyError:
            raise KeyError(f"instrument {self.model} has no command {name!r}") from None


Instrument = ModbusMap | ScpiCommandSet


def _folder() -> Any:
    return files(__package__ or "drivers.instruments")


def available_instruments() -> list[str]:
    return sorted(f.name.removesuffix(".toml") for f in _folder().iterdir()
                  if f.name.endswith(".toml"))


def load_instrument(name_or_path: str) -> Instrument:
    """A built-in instrument by model name (``rigol-dp800``), or a file by path."""
    builtin = _folder() / f"{name_or_path}.toml"
    if builtin.is_file():
        source, text = f"{name_or_path}.toml", builtin.read_text("utf-8")
    elif Path(name_or_path).is_file():
        source, text = name_or_path, Path(name_or_path).read_text("utf-8")
    else:
        raise InstrumentFileError(name_or_path, "model", "no such built-in instrument or file "
                                  f"(built-in: {', '.join(available_instruments())})")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InstrumentFileError(source, "TOML", str(err)) from None
    head = _table(source, data, "instrument")
    protocol = head.get("protocol")
    if protocol not in _PARSERS:
        raise InstrumentFileError(source, "[instrument] protocol",
                                  f"expected one of {sorted(_PARSERS)}, got {protocol!r}")
    for key in ("model", "follows", "title"):
        if not isinstance(head.get(key), str) or not head[key]:
            raise InstrumentFileError(source, f"[instrument] {key}", "missing (a text)")
    roles = head.get("roles")
    if not isinstance(roles, list) or not roles:
        raise InstrumentFileError(source, "[instrument] roles", "a non-empty list of roles")
    unknown = sorted(set(data) - FILE_TABLES)
    if unknown:
        raise InstrumentFileError(source, f"[{unknown[0]}]", "unknown table (known: "
                                  f"{', '.join(sorted(FILE_TABLES))})")
    instrument = _PARSERS[protocol](source, data, head, tuple(roles))
    return replace(instrument, ratings=parse_ratings(source, data))


FILE_TABLES = frozenset({"instrument", "points", "commands", "ratings"})


def _table(source: str, data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise InstrumentFileError(source, f"[{key}]", "missing table")
    return value


def _parse_modbus(source: str, data: dict[str, Any], head: dict[str, Any],
                  roles: tuple[str, ...]) -> ModbusMap:
    _known_keys(source, head, MODBUS_HEAD_KEYS)
    default_order = head.get("word_order", "big")
    numbering = head.get("numbering", "zero-based")
    if numbering not in NUMBERINGS:
        raise InstrumentFileError(source, "[instrument] numbering",
                                  f"expected one of {list(NUMBERINGS)}, got {numbering!r}")
    quirks = _modbus_quirks(source, head)
    points: dict[str, Point] = {}
    for name, p in _table(source, data, "points").items():
        where = f"[points] {name}"
        if not isinstance(p, dict):
            raise InstrumentFileError(source, where, "expected an inline table")
        unknown = set(p) - POINT_KEYS
        if unknown:
            raise InstrumentFileError(source, where, f"unknown key {sorted(unknown)[0]!r}")
        table, kind = p.get("table"), p.get("type")
        access, order = p.get("access", "r"), p.get("word_order", default_order)
        checks = [
            (table in TABLES, f"table must be one of {TABLES}"),
            (isinstance(p.get("address"), int) and not isinstance(p["address"], bool)
             and p["address"] >= 0, "address must be a non-negative integer"),
            (kind in TYPES, f"type must be one of {sorted(TYPES)}"),
            ((kind == "bit") == (table in ("coil", "discrete")),
             "coils and discrete inputs have type bit, registers a numeric type"),
            (access in ACCESS, f"access must be one of {ACCESS}"),
            ("w" not in access or table in WRITABLE_TABLES,
             f"only {WRITABLE_TABLES} are writable"),
            (order in WORD_ORDERS, f"word_order must be one of {WORD_ORDERS}"),
            (isinstance(p.get("scale", 1), int | float) and p.get("scale", 1) != 0,
             "scale must be a non-zero number"),
        ]
        for ok, problem in checks:
            if not ok:
                raise InstrumentFileError(source, where, problem)
        table, kind = str(table), str(kind)
        address = _protocol_address(source, where, table, p["address"], numbering)
        if address > 0xFFFF:
            raise InstrumentFileError(source, where, "address must be in 0..0xFFFF")
        offset = p.get("offset", 0)
        if isinstance(offset, bool) or not isinstance(offset, int | float):
            raise InstrumentFileError(source, where, "offset must be a number")
        codec = Codec(kind, order, float(p.get("scale", 1)), float(offset))
        points[name] = Point(name, table, address, codec, p.get("unit", ""), access,
                             tuple(p.get("bits", ())), p.get("doc", ""),
                             _rollover(source, where, p.get("rollover"), codec),
                             _valid_range(source, where, p), _mask(source, where, p))
    _check_overlaps(source, points)
    channels = head.get("channels", 1)
    if not isinstance(channels, int) or isinstance(channels, bool) or not 1 <= channels <= 64:
        raise InstrumentFileError(source, "[instrument] channels", "an integer in 1..64")
    stride = _channel_stride(source, head, channels, points)
    for role in roles:
        for name in ROLE_POINTS.get(role, ()):
            p = points.get(name)
            if channels > 1 and not stride and p is not None \
                    and p.table in ("holding", "input") and p.mask is None:
                raise InstrumentFileError(
                    source, f"[points] {name}", f"channels = {channels}, but {name} is a "
                    "whole register: every channel would write the same one. Declare the "
                    "bit of channel 0 (bit = 0: channel N is bit N), use coils, or give "
                    "channel_stride (registers between channel blocks)")
            if p is not None and p.mask is not None and \
                    p.field_mask(channels - 1) > 0xFFFF:
                raise InstrumentFileError(source, f"[points] {name}",
                                          f"{channels} channels of this field do not fit "
                                          "in one 16-bit register")
    for role in roles:
        if role not in ROLE_POINTS:
            raise InstrumentFileError(source, "[instrument] roles",
                                      f"no Modbus driver for role {role!r} "
                                      f"(Modbus roles: {', '.join(ROLE_POINTS)})")
        missing = [n for n in ROLE_POINTS[role] if n not in points]
        either = ENERGY_ALTERNATIVES.get(role, ())
        if either and not any(n in points for n in either):
            missing.append(" or ".join(either))
        if missing:
            raise InstrumentFileError(source, "[points]",
                                      f"role {role} needs point(s) {', '.join(missing)}")
    watchdog = head.get("watchdog")
    if watchdog is not None:
        point = points.get(watchdog) if isinstance(watchdog, str) else None
        if point is None or not point.writable:
            raise InstrumentFileError(source, "[instrument] watchdog",
                                      "names the writable point that arms the device's "
                                      f"communication watchdog (seconds); got {watchdog!r}")
        quirks["watchdog"] = watchdog
    identify = tuple(head.get("identify", ()))
    for name in identify:
        if name not in points:
            raise InstrumentFileError(source, "[instrument] identify", f"no point {name!r}")
    return ModbusMap(head["model"], head["title"], head["follows"], roles, points, identify,
                     int(head.get("channels", 1)), source, numbering=numbering,
                     channel_stride=stride, **quirks)


def _channel_stride(source: str, head: dict[str, Any], channels: int,
                    points: dict[str, Point]) -> int:
    """``channel_stride``: channel N's registers sit N x stride above channel 0's (a
    multi-channel meter or load with one register block per channel). Every whole
    register point moves with the channel, so a block must fit in the stride and the last
    channel's block in the 16-bit address space."""
    stride = head.get("channel_stride", 0)
    if not isinstance(stride, int) or isinstance(stride, bool) or not 0 <= stride <= 0x8000:
        raise InstrumentFileError(source, "[instrument] channel_stride",
                                  "an integer in 0..32768 (registers between channel blocks)")
    if not stride:
        return 0
    if channels < 2:
        raise InstrumentFileError(source, "[instrument] channel_stride",
                                  "applies to a multi-channel instrument (channels >= 2)")
    for table in ("holding", "input"):
        block = [p for p in points.values() if p.table == table and p.mask is None]
        if not block:
            continue
        low = min(p.address for p in block)
        high = max(p.address + p.count for p in block)
        if high - low > stride:
            raise InstrumentFileError(source, "[instrument] channel_stride",
                                      f"{stride} registers, but channel 0's {table} block "
                                      f"spans {high - low} ({low}..{high - 1}): the "
                                      "channels' blocks would overlap")
        if high + (channels - 1) * stride > 0x10000:
            raise InstrumentFileError(source, "[instrument] channel_stride",
                                      f"channel {channels - 1}'s {table} block ends beyond "
                                      "address 65535")
    return stride


COMMON_HEAD_KEYS = frozenset({"protocol", "model", "roles", "title", "follows"})
POINT_KEYS = frozenset({"table", "address", "type", "scale", "offset", "unit", "access",
                        "bits", "doc",
                        "word_order", "rollover", "min", "max", "bit", "mask"})
COMMAND_KEYS = frozenset({"get", "set", "type", "true", "false", "unit", "doc"})
MODBUS_HEAD_KEYS = COMMON_HEAD_KEYS | {"word_order", "identify", "channels", "numbering",
                                       "write_function", "coil_write_function",
                                       "max_read_registers", "timeout_s", "rtu_silent_s",
                                       "turnaround_s", "watchdog", "channel_stride"}
NUMBERINGS = ("zero-based", "one-based")
# Datasheet ("Modicon") numbering: table -> the reference of protocol address 0.
DATASHEET_BASE = {"coil": 1, "discrete": 10001, "input": 30001, "holding": 40001}


def _known_keys(source: str, head: dict[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(head) - known)
    if unknown:
        raise InstrumentFileError(source, f"[instrument] {unknown[0]}",
                                  f"unknown key (known: {', '.join(sorted(known))})")


def _protocol_address(source: str, where: str, table: str, address: int,
                      numbering: str) -> int:
    """The protocol (0-based) address of a point. Datasheet numbers (30001, 40001...) are
    refused unless the file declares ``numbering = "one-based"``, where they are converted."""
    base = DATASHEET_BASE[table]
    if numbering == "one-based":
        # 5-digit references (30001..39999), 6-digit ones (300001..365536), coils 1..65536
        firsts = (base,) if base == 1 else (base, (base - 1) * 10 + 1)
        spans = (0x10000,) if base == 1 else (9999, 0x10000)
        for first, span in zip(firsts, spans, strict=True):
            if first <= address < first + span:
                return address - first
        raise InstrumentFileError(source, where, f"address {address} is not a one-based "
                                  f"{table} reference (from {base})")
    if base > 1 and base <= address < base + 9999:
        raise InstrumentFileError(
            source, where, f"address {address} looks like datasheet numbering ({table} "
            f"{base} is protocol address 0): give {address - base}, or declare "
            'numbering = "one-based" in [instrument]')
    return address


def _modbus_quirks(source: str, head: dict[str, Any]) -> dict[str, Any]:
    """The [instrument] keys that say how this device departs from the usual (defaults are
    the Modbus specification's)."""
    out: dict[str, Any] = {}
    for key, allowed in (("write_function", (6, 16)), ("coil_write_function", (5, 15))):
        if key in head:
            if head[key] not in allowed:
                raise InstrumentFileError(source, f"[instrument] {key}",
                                          f"expected {allowed[0]} or {allowed[1]}, "
                                          f"got {head[key]!r}")
            out[key] = head[key]
    if "max_read_registers" in head:
        n = head["max_read_registers"]
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 125:
            raise InstrumentFileError(source, "[instrument] max_read_registers",
                                      "an integer in 1..125")
        out["max_read_registers"] = n
    for key, low, high in (("timeout_s", 0.0, 60.0), ("rtu_silent_s", 0.0, 1.0),
                           ("turnaround_s", 0.0, 1.0)):
        if key in head:
            t = head[key]
            if not isinstance(t, int | float) or isinstance(t, bool) or not low <= t <= high \
                    or (key == "timeout_s" and t == 0):
                raise InstrumentFileError(source, f"[instrument] {key}",
                                          f"seconds, a number in [{low:g}, {high:g}]")
            out[key] = float(t)
    return out


def _rollover(source: str, where: str, value: Any, codec: Codec) -> float | None:
    """``rollover = N`` (point units) or ``"width"`` (the integer type's range x scale)."""
    if value is None:
        return None
    span = TYPES[codec.type][2]
    if value == "width":
        if span is None or span[0] < 0:
            raise InstrumentFileError(source, where, 'rollover = "width" needs an unsigned '
                                      "integer type")
        return (span[1] + 1) * abs(codec.scale)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise InstrumentFileError(source, where, 'rollover must be a positive number (the '
                                  'value the counter wraps at) or "width"')
    return float(value)


def _valid_range(source: str, where: str, p: dict[str, Any]) -> tuple[float, float] | None:
    if "min" not in p and "max" not in p:
        return None
    low, high = p.get("min", -math.inf), p.get("max", math.inf)
    for v in (low, high):
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise InstrumentFileError(source, where, "min and max must be numbers")
    if not low < high:
        raise InstrumentFileError(source, where, "min must be below max")
    return float(low), float(high)


def _mask(source: str, where: str, p: dict[str, Any]) -> int | None:
    """``bit = N`` (one bit) or ``mask = 0x00F0`` (a field): a part of one u16 register."""
    if "bit" not in p and "mask" not in p:
        return None
    if "bit" in p and "mask" in p:
        raise InstrumentFileError(source, where, "give bit or mask, not both")
    if p.get("table") not in ("holding", "input") or p.get("type") != "u16":
        raise InstrumentFileError(source, where, "a bit field is part of one u16 register "
                                  "(table holding or input, type u16)")
    value = 1 << p["bit"] if "bit" in p and isinstance(p["bit"], int) \
        and 0 <= p["bit"] <= 15 else p.get("mask")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 0xFFFF \
            or ((value >> _shift(value)) + 1) & (value >> _shift(value)):
        raise InstrumentFileError(source, where, "bit must be 0..15, mask a run of set bits "
                                  "in 0x0001..0xFFFF")
    return value


def _check_overlaps(source: str, points: dict[str, Point]) -> None:
    """No two points share a register, unless both are bit fields with disjoint masks."""
    fields: dict[tuple[str, int], list[Point]] = {}
    for p in points.values():
        if p.mask is not None:
            for field_point in fields.setdefault((p.table, p.address), []):
                if field_point.mask is not None and field_point.mask & p.mask:
                    raise InstrumentFileError(source, f"[points] {p.name}",
                                              f"its bits overlap {field_point.name}'s")
            fields[(p.table, p.address)].append(p)
    taken: dict[tuple[str, int], str] = {}
    for p in points.values():
        if p.mask is not None:
            continue
        if (p.table, p.address) in fields:
            raise InstrumentFileError(source, f"[points] {p.name}",
                                      f"overlaps the bit fields at {p.table} address "
                                      f"{p.address}")
        for a in range(p.address, p.address + p.count):
            other = taken.setdefault((p.table, a), p.name)
            if other != p.name:
                raise InstrumentFileError(source, f"[points] {p.name}",
                                          f"overlaps {other} at {p.table} address {a}")


def _parse_scpi(source: str, data: dict[str, Any], head: dict[str, Any],
                roles: tuple[str, ...]) -> ScpiCommandSet:
    _known_keys(source, head, SCPI_HEAD_KEYS)
    commands: dict[str, Command] = {}
    for name, c in _table(source, data, "commands").items():
        where = f"[commands] {name}"
        if not isinstance(c, dict) or not (c.get("get") or c.get("set")):
            raise InstrumentFileError(source, where, "needs get and/or set")
        unknown = set(c) - COMMAND_KEYS
        if unknown:
            raise InstrumentFileError(source, where, f"unknown key {sorted(unknown)[0]!r}")
        kind = c.get("type", "float")
        if kind not in (*COMMAND_TYPES, "bool"):
            raise InstrumentFileError(source, where, "type must be float, int, str or bool")
        if c.get("set") is not None and "{value" not in c["set"]:
            raise InstrumentFileError(source, where, "a setting template needs {value}")
        commands[name] = Command(name, c.get("get"), c.get("set"), kind, c.get("true", "ON"),
                                 c.get("false", "OFF"), c.get("unit", ""))
    watchdog = head.get("watchdog")
    if watchdog is not None and (not isinstance(watchdog, str) or watchdog not in commands
                                 or commands[watchdog].set is None):
        raise InstrumentFileError(source, "[instrument] watchdog",
                                  "names the command (with a setting, in seconds) that arms "
                                  f"the device's communication watchdog; got {watchdog!r}")
    setpoint = head.get("setpoint", "power")
    if setpoint not in SETPOINT_COMMANDS:
        raise InstrumentFileError(source, "[instrument] setpoint",
                                  f"expected one of {sorted(SETPOINT_COMMANDS)}")
    for role in roles:
        if role not in ROLE_COMMANDS:
            raise InstrumentFileError(source, "[instrument] roles",
                                      f"no SCPI driver for role {role!r} "
                                      f"(SCPI roles: {', '.join(ROLE_COMMANDS)})")
        needs = ROLE_COMMANDS[role] + (SETPOINT_COMMANDS[setpoint]
                                       if role in SETPOINT_ROLES else ())
        missing = [n for n in needs if n not in commands]
        if missing:
            raise InstrumentFileError(source, "[commands]",
                                      f"role {role} needs command(s) {', '.join(missing)}")
    return ScpiCommandSet(
        head["model"], head["title"], head["follows"], roles, commands,
        tuple(head.get("init", ())), setpoint, float(head.get("voltage_headroom", 1.05)),
        int(head.get("channel", 1)), head.get("terminator", "\n"),
        head.get("error_query", "SYST:ERR?") or None, source, watchdog=watchdog,
        **_scpi_quirks(source, head))


SCPI_HEAD_KEYS = COMMON_HEAD_KEYS | {"setpoint", "init", "voltage_headroom", "channel",
                                     "terminator", "error_query", "remote", "settle_s", "opc",
                                     "echo", "read_terminator", "busy_errors", "timeout_s",
                                     "watchdog"}
# key -> (accepts, what it must be)
_SCPI_QUIRKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "remote": (lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v),
               "a list of command lines"),
    "settle_s": (lambda v: isinstance(v, int | float) and not isinstance(v, bool)
                 and 0 <= v <= 5, "seconds, a number in [0, 5]"),
    "opc": (lambda v: isinstance(v, bool), "true or false"),
    "echo": (lambda v: isinstance(v, bool), "true or false"),
    "read_terminator": (lambda v: isinstance(v, str) and v != "", "a non-empty text"),
    "busy_errors": (lambda v: isinstance(v, list) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in v), "a list of error codes"),
    "timeout_s": (lambda v: isinstance(v, int | float) and not isinstance(v, bool)
                  and 0 < v <= 60, "seconds, a number in (0, 60]"),
}


def _scpi_quirks(source: str, head: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, (ok, expected) in _SCPI_QUIRKS.items():
        if key in head:
            if not ok(head[key]):
                raise InstrumentFileError(source, f"[instrument] {key}",
                                          f"expected {expected}, got {head[key]!r}")
            value = head[key]
            out[key] = tuple(value) if isinstance(value, list) else value
    for key in ("settle_s", "timeout_s"):
        if key in out:
            out[key] = float(out[key])
    return out


_PARSERS: dict[str, Callable[[str, dict[str, Any], dict[str, Any], tuple[str, ...]],
                             Instrument]] = {"modbus": _parse_modbus, "scpi": _parse_scpi}
