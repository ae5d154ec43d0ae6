"""Runs started from the API: each on a thread of its own, one at a time (one bench).

A run's control loop and the HTTP server must not wait on each other: the pre-flight check
of a long real-time day takes seconds of CPU, and a virtual-time day runs as fast as the CPU
allows, either of which would freeze the server (emergency stop included) on a shared loop.
So each run has its own thread, event loop and SQLite connection; its events are handed to
the server's loop (``call_soon_threadsafe``) for the live feed, and a stop or emergency stop
is handed the other way, to the controller's loop. However the run ends, ``run_scenario``'s
``finally`` leaves every rig safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.api.live import LiveHub
from testbed.telemetry import StopSwitch

log = logging.getLogger(__name__)
FINAL = ("finished", "aborted", "failed")  # run statuses after which the bench is safe


class Busy(Exception):
    """A run is already in progress on this server's bench."""


@dataclass
class ActiveRun:
    run_id: str
    scenario: str
    rig: str
    loop: asyncio.AbstractEventLoop  # the run's own loop, run by its thread
    started: asyncio.Event = field(default_factory=asyncio.Event)  # server loop: first event
    done: asyncio.Event = field(default_factory=asyncio.Event)  # server loop: thread ended
    switch: StopSwitch = field(default_factory=StopSwitch)  # touched on the run's loop only
    task: asyncio.Task[None] | None = None
    error: str | None = None
    exc: Exception | None = None

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """``fn(*args)`` on the run's loop; nothing once that loop has closed (run over)."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(fn, *args)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


class RunManager:
    """Starts, stops and emergency-stops runs inside the server process."""

    def __init__(self, db_path: Path, hub: LiveHub, stop_grace_s: float = 10.0) -> None:
        self.db_path = db_path
        self.hub = hub
        self.stop_grace_s = stop_grace_s
        self.active: dict[str, ActiveRun] = {}
        self.finished: dict[str, ActiveRun] = {}

    async def start(self, scenario: str, rig: str = "mock", speed: str | None = None) -> str:
        """Start a run; return its id once it has begun (its row is in the database).

        Raises :class:`Busy` if a run is in progress, and ``InputError`` for a scenario that
        does not fit the rig or its limits (then nothing was touched).
        """
        from testbed.config.rig import load_rig
        from testbed.config.scenario import load_scenario
        from testbed.run.runner import apply_speed

        if self.active:
            raise Busy(f"run {next(iter(self.active))} is in progress")
        sc = load_scenario(scenario)
        rg, clock = apply_speed(load_rig(rig), speed)
        active = ActiveRun(uuid.uuid4().hex[:12], scenario, rig, asyncio.new_event_loop())
        self.active[active.run_id] = active
        server = asyncio.get_running_loop()
        threading.Thread(target=self._thread, args=(active, sc, rg, clock, server),
                         name=f"run-{active.run_id}").start()
        waits = [asyncio.ensure_future(e.wait()) for e in (active.started, active.done)]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        if not active.started.is_set() and active.exc is not None:
            raise active.exc
        return active.run_id

    def _thread(self, active: ActiveRun, sc: Any, rg: Any, clock: Any,
                server: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(active.loop)
        try:
            active.loop.run_until_complete(self._run(active, sc, rg, clock, server))
        finally:
            active.loop.run_until_complete(active.loop.shutdown_asyncgens())
            active.loop.close()
            with contextlib.suppress(RuntimeError):  # the server may be gone already
                server.call_soon_threadsafe(self._ended, active)

    async def _run(self, active: ActiveRun, sc: Any, rg: Any, clock: Any,
                   server: asyncio.AbstractEventLoop) -> None:
        from testbed.ledger.store import Store
        from testbed.run.controller import EmergencyStop
        from testbed.run.runner import run_scenario

        active.task = asyncio.current_task()

        def relay(topic: str, payload: dict[str, Any]) -> None:
            with contextlib.suppress(RuntimeError):
                server.call_soon_threadsafe(self._event, active, topic, payload)

        store = Store(self.db_path)
        try:
            await run_scenario(sc, rg, store, clock=clock, run_id=active.run_id,
                               observers=[relay], on_controller=active.switch.attach)
        except EmergencyStop as e:
            active.error = f"stopped: {e}"
        except asyncio.CancelledError:
            active.error = "cancelled"
        except Exception as e:  # kept for start() or the run's page; the server goes on
            active.error = f"{type(e).__name__}: {e}"
            active.exc = e
            log.warning("run %s failed: %s", active.run_id, active.error)
        finally:
            store.close()

    def _event(self, active: ActiveRun, topic: str, payload: dict[str, Any]) -> None:
        active.started.set()
        if topic == "status" and payload.get("status") in FINAL:
            # Emitted after the bench is safe: the run is over for anyone who asks, even
            # though its thread is still closing the database.
            self._retire(active)
        self.hub.observer(topic, payload)

    def _retire(self, active: ActiveRun) -> None:
        self.active.pop(active.run_id, None)
        self.finished[active.run_id] = active

    def _ended(self, active: ActiveRun) -> None:
        self._retire(active)
        active.done.set()

    def stop(self, run_id: str, reason: str) -> bool:
        """Ask the run to stop at its next control period; False if it is not running here."""
        active = self.active.get(run_id)
        if active is None:
            return False
        active.call(active.switch.trip, reason)
        asyncio.get_running_loop().call_later(self.stop_grace_s, self._force, active)
        return True

    def _force(self, active: ActiveRun) -> None:
        """A run that did not reach a control period in time is cancelled (its ``finally``
        still puts the bench in safe state)."""
        if not active.done.is_set():
            log.warning("run %s did not stop in %.0f s; cancelling", active.run_id,
                        self.stop_grace_s)
            active.call(active.cancel)

    def estop(self, reason: str) -> list[str]:
        ids = list(self.active)
        self.hub.observer("safety", {"run": self.hub.run.get("id"), "event": "estop",
                                     "source": "api", "reason": reason, "runs": ids})
        for run_id in ids:
            self.stop(run_id, reason)
        return ids

    async def shutdown(self) -> None:
        """Server going down: stop every run and wait for its thread to end."""
        runs = [a for a in (*self.active.values(), *self.finished.values())
                if not a.done.is_set()]
        for active in runs:
            self.stop(active.run_id, "server shutting down")
        if runs:
            await asyncio.wait([asyncio.ensure_future(a.done.wait()) for a in runs],
                               timeout=self.stop_grace_s + 5)
