"""Register values <-> 16-bit words: data types, word order and scale, as declared in a map.

``value = raw * scale`` on the way in, ``raw = value / scale`` on the way out; word order
``big`` is high word first (Modbus's own convention, "ABCD"), ``little`` is low word first
("CDAB", e.g. the PZEM-017's 32-bit counters).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

# type -> (registers, struct format of the big-endian byte string, integer range or None)
TYPES: dict[str, tuple[int, str, tuple[int, int] | None]] = {
    "u16": (1, ">H", (0, 0xFFFF)),
    "s16": (1, ">h", (-0x8000, 0x7FFF)),
    "u32": (2, ">I", (0, 0xFFFFFFFF)),
    "s32": (2, ">i", (-0x80000000, 0x7FFFFFFF)),
    "f32": (2, ">f", None),
    "u64": (4, ">Q", (0, 0xFFFFFFFFFFFFFFFF)),
    "f64": (4, ">d", None),
    "bit": (1, "", (0, 1)),  # a coil or discrete input
}
WORD_ORDERS = ("big", "little")


@dataclass(frozen=True, slots=True)
class Codec:
    """``value = raw * scale + offset`` (``offset``: a register that counts from a base,
    e.g. a temperature in 0.1 K: scale 0.1, offset -273.15 gives degC)."""

    type: str
    word_order: str = "big"
    scale: float = 1.0
    offset: float = 0.0

    @property
    def count(self) -> int:
        return TYPES[self.type][0]

    def decode(self, words: list[int]) -> float:
        count, fmt, _ = TYPES[self.type]
        if len(words) != count:
            raise ValueError(f"{self.type} needs {count} registers, got {len(words)}")
        if self.type == "bit":
            return float(bool(words[0]))
        ordered = words if self.word_order == "big" else list(reversed(words))
        raw = struct.unpack(fmt, b"".join(w.to_bytes(2, "big") for w in ordered))[0]
        return float(raw) * self.scale + self.offset

    def encode(self, value: float) -> list[int]:
        """Words for ``value``; integers saturate at their range, as a real device's would."""
        count, fmt, span = TYPES[self.type]
        if self.type == "bit":
            return [1 if value else 0]
        raw: float | int = (value - self.offset) / self.scale
        if span is not None:
            raw = 0 if math.isnan(raw) else min(max(round(raw), span[0]), span[1])
        data = struct.pack(fmt, raw)
        words = [int.from_bytes(data[i:i + 2], "big") for i in range(0, 2 * count, 2)]
        return words if self.word_order == "big" else list(reversed(words))


