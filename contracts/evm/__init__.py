"""The market contract for the Ethereum virtual machine, and its integer units.

``market.vy`` (Vyper) holds the same rules as :mod:`contracts.dual_bidding` and
:mod:`contracts.settlement`. This module is the pure half of the bridge: the exact
conversions between the Python contract's fractions and the chain's integers, the
priority order the operator proposes, and the chain's clearing read back as a
:class:`~contracts.mechanism.Clearing`. Nothing here needs the compiler or a chain.

Units on the chain: energy in micro-kWh (mWh), prices in micro-AUD per kWh, the token's
rate in micro-AUD per ETH, money in wei, every payment a whole micro-ETH (1e12 wei).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from contracts.mechanism import Clearing, Fill
from contracts.numbers import MICRO

WEI_PER_MICRO = 10**12  # one micro-ETH in wei
WEI_PER_ETH = 10**18
MAX_UNITS = 10**15  # the contract's bound on energies, prices and readings
MAX_SIDE = 1024  # orders per side in one interval (market.vy)
MAX_HOUSEHOLDS = 2048


def micro_units(value: Fraction, what: str) -> int:
    """``value`` (kWh, AUD/kWh or AUD/ETH) in exact integer millionths.

    Raises ``ValueError`` naming ``what`` when the value is not a whole number of
    millionths or lies outside [-MAX_UNITS, MAX_UNITS] (the contract's bound).
    """
    scaled = value * MICRO
    if scaled.denominator != 1:
        raise ValueError(f"{what} {value} is not a whole number of millionths: the EVM "
                         "contract counts micro-kWh and micro-AUD")
    if abs(scaled.numerator) > MAX_UNITS:
        raise ValueError(f"{what} {value} lies beyond the contract's bound of "
                         f"{Fraction(MAX_UNITS, MICRO)}")
    return scaled.numerator


def wei_to_micro(wei: int) -> int:
    """Wei -> micro-ETH; the contract only ever moves whole micro-ETH."""
    if wei % WEI_PER_MICRO:
        raise ValueError(f"{wei} wei is not a whole number of micro-ETH")
    return wei // WEI_PER_MICRO


@dataclass(frozen=True, slots=True)
class ChainOrder:
    """An order as the chain holds it: index in the interval, household number (1, 2, ...),
    side, energy (micro-kWh) and price (micro-AUD/kWh)."""

    index: int
    hid: int
    is_buy: bool
    energy: int
    price: int


def priority(orders: Sequence[ChainOrder]) -> tuple[list[int], list[int]]:
    """The order indices the operator proposes: buyers highest bid first, sellers lowest
    ask first; ties larger energy first, then the lower household number (market.md)."""
    buys = sorted((o for o in orders if o.is_buy), key=lambda o: (-o.price, -o.energy, o.hid))
    sells = sorted((o for o in orders if not o.is_buy),
                   key=lambda o: (o.price, -o.energy, o.hid))
    return [o.index for o in buys], [o.index for o in sells]


def clearing_from_events(cleared: Mapping[str, int], fills: Sequence[Mapping[str, int]],
                         orders: Sequence[ChainOrder], names: Mapping[int, str]) -> Clearing:
    """The chain's ``Cleared`` and ``Fill`` events as a :class:`Clearing` with the order ids
    ``names`` gives each household number; ``rejected`` in the book's order."""
    out = tuple(Fill(names[f["seller"]], names[f["buyer"]], Fraction(f["energy"], MICRO),
                     Fraction(cleared["price_num"], cleared["price_den"] * MICRO))
                for f in fills)
    traded = {f.seller for f in out} | {f.buyer for f in out}
    rejected = tuple(names[o.hid] for o in orders if names[o.hid] not in traded)
    if not out:
        return Clearing((), rejected, None, None)
    return Clearing(out, rejected, out[0].price, int(cleared["method"]))
