"""Client sessions of the TCP emulators: ended with their server, never left running."""

from __future__ import annotations

import asyncio


async def end_sessions(sessions: set[asyncio.Task[None]]) -> None:
    """Cancel open client sessions and wait for them, so none outlives its server."""
    for task in list(sessions):
        task.cancel()
    await asyncio.gather(*sessions, return_exceptions=True)
