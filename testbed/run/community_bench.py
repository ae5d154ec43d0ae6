"""The community day on the bench: the first homes ride the physical rigs, hour by hour.

Home ``k`` of the day (in id order) is played by the rig's ``k``-th household for as many
homes as the rig has; the rest stay simulated. For every hour the controller is given each
physical home's PV and load (the day's hourly means) and its target: the net energy the
home puts onto the bus in that hour (exports and sales, less what it requested), all as
the day simulation booked them. The rig's battery converter closes the gap between PV minus
load and the target, so it plays the home's battery and trading at once; the meter says
what really flowed, and :func:`compare` sets that beside what was routed.

Energy sold to a simulated home leaves the bench through the grid node, which stands for
the rest of the community and the grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from contracts.numbers import MICRO
from drivers.spec import RigSpec
from testbed.community.day import DayResult
from testbed.config.profiles import DayProfile
from testbed.run.controller import IntervalMeasurement, RigPlan


@dataclass(frozen=True)
class HourlyProfile(DayProfile):
    """A home's PV and load as one mean power (kW) per hour of the day."""

    pv_hourly: tuple[float, ...] = ()
    load_hourly: tuple[float, ...] = ()

    def pv_kw(self, hour: float) -> float:
        return self.pv_hourly[min(int(hour), 23)]

    def load_kw(self, hour: float) -> float:
        return self.load_hourly[min(int(hour), 23)]


def hourly_profile(pv: Sequence[float], load: Sequence[float]) -> HourlyProfile:
    pv_t, load_t = tuple(float(x) for x in pv), tuple(float(x) for x in load)
    return HourlyProfile(sum(pv_t), sum(load_t), (1 / 24,) * 24, pv_t, load_t)


@dataclass(frozen=True)
class Routing:
    """Which rig household plays which home, and every hour's plans for the controller."""

    pairs: tuple[tuple[str, str], ...]  # (rig household id, community home id)
    plans: tuple[tuple[RigPlan, ...], ...]  # per hour of day

    def preflight_intervals(self) -> list[tuple[float, float, list[RigPlan]]]:
        return [(float(h), 1.0, list(p)) for h, p in enumerate(self.plans)]


def routing(day: DayResult, rig: RigSpec) -> Routing:
    """The first ``min(homes, rig households)`` homes onto the rig's households, in order."""
    hh = day.home_hourly
    pairs = tuple((r.id, h) for r, h in zip(rig.households, day.ids, strict=False))
    profiles = [hourly_profile(hh["pv"][i], hh["load"][i]) for i in range(len(pairs))]
    plans = tuple(
        tuple(RigPlan(rig_id, float(hh["net"][i, hour]), profiles[i])
              for i, (rig_id, _) in enumerate(pairs))
        for hour in range(24))
    return Routing(pairs, plans)


def metered_kwh(wh: float, rig: RigSpec) -> Fraction:
    """Lab Wh -> market kWh, quantised to the micro-kWh (a meter's resolution)."""
    return Fraction(round(wh / rig.energy_scale * MICRO), MICRO)


@dataclass
class Comparison:
    """Routed against metered energy per physical home over the hours run so far."""

    rig: RigSpec
    routing: Routing
    routed: dict[str, float] = field(default_factory=dict)
    metered: dict[str, Fraction] = field(default_factory=dict)
    worst_hour: dict[str, float] = field(default_factory=dict)
    tripped: dict[str, str] = field(default_factory=dict)

    def add(self, hour: int, measured: IntervalMeasurement) -> dict[str, Any]:
        """Book one hour; returns the hour's figures per rig household (for the store)."""
        metered = {plan.household: metered_kwh(measured.metered_wh.get(plan.household, 0.0),
                                               self.rig)
                   for plan in self.routing.plans[hour]}
        return self.book(hour, metered, measured.tripped)

    def book(self, hour: int, metered: dict[str, Fraction],
             tripped: dict[str, str]) -> dict[str, Any]:
        """Book one hour from its metered market kWh per rig household (micro-kWh
        quantised), as measured or as a resume reads them back from the hour's row
        (:func:`booked`); returns the hour's figures per rig household (for the store)."""
        out = {}
        for plan in self.routing.plans[hour]:
            rid = plan.household
            m = metered.get(rid, Fraction(0))
            self.routed[rid] = self.routed.get(rid, 0.0) + plan.target_kwh
            self.metered[rid] = self.metered.get(rid, Fraction(0)) + m
            dev = abs(float(m) - plan.target_kwh)
            self.worst_hour[rid] = max(self.worst_hour.get(rid, 0.0), dev)
            out[rid] = {"routed_kwh": round(plan.target_kwh, 6), "metered_kwh": float(m)}
        self.tripped.update(tripped)
        return out

    def summary(self) -> dict[str, Any]:
        """Per rig: the home it played, routed and metered kWh over the day, the largest
        hourly difference; and whether every rig stayed within the rig's tolerance
        (relative to the energy it moved, with a floor of 1 Wh)."""
        tol = self.rig.tolerance_pct / 100.0
        rows, ok = [], not self.tripped
        for rid, home in self.routing.pairs:
            routed, metered = self.routed.get(rid, 0.0), float(self.metered.get(rid, 0))
            moved = sum(abs(p.target_kwh) for hp in self.routing.plans for p in hp
                        if p.household == rid)
            within = abs(metered - routed) <= max(tol * moved, 0.001)
            ok = ok and within
            rows.append({"rig_household": rid, "home": home, "routed_kwh": round(routed, 6),
                         "metered_kwh": round(metered, 6),
                         "difference_kwh": round(metered - routed, 6),
                         "worst_hour_difference_kwh": round(self.worst_hour.get(rid, 0.0), 6),
                         "within_tolerance": within})
        return {"rigs": rows, "tolerance_pct": self.rig.tolerance_pct,
                "within_tolerance": ok, "tripped": dict(self.tripped)}


def booked(rigs: dict[str, Any]) -> dict[str, Fraction]:
    """The metered market kWh per rig household of an hour's stored ``rigs`` figures
    (``{rid: {"metered_kwh": float}}``, written by :meth:`Comparison.book`), exact again:
    a float of a whole number of micro-kWh rounds back to that number."""
    return {rid: Fraction(round(float(v["metered_kwh"]) * MICRO), MICRO)
            for rid, v in rigs.items()}
