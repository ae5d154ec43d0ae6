"""The household battery of the paper's Eq. 7-11, over arrays of batteries (one per home).

* Eq. 7, one step of ``dt`` hours at power ``P`` (kW, > 0 charging):
  charging    ``E[t+1] = E[t] + dt*eta_c*P - E[t]*eta_l*dt``,
  discharging ``E[t+1] = E[t] - dt*|P|/eta_d - E[t]*eta_l*dt``;
* Eq. 8, ``SOC = E / E_rate``; Eq. 9, ``|P| <= P_rate``;
* Eq. 10, ``SOC_min <= SOC < SOC_max``: the charger stops 1 Wh below ``SOC_max`` and the
  discharger 1 Wh above ``SOC_min`` (a controller's margin; float rounding never crosses);
* Eq. 11, ``SOC >= SOC_dsr`` at the end of the day: :func:`reserve` is the energy a battery
  must keep now so that the PV still to come can bring it back to ``SOC_dsr``.

Functions take and return numpy arrays so that a day of 1,000 homes steps every battery
that starts an interval at once. The battery is charged only from its own PV (the paper:
"users are disabled to store the power they get from the power grid"). Defaults: 5,000 Wh
(the paper), 2.5 kW rated (0.5 C, typical of 5 kWh home batteries), 95 % charge and
discharge efficiency (~90 % round trip), self-discharge 0.01 %/h (~7 %/month, conservative
for lithium-ion), SOC window 10-95 %, 20 % kept at the end of the day for the night
(``SOC_dsr``: the paper gives no value; 20 % is a common backup-reserve setting). The day
starts at ``SOC_dsr``: yesterday ended there, so the day is a steady state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CUTOFF_KWH = 0.001  # controller margin inside the Eq. 10/11 bounds (1 Wh)
Array = np.ndarray


@dataclass(frozen=True)
class BatterySpec:
    capacity_kwh: float = 5.0
    rated_kw: float = 2.5
    eta_c: float = 0.95
    eta_d: float = 0.95
    eta_l: float = 0.0001  # per hour
    soc_min: float = 0.10
    soc_max: float = 0.95
    soc_dsr: float = 0.20

    def __post_init__(self) -> None:
        if not 0.0 <= self.soc_min <= self.soc_dsr < self.soc_max <= 1.0:
            raise ValueError("need 0 <= soc_min <= soc_dsr < soc_max <= 1")
        if min(self.capacity_kwh, self.rated_kw, self.eta_c, self.eta_d) <= 0:
            raise ValueError("capacity, rated power and efficiencies must be > 0")
        if not 0.0 <= self.eta_l < 1.0:
            raise ValueError("eta_l must lie in [0, 1)")

    @property
    def floor(self) -> float:
        """Least stored energy (kWh) a discharge may leave (Eq. 10, with the margin)."""
        return self.soc_min * self.capacity_kwh + CUTOFF_KWH

    @property
    def ceiling(self) -> float:
        """Most stored energy (kWh) a charge may reach (Eq. 10: strictly below SOC_max)."""
        return self.soc_max * self.capacity_kwh - CUTOFF_KWH

    @property
    def start_kwh(self) -> float:
        return self.soc_dsr * self.capacity_kwh


def soc(spec: BatterySpec, energy: Array) -> Array:
    """Eq. 8."""
    return np.asarray(energy / spec.capacity_kwh, dtype=float)


def reserve(spec: BatterySpec, chargeable_kwh: Array, hours_left: Array) -> Array:
    """Least stored energy to keep now so that Eq. 11 can still hold at the day's end.

    ``chargeable_kwh`` is the PV energy the battery can still take today (forecast);
    ``hours_left`` covers self-discharge until midnight: steps of ``dt`` keep at least
    ``prod(1 - eta_l*dt) >= 1 - eta_l*hours_left`` of the energy, hence the division.
    """
    target = spec.start_kwh / (1.0 - spec.eta_l * hours_left) + CUTOFF_KWH
    return np.maximum(spec.floor, target - spec.eta_c * chargeable_kwh)


def charge_limit(spec: BatterySpec, energy: Array, dt: Array) -> Array:
    """Most input energy (kWh) each battery accepts over ``dt`` hours (Eq. 9, 10)."""
    room = (spec.ceiling - energy * (1.0 - spec.eta_l * dt)) / spec.eta_c
    return np.asarray(np.clip(np.minimum(spec.rated_kw * dt, room), 0.0, None), dtype=float)


def discharge_limit(spec: BatterySpec, energy: Array, dt: Array, keep: Array) -> Array:
    """Most output energy (kWh) over ``dt`` hours without dropping below ``keep``."""
    above = (energy * (1.0 - spec.eta_l * dt) - np.maximum(keep, spec.floor)) * spec.eta_d
    return np.asarray(np.clip(np.minimum(spec.rated_kw * dt, above), 0.0, None), dtype=float)


def available(spec: BatterySpec, energy: Array, keep: Array) -> Array:
    """Output energy (kWh) each battery holds above ``keep`` (and its SOC_min)."""
    return np.asarray(np.clip((energy - np.maximum(keep, spec.floor)) * spec.eta_d, 0.0, None),
                      dtype=float)


def step(spec: BatterySpec, energy: Array, power_kw: Array, dt: Array) -> Array:
    """Eq. 7 for one step: ``power_kw`` > 0 charges, < 0 discharges, with leakage."""
    if np.any(np.abs(power_kw) > spec.rated_kw + 1e-9):
        raise ValueError(f"|P| = {np.abs(power_kw).max()} kW exceeds the rated "
                         f"{spec.rated_kw} kW (Eq. 9)")
    gain = np.where(power_kw >= 0.0, spec.eta_c * power_kw, power_kw / spec.eta_d)
    return np.asarray(energy + dt * gain - energy * spec.eta_l * dt, dtype=float)
