"""Devices under test: what their firmware reports, against the reference instruments.

A DUT is any device marked ``dut = true`` in the rig file. For its rig the controller
samples every instrument each control period and integrates references from the *other*
instruments:

* a BMS's reported change of stored energy, against the battery's bus-side energy
  (meter - PV supply + load) taken through the converter's efficiencies (market.md Eq. 7-11),
  and its reported SOC against its reported energy;
* a meter's counters, against PV supply + battery converter - load, as they measured it.

Powers read at the end of a period stand for the whole period (setpoints are written just
after the reads, so a reading shows the power that held since the last one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.roles import BatteryReading, MeterReading, PowerReading
from drivers.spec import HouseholdSpec
from testbed.run.validation import Check


@dataclass
class DutTracker:
    household: str
    roles: frozenset[str]
    capacity_wh: float
    eta_charge: float
    eta_discharge: float
    ref_stored_wh: float = 0.0
    ref_meter_wh: float = 0.0
    first: tuple[BatteryReading, MeterReading] | None = None
    last: tuple[BatteryReading, MeterReading] | None = None
    _t: float | None = field(default=None, repr=False)

    @classmethod
    def of(cls, h: HouseholdSpec) -> DutTracker | None:
        roles = frozenset(role for role, d in h.devices.items() if d.dut)
        if not roles:
            return None
        p = h.devices["battery"].params
        return cls(h.id, roles, float(p.get("capacity_wh", 100.0)),
                   float(p.get("eta_charge", 0.95)), float(p.get("eta_discharge", 0.95)))

    def sample(self, meter: MeterReading, pv: PowerReading, load: PowerReading,
               bat: BatteryReading) -> None:
        t = max(meter.at, bat.at)
        if self._t is not None:
            dt_h = (t - self._t) / 3600.0
            bus_w = meter.power_w - pv.power_w + load.power_w  # battery's bus-side power
            stored_w = -bus_w / self.eta_discharge if bus_w > 0 else -bus_w * self.eta_charge
            self.ref_stored_wh += stored_w * dt_h
            self.ref_meter_wh += (pv.power_w + bat.power_w - load.power_w) * dt_h
        self._t = t
        self.first = self.first or (bat, meter)
        self.last = (bat, meter)

    def checks(self, index: int, tolerance_pct: float) -> list[Check]:
        if self.first is None or self.last is None:
            return []
        tol = tolerance_pct / 100
        suite, h = f"interval {index} DUT", self.household
        (b0, m0), (b1, m1) = self.first, self.last
        out = []
        if "battery" in self.roles:
            reported = b1.energy_wh - b0.energy_wh
            # Relative to the change, with a floor of 0.1 % of capacity for a near-idle BMS.
            allowed = max(tol * abs(self.ref_stored_wh), 1e-3 * self.capacity_wh)
            out.append(Check(suite, f"household {h} BMS energy change", abs(
                reported - self.ref_stored_wh) <= allowed, self.ref_stored_wh, reported,
                f"BMS reports {reported:+.4f} Wh stored, reference meters {self.ref_stored_wh:+.4f}"
                f" Wh (allowed ±{allowed:.4f} Wh)"))
            soc_wh = b1.soc * self.capacity_wh
            out.append(Check(suite, f"household {h} BMS SOC against its energy", abs(
                soc_wh - b1.energy_wh) <= 1e-3 * self.capacity_wh, b1.energy_wh, soc_wh,
                f"SOC {b1.soc:.4f} of {self.capacity_wh:g} Wh is {soc_wh:.4f} Wh, "
                f"BMS energy {b1.energy_wh:.4f} Wh"))
        if "meter" in self.roles:
            counted = m1.net_wh - m0.net_wh
            allowed = max(tol * abs(self.ref_meter_wh), 1e-3)
            out.append(Check(suite, f"household {h} meter counters", abs(
                counted - self.ref_meter_wh) <= allowed, self.ref_meter_wh, counted,
                f"meter counted {counted:+.4f} Wh, supply+converter-load measured "
                f"{self.ref_meter_wh:+.4f} Wh (allowed ±{allowed:.4f} Wh)"))
        return out
