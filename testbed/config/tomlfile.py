"""Reading TOML files strictly: every error names the file, the key and what was expected."""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

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


# Where each key of a TOML text is written: (table path, key) -> 1-based line. A path is a
# tuple of keys, an array of tables' element by its 0-based index as text: the mock rig's
# ``[households.load]`` after its third ``[[households]]`` is ("households", "2", "load").
KeyPath = tuple[str, ...]
Lines = dict[KeyPath, int]
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')"
                  r"(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")


_INLINE_KEY = re.compile(r"([A-Za-z0-9_-]+)\s*=")


def _parts(dotted: str) -> list[str]:
    return [p.strip().strip("\"'") for p in re.findall(r"\"[^\"]*\"|'[^']*'|[^.]+", dotted)]


def locate(text: str) -> Lines:
    """Every table header's and key's line in ``text`` (already parsed, so valid TOML).

    A line inside a multi-line string or array that looks like ``key =`` is not told apart:
    the line of such a key is only used to point at it in an error message."""
    lines: Lines = {}
    counts: dict[KeyPath, int] = {}
    current: KeyPath = ()
    in_string = False
    inline: KeyPath | None = None  # the key of the multi-line array being read, if any
    element = -1
    for number, line in enumerate(text.splitlines(), 1):
        if line.count('"""') % 2 or line.count("'''") % 2:
            in_string = not in_string
            if not in_string:
                continue
        elif in_string:
            continue
        header = _HEADER.match(line)
        if header and not _KEY.match(line):
            path: KeyPath = ()
            parts = _parts(header.group(2))
            for i, part in enumerate(parts):
                path += (part,)
                last = i == len(parts) - 1
                if last and header.group(1) == "[[":
                    counts[path] = counts.get(path, -1) + 1
                if path in counts:
                    path += (str(counts[path]),)
            current = path
            lines.setdefault(current, number)
            continue
        if inline is not None:  # an array of inline tables, one `{ ... }` a line
            if line.lstrip().startswith("]"):
                inline = None
                continue
            if "{" in line:
                element += 1
                lines.setdefault((*inline, str(element)), number)
                for k in _INLINE_KEY.findall(line):
                    lines.setdefault((*inline, str(element), k), number)
            continue
        key = _KEY.match(line)
        if key:
            path = current
            for part in _parts(key.group(1)):
                path += (part,)
                lines.setdefault(path, number)
            rest = line[key.end():].split("#")[0].strip()
            if rest.startswith("[") and "]" not in rest.replace("[", "", 1).split("{")[0] \
                    and not rest.endswith("]"):
                inline, element = path, -1
                if "{" in rest:
                    element = 0
                    lines.setdefault((*path, "0"), number)
    return lines


def nearest(key: str, known: Iterable[str]) -> str | None:
    """The known key ``key`` is most likely a typo of (case and separators aside first)."""
    options = sorted(set(known))
    folded = {k.lower().replace("-", "_"): k for k in options}
    if key.lower().replace("-", "_") in folded:
        return folded[key.lower().replace("-", "_")]
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    return close[0] if close else None


def load_table(source: str, text: str) -> Table:
    """The TOML ``text`` parsed into a top-level :class:`Table` that knows its lines."""
    return Table(source, "", parse(source, text), lines=locate(text))


def _g(bound: float | None) -> str:
    return "-inf" if bound is None else f"{bound:.6g}"


class Table:
    """A TOML table that tracks which keys were read, so unknown keys can be reported.

    ``lines`` (from :func:`locate`) and ``keypath`` (this table's place in them) let every
    message start with ``FILE:LINE``; ``origin`` overrides, per key, the (shown path, line)
    of a key that was merged in from another table (a rig's ``[defaults.ROLE]``)."""

    def __init__(self, source: str, path: str, data: object, *, lines: Lines | None = None,
                 keypath: KeyPath = (),
                 origin: Mapping[str, tuple[str, int | None]] | None = None) -> None:
        self.source, self.path = source, path
        self.lines: Lines = lines if lines is not None else {}
        self.keypath = keypath
        self.origin: dict[str, tuple[str, int | None]] = dict(origin or {})
        if not isinstance(data, Mapping):
            raise InputError(self._at(self.lines.get(keypath), path),
                             f"expected a table, got {data!r}")
        self.data: dict[str, Any] = dict(data)
        self._used: set[str] = set()

    def _at(self, line: int | None, path: str) -> str:
        head = self.source if line is None else f"{self.source}:{line}"
        return f"{head} [{path}]" if path else head

    def line(self, key: str | None = None) -> int | None:
        """The line ``key`` is written on (None: this table's header), if known."""
        if key is not None and key in self.origin:
            return self.origin[key][1]
        if key is not None and (*self.keypath, key) in self.lines:
            return self.lines[(*self.keypath, key)]
        return self.lines.get(self.keypath)

    def where(self, key: str) -> str:
        path = self.origin[key][0] if key in self.origin else self.path
        return f"{self._at(self.line(key), path)} key '{key}'"

    def rename(self, path: str) -> None:
        """Show this table as ``path`` from now on (a household by its id, not its index)."""
        self.path = path

    def child(self, key: str, data: object, *, path: str | None = None,
              origin: Mapping[str, tuple[str, int | None]] | None = None) -> Table:
        """A sub-table ``key`` holding ``data`` (which may be merged from elsewhere)."""
        shown = path if path is not None else f"{self.path}.{key}" if self.path else key
        return Table(self.source, shown, data, lines=self.lines,
                     keypath=(*self.keypath, key), origin=origin)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = ...) -> Any:
        self._used.add(key)
        if key not in self.data:
            if default is ...:
                unread = [k for k in self.data if k not in self._used]
                typo = nearest(key, unread)
                if typo is not None:  # the key is there, misspelt: point at the typo
                    raise InputError(self.where(typo), f"unknown key; did you mean '{key}' "
                                     f"(which is missing)?")
                raise InputError(self.where(key), "missing")
            return default
        return self.data[key]

    def number(self, key: str, default: Any = ..., *, positive: bool = False,
               low: float | None = None, high: float | None = None) -> float:
        """A finite number of magnitude below 1e15 (``MAX_MAGNITUDE``), > 0 when
        ``positive``, within [low, high] when given; else InputError naming the key."""
        value = self.raw(key, default)
        if value is None and default is None:
            return cast(float, None)  # an optional number: the caller passed default=None
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
        return cast(str, None) if value is None else str(value)  # default=None: optional

    def table(self, key: str, default: Any = ...) -> Table:
        return self.child(key, self.raw(key, default))

    def tables(self, key: str) -> list[Table]:
        value = self.raw(key)
        if not isinstance(value, list):
            raise InputError(self.where(key), "expected an array of tables ([[...]])")
        base = f"{self.path}.{key}" if self.path else key
        return [Table(self.source, f"{base}[{i}]", v, lines=self.lines,
                      keypath=(*self.keypath, key, str(i))) for i, v in enumerate(value)]

    def unused(self) -> list[str]:
        return [k for k in self.data if k not in self._used]

    def reject_unknown(self, known: Iterable[str] = ()) -> None:
        """InputError at the first key neither read nor in ``known``, naming the nearest
        key that is (``did you mean``)."""
        allowed = self._used | set(known)
        extra = [k for k in self.data if k not in allowed]
        if extra:
            suggestion = nearest(extra[0], allowed)
            hint = f"; did you mean '{suggestion}'?" if suggestion else \
                f" (known here: {', '.join(sorted(allowed))})" if allowed else ""
            raise InputError(self.where(extra[0]), f"unknown key{hint}")
