"""Before a run starts: every setpoint the scenario implies, checked against every limit.

The check replays the control loop's own setpoints (``controller.setpoints``) over each
interval at the rig's scales, and the battery's state of energy through the plant's own
Eq. 7-11 model, so what is checked is what will be written. A run that would exceed a limit
does not start; the error names device, quantity, required and allowed values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivers.mock.plant import BatteryModel
from drivers.registry import Bench
from drivers.spec import DeviceSpec, RigSpec
from testbed.errors import InputError
from testbed.run.controller import RigPlan, Timeline, setpoints_of

if TYPE_CHECKING:
    from drivers.instruments.model import Ratings

# The profiles' resolution (testbed.config.profiles: PV in 5-minute steps, load hourly).
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


@dataclass(frozen=True)
class Refusal:
    """A rating or resolution the instrument lacks for this run, said with its figures."""

    device: str
    text: str

    def __str__(self) -> str:
        return f"{self.device}: {self.text}"


class PreflightError(InputError):
    def __init__(self, violations: Sequence[Violation | Refusal]) -> None:
        self.violations = violations
        lines = "\n  ".join(str(v) for v in violations)
        super().__init__("pre-flight check", "the run would exceed what the rig's limits "
                         f"and instruments allow:\n  {lines}")


def _ratings(spec: DeviceSpec) -> Ratings | None:
    """The ratings the device's instrument file states (None for mock devices, which have
    no file: their run imports no instrument model); a battery of two instruments is rated
    by its converter."""
    if "converter" in spec.parts:
        return _ratings(spec.parts["converter"])
    if spec.driver not in ("scpi", "modbus") or not spec.model:
        return None
    from drivers.instruments.model import load_instrument

    try:
        return load_instrument(spec.model).ratings
    except ValueError:
        return None  # the driver factory reports a bad file, with its place


def _capped(limit: float | None, rating: float | None) -> float | None:
    """The tighter of a rig limit and an instrument rating (None: neither stated)."""
    given = [x for x in (limit, rating) if x is not None]
    return min(given) if given else None


def ratings_refusals(rig: RigSpec) -> list[Refusal]:
    """Rig limits above the instrument's ratings, and implied settings it cannot make: a
    current-setpoint supply holds the bus at ``bus_voltage_v * voltage_headroom``
    (:func:`drivers.instruments.model.rating_problems`)."""
    out: list[Refusal] = []
    devices = [d for h in rig.households for d in h.devices.values()] + [rig.grid]
    for spec in devices:
        # a role of two instruments is rated by the parts that carry its power, each in its
        # own role: a battery by its converter, the grid node by its supply and its load
        rated = [(part.name, part.role, part) for key, part in spec.parts.items()
                 if key in RATED_PARTS.get(spec.role, ())] if spec.parts \
            else [(spec.name, spec.role, spec)]
        for name, role, part in rated:
            if part.driver not in ("scpi", "modbus") or not part.model:
                continue
            from drivers.instruments.model import load_instrument, rating_problems

            try:
                inst = load_instrument(part.model)
            except ValueError:
                continue  # the driver factory reports a bad file, with its place
            out += [Refusal(name, problem)
                    for problem in rating_problems(inst, role, spec.limits,
                                                   rig.bus_voltage_v)]
    return out


# The parts of a role of two instruments that its rig limits and the bus rate.
RATED_PARTS: dict[str, tuple[str, ...]] = {"battery": ("converter",),
                                           "grid": ("supply", "load")}


def resolution_refusals(rig: RigSpec, plans: list[RigPlan], hours: float) -> list[Refusal]:
    """Meters that cannot resolve a household's trade within the rig's ``tolerance_pct``.

    A household's trade over an interval is ``|target_kwh|`` market kWh, that is
    ``|target_kwh| * energy_scale`` lab Wh (``energy_scale = 1000 * power_scale /
    time_scale``, with ``time_scale`` as ``--speed`` sets it); its meter must count it to
    ``tolerance_pct`` %, so one count must be at most ``tolerance_pct / 100`` of it. The
    refusal gives the figures, the energy per control period, and the largest time scale
    (``--speed``) and smallest power scale that would do."""
    out: list[Refusal] = []
    tol = rig.tolerance_pct / 100
    for plan in plans:
        if plan.target_kwh == 0:
            continue
        meter = rig.household(plan.household).devices["meter"]
        if meter.driver not in ("scpi", "modbus") or not meter.model:
            continue
        from drivers.instruments.model import energy_resolution_wh, load_instrument

        try:
            step = energy_resolution_wh(load_instrument(meter.model))
        except ValueError:
            continue
        lab_wh = abs(plan.target_kwh) * rig.energy_scale
        if step <= 0 or step <= tol * lab_wh:
            continue
        periods = max(1.0, hours * 3600 / rig.time_scale / rig.control_period_s)
        per_period = lab_wh / periods
        max_speed = abs(plan.target_kwh) * 1000 * rig.power_scale * tol / step
        min_power = step * rig.time_scale / (abs(plan.target_kwh) * 1000 * tol)
        out.append(Refusal(meter.name, (
            f"{meter.model} counts {step:g} Wh, but household {plan.household}'s trade of "
            f"{abs(plan.target_kwh):g} kWh is {lab_wh:.4g} lab Wh at power_scale "
            f"{rig.power_scale:g} and time_scale {rig.time_scale:g} (about "
            f"{per_period:.3g} Wh a control period): tolerance {rig.tolerance_pct:g} % needs "
            f"a count of at most {tol * lab_wh:.3g} Wh. Use time_scale (--speed) at most "
            f"{max_speed:.4g}, power_scale at least {min_power:.4g}, or a finer meter")))
    return out


def lab_plan(rig: RigSpec, plans: list[RigPlan], hours: float) -> list[str]:
    """One line per household: the lab energy it will move and its mean lab power, for the
    operator to see before a real-time run starts."""
    lab_s = hours * 3600 / rig.time_scale
    return [f"household {p.household}: {p.target_kwh:+g} kWh -> "
            f"{p.target_kwh * rig.energy_scale:+.4g} lab Wh over {lab_s:.4g} lab s "
            f"(mean {p.target_kwh * rig.energy_scale * 3600 / lab_s:+.4g} W)" for p in plans]


def check(rig: RigSpec, intervals: list[tuple[float, float, list[RigPlan]]]) -> list[Violation]:
    """``intervals``: (start hour, hours, plans). Returns every violation found (worst first):
    setpoints beyond the rig's limits or the instruments' rated power and current."""
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
    rating = {d.name: _ratings(d) for h in rig.households for d in h.devices.values()}
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
        at = {plan.household: setpoints_of(rig, plan, tl) for plan in plans}
        for k in range(tl.steps):
            hour = tl.hour(start, k, rig.time_scale)
            bus = 0.0
            for plan in plans:
                dev = devices[plan.household]
                sp = at[plan.household](hour)
                for role, watts in (("pv", sp.pv_w), ("load", sp.load_w)):
                    lim, rated = dev[role].limits, rating[dev[role].name]
                    need(dev[role].name, "power_w", watts,
                         _capped(lim.max_power_w, rated.power_w if rated else None), unit=" W")
                    need(dev[role].name, "current_a", watts / v,
                         _capped(lim.max_current_a, rated.current_a if rated else None), unit=" A")
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
    out = []
    for h in rig.households:
        for role in WATCHED_ROLES:
            spec = h.devices[role]
            spec = spec.parts.get("converter", spec)  # a split battery: its converter
            if spec.driver in ("scpi", "modbus") and spec.model:
                from drivers.instruments.model import load_instrument

                try:
                    watchdog = load_instrument(spec.model).watchdog
                except ValueError:
                    continue  # the driver factory reports a bad file, with its place
                if watchdog is None:
                    out.append(spec.name)
    return out


def ensure_fits(rig: RigSpec, intervals: list[tuple[float, float, list[RigPlan]]]) -> None:
    """PreflightError listing every instrument rating the rig exceeds, every meter that
    cannot resolve a trade, and every setpoint beyond a limit; nothing when all fit."""
    refusals = ratings_refusals(rig)
    for _start, hours, plans in intervals:
        refusals += resolution_refusals(rig, plans, hours)
    violations: list[Violation | Refusal] = [*refusals, *check(rig, intervals)]
    if violations:
        raise PreflightError(violations)


class LinkBudgetError(InputError):
    """The control period is shorter than a shared serial line can carry: one line per
    line over budget, with its computed figures (``drivers.bench.budget``)."""


def ensure_links_carry(bench: Bench, rig: RigSpec) -> None:
    """Refuse (LinkBudgetError, the bench unconnected) a control period whose exchanges
    need more than half of it on any shared serial line. An in-process bench has no
    line (and this module then never loads the Modbus stack)."""
    if bench.in_process:
        return
    from drivers.bench.budget import over_budget

    over = over_budget(bench, rig.control_period_s)
    if over:
        raise LinkBudgetError(f"{rig.source}: control_period_s",
                              "the links cannot carry this control period (half of it is "
                              "the exchange deadline):\n  " + "\n  ".join(over))
