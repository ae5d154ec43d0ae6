"""Rooftop PV for the community day: the paper's Eq. 1 over pvlib clear-sky irradiance.

Eq. 1: ``P_pv(t) = A * sigma * r(t)``, with ``A`` the panel area (m^2), ``sigma`` the
conversion efficiency and ``r(t)`` the irradiance on the panel (kW/m^2). We take ``sigma``
as the *system* efficiency: module efficiency times a performance ratio (inverter, wiring,
temperature and soiling losses; 0.85 is a common design figure), so ``P`` is AC power.

Irradiance: pvlib's ``simplified_solis`` clear-sky model (no downloaded data; ``ineichen``
also runs offline here but needs h5py for its Linke turbidity table) gives GHI, DNI and DHI
for the site and date; ``get_total_irradiance`` (isotropic sky) transposes them to each
panel's tilt and azimuth. An optional, seeded cloudiness scales the clear sky by a smooth
clear-sky index in ``[1 - cloudiness, 1]``, the same sky over the whole community.

The paper's three PV types (Ausgrid 2012 generation data) are not available; ours are three
5 kW-peak roofs (area * module efficiency * 1 kW/m^2 = 5 kW at standard test conditions)
facing north, east and west, so their output peaks at different times of day.

Results are hourly mean powers (kW), the form Eq. 14 scales to settlement intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

STEPS_PER_HOUR = 12  # 5-minute irradiance, averaged to hourly means
PERFORMANCE_RATIO = 0.85


@dataclass(frozen=True)
class Site:
    latitude: float
    longitude: float
    tz: str
    altitude: float = 0.0


SYDNEY = Site(-33.87, 151.21, "Australia/Sydney", 39.0)
DEFAULT_DATE = "2026-11-18"  # a mid-November working weekday (the tariff has a weekday peak)


@dataclass(frozen=True)
class PVType:
    """One roof: panel area (m^2), module efficiency, tilt and azimuth (degrees, 0 = north)."""

    name: str
    area_m2: float
    module_efficiency: float
    tilt: float
    azimuth: float

    @property
    def peak_kw(self) -> float:
        """DC rating at 1 kW/m^2 (standard test conditions)."""
        return self.area_m2 * self.module_efficiency

    @property
    def sigma(self) -> float:
        """Eq. 1's conversion efficiency, AC side (module efficiency * performance ratio)."""
        return self.module_efficiency * PERFORMANCE_RATIO


PV_TYPES: tuple[PVType, ...] = (
    PVType("north", area_m2=25.0, module_efficiency=0.20, tilt=25.0, azimuth=0.0),
    PVType("east", area_m2=5.0 / 0.18, module_efficiency=0.18, tilt=20.0, azimuth=90.0),
    PVType("west", area_m2=5.0 / 0.22, module_efficiency=0.22, tilt=20.0, azimuth=270.0),
)


def pv_power(area_m2: float, sigma: float, irradiance_kw_m2: np.ndarray) -> np.ndarray:
    """Eq. 1: ``P = A * sigma * r`` (kW), elementwise."""
    return area_m2 * sigma * np.asarray(irradiance_kw_m2, dtype=float)


def cloud_index(cloudiness: float, seed: int, steps: int = 24 * STEPS_PER_HOUR) -> np.ndarray:
    """A smooth clear-sky index in ``[1 - cloudiness, 1]``, deterministic from ``seed``."""
    if not 0.0 <= cloudiness <= 1.0:
        raise ValueError(f"cloudiness must lie in [0, 1], got {cloudiness}")
    if cloudiness == 0.0:
        return np.ones(steps)
    rng = np.random.default_rng(seed)
    noise = rng.random(steps + 2 * STEPS_PER_HOUR)
    kernel = np.hanning(2 * STEPS_PER_HOUR + 1)  # clouds pass over ~an hour
    smooth = np.convolve(noise, kernel / kernel.sum(), mode="same")[
        STEPS_PER_HOUR : STEPS_PER_HOUR + steps
    ]
    lo, hi = smooth.min(), smooth.max()
    cover = (smooth - lo) / (hi - lo) if hi > lo else np.zeros(steps)
    return np.asarray(1.0 - cloudiness * cover, dtype=float)


@lru_cache(maxsize=64)
def _poa_hourly(site: Site, date: str, tilt: float, azimuth: float) -> tuple[float, ...]:
    """Clear-sky plane-of-array irradiance (kW/m^2) at 5-minute midpoints, one local day."""
    import pandas as pd
    from pvlib.irradiance import get_total_irradiance
    from pvlib.location import Location

    loc = Location(site.latitude, site.longitude, tz=site.tz, altitude=site.altitude)
    step = pd.Timedelta(minutes=60 // STEPS_PER_HOUR)
    times = pd.date_range(date, periods=24 * STEPS_PER_HOUR, freq=step, tz=site.tz) + step / 2
    sky = loc.get_clearsky(times, model="simplified_solis")
    sun = loc.get_solarposition(times)
    poa = get_total_irradiance(
        tilt, azimuth, sun["apparent_zenith"], sun["azimuth"], sky["dni"], sky["ghi"], sky["dhi"]
    )["poa_global"]
    return tuple(np.clip(poa.fillna(0.0).to_numpy(dtype=float), 0.0, None) / 1000.0)


def irradiance(
    pv_type: PVType,
    *,
    site: Site = SYDNEY,
    date: str = DEFAULT_DATE,
    cloudiness: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Irradiance on ``pv_type``'s panels (kW/m^2) at 5-minute steps over the local day."""
    poa = np.array(_poa_hourly(site, date, pv_type.tilt, pv_type.azimuth))
    return np.asarray(poa * cloud_index(cloudiness, seed, len(poa)), dtype=float)


def hourly_pv_kw(
    pv_type: PVType,
    *,
    site: Site = SYDNEY,
    date: str = DEFAULT_DATE,
    cloudiness: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Hourly mean PV power (kW, 24 values) of one roof, by Eq. 1."""
    r = irradiance(pv_type, site=site, date=date, cloudiness=cloudiness, seed=seed)
    power = pv_power(pv_type.area_m2, pv_type.sigma, r)
    return np.asarray(power.reshape(24, STEPS_PER_HOUR).mean(axis=1), dtype=float)
