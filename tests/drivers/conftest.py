"""Fixtures for driver tests: a small mock rig, its emulators on loopback, drivers built on them.

Timeouts are short (0.3 s) so fault tests stay fast; every port is picked by the OS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from drivers.clock import Clock, RealClock
from drivers.emulators.bench import EmulatedBench
from drivers.registry import Bench, build_bench
from drivers.spec import RigSpec
from testbed.config.rig import load_rig, rig_from_dict

SHORT_TIMEOUT_S = 0.3


@pytest.fixture
def small_rig() -> RigSpec:
    """The built-in mock rig cut to three households (both SCPI models, one relay board)."""
    rig = load_rig("mock")
    return dataclasses.replace(rig, households=rig.households[:3])


def emulated_rig(emu: EmulatedBench, timeout_s: float = SHORT_TIMEOUT_S, **over: Any) -> RigSpec:
    data = emu.rig_dict(**over)
    for table in [data["grid"], *(t for h in data["households"] for k, t in h.items()
                                  if isinstance(t, dict))]:
        table["timeout_s"] = timeout_s
    return rig_from_dict("emulated", data)


def drivers_for(emu: EmulatedBench, clock: Clock | None = None) -> Bench:
    return build_bench(emulated_rig(emu), clock or RealClock())


@pytest_asyncio.fixture
async def emulator(small_rig: RigSpec) -> AsyncIterator[EmulatedBench]:
    async with EmulatedBench(small_rig) as emu:
        yield emu


@pytest_asyncio.fixture
async def bench(emulator: EmulatedBench) -> AsyncIterator[Bench]:
    b = drivers_for(emulator)
    yield b
    for device in b.devices():
        await device.close()
