"""How a household's day is shaped: PV from pvlib's clear sky, load from a residential curve.

The dual-bidding paper gives only each household's net position for the day. To drive the
bench we spread it over the hours: every household consumes ``daily_load_kwh`` with a
two-peak residential shape, and its PV array is sized so that PV minus load is its net.
PV follows the clear-sky irradiance of the scenario's site and date (pvlib, Haurwitz model:
no downloaded data needed), normalised to a daily energy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Hourly weights of a residential weekday load (morning and evening peaks, low at night);
# the shape of typical Australian residential profiles, normalised below to sum to one.
RESIDENTIAL_SHAPE: tuple[float, ...] = (
    0.60, 0.50, 0.45, 0.45, 0.50, 0.70, 1.10, 1.40, 1.20, 0.90, 0.80, 0.80,
    0.80, 0.75, 0.75, 0.85, 1.10, 1.60, 2.00, 2.00, 1.70, 1.30, 1.00, 0.75,
)
_RESIDENTIAL_TOTAL = sum(RESIDENTIAL_SHAPE)


# Clear-sky shapes computed once with pvlib and shipped with the package, so that running a
# built-in scenario does not import pvlib and pandas (1.4 s of a 5 s run). Written by
# ``python -m testbed.config.profiles``; ``tests/test_profiles.py`` recomputes each with pvlib.
SHIPPED_SHAPES = Path(__file__).with_name("clearsky_shapes.json")


def _shape_key(latitude: float, longitude: float, date: str, steps: int, tz: str) -> str:
    return f"{latitude!r} {longitude!r} {date} {steps} {tz}"


@lru_cache(maxsize=1)
def _shipped_shapes() -> dict[str, list[float]]:
    try:
        data: dict[str, list[float]] = json.loads(SHIPPED_SHAPES.read_text())
    except FileNotFoundError:
        return {}
    return data


@lru_cache(maxsize=16)
def clear_sky_shape(latitude: float, longitude: float, date: str, steps: int = 288,
                    tz: str = "Australia/Sydney") -> tuple[float, ...]:
    """Clear-sky GHI over one local day at ``steps`` points, normalised to sum to one.

    Taken from the shipped table when the site and day are in it (the built-in scenarios),
    else computed by :func:`compute_clear_sky_shape`.
    """
    shipped = _shipped_shapes().get(_shape_key(latitude, longitude, date, steps, tz))
    if shipped is not None:
        return tuple(float(x) for x in shipped)
    return compute_clear_sky_shape(latitude, longitude, date, steps, tz)


def compute_clear_sky_shape(latitude: float, longitude: float, date: str, steps: int = 288,
                            tz: str = "Australia/Sydney") -> tuple[float, ...]:
    """The clear-sky shape from pvlib (Haurwitz GHI at the midpoint of each step)."""
    import numpy as np
    import pandas as pd
    from pvlib.location import Location

    site = Location(latitude, longitude, tz=tz)
    times = pd.date_range(date, periods=steps, freq=pd.Timedelta(days=1) / steps, tz=site.tz)
    times = times + pd.Timedelta(days=1) / steps / 2  # midpoints of each step
    ghi = site.get_clearsky(times, model="haurwitz")["ghi"].to_numpy(dtype=float)
    ghi = np.clip(ghi, 0.0, None)
    return tuple(float(x) for x in ghi / ghi.sum())


def write_shipped_shapes() -> dict[str, list[float]]:
    """Recompute the shapes of every built-in scenario's site and day with pvlib and write
    them to :data:`SHIPPED_SHAPES`."""
    from rigs import builtin
    from testbed.config.scenario import load_scenario

    table: dict[str, list[float]] = {}
    for name in sorted(builtin("scenarios")):
        p = load_scenario(name).profiles
        key = _shape_key(p.latitude, p.longitude, p.date, 288, p.timezone)
        table[key] = list(compute_clear_sky_shape(p.latitude, p.longitude, p.date, 288,
                                                  p.timezone))
    SHIPPED_SHAPES.write_text(json.dumps(table, indent=0) + "\n")
    return table


@dataclass(frozen=True)
class DayProfile:
    """PV and load power (market kW) over one day, as functions of the hour of day."""

    pv_kwh: float
    load_kwh: float
    pv_shape: tuple[float, ...]  # fractions of the daily energy per step, sums to 1

    def pv_kw(self, hour: float) -> float:
        steps = len(self.pv_shape)
        i = min(int(hour / 24 * steps), steps - 1)
        return self.pv_kwh * self.pv_shape[i] * steps / 24

    def load_kw(self, hour: float) -> float:
        i = min(int(hour), 23)
        return self.load_kwh * RESIDENTIAL_SHAPE[i] / _RESIDENTIAL_TOTAL


def day_profile(net_kwh: float, load_kwh: float, latitude: float, longitude: float,
                date: str, tz: str = "Australia/Sydney") -> DayProfile:
    """A day whose PV minus load is ``net_kwh`` (PV never negative: load shrinks if it must)."""
    pv = load_kwh + net_kwh
    if pv < 0:
        load_kwh, pv = -net_kwh, 0.0
    return DayProfile(pv, load_kwh, clear_sky_shape(latitude, longitude, date, tz=tz))


if __name__ == "__main__":
    print(f"wrote {len(write_shipped_shapes())} shapes to {SHIPPED_SHAPES}")
