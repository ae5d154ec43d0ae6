"""One life for every kind of run (market scenarios and community days).

A run is started (:func:`start_record`: its row in ``runs``, status ``running``) or resumed
(:func:`resume_record`: a run that did not finish, its killed attempt recorded), then
driven on the bench (:func:`drive`): the controller connects the rigs, the run's body
goes interval by interval, and however it ends the bench is put in its safe state and the
run's status written (``finished``, ``aborted``, ``failed``). An interval cut short is
recorded as aborted, with its readings and why (:data:`ENDINGS`).

:class:`RunLog` writes what happens as it happens: readings every control period (at most
one period is lost to a kill -9) and the run's status, order-book and clearing events
(:meth:`testbed.ledger.store.Store.event_log`); safety events go to the safety log.

Exit codes of ``testbed run`` (every kind of run): :data:`EXIT`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import socket
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from drivers.clock import Clock
from drivers.registry import Bench
from testbed.errors import InputError
from testbed.ledger.chain import seal_final
from testbed.ledger.store import Store
from testbed.run.controller import Controller, EmergencyStop, GridLost, SafeStateIncomplete
from testbed.run.events import EventBus

T = TypeVar("T")
log = logging.getLogger(__name__)

#: ``testbed run``'s exit codes, by how the run ended.
EXIT: dict[str, int] = {"finished": 0, "checks_failed": 1, "fault": 1, "input": 2,
                        "estop": 3, "unsafe": 4, "signal": 130}

#: How a run that raised ends: (exception type, run status, cause of the aborted
#: interval), first match wins. GridLost is an EmergencyStop the bench raised itself.
ENDINGS: tuple[tuple[type[BaseException], str, str], ...] = (
    (GridLost, "aborted", "fault"),
    (EmergencyStop, "aborted", "estop"),
    (asyncio.CancelledError, "aborted", "signal"),
    (KeyboardInterrupt, "aborted", "signal"),
    (BaseException, "failed", "fault"),
)

KILLED = ("the process ended without closing the run (killed, e.g. kill -9, or the "
          "machine lost power)")


def now() -> str:
    """Wall-clock time, UTC, ISO 8601 to the second (``runs.started_at``/``finished_at``)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def ending(exc: BaseException) -> tuple[str, str, str]:
    """(run status, cause, reason) of a run that raised ``exc`` (:data:`ENDINGS`); the
    reason of a cancellation is the signal's name the CLI cancelled with."""
    status, cause = next((s, c) for kind, s, c in ENDINGS if isinstance(exc, kind))
    if cause == "signal":
        name = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
        return status, cause, f"stopped by {name}" if name else "cancelled"
    reason = str(exc) or type(exc).__name__
    return status, cause, reason if cause == "estop" else f"{type(exc).__name__}: {reason}"


class RunLog:
    """An event-bus observer writing a run's readings as they come, in batches: a batch
    is written once ``flush_s`` wall seconds (the rig's control period, so in real time
    every period) have passed since the last, so a kill -9 loses at most one period; in
    virtual time that is a few writes per second of CPU instead of one per period.

    :meth:`begin` names the interval in progress, :meth:`commit` closes it (called with
    its transaction), :meth:`abort` records it as cut short (Store.record_aborted_interval).
    """

    def __init__(self, store: Store, run_id: str, flush_s: float) -> None:
        self.store, self.run_id, self.flush_s = store, run_id, flush_s
        self.index: int | None = None
        self.start_s: float | None = None
        self.pending: list[dict[str, Any]] = []
        self._last = time.monotonic()

    def __call__(self, topic: str, payload: dict[str, Any]) -> None:
        if topic != "readings" or self.index is None:
            return
        self.pending += payload["rows"]  # the interval's: its run and index given once
        if time.monotonic() - self._last >= self.flush_s:
            self.flush()

    def begin(self, index: int, start_s: float) -> None:
        self.flush()
        self.index, self.start_s = index, start_s

    def flush(self) -> None:
        """Write the pending readings. A write that fails (disk full) keeps them pending
        and raises; from an observer the bus logs it and the run goes on, and the
        interval's :meth:`commit` tries again, so a failure that lasts fails the
        interval (its transaction rolled back) rather than losing readings silently."""
        self.store.append_readings(self.pending, {"run_id": self.run_id,
                                                  "interval": self.index})
        self.pending = []
        self._last = time.monotonic()

    def commit(self) -> None:
        """The interval's readings onto disk; inside its transaction, with its block."""
        self.flush()
        self.index = self.start_s = None

    def abort(self, cause: str, reason: str, end_s: float,
              details: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Record the interval in progress as aborted (None when there is none)."""
        if self.index is None:
            return None
        try:
            self.flush()
        except Exception:  # recorded without them: the abort's own row must still land
            log.exception("readings of run %s lost at its abort", self.run_id)
        row = self.store.record_aborted_interval(self.run_id, self.index, reason,
                                                 cause=cause, lab_start_s=self.start_s,
                                                 lab_end_s=end_s, details=details)
        self.index = self.start_s = None
        return row


def start_record(store: Store, *, run_id: str, scenario: str, rig: str, mechanism: str,
                 params: dict[str, Any]) -> None:
    """The run's row in ``runs`` (status ``running``), inside the caller's transaction;
    ``params`` (JSON-ready) also gets the process id and host, so a resume can tell a
    killed run from one still going."""
    store.insert("runs", {"id": run_id, "scenario": scenario, "rig": rig,
                          "mechanism": mechanism, "status": "running", "started_at": now(),
                          "finished_at": None, "summary": None,
                          "params": json.dumps({**params, "pid": os.getpid(),
                                                "host": socket.gethostname()})})


@dataclass(frozen=True)
class Resumable:
    """A run that did not finish: its row (``params`` parsed) and the interval to go on
    from (the first not committed)."""

    row: dict[str, Any]
    params: dict[str, Any]
    next_interval: int


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resumable(store: Store, run_id: str) -> Resumable:
    """Read ``run_id`` for a resume without writing: InputError (naming ``--resume``) when
    there is no such run, it finished, or its process is still running on this host."""
    where = f"--resume {run_id}"
    try:
        row = store.run(run_id)
    except Exception:
        raise InputError(where, f"no such run in {store.path}") from None
    if row["status"] == "finished":
        raise InputError(where, "that run has finished; nothing to resume")
    params = json.loads(row["params"] or "{}")
    pid = params.get("pid")
    if row["status"] == "running" and isinstance(pid, int) and pid != os.getpid() \
            and params.get("host") == socket.gethostname() and _alive(pid):
        raise InputError(where, f"that run is still running (process {pid}); stop it "
                                "first (Ctrl-C or its e-stop)")
    return Resumable(row, params, store.count("intervals", run_id))


def resume_record(store: Store, run_id: str, events: EventBus,
                  intervals: int | None = None) -> Resumable:
    """Take up ``run_id`` again (:func:`resumable`): a run still marked ``running`` was
    killed, so its interval in progress is recorded as aborted (cause ``killed``) with the
    readings it left; the run is marked running, and a ``resumed`` status emitted. With
    ``intervals`` (how many the run has) all committed, the run was killed while closing:
    no interval was in progress, none is recorded, and the resume only closes the run."""
    r = resumable(store, run_id)
    in_progress = intervals is None or r.next_interval < intervals
    with store.transaction():
        if r.row["status"] == "running" and in_progress:
            store.record_aborted_interval(run_id, r.next_interval, KILLED, cause="killed")
        params = {**r.params, "pid": os.getpid(), "host": socket.gethostname()}
        store.update_run(run_id, status="running", finished_at=None,
                         params=json.dumps(params))
    events.emit("status", {"status": "resumed", "from_interval": r.next_interval})
    return r


async def until_done(coro: Awaitable[T]) -> T:
    """Await ``coro`` to its end even if cancelled meanwhile (the safe state must land);
    a cancellation received on the way is raised again afterwards."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    result = task.result()
    if cancelled:
        raise asyncio.CancelledError
    return result


# Runs (their tasks) whose stop reached drive(): from there the safe state is under way and
# shielded, so a stop need not be repeated (testbed.cli.app repeats a cancellation that
# Python 3.11's asyncio.wait_for may drop).
STOP_SEEN: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


async def _make_safe_and_close(controller: Controller) -> None:
    try:
        await controller.safe_state()
    finally:
        await controller.close()


async def drive(store: Store, run_id: str, bench: Bench, clock: Clock, events: EventBus,
                log: RunLog, body: Callable[[Controller], Awaitable[T]],
                on_controller: Callable[[Controller], None] | None = None,
                summary: Callable[[], dict[str, Any]] | None = None) -> T:
    """Drive the bench through ``body(controller)`` and close the run however it ends:
    an interval in progress is recorded as aborted (:data:`ENDINGS`), the bench put in
    its safe state (read back), the run's status written and emitted, and the exception
    raised again. ``summary``: the finished run's summary (``runs.summary``, what its
    report reads), written in the same update as the ``finished`` status, so a run is
    never finished without it. Raises :class:`SafeStateIncomplete` after a body that
    finished when the safe state could not be confirmed on every device (status
    ``failed``)."""
    status = "failed"
    controller: Controller | None = None
    try:
        controller = Controller(bench, clock, events)
        if on_controller is not None:
            on_controller(controller)
        await controller.connect_rigs()
        result = await body(controller)
        status = "finished"
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError) and (me := asyncio.current_task()):
            STOP_SEEN.add(me)
        status, cause, reason = ending(exc)
        log.abort(cause, reason, clock.now(), {
            "tripped": dict(controller.tripped) if controller else {}})
        raise
    finally:
        try:
            if controller is not None:
                await until_done(_make_safe_and_close(controller))
                if controller.unconfirmed and status == "finished":
                    status = "failed"  # an incomplete safe state is never a finished run
        finally:
            closing: dict[str, Any] = {"status": status, "finished_at": now()}
            try:
                if status == "finished" and summary is not None:
                    closing["summary"] = json.dumps(summary())
            finally:  # a summary that fails still leaves the status written
                with store.transaction():
                    store.update_run(run_id, **closing)
            seal_final(store, run_id)  # the closing state, sealed outside the database
            events.emit("status", {"status": status})
    if controller.unconfirmed:
        raise SafeStateIncomplete(controller.unconfirmed)
    return result
