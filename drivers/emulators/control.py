"""The emulator's control socket: inject and clear faults while it serves.

``testbed emulate RIG --control PORT`` listens on ``host:PORT`` (loopback by default) for
one-line commands, each answered with one line of JSON:

``inject SPEC``   SPEC in the ``--fault`` grammar (:mod:`drivers.emulators.faults`); its
                  ``@START-END`` window counts from now -> ``{"ok": true, "fault": ...}``
``clear DEVICE``  the device's fault cleared -> ``{"ok": true, "cleared": DEVICE}``
``list``          -> ``{"ok": true, "faults": {device: kind}}`` (the faults active now)

A bad command gets ``{"ok": false, "error": MESSAGE}`` (naming what is wrong, as the
``--fault`` option does); the session goes on. :func:`send` is the client
(``testbed fault inject|clear|list --control PORT``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from drivers.emulators.bench import EmulatedBench
from drivers.emulators.faults import device_name, parse_fault
from drivers.emulators.sessions import SessionServer


def _inject(emu: EmulatedBench, arg: str) -> dict[str, Any]:
    item = parse_fault(arg, "inject")
    emu.schedule([item])
    return {"fault": item.describe()}


def _clear(emu: EmulatedBench, arg: str) -> dict[str, Any]:
    name = device_name(arg)
    emu.clear(name)
    return {"cleared": name}


def _list(emu: EmulatedBench, arg: str) -> dict[str, Any]:
    if arg:
        raise ValueError(f"list takes no argument, got {arg!r}")
    return {"faults": emu.active_faults()}


COMMANDS: dict[str, Callable[[EmulatedBench, str], dict[str, Any]]] = {
    "inject": _inject, "clear": _clear, "list": _list}


def execute(emu: EmulatedBench, line: str) -> dict[str, Any]:
    """One command line -> its JSON-able answer (never raises for bad input)."""
    word, _, arg = line.strip().partition(" ")
    command = COMMANDS.get(word)
    if command is None:
        return {"ok": False, "error": f"unknown command {word!r} (commands: "
                                      f"{', '.join(COMMANDS)})"}
    try:
        return {"ok": True, **command(emu, arg.strip())}
    except ValueError as err:
        return {"ok": False, "error": str(err)}


class ControlServer(SessionServer):
    """Line commands for one emulated bench, over TCP."""

    def __init__(self, emu: EmulatedBench) -> None:
        super().__init__()
        self.emu = emu

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            answer = execute(self.emu, line.decode("utf-8", errors="replace"))
            writer.write((json.dumps(answer) + "\n").encode("utf-8"))
            await writer.drain()


async def send(host: str, port: int, line: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """Send one command to a control socket and return its answer.

    Raises ``OSError`` (nobody listens) or ``TimeoutError`` (no answer in ``timeout_s``).
    """
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    try:
        writer.write((line.strip() + "\n").encode("utf-8"))
        await writer.drain()
        raw = await asyncio.wait_for(reader.readline(), timeout_s)
    finally:
        writer.close()
    if not raw:
        raise ConnectionError(f"{host}:{port} closed the connection without an answer")
    answer: dict[str, Any] = json.loads(raw)
    return answer
