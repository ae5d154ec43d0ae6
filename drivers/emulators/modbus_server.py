"""Modbus servers of emulated instruments: TCP (MBAP framing) and RTU over a pseudo-terminal.

Our own framing, not pymodbus's server, because the faults must reach the wire: a reply
with a bad CRC, a reply that comes late or never, a dropped connection. One server may
host several unit ids (a gateway, or meters sharing an RS-485 bus); faults are per unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

from drivers.emulators.faults import Fault
from drivers.emulators.modbus_device import EmulatedModbusDevice, crc16, rtu_request_length
from drivers.emulators.pty_port import PtyPort
from drivers.emulators.sessions import SessionServer


def _faulted_reply(fault: Fault | None, pdu: bytes, device: EmulatedModbusDevice) -> bytes:
    if fault is not None and fault.kind == "exception":
        return bytes([pdu[0] | 0x80, fault.code])
    return device.handle(pdu)


class ModbusTcpServer(SessionServer):
    """Every unit id of one gateway (or one instrument) behind one TCP port, MBAP framing."""

    def __init__(self, devices: dict[int, EmulatedModbusDevice]) -> None:
        super().__init__()
        self.devices = devices

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            tid, pid, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
            pdu = await reader.readexactly(length - 1)
            device = self.devices.get(unit)
            if device is None:  # a gateway with nothing behind this unit id
                reply = bytes([pdu[0] | 0x80, 0x0B])
                writer.write(struct.pack(">HHHB", tid, pid, len(reply) + 1, unit) + reply)
                continue
            fault = device.faults.take()
            kind = fault.kind if fault else None
            if kind == "disconnect":
                return
            if kind == "no_reply":
                continue
            if kind == "late_reply":
                await asyncio.sleep(fault.delay_s)  # type: ignore[union-attr]
            reply = _faulted_reply(fault, pdu, device)
            if kind == "crc_error":  # no CRC on TCP: garble the header so it is discarded
                tid ^= 0x5A5A
            writer.write(struct.pack(">HHHB", tid, pid, len(reply) + 1, unit) + reply)
            await writer.drain()


def char_time(baud: int) -> float:
    return 11.0 / baud  # start + 8 data + parity or second stop + stop


def frame_gap(baud: int) -> float:
    """The 3.5-character silent interval (fixed at 1.75 ms above 19,200 baud)."""
    return 3.5 * char_time(baud) if baud <= 19200 else 0.00175


class ModbusRtuServer:
    """Emulated instruments sharing one RS-485 line, here a pseudo-terminal.

    With ``pace_baud`` set, each reply waits the wire time of request and reply at that
    rate (plus the silent intervals), so a bus polled too often shows the real line's limit.
    A ``disconnect`` fault on a serial line means the instrument dropped off the bus: it
    answers nothing for the fault's count. A ``late_reply`` keeps only its own instrument
    busy: its reply goes on the line ``delay_s`` later whatever the line carries then (as
    on a real bus), requests to it meanwhile are not heard, its neighbours answer on.
    """

    def __init__(self, devices: dict[int, EmulatedModbusDevice], port: PtyPort,
                 pace_baud: int | None = None) -> None:
        self.devices, self.port, self.pace_baud = devices, port, pace_baud
        self._task: asyncio.Task[None] | None = None
        self.frames_dropped = 0
        self._replied: dict[int, float] = {}  # unit -> loop time of its last reply
        self._busy_until: dict[int, float] = {}  # unit -> when its late reply goes out
        self._late: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        path = self.port.open()
        self._task = asyncio.create_task(self._serve(), name=f"modbus-rtu {path}")
        return path

    async def close(self) -> None:
        for task in self._late:
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.port.close()

    async def _serve(self) -> None:
        buf = bytearray()
        while True:
            chunk = await self.port.read_chunk(timeout=0.05 if buf else None)
            if chunk is None:  # silence mid-frame: what we hold is noise; resynchronise
                self.frames_dropped += 1
                buf.clear()
                continue
            buf += chunk
            while (n := rtu_request_length(bytes(buf))) is not None and len(buf) >= n:
                frame = bytes(buf[:n])
                del buf[:n]
                if crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
                    self.frames_dropped += 1
                    buf.clear()
                    break
                await self._answer(frame)

    async def _answer(self, frame: bytes) -> None:
        """Answer one request (a late one from a task of its own)."""
        unit, pdu = frame[0], frame[1:-2]
        device = self.devices.get(unit)
        if device is None:
            return  # another station's request (or a broadcast we do not serve)
        now = asyncio.get_running_loop().time()
        if now - self._replied.get(unit, -1e9) < device.quirks.turnaround_s \
                or now < self._busy_until.get(unit, -1e9):
            device.quirks.unheard += 1  # turning its line around, or busy: never heard it
            return
        fault = device.faults.take()
        kind = fault.kind if fault else None
        if kind in ("no_reply", "disconnect"):
            return
        body = bytes([unit]) + _faulted_reply(fault, pdu, device)
        crc = crc16(body)
        if kind == "crc_error":
            crc ^= 0xFFFF
        reply = body + crc.to_bytes(2, "little")
        delay = 0.0
        if self.pace_baud:
            delay += (len(frame) + len(reply)) * char_time(self.pace_baud) \
                + 2 * frame_gap(self.pace_baud)
        if kind == "late_reply":
            late = delay + fault.delay_s  # type: ignore[union-attr]
            self._busy_until[unit] = now + late
            task = asyncio.create_task(self._reply(unit, reply, late))
            self._late.add(task)
            task.add_done_callback(self._late.discard)
            return
        await self._reply(unit, reply, delay)

    async def _reply(self, unit: int, reply: bytes, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        await self.port.write(reply)
        self._replied[unit] = asyncio.get_running_loop().time()
