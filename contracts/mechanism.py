"""What every market mechanism returns, so the controller treats them alike.

A mechanism is a pure function of an order book (plus its parameters, fixed at
construction): ``clear(orders) -> Clearing``. Clearing is kept apart from the exchange
(who signs, who pays, what the meters said), as gsy-framework keeps its matching
algorithms apart from its market.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

from contracts.orders import Order


@dataclass(frozen=True, slots=True)
class Fill:
    """``energy`` kWh from ``seller`` to ``buyer`` at ``price`` AUD/kWh (order ids)."""

    seller: str
    buyer: str
    energy: Fraction
    price: Fraction


@dataclass(frozen=True, slots=True)
class Clearing:
    """The outcome of one trading interval.

    ``price`` is the uniform clearing price where the mechanism has one, else ``None``;
    ``method`` names how it was set (mechanism-specific, ``None`` when nothing traded);
    ``rejected`` lists the ids of orders that got no fill at all, in book order.
    """

    fills: tuple[Fill, ...]
    rejected: tuple[str, ...]
    price: Fraction | None
    method: int | None
    details: dict[str, str] = field(default_factory=dict)

    @property
    def volume(self) -> Fraction:
        return sum((f.energy for f in self.fills), Fraction(0))

    def sold(self, order_id: str) -> Fraction:
        return sum((f.energy for f in self.fills if f.seller == order_id), Fraction(0))

    def bought(self, order_id: str) -> Fraction:
        return sum((f.energy for f in self.fills if f.buyer == order_id), Fraction(0))

    def paid(self, order_id: str) -> Fraction:
        """AUD the order's owner pays (buyer) net of what it receives (seller)."""
        return sum(
            (f.energy * f.price for f in self.fills if f.buyer == order_id), Fraction(0)
        ) - sum((f.energy * f.price for f in self.fills if f.seller == order_id), Fraction(0))


class Mechanism(Protocol):
    """A market mechanism: a name, and a pure clearing function."""

    @property
    def name(self) -> str: ...

    def clear(self, orders: Sequence[Order]) -> Clearing: ...
