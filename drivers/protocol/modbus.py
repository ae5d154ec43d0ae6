"""Modbus RTU and TCP through pymodbus's async client, one client per physical link.

pymodbus frames, checks CRCs and matches transaction ids; this module turns its answers
into plain values or into our errors: :class:`LinkError` for a link that failed (timeout,
disconnect, garbled frame: worth a retry on a fresh connection) and
:class:`ModbusExceptionError` for an instrument that answered "no".
The client's own retries and reconnect loop are off: the device layer owns that policy.

On a shared RS-485 line a device may answer after the master has given up on it: its late
frame lands while the master talks to a neighbour. The link keeps the line in step as a
real RTU master does: a frame is cut at its own length and a frame from another unit id is
dropped while the master keeps waiting for its own reply within the same deadline
(:class:`LineFramer`); unasked bytes are dropped before each request (pymodbus empties its
receive buffer when it sends); the silent interval counts from the last byte received, late
ones included; and after a timeout the next request waits, bounded, for the late frame
(:meth:`ModbusLink._in_step`): one reply frame plus the turnaround for a request to another
unit; up to ``LATE_WAIT_TIMEOUTS`` of the device's timeouts more, off the line's lock, for
a request to the unit that did not answer, so its late frame is never taken for the answer
to its next question (a reply later than that still could be: give such a device a longer
timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
from collections.abc import Callable
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU

from drivers.protocol.errors import ModbusExceptionError
from drivers.protocol.link import Link
from drivers.resources import Resource
from drivers.transport.base import LinkClosed, LinkError, LinkTimeout

# pymodbus logs every timeout as a warning; our errors say it better, so keep its log quiet
# unless the application configures logging itself.
logging.getLogger("pymodbus").addHandler(logging.NullHandler())

TABLES = ("holding", "input", "coil", "discrete")
MAX_READ = {"holding": 125, "input": 125, "coil": 2000, "discrete": 2000}

_CLIENTS: dict[str, Callable[[Resource], Any]] = {
    "tcp": lambda r: AsyncModbusTcpClient(
        r.host, port=r.port, framer=FramerType.SOCKET, timeout=r.timeout_s, retries=0,
        reconnect_delay=0),
    "serial": lambda r: AsyncModbusSerialClient(
        r.device, framer=FramerType.RTU, baudrate=r.baud, bytesize=r.bytesize,
        parity=r.parity, stopbits=r.stopbits, timeout=r.timeout_s, retries=0,
        reconnect_delay=0),
}


def silent_interval(baud: int) -> float:
    """The RTU silent interval before a request: 3.5 characters of 11 bits at ``baud``,
    fixed at 1.75 ms above 19,200 baud (Modbus over serial line, 2.5.1.1)."""
    return 3.5 * 11.0 / baud if baud <= 19200 else 0.00175


BITS_PER_CHAR = 11  # start, 8 data, parity or a second stop, stop
# A unit's next request waits for the late reply to its last one up to this many of its
# timeouts after that timed out: a reply up to 1 + this timeouts late is never taken for
# the next answer (the matrix's late meter answers 2 timeouts late).
LATE_WAIT_TIMEOUTS = 2


def reply_bytes(table: str, count: int, *, write: bool = False) -> int:
    """Bytes of the RTU reply to reading ``count`` values of ``table`` (unit, function,
    byte count, data, CRC) or to a write (8: the echo of a single write, or address and
    count of a multiple one)."""
    if write:
        return 8
    return 5 + (2 * count if table in ("holding", "input") else (count + 7) // 8)


class LineFramer(FramerRTU):
    """pymodbus 3.16.1's RTU framer for a shared line, with two changes.

    A sound frame uses only its own bytes: pymodbus's ``decode`` reports the whole buffer
    used, so a neighbour's late frame followed by the awaited reply in one read swallowed
    the reply. And every sound frame is told to ``seen(unit)`` (the link learns that a late
    reply has landed). pymodbus's ``handleFrame`` drops a frame whose unit id is not the
    one asked and goes on decoding, so the master keeps waiting for its own reply.
    """

    def __init__(self, decoder: DecodePDU, seen: Callable[[int], None]) -> None:
        super().__init__(decoder)
        self.seen = seen

    def decode(self, data: bytes) -> tuple[int, int, int, bytes]:
        """``(bytes used, unit id, 0, PDU)``; ``(0, ...)`` to wait for more bytes; a frame
        failing its CRC uses the whole buffer (hunting resumes with the next bytes)."""
        for start in range(len(data)):
            if len(data) - start < self.MIN_SIZE:
                return 0, 0, 0, self.EMPTY
            unit = int(data[start])
            if not (pdu_class := self.decoder.lookupPduClass(data[start:])):
                continue
            if not (size := pdu_class.calculateRtuFrameSize(data[start:])):
                return 0, unit, 0, self.EMPTY
            if len(data) < start + size:
                return 0, unit, 0, self.EMPTY
            crc_at = start + size - 2
            crc = (int(data[crc_at]) << 8) + int(data[crc_at + 1])
            if not FramerRTU.check_CRC(data[start:crc_at], crc):
                return len(data), 0, 0, self.EMPTY
            self.seen(unit)
            return start + size, unit, 0, data[start + 1:crc_at]
        return 0, 0, 0, self.EMPTY


class ModbusLink(Link):
    """One connection (TCP socket or serial bus), shared by every unit id behind it.

    On a serial line every request waits ``quiet_s`` after the previous reply (the silent
    interval, or longer when a slow device on the bus needs its turnaround: the largest of
    the devices' wishes, see :meth:`need_quiet`)."""

    def __init__(self, resource: Resource) -> None:
        super().__init__()
        self.resource = resource
        self.description = resource.link_key
        self._client: Any = None
        self.serial = resource.link == "serial"
        self.quiet_s = silent_interval(resource.baud) if self.serial else 0.0
        self._last_reply = 0.0
        self._last_rx = 0.0  # loop time of the last byte received (late frames included)
        # unit -> (loop time its request timed out, bytes of the reply it owes): its late
        # frame may still come (serial lines)
        self._unanswered: dict[int, tuple[float, int]] = {}
        self._frame_seen = asyncio.Event()
        self.late_frames = 0  # frames that landed after their request timed out (tests)
        self.out_of_step_s = 0.0  # seconds requests waited for late frames (reports, tests)

    def need_quiet(self, seconds: float) -> None:
        """A device on this line needs at least ``seconds`` between a reply and the next
        request (its RTU silent interval plus turnaround)."""
        self.quiet_s = max(self.quiet_s, seconds)

    @property
    def is_open(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    async def open(self) -> None:
        if self.resource.link == "serial":
            flush_serial_input(self.resource.device)
        client = _CLIENTS[self.resource.link](self.resource)
        if self.serial:  # the transaction manager's framer and receive trace, see LineFramer
            client.ctx.framer = LineFramer(client.ctx.framer.decoder, self._seen)
            client.ctx.trace_packet = self._traced
        try:
            async with asyncio.timeout(self.resource.timeout_s + 1.0):
                ok = await client.connect()
        except TimeoutError:
            ok = False
        if not ok:
            client.close()
            raise LinkError(f"{self.description}: cannot connect")
        self._client = client
        self.generation += 1  # devices re-send their setup on a new connection

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _seen(self, unit: int) -> None:
        """A sound frame from ``unit`` arrived (LineFramer): a late one ends its wait."""
        if self._unanswered.pop(unit, None) is not None:
            self.late_frames += 1
        self._last_rx = asyncio.get_running_loop().time()
        self._frame_seen.set()

    def _traced(self, sending: bool, data: bytes) -> bytes:
        """pymodbus's packet trace: the time of every byte received (silent interval)."""
        if not sending:
            self._last_rx = asyncio.get_running_loop().time()
        return data

    def _late_until(self, unit: int, now: float, *, own: bool) -> float:
        """Until when a request to ``unit`` waits for late frames (``now``: no wait).

        A unit whose request timed out at ``t`` may still be sending the reply it owes.
        ``own=False`` (on the line, under its lock): any request waits one such frame plus
        the turnaround (``quiet_s``) after ``t``, the reply that was just too late to count.
        ``own=True`` (before taking the line, so neighbours are asked meanwhile): a request
        to that same unit waits up to ``LATE_WAIT_TIMEOUTS`` of its timeouts more, since RTU
        has no transaction ids to tell a late answer from the next one. An entry whose
        longest wait has run out is forgotten."""
        until = now
        for u, (t, size) in list(self._unanswered.items()):
            frame = size * BITS_PER_CHAR / self.resource.baud + self.quiet_s
            longest = t + frame + LATE_WAIT_TIMEOUTS * self.resource.timeout_s
            if now >= longest:
                del self._unanswered[u]
            elif own and u == unit:
                until = max(until, longest)
            elif not own:
                until = max(until, t + frame)
        return until

    async def _in_step(self, unit: int, *, own: bool) -> None:
        """Wait, bounded (:meth:`_late_until`), for late frames before asking ``unit``."""
        if not self.serial:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        while (until := self._late_until(unit, now := loop.time(), own=own)) > now:
            self._frame_seen.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(until - now):
                    await self._frame_seen.wait()
        self.out_of_step_s += loop.time() - started

    async def _call(self, what: str, method: str, *args: Any, size: int = 8,
                    **kwargs: Any) -> Any:
        """One request, whose reply is ``size`` bytes on RTU; a busy answer is asked
        again (:meth:`Link.while_busy`)."""
        return await self.while_busy(
            lambda: self._call_once(what, method, *args, size=size, **kwargs))

    async def _call_once(self, what: str, method: str, *args: Any, size: int = 8,
                         **kwargs: Any) -> Any:
        await self.ensure_open()
        loop = asyncio.get_running_loop()
        unit = int(kwargs.get("device_id", 0))
        await self._in_step(unit, own=False)
        wait = max(self._last_reply, self._last_rx) + self.quiet_s - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            async with asyncio.timeout(self.resource.timeout_s * 2 + 0.5):
                reply = await getattr(self._client, method)(*args, **kwargs)
        except TimeoutError:
            self._owed(unit, size)
            raise LinkTimeout(f"{self.description}: {what}: no reply") from None
        except ModbusException as err:
            text = str(err)
            timeout = "timeout" in text.lower() or "no response" in text.lower()
            if timeout:
                self._owed(unit, size)
            kind = LinkTimeout if timeout else LinkClosed
            raise kind(f"{self.description}: {what}: {text}") from None
        except (ConnectionError, OSError) as err:
            raise LinkClosed(f"{self.description}: {what}: {err}") from None
        finally:
            self._last_reply = loop.time()
        if reply.isError():
            code = getattr(reply, "exception_code", 0)
            raise ModbusExceptionError(code, f"{self.description} {what}")
        return reply

    def _owed(self, unit: int, size: int) -> None:
        """A request to ``unit`` timed out: on a serial line its ``size``-byte reply may
        still come (:meth:`_in_step`)."""
        if self.serial:
            self._unanswered[unit] = (asyncio.get_running_loop().time(), size)

    async def read(self, table: str, address: int, count: int, unit: int) -> list[int]:
        """Registers (ints) or bits (0/1) from ``table``, ``count`` of them from ``address``."""
        what = f"read {table} {address}+{count} unit {unit}"
        method = _READS[table]
        await self._in_step(unit, own=True)
        async with self.lock:
            reply = await self._call(what, method, address, count=count, device_id=unit,
                                     size=reply_bytes(table, count))
        values = reply.registers if table in ("holding", "input") else reply.bits
        if len(values) < count:
            raise LinkError(f"{self.description}: {what}: short reply ({len(values)} values)")
        return [int(v) for v in values[:count]]

    async def write(self, table: str, address: int, values: list[int], unit: int, *,
                    function: int | None = None) -> None:
        """Write ``values`` from ``address``: one register or coil with the single-write
        function (06, 05) unless ``function`` says the multiple-write one (16, 15), which
        a run of several always uses. Raises :class:`ModbusExceptionError` naming the
        request and its function code, or :class:`LinkError`."""
        single, multiple = WRITE_FUNCTIONS[table]
        fc = function if function is not None else (single if len(values) == 1 else multiple)
        if fc not in (single, multiple) or (fc == single and len(values) != 1):
            raise ValueError(f"function {fc} cannot write {len(values)} {table} value(s)")
        what = f"write {table} {address}={values} unit {unit} (function {fc:02d})"
        items: list[Any] = [bool(v) for v in values] if table == "coil" else list(values)
        await self._in_step(unit, own=True)
        async with self.lock:
            if fc == single:
                await self._call(what, _METHODS[fc], address, items[0], device_id=unit)
            else:
                await self._call(what, _METHODS[fc], address, items, device_id=unit)


    async def update(self, address: int, change: Callable[[int], int], unit: int, *,
                     function: int = 6) -> int:
        """Read-modify-write one holding register under the link's lock (no other request
        of any device on this link comes between): ``change(old) -> new``. Returns new."""
        await self._in_step(unit, own=True)
        async with self.lock:
            reply = await self._call(f"read holding {address}+1 unit {unit} (for a bit field)",
                                     _READS["holding"], address, count=1, device_id=unit,
                                     size=reply_bytes("holding", 1))
            new = change(int(reply.registers[0]))
            what = f"write holding {address}=[{new}] unit {unit} (function {function:02d})"
            value: Any = new if function == 6 else [new]
            await self._call(what, _METHODS[function], address, value, device_id=unit)
        return new


def flush_serial_input(device: str) -> None:
    """Drop bytes waiting in the port's input queue (stale replies) before a client opens it."""
    with contextlib.suppress(OSError):
        fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            termios.tcflush(fd, termios.TCIFLUSH)
        finally:
            os.close(fd)


_READS = {"holding": "read_holding_registers", "input": "read_input_registers",
          "coil": "read_coils", "discrete": "read_discrete_inputs"}
# table -> (single-write function, multiple-write function), as the spec numbers them
WRITE_FUNCTIONS = {"holding": (6, 16), "coil": (5, 15)}
_METHODS = {5: "write_coil", 6: "write_register", 15: "write_coils", 16: "write_registers"}
