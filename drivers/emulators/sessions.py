"""TCP servers of the emulators: client sessions tracked, ended with their server."""

from __future__ import annotations

import asyncio
import contextlib


async def end_sessions(sessions: set[asyncio.Task[None]]) -> None:
    """Cancel open client sessions and wait for them, so none outlives its server."""
    for task in list(sessions):
        task.cancel()
    await asyncio.gather(*sessions, return_exceptions=True)


class SessionServer:
    """A loopback TCP server whose subclass speaks one protocol in :meth:`serve`.

    Every client gets a session task; a client that leaves, or a server that closes, ends
    it quietly and closes the socket. Nothing outlives :meth:`close`.
    """

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._session, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await end_sessions(self._sessions)
            await self._server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await self.serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the server is closing
        finally:
            self._sessions.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
