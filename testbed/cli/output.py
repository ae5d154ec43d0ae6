"""Where every ``testbed`` command writes: the consoles and the one error printer.

A command that fails says so in ONE line on stderr, ``error: WHAT: WHY`` (the message of an
:class:`testbed.errors.InputError` names the file, line and key), never a traceback; a
command given ``--json`` also prints ``{"error": ..., "exit": ...}`` on stdout, so a
script reading stdout sees the failure too. Exit codes: 2 bad input or set-up, 1 a failed
check, others as each command documents.
"""

from __future__ import annotations

import json
import sys
from contextvars import ContextVar
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

# Piped output keeps the full table rather than rich's 80-column default.
# emoji=False: a name or message that happens to contain ``:smile:`` is printed as written
# (and rich skips its emoji pass over every string it prints)
console = Console(width=None if sys.stdout.isatty() else 160, emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)  # an error stays one greppable line

# Set by a command given --json: its failures print {"error": ..., "exit": ...} on stdout too.
JSON_ERRORS: ContextVar[bool] = ContextVar("JSON_ERRORS", default=False)


def fail(message: str, code: int = 2, *, as_json: bool | None = None) -> NoReturn:
    """Print ``error: message`` on stderr (and a JSON object on stdout under --json:
    ``as_json``, else what the command set in :data:`JSON_ERRORS`), then exit ``code``
    (2: bad input or set-up). The message is printed as text, never as rich markup (a
    TOML table such as ``[profiles]`` stays whole)."""
    if JSON_ERRORS.get() if as_json is None else as_json:
        print(json.dumps({"error": message, "exit": code}))
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(code)
