"""What every protocol link shares: one exchange at a time, one opening at a time, a fresh
connection after a failure, and patience with a busy instrument."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from drivers.protocol.errors import InstrumentError
from drivers.transport.base import LinkClosed

T = TypeVar("T")
BUSY_PAUSE_S = 0.02  # before asking a busy instrument again (at most a fifth of the budget)


class Link:
    """Base of :class:`~drivers.protocol.modbus.ModbusLink` and
    :class:`~drivers.protocol.scpi.ScpiLink`: subclasses say how to open and close.

    ``lock`` serialises exchanges (a link carries one question at a time); ``generation``
    counts connections, so devices re-send their setup after a reconnect. A link its pool
    has let go (:meth:`retire`) never opens again: an exchange still under way when the
    bench closes (a late one that goes on alone) fails instead of reopening the port, which
    would hold it (a serial port opens once) after the run.
    """

    description: str

    def __init__(self) -> None:
        self.generation = 0
        self.lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()  # no reconnect mid-exchange, no double open
        self.busy_budget_s = 0.0  # how long one exchange may keep asking a busy instrument
        self.busy_retries = 0  # busy answers asked again (reports, tests)
        self.retired = False

    def allow_busy(self, budget_s: float) -> None:
        """Ask a busy instrument again (an answer whose error is ``transient``: Modbus
        exceptions 5 and 6, an SCPI ``busy_errors`` code), after a short pause, for up to
        ``budget_s`` per exchange (half a control period: the answer still comes in time)."""
        self.busy_budget_s = max(self.busy_budget_s, budget_s)

    async def while_busy(self, exchange: Callable[[], Awaitable[T]]) -> T:
        """``exchange()``, asked again while it answers busy and the budget lasts."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.busy_budget_s
        pause = min(BUSY_PAUSE_S, self.busy_budget_s / 5)
        while True:
            try:
                return await exchange()
            except InstrumentError as err:
                if not err.transient or loop.time() + pause >= until:
                    raise
                self.busy_retries += 1
                await asyncio.sleep(pause)

    @property
    def is_open(self) -> bool:
        raise NotImplementedError

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def ensure_open(self) -> None:
        """Open once, however many devices sharing this link ask at the same moment.
        Raises :class:`~drivers.transport.base.LinkClosed` once the link is retired."""
        async with self._open_lock:
            if self.retired:
                raise LinkClosed(f"{self.description}: closed with the bench")
            if not self.is_open:
                await self.open()

    async def retire(self) -> None:
        """Close for good: the last device using the link has let it go."""
        self.retired = True
        await self.close()

    async def reset(self) -> None:
        """Drop the connection and make a fresh one (after a timeout the stream is suspect)."""
        async with self.lock, self._open_lock:
            await self.close()
            await self._before_reopen()
            if self.retired:
                raise LinkClosed(f"{self.description}: closed with the bench")
            await self.open()

    async def _before_reopen(self) -> None:
        """A pause a protocol needs between the two connections (none by default)."""
