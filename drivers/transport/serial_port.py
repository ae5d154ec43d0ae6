"""A serial-port transport (RS-232/RS-485 adapters, pseudo-terminals), asyncio on POSIX.

pyserial sets the line (baud, parity, ...); the event loop watches the file descriptor,
so a slow instrument never blocks the controller.
"""

from __future__ import annotations

import asyncio
import os

import serial

from drivers.transport.base import LinkClosed, LinkError, StreamTransport

PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


class SerialTransport(StreamTransport):
    def __init__(self, device: str, baud: int = 9600, bytesize: int = 8, parity: str = "N",
                 stopbits: int = 1) -> None:
        super().__init__()
        self.device, self.baud = device, baud
        self._line = {"baudrate": baud, "bytesize": bytesize, "parity": PARITIES[parity],
                      "stopbits": stopbits}
        self.description = f"serial://{device}@{baud}"
        self._port: serial.Serial | None = None

    async def open(self) -> None:
        try:
            self._port = serial.Serial(self.device, timeout=0, write_timeout=0, **self._line)
        except (serial.SerialException, OSError, ValueError) as err:
            raise LinkError(f"{self.description}: cannot open ({err})") from None
        self._reader = asyncio.StreamReader()
        asyncio.get_running_loop().add_reader(self._port.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        assert self._port is not None and self._reader is not None
        try:
            data = os.read(self._port.fileno(), 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._reader.feed_data(data)
        else:
            self._reader.feed_eof()
            asyncio.get_running_loop().remove_reader(self._port.fileno())

    async def write(self, data: bytes) -> None:
        if self._port is None:
            raise LinkClosed(f"{self.description}: not open")
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._port.fileno(), view)
            except BlockingIOError:
                n = 0
            except OSError as err:
                raise LinkClosed(f"{self.description}: write failed ({err})") from None
            view = view[n:]
            if view:
                await asyncio.sleep(0.001)

    async def close(self) -> None:
        port, self._port, self._reader = self._port, None, None
        if port is not None:
            asyncio.get_running_loop().remove_reader(port.fileno())
            port.close()
