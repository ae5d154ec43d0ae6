"""SCPI: newline-terminated command lines over any transport, checked through the error queue.

Writes are followed by the instrument's error query (``SYST:ERR?`` by default) until it
answers code 0, so a rejected setting raises :class:`ScpiError` instead of passing silently.
A timeout leaves the link out of step (a late reply would answer the next question), so
the caller resets the link on a fresh connection before it asks again.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from drivers.protocol.errors import ScpiError
from drivers.protocol.link import Link
from drivers.transport.base import LinkError, Transport

_ERROR = re.compile(r"\s*([+-]?\d+)\s*,\s*\"?(.*?)\"?\s*$")
MAX_ERRORS_DRAINED = 20


class ScpiLink(Link):
    def __init__(self, make_transport: Callable[[], Transport], *, timeout_s: float = 2.0,
                 terminator: str = "\n", error_query: str | None = "SYST:ERR?",
                 encoding: str = "ascii") -> None:
        super().__init__()
        self._make_transport = make_transport
        self._transport: Transport | None = None
        self.timeout_s = timeout_s
        self.terminator = terminator
        self.error_query = error_query
        self.encoding = encoding
        self.description = make_transport().description

    @property
    def is_open(self) -> bool:
        return self._transport is not None

    async def open(self) -> None:
        transport = self._make_transport()
        await transport.open()
        self._transport = transport
        self.generation += 1  # devices re-send their setup on a new connection

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.close()

    async def _live(self) -> Transport:
        await self.ensure_open()
        assert self._transport is not None
        return self._transport

    async def _send(self, line: str) -> None:
        transport = await self._live()
        transport.discard_input()
        await transport.write((line + self.terminator).encode(self.encoding))

    async def _receive(self) -> str:
        transport = await self._live()
        raw = await transport.read_until(self.terminator.encode(self.encoding), self.timeout_s)
        return raw.decode(self.encoding, errors="replace").strip()

    async def query(self, command: str) -> str:
        async with self.lock:
            await self._send(command)
            return await self._receive()

    async def write(self, command: str) -> None:
        """Send a setting, then drain the error queue; raise the first error it held."""
        async with self.lock:
            await self._send(command)
            if self.error_query is None:
                return
            first: ScpiError | None = None
            for _ in range(MAX_ERRORS_DRAINED):
                await self._send(self.error_query)
                code, message = parse_error(await self._receive())
                if code == 0:
                    break
                first = first or ScpiError(code, message, command)
            if first is not None:
                raise first

    async def identify(self) -> str:
        return await self.query("*IDN?")


def parse_error(reply: str) -> tuple[int, str]:
    """``-222,"Data out of range"`` -> (-222, "Data out of range")."""
    m = _ERROR.match(reply)
    if not m:
        raise LinkError(f"unreadable error-queue reply {reply!r}")
    return int(m[1]), m[2]
