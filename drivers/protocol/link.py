"""What every protocol link shares: one exchange at a time, one opening at a time, and a
fresh connection after a failure."""

from __future__ import annotations

import asyncio


class Link:
    """Base of :class:`~drivers.protocol.modbus.ModbusLink` and
    :class:`~drivers.protocol.scpi.ScpiLink`: subclasses say how to open and close.

    ``lock`` serialises exchanges (a link carries one question at a time); ``generation``
    counts connections, so devices re-send their setup after a reconnect.
    """

    description: str

    def __init__(self) -> None:
        self.generation = 0
        self.lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()  # no reconnect mid-exchange, no double open

    @property
    def is_open(self) -> bool:
        raise NotImplementedError

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def ensure_open(self) -> None:
        """Open once, however many devices sharing this link ask at the same moment."""
        async with self._open_lock:
            if not self.is_open:
                await self.open()

    async def reset(self) -> None:
        """Drop the connection and make a fresh one (after a timeout the stream is suspect)."""
        async with self.lock, self._open_lock:
            await self.close()
            await self._before_reopen()
            await self.open()

    async def _before_reopen(self) -> None:
        """A pause a protocol needs between the two connections (none by default)."""
