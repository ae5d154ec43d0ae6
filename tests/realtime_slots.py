"""Real-time capacity, shared by every test process on the machine.

A test that drives a bench in real time (the ``serial`` tests, each bench of the fault
matrix) needs the CPU when its control period comes, not merely on average. Two copies of
the suite side by side (two checkouts, a developer's run beside CI) once ran twelve such
benches at a time on two cores, and healthy rigs drifted off target. So each holds a
*slot* while it runs: one of ``SLOTS`` lock files in the system's temporary folder, held
with ``flock`` (released by the kernel when the process ends, however it ends). A suite
alone never waits (its matrix runs six benches, its serial group four tests); beside
another, the two take turns. The CPU-bound tests need no slot: scripts/run-suite.sh runs
the real-time groups at a raised priority instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

SLOTS = int(os.environ.get("TESTBED_REALTIME_SLOTS", "6"))
POLL_S = 0.05


def _take() -> IO[str] | None:
    """A free slot's lock file, held; None when all are taken."""
    folder = Path(tempfile.gettempdir())
    for i in range(SLOTS):
        handle = (folder / f"testbed-realtime-slot-{i}.lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return handle
    return None


@contextlib.contextmanager
def slot() -> Iterator[None]:
    """Hold a real-time slot for the block (waits for one)."""
    while (handle := _take()) is None:
        time.sleep(POLL_S)
    try:
        yield
    finally:
        handle.close()  # closing the file releases its lock


@contextlib.asynccontextmanager
async def async_slot() -> AsyncIterator[None]:
    """:func:`slot` for a coroutine: waits without holding the event loop."""
    while (handle := _take()) is None:
        await asyncio.sleep(POLL_S)
    try:
        yield
    finally:
        handle.close()
