"""SCPI: newline-terminated command lines over any transport, checked through the error queue.

Writes are followed by the instrument's error query (``SYST:ERR?`` by default) until it
answers code 0, so a rejected setting raises :class:`ScpiError` instead of passing silently;
a reply to the error query that is no SCPI error is the instrument's own words, raised
verbatim as :class:`InstrumentMessage`. Instrument-file quirks: ``remote`` lines sent first on
every connection, ``settle_s`` of silence after a setting, ``*OPC?`` after each setting,
an echo of every line, another reply terminator, and ``busy_errors`` (transient codes).
A timeout leaves the link out of step (a late reply would answer the next question), so
the caller resets the link on a fresh connection before it asks again. A query *cancelled*
while its reply is on the way (a signal, a deadline of the caller) leaves the same hazard on
a link nobody resets: the next line then first waits up to :data:`LATE_REPLY_DRAIN_S` for
that reply and drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from drivers.protocol.errors import InstrumentMessage, ScpiError
from drivers.protocol.link import Link
from drivers.transport.base import LinkError, Transport

_ERROR = re.compile(r"\s*([+-]?\d+)\s*,\s*\"?(.*?)\"?\s*$")
MAX_ERRORS_DRAINED = 20
LATE_REPLY_DRAIN_S = 0.2  # at most this long for the reply of a cancelled query


@dataclass(frozen=True)
class ScpiQuirks:
    """How one instrument departs from plain SCPI (see ``docs/instruments.md``)."""

    remote: tuple[str, ...] = ()
    settle_s: float = 0.0
    opc: bool = False
    echo: bool = False
    read_terminator: str | None = None
    busy_errors: tuple[int, ...] = ()


class ScpiLink(Link):
    def __init__(self, make_transport: Callable[[], Transport], *, timeout_s: float = 2.0,
                 terminator: str = "\n", error_query: str | None = "SYST:ERR?",
                 encoding: str = "ascii", quirks: ScpiQuirks | None = None) -> None:
        super().__init__()
        self._make_transport = make_transport
        self._transport: Transport | None = None
        self.timeout_s = timeout_s
        self.terminator = terminator
        self.error_query = error_query
        self.encoding = encoding
        self.quirks = quirks or ScpiQuirks()
        self.description = make_transport().description
        self._quiet_until = 0.0  # loop time before which the instrument ignores lines
        self._reply_owed = False  # a query was cancelled after its line left

    @property
    def is_open(self) -> bool:
        return self._transport is not None

    async def open(self) -> None:
        transport = self._make_transport()
        await transport.open()
        self._transport = transport
        self._reply_owed = False  # a fresh connection owes nothing
        self.generation += 1  # devices re-send their setup on a new connection
        for line in self.quirks.remote:  # e.g. SYST:REM: nothing else is obeyed before it
            await self._send(line)

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.close()

    async def _live(self) -> Transport:
        await self.ensure_open()
        assert self._transport is not None
        return self._transport

    async def _send(self, line: str) -> None:
        transport = self._transport if self._transport is not None else await self._live()
        wait = self._quiet_until - asyncio.get_running_loop().time()
        if wait > 0:  # a line sent this soon after a setting would be ignored
            await asyncio.sleep(wait)
        if self._reply_owed:
            await self._drain_owed_reply(transport)
        transport.discard_input()
        await transport.write((line + self.terminator).encode(self.encoding))
        if self.quirks.echo:  # the instrument repeats the line first: drop it
            echoed = await self._receive()
            if echoed != line.strip():
                raise LinkError(f"{self.description}: expected the echo of {line!r}, "
                                f"got {echoed!r}")

    async def _receive(self) -> str:
        transport = self._transport if self._transport is not None else await self._live()
        ending = self.quirks.read_terminator or self.terminator
        raw = await transport.read_until(ending.encode(self.encoding), self.timeout_s)
        return raw.decode(self.encoding, errors="replace").strip()

    async def _drain_owed_reply(self, transport: Transport) -> None:
        """Wait (bounded) for the reply of a cancelled query and drop it."""
        self._reply_owed = False
        ending = (self.quirks.read_terminator or self.terminator).encode(self.encoding)
        # nothing may come (or the line broke: the next exchange will say so)
        with contextlib.suppress(LinkError):
            await transport.read_until(ending, min(self.timeout_s, LATE_REPLY_DRAIN_S))

    async def query(self, command: str) -> str:
        async with self.lock:
            await self._live()
            try:
                await self._send(command)
                return await self._receive()
            except asyncio.CancelledError:
                self._reply_owed = True  # it may still arrive: the next line must not take it
                raise

    async def write(self, command: str) -> None:
        """Send a setting, then drain the error queue; raise the first error it held
        (:class:`ScpiError`; a ``busy_errors`` code is transient, and the setting is sent
        again within the busy budget), or :class:`InstrumentMessage` when the error query
        is answered in words."""
        async with self.lock:
            try:
                await self.while_busy(lambda: self._write(command))
            except asyncio.CancelledError:
                self._reply_owed = True  # an *OPC? or error-query reply may be on its way
                raise

    async def _write(self, command: str) -> None:
        await self._live()
        await self._send(command)
        if self.quirks.settle_s:
            self._quiet_until = asyncio.get_running_loop().time() + self.quirks.settle_s
        if self.quirks.opc:
            await self._send("*OPC?")
            reply = await self._receive()
            if reply.strip() != "1":
                raise InstrumentMessage(reply, f"{command} (*OPC?)")
        if self.error_query is None:
            return
        first: ScpiError | None = None
        for _ in range(MAX_ERRORS_DRAINED):
            await self._send(self.error_query)
            reply = await self._receive()
            try:
                code, message = parse_error(reply)
            except LinkError:
                if not reply.isprintable():  # garbled on the line: a link fault
                    raise
                raise InstrumentMessage(reply, command) from None
            if code == 0:
                break
            first = first or ScpiError(code, message, command,
                                       transient=code in self.quirks.busy_errors)
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
