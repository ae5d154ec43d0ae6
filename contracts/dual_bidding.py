"""Dual bidding with a uniform market clearing price (market.md section 1).

A two-sided, uniform-price double auction. Buyers are served highest bid first, sellers
lowest ask first; ties go to the larger energy, then to the household id. Matching walks
both lists while bid >= ask. The price is set by

* method 2 (the paper's Eq. 8): the crossing splits one order; its price clears;
* method 1 (the paper's Eq. 7): supply meets demand exactly; any price in [L, U] clears,
  ``L = max(accepted asks, rejected bids)``, ``U = min(accepted bids, rejected asks)``,
  and the contract takes ``alpha * U + (1 - alpha) * L``.

All arithmetic is on integers over one common denominator per book, so the result is
exact and sorting a large book costs O(n log n) integer comparisons, not Fraction ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from contracts.mechanism import Clearing, Fill
from contracts.numbers import exact
from contracts.orders import Order, Side, natural_key

METHOD_EXACT = 1  # supply meets demand: alpha-weighted price in [L, U]
METHOD_SPLIT = 2  # the crossing splits the marginal order: its price


@dataclass(frozen=True)
class DualBidding:
    """The dual-bidding contract; ``alpha`` in [0, 1] weights U against L in method 1."""

    alpha: Fraction = Fraction(1, 5)
    name: str = "dual_bidding"

    def __post_init__(self) -> None:
        alpha = exact(self.alpha)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        object.__setattr__(self, "alpha", alpha)

    def clear(self, orders: Sequence[Order]) -> Clearing:
        return clear(orders, self.alpha)


_id_key = lru_cache(maxsize=65536)(natural_key)


def clear(orders: Sequence[Order], alpha: Fraction = Fraction(1, 5)) -> Clearing:
    """Clear one order book. Pure: the same book in any order gives the same result."""
    ids = [o.id for o in orders]
    if len(set(ids)) != len(ids):
        raise ValueError("order ids must be unique within a book")

    # One common denominator for energies and one for prices: integer arithmetic below.
    e_den = math.lcm(*{o.energy.denominator for o in orders}) if orders else 1
    p_den = math.lcm(*{o.price.denominator for o in orders}) if orders else 1

    def ints(o: Order) -> tuple[int, int]:
        return (o.energy.numerator * (e_den // o.energy.denominator),
                o.price.numerator * (p_den // o.price.denominator))

    buys = sorted(
        ((*ints(o), o.id) for o in orders if o.side is Side.BUY),
        key=lambda b: (-b[1], -b[0], _id_key(b[2])),
    )
    sells = sorted(
        ((*ints(o), o.id) for o in orders if o.side is Side.SELL),
        key=lambda s: (s[1], -s[0], _id_key(s[2])),
    )

    fills: list[tuple[str, str, int]] = []
    filled: dict[str, int] = {}
    i = j = 0
    b_left = buys[0][0] if buys else 0
    s_left = sells[0][0] if sells else 0
    while i < len(buys) and j < len(sells) and buys[i][1] >= sells[j][1]:
        q = min(b_left, s_left)
        bid, ask = buys[i][2], sells[j][2]
        fills.append((ask, bid, q))
        filled[bid] = filled.get(bid, 0) + q
        filled[ask] = filled.get(ask, 0) + q
        b_left -= q
        s_left -= q
        if b_left == 0:
            i += 1
            b_left = buys[i][0] if i < len(buys) else 0
        if s_left == 0:
            j += 1
            s_left = sells[j][0] if j < len(sells) else 0

    rejected = tuple(o.id for o in orders if o.id not in filled)
    if not fills:
        return Clearing((), rejected, None, None)

    # The marginal order: the one the walk stopped inside, if any was partly filled.
    price_int: Fraction
    details: dict[str, str]
    if i < len(buys) and 0 < filled.get(buys[i][2], 0) < buys[i][0]:
        method, price_int = METHOD_SPLIT, Fraction(buys[i][1])
        details = {"marginal_order": buys[i][2], "long_side": "demand"}
    elif j < len(sells) and 0 < filled.get(sells[j][2], 0) < sells[j][0]:
        method, price_int = METHOD_SPLIT, Fraction(sells[j][1])
        details = {"marginal_order": sells[j][2], "long_side": "supply"}
    else:
        accepted_asks = [s[1] for s in sells[:j]]
        accepted_bids = [b[1] for b in buys[:i]]
        rejected_bids = [b[1] for b in buys[i:]]
        rejected_asks = [s[1] for s in sells[j:]]
        lower = max(accepted_asks + rejected_bids)
        upper = min(accepted_bids + rejected_asks)
        method = METHOD_EXACT
        price_int = alpha * upper + (1 - alpha) * lower
        details = {"L": str(Fraction(lower, p_den)), "U": str(Fraction(upper, p_den))}

    price = price_int / p_den
    return Clearing(
        fills=tuple(Fill(s, b, Fraction(q, e_den), price) for s, b, q in fills),
        rejected=rejected,
        price=price,
        method=method,
        details=details,
    )
