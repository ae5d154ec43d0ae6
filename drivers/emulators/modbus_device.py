"""An emulated Modbus instrument: its register map, served from a plant binding.

Answers protocol data units (function code + data) for functions 1-6, 15 and 16 the way
a strict device does: an address that the map does not declare is exception 2, a write to
a read-only point or to part of a multi-register value is exception 2, a bad quantity or
coil value exception 3, any other function exception 1.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable

from drivers.emulators.bindings import Binding
from drivers.emulators.faults import FaultPlan, Quirks
from drivers.instruments.model import ModbusMap, Point

READ_TABLES = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
MAX_QUANTITY = {"coil": 2000, "discrete": 2000, "holding": 125, "input": 125}


class Reject(Exception):
    """Answer with Modbus exception ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


Cell = tuple[Point, int, int]  # point, channel, word index within the point


class EmulatedModbusDevice:
    def __init__(self, instrument: ModbusMap, binding: Binding, unit: int = 1) -> None:
        self.instrument, self.binding, self.unit = instrument, binding, unit
        self.faults = FaultPlan()
        self.quirks = Quirks()
        self.requests = 0
        self.functions: Counter[int] = Counter()  # requests served, by function code
        self._cells: dict[tuple[str, int], Cell] = {}
        self._fields: dict[tuple[str, int], list[tuple[Point, int]]] = {}
        for p in instrument.points.values():
            if p.mask is not None:  # every channel's field shares the register
                self._fields.setdefault((p.table, p.address), []).extend(
                    (p, ch) for ch in range(instrument.channels))
                continue
            moves = instrument.channels > 1 and instrument.channel_offset(p, 1) != 0
            for ch in range(instrument.channels if moves else 1):
                base = p.address + instrument.channel_offset(p, ch)
                for k in range(p.count):
                    self._cells[(p.table, base + k)] = (p, ch, k)

    @property
    def name(self) -> str:
        return self.binding.name

    def _words(self, point: Point, channel: int) -> list[int]:
        value = float(self.binding.get(point.name, channel))
        if point.name in self.quirks.counter_offset or point.name in self.quirks.counter_rollover:
            value = self.quirks.counter(point.name, value)
        return point.codec.encode(value)

    def _field_word(self, table: str, address: int) -> int:
        word = 0
        for p, ch in self._fields[(table, address)]:
            word = p.field_word(word, float(self.binding.get(p.name, ch)), ch)
        return word

    def read(self, table: str, address: int, count: int) -> list[int]:
        most = self.quirks.max_read * (16 if table in ("coil", "discrete") else 1)
        if not 1 <= count <= (most or MAX_QUANTITY[table]):
            raise Reject(3)
        cache: dict[tuple[str, int], list[int]] = {}
        out = []
        for a in range(address, address + count):
            if (table, a) in self._fields:
                out.append(self._field_word(table, a))
                continue
            cell = self._cells.get((table, a))
            if cell is None or not cell[0].readable:
                raise Reject(2)
            point, ch, k = cell
            key = (point.name, ch)
            if key not in cache:
                cache[key] = self._words(point, ch)
            out.append(cache[key][k])
        return out

    def write(self, table: str, address: int, values: list[int]) -> None:
        """Apply whole points only; check everything before changing anything."""
        updates: list[tuple[Point, int, float]] = []
        a = address
        while a < address + len(values):
            if (table, a) in self._fields:
                word = values[a - address]
                updates += [(p, ch, p.field_value(word, ch)) for p, ch in self._fields[(table, a)]
                            if p.writable]
                a += 1
                continue
            cell = self._cells.get((table, a))
            if cell is None or not cell[0].writable or cell[2] != 0:
                raise Reject(2)
            point, ch, _ = cell
            words = values[a - address:a - address + point.count]
            if len(words) != point.count:
                raise Reject(2)
            updates.append((point, ch, point.codec.decode(words)))
            a += point.count
        for point, ch, value in updates:
            self.binding.set(point.name, ch, value)

    def handle(self, pdu: bytes) -> bytes:
        """One request PDU -> its response PDU (normal or exception)."""
        self.requests += 1
        fc = pdu[0] if pdu else 0
        self.functions[fc] += 1
        busy = self.quirks.busy_every
        if busy and self.requests % busy == 0:
            return bytes([fc | 0x80, 6])
        if fc in self.quirks.refuse_functions:
            return bytes([fc | 0x80, 1])
        try:
            handler = _HANDLERS.get(fc)
            if handler is None:
                raise Reject(1)
            return handler(self, pdu)
        except Reject as rej:
            return bytes([fc | 0x80, rej.code])
        except struct.error:
            return bytes([fc | 0x80, 3])


def _read(dev: EmulatedModbusDevice, pdu: bytes) -> bytes:
    fc = pdu[0]
    address, count = struct.unpack(">HH", pdu[1:5])
    table = READ_TABLES[fc]
    values = dev.read(table, address, count)
    if table in ("coil", "discrete"):
        packed = bytearray((count + 7) // 8)
        for i, bit in enumerate(values):
            if bit:
                packed[i // 8] |= 1 << (i % 8)
        return bytes([fc, len(packed)]) + bytes(packed)
    return bytes([fc, 2 * count]) + struct.pack(f">{count}H", *values)


def _write_coil(dev: EmulatedModbusDevice, pdu: bytes) -> bytes:
    address, value = struct.unpack(">HH", pdu[1:5])
    if value not in (0xFF00, 0x0000):
        raise Reject(3)
    dev.write("coil", address, [1 if value else 0])
    return pdu[:5]


def _write_register(dev: EmulatedModbusDevice, pdu: bytes) -> bytes:
    address, value = struct.unpack(">HH", pdu[1:5])
    dev.write("holding", address, [value])
    return pdu[:5]


def _write_coils(dev: EmulatedModbusDevice, pdu: bytes) -> bytes:
    address, count, nbytes = struct.unpack(">HHB", pdu[1:6])
    if not 1 <= count <= 1968 or nbytes != (count + 7) // 8 or len(pdu) < 6 + nbytes:
        raise Reject(3)
    bits = [pdu[6 + i // 8] >> (i % 8) & 1 for i in range(count)]
    dev.write("coil", address, bits)
    return pdu[:5]


def _write_registers(dev: EmulatedModbusDevice, pdu: bytes) -> bytes:
    address, count, nbytes = struct.unpack(">HHB", pdu[1:6])
    if not 1 <= count <= 123 or nbytes != 2 * count or len(pdu) < 6 + nbytes:
        raise Reject(3)
    dev.write("holding", address, list(struct.unpack(f">{count}H", pdu[6:6 + nbytes])))
    return pdu[:5]


_HANDLERS: dict[int, Callable[[EmulatedModbusDevice, bytes], bytes]] = {
    1: _read, 2: _read, 3: _read, 4: _read,
    5: _write_coil, 6: _write_register, 15: _write_coils, 16: _write_registers,
}


def rtu_request_length(frame: bytes) -> int | None:
    """Bytes in the RTU request that starts ``frame``, or None until enough have arrived."""
    if len(frame) < 2:
        return None
    if frame[1] in (15, 16):
        return 9 + frame[6] if len(frame) >= 7 else None
    return 8  # functions 1-6 (and anything else: 8 bytes, answered with exception 1)


def crc16(data: bytes) -> int:
    """Modbus RTU CRC-16 (polynomial 0xA001, initial 0xFFFF), sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc
