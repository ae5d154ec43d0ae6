"""JSON from outside (files, MQTT payloads, database rows, a node's replies), parsed with a
bound on its nesting before the parser sees it.

The C JSON decoder recurses once per level of nesting. Python stops it at the recursion
limit, but py-evm (imported by ``--ledger evm``) raises that limit to 100,000 for the whole
process, after which 100,000 nested brackets overflow the C stack and kill the process with a
segmentation fault instead of an exception. Nothing this project reads nests deeper than a
handful of levels, so :func:`loads` refuses more than :data:`MAX_DEPTH` first.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


def nesting_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text`` (brackets inside strings do not
    count); linear in the length of the text."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads(data: str | bytes | bytearray, *, max_depth: int = MAX_DEPTH, **kwargs: Any) -> Any:
    """``json.loads`` of ``data``, refusing text nested deeper than ``max_depth``.

    Raises ``ValueError`` (``json.JSONDecodeError`` for malformed text, a plain
    ``ValueError`` naming the depth for nesting beyond the bound; bytes that are not UTF-8,
    UTF-16 or UTF-32 raise ``UnicodeDecodeError``, also a ``ValueError``).
    """
    text = data if isinstance(data, str) else bytes(data).decode(
        json.detect_encoding(bytes(data)))
    if text.count("[") + text.count("{") > max_depth:  # only then can it nest too deep
        depth = nesting_depth(text)
        if depth > max_depth:
            raise ValueError(f"JSON nested {depth} levels deep, more than the {max_depth} "
                             "allowed")
    return json.loads(text, **kwargs)
