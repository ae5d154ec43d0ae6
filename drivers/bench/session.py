"""An operator's session with one instrument, in the style of a pyvisa/pymeasure session:
``testbed instrument read RESOURCE --model M [POINT]`` and ``... set RESOURCE --model M
POINT VALUE``.

A *name* is a point of a Modbus file (``power_setpoint_w``) or a command of an SCPI file
(``measured_voltage``). Reads decode and check values as the drivers do; a setting is
checked before it leaves against the file's ``[ratings]`` (a V, A or W value beyond the
rating, a negative value on an instrument that cannot both source and sink, or a quantity
the file states no rating for, is refused), against the point's valid range and the
register type's range, then written and read back.

Errors: :class:`SessionError` (a ValueError) for what the operator typed (resource, model,
name, value, channel, a refused setting); :class:`Unreachable` when the instrument cannot
be reached (connection refused or reset, no reply: switched off, wrong address); an
instrument that answers with an error raises its :class:`InstrumentError`. Each message is
one line naming the resource and the name.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from drivers.bench.factories import modbus_link_for, scpi_link_for
from drivers.bench.modbus_devices import InvalidReading, check_value
from drivers.instruments.model import (
    Command,
    Instrument,
    ModbusMap,
    Point,
    ScpiCommandSet,
    load_instrument,
)
from drivers.protocol.modbus import ModbusLink
from drivers.protocol.registers import TYPES
from drivers.protocol.scpi import ScpiLink
from drivers.resources import Resource, parse_resource
from drivers.transport.base import LinkError

T = TypeVar("T")

# A value's unit -> the [ratings] key that bounds its magnitude.
RATED_UNITS = {"V": "voltage_v", "A": "current_a", "W": "power_w"}
_DECIMALS = re.compile(r"\{value:[^}]*\.(\d+)f\}")


class SessionError(ValueError):
    """What the operator asked cannot be done as asked (one line: where and why)."""


class Unreachable(RuntimeError):
    """The instrument did not answer: connection refused or reset, or no reply."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One name's value: ``value`` (float, bool or str), its ``unit``, where it came from."""

    name: str
    value: Any
    unit: str
    where: str


def open_session(resource: str, model: str, channel: int | None = None) -> Session:
    """A session on ``resource`` with the instrument file ``model`` (built-in name or path).
    Raises SessionError for a malformed resource, an unknown or broken file, a resource of
    the other protocol, or a channel the file does not have."""
    try:
        parsed = parse_resource(resource)
        instrument = load_instrument(model)
    except ValueError as err:
        raise SessionError(str(err)) from None
    if parsed.protocol != instrument.protocol:
        raise SessionError(f"resource {resource!r} is a {parsed.protocol} resource, but "
                           f"{instrument.model} speaks {instrument.protocol}")
    if instrument.timeout_s is not None:  # the device's own reply timeout
        parsed = replace(parsed, timeout_s=instrument.timeout_s)
    return _SESSIONS[instrument.protocol](parsed, instrument, channel)


class Session:
    """Base of the Modbus and SCPI sessions: names, ratings, the connection's failures."""

    instrument: Instrument

    def __init__(self, resource: Resource, channel: int) -> None:
        self.resource = resource
        self.channel = channel
        self._link: ModbusLink | ScpiLink | None = None

    def names(self, *, writable: bool = False) -> list[str]:
        raise NotImplementedError

    def _unknown(self, name: str, writable: bool) -> SessionError:
        known = self.names(writable=writable)
        kind = "writable name" if writable else "name"
        return SessionError(f"{self.instrument.model} has no {kind} {name!r} (known: "
                            f"{', '.join(known) or 'none'})")

    async def read(self, name: str | None = None) -> list[Reading]:
        """``name``'s value, or every readable name's when None."""
        raise NotImplementedError

    async def set(self, name: str, text: str) -> Reading:
        """Check ``text`` for ``name``, write it, read it back; returns the read-back value.
        SessionError when refused or when it reads back different."""
        raise NotImplementedError

    def guard(self, name: str, value: float, unit: str) -> None:
        """Refuse ``value`` of ``unit`` beyond the file's ratings (magnitudes; a negative
        value needs an instrument that both sources and sinks)."""
        key = RATED_UNITS.get(unit)
        if key is None:
            return
        ratings = self.instrument.ratings
        rated: float | None = getattr(ratings, key)
        where = f"{self.instrument.model} {name}"
        if rated is None:
            raise SessionError(f"{where} = {value:g} {unit} refused: the instrument file "
                               f"{self.instrument.source} states no [ratings] {key}, so "
                               "nothing bounds it; add the datasheet's rating")
        if abs(value) > rated:
            raise SessionError(f"{where} = {value:g} {unit} refused: beyond the rating "
                               f"{rated:g} {unit} ([ratings] {key} of "
                               f"{self.instrument.source})")
        if value < 0 and not {"source", "sink"} <= set(ratings.directions):
            raise SessionError(f"{where} = {value:g} {unit} refused: a negative setting "
                               "needs an instrument that both sources and sinks ([ratings] "
                               f"directions = {list(ratings.directions)})")

    async def _exchange(self, what: str, exchange: Callable[[], Awaitable[T]]) -> T:
        """``exchange()`` with a link failure (refused, reset, no reply) as Unreachable."""
        try:
            async with asyncio.timeout(self.resource.timeout_s * 4 + 1.0):
                return await exchange()
        except (LinkError, OSError, TimeoutError) as err:
            problem = str(err) or type(err).__name__
            raise Unreachable(f"{self.resource}: {what}: no answer ({problem}); is the "
                              "instrument on, and is this its address?") from None

    async def close(self) -> None:
        if self._link is not None:
            await self._link.close()


class ModbusSession(Session):
    instrument: ModbusMap

    def __init__(self, resource: Resource, instrument: ModbusMap, channel: int | None) -> None:
        ch = 0 if channel is None else channel
        if not 0 <= ch < instrument.channels:
            raise SessionError(f"channel {ch} outside 0..{instrument.channels - 1} of "
                               f"{instrument.model}")
        super().__init__(resource, ch)
        self.instrument = instrument
        self.link = modbus_link_for(instrument, resource)
        self._link = self.link

    def names(self, *, writable: bool = False) -> list[str]:
        return [n for n, p in self.instrument.points.items()
                if (p.writable if writable else p.readable)]

    def _point(self, name: str, writable: bool) -> Point:
        point = self.instrument.points.get(name)
        if point is None or not (point.writable if writable else point.readable):
            raise self._unknown(name, writable)
        return point

    def _address(self, point: Point) -> int:
        return point.address + self.instrument.channel_offset(point, self.channel)

    async def _read_point(self, point: Point) -> Reading:
        address = self._address(point)
        words = await self._exchange(
            f"read {point.name}",
            lambda: self.link.read(point.table, address, point.count, self.resource.unit))
        value = point.codec.decode(words) if point.mask is None \
            else point.field_value(words[0], self.channel)
        try:
            value = check_value(point, value)
        except InvalidReading as err:
            raise SessionError(f"{self.resource}: {err}") from None
        shown: Any = bool(value) if point.codec.type == "bit" else value
        return Reading(point.name, shown, point.unit,
                       f"{point.table} {address} unit {self.resource.unit}")

    async def read(self, name: str | None = None) -> list[Reading]:
        points = [self._point(name, False)] if name is not None else \
            [self.instrument.points[n] for n in self.names()]
        return [await self._read_point(p) for p in points]

    def _value(self, point: Point, text: str) -> float:
        value = _number(text, point.name, boolean=point.codec.type == "bit")
        span = TYPES[point.codec.type][2]
        if span is not None and point.mask is None:
            raw = value / point.codec.scale
            if not span[0] <= round(raw) <= span[1]:
                raise SessionError(f"{self.instrument.model} {point.name} = {text} refused: "
                                   f"outside the {point.codec.type} register's range "
                                   f"[{span[0] * point.codec.scale:g}, "
                                   f"{span[1] * point.codec.scale:g}] {point.unit}")
        if point.valid is not None and not point.valid[0] <= value <= point.valid[1]:
            raise SessionError(f"{self.instrument.model} {point.name} = {text} refused: "
                               f"outside its valid range [{point.valid[0]:g}, "
                               f"{point.valid[1]:g}]")
        return value

    async def set(self, name: str, text: str) -> Reading:
        point = self._point(name, True)
        value = self._value(point, text)
        self.guard(name, value, point.unit)
        address = self._address(point)
        if point.mask is not None:
            await self._exchange(f"write {name}", lambda: self.link.update(
                address, lambda w: point.field_word(w, value, self.channel),
                self.resource.unit, function=self.instrument.write_function))
        else:
            words = point.codec.encode(value)
            function = self.instrument.write_function_for(point.table) \
                if len(words) == 1 else None
            await self._exchange(f"write {name}", lambda: self.link.write(
                point.table, address, words, self.resource.unit, function=function))
        back = await self._read_point(point) if point.readable else None
        if back is None:
            return Reading(name, None, point.unit, f"{point.table} {address} (write-only)")
        expected = point.codec.decode(point.codec.encode(value)) if point.mask is None \
            else value
        if float(back.value) != expected:
            raise SessionError(f"{self.resource}: {name} reads back {back.value:g} after "
                               f"{expected:g} was written")
        return back


class ScpiSession(Session):
    instrument: ScpiCommandSet

    def __init__(self, resource: Resource, instrument: ScpiCommandSet,
                 channel: int | None) -> None:
        super().__init__(resource, instrument.channel if channel is None else channel)
        self.instrument = instrument
        if channel is not None and not any("{ch" in (c.get or "") + (c.set or "")
                                           for c in instrument.commands.values()):
            raise SessionError(f"{instrument.model} has one output: its commands name no "
                               "channel ({ch})")
        self.link = scpi_link_for(instrument, resource)
        self._link = self.link

    def names(self, *, writable: bool = False) -> list[str]:
        return [n for n, c in self.instrument.commands.items()
                if (c.set if writable else c.get)]

    def _command(self, name: str, writable: bool) -> Command:
        cmd = self.instrument.commands.get(name)
        if cmd is None or not (cmd.set if writable else cmd.get):
            raise self._unknown(name, writable)
        return cmd

    async def _query(self, cmd: Command) -> Reading:
        line = cmd.query(self.channel)
        reply = await self._exchange(f"query {line!r}", lambda: self.link.query(line))
        try:
            value = cmd.parse(reply)
        except ValueError:
            raise SessionError(f"{self.resource}: unreadable reply {reply!r} to "
                               f"{line!r}") from None
        return Reading(cmd.name, value, cmd.unit, line)

    async def read(self, name: str | None = None) -> list[Reading]:
        commands = [self._command(name, False)] if name is not None else \
            [self.instrument.commands[n] for n in self.names()]
        return [await self._query(c) for c in commands]

    async def set(self, name: str, text: str) -> Reading:
        cmd = self._command(name, True)
        value: Any
        if cmd.type == "bool":
            value = bool(_number(text, name, boolean=True))
        elif cmd.type == "str":
            value = text
        else:
            number = _number(text, name)
            value = int(number) if cmd.type == "int" else number
            self.guard(name, float(number), cmd.unit)
        line = cmd.setting(value, self.channel)
        await self._exchange(f"write {line!r}", lambda: self.link.write(line))
        if cmd.get is None:
            return Reading(name, None, cmd.unit, f"{line} (no query to read it back)")
        back = await self._query(cmd)
        if not _same(cmd, value, back.value):
            raise SessionError(f"{self.resource}: {name} reads back {back.value!r} after "
                               f"{line!r} was sent")
        return back


def _same(cmd: Command, sent: Any, got: Any) -> bool:
    """Does the read-back match the setting, to the setting template's decimals?"""
    if cmd.type in ("bool", "str"):
        return bool(sent == got)
    m = _DECIMALS.search(cmd.set or "")
    tolerance = 0.5 * 10 ** -int(m[1]) if m else 0.0
    return math.isclose(float(got), float(sent), rel_tol=1e-9, abs_tol=tolerance * 1.001)


_BOOLEANS = {"on": 1.0, "off": 0.0, "true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0}


def _number(text: str, name: str, *, boolean: bool = False) -> float:
    """``text`` as a number; on/off and true/false are 1 and 0 (a switch register)."""
    word = _BOOLEANS.get(text.strip().lower())
    if boolean or word is not None:
        if word is None:
            raise SessionError(f"{name}: expected on/off, true/false or 1/0, got {text!r}")
        return word
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise SessionError(f"{name}: expected a number, got {text!r}")
    return number


_SESSIONS: dict[str, Callable[[Resource, Any, int | None], Session]] = {
    "modbus": ModbusSession, "scpi": ScpiSession}
