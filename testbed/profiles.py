"""How a household's day is shaped: PV from pvlib's clear sky, load from a residential curve.

The dual-bidding paper gives only each household's net position for the day. To drive the
bench we spread it over the hours: every household consumes ``daily_load_kwh`` with a
two-peak residential shape, and its PV array is sized so that PV minus load is its net.
PV follows the clear-sky irradiance of the scenario's site and date (pvlib, Haurwitz model:
no downloaded data needed), normalised to a daily energy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Hourly weights of a residential weekday load (morning and evening peaks, low at night);
# the shape of typical Australian residential profiles, normalised below to sum to one.
RESIDENTIAL_SHAPE = np.array([
    0.60, 0.50, 0.45, 0.45, 0.50, 0.70, 1.10, 1.40, 1.20, 0.90, 0.80, 0.80,
    0.80, 0.75, 0.75, 0.85, 1.10, 1.60, 2.00, 2.00, 1.70, 1.30, 1.00, 0.75,
])


@lru_cache(maxsize=16)
def clear_sky_shape(latitude: float, longitude: float, date: str, steps: int = 288,
                    tz: str = "Australia/Sydney") -> np.ndarray:
    """Clear-sky GHI over one local day at ``steps`` points, normalised to sum to one."""
    import pandas as pd
    from pvlib.location import Location

    site = Location(latitude, longitude, tz=tz)
    times = pd.date_range(date, periods=steps, freq=pd.Timedelta(days=1) / steps, tz=site.tz)
    times = times + pd.Timedelta(days=1) / steps / 2  # midpoints of each step
    ghi = site.get_clearsky(times, model="haurwitz")["ghi"].to_numpy(dtype=float)
    ghi = np.clip(ghi, 0.0, None)
    return ghi / ghi.sum()


@dataclass(frozen=True)
class DayProfile:
    """PV and load power (market kW) over one day, as functions of the hour of day."""

    pv_kwh: float
    load_kwh: float
    pv_shape: np.ndarray  # fractions of the daily energy per step, sums to 1

    def pv_kw(self, hour: float) -> float:
        steps = len(self.pv_shape)
        i = min(int(hour / 24 * steps), steps - 1)
        return float(self.pv_kwh * self.pv_shape[i] * steps / 24)

    def load_kw(self, hour: float) -> float:
        i = min(int(hour), 23)
        return float(self.load_kwh * RESIDENTIAL_SHAPE[i] / RESIDENTIAL_SHAPE.sum())


def day_profile(net_kwh: float, load_kwh: float, latitude: float, longitude: float,
                date: str, tz: str = "Australia/Sydney") -> DayProfile:
    """A day whose PV minus load is ``net_kwh`` (PV never negative: load shrinks if it must)."""
    pv = load_kwh + net_kwh
    if pv < 0:
        load_kwh, pv = -net_kwh, 0.0
    return DayProfile(pv, load_kwh, clear_sky_shape(latitude, longitude, date, tz=tz))
