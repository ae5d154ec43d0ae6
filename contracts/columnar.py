"""Columnar, exact dual-bidding clearing for large books (market.md section 1).

The same contract as :func:`contracts.dual_bidding.clear`, with the same result, but on
int64 columns instead of :class:`~contracts.orders.Order` objects, so that a book of a
million orders per side clears in well under a second:

* each side is three columns: energy and price as integers on a fixed grid (e.g. energy in
  Wh or micro-kWh, price in micro-AUD/kWh: ``energy_scale`` and ``price_scale`` say how many
  grid units make one kWh and one AUD/kWh) and an optional tie-break ``rank``;
* priority as in the reference: buyers by price, highest first, sellers lowest first; ties
  to the larger energy, then the lower ``rank``, then the earlier row. The reference breaks
  the last tie by the ids' natural order (``"9"`` before ``"10"``) and then by book order:
  :func:`natural_rank` turns ids into such a rank once, so nothing parses a string per
  order during the clearing;
* the result is arrays (per fill: seller row, buyer row, energy in grid units; the rows of
  the rejected orders), and the price an exact :class:`~fractions.Fraction` computed once
  from integers (the only division: method 1's ``alpha * U + (1 - alpha) * L``).

No floats anywhere: sorting is one ``argsort`` per side of a packed int64 key (a
``lexsort`` when the key does not fit in 63 bits), the walk is cumulative sums, a binary
search for where the bids stop crossing the asks, and ``searchsorted`` for the fills.
:func:`clear_columns` is a thin adapter from and to ``Order``/``Clearing`` objects (for
tests and small books); :func:`from_orders` and :func:`to_clearing` are its two halves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

from contracts.dual_bidding import METHOD_EXACT, METHOD_SPLIT
from contracts.mechanism import Clearing, Fill
from contracts.numbers import exact
from contracts.orders import Order, Side, natural_key

IntArray = npt.NDArray[np.int64]

_INT64_MAX = 2**63 - 1
_KEY_BITS = 63  # a packed sort key is a non-negative int64


@dataclass(frozen=True, eq=False)
class SideColumns:
    """One side of a book. ``energy`` (> 0) and ``price`` (>= 0) are integers on the book's
    grid; ``rank`` breaks ties after price and energy (lower first; equal ranks keep row
    order), ``None`` for row order. Use :func:`natural_rank` for the ids' natural order."""

    energy: IntArray
    price: IntArray
    rank: IntArray | None = None

    def __post_init__(self) -> None:
        energy = _int_column(self.energy, "energy")
        price = _int_column(self.price, "price")
        if len(energy) != len(price):
            raise ValueError(f"energy has {len(energy)} rows, price {len(price)}")
        if len(energy) and int(energy.min()) <= 0:
            raise ValueError("energy must be > 0 in every row")
        if len(price) and int(price.min()) < 0:
            raise ValueError("price must be >= 0 in every row")
        if len(energy) and int(energy.max()) * len(energy) > _INT64_MAX \
                and sum(energy.tolist()) > _INT64_MAX:
            raise ValueError("the side's total energy does not fit in int64: use a coarser grid")
        object.__setattr__(self, "energy", energy)
        object.__setattr__(self, "price", price)
        if self.rank is not None:
            rank = _int_column(self.rank, "rank")
            if len(rank) != len(energy):
                raise ValueError(f"rank has {len(rank)} rows, energy {len(energy)}")
            object.__setattr__(self, "rank", rank)

    def __len__(self) -> int:
        return len(self.energy)


@dataclass(frozen=True, eq=False)
class ColumnBook:
    """A whole book: ``energy_scale`` grid units make 1 kWh, ``price_scale`` 1 AUD/kWh."""

    buys: SideColumns
    sells: SideColumns
    energy_scale: int = 1
    price_scale: int = 1

    def __post_init__(self) -> None:
        for name in ("energy_scale", "price_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True, eq=False)
class ColumnarClearing:
    """The clearing of a :class:`ColumnBook`, as arrays.

    Fills in the order the reference makes them: ``seller[k]`` (a row of the sell columns)
    delivers ``energy[k]`` grid units to ``buyer[k]`` (a row of the buy columns), all at
    ``price`` AUD/kWh. ``rejected_buys``/``rejected_sells``: the rows without any fill,
    ascending. ``volume`` in grid units. Method 1 reports ``lower``/``upper`` (``L``, ``U``
    in AUD/kWh), method 2 the ``marginal`` row on the ``long_side`` (``"demand"``: a buy
    row, ``"supply"``: a sell row).
    """

    seller: IntArray
    buyer: IntArray
    energy: IntArray
    rejected_buys: IntArray
    rejected_sells: IntArray
    price: Fraction | None
    method: int | None
    volume: int
    energy_scale: int = 1
    price_scale: int = 1
    lower: Fraction | None = None
    upper: Fraction | None = None
    marginal: int | None = None
    long_side: str | None = None

    @property
    def volume_kwh(self) -> Fraction:
        return Fraction(self.volume, self.energy_scale)

    @property
    def price_ticks(self) -> Fraction | None:
        """The price on the book's price grid (a fraction of a tick in method 1)."""
        return None if self.price is None else self.price * self.price_scale


def natural_rank(ids: Sequence[str] | npt.NDArray[Any]) -> IntArray:
    """An int64 rank per id that sorts as the ids' natural order (``natural_key``): equal
    natural keys (``"01"`` and ``"1"``) get equal ranks, which the clearing then breaks by
    row order, as the reference does by book order. Ids that are all ASCII digits rank by
    their value (one ``int`` each); an integer array is taken as it is (non-negative ints
    sort as their decimal text does)."""
    if isinstance(ids, np.ndarray) and ids.dtype.kind in "iu":
        return _int_column(ids, "ids")
    texts = [str(s) for s in ids]
    if all(s.isascii() and s.isdigit() and len(s) < 19 for s in texts):
        return np.fromiter(map(int, texts), dtype=np.int64, count=len(texts))
    keys = [natural_key(s) for s in texts]
    dense = {k: r for r, k in enumerate(sorted(set(keys)))}
    return np.fromiter((dense[k] for k in keys), dtype=np.int64, count=len(keys))


def clear_arrays(book: ColumnBook, alpha: Fraction = Fraction(1, 5)) -> ColumnarClearing:
    """Clear a columnar book: the reference's result, as arrays (see the module doc)."""
    alpha = exact(alpha)
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    buys, sells = book.buys, book.sells
    nb, ns = len(buys), len(sells)
    b_ord = _priority(buys, highest_first=True)
    s_ord = _priority(sells, highest_first=False)
    pb, ps = buys.price[b_ord], sells.price[s_ord]
    e_scale, p_scale = book.energy_scale, book.price_scale

    if not nb or not ns or int(pb[0]) < int(ps[0]):
        return ColumnarClearing(_empty(), _empty(), _empty(), np.arange(nb, dtype=np.int64),
                                np.arange(ns, dtype=np.int64), None, None, 0, e_scale, p_scale)

    cb: IntArray = np.cumsum(buys.energy[b_ord])
    cs: IntArray = np.cumsum(sells.energy[s_ord])
    # The walk stops at the first segment start (a breakpoint of either side) where the bid
    # is below the ask, or where one side runs out. Bids only fall and asks only rise along
    # the walk, so "still crossing" holds on a prefix of each side's starts: binary search.
    limit = min(int(cb[-1]), int(cs[-1]))
    q = min(limit, _stop(cb, pb, cs, ps, limit, own_is_buyer=True),
            _stop(cs, ps, cb, pb, limit, own_is_buyer=False))

    i = int(np.searchsorted(cb, q, side="right"))  # buyers filled in full
    j = int(np.searchsorted(cs, q, side="right"))  # sellers filled in full
    part_b = i < nb and q > (int(cb[i - 1]) if i else 0)
    part_s = j < ns and q > (int(cs[j - 1]) if j else 0)

    # Fills: the segments between the merged breakpoints of both sides up to q (q is one).
    ends = np.sort(np.concatenate((cb[:i], cs[:j])))
    if len(ends) > 1:
        ends = ends[np.concatenate(([True], ends[1:] != ends[:-1]))]
    starts = np.concatenate((np.zeros(1, dtype=np.int64), ends[:-1]))
    buyer = b_ord[np.searchsorted(cb, starts, side="right")]
    seller = s_ord[np.searchsorted(cs, starts, side="right")]

    filled_b = np.zeros(nb, dtype=bool)
    filled_b[b_ord[: i + part_b]] = True
    filled_s = np.zeros(ns, dtype=bool)
    filled_s[s_ord[: j + part_s]] = True

    marginal: int | None = None
    long_side: str | None = None
    lower: Fraction | None = None
    upper: Fraction | None = None
    if part_b:
        method, ticks = METHOD_SPLIT, Fraction(int(pb[i]))
        marginal, long_side = int(b_ord[i]), "demand"
    elif part_s:
        method, ticks = METHOD_SPLIT, Fraction(int(ps[j]))
        marginal, long_side = int(s_ord[j]), "supply"
    else:
        # Sorted sides: max(accepted asks, rejected bids) and min(accepted bids, rejected
        # asks) are at the cut.
        low = int(ps[j - 1]) if i >= nb else max(int(ps[j - 1]), int(pb[i]))
        high = int(pb[i - 1]) if j >= ns else min(int(pb[i - 1]), int(ps[j]))
        method = METHOD_EXACT
        a, d = alpha.numerator, alpha.denominator
        ticks = Fraction(a * high + (d - a) * low, d)
        lower, upper = Fraction(low, p_scale), Fraction(high, p_scale)
    return ColumnarClearing(
        seller=seller, buyer=buyer, energy=np.diff(ends, prepend=np.int64(0)),
        rejected_buys=np.flatnonzero(~filled_b).astype(np.int64),
        rejected_sells=np.flatnonzero(~filled_s).astype(np.int64),
        price=ticks / p_scale, method=method, volume=q, energy_scale=e_scale,
        price_scale=p_scale, lower=lower, upper=upper, marginal=marginal,
        long_side=long_side)


# ---- adapter from and to Order / Clearing objects ---------------------------------------


@dataclass(frozen=True, eq=False)
class Labels:
    """What :func:`from_orders` keeps to turn a columnar result back into objects: each
    row's id and its position in the original book."""

    buy_ids: list[str]
    sell_ids: list[str]
    buy_pos: list[int]
    sell_pos: list[int]


def from_orders(orders: Sequence[Order]) -> tuple[ColumnBook, Labels]:
    """An Order book as columns on its common denominators (the reference's integers),
    rows in book order, ranks in natural id order."""
    ids = [o.id for o in orders]
    if len(set(ids)) != len(ids):
        raise ValueError("order ids must be unique within a book")
    e_den = math.lcm(*{o.energy.denominator for o in orders}) if orders else 1
    p_den = math.lcm(*{o.price.denominator for o in orders}) if orders else 1
    rank = natural_rank(ids)
    buy_pos = [k for k, o in enumerate(orders) if o.side is Side.BUY]
    sell_pos = [k for k, o in enumerate(orders) if o.side is Side.SELL]

    def side(pos: list[int]) -> SideColumns:
        energy = [orders[k].energy for k in pos]
        price = [orders[k].price for k in pos]
        return SideColumns(
            _ints([f.numerator * (e_den // f.denominator) for f in energy]),
            _ints([f.numerator * (p_den // f.denominator) for f in price]),
            rank[np.asarray(pos, dtype=np.int64)])

    book = ColumnBook(side(buy_pos), side(sell_pos), e_den, p_den)
    return book, Labels([ids[k] for k in buy_pos], [ids[k] for k in sell_pos],
                        buy_pos, sell_pos)


def to_clearing(result: ColumnarClearing, labels: Labels) -> Clearing:
    """The :class:`Clearing` the reference returns for the same book."""
    rejected_pos = sorted([labels.buy_pos[k] for k in result.rejected_buys.tolist()]
                          + [labels.sell_pos[k] for k in result.rejected_sells.tolist()])
    by_pos = dict(zip(labels.buy_pos, labels.buy_ids, strict=True))
    by_pos.update(zip(labels.sell_pos, labels.sell_ids, strict=True))
    rejected = tuple(by_pos[k] for k in rejected_pos)
    if result.price is None:
        return Clearing((), rejected, None, None)
    price = result.price
    cache: dict[int, Fraction] = {}

    def kwh(e: int) -> Fraction:
        f = cache.get(e)
        if f is None:
            f = cache[e] = Fraction(e, result.energy_scale)
        return f

    fills = tuple(Fill(labels.sell_ids[s], labels.buy_ids[b], kwh(e), price)
                  for s, b, e in zip(result.seller.tolist(), result.buyer.tolist(),
                                     result.energy.tolist(), strict=True))
    details: dict[str, str]
    if result.method == METHOD_SPLIT:
        assert result.marginal is not None
        ids = labels.buy_ids if result.long_side == "demand" else labels.sell_ids
        details = {"marginal_order": ids[result.marginal], "long_side": str(result.long_side)}
    else:
        details = {"L": str(result.lower), "U": str(result.upper)}
    return Clearing(fills, rejected, price, result.method, details)


def clear_columns(orders: Sequence[Order], alpha: Fraction = Fraction(1, 5)) -> Clearing:
    """Drop-in for ``contracts.dual_bidding.clear`` through the columnar path (raises
    ``ValueError`` if the book's integers do not fit in int64)."""
    book, labels = from_orders(orders)
    return to_clearing(clear_arrays(book, alpha), labels)


# ---- internals --------------------------------------------------------------------------


def _empty() -> IntArray:
    return np.zeros(0, dtype=np.int64)


def _ints(values: list[int]) -> IntArray:
    if any(not -_INT64_MAX <= v <= _INT64_MAX for v in values):
        raise ValueError("a value does not fit in int64 on the book's common denominator")
    return np.asarray(values, dtype=np.int64).reshape(-1)


def _int_column(values: object, name: str) -> IntArray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D column, got shape {arr.shape}")
    if arr.size == 0:
        return _empty()
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers on the grid, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and int(arr.max()) > _INT64_MAX:
        raise ValueError(f"{name} does not fit in int64")
    out: IntArray = arr.astype(np.int64, copy=False)
    return out


def _priority(side: SideColumns, *, highest_first: bool) -> IntArray:
    """Row indices in priority order: price (highest or lowest first), larger energy, lower
    rank, earlier row. One quicksort of a unique packed key when it fits in 63 bits."""
    n = len(side)
    if n == 0:
        return _empty()
    price, energy = side.price, side.energy
    p_lo, p_hi = int(price.min()), int(price.max())
    e_hi = int(energy.max())
    p_key = (p_hi - price) if highest_first else (price - p_lo)
    e_key = e_hi - energy
    p_bits, e_bits = (p_hi - p_lo).bit_length(), (e_hi - int(energy.min())).bit_length()
    row = np.arange(n, dtype=np.int64)
    r_bits = (n - 1).bit_length()
    tie = row
    if side.rank is not None and n > 1 and bool((side.rank[1:] >= side.rank[:-1]).all()):
        pass  # ranks already rise with the rows (ids in book order): the row decides alone
    elif side.rank is not None:
        r_lo, r_hi = int(side.rank.min()), int(side.rank.max())
        k_bits = (r_hi - r_lo).bit_length()
        if p_bits + e_bits + k_bits + r_bits <= _KEY_BITS:
            return _argsort_unique(_pack([(p_key, p_bits), (e_key, e_bits),
                                          (side.rank - r_lo, k_bits), (row, r_bits)]))
        tie = _dense_rank(side.rank, r_lo, k_bits, row, r_bits)
    if p_bits + e_bits + r_bits <= _KEY_BITS:
        return _argsort_unique(_pack([(p_key, p_bits), (e_key, e_bits), (tie, r_bits)]))
    order: IntArray = np.lexsort((tie, e_key, p_key)).astype(np.int64)
    return order


def _dense_rank(rank: IntArray, r_lo: int, k_bits: int, row: IntArray,
                r_bits: int) -> IntArray:
    """0..n-1 in (rank, row) order: a unique tie-break that takes only log2(n) bits."""
    if k_bits + r_bits <= _KEY_BITS:
        order = _argsort_unique(_pack([(rank - r_lo, k_bits), (row, r_bits)]))
    else:
        order = np.argsort(rank, kind="stable").astype(np.int64)
    dense = np.empty(len(rank), dtype=np.int64)
    dense[order] = row
    return dense


def _pack(parts: list[tuple[IntArray, int]]) -> IntArray:
    """Non-negative keys of the given bit widths packed into one int64, first most
    significant (the widths add up to at most 63)."""
    packed = np.zeros(len(parts[0][0]), dtype=np.int64)
    for key, bits in parts:
        if bits:
            packed <<= bits
            packed |= key
    return packed


def _argsort_unique(keys: IntArray) -> IntArray:
    # The keys are distinct (the row is part of them): any sort gives the same order.
    order: IntArray = np.argsort(keys).astype(np.int64, copy=False)
    return order


def _stop(own_cum: IntArray, own_price: IntArray, other_cum: IntArray,
          other_price: IntArray, limit: int, *, own_is_buyer: bool) -> int:
    """The first start of one of this side's orders where the walk no longer crosses (or
    ``limit``): the starts are 0 and ``own_cum[:-1]``; at a start ``x`` the other side's
    order is the one whose span holds ``x``."""

    def crossing(k: int) -> bool:
        x = int(own_cum[k - 1]) if k else 0
        if x >= limit:
            return False
        other = int(other_price[int(np.searchsorted(other_cum, x, side="right"))])
        own = int(own_price[k])
        return own >= other if own_is_buyer else other >= own

    k = _first_false(len(own_cum), crossing)
    return limit if k >= len(own_cum) else (int(own_cum[k - 1]) if k else 0)


def _first_false(n: int, pred: Callable[[int], bool]) -> int:
    """The least k in [0, n) with ``pred(k)`` false (``pred`` true on a prefix), else n."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            lo = mid + 1
        else:
            hi = mid
    return lo
