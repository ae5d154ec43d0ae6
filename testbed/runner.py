"""One run of a scenario on a rig: market, bench, ledger and store, interval by interval.

Data flows one way: the rig's drivers feed the controller, the controller feeds the
contract, the contract's result is settled on the meters, sealed in the ledger and written
to the store, and the report reads the store's figures.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from contracts.mechanism import Clearing
from contracts.numbers import MICRO, aud_to_micro, fmt, to_micro
from contracts.orders import Order, Side
from contracts.settlement import GRID, Settlement, settle
from drivers.clock import Clock, RealClock, VirtualClock
from drivers.registry import build_bench
from drivers.spec import RigSpec
from testbed.controller import Controller, IntervalMeasurement, RigPlan
from testbed.errors import InputError
from testbed.events import EventBus, Observer
from testbed.ledger import Ledger
from testbed.mechanisms import mechanism_for
from testbed.profiles import day_profile
from testbed.scenario import Scenario
from testbed.store import Store


@dataclass
class IntervalOutcome:
    index: int
    clearing: Clearing
    settlement: Settlement
    measurement: IntervalMeasurement
    targets_kwh: dict[str, Fraction]
    rejected_orders: dict[str, str]
    block: dict[str, Any]


@dataclass
class RunOutcome:
    run_id: str
    scenario: Scenario
    rig: RigSpec
    intervals: list[IntervalOutcome]
    opening: dict[str, int]
    balances: dict[str, int]
    ledger_head: str
    ledger_blocks: int
    status: str = "finished"
    extra: dict[str, Any] = field(default_factory=dict)


def check_scenario_fits_rig(scenario: Scenario, rig: RigSpec) -> None:
    missing = [h.id for h in scenario.households if h.id not in {r.id for r in rig.households}]
    if missing:
        raise InputError(f"{rig.source}",
                         f"scenario {scenario.name!r} needs households {missing} "
                         f"that rig {rig.name!r} does not have")


def choose_clock(rig: RigSpec) -> Clock:
    """Virtual time when every device is simulated in-process, real time otherwise."""
    all_mock = rig.grid.driver == "mock" and all(
        d.driver == "mock" for h in rig.households for d in h.devices.values())
    return VirtualClock() if all_mock else RealClock()


def _order_payload(run_id: str, interval: int, hid: str, side: str, energy: Fraction,
                   price: Fraction, nonce: int) -> dict[str, Any]:
    return {"type": "order", "run": run_id, "interval": interval, "household": hid,
            "side": side, "energy_kwh": str(energy), "price": str(price), "nonce": nonce}


def _metered_kwh(wh: float, wh_per_kwh: float) -> Fraction:
    """Lab Wh -> market kWh, quantised to the micro-kWh (a meter's resolution, not floats)."""
    return Fraction(round(wh / wh_per_kwh * MICRO), MICRO)


async def run_scenario(scenario: Scenario, rig: RigSpec, store: Store, *,
                       clock: Clock | None = None,
                       observers: list[Observer] | None = None) -> RunOutcome:
    check_scenario_fits_rig(scenario, rig)
    mechanism = mechanism_for(scenario)
    clock = clock or choose_clock(rig)
    run_id = uuid.uuid4().hex[:12]
    ids = [h.id for h in scenario.households]
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    ledger = Ledger(store, run_id)
    opening = {h.id: to_micro(scenario.opening_tokens(h) / 1) for h in scenario.households}
    opening[GRID] = 0
    with store.transaction():
        store.insert("runs", {"id": run_id, "scenario": scenario.name, "rig": rig.name,
                              "mechanism": mechanism.name, "status": "running",
                              "started_at": now, "finished_at": None,
                              "params": json.dumps({"rig_source": rig.source,
                                                    "scenario_source": scenario.source}),
                              "summary": None})
        store.insert("keys", ledger.new_keys(ids))
        ledger.append(None, ledger.genesis_txs({k: v for k, v in opening.items() if k != GRID}))

    events = EventBus(observers, context={"run": run_id})
    events.emit("status", {"run": run_id, "status": "running", "scenario": scenario.name,
                           "rig": rig.name})
    bench = build_bench(rig, clock)
    controller = Controller(bench, clock, events)
    outcomes: list[IntervalOutcome] = []
    try:
        await controller.connect_rigs()
        outcomes.append(await _interval(0, scenario, rig, mechanism, controller, ledger, store,
                                        run_id))
        status = "finished"
    except (KeyboardInterrupt, asyncio.CancelledError):
        status = "aborted"
        raise
    except BaseException:
        status = "failed"
        raise
    finally:
        await controller.safe_state()
        await controller.close()
        with store.transaction():
            store.update_run(run_id, status=status,
                             finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        events.emit("safety", {"run": run_id, "event": "safe_state"})
        events.emit("status", {"run": run_id, "status": status})
    return RunOutcome(run_id, scenario, rig, outcomes, opening, dict(ledger.balances),
                      ledger.head, ledger.height, status)


async def _interval(index: int, scenario: Scenario, rig: RigSpec, mechanism: Any,
                    controller: Controller, ledger: Ledger, store: Store,
                    run_id: str) -> IntervalOutcome:
    # 1. Each household's HEMS signs its order; the contract accepts only valid signatures.
    orders_signed = [
        ledger.sign_order(_order_payload(run_id, index, h.id, h.side, h.order_kwh, h.price,
                                         nonce=index))
        for h in scenario.households if h.side is not None and h.price is not None
    ]
    book, rejected = [], {}
    for o in orders_signed:
        if ledger.order_is_valid(o):
            book.append(Order(o["household"], Side(o["side"]), Fraction(o["energy_kwh"]),
                              Fraction(o["price"])))
        else:
            rejected[o["household"]] = "bad signature"

    events = controller.events
    events.emit("orderbook", {"run": run_id, "interval": index, "orders": orders_signed,
                              "rejected": rejected})

    # 2. Clear.
    clearing = mechanism.clear(book)
    events.emit("clearing", {"run": run_id, "interval": index,
                             "price": None if clearing.price is None else float(clearing.price),
                             "method": clearing.method, "volume_kwh": float(clearing.volume),
                             "rejected": list(clearing.rejected)})

    # 3. Route: each rig's net onto the bus is its physical position over the interval,
    #    i.e. its cleared trades plus what it settles with the grid (hil.md "Routing").
    p = scenario.profiles
    plans = [RigPlan(h.id, float(h.net_kwh),
                     day_profile(float(h.net_kwh), p.daily_load_kwh, p.latitude, p.longitude,
                                 p.date))
             for h in scenario.households]
    measured = await controller.run_interval(plans, start_hour=index * scenario.interval_hours,
                                             hours=scenario.interval_hours)

    # 4. Settle on what the meters measured.
    metered = {h: _metered_kwh(wh, rig.energy_scale) for h, wh in measured.metered_wh.items()
               if h in {x.id for x in scenario.households}}
    settlement = settle(clearing.fills, metered, scenario.tariff, scenario.aud_per_token)

    # 5. Seal orders, fills and transfers in one block, and write the interval atomically.
    txs = list(orders_signed)
    txs += [{"type": "fill", "seller": f.seller, "buyer": f.buyer,
             "energy_kwh": str(f.energy), "price": str(f.price)} for f in clearing.fills]
    txs += ledger.transfer_txs(settlement.transfers)
    with store.transaction():
        block = ledger.append(index, txs)
        store.insert("intervals", {
            "run_id": run_id, "idx": index,
            "clearing_price": None if clearing.price is None else str(clearing.price),
            "method": clearing.method, "volume_kwh": str(clearing.volume),
            "details": json.dumps({**clearing.details, "rejected": list(clearing.rejected),
                                   "rejected_orders": rejected}),
            "lab_start_s": measured.start_s, "lab_end_s": measured.end_s})
        store.insert("trades", [{"run_id": run_id, "interval": index, "seq": i,
                                 "seller": f.seller, "buyer": f.buyer,
                                 "energy_kwh": str(f.energy), "price": str(f.price)}
                                for i, f in enumerate(clearing.fills)])
        store.insert("results", [{"run_id": run_id, "interval": index, "household": s.id,
                                  "body": json.dumps({
                                      "cleared_kwh": str(s.cleared_kwh),
                                      "metered_kwh": str(s.metered_kwh),
                                      "grid_import_kwh": str(s.grid_import_kwh),
                                      "grid_export_kwh": str(s.grid_export_kwh),
                                      "market_aud": str(s.market_aud),
                                      "grid_aud": str(s.grid_aud)})}
                                 for s in settlement.households])
        store.insert("readings", [{"run_id": run_id, **r} for r in measured.readings])
    for i, f in enumerate(clearing.fills):
        events.emit("trade", {"run": run_id, "interval": index, "seq": i, "seller": f.seller,
                              "buyer": f.buyer, "energy_kwh": float(f.energy),
                              "price": float(f.price)})
    events.emit("block", {"run": run_id, **block, "txs": len(txs)})
    return IntervalOutcome(index, clearing, settlement, measured,
                           {h.id: h.net_kwh for h in scenario.households}, rejected, block)


def aud_of(micro: int, scenario: Scenario) -> Fraction:
    return Fraction(micro, MICRO) * scenario.aud_per_token


__all__ = ["RunOutcome", "aud_to_micro", "fmt", "run_scenario"]
