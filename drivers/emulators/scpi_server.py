"""SCPI servers of emulated instruments: lines in, lines out, an error queue, over TCP or a pty.

The accepted lines are exactly those of the instrument's command set (queries, setting
templates turned into patterns, init lines) plus the IEEE 488.2 basics (*IDN?, *CLS, *RST,
*OPC?) and the error query; anything else is SCPI error -113, a malformed value -104 or
-224, a value beyond the instrument's rating -222, as a real instrument would queue them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import Awaitable, Callable

from drivers.emulators.bindings import Binding
from drivers.emulators.faults import FaultPlan, Quirks
from drivers.emulators.pty_port import PtyPort
from drivers.emulators.sessions import SessionServer
from drivers.instruments.model import Command, ScpiCommandSet

NO_ERROR = '0,"No error"'


def _norm(line: str) -> str:
    return re.sub(r"\s+", " ", line.strip()).upper()


class EmulatedScpiDevice:
    def __init__(self, instrument: ScpiCommandSet, binding: Binding, channel: int | None = None,
                 ratings: dict[str, float] | None = None) -> None:
        self.instrument, self.binding = instrument, binding
        self.channel = instrument.channel if channel is None else channel
        self.ratings = ratings or {}  # command name -> largest value accepted
        self.faults = FaultPlan()
        self.quirks = Quirks()
        self.remote = False  # put in remote by quirks.local_until
        self.quiet_until = 0.0  # loop time: lines before it are ignored (quirks.settle_s)
        self.settings = 0
        self.errors: deque[tuple[int, str]] = deque(maxlen=20)
        self.lines_seen: list[str] = []
        self.bindings: dict[int, Binding] = {}  # channel -> what it drives
        self._queries: dict[str, tuple[Command, int]] = {}
        self._settings: list[tuple[re.Pattern[str], Command, int]] = []
        self.add_channel(self.channel, binding)
        # init and remote lines are accepted as they are (no state behind them here)
        self._init = {_norm(line) for line in (*instrument.init, *instrument.remote)}
        error_query = instrument.error_query or "SYST:ERR?"
        self._builtin: dict[str, Callable[[], str | None]] = {
            "*IDN?": lambda: str(self.binding.identity),
            "*CLS": self.errors.clear,
            "*RST": lambda: None,
            "*OPC?": lambda: "1",
            _norm(error_query): self._pop_error,
            "SYST:ERR?": self._pop_error,
            ":SYST:ERR?": self._pop_error,
        }

    def add_channel(self, channel: int, binding: Binding) -> None:
        """Serve ``channel`` of this instrument from ``binding`` (a multi-channel supply
        feeding several households over one connection): its queries and settings are
        the command set's templates with ``{ch}`` = ``channel``."""
        self.bindings[channel] = binding
        commands = self.instrument.commands.values()
        self._queries |= {_norm(c.query(channel)): (c, channel) for c in commands if c.get}
        self._settings += [(c.setting_pattern(channel), c, channel) for c in commands if c.set]

    @property
    def name(self) -> str:
        return self.binding.name

    def _pop_error(self) -> str:
        if not self.errors:
            return NO_ERROR
        code, message = self.errors.popleft()
        return f'{code},"{message}"'

    def execute(self, line: str) -> str | None:
        """One command (no ';'): its reply if it is a query, else None."""
        self.lines_seen.append(line)
        key = _norm(line)
        if key in self._builtin:
            return self._builtin[key]()
        if key in self._queries:
            command, channel = self._queries[key]
            return _render(command, self.bindings[channel].get(command.name, channel))
        for pattern, command, channel in self._settings:
            m = pattern.fullmatch(line.strip())
            if m:
                self._apply(command, m["value"], channel)
                return None
        if key in self._init:
            return None
        self.errors.append((-113, "Undefined header"))
        return None

    def heard(self, line: str) -> str | bool | None:
        """The quirks' say on a line before it is executed: False to ignore it, a reply
        to give instead, or None to go on."""
        q = self.quirks
        if q.local_until and not self.remote:
            if _norm(line) == _norm(q.local_until):
                self.remote = True
                return False
            return "LOCAL MODE"
        if q.settle_s and asyncio.get_running_loop().time() < self.quiet_until:
            q.unheard += 1
            return False
        return None

    def _apply(self, command: Command, text: str, channel: int) -> None:
        if self.quirks.settle_s:
            self.quiet_until = asyncio.get_running_loop().time() + self.quirks.settle_s
        self.settings += 1
        if self.quirks.busy_every and self.settings % self.quirks.busy_every == 0:
            self.errors.append((self.quirks.busy_code, "Busy"))
            return
        fault = self.faults.active
        if fault is not None and fault.kind in ("scpi_error", "exception"):
            self.faults.take()
            self.errors.append((fault.code if fault.code < 0 else -222, fault.message))
            return
        try:
            value = command.parse(text)
        except ValueError:
            self.errors.append((-224 if command.type == "bool" else -104,
                                "Illegal parameter value" if command.type == "bool"
                                else "Data type error"))
            return
        limit = self.ratings.get(command.name)
        # a converter's power setpoint is signed (the sign is the direction); else >= 0
        signed = command.name == "power" and "converter" in self.instrument.roles
        if command.type == "float" and ((value < 0 and not signed) or (
                limit is not None and abs(value) > limit * (1 + 1e-6))):
            self.errors.append((-222, "Data out of range"))
            return
        self.bindings[channel].set(command.name, channel, value)


def _render(command: Command, value: object) -> str:
    if command.type == "bool":
        return "1" if value else "0"
    if command.type == "float":
        return f"{float(value):.6E}"  # type: ignore[arg-type]
    return str(value)


async def scpi_session(device: EmulatedScpiDevice, read_line: Callable[[], Awaitable[bytes]],
                       write: Callable[[bytes], Awaitable[None]]) -> None:
    """Serve lines until the peer goes away or a ``disconnect`` fault ends the session."""
    while True:
        raw = await read_line()
        if not raw:
            return
        text = raw.decode("ascii", errors="replace").strip()
        if device.quirks.echo:
            await write((text + "\n").encode("ascii"))
        replies = []
        for command in (c for c in text.split(";") if c):
            said = device.heard(command)
            reply = device.execute(command) if said is None else said or None
            if reply is not None:
                replies.append(str(reply))
        fault = device.faults.active
        if fault is not None and fault.kind == "disconnect":
            device.faults.take()
            return
        if not replies:
            continue
        if fault is not None and fault.kind in ("no_reply", "late_reply", "crc_error"):
            device.faults.take()
            if fault.kind == "no_reply":
                continue
            if fault.kind == "late_reply":
                await asyncio.sleep(fault.delay_s)
            else:
                replies = ["\x15#?" + "".join(replies)[::-1]]  # garbled on the line
        await write((";".join(replies) + "\n").encode("ascii"))


class ScpiTcpServer(SessionServer):
    """One instrument on its own port, as a LAN instrument's raw socket (port 5025)."""

    def __init__(self, device: EmulatedScpiDevice) -> None:
        super().__init__()
        self.device = device

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def write(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        await scpi_session(self.device, reader.readline, write)


class ScpiPtyServer:
    """One instrument on a serial line (a pseudo-terminal): ``ASRL<path>::INSTR``."""

    def __init__(self, device: EmulatedScpiDevice, port: PtyPort) -> None:
        self.device, self.port = device, port
        self._task: asyncio.Task[None] | None = None
        self._pending = bytearray()

    async def start(self) -> str:
        path = self.port.open()
        self._task = asyncio.create_task(self._serve(), name=f"scpi {path}")
        return path

    async def _read_line(self) -> bytes:
        while b"\n" not in self._pending:
            chunk = await self.port.read_chunk()
            self._pending += chunk or b""
        line, _, rest = bytes(self._pending).partition(b"\n")
        self._pending = bytearray(rest)
        return line + b"\n"

    async def _serve(self) -> None:
        while True:  # a serial line has no connection to lose: serve again after a fault
            await scpi_session(self.device, self._read_line, self.port.write)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.port.close()
