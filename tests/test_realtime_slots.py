"""The machine-wide real-time slots (tests/realtime_slots.py): at most ``SLOTS`` holders,
across processes, and a slot comes free when its holder ends, however it ends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import realtime_slots


def test_at_most_slots_holders_and_a_dead_holder_frees_its_slot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(realtime_slots.tempfile, "gettempdir", lambda: str(tmp_path))
    held = [realtime_slots._take() for _ in range(realtime_slots.SLOTS)]
    assert all(h is not None for h in held)
    assert realtime_slots._take() is None  # all taken
    held.pop().close()  # type: ignore[union-attr]
    again = realtime_slots._take()
    assert again is not None
    # another process holding a slot, killed: its slot is free again
    again.close()
    code = ("import fcntl, os, sys\n"
            f"f = open({str(tmp_path / 'testbed-realtime-slot-0.lock')!r}, 'a')\n"
            "fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "os.kill(os.getpid(), 9)\n")
    for h in held:
        h.close()  # type: ignore[union-attr]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "held" and proc.returncode == -9
    taken = [realtime_slots._take() for _ in range(realtime_slots.SLOTS)]
    assert all(t is not None for t in taken)
    for t in taken:
        t.close()  # type: ignore[union-attr]
