"""Reading TOML files strictly: every error names the file, the key and what was expected."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rigs import builtin
from testbed.errors import InputError

MAX_MAGNITUDE = 1e15  # as contracts.numbers.MAX_MAGNITUDE_EXP
MAX_FILE_BYTES = 4 * 1024 * 1024  # a rig or scenario file is a few kB


def resolve(kind: str, name_or_path: str) -> tuple[str, str]:
    """A built-in name (``mock``, ``scenario2``) or a path -> (source label, TOML text)."""
    known = builtin(kind)
    if name_or_path in known:
        return f"built-in {kind[:-1]} '{name_or_path}'", known[name_or_path].read_text("utf-8")
    path = Path(name_or_path)
    if path.is_file():
        return str(path), read_text(path)
    raise InputError(
        name_or_path,
        f"no such file, and not a built-in {kind[:-1]} (built-in: {', '.join(known)})",
    )


def read_text(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """A UTF-8 text file's contents; InputError naming the file when it cannot be read, is
    larger than ``limit`` bytes, or is not UTF-8 (with the byte offset)."""
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise InputError(str(path), e.strerror or "cannot be read") from None
    if len(data) > limit:
        raise InputError(str(path), f"larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(str(path), f"not UTF-8 text (byte {e.start})") from None


def parse(source: str, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InputError(source, f"not valid TOML: {err}") from None


def _g(bound: float | None) -> str:
    return "-inf" if bound is None else f"{bound:.6g}"


class Table:
    """A TOML table that tracks which keys were read, so unknown keys can be reported."""

    def __init__(self, source: str, path: str, data: object) -> None:
        if not isinstance(data, Mapping):
            raise InputError(f"{source} [{path}]", f"expected a table, got {data!r}")
        self.source, self.path, self.data = source, path, dict(data)
        self._used: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.source} [{self.path}] key '{key}'" if self.path else \
            f"{self.source} key '{key}'"

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = ...) -> Any:
        self._used.add(key)
        if key not in self.data:
            if default is ...:
                raise InputError(self.where(key), "missing")
            return default
        return self.data[key]

    def number(self, key: str, default: Any = ..., *, positive: bool = False,
               low: float | None = None, high: float | None = None) -> float:
        """A finite number of magnitude below 1e15 (``MAX_MAGNITUDE``), > 0 when
        ``positive``, within [low, high] when given; else InputError naming the key."""
        value = self.raw(key, default)
        if value is None and default is None:
            return value  # type: ignore[return-value]  # None only when asked for
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(self.where(key), f"expected a number, got {value!r}")
        if not math.isfinite(value) or abs(value) >= MAX_MAGNITUDE:
            raise InputError(self.where(key), f"expected a finite number of magnitude below "
                             f"{MAX_MAGNITUDE:g}, got {value!r}")
        if positive and not value > 0:
            raise InputError(self.where(key), f"must be > 0, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise InputError(self.where(key), f"must lie in [{_g(low)}, {_g(high)}], got "
                                              f"{value!r}")
        return float(value)

    def text(self, key: str, default: Any = ...) -> str:
        value = self.raw(key, default)
        if value is not None and not isinstance(value, str | int):
            raise InputError(self.where(key), f"expected a string, got {value!r}")
        return value if value is None else str(value)  # type: ignore[return-value]

    def table(self, key: str, default: Any = ...) -> Table:
        value = self.raw(key, default)
        return Table(self.source, f"{self.path}.{key}" if self.path else key, value)

    def tables(self, key: str) -> list[Table]:
        value = self.raw(key)
        if not isinstance(value, list):
            raise InputError(self.where(key), "expected an array of tables ([[...]])")
        base = f"{self.path}.{key}" if self.path else key
        return [Table(self.source, f"{base}[{i}]", v) for i, v in enumerate(value)]

    def unused(self) -> list[str]:
        return [k for k in self.data if k not in self._used]

    def reject_unknown(self) -> None:
        extra = self.unused()
        if extra:
            raise InputError(self.where(extra[0]), "unknown key (a typo?)")
