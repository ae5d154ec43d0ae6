"""Figure 3: one control cycle over the emulated rig, against its slowest single round trip.

The built-in mock rig (ten households: PV supply and load on SCPI/TCP, battery on Modbus
TCP, meters sharing one Modbus RTU line, relays on two 8-channel Modbus TCP boards; 50
instruments, and the grid node) is served by ``EmulatedBench`` in its own process
(``--inline``: in ours); ``--turnaround-ms`` makes its SCPI and Modbus TCP instruments
answer that late, ``--pace-baud`` paces the meters' line. Our drivers connect the rigs
(``Controller.connect_rigs``), then:

* ``single``: each device's own cycle call (meter and battery ``read()``, PV, load and
  battery ``set_power``) alone, nothing else in flight, median of ``--repeats``; the
  slowest of them is ``slowest_single_s``, and ``serial_sum_s`` their sum (one cycle done
  one call after another);
* ``phases``: each of the controller's three phases alone, every call of the phase at once
  (``asyncio.gather``): all meters, all batteries, all 3N setpoint writes;
* ``cycle_s``: the real ``Controller.run_interval`` over ``--cycles`` control periods of
  1 ms, so the cycles run back to back: the median time between its ``readings`` events.

``cycle_over_slowest`` is the figure of issue 7 (target <= 1.5); ``cycle_over_serial``
says how much of a serial cycle's time the overlap saves.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench._common import emit, parser
from bench._emulator import driver_rig, emulated
from drivers.clock import RealClock
from drivers.registry import Bench, build_bench
from testbed.config.profiles import day_profile
from testbed.run.controller import Controller, RigPlan
from testbed.run.events import EventBus

TARGET = 1.5
PERIOD_S = 0.001
HOURS = 1 / 60  # one market minute per interval: only the number of periods matters


async def _median(fn: Callable[[], Awaitable[Any]], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _calls(bench: Bench) -> dict[str, list[tuple[str, Callable[[], Awaitable[Any]]]]]:
    """The cycle's calls by phase: (device and call, call)."""
    hs = list(bench.households.values())
    return {
        "meters": [(f"{h.meter.name} read", h.meter.read) for h in hs],
        "batteries": [(f"{h.battery.name} read", h.battery.read) for h in hs],
        "writes": [(f"{d.name} set_power", (lambda d=d, w=w: d.set_power(w)))
                   for h in hs for d, w in ((h.pv, 50.0), (h.load, 20.0), (h.battery, 0.0))],
    }


async def measure(bench: Bench, repeats: int) -> dict[str, Any]:
    phases = _calls(bench)
    single: dict[str, float] = {}
    for calls in phases.values():
        for name, fn in calls:
            await fn()  # warm: connection and setup lines
            single[name] = await _median(fn, repeats)
    by_phase = {}
    for phase, calls in phases.items():
        async def together(calls: list[Any] = calls) -> None:
            await asyncio.gather(*(fn() for _, fn in calls))
        by_phase[phase] = await _median(together, repeats)
    slowest = max(single, key=lambda k: single[k])
    return {"single_s": single, "slowest_single": slowest,
            "slowest_single_s": single[slowest], "serial_sum_s": sum(single.values()),
            "phase_s": by_phase,
            "phase_slowest_single_s": {p: max(single[n] for n, _ in calls)
                                       for p, calls in phases.items()}}


async def controller_cycles(bench: Bench, clock: RealClock, cycles: int) -> dict[str, Any]:
    marks: list[float] = []
    events = EventBus([lambda topic, _p: marks.append(time.perf_counter())
                       if topic == "readings" else None])
    controller = Controller(bench, clock, events, stale_periods=10**9)
    profile = day_profile(0.5, 10.0, -33.87, 151.21, "2026-01-15")
    plans = [RigPlan(h, 0.0, profile) for h in bench.households]
    started = time.perf_counter()
    measured = await controller.run_interval(plans, start_hour=12.0, hours=HOURS)
    total = time.perf_counter() - started
    gaps = [b - a for a, b in itertools.pairwise(marks)]
    return {"cycles": len(marks), "cycle_s": statistics.median(gaps),
            "cycle_p90_s": sorted(gaps)[int(0.9 * (len(gaps) - 1))],
            "interval_s": total, "tripped": measured.tripped}


async def run(households: int, cycles: int, repeats: int, inline: bool,
              pace_baud: int | None, turnaround_ms: float) -> dict[str, Any]:
    time_scale = HOURS * 3600 / (cycles * PERIOD_S)
    async with emulated(households, pace_baud=pace_baud, inline=inline,
                        turnaround_s=turnaround_ms / 1000, time_scale=time_scale,
                        control_period_s=PERIOD_S) as data:
        rig = driver_rig(data, timeout_s=2.0)
        clock = RealClock()
        bench = build_bench(rig, clock)
        controller = Controller(bench, clock)
        try:
            await controller.connect_rigs()
            parts = await measure(bench, repeats)
            cyc = await controller_cycles(bench, clock, cycles)
        finally:
            await controller.safe_state()
            await controller.close()
    instruments = len({d.name for d in bench.devices()}) - 1
    return {
        "figure": "cycle", "households": households, "instruments": instruments,
        "emulator": "inline" if inline else "own process", "meter_line_baud": pace_baud,
        "turnaround_ms": turnaround_ms,
        "cycle_s": cyc["cycle_s"], "slowest_single_s": parts["slowest_single_s"],
        "cycle_over_slowest": cyc["cycle_s"] / parts["slowest_single_s"],
        "cycle_over_serial": cyc["cycle_s"] / parts["serial_sum_s"],
        "target_cycle_over_slowest_max": TARGET,
        "phase_over_slowest_single": {p: parts["phase_s"][p] / parts["phase_slowest_single_s"][p]
                                      for p in parts["phase_s"]},
        "controller": cyc, **parts,
    }


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--households", type=int, default=10, help="5 instruments each (max 10)")
    p.add_argument("--cycles", type=int, default=50, help="control periods to time")
    p.add_argument("--repeats", type=int, default=9, help="repeats of each single call")
    p.add_argument("--pace-baud", type=int, default=None,
                   help="pace the meters' RTU line at this baud rate (default: not paced)")
    p.add_argument("--turnaround-ms", type=float, default=0.0,
                   help="every SCPI and Modbus TCP instrument answers this late (default 0)")
    p.add_argument("--inline", action="store_true", help="emulators in this process")
    a = p.parse_args()
    emit(asyncio.run(run(a.households, a.cycles, a.repeats, a.inline, a.pace_baud,
                         a.turnaround_ms)), a.json)


if __name__ == "__main__":
    main()
