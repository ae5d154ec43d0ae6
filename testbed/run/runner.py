"""One run of a scenario on a rig: market, bench, ledger and store, interval by interval.

Data flows one way: the rig's drivers feed the controller, the controller feeds the
contract, the contract's result is settled on the meters, sealed in the ledger and written
to the store, and the report reads the store's figures.

Each interval is one SQLite transaction (run data and ledger block together). A run that
was killed is resumed from its last committed interval: the ledger is re-read and verified
from genesis, and the interrupted interval runs again from its start, so no trade is lost
or doubled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

from contracts import ledger as rules
from contracts.mechanism import Clearing, Fill, Mechanism
from contracts.numbers import MICRO, fmt, to_micro
from contracts.orders import Order, Side
from contracts.settlement import GRID, Funding, Settlement, fund, settle
from drivers.clock import Clock, RealClock, VirtualClock
from drivers.registry import Bench, build_bench
from drivers.spec import RigSpec
from testbed.config.profiles import day_profile
from testbed.config.scenario import Scenario
from testbed.errors import InputError
from testbed.ledger.chain import BlockDraft, Ledger
from testbed.ledger.store import Store
from testbed.run import lifecycle, preflight
from testbed.run.controller import Controller, IntervalMeasurement, RigPlan
from testbed.run.events import EventBus, Observer
from testbed.run.mechanisms import mechanism_for
from testbed.run.validation import Check, interval_checks


@dataclass
class IntervalOutcome:
    index: int
    clearing: Clearing
    settlement: Settlement
    measurement: IntervalMeasurement
    targets_kwh: dict[str, Fraction]
    rejected_orders: dict[str, str]
    block: dict[str, Any]
    checks: list[Check]
    funding: dict[str, str] = field(default_factory=dict)  # household -> refused/limited why


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
    resumed_from: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    db: Path | None = None  # the run database: the report's figures are read from it

    @property
    def checks(self) -> list[Check]:
        return [c for iv in self.intervals for c in iv.checks]


class ChainBackend(Protocol):
    """A market contract on a chain beside the SQLite ledger (``--ledger evm...``,
    :class:`testbed.ledger.evm.ChainLedger`): it receives the same signed orders and meter
    readings, and its clearing and balances are the run's."""

    def place(self, order: dict[str, Any]) -> str | None: ...  # refusal reason or None
    def clear(self) -> Clearing: ...
    def settle(self, metered_kwh: dict[str, Fraction],
               disputed: Collection[str] = ()) -> dict[str, int]: ...  # micro
    def describe(self) -> dict[str, Any]: ...
    def record(self, store: Store, run_id: str) -> None: ...  # inside the transaction
    def secrets(self) -> dict[str, str]: ...  # Ethereum keys for the run's keystore
    def gate(self, households: list[str]) -> dict[str, Any]: ...  # the gate's "evm" object


class OrderSource(Protocol):
    """Where agent households' orders come from (:class:`testbed.agents.MqttOrderSource`):
    the runner announces each interval's gate and receives raw messages; checking them is
    the runner's (:func:`testbed.agents.check_order`, then the ledger's rules)."""

    async def collect(self, gate: dict[str, Any], households: list[str],
                      ) -> list[tuple[str, bytes]]: ...  # (topic's household, raw) by arrival
    def late(self) -> list[tuple[str, bytes]]: ...  # what came while no gate was open
    async def results(self, results: Mapping[str, dict[str, Any]]) -> None: ...


def gate_message(run_id: str, index: int, sc: Scenario, agents: list[str],
                 gate_s: float) -> dict[str, Any]:
    """The gate announcement (docs/agents.md, schema ``gate``)."""
    now = dt.datetime.now(dt.UTC)
    return {"type": "gate", "state": "open", "run": run_id, "interval": index,
            "opens": now.isoformat(timespec="milliseconds"),
            "closes": (now + dt.timedelta(seconds=gate_s)).isoformat(timespec="milliseconds"),
            "start_hour": fmt(Fraction(str(sc.interval_hours)) * index, 9),
            "hours": fmt(Fraction(str(sc.interval_hours)), 9),
            "tariff": {"import_aud_per_kwh": fmt(sc.tariff.import_aud_per_kwh, 9),
                       "feed_in_aud_per_kwh": fmt(sc.tariff.feed_in_aud_per_kwh, 9)},
            "suggested_price": None,  # dual bidding: each household names its own price
            "households": agents,
            "forecast_kwh": {h.id: fmt(h.net_kwh, 9) for h in sc.households if h.id in agents}}


def open_chain(spec: str, scenario: Scenario, opening: dict[str, int]) -> ChainBackend | None:
    """``--ledger``: ``sqlite`` (the signed ledger alone) or an EVM back-end beside it. An
    agent household whose HEMS registered its own Ethereum address
    (:func:`testbed.agents.registered_addresses`) is certified at that address."""
    if spec == "sqlite":
        return None
    from testbed.agents import registered_addresses
    from testbed.ledger.evm import ChainLedger

    if scenario.mechanism not in ("dual_bidding", "grid_only"):
        raise InputError(f"--ledger {spec}", "the EVM contract implements dual bidding; "
                         f"scenario {scenario.name!r} uses {scenario.mechanism!r}")
    return ChainLedger(spec, [h.id for h in scenario.households], opening,  # InputError
                       alpha=scenario.alpha,
                       import_aud_per_kwh=scenario.tariff.import_aud_per_kwh,
                       feed_in_aud_per_kwh=scenario.tariff.feed_in_aud_per_kwh,
                       aud_per_token=scenario.aud_per_token,
                       registered=registered_addresses(
                           [h.id for h in scenario.households if h.orders == "agent"]))


def resume_chain(spec: str, store: Store, run_id: str, ledger: Ledger,
                 intervals_done: int) -> ChainBackend | None:
    """The EVM back-end of a resumed run (``--resume`` with its ``--ledger``): rebuilt from
    the run's record (embedded) or reconnected to its contract with the keystore's
    Ethereum keys (node). None for a run on the SQLite ledger alone; InputError when
    ``spec`` is not what the run used."""
    deployments = store.rows("evm", run_id)
    recorded = bool(deployments)
    if spec == "sqlite" and not recorded:
        return None
    if not recorded:
        raise InputError(f"--ledger {spec}", f"run {run_id} ran on the SQLite ledger alone; "
                         "resume it without --ledger")
    if spec == "sqlite":
        spec = str(deployments[0]["backend"])
    from testbed.ledger.evm import ChainLedger

    keys = ledger.keyring.load_eth_keys(run_id, ledger.genesis)
    return ChainLedger.resume(store, run_id, spec, keys, intervals_done)  # InputError


def chain_checks(index: int, suite_of: str, python: Clearing, chain: Clearing,
                 python_rejected: dict[str, str], chain_rejected: dict[str, str],
                 ledger: dict[str, int], on_chain: dict[str, int]) -> list[Check]:
    """The chain against the Python contract and the SQLite ledger, one check per rule."""
    suite = f"interval {index} {suite_of}"
    same_book = set(python_rejected) == set(chain_rejected)
    same_clearing = (python.fills, python.price, python.method, python.rejected) == (
        chain.fills, chain.price, chain.method, chain.rejected)
    diff = sorted(a for a in set(ledger) | set(on_chain) if ledger.get(a) != on_chain.get(a))
    return [
        Check(suite, "orders refused alike", same_book, len(python_rejected),
              len(chain_rejected), f"ledger refused {sorted(python_rejected)}, "
                                   f"chain refused {sorted(chain_rejected)}"),
        Check(suite, "clearing equals contracts/", same_clearing, float(python.volume),
              float(chain.volume), f"price {python.price} vs {chain.price}, method "
                                   f"{python.method} vs {chain.method}, "
                                   f"{len(python.fills)} vs {len(chain.fills)} fills"),
        Check(suite, "balances equal the SQLite ledger's", not diff, len(ledger),
              len(on_chain), "every account to the micro-ETH" if not diff else
              f"{diff[0]}: ledger {ledger.get(diff[0])} µ, chain {on_chain.get(diff[0])} µ"),
    ]


def check_scenario_fits_rig(scenario: Scenario, rig: RigSpec) -> None:
    missing = [h.id for h in scenario.households if h.id not in {r.id for r in rig.households}]
    if missing:
        raise InputError(f"{rig.source}",
                         f"scenario {scenario.name!r} needs households {missing} "
                         f"that rig {rig.name!r} does not have")


def all_mock(rig: RigSpec) -> bool:
    return rig.grid.driver == "mock" and all(
        d.driver == "mock" for h in rig.households for d in h.devices.values())


SPEED_RANGE = (1e-3, 1e6)  # a day in 86 ms of lab time is already below one control period


def apply_speed(rig: RigSpec, speed: str | None) -> tuple[RigSpec, Clock]:
    """``--speed``: None -> virtual time on an all-mock rig, else the rig's real time;
    ``max`` -> virtual time (mock rigs only); a number -> real time at that time scale."""
    if speed is None:
        return rig, VirtualClock() if all_mock(rig) else RealClock()
    if speed == "max":
        if not all_mock(rig):
            raise InputError("--speed max", "virtual time needs a rig whose devices are all "
                                            "'mock' (instruments run in real time)")
        return rig, VirtualClock()
    try:
        scale = float(speed)
        if not SPEED_RANGE[0] <= scale <= SPEED_RANGE[1]:
            raise ValueError
    except ValueError:
        raise InputError("--speed", f"expected a number in [{SPEED_RANGE[0]:g}, "
                         f"{SPEED_RANGE[1]:g}] or 'max', got {speed!r}") from None
    return dataclasses.replace(rig, time_scale=scale), RealClock()


def ratings(rig: RigSpec, ids: list[str]) -> dict[str, Fraction]:
    """Each household's rated power in market kW (its rig's lab W / power scale), for the
    ledger's genesis: a settlement beyond rating x interval is refused."""
    out = {}
    for h in ids:
        watts = rig.household(h).rated_power_w
        if watts is not None:
            out[h] = Fraction(watts / (1000.0 * rig.power_scale)).limit_denominator(10**6)
    return out


def plans_for(scenario: Scenario) -> list[RigPlan]:
    p = scenario.profiles
    return [RigPlan(h.id, float(h.net_kwh),
                    day_profile(float(h.net_kwh), p.daily_load_kwh, p.latitude, p.longitude,
                                p.date, p.timezone))
            for h in scenario.households]


def _order_payload(run_id: str, interval: int, hid: str, side: str, energy: Fraction,
                   price: Fraction) -> dict[str, Any]:
    return {"run": run_id, "interval": interval, "household": hid, "side": side,
            "energy_kwh": str(energy), "price": str(price)}


def _metered_kwh(wh: float, wh_per_kwh: float) -> Fraction:
    """Lab Wh -> market kWh, quantised to the micro-kWh (a meter's resolution, not floats)."""
    return Fraction(round(wh / wh_per_kwh * MICRO), MICRO)


def _refusal(state: rules.LedgerState, tx: dict[str, Any]) -> str | None:
    """Why the ledger would refuse ``tx`` in the block being built, or None."""
    try:
        state.copy().apply(tx)
    except rules.TxError as err:
        return str(err)
    return None


def _dispute_txs(index: int, disputed: dict[str, str], held: tuple[Fill, ...],
                 signed: list[dict[str, Any]], holds: dict[str, tuple[str, int]],
                 ) -> list[dict[str, Any]]:
    """One ``dispute`` per disputed household, freezing the escrow of every buy order that
    is party to a held fill (the trade stays in escrow until the operator resolves it)."""
    buyers = {f.buyer for f in held}
    escrows = {h: sorted(d for o in signed if o["household"] == h
                         and (d := rules.tx_hash(o)) in holds) for h in buyers}
    out = []
    for h, reason in sorted(disputed.items()):
        mine = {f.buyer for f in held if h in (f.seller, f.buyer)}
        orders = sorted({d for b in mine for d in escrows.get(b, [])})
        for b in mine:
            escrows[b] = []  # one dispute freezes an escrow once
        out.append({"type": "dispute", "household": h, "interval": index, "reason": reason,
                    "orders": orders})
    return out


def _refused_tx(household: str, index: int, reason: str, raw: bytes | None,
                ) -> dict[str, Any]:
    from testbed.agents import digest

    return {"type": "refused", "household": household, "interval": index, "reason": reason,
            "payload_sha256": None if raw is None else digest(raw)}


def agent_checks(index: int, agents: list[str], status: Mapping[str, Mapping[str, Any]],
                 checks: list[Check]) -> list[Check]:
    """One JUnit suite per agent (``agent H``): its order by the gate, then what it committed
    (its fills) against what its rig's meter measured (the interval's checks of H)."""
    out = []
    for h in agents:
        suite = f"agent {h}"
        st = status.get(h, {"status": "absent", "refused": []})
        refused = "; ".join(st["refused"]) or "none"
        out.append(Check(suite, f"interval {index} order by the gate",
                         st["status"] == "accepted", 1.0,
                         1.0 if st["status"] == "accepted" else 0.0,
                         f"{st['status']}; refused messages: {refused}"))
        mine = [c for c in checks if c.name.endswith(f"er {h}")
                or c.name == f"household {h} net energy"]
        out += [dataclasses.replace(c, suite=suite, name=f"interval {index} {c.name}")
                for c in mine]
    return out


def agent_results(run_id: str, index: int, last: bool, agents: list[str],
                  status: Mapping[str, Mapping[str, Any]], clearing: Clearing,
                  routed: Mapping[str, Fraction], metered: Mapping[str, Fraction],
                  settlement: Settlement) -> dict[str, dict[str, Any]]:
    """Each agent's ``result`` message (docs/agents.md)."""
    per = {s.id: s for s in settlement.households}
    out = {}
    for h in agents:
        s = per.get(h)
        out[h] = {"type": "result", "run": run_id, "interval": index, "household": h,
                  "last": last, "order": dict(status.get(h, {})),
                  "fills": [{"seller": f.seller, "buyer": f.buyer,
                             "energy_kwh": fmt(f.energy, 9), "price": fmt(f.price, 9)}
                            for f in clearing.fills if h in (f.seller, f.buyer)],
                  "routed_kwh": fmt(Fraction(routed.get(h, 0)), 9),
                  "metered_kwh": fmt(Fraction(metered.get(h, 0)), 9),
                  "settlement": None if s is None else {
                      "market_aud": fmt(s.market_aud, 9), "grid_aud": fmt(s.grid_aud, 9),
                      "grid_import_kwh": fmt(s.grid_import_kwh, 9),
                      "grid_export_kwh": fmt(s.grid_export_kwh, 9),
                      "disputed": s.disputed}}
    return out


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Run:
    """A run in progress: what it needs to go on interval by interval."""

    def __init__(self, scenario: Scenario, rig: RigSpec, store: Store, clock: Clock,
                 events: EventBus, run_id: str, ledger: Ledger, opening: dict[str, int],
                 next_interval: int, chain: ChainBackend | None = None,
                 orders: OrderSource | None = None, gate_s: float = 10.0) -> None:
        self.scenario, self.rig, self.store, self.clock = scenario, rig, store, clock
        self.chain, self.orders, self.gate_s = chain, orders, gate_s
        self.events, self.run_id, self.ledger = events, run_id, ledger
        self.opening, self.next_interval = opening, next_interval
        self.mechanism: Mechanism = mechanism_for(scenario)
        self.n_intervals = 1  # a dual-bidding scenario clears the day's nets once
        self.log: lifecycle.RunLog | None = None  # readings as they come (run_scenario)

    async def execute(self, controller: Controller) -> list[IntervalOutcome]:
        outcomes = []
        for index in range(self.next_interval, self.n_intervals):
            outcomes.append(await self.interval(index, controller))
        return outcomes

    def gate(self) -> tuple[Scenario, dict[str, str]]:
        """No credit: each household's position limited to what its balance can pay in the
        worst case (``contracts.settlement.fund``); the scenario as it will run, and the
        reason for every household refused or limited."""
        sc, margin = self.scenario, Fraction(self.rig.tolerance_pct) / 100
        funded: dict[str, Funding] = {
            h.id: fund(h.net_kwh, h.offer_kwh, h.price, sc.tariff,
                       self.ledger.balances.get(h.id, 0), sc.aud_per_token, margin)
            for h in sc.households}
        households = tuple(dataclasses.replace(h, net_kwh=funded[h.id].net_kwh,
                                               offer_kwh=funded[h.id].offer_kwh)
                           for h in sc.households)
        reasons = {h: f.reason for h, f in funded.items() if f.reason is not None}
        return dataclasses.replace(sc, households=households), reasons

    async def interval(self, index: int, controller: Controller) -> IntervalOutcome:
        run_id, ledger, events = self.run_id, self.ledger, self.events
        # 0. The gate: no household may take a position its balance cannot pay.
        sc, funding = self.gate()
        # 1. Each household's HEMS signs its order (with a fresh nonce); the ledger admits
        #    it (certified key, signature, nonce, escrow for buyers) or records why not.
        draft = ledger.draft()
        agents = [h.id for h in sc.households if h.orders == "agent"]
        signed = [ledger.sign_order(_order_payload(run_id, index, h.id, h.side, h.order_kwh,
                                                   h.price))
                  for h in sc.households if h.side is not None and h.price is not None
                  and h.orders != "agent"]
        book: list[Order] = []
        rejected: dict[str, str] = {}
        chain_rejected: dict[str, str] = {}
        agent_status: dict[str, dict[str, Any]] = {}

        def submit(o: dict[str, Any]) -> str | None:
            reason = draft.submit(o)
            if self.chain is not None and (why := self.chain.place(o)) is not None:
                chain_rejected[o["household"]] = why
            if reason is None:
                book.append(Order(o["household"], Side(o["side"]), Fraction(o["energy_kwh"]),
                                  Fraction(o["price"])))
            else:
                rejected[o["household"]] = reason
            return reason

        for o in signed:
            submit(o)
        if agents:
            signed += await self._intake(index, sc, agents, draft, submit, agent_status)
        events.emit("orderbook", {"interval": index, "orders": signed, "rejected": rejected,
                                  "funding": funding, **({"agents": agent_status}
                                                         if agents else {})})

        # 2. Clear.
        clearing = self.mechanism.clear(book)
        python_clearing = clearing
        if self.chain is not None:  # the chain decides; the Python contract is checked
            clearing = dataclasses.replace(self.chain.clear(), details=clearing.details)
        events.emit("clearing", {
            "interval": index, "price": None if clearing.price is None else float(clearing.price),
            "method": clearing.method, "volume_kwh": float(clearing.volume),
            "rejected": list(clearing.rejected)})

        # 3. Route: each rig's net onto the bus is its cleared trades plus what it settles
        #    with the grid, i.e. its physical position over the interval (hil.md "Routing").
        plans = plans_for(sc)
        hours = sc.interval_hours
        if self.log is not None:
            self.log.begin(index, self.clock.now())
        measured = await controller.run_interval(plans, start_hour=index * hours, hours=hours)

        # 4. Settle on what the meters measured; validate cleared against metered. A
        #    household whose counters failed, or whose energy the ledger refuses (beyond its
        #    rating), is disputed: not settled, its trades' escrow kept.
        ids = [h.id for h in sc.households]
        metered = {h: _metered_kwh(measured.metered_wh[h], self.rig.energy_scale) for h in ids}
        routed = {h.id: h.net_kwh for h in sc.households}
        records = {h: {"type": "metered", "household": h, "interval": index,
                       "energy_kwh": str(metered[h]), "hours": str(Fraction(str(hours)))}
                   for h in ids}
        disputed = dict(measured.disputed)
        for h in ids:
            if h not in disputed and (refused := _refusal(draft.state, records[h])):
                disputed[h] = f"the ledger refuses its metered energy: {refused}"
        measured.disputed = disputed
        settlement = settle(clearing.fills, metered, sc.tariff, sc.aud_per_token,
                            funds=dict(ledger.balances), disputed=disputed)
        # A rig that left the bus and came back is judged on the energy it could follow:
        # the target it missed while off (recorded with the interval) is its shortfall,
        # settled with the grid on what its meter measured (market.md).
        followable = {h: r - _metered_kwh(measured.readmitted[h]["missed_wh"],
                                          self.rig.energy_scale)
                      if h in measured.readmitted else r for h, r in routed.items()}
        checks = interval_checks(index, clearing, followable, metered, self.rig.tolerance_pct,
                                 measured.tripped)
        checks += [dataclasses.replace(c, suite=f"interval {index} DUT")
                   for c in measured.dut_checks]
        on_chain = self.chain.settle(metered, disputed) if self.chain is not None else {}

        # 5. Seal orders, fills, transfers and escrow releases in one block; write the
        #    interval atomically.
        draft.add({"type": "fill", "seller": f.seller, "buyer": f.buyer,
                   "energy_kwh": str(f.energy), "price": str(f.price)} for f in clearing.fills)
        draft.add(records[h] for h in ids if h not in disputed)
        draft.add(_dispute_txs(index, disputed, settlement.held, signed, draft.state.holds))
        draft.add(ledger.transfer_txs(settlement.transfers))
        draft.release_escrow()
        if agents and self.orders is not None:
            draft.add(self._late_txs(index, agents))
            checks += agent_checks(index, agents, agent_status, checks)
        if self.chain is not None:  # the draft's balances are the sealed block's
            checks += chain_checks(index, "EVM", python_clearing, clearing, rejected,
                                   chain_rejected, dict(draft.state.balances), on_chain)
        rows = self._interval_rows(index, clearing, settlement, measured, rejected, checks,
                                   funding, routed)
        draft.add([ledger.record(rows)])  # the block seals the rows written with it
        txs = draft.txs
        with self.store.transaction():
            block = ledger.seal(index, draft)
            if self.chain is not None:
                self.chain.record(self.store, run_id)
            for table, table_rows in rows.items():
                if table == "readings" and self.log is not None:
                    self.log.commit()  # written as they came; the last batch with the block
                else:
                    self.store.insert(table, table_rows)
        for i, f in enumerate(clearing.fills):
            events.emit("trade", {"interval": index, "seq": i, "seller": f.seller,
                                  "buyer": f.buyer, "energy_kwh": float(f.energy),
                                  "price": float(f.price)})
        events.emit("block", {**block, "txs": len(txs)})
        if agents and self.orders is not None:
            await self.orders.results(agent_results(
                run_id, index, index == self.n_intervals - 1, agents, agent_status, clearing,
                routed, metered, settlement))
        return IntervalOutcome(index, clearing, settlement, measured, routed, rejected, block,
                               checks, funding)

    async def _intake(self, index: int, sc: Scenario, agents: list[str], draft: BlockDraft,
                      submit: Callable[[dict[str, Any]], str | None],
                      status: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Agent households' orders: announce the gate, take what came by its close, and
        record every refusal in the block (``refused``, or the rules' ``rejected``); a
        household with no valid order gets the scenario's ``agent_absent`` default.
        Returns the orders submitted to the ledger."""
        if self.orders is None:
            raise InputError(self.scenario.source, f"households {agents} bid through agents: "
                             "give the run an agent broker (--agents mqtt://HOST:PORT)")
        gate = gate_message(self.run_id, index, sc, agents, self.gate_s)
        if self.chain is not None:  # what an agent needs to sign its order as a transaction
            gate["evm"] = self.chain.gate(agents)
        arrivals = await self.orders.collect(gate, agents)
        from testbed.agents import check_order

        submitted: list[dict[str, Any]] = []
        accepted: dict[str, str] = {}  # household -> hash of its order in the book
        refusals: dict[str, list[str]] = {h: [] for h in agents}
        for household, raw in arrivals:
            if household not in refusals:  # not an agent household (or no account at all)
                if household in draft.state.balances:
                    draft.add([_refused_tx(household, index, "not an agent household: its "
                                           "orders come from the scenario", raw)])
                continue
            order, why = check_order(raw, household, self.run_id, index)
            if order is not None and household in accepted and \
                    rules.tx_hash(order) != accepted[household]:
                order, why = None, "second order: one order per household and interval"
            if order is None:
                draft.add([_refused_tx(household, index, str(why), raw)])
                refusals[household].append(str(why))
                continue
            submitted.append(order)
            reason = submit(order)
            if reason is None:
                accepted[household] = rules.tx_hash(order)
            else:
                refusals[household].append(reason)
        for h in agents:
            status[h] = {"status": "accepted" if h in accepted else "absent",
                         "refused": refusals[h]}
            if h in accepted:
                continue
            default = next(x for x in sc.households if x.id == h)
            use = sc.agent_absent == "scenario" and default.side is not None \
                and default.price is not None and h in self.ledger.keys
            draft.add([_refused_tx(h, index, "absent: no valid order by the gate; "
                                   + ("the scenario's order placed" if use else "no order"),
                                   None)])
            if use:
                o = self.ledger.sign_order(_order_payload(
                    self.run_id, index, h, str(default.side), default.order_kwh,
                    Fraction(default.price or 0)))
                submitted.append(o)
                submit(o)
        return submitted

    def _late_txs(self, index: int, agents: list[str]) -> list[dict[str, Any]]:
        assert self.orders is not None
        return [_refused_tx(h, index, "late: came after the gate closed", raw)
                for h, raw in self.orders.late() if h in agents]

    def _interval_rows(self, index: int, clearing: Clearing, settlement: Settlement,
                       measured: IntervalMeasurement, rejected: dict[str, str],
                       checks: list[Check], funding: dict[str, str],
                       targets: dict[str, Fraction]) -> dict[str, list[dict[str, Any]]]:
        """The interval's rows, table -> rows, as the store will hold them."""
        run_id = self.run_id
        return {"intervals": [{
            "run_id": run_id, "idx": index,
            "clearing_price": None if clearing.price is None else str(clearing.price),
            "method": clearing.method, "volume_kwh": str(clearing.volume),
            "details": json.dumps({**clearing.details, "rejected": list(clearing.rejected),
                                   "rejected_orders": rejected, "funding": funding,
                                   "tripped": measured.tripped,
                                   "readmitted": measured.readmitted,
                                   "disputed": measured.disputed,
                                   "checks": [dataclasses.asdict(c) for c in checks],
                                   "targets_kwh": {h: str(x) for h, x in targets.items()},
                                   "metered_wh_lab": measured.metered_wh,
                                   "grid_import_wh_lab": measured.grid_import_wh,
                                   "grid_export_wh_lab": measured.grid_export_wh}),
            "lab_start_s": measured.start_s, "lab_end_s": measured.end_s}],
            "trades": [{"run_id": run_id, "interval": index, "seq": i,
                                 "seller": f.seller, "buyer": f.buyer,
                                 "energy_kwh": str(f.energy), "price": str(f.price)}
                                for i, f in enumerate(clearing.fills)],
            "results": [{"run_id": run_id, "interval": index, "household": s.id,
                                  "body": json.dumps({
                                      "cleared_kwh": str(s.cleared_kwh),
                                      "metered_kwh": str(s.metered_kwh),
                                      "grid_import_kwh": str(s.grid_import_kwh),
                                      "grid_export_kwh": str(s.grid_export_kwh),
                                      "market_aud": str(s.market_aud),
                                      "grid_aud": str(s.grid_aud),
                                      "unfunded_micro": s.unfunded_micro,
                                      **({"disputed": s.disputed} if s.disputed else {})})}
                                 for s in settlement.households],
            "readings": [{"run_id": run_id, "interval": index, **r}
                         for r in measured.readings]}


def _named(kind: str, name: str, source: str) -> str:
    """How a run names its scenario or rig for a resume: the built-in name, else the file's
    absolute path."""
    if source == f"built-in {kind} '{name}'":
        return name
    from pathlib import Path

    return str(Path(source).resolve())


def launch_of(scenario: Scenario, rig: RigSpec, clock: Clock, ledger: str,
              gate_s: float) -> dict[str, Any]:
    """The ``launch`` kept in a run's params when its caller gave none (the API): what
    ``testbed run --resume`` needs to start it again the same way (virtual time is
    ``max``, real time the rig's time scale)."""
    return {"launch": {
        "scenario": _named("scenario", scenario.name, scenario.source),
        "rig": _named("rig", rig.name, rig.source),
        "speed": "max" if isinstance(clock, VirtualClock) else format(rig.time_scale, "g"),
        "ledger": ledger, "agents": None, "gate_s": gate_s}}


def _start(scenario: Scenario, rig: RigSpec, store: Store, clock: Clock,
           events: EventBus, run_id: str, chain_spec: str = "sqlite",
           launch: Mapping[str, Any] | None = None) -> Run:
    ids = [h.id for h in scenario.households]
    agent_keys: Mapping[str, Any] = {}  # household -> registered key (testbed.agents)
    if agent_ids := [h.id for h in scenario.households if h.orders == "agent"]:
        from testbed.agents import registered

        agent_keys = registered(agent_ids)
    opening = {h.id: to_micro(scenario.opening_tokens(h)) for h in scenario.households}
    chain = open_chain(chain_spec, scenario, opening)
    with store.transaction():
        lifecycle.start_record(store, run_id=run_id, scenario=scenario.name, rig=rig.name,
                               mechanism=scenario.mechanism, params={
                                   "rig_source": rig.source,
                                   "scenario_source": scenario.source,
                                   "time_scale": rig.time_scale,
                                   "power_scale": rig.power_scale,
                                   "control_period_s": rig.control_period_s,
                                   "tolerance_pct": rig.tolerance_pct,
                                   "ledger": chain_spec, **(launch or {})})
        ledger = Ledger.create(store, run_id, ids, opening, scenario.aud_per_token,
                               ratings=ratings(rig, ids), agents=agent_keys)
        if chain is not None:
            chain.record(store, run_id)
            if keys := chain.secrets():  # a node's accounts: kept for resume and verify
                store.on_commit(lambda: ledger.keyring.save_eth_keys(run_id, ledger.genesis,
                                                                     keys))
    return Run(scenario, rig, store, clock, events, run_id, ledger, opening, 0, chain)


def _resume(scenario: Scenario, rig: RigSpec, store: Store, clock: Clock,
            events: EventBus, run_id: str, chain_spec: str = "sqlite") -> Run:
    r = lifecycle.resumable(store, run_id)  # InputError: no such run, finished, running
    if r.row["scenario"] != scenario.name:
        raise InputError(f"--resume {run_id}",
                         f"that run is of scenario {r.row['scenario']!r}, not {scenario.name!r}")
    ledger = Ledger.load(store, run_id)  # verifies the chain from genesis
    opening = {k: v for k, v in ledger.opening().items() if k != GRID}
    # the chain first: it may refuse the resume (an interval settled on-chain, not here)
    chain = resume_chain(chain_spec, store, run_id, ledger, r.next_interval)
    r = lifecycle.resume_record(store, run_id, events)
    return Run(scenario, rig, store, clock, events, run_id, ledger, opening, r.next_interval,
               chain)


async def require_a_meter(bench: Bench, rig: RigSpec) -> None:
    """Refuse to start (InputError naming the rig, the bench closed, nothing written) when
    not one household's meter answers: a run settles on meters, and without any it would
    only drive the bench blind. A meter that fails while others answer takes its rig off
    the bus at the start (controller)."""
    houses = bench.households
    readings = await asyncio.gather(*(h.meter.read() for h in houses.values()),
                                    return_exceptions=True)
    errors = [f"{hid}: {r}" for hid, r in zip(houses, readings, strict=True)
              if isinstance(r, BaseException)]
    if len(errors) == len(houses):
        await asyncio.gather(*(d.close() for d in bench.devices()), return_exceptions=True)
        raise InputError(rig.source, "no meter is reachable, refusing to start (" +
                         "; ".join(errors[:3]) + (" ..." if len(errors) > 3 else "") + ")")


async def require_answers(bench: Bench, rig: RigSpec) -> None:
    """Refuse to start (InputError naming each device and why) when an actuator, relay or
    the grid node does not say who it is or refuses its set-up (watchdog, init lines): an
    instrument switched off, unplugged, at the wrong address or configured wrong is a
    set-up error, found before the bench moves. Nothing has been switched on then; every
    device is still sent its safe state (best effort: a bench left live by an earlier run
    goes off), and the bench is closed. Meters: :func:`require_a_meter`."""
    devices = [d for h in bench.households.values() for d in h.all() if d is not h.meter]
    devices.append(bench.grid)
    answers = await asyncio.gather(*(d.identify() for d in devices), return_exceptions=True)
    errors = [f"{d.name}: {a}" for d, a in zip(devices, answers, strict=True)
              if isinstance(a, Exception)]
    if errors:
        await asyncio.gather(*(d.safe_state() for d in devices), return_exceptions=True)
        await asyncio.gather(*(d.close() for d in bench.devices()), return_exceptions=True)
        raise InputError(rig.source, f"{len(errors)} instrument(s) failed at identify and "
                         "set-up, nothing was switched on (" + "; ".join(errors[:3]) +
                         (" ..." if len(errors) > 3 else "") + ")")


async def run_scenario(scenario: Scenario, rig: RigSpec, store: Store, *,
                       clock: Clock | None = None, observers: list[Observer] | None = None,
                       resume: str | None = None, run_id: str | None = None,
                       on_controller: Callable[[Controller], None] | None = None,
                       ledger: str = "sqlite", orders: OrderSource | None = None,
                       gate_s: float = 10.0, launch: Mapping[str, Any] | None = None,
                       ) -> RunOutcome:
    """Run (or resume) ``scenario`` on ``rig``; the bench is left safe however it ends
    (:func:`testbed.run.lifecycle.drive`). ``ledger``: ``sqlite``, or
    ``evm``/``evm+http://HOST:PORT`` for the contract on an EVM beside it (raises
    :class:`InputError` when that back-end cannot start). ``orders``: where the households
    marked ``orders = "agent"`` bid from (``gate_s``: seconds each gate stays open);
    InputError when such a household has none. ``launch``: how the run was started
    (JSON-ready: the CLI's scenario, rig, speed...), kept in the run's params for
    ``--resume``."""
    agents = [h.id for h in scenario.households if h.orders == "agent"]
    if agents and orders is None:
        raise InputError(scenario.source, f"households {agents} bid through agents: give "
                         "the run an agent broker (--agents mqtt://HOST:PORT)")
    check_scenario_fits_rig(scenario, rig)
    mechanism_for(scenario)  # fail on an unknown mechanism before touching anything
    plans = plans_for(scenario)
    preflight.ensure_fits(rig, [(0.0, scenario.interval_hours, plans)])
    clock = clock or (VirtualClock() if all_mock(rig) else RealClock())
    run_id = resume or run_id or uuid.uuid4().hex[:12]
    log = lifecycle.RunLog(store, run_id, rig.control_period_s)
    events = EventBus([*(observers or []), store.safety_log(run_id), store.event_log(run_id),
                       log], context={"run": run_id})
    bench = build_bench(rig, clock)
    preflight.ensure_links_carry(bench, rig)
    await require_a_meter(bench, rig)
    await require_answers(bench, rig)
    run = (_resume(scenario, rig, store, clock, events, run_id, ledger) if resume else
           _start(scenario, rig, store, clock, events, run_id, ledger,
                  launch or launch_of(scenario, rig, clock, ledger, gate_s)))
    run.orders, run.gate_s, run.log = orders, gate_s, log
    events.emit("status", {"status": "running", "scenario": scenario.name, "rig": rig.name,
                           "intervals": run.n_intervals, "from_interval": run.next_interval,
                           "interval_hours": scenario.interval_hours})
    if not isinstance(clock, VirtualClock):  # real time: say what the bench will move
        events.emit("safety", {"event": "lab_plan", "households": preflight.lab_plan(
            rig, plans, scenario.interval_hours)})
    live = preflight.unwatched(rig)
    if live:  # pre-flight: what a dead controller would leave on
        events.emit("safety", {"event": "preflight", "live_if_controller_dies": live})
    outcomes = await lifecycle.drive(store, run_id, bench, clock, events, log, run.execute,
                                     on_controller)
    extra = {} if run.chain is None else {"evm": run.chain.describe()}
    return RunOutcome(run_id, scenario, rig, outcomes, run.opening, dict(run.ledger.balances),
                      run.ledger.head, run.ledger.height, "finished",
                      resumed_from=run.next_interval if resume else None, extra=extra,
                      db=store.path)
