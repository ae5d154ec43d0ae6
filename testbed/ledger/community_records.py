"""What a community day puts on the ledger: signed requests and offers, fills and the
money, one block per hour.

:class:`DayBook` is the day simulation's recorder: it keeps each hour's rounds and feed-ins.
:func:`seal_hour` turns an hour into a block: every request and offer signed by its
household (``type: "order"``, checked by the ledger's rules), every fill, and the hour's
transfers. Offers the contract refused at collection (late, malformed) are orders like any
other on the chain; the refusal and its reason are in the hour's ``intervals`` row, since
the ledger has no transaction type for a contract's refusal.

Money moves in integer micro-units of the token at 370 AUD/ETH (scenarios.md). Each payer
and payee pair (buyer to seller, buyer to grid, grid to a home for its feed-in) has a
running exact AUD total; each hour moves the difference between its total rounded to the
micro-unit now and at the previous hour. So every pair's micro-units over the day are its
exact total rounded once, and every transfer is an integer from one account to another:
the sum of all balances is conserved exactly.

All calls into :class:`testbed.ledger.chain.Ledger` are in :func:`open_ledger` and
:func:`seal_hour`, so a change of the ledger's API touches only them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from contracts.cesdt import Offer, Round
from contracts.numbers import aud_to_micro
from contracts.settlement import GRID, Transfer
from testbed.ledger.chain import Ledger
from testbed.ledger.store import Store

AUD_PER_ETH = Fraction(370)
OPENING_MICRO = 100_000  # 0.1 ETH (37 AUD) per household: a day's bills and escrows
Pair = tuple[str, str]


@dataclass
class HourBook:
    """One hour of the day: its rounds (with the offers each received), its feed-ins and
    the exact AUD each payer owes each payee for the hour."""

    rounds: list[tuple[Round, Sequence[Offer]]] = field(default_factory=list)
    exports: list[tuple[str, Fraction, Fraction]] = field(default_factory=list)
    owed: dict[Pair, Fraction] = field(default_factory=lambda: defaultdict(Fraction))


class DayBook:
    """The recorder :func:`testbed.community.day.simulate_day` fills, hour by hour."""

    def __init__(self) -> None:
        self.hours = [HourBook() for _ in range(24)]

    def round(self, hour: int, rnd: Round, offers: Sequence[Offer]) -> None:
        book = self.hours[hour]
        book.rounds.append((rnd, offers))
        for f in rnd.fills:
            book.owed[(f.buyer, f.seller)] += f.energy * f.price
        for r, grid in zip(rnd.requests, rnd.grid_energies, strict=True):
            if grid:
                book.owed[(r.buyer, GRID)] += grid * rnd.grid_price

    def export(self, hour: int, home: str, energy: Fraction, amount: Fraction) -> None:
        book = self.hours[hour]
        book.exports.append((home, energy, amount))
        book.owed[(GRID, home)] += amount


class Transfers:
    """Hourly transfers whose per-pair sums are the exact day totals rounded once."""

    def __init__(self, aud_per_token: Fraction = AUD_PER_ETH) -> None:
        self.rate = aud_per_token
        self.total: dict[Pair, Fraction] = defaultdict(Fraction)
        self.sent: dict[Pair, int] = defaultdict(int)

    def hour(self, hour: int, owed: dict[Pair, Fraction]) -> tuple[Transfer, ...]:
        out = []
        for pair in sorted(owed):
            self.total[pair] += owed[pair]
            amount = aud_to_micro(self.total[pair], self.rate) - self.sent[pair]
            if amount:
                self.sent[pair] += amount
                out.append(Transfer(pair[0], pair[1], amount,
                                    f"hour {hour}: {owed[pair]} AUD ({self.total[pair]} today)"))
        return tuple(out)


def open_ledger(store: Store, run_id: str, ids: Sequence[str]) -> Ledger:
    """Keys for every household, and the genesis block with their opening deposits (inside
    the caller's transaction)."""
    return Ledger.create(store, run_id, list(ids), dict.fromkeys(ids, OPENING_MICRO),
                         AUD_PER_ETH)


@dataclass
class Sealed:
    """What one hour put on the chain."""

    block: dict[str, Any]
    txs: int
    orders: int
    refused: dict[str, str]  # ledger-refused orders (hash -> reason); none are expected


def seal_hour(store: Store, ledger: Ledger, run_id: str, hour: int, book: HourBook,
              transfers: tuple[Transfer, ...],
              rows: dict[str, list[dict[str, Any]]],
              inside: Callable[[], None] | None = None) -> Sealed:
    """The hour's block: every request and offer signed by its household and checked by
    the ledger's rules (a buy order's escrow is released at the block's end, its bill paid
    by the transfers), every fill, the transfers; written with the hour's run rows (table
    -> rows, sealed by the block's ``record``) in one SQLite transaction; ``inside`` is
    called in it too (the run's last readings, :meth:`testbed.run.lifecycle.RunLog.commit`)."""
    draft = ledger.draft()
    orders = 0
    for rnd, offers in book.rounds:
        for r in rnd.requests:
            draft.submit(ledger.sign_order({
                "kind": "request", "run": run_id, "interval": hour, "tick": r.made_at,
                "household": r.buyer, "side": "buy", "energy_kwh": str(r.energy),
                "price": str(r.limit_price), "bid": r.wants_bid}))
        for o in offers:
            draft.submit(ledger.sign_order({
                "kind": "offer", "run": run_id, "interval": hour, "tick": rnd.tick,
                "household": o.seller, "side": "sell", "energy_kwh": str(o.energy),
                "price": str(o.price), "submitted_at": o.submitted_at}))
        orders += len(rnd.requests) + len(offers)
        draft.add([{"type": "fill", "tick": rnd.tick, "seller": f.seller, "buyer": f.buyer,
                    "energy_kwh": str(f.energy), "price": str(f.price)} for f in rnd.fills])
    draft.add(Ledger.transfer_txs(transfers))
    draft.release_escrow()
    draft.add([ledger.record(rows)])  # the block seals the rows written with it
    with store.transaction():
        block = ledger.seal(hour, draft)
        for table, table_rows in rows.items():
            store.insert(table, table_rows)
        if inside is not None:
            inside()
    return Sealed(block, len(draft.txs), orders, dict(draft.rejected))
