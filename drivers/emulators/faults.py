"""Faults an emulated instrument can be told to show, one plan per instrument.

``no_reply`` (the request is swallowed), ``late_reply`` (answered after ``delay_s``),
``crc_error`` (the reply is garbled: a bad CRC on RTU, a wrong transaction id on TCP, so the
client must discard it), ``exception`` (a Modbus exception, ``code``), ``scpi_error`` (the
next setting is refused into the error queue) and ``disconnect`` (the connection is closed).
Each fault lasts ``count`` requests, or until cleared when ``count`` is None.

A fault may also be *scheduled* (:class:`ScheduledFault`, parsed by :func:`parse_fault` from
``testbed emulate --fault`` or the emulator's control socket): switched on ``start_s`` after
the schedule starts and cleared at ``end_s``. The grammar (docs/operator-guide.md)::

    DEVICE=KIND[:COUNT][,OPTION=VALUE]...[@START[-END]]

``DEVICE`` a device of the rig (``household 7 pv``, ``grid``) or its short name (``hh7.pv``,
``hh1.battery.bms``); ``KIND`` one of :data:`FAULT_KINDS` or an alias (:data:`KIND_ALIASES`:
``silent``, ``late``, ``crc``, ``refuse``, ``drop``); ``OPTION`` one of ``delay_s`` (late
reply, seconds), ``code`` (Modbus exception code or SCPI error number), ``message`` (SCPI
error text); ``START``/``END`` seconds (``12``, ``12s``, ``500ms``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field

FAULT_KINDS = ("no_reply", "late_reply", "crc_error", "exception", "scpi_error", "disconnect")
# short words an operator types -> the fault kind
KIND_ALIASES: dict[str, str] = {"silent": "no_reply", "late": "late_reply", "crc": "crc_error",
                                "refuse": "scpi_error", "drop": "disconnect"}
# the kinds only one protocol can show (an instrument error of the other protocol is the
# other kind); the rest apply to every instrument
FAULT_PROTOCOLS: dict[str, str] = {"exception": "modbus", "scpi_error": "scpi"}
# option -> how its text value reads
FAULT_OPTIONS: dict[str, Callable[[str], float | int | str]] = {
    "delay_s": float, "code": int, "message": str}
GRAMMAR = "DEVICE=KIND[:COUNT][,OPTION=VALUE]...[@START[-END]]"


@dataclass
class Fault:
    kind: str
    count: int | None = None  # requests it lasts; None = until cleared
    delay_s: float = 1.0  # late_reply
    code: int = 4  # exception: Modbus exception code; scpi_error: the SCPI error number
    message: str = "Data out of range"  # scpi_error


class FaultPlan:
    def __init__(self) -> None:
        self._active: Fault | None = None
        self.served = 0  # how many requests met a fault (tests check a fault really fired)

    def inject(self, kind: str, count: int | None = None, **options: float | int | str) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r} (faults: {', '.join(FAULT_KINDS)})")
        self._active = Fault(kind, count, **options)  # type: ignore[arg-type]

    def apply(self, fault: Fault) -> None:
        """Switch on a copy of ``fault`` (its count runs down on the copy)."""
        self._active = dataclasses.replace(fault)

    def clear(self) -> None:
        self._active = None

    @property
    def active(self) -> Fault | None:
        return self._active

    def take(self) -> Fault | None:
        """The fault that applies to this request, if any (and count it down)."""
        fault = self._active
        if fault is None:
            return None
        self.served += 1
        if fault.count is not None:
            fault.count -= 1
            if fault.count <= 0:
                self._active = None
        return fault


@dataclass(frozen=True)
class ScheduledFault:
    """A fault on one device from ``start_s`` to ``end_s`` (None: until cleared or its count
    is spent), in seconds of the emulator's clock after the schedule starts."""

    device: str
    fault: Fault
    start_s: float = 0.0
    end_s: float | None = None

    def describe(self) -> str:
        f = self.fault
        count = f":{f.count}" if f.count is not None else ""
        extra = {"late_reply": f",delay_s={f.delay_s:g}", "exception": f",code={f.code}",
                 "scpi_error": f",code={f.code}"}.get(f.kind, "")
        when = f"@{self.start_s:g}s" + (f"-{self.end_s:g}s" if self.end_s is not None else "")
        return f"{self.device}={f.kind}{count}{extra}{when}"


_SHORT = re.compile(r"hh(?P<household>[\w-]+)\.(?P<role>\w+)(?:\.(?P<part>\w+))?")
_SECONDS = re.compile(r"(?P<value>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>ms|s)?")


def device_name(text: str) -> str:
    """``hh7.pv`` -> ``household 7 pv``, ``hh1.battery.bms`` -> ``household 1 battery bms``;
    any other text is a device name as the rig spells it (``household 7 pv``, ``grid``)."""
    text = " ".join(text.split())
    m = _SHORT.fullmatch(text)
    if m is None:
        return text
    return " ".join(p for p in ("household", m["household"], m["role"], m["part"]) if p)


def _seconds(text: str, what: str, source: str) -> float:
    m = _SECONDS.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{source}: {what} {text!r} is not a time in seconds "
                         "(e.g. 12, 12s, 500ms)")
    return float(m["value"]) / (1000.0 if m["unit"] == "ms" else 1.0)


def parse_fault(text: str, source: str = "--fault") -> ScheduledFault:
    """One fault of the grammar above (module docstring) -> a :class:`ScheduledFault`.

    ``source`` names where the text came from in the message of the ValueError raised for
    any malformed part (each message quotes the text and says what was expected).
    """
    where = f"{source} {text!r}"
    device, sep, rest = text.partition("=")
    if not sep or not device.strip():
        raise ValueError(f"{where}: expected {GRAMMAR}")
    spec, at, window = rest.partition("@")
    head, *options = [part.strip() for part in spec.split(",")]
    word, colon, count_text = head.partition(":")
    kind = KIND_ALIASES.get(word.strip(), word.strip())
    if kind not in FAULT_KINDS:
        raise ValueError(f"{where}: unknown fault kind {word.strip()!r} (kinds: "
                         f"{', '.join(FAULT_KINDS)}; aliases: "
                         f"{', '.join(f'{a}={k}' for a, k in KIND_ALIASES.items())})")
    count: int | None = None
    if colon:
        if not count_text.strip().isdigit() or int(count_text) < 1:
            raise ValueError(f"{where}: COUNT must be a whole number of requests >= 1, "
                             f"got {count_text!r}")
        count = int(count_text)
    values: dict[str, float | int | str] = {}
    for option in options:
        name, eq, value = option.partition("=")
        name = name.strip()
        if not eq or name not in FAULT_OPTIONS:
            raise ValueError(f"{where}: unknown option {option!r} (options: "
                             f"{', '.join(f'{o}=VALUE' for o in FAULT_OPTIONS)})")
        try:
            values[name] = FAULT_OPTIONS[name](value.strip())
        except ValueError:
            raise ValueError(f"{where}: option {name} expects a number, got "
                             f"{value.strip()!r}") from None
    start, end = 0.0, None
    if at:
        first, dash, last = window.partition("-")
        start = _seconds(first, "START", where)
        if dash:
            end = _seconds(last, "END", where)
            if end <= start:
                raise ValueError(f"{where}: END ({end:g} s) must come after START "
                                 f"({start:g} s)")
    fault = Fault(kind, count, **values)  # type: ignore[arg-type]
    return ScheduledFault(device_name(device), fault, start, end)


@dataclass
class Quirks:
    """Lasting habits of a real instrument, switched on per emulated instrument (the faults
    above are events; these are how a device always behaves).

    ``busy_every``        every Nth request is answered "busy" (Modbus exception 6).
    ``refuse_functions``  function codes answered with exception 1 (e.g. {6}: a device that
                          only accepts function 16, even for one register).
    ``counter_offset``    point name -> Wh added to an energy counter (its reading at the
                          plant's zero; change it mid-run for a counter that jumps).
    ``counter_rollover``  point name -> the value the counter wraps to 0 at.
    ``max_read``          a read of more registers than this is answered with exception 3.
    ``turnaround_s``      RTU: a request that comes sooner than this after the device's
                          previous reply is not heard (a slow RS-485 device).

    SCPI: ``settle_s``    lines within this after a setting are ignored (queries too).
    ``local_until``       every line is answered "LOCAL MODE" until this command is sent.
    ``echo``              every line is repeated back before its answer.
    ``busy_every``        (above) every Nth setting queues error ``busy_code``.
    """

    busy_every: int = 0
    refuse_functions: set[int] = field(default_factory=set)
    counter_offset: dict[str, float] = field(default_factory=dict)
    counter_rollover: dict[str, float] = field(default_factory=dict)
    max_read: int = 0
    turnaround_s: float = 0.0
    unheard: int = 0  # requests lost (turnaround, settle): tests check it fired, or not
    settle_s: float = 0.0
    local_until: str | None = None
    echo: bool = False
    busy_code: int = -213

    def counter(self, name: str, value: float) -> float:
        """What the instrument's register shows for a true counter ``value``."""
        shown = value + self.counter_offset.get(name, 0.0)
        rollover = self.counter_rollover.get(name)
        return shown % rollover if rollover else shown


def _numbers(text: str) -> set[int]:
    return {int(x) for x in text.split(",") if x.strip()}


def _per_point(text: str) -> dict[str, float]:
    point, sep, value = text.partition("=")
    if not sep:
        raise ValueError("expected POINT=VALUE")
    return {point.strip(): float(value)}


# quirk -> how its text value reads (``--quirk DEVICE=QUIRK:VALUE``)
QUIRK_VALUES: dict[str, Callable[[str], object]] = {
    "busy_every": int, "refuse_functions": _numbers, "counter_offset": _per_point,
    "counter_rollover": _per_point, "max_read": int, "turnaround_s": float,
    "settle_s": float, "local_until": str, "echo": lambda t: t.lower() in ("1", "true", "on"),
    "busy_code": int,
}


def apply_quirk(quirks: Quirks, text: str) -> None:
    """``QUIRK:VALUE`` (``busy_every:10``, ``refuse_functions:6``,
    ``counter_offset:import_wh=9999990``) switched on in ``quirks``; ValueError if unknown."""
    name, _, value = text.partition(":")
    if name not in QUIRK_VALUES:
        raise ValueError(f"unknown quirk {name!r} (quirks: {', '.join(QUIRK_VALUES)})")
    try:
        parsed = QUIRK_VALUES[name](value)
    except ValueError as err:
        raise ValueError(f"quirk {name}: {err}") from None
    current = getattr(quirks, name)
    if hasattr(current, "update"):  # a set or a per-point table: add to it
        current.update(parsed)
    else:
        setattr(quirks, name, parsed)
