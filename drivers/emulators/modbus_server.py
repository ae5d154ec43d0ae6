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
    answers nothing for the fault's count.
    """

    def __init__(self, devices: dict[int, EmulatedModbusDevice], port: PtyPort,
                 pace_baud: int | None = None) -> None:
        self.devices, self.port, self.pace_baud = devices, port, pace_baud
        self._task: asyncio.Task[None] | None = None
        self.frames_dropped = 0
        self._replied: dict[int, float] = {}  # unit -> loop time of its last reply

    async def start(self) -> str:
        path = self.port.open()
        self._task = asyncio.create_task(self._serve(), name=f"modbus-rtu {path}")
        return path

    async def close(self) -> None:
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
                if await self._answer(frame):
                    buf.clear()  # requests sent while the device was busy were never heard
                    self.port.drain()

    async def _answer(self, frame: bytes) -> bool:
        """Answer one request; True if the device was busy long enough to miss others."""
        unit, pdu = frame[0], frame[1:-2]
        device = self.devices.get(unit)
        if device is None:
            return False  # another station's request (or a broadcast we do not serve)
        now = asyncio.get_running_loop().time()
        if now - self._replied.get(unit, -1e9) < device.quirks.turnaround_s:
            device.quirks.unheard += 1  # still turning its line around: never heard it
            return False
        fault = device.faults.take()
        kind = fault.kind if fault else None
        if kind in ("no_reply", "disconnect"):
            return False
        body = bytes([unit]) + _faulted_reply(fault, pdu, device)
        crc = crc16(body)
        if kind == "crc_error":
            crc ^= 0xFFFF
        reply = body + crc.to_bytes(2, "little")
        delay = fault.delay_s if kind == "late_reply" else 0.0  # type: ignore[union-attr]
        if self.pace_baud:
            delay += (len(frame) + len(reply)) * char_time(self.pace_baud) \
                + 2 * frame_gap(self.pace_baud)
        if delay:
            await asyncio.sleep(delay)
        await self.port.write(reply)
        self._replied[unit] = asyncio.get_running_loop().time()
        return kind == "late_reply"
