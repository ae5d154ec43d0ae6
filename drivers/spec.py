"""What a rig file says about the bench, as typed values (parsed in ``testbed.config.rig``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class DriverConfigError(ValueError):
    """A device a rig file describes that its driver cannot build (resource form, instrument
    model, protocol or role), found before a run starts; the message names the device."""


@dataclass(frozen=True, slots=True)
class Limits:
    """A device's safe operating envelope, in lab units. ``None`` means not limited."""

    max_power_w: float | None = None
    max_voltage_v: float | None = None
    max_current_a: float | None = None
    soc_min: float | None = None
    soc_max: float | None = None
    max_temperature_c: float | None = None


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One instrument: its role, which driver speaks to it, where it is, its limits.

    ``params`` holds what the mock plant (and some drivers) need beyond limits, e.g. a
    battery's capacity and efficiencies; ``dut`` marks a device under test.
    """

    name: str
    role: str
    driver: str
    limits: Limits
    resource: str | None = None
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    dut: bool = False
    # A battery of two instruments (driver "split"): its "bms" and "converter", each with
    # its own driver, resource and model (roles "bms" and "converter").
    parts: dict[str, DeviceSpec] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HouseholdSpec:
    id: str
    devices: dict[str, DeviceSpec]  # role -> device

    @property
    def rated_power_w(self) -> float | None:
        """The most power (lab W) the rig can move across its meter, either way: the
        meter's own ``max_power_w`` if given, else the larger of PV + battery (export) and
        load + battery (import); None when a rating is missing."""
        meter = self.devices.get("meter")
        if meter is not None and meter.limits.max_power_w is not None:
            return meter.limits.max_power_w
        ratings = {role: self.devices[role].limits.max_power_w
                   for role in ("pv", "load", "battery") if role in self.devices}
        if len(ratings) < 3 or any(v is None for v in ratings.values()):
            return None
        pv, load, battery = (float(ratings[r] or 0.0) for r in ("pv", "load", "battery"))
        return max(pv, load) + battery


@dataclass(frozen=True, slots=True)
class RigSpec:
    """A whole rig: the households, the grid node, and the market<->bench scales.

    ``t_lab = t_real / time_scale``; ``P_lab = P_real * power_scale``.
    """

    name: str
    households: tuple[HouseholdSpec, ...]
    grid: DeviceSpec
    time_scale: float
    power_scale: float
    control_period_s: float = 1.0
    bus_voltage_v: float = 48.0
    tolerance_pct: float = 0.5
    dut_tolerance_pct: float = 1.0
    source: str = "<memory>"
    description: str = ""

    @property
    def energy_scale(self) -> float:
        """Lab Wh per market kWh: ``E_lab = E_real * power_scale / time_scale``."""
        return 1000.0 * self.power_scale / self.time_scale

    def household(self, hid: str) -> HouseholdSpec:
        for h in self.households:
            if h.id == hid:
                return h
        raise KeyError(f"rig {self.name!r} has no household {hid!r}")
