"""The interval cycle: drive every rig so its metered energy tracks its cleared trajectory.

For each trading interval the controller is given, per household, a day profile (PV and
load) and a target: the energy its rig must put onto the bus over the interval (its
cleared trades plus what it settles with the grid). Every control period it reads all
meters concurrently, sets PV and load from the profile, and sets the battery converter so
that, one period later, the rig's metered energy is back on the straight line from zero to
its target (a dead-beat correction on the *measured* energy: the loop closes on the meters,
so battery losses and limits show up as deviations rather than being assumed away).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from drivers.clock import Clock
from drivers.registry import Bench
from drivers.roles import MeterReading
from testbed.events import EventBus
from testbed.profiles import DayProfile


@dataclass(frozen=True)
class RigPlan:
    """What one rig does over an interval, in market units (kWh, hours)."""

    household: str
    target_kwh: float  # net energy onto the bus over the interval (+ export)
    profile: DayProfile


@dataclass
class IntervalMeasurement:
    start_s: float
    end_s: float
    metered_wh: dict[str, float]  # lab Wh, export - import over the interval
    grid_import_wh: float
    grid_export_wh: float
    readings: list[dict[str, Any]] = field(default_factory=list)


class Controller:
    def __init__(self, bench: Bench, clock: Clock, events: EventBus | None = None):
        self.bench = bench
        self.rig = bench.rig
        self.clock = clock
        self.events = events or EventBus()

    def _emit(self, topic: str, payload: dict[str, Any]) -> None:
        self.events.emit(topic, payload)

    async def connect_rigs(self) -> None:
        """Grid node up, every rig onto the bus with its outputs at zero and then on."""
        await self.bench.grid.set_enabled(True)
        for h in self.bench.households.values():
            await asyncio.gather(h.pv.set_power(0.0), h.load.set_power(0.0),
                                 h.battery.set_power(0.0))
        await asyncio.gather(*(h.relay.set_closed(True) for h in self.bench.households.values()))
        await asyncio.gather(*(
            c for h in self.bench.households.values()
            for c in (h.pv.set_output(True), h.load.set_input(True), h.battery.set_enabled(True))))

    async def safe_state(self) -> None:
        """Every output off and every relay open, whatever state each device is in."""
        results = await asyncio.gather(*(d.safe_state() for d in self.bench.devices()),
                                       return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            self._emit("safety", {"event": "safe_state_incomplete",
                                  "errors": [str(e) for e in failed]})

    async def close(self) -> None:
        await asyncio.gather(*(d.close() for d in self.bench.devices()), return_exceptions=True)

    async def _meters(self) -> dict[str, MeterReading]:
        ids = list(self.bench.households)
        readings = await asyncio.gather(*(self.bench.households[h].meter.read() for h in ids))
        return dict(zip(ids, readings, strict=True))

    async def run_interval(self, plans: list[RigPlan], start_hour: float,
                           hours: float) -> IntervalMeasurement:
        rig = self.rig
        duration = hours * 3600.0 / rig.time_scale
        steps = max(1, round(duration / rig.control_period_s))
        dt = duration / steps
        wh_per_kwh = rig.energy_scale
        kw_to_w = 1000.0 * rig.power_scale
        houses = self.bench.households

        t0 = self.clock.now()
        grid0 = await self.bench.grid.read()
        base = {h: r.net_wh for h, r in (await self._meters()).items()}
        log: list[dict[str, Any]] = []

        for k in range(steps):
            deadline = t0 + (k + 1) * dt
            meters = await self._meters()
            batteries = await asyncio.gather(*(houses[p.household].battery.read() for p in plans))
            hour = start_hour + (k + 0.5) * dt * rig.time_scale / 3600.0
            writes = []
            for plan, bat in zip(plans, batteries, strict=True):
                h = houses[plan.household]
                spec = h.pv.spec.limits.max_power_w
                pv_w = min(plan.profile.pv_kw(hour) * kw_to_w, spec or float("inf"))
                load_w = min(plan.profile.load_kw(hour) * kw_to_w,
                             h.load.spec.limits.max_power_w or float("inf"))
                done = meters[plan.household].net_wh - base[plan.household]
                goal = plan.target_kwh * wh_per_kwh * (k + 1) / steps
                bat_w = (goal - done) * 3600.0 / dt - (pv_w - load_w)
                bat_max = h.battery.spec.limits.max_power_w or float("inf")
                bat_w = max(-bat_max, min(bat_max, bat_w))
                writes += [h.pv.set_power(pv_w), h.load.set_power(load_w),
                           h.battery.set_power(bat_w)]
                row = {"t": meters[plan.household].at, "household": plan.household,
                       "meter_net_wh": done, "power_w": meters[plan.household].power_w,
                       "pv_w": pv_w, "load_w": load_w, "battery_w": bat_w, "soc": bat.soc}
                log.append(row)
            await asyncio.gather(*writes)
            self._emit("readings", {"t": self.clock.now(), "rows": log[-len(plans):]})
            await self.clock.sleep_until(deadline)

        end = await self._meters()
        grid1 = await self.bench.grid.read()
        return IntervalMeasurement(
            start_s=t0, end_s=self.clock.now(),
            metered_wh={h: end[h].net_wh - base[h] for h in end},
            grid_import_wh=grid1.import_wh - grid0.import_wh,
            grid_export_wh=grid1.export_wh - grid0.export_wh,
            readings=log,
        )
