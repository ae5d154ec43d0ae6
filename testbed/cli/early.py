"""Signals while the program is still loading: before ``testbed run`` wires its own handlers.

Until then nothing has touched the bench, so SIGINT or SIGTERM ends the process at once with
the documented 130 and one line (not 143, not a KeyboardInterrupt traceback from inside an
import). Installed first thing by both entry points, the ``testbed`` script
(:mod:`testbed.cli.app`) and ``python -m testbed.cli`` (:mod:`testbed.cli.__main__`); only
the operating system's own start of the interpreter comes before it.
"""

from __future__ import annotations

import gc
import os
import signal
from typing import Any


def exit_at_once(signum: int, _frame: Any) -> None:
    """The handler: one line on stderr, exit 130."""
    os.write(2, f"stopped by {signal.Signals(signum).name} while starting: nothing had been "
                "switched on\n".encode())
    os._exit(130)


def install() -> None:
    """Make SIGINT and SIGTERM end the starting program with 130 (see the module), and keep
    the cyclic garbage collector off while it loads: modules, classes and functions live as
    long as the process, and collecting while they load scanned them again and again (77
    collections in a mock run's start; docs/performance.md, section 7). :func:`started`
    turns it back on."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, exit_at_once)
    gc.disable()


def started() -> None:
    """The command has loaded what it needs: what exists by now is kept out of the
    collector's sight for good (``gc.freeze``: a simulated day's collections do not scan it
    again), and the collector is on again."""
    gc.freeze()
    gc.enable()
