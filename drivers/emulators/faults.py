"""Faults an emulated instrument can be told to show, one plan per instrument.

``no_reply`` (the request is swallowed), ``late_reply`` (answered after ``delay_s``),
``crc_error`` (the reply is garbled: a bad CRC on RTU, a wrong transaction id on TCP, so the
client must discard it), ``exception`` (a Modbus exception, ``code``), ``scpi_error`` (the
next setting is refused into the error queue) and ``disconnect`` (the connection is closed).
Each fault lasts ``count`` requests, or until cleared when ``count`` is None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

FAULT_KINDS = ("no_reply", "late_reply", "crc_error", "exception", "scpi_error", "disconnect")


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


def parse_fault(text: str) -> tuple[str, Fault]:
    """``DEVICE=KIND[:N]`` from the command line -> (device, fault)."""
    device, sep, spec = text.partition("=")
    kind, _, count = spec.partition(":")
    if not sep or kind not in FAULT_KINDS:
        raise ValueError(f"expected DEVICE=KIND[:COUNT], KIND one of {', '.join(FAULT_KINDS)};"
                         f" got {text!r}")
    return device.strip(), Fault(kind, int(count) if count else None)


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
