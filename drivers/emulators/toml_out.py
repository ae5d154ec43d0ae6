"""Write the rig files the emulator produces: plain TOML, readable, tables in a stable order."""

from __future__ import annotations

import json
import math
from typing import Any


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"TOML cannot hold {v}")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string is a JSON string
    raise TypeError(f"no TOML form for {v!r}")


def dumps(data: dict[str, Any], comment: str = "") -> str:
    """Scalars first, then tables, then arrays of tables (whose sub-tables follow each item)."""
    lines = [f"# {line}" for line in comment.splitlines()]
    _table(lines, "", data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _table(lines: list[str], path: str, data: dict[str, Any]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict | list)}
    for key, value in scalars.items():
        lines.append(f"{key} = {_value(value)}")
    for key, value in data.items():
        sub = f"{path}.{key}" if path else key
        if isinstance(value, dict):
            lines += ["", f"[{sub}]"]
            _table(lines, sub, value)
        elif isinstance(value, list):
            for item in value:
                lines += ["", f"[[{sub}]]"]
                _table(lines, sub, item)
