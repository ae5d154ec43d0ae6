"""Orders and order books, with validation that names the order and the field at fault."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

from contracts.numbers import exact


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


@dataclass(frozen=True, slots=True)
class Order:
    """One household's order for one trading interval.

    ``energy`` in kWh (> 0), ``price`` in AUD/kWh (>= 0): the highest a buyer pays, the
    lowest a seller accepts.
    """

    id: str
    side: Side
    energy: Fraction
    price: Fraction


class OrderError(ValueError):
    """A malformed order: says which order (index in the book) and which field."""

    def __init__(self, index: int, field: str, problem: str) -> None:
        self.index = index
        self.field = field
        self.problem = problem
        super().__init__(f"order [{index}] field '{field}': {problem}")


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders ``"2"`` before ``"10"`` (household ids are usually numbers)."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.split(r"(\d+)", text)
        if part
    )


def parse_order(index: int, raw: object) -> Order:
    """Validate one JSON-like order ``{"id", "side", "energy_kwh", "price"}``."""
    if not isinstance(raw, Mapping):
        raise OrderError(index, "*", f"expected an object, got {type(raw).__name__}")
    for name in ("id", "side", "energy_kwh", "price"):
        if name not in raw:
            raise OrderError(index, name, "missing")
    oid = raw["id"]
    if isinstance(oid, bool) or not isinstance(oid, str | int) or str(oid) == "":
        raise OrderError(index, "id", f"expected a non-empty string or integer, got {oid!r}")
    try:
        side = Side(raw["side"])
    except ValueError:
        raise OrderError(index, "side", f"expected 'buy' or 'sell', got {raw['side']!r}") from None
    energy = _number(index, "energy_kwh", raw["energy_kwh"])
    if energy <= 0:
        raise OrderError(index, "energy_kwh", f"must be > 0, got {raw['energy_kwh']!r}")
    price = _number(index, "price", raw["price"])
    if price < 0:
        raise OrderError(index, "price", f"must be >= 0, got {raw['price']!r}")
    return Order(str(oid), side, energy, price)


def parse_book(raw: object) -> list[Order]:
    """Validate a whole book: a list of orders with unique ids."""
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise OrderError(-1, "*", "the order book must be a JSON list of orders")
    orders = [parse_order(i, item) for i, item in enumerate(raw)]
    seen: dict[str, int] = {}
    for i, order in enumerate(orders):
        if order.id in seen:
            raise OrderError(i, "id", f"duplicate id {order.id!r} (also order [{seen[order.id]}])")
        seen[order.id] = i
    return orders


def _number(index: int, field: str, value: object) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise OrderError(index, field, f"expected a number, got {value!r}")
    try:
        return exact(value)
    except ValueError as err:
        raise OrderError(index, field, str(err)) from None
