"""Settling an interval on metered energy: who pays whom, in exact AUD and integer tokens.

Per household, ``cleared`` is what it sold minus what it bought (kWh) and ``metered`` what
its meter exported minus imported over the interval. Every fill is paid at its price. The
difference ``metered - cleared`` settles with the grid:

* more exported than sold (unsold surplus, over-delivery): fed in at the feed-in tariff;
* less exported than sold, or more imported than bought (oversell shortfall, unmet
  demand): imported at the import tariff;
* a buyer that takes less than it bought pays for what it bought; what it left is not
  credited (the grid absorbs it) unless the household actually exported, which is fed in.

A household whose metered energy is *disputed* (a meter counter fault, see
``testbed.controller``) is not settled at all: no grid settlement, and every fill it is a
party to is *held* (unpaid, its escrow kept) for the operator to decide; its counterparty
still counts the held fill as cleared, so it is not paid twice for the same energy.

Money moves as transfers of integer micro-units, each from one account to another, so the
sum of all balances (households and the grid) is conserved exactly by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from contracts.mechanism import Fill
from contracts.numbers import aud_to_micro

GRID = "grid"


@dataclass(frozen=True, slots=True)
class Tariff:
    import_aud_per_kwh: Fraction
    feed_in_aud_per_kwh: Fraction


@dataclass(frozen=True, slots=True)
class Transfer:
    """``amount`` micro-units of the token from ``source`` to ``target``."""

    source: str
    target: str
    amount: int
    memo: str


@dataclass(frozen=True, slots=True)
class HouseholdSettlement:
    id: str
    cleared_kwh: Fraction
    metered_kwh: Fraction
    grid_import_kwh: Fraction
    grid_export_kwh: Fraction
    market_aud: Fraction  # + received from the community, - paid to it
    grid_aud: Fraction  # + feed-in income, - import cost
    disputed: str = ""  # why this household's interval is not settled ("" = settled)

    @property
    def net_aud(self) -> Fraction:
        return self.market_aud + self.grid_aud


@dataclass(frozen=True, slots=True)
class Settlement:
    households: tuple[HouseholdSettlement, ...]
    transfers: tuple[Transfer, ...]
    held: tuple[Fill, ...] = ()  # fills with a disputed party: not paid, escrow kept

    @property
    def community_net_aud(self) -> Fraction:
        """What the community as a whole gains from (or pays to) the grid."""
        return sum((h.net_aud for h in self.households), Fraction(0))

    @property
    def grid_import_kwh(self) -> Fraction:
        return sum((h.grid_import_kwh for h in self.households), Fraction(0))

    @property
    def grid_export_kwh(self) -> Fraction:
        return sum((h.grid_export_kwh for h in self.households), Fraction(0))


def settle(
    fills: Sequence[Fill],
    metered_kwh: Mapping[str, Fraction],
    tariff: Tariff,
    aud_per_token: Fraction,
    disputed: Mapping[str, str] | None = None,
) -> Settlement:
    """Settle one interval. ``metered_kwh`` must name every household (fills use its ids);
    ``disputed`` (household -> reason) are left unsettled, their fills held."""
    disputed = disputed or {}
    held: list[Fill] = []
    transfers: list[Transfer] = []
    market: dict[str, Fraction] = {h: Fraction(0) for h in metered_kwh}
    cleared: dict[str, Fraction] = {h: Fraction(0) for h in metered_kwh}
    bought: dict[str, Fraction] = {h: Fraction(0) for h in metered_kwh}
    for f in fills:
        for party in (f.seller, f.buyer):
            if party not in metered_kwh:
                raise KeyError(f"fill names household {party!r} with no meter reading")
        cleared[f.seller] += f.energy
        cleared[f.buyer] -= f.energy
        bought[f.buyer] += f.energy
        if f.seller in disputed or f.buyer in disputed:
            held.append(f)
            continue
        aud = f.energy * f.price
        market[f.seller] += aud
        market[f.buyer] -= aud
        transfers.append(Transfer(f.buyer, f.seller, aud_to_micro(aud, aud_per_token),
                                  f"energy {f.energy} kWh at {f.price} AUD/kWh"))

    rows = []
    for h, metered in metered_kwh.items():
        if h in disputed:
            rows.append(HouseholdSettlement(h, cleared[h], metered, Fraction(0), Fraction(0),
                                            market[h], Fraction(0), disputed[h]))
            continue
        deviation = metered - cleared[h]
        if deviation >= 0:
            # Left untaken by a buyer is not credited; only real export beyond it is.
            export = max(deviation - bought[h], Fraction(0)) if bought[h] else deviation
            imported = Fraction(0)
        else:
            export, imported = Fraction(0), -deviation
        grid_aud = export * tariff.feed_in_aud_per_kwh - imported * tariff.import_aud_per_kwh
        if imported:
            transfers.append(Transfer(h, GRID, aud_to_micro(
                imported * tariff.import_aud_per_kwh, aud_per_token),
                f"grid import {imported} kWh"))
        if export:
            transfers.append(Transfer(GRID, h, aud_to_micro(
                export * tariff.feed_in_aud_per_kwh, aud_per_token),
                f"grid feed-in {export} kWh"))
        rows.append(HouseholdSettlement(h, cleared[h], metered, imported, export,
                                        market[h], grid_aud))
    return Settlement(tuple(rows), tuple(t for t in transfers if t.amount), tuple(held))


def apply(balances: Mapping[str, int], transfers: Sequence[Transfer]) -> dict[str, int]:
    """New balances after ``transfers``; every account must exist. Sum is unchanged."""
    out = dict(balances)
    for t in transfers:
        for account in (t.source, t.target):
            if account not in out:
                raise KeyError(f"transfer names unknown account {account!r}")
        out[t.source] -= t.amount
        out[t.target] += t.amount
    return out
