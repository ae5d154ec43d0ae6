"""Clocks: the controller and the mock plant share one notion of lab time, in seconds.

Real time for the bench; virtual time for mock runs and tests, which jumps straight to the
next deadline so a simulated day runs as fast as the CPU allows. Deadlines are absolute,
so control periods do not drift with the scheduler's wake-up jitter.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    #: True when ``sleep_until`` really waits (so a wait must also watch for a stop);
    #: False for virtual time, where it returns at once.
    waits: bool

    def now(self) -> float:
        """Seconds of lab time since the clock started."""
        ...

    async def sleep_until(self, deadline: float) -> None: ...


class RealClock:
    """Wall-clock lab time from the monotonic clock (``loop.time()``-compatible)."""

    waits = True

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - self.now()
        if delay > 0:
            await asyncio.sleep(delay)
        # asyncio may wake a hair early on coarse timers: never act before the deadline.
        while self.now() < deadline:
            await asyncio.sleep(0)


class VirtualClock:
    """Simulated time: sleeping moves time forward at once. One timeline, one sleeper."""

    waits = False

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline > self._now:
            self._now = deadline
        await asyncio.sleep(0)  # still a scheduling point, as a real sleep would be
