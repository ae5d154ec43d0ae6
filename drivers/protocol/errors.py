"""Errors an instrument itself reports (as opposed to a broken link, see drivers.transport)."""

from __future__ import annotations

from typing import ClassVar

# Modbus exception codes that mean "not now", not "no": retried within the control period.
TRANSIENT_MODBUS = frozenset({5, 6})  # acknowledge, server device busy


class InstrumentError(RuntimeError):
    """The instrument answered, with an error: a Modbus exception or an SCPI error-queue entry.

    ``transient`` is True for answers that mean "busy, ask again shortly" (Modbus 5 and 6,
    the SCPI codes an instrument file lists under ``busy_errors``)."""

    transient = False


class ModbusExceptionError(InstrumentError):
    NAMES: ClassVar[dict[int, str]] = {
        1: "illegal function", 2: "illegal data address", 3: "illegal data value",
        4: "server device failure", 5: "acknowledge", 6: "server device busy",
        10: "gateway path unavailable", 11: "gateway target failed to respond",
    }

    def __init__(self, code: int, request: str) -> None:
        self.code = code
        self.request = request
        self.transient = code in TRANSIENT_MODBUS
        super().__init__(f"{request}: Modbus exception {code} "
                         f"({self.NAMES.get(code, 'unknown')})")


class ScpiError(InstrumentError):
    def __init__(self, code: int, message: str, command: str, *, transient: bool = False) -> None:
        self.code, self.message, self.command = code, message, command
        self.transient = transient
        super().__init__(f"{command!r}: SCPI error {code}, {message}")


class InstrumentMessage(InstrumentError):
    """The instrument answered the error query with words of its own, not an SCPI error
    (``LOCAL MODE``, ``Command not allowed``...): reported verbatim, never a broken link."""

    def __init__(self, reply: str, command: str) -> None:
        self.reply, self.command = reply, command
        super().__init__(f"{command!r}: the instrument answered {reply!r}")
