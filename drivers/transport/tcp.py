"""A TCP socket transport (SCPI raw sockets on port 5025, and the like)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from drivers.transport.base import LinkClosed, LinkError, LinkTimeout, StreamTransport


class TcpTransport(StreamTransport):
    def __init__(self, host: str, port: int, connect_timeout: float = 2.0) -> None:
        super().__init__()
        self.host, self.port, self.connect_timeout = host, port, connect_timeout
        self.description = f"tcp://{host}:{port}"
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            raise LinkTimeout(f"{self.description}: connect timed out") from None
        except OSError as err:
            raise LinkError(f"{self.description}: cannot connect ({err.strerror or err})") from None
        sock = self._writer.get_extra_info("socket")
        if sock is not None:  # small request/reply exchanges: do not wait for Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def write(self, data: bytes) -> None:
        if self._writer is None or self._writer.is_closing():
            raise LinkClosed(f"{self.description}: not open")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except ConnectionError as err:  # reset or broken pipe: the instrument hung up
            raise LinkClosed(f"{self.description}: connection closed by the instrument "
                             f"({err})") from None
        except OSError as err:
            raise LinkClosed(f"{self.description}: write failed ({err})") from None

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
