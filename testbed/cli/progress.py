"""What ``testbed run`` shows while a run goes (every kind of run): the start banner, then
a live display on a terminal or one plain line per market hour elsewhere.

The banner, printed once the run is on disk (its ``running`` status event), names the run,
rig, scenario, speed and database, the exact command that resumes it, and how to stop it
(the MQTT e-stop topics with ``--mqtt``, else ``kill -USR1``). The live display (rich, on
stderr, redrawn at most 4 times a wall second) shows the interval, lab and market time,
the ETA from the wall time so far, and per household its metered energy against its goal
so far (lab Wh), its power and state of charge, and whether it is on the bus; a household
taken off the bus shows why. Not a terminal: one plain line per market hour (per interval
for hourly intervals); ``--quiet``: neither.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text


@dataclass
class Launch:
    """How the run was started, for the banner (``speed`` None: the rig's own)."""

    scenario: str
    rig: str
    speed: str | None
    db: str
    estop_topics: tuple[str, ...] = ()  # filled in once the MQTT telemetry is up


def resume_command(run_id: str, db: str) -> str:
    """The exact command that resumes ``run_id`` (scenario, rig and speed come from it)."""
    return f"testbed run --resume {run_id} --db {shlex.quote(db)}"


def banner(run_id: str, launch: Launch) -> list[str]:
    """The lines printed when a run starts (and after a stop, the resume line again)."""
    speed = "the rig's own time scale" if launch.speed is None else launch.speed
    stop = ("e-stop: publish any message to " + " or ".join(launch.estop_topics)
            if launch.estop_topics else
            f"e-stop: kill -USR1 {os.getpid()} (or run with --mqtt for an MQTT e-stop)")
    return [f"run {run_id}: scenario {launch.scenario}, rig {launch.rig}, speed {speed}, "
            f"database {launch.db}",
            f"resume: {resume_command(run_id, launch.db)}", stop]


def _clock(hour: float) -> str:
    minutes = round(hour * 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class _State:
    intervals: int = 1
    first: int = 0
    hours: float = 24.0
    index: int = 0
    lab_s: float = 0.0
    hour: float = 0.0
    started: float = field(default_factory=time.monotonic)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    goals: dict[str, float] = field(default_factory=dict)
    tripped: dict[str, str] = field(default_factory=dict)


class RunDisplay:
    """An event-bus observer: the banner at start, then the live display (``live``) or
    plain lines (``plain``); ``quiet`` leaves only the banner. Use as a context manager
    around the run (the live display is stopped on leaving)."""

    def __init__(self, console: Console, launch: Launch, *, quiet: bool = False) -> None:
        self.console, self.launch = console, launch
        self.mode = "quiet" if quiet else "live" if console.is_terminal else "plain"
        self.state = _State()
        self._live: Live | None = None
        self._drawn = 0.0
        self._hour_logged = -1

    def __enter__(self) -> RunDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.stop()
            self._live = None

    def __call__(self, topic: str, payload: dict[str, Any]) -> None:
        handler = {"status": self._status, "readings": self._readings}.get(topic)
        if handler is not None:
            handler(payload)

    def _status(self, p: dict[str, Any]) -> None:
        if p.get("status") != "running":
            return
        st = self.state
        st.intervals, st.first = int(p.get("intervals", 1)), int(p.get("from_interval", 0))
        # a resume after the last interval (killed while closing) has none left to run
        st.hours, st.index = float(p.get("interval_hours", 24.0)), min(st.first,
                                                                       st.intervals - 1)
        st.hour = st.first * st.hours  # the market time the run takes up from
        st.started = time.monotonic()
        for line in banner(str(p["run"]), self.launch):
            self.console.print(escape(line), highlight=False, soft_wrap=True)
        if self.mode == "live":
            self._live = Live(self.render(), console=self.console, auto_refresh=False,
                              transient=False)
            self._live.start()

    def fraction(self) -> float:
        """Share of the run's remaining intervals done, from the market hour reached."""
        st = self.state
        if st.first >= st.intervals:
            return 1.0  # nothing left to run: the resume only closes the run
        todo = max(st.intervals - st.first, 1)
        done = min(max(st.hour / st.hours - st.first, 0.0), float(todo))
        return done / todo

    def eta_s(self) -> float | None:
        f = self.fraction()
        if f <= 0:
            return None
        return (time.monotonic() - self.state.started) * (1 - f) / f

    def _readings(self, p: dict[str, Any]) -> None:
        st = self.state
        st.lab_s, st.hour = float(p.get("t", 0.0)), float(p.get("interval_hour", 0.0))
        st.index = min(int(st.hour // st.hours), st.intervals - 1)
        st.tripped = dict(p.get("tripped", {}))
        st.goals.update(p.get("goals_wh", {}))
        for r in p.get("rows", []):
            st.rows[r["household"]] = r
        if self.mode == "plain" and int(st.hour) > self._hour_logged:
            self._hour_logged = int(st.hour)
            self.console.print(self.line(), highlight=False, soft_wrap=True)
        elif self._live is not None and time.monotonic() - self._drawn >= 0.25:
            self._drawn = time.monotonic()
            self._live.update(self.render(), refresh=True)

    def head(self) -> str:
        st = self.state
        return (f"interval {st.index + 1}/{st.intervals}  lab {st.lab_s:.1f} s  market "
                f"{_clock(st.hour)}  {self.fraction():.0%}  ETA {_eta(self.eta_s())}")

    def _tracking(self, hid: str) -> str:
        r, goal = self.state.rows.get(hid), self.state.goals.get(hid)
        if r is None or goal is None:
            return "-"
        return f"{r['meter_net_wh'] - goal:+.3f}"

    def line(self) -> str:
        """The plain log line: the head, the worst tracking error and who is off the bus."""
        st = self.state
        errs = {h: abs(r["meter_net_wh"] - st.goals[h]) for h, r in st.rows.items()
                if h in st.goals}
        worst = max(errs, key=errs.__getitem__) if errs else None
        off = ", ".join(f"{h} ({why})" for h, why in st.tripped.items()) or "none"
        track = "-" if worst is None else f"{worst} {self._tracking(worst)} Wh"
        return f"{self.head()}  worst tracking {track}  off the bus: {off}"

    def render(self) -> Group:
        st = self.state
        t = Table("household", "metered Wh", "goal Wh", "error Wh", "power W", "SoC",
                  "state", title=None, expand=False)
        for hid in sorted(st.rows, key=lambda h: (len(h), h)):
            r = st.rows[hid]
            goal = st.goals.get(hid)
            soc = r.get("soc")
            t.add_row(hid, f"{r['meter_net_wh']:+.3f}",
                      "-" if goal is None else f"{goal:+.3f}", self._tracking(hid),
                      f"{r['power_w']:+.1f}", "-" if soc is None else f"{soc:.1%}",
                      Text("on bus") if hid not in st.tripped else
                      Text(f"OFF: {st.tripped[hid]}", style="red"))
        for hid, why in st.tripped.items():
            if hid not in st.rows:
                t.add_row(hid, "-", "-", "-", "-", "-", Text(f"OFF: {why}", style="red"))
        return Group(Text(self.head()), t)
