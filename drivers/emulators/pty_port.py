"""A pseudo-terminal standing in for a serial line: we hold the master, clients open the slave.

The slave's path (``/dev/pts/N``) may be given a stable name by a symlink. We keep a slave
descriptor open ourselves, so the master never sees EIO when a client closes and reopens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from pathlib import Path


class PtyPort:
    def __init__(self, link: str | Path | None = None) -> None:
        self.link = Path(link) if link else None
        self._master = -1
        self._slave = -1
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.path = ""

    def open(self) -> str:
        """Create the pair; returns the path clients open (the symlink if one was asked)."""
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        tty.setraw(self._master)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self.link.symlink_to(self.path)
            self.path = str(self.link)
        asyncio.get_running_loop().add_reader(self._master, self._on_readable)
        return self.path

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, OSError):
            return
        if data:
            self._chunks.put_nowait(data)

    async def read_chunk(self, timeout: float | None = None) -> bytes | None:
        """The next bytes from the client, or None after ``timeout`` s of line silence."""
        try:
            async with asyncio.timeout(timeout):
                return await self._chunks.get()
        except TimeoutError:
            return None

    def drain(self) -> None:
        """Forget whatever the client sent that we have not read yet."""
        while not self._chunks.empty():
            self._chunks.get_nowait()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._master, view):]
            except BlockingIOError:
                await asyncio.sleep(0.001)

    def close(self) -> None:
        if self._master >= 0:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            os.close(self._slave)
            self._master = self._slave = -1
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
