"""One live link per physical connection, shared by the devices behind it, counted on release.

A relay board with eight coils, or meters at several unit ids on one RS-485 bus, are many
devices on one link: they must share one client (pymodbus serialises a client's requests,
and a serial port can be opened once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class _Entry:
    link: Any
    users: int


class LinkPool:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def acquire(self, key: str, make: Callable[[], Any]) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(make(), 0)
        entry.users += 1
        return entry.link

    async def release(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.users -= 1
        if entry.users <= 0:
            del self._entries[key]
            await entry.link.retire()
