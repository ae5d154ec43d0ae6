"""The interval cycle: drive every rig so its metered energy tracks its cleared trajectory.

For each trading interval the controller is given, per household, a day profile (PV and
load) and a target: the energy its rig must put onto the bus over the interval (its
cleared trades plus what it settles with the grid). Every control period it reads all
meters concurrently, sets PV and load from the profile, and sets the battery converter so
that, one period later, the rig's metered energy is back on the straight line from zero to
its target (a dead-beat correction on the *measured* energy: the loop closes on the meters,
so battery losses and limits show up as deviations rather than being assumed away).

The supervisor part: a rig whose reading fails or grows older than ``stale_periods``
control periods, or whose contactor cannot be read or has dropped out, is taken off the bus
(outputs off, relay open) and driven no more; the settlement then meets its remaining
trades with the grid. A reading outside what the rig can show (bus voltage, ratings) is
not used. An energy counter that goes backwards, or
jumps further than the rig's rated power allows in the time elapsed, is a fault: the rig
leaves the bus and its metered energy for the interval is *disputed* (not settled). An
emergency stop ends the interval at once and the caller's ``finally`` leaves the whole
bench safe.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from drivers.clock import Clock
from drivers.limits import LimitError
from drivers.registry import Bench, HouseholdDevices
from drivers.roles import BatteryReading, Device, MeterReading
from drivers.spec import RigSpec
from testbed.config.profiles import DayProfile
from testbed.run.events import EventBus
from testbed.run.validation import Check

if TYPE_CHECKING:
    from testbed.run.dut import DutTracker

T = TypeVar("T")

# BMS alarms that are states of charge, not faults: the converter limits itself.
HOLD_MIN_S = 2.0  # lab seconds
# The battery's reading is timed apart from its setpoint writes: a converter that answers
# every query but refuses every setting has not answered the controller (it is held, then
# lost), however fresh its readings.
BATTERY_STATE = "battery state"
# Why a rig left the bus, when coming back may undo it: its meter or contactor could not be
# read (silent, garbled, late). A rig that left for what its instruments *said* (an alarm,
# a temperature, a counter gone backwards, a refused limit) stays off for the run.
READMITTABLE = ("meter lost", "meter unreadable at start", "meter reading", "relay lost",
                "late: ")
BENIGN_ALARMS = frozenset({"soc_low", "soc_high"})


async def _quiet(aw: Awaitable[None]) -> None:
    """``await aw``, its failure ignored (a best-effort safe state; the final one reports)."""
    with contextlib.suppress(Exception):
        await aw


def _refused(exc: Exception) -> bool:
    """A write the limit guard refused before it left: the controller asked for something
    outside the rig's limits, so the rig leaves the bus at once. (An instrument that is
    silent, late or refuses a setting is held, then driven without: ``_lose``.)"""
    return isinstance(exc, LimitError)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Done callback: a late exchange's failure is looked at (or dropped), never logged as
    never retrieved."""
    if not fut.cancelled():
        fut.exception()


async def _grab(aw: Awaitable[T]) -> T | BaseException:
    """``await aw``, its exception returned rather than raised."""
    try:
        return await aw
    except Exception as exc:  # returned to the caller, like gather's
        return exc


class EmergencyStop(Exception):
    """Raised inside the run when an emergency stop was requested (CLI, API or MQTT)."""


class GridLost(EmergencyStop):
    """The grid node stopped answering: the run stops (status ``aborted``), the bench goes
    safe, and the interval's measurement so far is in the safety log (``interval_aborted``).
    """


class Late(TimeoutError):
    """An exchange still running at its deadline (it goes on alone, bounded by the
    driver's own timeouts): the device may only be queued behind another on its link."""


class SafeStateIncomplete(Exception):
    """The safe state could not be confirmed on every device: ``devices`` lists
    ``"name: why"`` for each one still possibly live. A run that ends so never exits 0."""

    def __init__(self, devices: list[str]) -> None:
        self.devices = devices
        super().__init__("safe state incomplete, possibly still live: " + "; ".join(devices))


@dataclass(frozen=True)
class RigPlan:
    """What one rig does over an interval, in market units (kWh, hours)."""

    household: str
    target_kwh: float  # net energy onto the bus over the interval (+ export)
    profile: DayProfile


class Setpoints(NamedTuple):
    """Lab watts for one control period (a tuple: 14,400 are made in a mock day)."""

    pv_w: float
    load_w: float
    feedforward_w: float  # battery power that holds the committed export at zero error


@dataclass(frozen=True)
class Timeline:
    """The control periods of one interval, in lab seconds."""

    duration_s: float
    steps: int

    @property
    def dt(self) -> float:
        return self.duration_s / self.steps

    @classmethod
    def of(cls, rig: RigSpec, hours: float) -> Timeline:
        duration = hours * 3600.0 / rig.time_scale
        return cls(duration, max(1, round(duration / rig.control_period_s)))

    def hour(self, start_hour: float, k: int, time_scale: float) -> float:
        """Market hour at the middle of control period ``k``."""
        return start_hour + (k + 0.5) * self.dt * time_scale / 3600.0


def setpoints(rig: RigSpec, plan: RigPlan, tl: Timeline, hour: float) -> Setpoints:
    """Profile -> lab setpoints; shared by the control loop and the pre-flight check."""
    return setpoints_of(rig, plan, tl)(hour)


def setpoints_of(rig: RigSpec, plan: RigPlan, tl: Timeline) -> Callable[[float], Setpoints]:
    """:func:`setpoints` as a function of the market hour alone, what does not change over
    the interval (the scales, the committed power) worked out once: the same arithmetic,
    so the same watts to the last bit (the control loop calls it 14,400 times a mock day)."""
    kw_to_w = 1000.0 * rig.power_scale
    commit = plan.target_kwh * rig.energy_scale * 3600.0 / tl.duration_s
    pv_kw, load_kw = plan.profile.pv_kw, plan.profile.load_kw

    def at(hour: float) -> Setpoints:
        pv = pv_kw(hour) * kw_to_w
        load = load_kw(hour) * kw_to_w
        return Setpoints(pv, load, commit - (pv - load))
    return at


# A reading is plausible up to these multiples of the rig's own figures.
VOLTAGE_MARGIN = 1.5  # x bus voltage
POWER_MARGIN = 1.5  # x rated power


def counter_fault(prev: MeterReading, new: MeterReading, rated_w: float | None,
                  period_s: float) -> str | None:
    """Why the energy counters from ``prev`` to ``new`` cannot be true, or None.

    A counter may not go back by more than one count (``resolution_wh``), nor gain more
    than ``rated_w`` over the time between the readings plus one control period (the
    readings' own latency), plus one count. Sources: the meter's declared resolution, the
    rig file's ratings (``HouseholdSpec.rated_power_w``)."""
    slack = max(prev.resolution_wh, new.resolution_wh) + 1e-6
    elapsed = max(new.at - prev.at, 0.0)
    # the control loop's case, every period of every rig: both counters plausible
    imported, exported = new.import_wh - prev.import_wh, new.export_wh - prev.export_wh
    if -slack <= imported and -slack <= exported and (rated_w is None or max(
            imported, exported) <= rated_w * (elapsed + period_s) / 3600.0 + slack):
        return None
    for name in ("import_wh", "export_wh"):
        before, after = getattr(prev, name), getattr(new, name)
        step = after - before
        if step < -slack:
            return f"{name} went backwards from {before:.10g} to {after:.10g} Wh"
        if rated_w is not None:
            allowed = rated_w * (elapsed + period_s) / 3600.0 + slack
            if step > allowed:
                return (f"{name} jumped {step:.10g} Wh in {elapsed:.3g} s, more than the "
                        f"rig's {rated_w:g} W rating allows ({allowed:.3g} Wh)")
    return None


@dataclass
class IntervalMeasurement:
    start_s: float
    end_s: float
    metered_wh: dict[str, float]  # lab Wh, export - import over the interval
    grid_import_wh: float
    grid_export_wh: float
    readings: list[dict[str, Any]] = field(default_factory=list)
    tripped: dict[str, str] = field(default_factory=dict)  # household -> why it left the bus
    dut_checks: list[Check] = field(default_factory=list)
    disputed: dict[str, str] = field(default_factory=dict)  # household -> why not settled
    # household -> {"reason", "off_s", "missed_wh"}: rigs that left the bus and came back
    # this interval (their energy while off, "missed", is the target they could not follow)
    readmitted: dict[str, dict[str, Any]] = field(default_factory=dict)


async def settle_all(aws: Iterable[Awaitable[T]], *, concurrent: bool = True,
                     ) -> list[T | BaseException]:
    """Await every one and return its result or its exception, in order (like
    ``asyncio.gather(..., return_exceptions=True)``).

    ``concurrent=False`` awaits them in turn, without a task each: for in-process devices,
    which answer without ever suspending, that is the same result at a fraction of the cost
    (the mock day's 76,000 tasks were a third of ``testbed run scenario2``).
    """
    if concurrent:
        return list(await asyncio.gather(*aws, return_exceptions=True))
    out: list[T | BaseException] = []
    for aw in aws:
        try:
            out.append(await aw)
        except Exception as exc:
            out.append(exc)
    return out


class Controller:
    def __init__(self, bench: Bench, clock: Clock, events: EventBus | None = None,
                 stale_periods: int = 3) -> None:
        self.bench = bench
        self.rig = bench.rig
        self.clock = clock
        self.events = events or EventBus()
        self.stale_periods = stale_periods
        self.tripped: dict[str, str] = {}
        self.write_latency = 0.0  # seconds from issuing setpoints to all having landed
        self.last_meter: dict[str, MeterReading] = {}  # across intervals: counters go on
        self.disputed: dict[str, str] = {}  # this interval's disputed households
        self._estop = asyncio.Event()
        self.unconfirmed: list[str] | None = None  # after safe_state: devices not confirmed
        self._estop_reason = ""
        # Real instruments are asked concurrently; in-process mocks in turn (see settle_all).
        self._concurrent = not bench.in_process
        self._rated = {h.id: h.rated_power_w for h in bench.rig.households}  # lab W or None
        self._background: set[asyncio.Task[None]] = set()  # trips that must not hold the cycle
        self._seen: dict[tuple[str, str], float] = {}  # (household, role) -> last answer
        self._inflight: dict[tuple[str, str], asyncio.Future[Any]] = {}  # late exchanges
        self.lost: dict[str, dict[str, str]] = {}  # household -> role -> why (driven without)
        self._reenabled: dict[str, int] = {}  # household -> re-enables this interval
        self._left: dict[str, tuple[float, str]] = {}  # household -> (when, why) off the bus

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _guarded(self, household: str, coro: Coroutine[Any, Any, None]) -> None:
        """One rig's step; anything it raises takes that rig (and only it) off the bus."""
        try:
            await coro
        except Exception as exc:  # one rig's fault is that rig's
            await self.trip(household, f"control step failed: {exc!r}")

    async def _finish_steps(self, steps: dict[str, asyncio.Task[None]], dt: float,
                            hold_s: float) -> None:
        """At the interval's end: rig steps still running get the hold limit, then their
        rig leaves the bus; trips under way are awaited."""
        pending = [t for t in steps.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=max(dt, hold_s))
        for hid, task in steps.items():
            if not task.done():
                task.cancel()
                self._spawn(self.trip(hid, "late: control step still running at the "
                                           "interval's end"))
        if self._background:
            await asyncio.wait(set(self._background))

    async def _exchanges(self, household: str, budget_s: float,
                         calls: Sequence[tuple[str, Callable[[], Awaitable[Any]]]],
                         ) -> list[Any]:
        """Each ``(role, call)`` of one rig, its result or its exception. Real instruments:
        all at once, each given ``budget_s`` (the exchange deadline, shorter than the
        period); one still running then is *late* (a :class:`TimeoutError` here) and goes
        on alone: that role is not asked again until it has answered. In-process: in turn."""
        if not self._concurrent:  # without a wrapper coroutine each: the mock day's hot path
            out: list[Any] = []
            seen, now = self._seen, self.clock.now()
            for role, call in calls:
                try:
                    out.append(await call())
                except Exception as exc:  # returned, like gather's
                    out.append(exc)
                else:
                    seen[(household, role)] = now
            return out
        else:
            tasks: list[asyncio.Future[Any] | None] = []
            for role, call in calls:
                busy = self._inflight.get((household, role))
                if busy is not None and not busy.done():
                    tasks.append(None)
                elif busy is not None and not busy.cancelled() and busy.exception():
                    tasks.append(busy)  # a late exchange failed since: this period's answer
                else:
                    fresh = asyncio.ensure_future(call())
                    fresh.add_done_callback(_retrieve)  # a late failure is seen later
                    self._inflight[(household, role)] = fresh
                    tasks.append(fresh)
            live = [t for t in tasks if t is not None and not t.done()]
            if live:
                await asyncio.wait(live, timeout=budget_s)
            out = []
            for (role, _), task in zip(calls, tasks, strict=True):
                if task is not None and task.done():  # answered: not late any more
                    self._inflight.pop((household, role), None)
                if task is None or not task.done():
                    out.append(Late(f"household {household} {role}: no answer "
                                            f"within the {budget_s:.3g} s exchange deadline"))
                elif task.cancelled():
                    out.append(TimeoutError(f"household {household} {role}: cancelled"))
                else:
                    out.append(task.exception() or task.result())
        now = self.clock.now()
        for (role, _), result in zip(calls, out, strict=True):
            if not isinstance(result, BaseException):
                self._seen[(household, role)] = now
        return out

    async def _lose(self, household: str, h: HouseholdDevices, role: str, reason: str,
                    *, writing: bool = False) -> None:
        """An actuator that has not answered for the hold limit is lost: its rig goes on
        without it (the meter closes the loop on the others), its safe state is tried in
        the background, and it is probed each period to come back (:meth:`_probe_lost`).
        ``writing``: its setpoints went unanswered, so the event names the instrument that
        takes them (a battery of two instruments: its converter)."""
        lost = self.lost.setdefault(household, {})
        if role in lost:
            return
        device: Device = getattr(h, role)
        inner = getattr(device, "inner", device)  # past the limit guard
        named = getattr(inner, "converter", device) if writing else device
        lost[role] = f"{named.name}: {reason}"
        self.events.emit("safety", {"event": "device_lost", "household": household,
                                    "device": named.name, "reason": reason})
        self._spawn(_quiet(device.safe_state()))

    async def _probe_lost(self, household: str, h: HouseholdDevices) -> None:
        """Ask each lost actuator who it is; one that answers is brought back through the
        same steps as at start (zero, then output on) and driven again."""
        lost = self.lost[household]
        for role in list(lost):
            device: Device = getattr(h, role)
            key = (household, f"probe {role}")
            busy = self._inflight.get(key)
            if busy is not None:
                if not busy.done():
                    continue
                del self._inflight[key]
                if busy.cancelled() or busy.exception() is not None:
                    continue
                del lost[role]
                self.events.emit("safety", {"event": "device_back", "household": household,
                                            "device": device.name, "identity": busy.result()})
                continue
            self._inflight[key] = asyncio.ensure_future(self._readmit(h, role))
            self._inflight[key].add_done_callback(_retrieve)

    @staticmethod
    async def _readmit(h: HouseholdDevices, role: str) -> str:
        """Re-identify a returning actuator and switch it on at zero, as at start."""
        device: Device = getattr(h, role)
        identity = await device.identify()
        start: dict[str, Callable[[], Awaitable[None]]] = {
            "pv": lambda: h.pv.set_output(True), "load": lambda: h.load.set_input(True),
            "battery": lambda: h.battery.set_enabled(True)}
        zero: dict[str, Callable[[], Awaitable[None]]] = {
            "pv": lambda: h.pv.set_power(0.0), "load": lambda: h.load.set_power(0.0),
            "battery": lambda: h.battery.set_power(0.0)}
        await zero[role]()
        await start[role]()
        return identity

    async def _grid_read(self, t0: float, when: str,
                         metered_wh: dict[str, float]) -> MeterReading:
        """The grid node's meter; its loss stops the run (:class:`GridLost`) after the
        interval's measurement so far is recorded as aborted."""
        try:
            return await self.bench.grid.read()
        except Exception as exc:
            self._grid_lost(t0, f"grid node lost {when}: {exc}", metered_wh)
            raise AssertionError("unreachable") from exc

    def _grid_lost(self, t0: float, reason: str, metered_wh: dict[str, float]) -> None:
        self.events.emit("safety", {"event": "interval_aborted", "reason": reason,
                                    "start_s": t0, "end_s": self.clock.now(),
                                    "metered_wh": metered_wh, "tripped": dict(self.tripped),
                                    "lost": {h: dict(r) for h, r in self.lost.items() if r}})
        raise GridLost(reason)

    async def _battery_state(self, household: str, h: HouseholdDevices,
                             bat: BatteryReading) -> bool:
        """Supervise the converter's own state bits. An alarm that is not a state of
        charge limit takes the rig off the bus; a converter reporting itself disabled
        (its watchdog tripped) is set to zero and re-enabled once, and its rig leaves the
        bus if it reports disabled again. True when the rig may be driven this period."""
        alarms = sorted(set(bat.alarms) - BENIGN_ALARMS)
        if alarms:
            await self.trip(household, f"{h.battery.name} alarm: {', '.join(alarms)}")
            return False
        if bat.enabled:
            self._reenabled.pop(household, None)
            return True
        if self._reenabled.get(household, 0) >= 1:
            await self.trip(household, f"{h.battery.name} reports itself disabled again "
                                       "after a re-enable")
            return False
        self._reenabled[household] = 1
        self.events.emit("safety", {"event": "converter_disabled", "household": household,
                                    "device": h.battery.name, "action": "re-enable"})
        try:
            await h.battery.set_power(0.0)
            await h.battery.set_enabled(True)
        except Exception as exc:  # reported as the trip's reason
            await self.trip(household, f"{h.battery.name} disabled and cannot be "
                                       f"re-enabled: {exc}")
        return False

    # -- safety -------------------------------------------------------------------------

    def emergency_stop(self, reason: str = "emergency stop") -> None:
        """Request a stop from anywhere in the loop's thread (signal handler, API, MQTT)."""
        self._estop_reason = reason
        self._estop.set()

    def _check_estop(self) -> None:
        if self._estop.is_set():
            raise EmergencyStop(self._estop_reason)

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep to the deadline, but wake at once for an emergency stop."""
        if not self.clock.waits:  # virtual time: nothing to race, one scheduling point
            await self.clock.sleep_until(deadline)
            self._check_estop()
            return
        sleeper = asyncio.ensure_future(self.clock.sleep_until(deadline))
        stopper = asyncio.ensure_future(self._estop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopper):
                task.cancel()
        self._check_estop()

    async def safe_state(self) -> list[str]:
        """Every output off and every relay open, whatever state each device is in."""
        devices = self.bench.devices()
        results = await asyncio.gather(*(d.safe_state() for d in devices),
                                       return_exceptions=True)
        failed = [f"{d.name}: {r}" for d, r in zip(devices, results, strict=True)
                  if isinstance(r, BaseException)]
        self.unconfirmed = failed
        self.events.emit("safety", {"event": "safe_state", "complete": not failed,
                                    "errors": failed})
        return failed

    async def trip(self, household: str, reason: str) -> None:
        """Take one rig off the bus and stop driving it."""
        if household in self.tripped:
            return
        self.tripped[household] = reason
        self._left[household] = (self.clock.now(), reason)
        h = self.bench.households[household]
        # Relay first: it isolates the rig even if a supply or the converter is unreachable.
        results = await asyncio.gather(
            *(d.safe_state() for d in (h.relay, h.pv, h.load, h.battery)),
            return_exceptions=True)
        errors = [f"{d.name}: {r}" for d, r in zip((h.relay, h.pv, h.load, h.battery), results,
                                                    strict=True)
                  if isinstance(r, BaseException)]
        # What was commanded is read back: the relay is open only if the relay says so.
        relay_open: bool | None
        try:
            relay_open = not await h.relay.read_closed()
        except Exception as exc:
            relay_open = None
            errors.append(f"{h.relay.name}: read-back failed: {exc}")
        if relay_open is False:
            errors.insert(0, f"{h.relay.name}: relay still closed after the open command")
        self.events.emit("safety", {"event": "rig_off_bus", "household": household,
                                    "reason": reason, "relay_open": relay_open,
                                    "errors": errors})

    async def close(self) -> None:
        await asyncio.gather(*(d.close() for d in self.bench.devices()), return_exceptions=True)

    # -- the cycle ----------------------------------------------------------------------

    async def connect_rigs(self) -> None:
        """Grid node up, every rig onto the bus with its outputs at zero and then on."""
        await self.bench.grid.set_enabled(True)
        houses = self._live()
        await asyncio.gather(*(c for h in houses for c in (
            h.pv.set_power(0.0), h.load.set_power(0.0), h.battery.set_power(0.0))))
        await asyncio.gather(*(h.relay.set_closed(True) for h in houses))
        await asyncio.gather(*(c for h in houses for c in (
            h.pv.set_output(True), h.load.set_input(True), h.battery.set_enabled(True))))
        self.events.emit("safety", {"event": "rigs_connected",
                                    "households": [h.id for h in houses]})

    async def readmit_rig(self, household: str) -> tuple[str, MeterReading]:
        """Bring a rig that left the bus back through the checks it passed at start: its
        meter and contactor identified, the meter read (and the reading judged as every
        reading is), then setpoints at zero, the contactor closed and the outputs on, each
        read back by its driver. Returns (the identities, the reading); raises whatever
        failed (the rig then stays off the bus and is probed again)."""
        h = self.bench.households[household]
        identity = f"{await h.meter.identify()}; {await h.relay.identify()}"
        reading = await h.meter.read()
        if (problem := self.reading_problem(household, reading)) is not None:
            raise ValueError(problem)
        await asyncio.gather(h.pv.set_power(0.0), h.load.set_power(0.0),
                             h.battery.set_power(0.0))
        await h.relay.set_closed(True)
        await asyncio.gather(h.pv.set_output(True), h.load.set_input(True),
                             h.battery.set_enabled(True))
        return identity, reading

    def reading_problem(self, household: str, reading: MeterReading) -> str | None:
        """Why a meter reading cannot be the rig's (outside the bus voltage or the rig's
        ratings), or None. Such a reading is not used, like one never received."""
        rig = self.rig
        if not 0.0 <= reading.voltage_v <= VOLTAGE_MARGIN * rig.bus_voltage_v:
            return f"meter voltage {reading.voltage_v:.6g} V outside [0, " \
                   f"{VOLTAGE_MARGIN * rig.bus_voltage_v:g}] V"
        rated = self._rated[household]
        if rated is not None and abs(reading.power_w) > POWER_MARGIN * rated:
            return f"meter power {reading.power_w:.6g} W beyond {POWER_MARGIN:g} x the " \
                   f"rig's {rated:g} W rating"
        return None

    async def _check_counters(self, household: str, reading: MeterReading) -> bool:
        """Compare with the last good reading; on a counter fault, dispute the interval
        and take the rig off the bus. True when the reading may be used."""
        fault = self._counter_fault(household, reading)
        if fault is not None:
            await self._counter_tripped(household, fault)
            return False
        return True

    def _counter_fault(self, household: str, reading: MeterReading) -> str | None:
        """:meth:`_check_counters` without its trip (the control loop's path, no coroutine
        for the good reading of every period): the fault, or None after keeping
        ``reading`` as the last good one."""
        prev = self.last_meter.get(household)
        fault = None if prev is None else counter_fault(
            prev, reading, self._rated[household], self.rig.control_period_s)
        if fault is None:
            self.last_meter[household] = reading
        return fault

    async def _counter_tripped(self, household: str, fault: str) -> None:
        self.disputed.setdefault(household, f"meter counter fault: {fault}")
        await self.trip(household, f"meter counter fault: {fault}")

    def _live(self) -> list[HouseholdDevices]:
        return [h for hid, h in self.bench.households.items() if hid not in self.tripped]

    async def _meters(self, ids: list[str]) -> dict[str, MeterReading | BaseException]:
        readings = await settle_all((self.bench.households[h].meter.read() for h in ids),
                                    concurrent=self._concurrent)
        return dict(zip(ids, readings, strict=True))

    async def run_interval(self, plans: list[RigPlan], start_hour: float,
                           hours: float) -> IntervalMeasurement:
        rig = self.rig
        tl = Timeline.of(rig, hours)
        houses = self.bench.households
        stale_after = self.stale_periods * rig.control_period_s
        wh_per_kwh = rig.energy_scale

        t0 = self.clock.now()
        self.disputed = {}
        self._reenabled = {}
        grid0 = await self._grid_read(t0, "at the interval's start", {})
        first = await self._meters([p.household for p in plans])
        base: dict[str, float] = {}
        last: dict[str, MeterReading] = {}
        unbased: set[str] = set()  # no meter reading at the start: based when it comes back
        readmitted: dict[str, dict[str, Any]] = {}
        for p in plans:
            r = first[p.household]
            if isinstance(r, BaseException):
                await self.trip(p.household, f"meter unreadable at start: {r}")
                base[p.household] = 0.0
                unbased.add(p.household)
            elif await self._check_counters(p.household, r):
                base[p.household], last[p.household] = r.net_wh, r
            else:
                base[p.household] = 0.0
        log: list[dict[str, Any]] = []
        duts: dict[str, DutTracker] = {}
        if any(d.dut for p in plans for d in rig.household(p.household).devices.values()):
            from testbed.run.dut import DutTracker  # a rig with devices under test only

            duts = {p.household: t for p in plans
                    if (t := DutTracker.of(rig.household(p.household))) is not None}

        # Per rig, what does not change over the interval: the battery's temperature limit
        # and the three power ceilings (inf where the rig file sets none).
        inf = float("inf")
        limits = {h.id: {role: d.limits for role, d in h.devices.items()}
                  for h in rig.households}
        caps = {hid: (lim["battery"].max_temperature_c, lim["pv"].max_power_w or inf,
                      lim["load"].max_power_w or inf, lim["battery"].max_power_w or inf)
                for hid, lim in limits.items()}
        dt = tl.dt
        # how long a late or silent device keeps its last setpoints (at least HOLD_MIN_S: a
        # loaded machine is not a fault), before its rig goes on without it
        hold_s = max(stale_after, HOLD_MIN_S)
        steps: dict[str, asyncio.Task[None]] = {}  # real instruments: each rig on its own
        rows: list[dict[str, Any]] = []
        goals: dict[str, float] = {}  # lab Wh each rig should have metered by now (display)
        setpoints_at = {p.household: setpoints_of(rig, p, tl) for p in plans}
        # each rig's reads of a period (its battery's last, left out once it is lost)
        reads: dict[str, tuple[tuple[str, Callable[[], Awaitable[Any]]], ...]] = {}
        for p in plans:
            h = houses[p.household]
            reads[p.household] = (("meter", h.meter.read), ("relay", h.relay.read_closed),
                                  (BATTERY_STATE, h.battery.read))

        async def step(plan: RigPlan, k: int, deadline: float, hour: float) -> None:
            """One control period of one rig: read, check, decide, write. Its exchanges
            delay only this rig (the cycle does not wait for them: see below), and each
            actuator's only up to the exchange deadline (half a period)."""
            hid = plan.household
            h = houses[hid]
            lost = self.lost.setdefault(hid, {})
            if lost:
                await self._probe_lost(hid, h)
            # the exchange deadline: half a period; when the whole bench is already behind
            # the period (nobody to protect from one device), the hold limit
            budget = dt / 2 if self.clock.now() < deadline else hold_s
            with_bat = "battery" not in lost
            asks = reads[hid]
            got = await self._exchanges(hid, budget, asks if with_bat else asks[:2])
            reading, closed = got[0], got[1]
            bat = got[2] if with_bat else None
            now = self.clock.now()
            if hid in self.tripped:  # taken off the bus while this step waited
                return
            if isinstance(closed, Late):
                return  # perhaps queued on its board's link: hold until it answers
            if isinstance(closed, BaseException):
                # unreadable (a garbled or refused answer): held up to the staleness limit,
                # as a meter is; a contactor that reads open trips at once (below)
                if now - self._seen.get((hid, "relay"), t0) > stale_after:
                    await self.trip(hid, f"relay lost: {closed}")
                return
            if closed is not True:
                await self.trip(hid, "relay reads open while commanded closed")
                return
            if not isinstance(reading, BaseException) and \
                    (problem := self.reading_problem(hid, reading)) is not None:
                reading = ValueError(problem)  # invalid: not used, as if never read
            if isinstance(reading, BaseException):
                # late (perhaps queued behind a silent device on a shared line): hold until
                # its own exchange ends; failed or unusable: hold up to the staleness limit
                if not isinstance(reading, Late) and now - last[hid].at > stale_after:
                    await self.trip(hid, f"meter lost: {reading}")
                return  # hold the setpoints; the reading may come back in time
            if now - reading.at > stale_after:
                await self.trip(hid, f"meter reading {now - reading.at:.3g} s old")
                return
            if with_bat and isinstance(bat, Late):
                # its read only queued (on a gateway shared with a silent BMS, say): driven on
                # the meter this period, its state bits checked when the read lands
                bat = None
            elif with_bat and isinstance(bat, BaseException):
                if now - self._seen.get((hid, BATTERY_STATE), t0) <= hold_s:
                    return  # hold the setpoints for a bounded time
                await self._lose(hid, h, "battery", f"{bat}")
                with_bat = False
            if (fault := self._counter_fault(hid, reading)) is not None:
                await self._counter_tripped(hid, fault)
                return
            hot, pv_max, load_max, bat_max = caps[hid]
            if with_bat and isinstance(bat, BatteryReading):
                if hot is not None and bat.temperature_c > hot:
                    await self.trip(hid, f"battery at {bat.temperature_c:.1f} °C, above "
                                         f"its limit of {hot:g} °C")
                    return
                # its state bits supervised (a coroutine only when there is something to do)
                if (bat.alarms or not bat.enabled or hid in self._reenabled) and \
                        not await self._battery_state(hid, h, bat):
                    return
            last[hid] = reading
            if hid in duts and isinstance(bat, BatteryReading):
                await self._sample_dut(duts[hid], h, reading, bat)
            sp = setpoints_at[hid](hour)
            done = reading.net_wh - base[hid]
            # the straight line to the target, less what the rig missed while off the bus
            missed = readmitted[hid]["missed_wh"] if hid in readmitted else 0.0
            goal = plan.target_kwh * wh_per_kwh * (k + 1) / tl.steps - missed
            goals[hid] = plan.target_kwh * wh_per_kwh * k / tl.steps - missed  # due by now
            # Dead-beat on the measured energy. On a real bench the meter was read a
            # moment ago and the new setpoint lands only after the write's latency; the
            # rig flows at its present power until then, and at the new one after.
            now_s = self.clock.now()
            lag = (now_s - reading.at) + self.write_latency
            left = max(deadline - now_s - self.write_latency, dt / 2)
            bus_w = (goal - done - reading.power_w * lag / 3600.0) * 3600.0 / left
            pv_w = min(sp.pv_w, pv_max)
            load_w = min(sp.load_w, load_max)
            bat_w = max(-bat_max, min(bat_max, bus_w - (pv_w - load_w)))
            writes: Sequence[tuple[str, Callable[[], Awaitable[None]]]] = (
                ("pv", lambda: h.pv.set_power(pv_w)),
                ("load", lambda: h.load.set_power(load_w)),
                ("battery", lambda: h.battery.set_power(bat_w)))
            if lost:  # a lost actuator is not written to (it is probed instead)
                writes = [(role, fn) for role, fn in writes if role not in lost]
            started = self.clock.now()
            results = await self._exchanges(hid, budget, writes)
            took = self.clock.now() - started
            for (role, _), result in zip(writes, results, strict=True):
                if not isinstance(result, BaseException):
                    continue
                if isinstance(result, Exception) and _refused(result):
                    await self.trip(hid, f"write failed: {result}")
                    return
                if now - self._seen.get((hid, role), t0) > hold_s:
                    await self._lose(hid, h, role, f"{result}", writing=True)
            if lost and not {"pv", "load", "battery"} - set(lost):
                await self.trip(hid, "no actuator answers: " + "; ".join(lost.values()))
                return
            if took < budget:  # smoothed write latency of rigs in time, for the lag above
                self.write_latency += 0.3 * (took - self.write_latency)
            rows.append({"t": reading.at, "household": hid, "meter_net_wh": done,
                         "power_w": reading.power_w, "pv_w": pv_w, "load_w": load_w,
                         "battery_w": bat_w if "battery" not in lost else None,
                         "soc": bat.soc if isinstance(bat, BatteryReading) else None})

        probes: dict[str, asyncio.Future[tuple[str, MeterReading]]] = {}
        targets = {p.household: p.target_kwh * wh_per_kwh for p in plans}

        async def come_back(now: float) -> None:
            """Rigs off the bus for a reason that may pass are probed each period (their
            drivers' back-off paces the wire); one that passes the start's checks is back
            on the bus, the target energy it missed while off recorded."""
            for hid in [h for h in self.tripped if h in targets]:
                since, why = self._left[hid]
                if hid in self.disputed or not why.startswith(READMITTABLE):
                    continue
                probe = probes.pop(hid, None)
                if probe is None:
                    probes[hid] = asyncio.ensure_future(self.readmit_rig(hid))
                    probes[hid].add_done_callback(_retrieve)
                    continue
                if not probe.done():
                    probes[hid] = probe
                    continue
                if probe.cancelled() or probe.exception() is not None:
                    continue  # asked again next period
                identity, reading = probe.result()
                if hid in unbased:
                    base[hid] = reading.net_wh
                    unbased.discard(hid)
                elif not await self._check_counters(hid, reading):
                    continue
                del self.tripped[hid]
                self.lost.pop(hid, None)
                for role in ("meter", "relay", "pv", "load", "battery", BATTERY_STATE):
                    self._seen[(hid, role)] = now
                last[hid] = reading
                off_s = now - max(since, t0)
                entry = readmitted.setdefault(hid, {"reason": why, "off_s": 0.0,
                                                    "missed_wh": 0.0})
                entry["off_s"] += off_s
                entry["missed_wh"] += targets[hid] * off_s / (tl.steps * dt)
                self.events.emit("safety", {"event": "rig_back", "household": hid,
                                            "identity": identity, "was": why,
                                            "off_s": off_s, "missed_wh": entry["missed_wh"]})

        for k in range(tl.steps):
            self._check_estop()
            deadline = t0 + (k + 1) * dt
            hour = tl.hour(start_hour, k, rig.time_scale)
            if self.tripped:
                await come_back(self.clock.now())
            live = [p for p in plans if p.household not in self.tripped]
            grid = await self._exchanges("grid", dt / 2, (("node", self.bench.grid.read),))
            if isinstance(grid[0], BaseException) and \
                    self.clock.now() - self._seen.get(("grid", "node"), t0) > hold_s:
                self._grid_lost(t0, f"grid node lost: {grid[0]}",
                                {hid: r.net_wh - base[hid] for hid, r in last.items()})
            if self._concurrent:
                # Each rig's period runs as its own task and the cycle never waits for one:
                # a rig whose exchanges are still running when its next period starts is
                # late, holds its last setpoints, and leaves the bus after ``hold_s``.
                now = self.clock.now()
                for plan in live:
                    hid = plan.household
                    running = steps.get(hid)
                    if running is not None and not running.done():
                        seen = max(last[hid].at, self._seen.get((hid, BATTERY_STATE), t0))
                        if now - seen > hold_s:
                            self._spawn(self.trip(hid, f"late: no complete exchange for "
                                                       f"{now - seen:.3g} s (hold limit "
                                                       f"{hold_s:.3g} s)"))
                        continue
                    steps[hid] = asyncio.ensure_future(self._guarded(
                        hid, step(plan, k, deadline, hour)))
                # Wait for them up to the period's end (a late one goes on alone); only
                # when the period is already over, i.e. the whole bench is slower than the
                # period and there is nobody to protect, up to the hold limit.
                busy = [t for t in steps.values() if not t.done()]
                if busy:
                    left = deadline - self.clock.now()
                    await asyncio.wait(busy, timeout=left if left > 0 else hold_s)
            else:  # in-process devices answer without suspending: in turn, no tasks
                for plan in live:
                    try:  # as _guarded, without a coroutine more per rig and period
                        await step(plan, k, deadline, hour)
                    except Exception as exc:  # one rig's fault is that rig's
                        await self.trip(plan.household, f"control step failed: {exc!r}")
            log += rows
            self.events.emit("readings", {"t": self.clock.now(), "interval_hour": hour,
                                          "rows": list(rows), "tripped": dict(self.tripped),
                                          "goals_wh": dict(goals)})
            rows.clear()
            last_step = k == tl.steps - 1
            # The final park is issued one write latency early so it lands on the deadline.
            await self._sleep_until(deadline - (self.write_latency if last_step else 0.0))
        await self._finish_steps(steps, dt, hold_s)
        for hid, probe in probes.items():  # a re-admission still under way: undone
            if not probe.done():
                probe.cancel()
                reason = self.tripped.pop(hid)
                await self.trip(hid, reason)

        # The DUT references close on the powers that held up to the deadline.
        for hid, tracker in duts.items():
            if hid not in self.tripped:
                h = houses[hid]
                with contextlib.suppress(Exception):
                    await self._sample_dut(tracker, h, await h.meter.read(),
                                           await h.battery.read())
        # Park every live rig at zero bus power before the closing read, so the time the
        # reads take adds no energy to the interval.
        parked = [self.bench.households[p.household] for p in plans
                  if p.household not in self.tripped]
        await asyncio.gather(*(c for h in parked for c in (
            h.battery.set_power(0.0), h.pv.set_power(0.0), h.load.set_power(0.0))),
            return_exceptions=True)
        end = await self._meters([p.household for p in plans])
        grid1 = await self._grid_read(t0, "at the interval's end", {
            p.household: r.net_wh - base[p.household] for p in plans
            if isinstance(r := end[p.household], MeterReading)})
        metered = {}
        for p in plans:
            hid = p.household
            r = end[hid]
            if isinstance(r, BaseException) or self.reading_problem(hid, r) is not None \
                    or (hid not in self.disputed and not await self._check_counters(hid, r)):
                r = last.get(hid)  # type: ignore[assignment]
            good = r if isinstance(r, MeterReading) else None
            metered[hid] = 0.0 if hid in self.disputed or good is None \
                else good.net_wh - base[hid]
        return IntervalMeasurement(
            start_s=t0, end_s=self.clock.now(), metered_wh=metered,
            grid_import_wh=grid1.import_wh - grid0.import_wh,
            grid_export_wh=grid1.export_wh - grid0.export_wh,
            readings=log, tripped=dict(self.tripped), disputed=dict(self.disputed),
            readmitted=readmitted,
            dut_checks=[c for t in duts.values() for c in t.checks(0, rig.dut_tolerance_pct)],
        )

    async def _sample_dut(self, tracker: DutTracker, h: HouseholdDevices,
                          meter: MeterReading, bat: BatteryReading) -> None:
        pv, load = await asyncio.gather(h.pv.read(), h.load.read())
        tracker.sample(meter, pv, load, bat)
