"""The transport interface and its errors, shared by the TCP and serial implementations."""

from __future__ import annotations

import asyncio
from typing import Protocol


class LinkError(OSError):
    """The link to an instrument failed: the caller may retry on a fresh connection."""


class LinkTimeout(LinkError, TimeoutError):
    """No (complete) answer within the timeout."""


class LinkClosed(LinkError):
    """The peer closed the connection or the port went away."""


class Transport(Protocol):
    description: str

    async def open(self) -> None: ...

    async def write(self, data: bytes) -> None: ...

    async def read_until(self, separator: bytes, timeout: float) -> bytes: ...

    async def read_exactly(self, n: int, timeout: float) -> bytes: ...

    def discard_input(self) -> None:
        """Drop whatever arrived unasked (a late reply must not answer the next question)."""
        ...

    async def close(self) -> None: ...


class StreamTransport:
    """Reading side common to both transports: an asyncio StreamReader fed by the link."""

    description = "stream"

    def __init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None

    def _live_reader(self) -> asyncio.StreamReader:
        if self._reader is None:
            raise LinkClosed(f"{self.description}: not open")
        return self._reader

    async def read_until(self, separator: bytes, timeout: float) -> bytes:
        reader = self._live_reader()
        try:
            async with asyncio.timeout(timeout):
                return await reader.readuntil(separator)
        except TimeoutError:
            raise LinkTimeout(f"{self.description}: no reply within {timeout:g} s") from None
        except (asyncio.IncompleteReadError, ConnectionError):  # EOF, or reset by the peer
            raise LinkClosed(f"{self.description}: connection closed by the instrument") from None
        except asyncio.LimitOverrunError:
            raise LinkError(f"{self.description}: reply too long (no terminator)") from None

    async def read_exactly(self, n: int, timeout: float) -> bytes:
        reader = self._live_reader()
        try:
            async with asyncio.timeout(timeout):
                return await reader.readexactly(n)
        except TimeoutError:
            raise LinkTimeout(f"{self.description}: no reply within {timeout:g} s") from None
        except (asyncio.IncompleteReadError, ConnectionError):  # EOF, or reset by the peer
            raise LinkClosed(f"{self.description}: connection closed by the instrument") from None

    def discard_input(self) -> None:
        reader = self._reader
        if reader is not None:
            buffered = getattr(reader, "_buffer", None)
            if isinstance(buffered, bytearray):
                buffered.clear()
