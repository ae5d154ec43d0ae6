"""Modbus RTU and TCP through pymodbus's async client, one client per physical link.

pymodbus frames, checks CRCs and matches transaction ids; this module turns its answers
into plain values or into our errors: :class:`LinkError` for a link that failed (timeout,
disconnect, garbled frame: worth a retry on a fresh connection) and
:class:`ModbusExceptionError` for an instrument that answered "no".
The client's own retries and reconnect loop are off: the device layer owns that policy.
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
        self.quiet_s = silent_interval(resource.baud) if resource.link == "serial" else 0.0
        self._last_reply = 0.0

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

    async def _before_reopen(self) -> None:
        if self.resource.link == "serial":
            # RTU has no transaction ids: let a late reply land, then flush it (open does),
            # so it cannot pass for the answer to the next request.
            await asyncio.sleep(self.resource.timeout_s)

    async def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """One request; a busy answer is asked again (:meth:`Link.while_busy`)."""
        return await self.while_busy(lambda: self._call_once(what, method, *args, **kwargs))

    async def _call_once(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        await self.ensure_open()
        loop = asyncio.get_running_loop()
        wait = self._last_reply + self.quiet_s - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            async with asyncio.timeout(self.resource.timeout_s * 2 + 0.5):
                reply = await getattr(self._client, method)(*args, **kwargs)
        except TimeoutError:
            raise LinkTimeout(f"{self.description}: {what}: no reply") from None
        except ModbusException as err:
            text = str(err)
            kind = LinkTimeout if "timeout" in text.lower() or "no response" in text.lower() \
                else LinkClosed
            raise kind(f"{self.description}: {what}: {text}") from None
        except (ConnectionError, OSError) as err:
            raise LinkClosed(f"{self.description}: {what}: {err}") from None
        finally:
            self._last_reply = loop.time()
        if reply.isError():
            code = getattr(reply, "exception_code", 0)
            raise ModbusExceptionError(code, f"{self.description} {what}")
        return reply

    async def read(self, table: str, address: int, count: int, unit: int) -> list[int]:
        """Registers (ints) or bits (0/1) from ``table``, ``count`` of them from ``address``."""
        what = f"read {table} {address}+{count} unit {unit}"
        method = _READS[table]
        async with self.lock:
            reply = await self._call(what, method, address, count=count, device_id=unit)
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
        async with self.lock:
            if fc == single:
                await self._call(what, _METHODS[fc], address, items[0], device_id=unit)
            else:
                await self._call(what, _METHODS[fc], address, items, device_id=unit)


    async def update(self, address: int, change: Callable[[int], int], unit: int, *,
                     function: int = 6) -> int:
        """Read-modify-write one holding register under the link's lock (no other request
        of any device on this link comes between): ``change(old) -> new``. Returns new."""
        async with self.lock:
            reply = await self._call(f"read holding {address}+1 unit {unit} (for a bit field)",
                                     _READS["holding"], address, count=1, device_id=unit)
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
