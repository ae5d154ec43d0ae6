"""A stop that the run's code drops is repeated: Python 3.11's ``asyncio.wait_for``, which
pymodbus uses for every reply, returns a reply that lands together with the cancellation
and drops the cancellation. Under load a Ctrl-C was lost this way and the run went on to
its end with exit 0 (tests/test_realtime.py caught it at a load average of 5)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
import typer

from testbed.cli.app import _run_until_signal


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_cancellation_dropped_by_the_run_is_repeated_until_it_stops(
        sig: signal.Signals, handlers_kept: None) -> None:
    dropped: list[str] = []

    async def run(_register: Any) -> str:
        signal.raise_signal(sig)
        for _ in range(80):  # 4 s: far longer than the repeat
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError as stop:
                if not dropped:  # as wait_for does when the reply lands with the cancel
                    dropped.append(str(stop))
                    continue
                raise
        return "the run went on"

    with pytest.raises(typer.Exit) as stopped:
        _run_until_signal(run)
    assert stopped.value.exit_code == 130
    assert dropped == [sig.name]
