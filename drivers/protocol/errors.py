"""Errors an instrument itself reports (as opposed to a broken link, see drivers.transport)."""

from __future__ import annotations

from typing import ClassVar


class InstrumentError(RuntimeError):
    """The instrument answered, with an error: a Modbus exception or an SCPI error-queue entry."""


class ModbusExceptionError(InstrumentError):
    NAMES: ClassVar[dict[int, str]] = {
        1: "illegal function", 2: "illegal data address", 3: "illegal data value",
        4: "server device failure", 5: "acknowledge", 6: "server device busy",
        10: "gateway path unavailable", 11: "gateway target failed to respond",
    }

    def __init__(self, code: int, request: str) -> None:
        self.code = code
        super().__init__(f"{request}: Modbus exception {code} "
                         f"({self.NAMES.get(code, 'unknown')})")


class ScpiError(InstrumentError):
    def __init__(self, code: int, message: str, command: str) -> None:
        self.code, self.message, self.command = code, message, command
        super().__init__(f"{command!r}: SCPI error {code}, {message}")
