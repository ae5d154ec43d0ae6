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
``testbed.run.controller``) is not settled at all: no grid settlement, and every fill it is a
party to is *held* (unpaid, its escrow kept) for the operator to decide; its counterparty
still counts the held fill as cleared, so it is not paid twice for the same energy.

Money moves as transfers of integer micro-units, each from one account to another, so the
sum of all balances (households and the grid) is conserved exactly by construction.

No credit (the ledger refuses a transfer that takes a household below zero): before an
interval :func:`fund` limits each household's position to what its balance can pay in the
worst case, and :func:`settle` given the balances charges a household for grid energy at
most what it holds after its market transfers; what a fault left unpaid (a seller taken off
the bus, say) is reported as ``unfunded_micro``, never owed as a negative balance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from contracts.mechanism import Fill
from contracts.numbers import MICRO, aud_to_micro, fmt

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
    unfunded_micro: int = 0  # grid import its balance could not pay (the grid's loss)
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
    *,
    funds: Mapping[str, int] | None = None,
    disputed: Mapping[str, str] | None = None,
) -> Settlement:
    """Settle one interval. ``metered_kwh`` must name every household (fills use its ids).

    ``funds``: each household's balance (micro-units) before the interval; when given, its
    grid import is charged only up to what it holds after its market transfers, and the
    rest is its ``unfunded_micro`` (no balance goes below zero). ``disputed`` (household ->
    reason) are left unsettled, their fills held."""
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
                                            market[h], Fraction(0), disputed=disputed[h]))
            continue
        deviation = metered - cleared[h]
        if deviation >= 0:
            # Left untaken by a buyer is not credited; only real export beyond it is.
            export = max(deviation - bought[h], Fraction(0)) if bought[h] else deviation
            imported = Fraction(0)
        else:
            export, imported = Fraction(0), -deviation
        grid_aud = export * tariff.feed_in_aud_per_kwh - imported * tariff.import_aud_per_kwh
        unfunded = 0
        if imported:
            charge = aud_to_micro(imported * tariff.import_aud_per_kwh, aud_per_token)
            if funds is not None:
                balance = funds.get(h, 0) + sum(t.amount for t in transfers if t.target == h) \
                    - sum(t.amount for t in transfers if t.source == h)
                unfunded = max(charge - max(balance, 0), 0)
                charge -= unfunded
                grid_aud += Fraction(unfunded, MICRO) * aud_per_token
            transfers.append(Transfer(h, GRID, charge, f"grid import {imported} kWh"
                                      + (f" ({unfunded} µ unfunded)" if unfunded else "")))
        if export:
            transfers.append(Transfer(GRID, h, aud_to_micro(
                export * tariff.feed_in_aud_per_kwh, aud_per_token),
                f"grid feed-in {export} kWh"))
        rows.append(HouseholdSettlement(h, cleared[h], metered, imported, export,
                                        market[h], grid_aud, unfunded))
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


@dataclass(frozen=True, slots=True)
class Funding:
    """The position a household may take with its balance (see :func:`fund`)."""

    net_kwh: Fraction  # + surplus, - draw from the bus over the interval
    offer_kwh: Fraction | None  # a seller's offer, None = its surplus
    reason: str | None  # None: funded as asked; else why it was refused or limited

    @property
    def refused(self) -> bool:
        return self.reason is not None and self.net_kwh == 0


def _floor_micro_kwh(x: Fraction) -> Fraction:
    return Fraction(int(x * MICRO // 1), MICRO)


def fund(net_kwh: Fraction, offer_kwh: Fraction | None, price: Fraction | None,
         tariff: Tariff, funds_micro: int, aud_per_token: Fraction, margin: Fraction,
         ) -> Funding:
    """No credit at the gate: limit a household's interval position to what ``funds_micro``
    can pay in the worst case.

    A buyer (``net_kwh < 0``) may be charged for every kWh it draws at ``max(import tariff,
    its bid)`` (nothing clears and the grid supplies it, or it clears at its bid), on a meter
    that may read ``margin`` (a fraction, the rig's tolerance) above its target: its draw is
    limited to what its balance pays at that rate (to the micro-kWh), and refused when that
    is nothing. A seller whose offer exceeds what it will deliver (``net_kwh`` less the
    margin) pays the shortfall at the import tariff and is paid at least its ask: its offer
    is limited so that the worst case is covered. Returns the allowed position and, when it
    differs from the one asked, the reason (kWh and AUD named).
    """
    funds_aud = Fraction(max(funds_micro, 0), MICRO) * aud_per_token
    if net_kwh < 0:
        unit = max(tariff.import_aud_per_kwh, price or Fraction(0)) * (1 + margin)
        need = -net_kwh * unit
        if need <= funds_aud:
            return Funding(net_kwh, offer_kwh, None)
        allowed = _floor_micro_kwh(funds_aud / unit) if unit else -net_kwh
        what = (f"drawing {fmt(-net_kwh)} kWh may cost {fmt(need)} AUD at {fmt(unit)} "
                f"AUD/kWh (import or bid, with the {fmt(margin * 100)} % meter margin); its "
                f"balance holds {fmt(funds_aud)} AUD")
        if allowed <= 0:
            return Funding(Fraction(0), None, f"refused at the gate (no credit): {what}")
        return Funding(-allowed, None, f"draw limited to {fmt(allowed)} kWh (no credit): {what}")
    if net_kwh <= 0 or offer_kwh is None or price is None:
        return Funding(net_kwh, offer_kwh, None)
    delivered = net_kwh * (1 - margin)
    gap = tariff.import_aud_per_kwh - price
    if offer_kwh <= delivered or gap <= 0:
        return Funding(net_kwh, offer_kwh, None)
    worst = offer_kwh * gap - delivered * tariff.import_aud_per_kwh
    if worst <= funds_aud:
        return Funding(net_kwh, offer_kwh, None)
    allowed = max(_floor_micro_kwh((funds_aud + delivered * tariff.import_aud_per_kwh) / gap),
                  Fraction(0))
    return Funding(net_kwh, allowed,
                   f"offer limited to {fmt(allowed)} kWh (no credit): offering {fmt(offer_kwh)} "
                   f"kWh against {fmt(delivered)} kWh delivered may cost {fmt(worst)} AUD; its "
                   f"balance holds {fmt(funds_aud)} AUD")
