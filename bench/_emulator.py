"""The emulated bench for the driver and cycle benchmarks, in a process of its own or inline.

``python -m bench._emulator --households N [--pace-baud B] [--turnaround-ms T]`` starts
:class:`drivers.emulators.bench.EmulatedBench` on the built-in mock rig cut to ``N``
households, prints its rig (every device pointing at its emulator) as one JSON line, and
serves until its standard input closes. ``T`` gives every TCP instrument (SCPI and Modbus
TCP) a turnaround: each reply waits ``T`` ms (the emulator's ``late_reply`` fault, held for
good), as a real instrument takes a few ms to measure and answer; the RTU meters keep their
line's pace. In its own process the instruments do not share
the controller's event loop or core, as on a real bench; ``inline`` keeps them in ours.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

from drivers.emulators.bench import EmulatedBench
from drivers.spec import RigSpec
from testbed.config.rig import load_rig, rig_from_dict


def mock_rig(households: int) -> RigSpec:
    """The built-in mock rig (ten households) cut to, or repeated up to, ``households``."""
    rig = load_rig("mock")
    if households > len(rig.households):
        raise ValueError(f"the mock rig has {len(rig.households)} households")
    return dataclasses.replace(rig, households=rig.households[:households])


def slow_down(emu: EmulatedBench, turnaround_s: float) -> None:
    """Every TCP instrument answers ``turnaround_s`` late (RTU meters: see module doc)."""
    if turnaround_s > 0:
        for end in emu.endpoints.values():
            if not end.resource.startswith("modbus+rtu"):
                end.emulated.faults.inject("late_reply", None, delay_s=turnaround_s)


def driver_rig(data: dict[str, Any], timeout_s: float) -> RigSpec:
    """The emulated rig's dict as a rig for our drivers, every device with ``timeout_s``."""
    data = json.loads(json.dumps(data))
    for table in [data["grid"], *(t for h in data["households"] for t in h.values()
                                  if isinstance(t, dict))]:
        table["timeout_s"] = timeout_s
    return rig_from_dict("emulated", data)


@contextlib.asynccontextmanager
async def emulated(households: int, *, pace_baud: int | None = None, inline: bool = False,
                   turnaround_s: float = 0.0, **rig_over: Any) -> AsyncIterator[dict[str, Any]]:
    """The emulated rig's dict (``EmulatedBench.rig_dict``) while its emulators serve."""
    if inline:
        async with EmulatedBench(mock_rig(households), pace_baud=pace_baud) as emu:
            slow_down(emu, turnaround_s)
            yield emu.rig_dict(**rig_over)
        return
    args = [sys.executable, "-m", "bench._emulator", "--households", str(households),
            "--turnaround-ms", str(turnaround_s * 1000)]
    if pace_baud:
        args += ["--pace-baud", str(pace_baud)]
    proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line:
            raise RuntimeError("the emulator process exited before serving")
        data = json.loads(line)
        data.update({k: v for k, v in rig_over.items() if v is not None})
        yield data
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _serve(households: int, pace_baud: int | None, turnaround_s: float) -> None:
    async with EmulatedBench(mock_rig(households), pace_baud=pace_baud) as emu:
        slow_down(emu, turnaround_s)
        sys.stdout.write(json.dumps(emu.rig_dict()) + "\n")
        sys.stdout.flush()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes it


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--households", type=int, default=1)
    p.add_argument("--pace-baud", type=int, default=None)
    p.add_argument("--turnaround-ms", type=float, default=0.0)
    a = p.parse_args()
    asyncio.run(_serve(a.households, a.pace_baud, a.turnaround_ms / 1000))


if __name__ == "__main__":
    main()
