"""Fifteen household load-profile types, deterministic from a seed.

The paper's 15 load types are NSW households' average hourly use in November 2012 (Ausgrid
data, its Fig. 4), which we do not have. They are replaced by parametric residential
profiles: 5 household sizes x 3 occupancy patterns.

Daily energy by household size follows the AER residential electricity benchmarks (ACIL
Allen for the AER, 2017; as summarised by Connected, "New electricity and gas usage
benchmarks"): about 8 kWh/day for one person, about 4 kWh/day more for a second, about 2
more for each of a third and fourth, under 1 more for a fifth. We use 8, 12, 14, 16 and
17 kWh/day (mean 13.4; ACIL Allen's 2014 national average was 5,817 kWh/yr, 15.9 kWh/day,
with winter heating in it, so a November day sits below it).

Occupancy patterns shape the day (shares of the daily energy):

* ``away``: out at work or school 8:30-17:30. Base 35 % (fridge, standby), a morning peak
  around 7:00 (13 %), little by day (4 %), a broad evening peak around 19:00 (40 %), late
  evening around 22:30 (8 %); 5 % less energy than the size benchmark.
* ``home``: someone home all day (retirees, young children, working from home). Base 33 %,
  morning around 7:30 (12 %), daytime 9:00-16:00 (20 %), evening around 18:30 (30 %),
  late 22:00 (5 %); 10 % more energy.
* ``late``: a late household (shift work, students). Base 33 %, late morning around 9:00
  (5 %), day (12 %), evening around 20:30 (30 %), late night around 23:30 (20 %).

Peaks are Gaussian bumps on the 24-hour circle. The seed moves each type's peak times by up
to +-30 minutes and scales its daily energy by up to +-10 %, so the same seed always gives
the same 15 types. Powers are hourly means (kW), the form Eq. 14 scales to intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOUSEHOLD_KWH_PER_DAY = (8.0, 12.0, 14.0, 16.0, 17.0)  # 1..5 persons


@dataclass(frozen=True)
class _Pattern:
    name: str
    energy_factor: float
    base: float
    bumps: tuple[tuple[float, float, float], ...]  # (share, centre hour, width hours)
    day: float  # share spread evenly over 9:00-17:00


PATTERNS: tuple[_Pattern, ...] = (
    _Pattern("away", 0.95, 0.35, ((0.13, 7.0, 0.8), (0.40, 19.0, 1.6), (0.08, 22.5, 1.0)), 0.04),
    _Pattern("home", 1.10, 0.33, ((0.12, 7.5, 1.0), (0.30, 18.5, 1.6), (0.05, 22.0, 1.0)), 0.20),
    _Pattern("late", 1.00, 0.33, ((0.05, 9.0, 1.0), (0.30, 20.5, 1.8), (0.20, 23.5, 1.2)), 0.12),
)


@dataclass(frozen=True)
class LoadType:
    """One load type: ``hourly_kw[h]`` is the mean power over hour ``h``."""

    name: str
    persons: int
    pattern: str
    hourly_kw: tuple[float, ...]

    @property
    def daily_kwh(self) -> float:
        return float(sum(self.hourly_kw))


def _shape(pattern: _Pattern, shift_h: float) -> np.ndarray:
    """Shares of daily energy per hour (sums to 1), bumps moved by ``shift_h`` hours."""
    minutes = (np.arange(24 * 60) + 0.5) / 60.0
    density = np.full(minutes.shape, pattern.base / 24.0)
    for share, centre, width in pattern.bumps:
        d = (minutes - centre - shift_h + 12.0) % 24.0 - 12.0  # distance on the 24 h circle
        g = np.exp(-0.5 * (d / width) ** 2)
        density += share * g / (g.sum() / 60.0)
    daytime = (minutes >= 9.0) & (minutes < 17.0)
    density[daytime] += pattern.day / 8.0
    hourly = density.reshape(24, 60).mean(axis=1)
    return np.asarray(hourly / hourly.sum(), dtype=float)


def load_types(seed: int = 0) -> tuple[LoadType, ...]:
    """The 15 types (size-major: 1-person away, 1-person home, ..., 5-person late)."""
    rng = np.random.default_rng(seed)
    types = []
    for persons, kwh in enumerate(HOUSEHOLD_KWH_PER_DAY, start=1):
        for pattern in PATTERNS:
            shift = float(rng.uniform(-0.5, 0.5))
            scale = float(rng.uniform(0.9, 1.1))
            daily = kwh * pattern.energy_factor * scale
            hourly = daily * _shape(pattern, shift)  # kWh in each hour == mean kW
            types.append(LoadType(f"{persons}p-{pattern.name}", persons, pattern.name,
                                  tuple(float(x) for x in hourly)))
    return tuple(types)
