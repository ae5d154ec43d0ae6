"""``testbed run cesdt`` and ``testbed sweep cesdt``: a community day on the rig, and sweeps.

:func:`run_cesdt` simulates the day (the contract settles every round), routes the first
homes' hourly energy through the rig's households (:mod:`testbed.run.community_bench`), seals one
ledger block per hour with the hour's run rows (:mod:`testbed.ledger.community_records`), and
records the run and its JSON summary in the store. The bench is left safe however it ends.
A day that did not finish is resumed by its id from its first hour not sealed, through the
same lifecycle as a market run (:mod:`testbed.run.lifecycle`): its money comes from the
ledger and the day recomputed, its bench is measured again (``run_cesdt_async(resume=)``).
The ``sweep`` command is registered by :mod:`testbed.cli.community`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from contracts import ledger as rules
from contracts.numbers import fmt
from contracts.settlement import GRID
from drivers.clock import Clock, RealClock, VirtualClock
from drivers.registry import build_bench
from drivers.spec import RigSpec
from testbed.community import MAX_HOUSEHOLDS
from testbed.community.day import CLASSES, SERIES, DayResult, simulate_day
from testbed.community.params import CommunityParams
from testbed.errors import InputError
from testbed.ledger.chain import Ledger
from testbed.ledger.community_records import DayBook, Transfers, open_ledger, seal_hour
from testbed.ledger.store import Store
from testbed.run import lifecycle, preflight
from testbed.run.community_bench import Comparison, booked, routing
from testbed.run.controller import Controller, IntervalMeasurement
from testbed.run.events import EventBus, Observer
from testbed.run.runner import all_mock

# The paper's Fig. 10 as its text states it (cost per class / grid-only cost), for display
# beside ours; omega2 at 70 % is only said to be negative ("earns money").
PAPER_FIG10: dict[float, dict[str, float]] = {
    0.5: {"omega1": 0.602, "omega2": 0.196, "all": 0.431},
    0.7: {"omega1": 0.447},
}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class _Bar:
    """A rich progress bar with one task per stage, or nothing."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    def stage(self, label: str) -> Callable[[int, int], None]:
        if self.progress is None:
            return lambda done, total: None
        task = self.progress.add_task(label, total=None)
        bar = self.progress

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
        return update


@contextmanager
def _bar(enabled: bool) -> Iterator[_Bar]:
    if not enabled:
        yield _Bar(None)
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as p:
        yield _Bar(p)


def run_cesdt(*, households: int, generating: float, seed: int, rig: RigSpec, store: Store,
              progress: bool, observers: list[Observer] | None = None,
              params: CommunityParams | None = None, clock: Clock | None = None,
              resume: str | None = None) -> dict[str, Any]:
    """Run (or, ``resume`` a run id, go on with) a CE-SDT community day on ``rig`` (module
    doc); returns the JSON summary.

    Runs its own event loop; inside one (the CLI's signal handling), await
    :func:`run_cesdt_async`.
    """
    return asyncio.run(run_cesdt_async(
        households=households, generating=generating, seed=seed, rig=rig, store=store,
        progress=progress, observers=observers, params=params, clock=clock, resume=resume))


async def run_cesdt_async(
    *, households: int, generating: float, seed: int, rig: RigSpec, store: Store,
    progress: bool, observers: list[Observer] | None = None,
    params: CommunityParams | None = None, clock: Clock | None = None,
    on_controller: Callable[[Controller], None] | None = None, run_id: str | None = None,
    launch: dict[str, Any] | None = None, resume: str | None = None,
) -> dict[str, Any]:
    """:func:`run_cesdt` as a coroutine; ``on_controller`` receives the controller (for an
    emergency stop); ``launch``: how it was started (kept in the run's params). Its life
    (status, safe state, aborted hours, readings as they come, resume) is
    :mod:`testbed.run.lifecycle`'s.

    ``resume``: the id of a community day that did not finish (killed, stopped, failed):
    it goes on from its first hour without a sealed block, as if never interrupted
    (:func:`_resume_day`: what is carried over and what is measured again). The day's
    households, generating share, seed and community parameters must be the run's;
    InputError (naming ``--resume``) when they differ, when the run is not a community
    day, has finished or is still running, or when its ledger does not verify or does
    not match the day recomputed."""
    if not 1 <= households <= MAX_HOUSEHOLDS:
        raise InputError("--households", f"must lie in [1, {MAX_HOUSEHOLDS}], got "
                                         f"{households}")
    if not 0.0 <= generating <= 1.0:
        raise InputError("--generating", f"must be a share in [0, 1], got {generating}")
    p = params or CommunityParams()
    run_id = resume or run_id or uuid.uuid4().hex[:12]
    if resume is not None:  # refused before anything is simulated or written
        _same_day(lifecycle.resumable(store, resume), households, generating, seed, p)
    events = EventBus([*(observers or []), store.safety_log(run_id), store.event_log(run_id)],
                      context={"run": run_id})
    with _bar(progress) as bar:
        t0 = time.perf_counter()
        book = DayBook()
        day = simulate_day(households, generating, seed, p, recorder=book,
                           progress=bar.stage("simulating the day (rounds)"))
        t1 = time.perf_counter()
        route = routing(day, rig)
        preflight.ensure_fits(rig, route.preflight_intervals())
        log = lifecycle.RunLog(store, run_id, rig.control_period_s)
        stage = bar.stage("routing on the rig (hours)")
        if resume is None:
            with store.transaction():
                lifecycle.start_record(store, run_id=run_id, scenario="cesdt", rig=rig.name,
                                       mechanism="cesdt", params={
                                           "rig_source": rig.source,
                                           "time_scale": rig.time_scale,
                                           "power_scale": rig.power_scale,
                                           "control_period_s": rig.control_period_s,
                                           "households": households,
                                           "generating": generating,
                                           "seed": seed, "community": p.as_dict(),
                                           **(launch or {})})
                ledger = open_ledger(store, run_id, day.ids)
            day_run = _DayRun(store, ledger, run_id, book, day, Comparison(rig, route),
                              events, stage, log)
            first = 0
        else:
            day_run, first = _resume_day(store, run_id, book, day, Comparison(rig, route),
                                         events, stage, log)
        events.subscribe(log)
        events.emit("status", {"status": "running", "scenario": "cesdt", "rig": rig.name,
                               "intervals": len(route.plans), "from_interval": first,
                               "interval_hours": 1.0})
        clk: Clock = clock or (VirtualClock() if all_mock(rig) else RealClock())

        async def hours(controller: Controller) -> None:
            for hour in range(first, len(route.plans)):
                log.begin(hour, clk.now())
                day_run.hour(hour, await controller.run_interval(
                    list(route.plans[hour]), start_hour=hour, hours=1.0))

        made: dict[str, Any] = {}

        def closing_summary() -> dict[str, Any]:
            """Written with the finished status (what the HTML report reads)."""
            made.update(summarise(day, p, rig, run_id, day_run.ledger, day_run,
                                  {"simulation": round(t1 - t0, 3),
                                   "bench_and_ledger": round(time.perf_counter() - t1, 3)}))
            if resume is not None:
                made["resumed_from_interval"] = first
            return made

        await lifecycle.drive(store, run_id, build_bench(rig, clk), clk, events, log,
                              hours, on_controller, closing_summary)
    return made


def _same_day(r: lifecycle.Resumable, households: int, generating: float, seed: int,
              p: CommunityParams) -> None:
    """InputError unless run ``r`` is a community day of these households, generating
    share, seed and parameters (the day is recomputed from them on resume)."""
    where = f"--resume {r.row['id']}"
    if r.row["scenario"] != "cesdt":
        raise InputError(where, f"that run is of scenario {r.row['scenario']!r}, not a "
                                "community day (cesdt)")
    ran = {"households": r.params.get("households"), "generating": r.params.get("generating"),
           "seed": r.params.get("seed")}
    given = {"households": households, "generating": generating, "seed": seed}
    for key, value in given.items():
        if ran[key] != value:
            raise InputError(where, f"that day ran with {key} {ran[key]}, not {value}")
    if r.params.get("community") != p.as_dict():
        changed = sorted(k for k in {**p.as_dict(), **(r.params.get("community") or {})}
                         if p.as_dict().get(k) != (r.params.get("community") or {}).get(k))
        raise InputError(where, "that day ran with other community parameters ("
                                f"{', '.join(changed)}): it cannot be recomputed here")


def _resume_day(store: Store, run_id: str, book: DayBook, day: DayResult,
                comparison: Comparison, events: EventBus,
                progress: Callable[[int, int], None],
                log: lifecycle.RunLog) -> tuple[_DayRun, int]:
    """Take up a community day again from its first hour without a block.

    Carried over: from the database, the ledger (verified from genesis: balances, nonces,
    keys, head) and every sealed hour's rows (the bench's metered energy and trips, for
    the day's comparison); recomputed, the day itself (its seed and parameters make the
    same homes, rounds, fills and bills), and each pair's running total of what it owes
    and was sent, checked transfer by transfer and fill by fill against the blocks (a
    mismatch refuses the resume). Measured again: the bench (batteries' SOC, meters) as
    the controller finds it. The lifecycle then records the killed attempt, if any
    (:func:`testbed.run.lifecycle.resume_record`; a day killed after its last hour was
    sealed had no hour in progress: its resume runs none and only closes the day).
    Returns the day's run and the first hour to run (24 when every hour is sealed)."""
    r = lifecycle.resumable(store, run_id)
    ledger = Ledger.load(store, run_id)  # verifies the chain from genesis
    if set(ledger.opening()) - {GRID} != set(day.ids):
        raise InputError(f"--resume {run_id}", "the ledger's households are not the day's")
    day_run = _DayRun(store, ledger, run_id, book, day, comparison, events, progress, log)
    day_run.restore(r.next_interval)
    r = lifecycle.resume_record(store, run_id, events, len(comparison.routing.plans))
    return day_run, r.next_interval


class _DayRun:
    """Seals each hour once the rig has run it: ledger block, interval row, readings."""

    def __init__(self, store: Store, ledger: Ledger, run_id: str, book: DayBook,
                 day: DayResult, comparison: Comparison, events: EventBus,
                 progress: Callable[[int, int], None], log: lifecycle.RunLog) -> None:
        self.store, self.ledger, self.run_id, self.book = store, ledger, run_id, book
        self.log = log
        self.day, self.comparison, self.events, self.progress = day, comparison, events, progress
        self.transfers = Transfers()
        self.txs = self.signed = 0
        self.refused: dict[str, str] = {}

    def restore(self, hours: int) -> None:
        """Book the day's first ``hours`` hours, sealed before a resume, as :meth:`hour`
        did: each hour's transfers recomputed (the running totals go on from them) and
        its fills, both checked against the hour's block; the counts of transactions,
        signed and refused orders read from the blocks; the bench's metered energy and
        trips from the hours' rows. InputError when a block or row is missing or the
        chain does not match the day recomputed."""
        where = f"--resume {self.run_id}"
        blocks = {b["interval"]: b for b in self.store.blocks(self.run_id)
                  if b["interval"] is not None}
        rows = {r["idx"]: r for r in self.store.rows("intervals", self.run_id)}
        for hour in range(hours):
            block, row = blocks.get(hour), rows.get(hour)
            if block is None or row is None:
                raise InputError(where, f"hour {hour} has no block or no intervals row")
            book = self.book.hours[hour]
            txs = block["txs"]
            fills = [{"type": "fill", "tick": rnd.tick, "seller": f.seller, "buyer": f.buyer,
                      "energy_kwh": str(f.energy), "price": str(f.price)}
                     for rnd, _ in book.rounds for f in rnd.fills]
            moved = Ledger.transfer_txs(self.transfers.hour(hour, book.owed))
            for kind, ours in (("fill", fills), ("transfer", moved)):
                if [tx for tx in txs if tx.get("type") == kind] != ours:
                    raise InputError(where, f"the {kind}s of hour {hour} on the ledger are "
                                            "not those of the day recomputed")
            self.txs += len(txs)
            self.signed += sum(tx.get("type") in ("order", "rejected") for tx in txs)
            self.refused.update({rules.tx_hash(tx["order"]): str(tx["reason"])
                                 for tx in txs if tx.get("type") == "rejected"})
            details = json.loads(row["details"])
            self.comparison.book(hour, booked(details["rigs"]), details.get("tripped") or {})
        self.progress(hours, 24)

    def hour(self, hour: int, measured: IntervalMeasurement) -> None:
        book = self.book.hours[hour]
        rigs = self.comparison.add(hour, measured)
        p2p = sum((f.energy for rnd, _ in book.rounds for f in rnd.fills), Fraction(0))
        details: dict[str, Any] = {k: round(self.day.hourly[k][hour], 6) for k in SERIES}
        details.update(rounds=len(book.rounds), rigs=rigs, tripped=measured.tripped,
                       refused_offers=[{"tick": rnd.tick, "seller": r.seller,
                                        "reason": r.reason}
                                       for rnd, _ in book.rounds for r in rnd.rejected
                                       if r.screened])
        row = {"run_id": self.run_id, "idx": hour, "clearing_price": None, "method": None,
               "volume_kwh": str(p2p), "details": json.dumps(details),
               "lab_start_s": measured.start_s, "lab_end_s": measured.end_s}
        sealed = seal_hour(self.store, self.ledger, self.run_id, hour, book,
                           self.transfers.hour(hour, book.owed), {"intervals": [row]},
                           self.log.commit)
        self.txs += sealed.txs
        self.signed += sealed.orders
        self.refused.update(sealed.refused)
        self.events.emit("clearing", {"interval": hour, "price": None, "method": None,
                                      "volume_kwh": float(p2p), "rejected": []})
        self.events.emit("block", {**sealed.block, "txs": sealed.txs})
        self.progress(hour + 1, 24)


def summarise(day: DayResult, p: CommunityParams, rig: RigSpec, run_id: str, ledger: Ledger,
              run: _DayRun, elapsed: dict[str, float]) -> dict[str, Any]:
    """The run's JSON summary (``classes`` and ``hourly`` are read by the report)."""
    balances = dict(ledger.balances)
    total = sum(balances.values())
    opening = sum(ledger.opening().values())
    paid = sum(day.household_cost.values(), Fraction(0))
    p2p = sum(day.hourly["p2p"])
    paper = PAPER_FIG10.get(round(day.generating, 2), {})
    return {
        "run_id": run_id, "scenario": "cesdt", "mechanism": "cesdt", "rig": rig.name,
        "status": "finished", "households": day.households, "generating": day.generating,
        "seed": day.seed, "class_sizes": day.class_sizes, "classes": day.costs,
        "hourly": [{"hour": h, **{f"{k}_kw": round(day.hourly[k][h], 6) for k in SERIES}}
                   for h in range(24)],
        "paper_fig10": {cls: {"ours": day.costs[cls]["cost_ratio"], "paper": paper[cls]}
                        for cls in CLASSES if cls in paper},
        "trading": {"rounds": day.rounds, "requests": day.requests, "offers": day.offers,
                    "late_offers": day.late_offers, "fills": day.fills,
                    "p2p_kwh": round(p2p, 6),
                    "mean_p2p_price_aud_per_kwh": round(float(day.paid_to_peers) / p2p, 6)
                    if p2p else None,
                    "price_window_passes": day.passes},
        "money": {"households_paid_aud": fmt(paid), "grid_revenue_aud": fmt(day.grid_revenue),
                  "feed_in_paid_aud": fmt(day.feed_in_paid),
                  "conserved": paid == day.grid_revenue - day.feed_in_paid},
        "ledger": {"blocks": ledger.height, "head": ledger.head, "txs": run.txs,
                   "signed_orders": run.signed, "refused_orders": len(run.refused),
                   "opening_micro": opening, "total_micro": total,
                   "conserved": total == opening, "grid_micro": balances.get("grid", 0)},
        "bench": {"homes_on_rig": len(run.comparison.routing.pairs),
                  "simulated_homes": day.households - len(run.comparison.routing.pairs),
                  **run.comparison.summary()},
        "params": p.as_dict(),
        "elapsed_s": elapsed,
    }


def render_cesdt(summary: dict[str, Any], console: Console) -> None:
    """The summary as terminal tables: classes beside the paper, the day, bench, ledger."""
    console.print(f"[bold]CE-SDT community day[/bold]  run {summary['run_id']} on rig "
                  f"'{summary['rig']}' ({summary['status']}): {summary['households']} homes, "
                  f"{summary['generating']:.0%} generating, seed {summary['seed']}")
    t = Table("class", "homes", "cost AUD", "grid-only AUD", "ratio", "paper (Fig. 10)")
    for cls in CLASSES:
        c = summary["classes"][cls]
        paper = summary["paper_fig10"].get(cls, {}).get("paper")
        t.add_row(cls, str(summary["class_sizes"][cls]), f"{c['cost_aud']:.3f}",
                  f"{c['grid_only_cost_aud']:.3f}",
                  "-" if c["cost_ratio"] is None else f"{c['cost_ratio']:.3f}",
                  "-" if paper is None else f"{paper:.3f}")
    console.print(t)
    h = Table("hour", *(k for k in SERIES), title="kWh in each hour (mean kW)")
    for row in summary["hourly"]:
        h.add_row(str(row["hour"]), *(f"{row[f'{k}_kw']:.2f}" for k in SERIES))
    console.print(h)
    tr, b, led = summary["trading"], summary["bench"], summary["ledger"]
    console.print(f"rounds {tr['rounds']}, requests {tr['requests']}, offers {tr['offers']} "
                  f"({tr['late_offers']} late, rejected), fills {tr['fills']}, "
                  f"P2P {tr['p2p_kwh']:.2f} kWh")
    console.print(f"bench: {b['homes_on_rig']} homes on the rig, {b['simulated_homes']} "
                  f"simulated; metered within {b['tolerance_pct']} % of routed: "
                  f"{b['within_tolerance']}")
    console.print(f"ledger: {led['blocks']} blocks, head {led['head'][:16]}..., "
                  f"{led['signed_orders']} signed orders; money conserved: {led['conserved']}")
