"""Before a run starts: every setpoint the scenario implies, checked against every limit.

The check replays the control loop's own setpoints (``controller.setpoints``) over each
interval at the rig's scales, and the battery's state of energy through the plant's own
Eq. 7-11 model, so what is checked is what will be written. A run that would exceed a limit
does not start; the error names device, quantity, required and allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.bench.budget import over_budget
from drivers.mock.plant import BatteryModel
from drivers.registry import Bench
from drivers.spec import RigSpec
from testbed.controller import RigPlan, Timeline, setpoints
from testbed.errors import InputError

# The profiles' resolution (testbed.profiles: PV in 5-minute steps, load hourly).
PREFLIGHT_STEPS_PER_DAY = 288


@dataclass(frozen=True)
class Violation:
    device: str
    quantity: str
    required: float
    allowed: str

    def __str__(self) -> str:
        text = f"{self.device}: {self.quantity} needs {self.required:.4g}, allowed {self.allowed}"
        if self.quantity == "soc":  # the energy does not fit: say which knob that is
            text += " (capacity_wh too small for the scenario at the rig's time and power " \
                    "scales, or soc_initial too near a bound)"
        return text


class PreflightError(InputError):
    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        lines = "\n  ".join(str(v) for v in violations)
        super().__init__("pre-flight check", f"the run would exceed device limits:\n  {lines}")


def check(rig: RigSpec, intervals: list[tuple[float, float, list[RigPlan]]]) -> list[Violation]:
    """``intervals``: (start hour, hours, plans). Returns every violation found (worst first)."""
    peaks: dict[tuple[str, str], tuple[float, str]] = {}

    def need(device: str, quantity: str, value: float, limit: float | None, low: float = 0.0,
             unit: str = "") -> None:
        if limit is None:
            return
        if not low - 1e-9 <= value <= limit + 1e-9:
            key = (device, quantity)
            worst = max(abs(value), abs(peaks.get(key, (0.0, ""))[0]))
            peaks[key] = (value if abs(value) == worst else peaks[key][0],
                          f"[{low:g}, {limit:g}]{unit}")

    batteries = {}
    for h in rig.households:
        spec = h.devices["battery"]
        p = spec.params
        cap = float(p.get("capacity_wh", 100.0))
        batteries[h.id] = BatteryModel(
            capacity_wh=cap, energy_wh=cap * float(p.get("soc_initial", 0.5)),
            max_power_w=float("inf"), soc_min=0.0, soc_max=1.0,
            eta_charge=float(p.get("eta_charge", 0.95)),
            eta_discharge=float(p.get("eta_discharge", 0.95)),
            self_discharge_per_h=float(p.get("self_discharge_per_h", 0.0)))

    v = rig.bus_voltage_v
    for start, hours, plans in intervals:
        tl = Timeline.of(rig, hours)
        # The profiles are piecewise constant in 5-minute steps, so the setpoints are too: one
        # sample at the middle of each step sees every peak, and the state of charge, monotonic
        # within a step, is at its extremes at the step ends, where it is checked. A real-time
        # day (86,400 control periods) is checked as fast as an accelerated one.
        coarse = max(1, round(hours * PREFLIGHT_STEPS_PER_DAY / 24))
        if tl.steps > coarse:
            tl = Timeline(tl.duration_s, coarse)
        devices = {plan.household: rig.household(plan.household).devices for plan in plans}
        for k in range(tl.steps):
            hour = tl.hour(start, k, rig.time_scale)
            bus = 0.0
            for plan in plans:
                dev = devices[plan.household]
                sp = setpoints(rig, plan, tl, hour)
                for role, watts in (("pv", sp.pv_w), ("load", sp.load_w)):
                    lim = dev[role].limits
                    need(dev[role].name, "power_w", watts, lim.max_power_w, unit=" W")
                    need(dev[role].name, "current_a", watts / v, lim.max_current_a, unit=" A")
                bl = dev["battery"].limits
                if bl.max_power_w is not None:
                    need(dev["battery"].name, "power_w", sp.feedforward_w, bl.max_power_w,
                         low=-bl.max_power_w, unit=" W")
                bat = batteries[plan.household]
                bat.integrate(sp.feedforward_w, tl.dt)
                need(dev["battery"].name, "soc", bat.soc,
                     bl.soc_max if bl.soc_max is not None else 1.0,
                     low=bl.soc_min if bl.soc_min is not None else 0.0)
                bus += sp.pv_w + sp.feedforward_w - sp.load_w
            gl = rig.grid.limits.max_power_w
            if gl is not None:
                need(rig.grid.name, "power_w", bus, gl, low=-gl, unit=" W")
    out = [Violation(d, q, val, allowed) for (d, q), (val, allowed) in peaks.items()]
    return sorted(out, key=lambda x: (x.device, x.quantity))


WATCHED_ROLES = ("pv", "load", "battery", "relay")  # devices that hold a rig live


def unwatched(rig: RigSpec) -> list[str]:
    """The instrument devices that would stay live if the controller died: supplies, loads,
    converters and relays whose instrument file declares no communication ``watchdog``
    (the controller arms every declared one). Mock devices end with the process."""
    from drivers.instruments.model import load_instrument

    out = []
    for h in rig.households:
        for role in WATCHED_ROLES:
            spec = h.devices[role]
            if spec.driver in ("scpi", "modbus") and spec.model:
                try:
                    watchdog = load_instrument(spec.model).watchdog
                except ValueError:
                    continue  # the driver factory reports a bad file, with its place
                if watchdog is None:
                    out.append(spec.name)
    return out


def ensure_fits(rig: RigSpec, intervals: list[tuple[float, float, list[RigPlan]]]) -> None:
    violations = check(rig, intervals)
    if violations:
        raise PreflightError(violations)


class LinkBudgetError(InputError):
    """The control period is shorter than a shared serial line can carry: one line per
    line over budget, with its computed figures (``drivers.bench.budget``)."""


def ensure_links_carry(bench: Bench, rig: RigSpec) -> None:
    """Refuse (LinkBudgetError, the bench unconnected) a control period whose exchanges
    need more than half of it on any shared serial line."""
    over = over_budget(bench, rig.control_period_s)
    if over:
        raise LinkBudgetError(f"{rig.source}: control_period_s",
                              "the links cannot carry this control period (half of it is "
                              "the exchange deadline):\n  " + "\n  ".join(over))
