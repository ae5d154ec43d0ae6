"""The columnar clearing (contracts/columnar.py) against the reference (dual_bidding.py):
the same Clearing, field for field, on random books full of ties; and a large book that
just clears and conserves energy."""

from __future__ import annotations

import random
from collections.abc import Callable
from fractions import Fraction as F

import numpy as np
import pytest
from hypothesis import Phase, event, find, given, settings
from hypothesis import strategies as st

from contracts.columnar import (
    ColumnarClearing,
    ColumnBook,
    Labels,
    SideColumns,
    clear_arrays,
    clear_columns,
    from_orders,
    natural_rank,
    to_clearing,
)
from contracts.dual_bidding import clear
from contracts.mechanism import Clearing
from contracts.orders import Order, Side
from contracts.settlement import Tariff, settle
from tests.test_dual_bidding import NETS, PRICES2, book

# ---- random books on a grid -------------------------------------------------------------

ID_STYLES = ("{}", "0{}", "h{}", "h0{}", "{}b", "b{}x")  # "07" and "7": equal natural keys
ID_POOL = [style.format(num) for num in range(24) for style in ID_STYLES]


@st.composite
def grid_books(draw: st.DrawFn, max_side: int = 60) -> tuple[list[Order], int, int]:
    """(book, energy_scale, price_scale): ``n`` bids and ``m`` asks (0..60 each) in a random
    book order, energies and prices integers on the grid drawn from small pools (ties in
    price and energy are the rule; asks sometimes shifted above the bids), now and then one
    offer far above the rest (oversell)."""
    e_scale = draw(st.sampled_from([1, 10, 1000]))
    p_scale = draw(st.sampled_from([1, 100, 1000]))
    n = draw(st.integers(0, max_side))
    m = draw(st.integers(0, max_side))
    e_pool = draw(st.lists(st.integers(1, 5 * e_scale), min_size=1, max_size=4))
    p_pool = draw(st.lists(st.integers(0, p_scale), min_size=1, max_size=5))
    ask_shift = draw(st.sampled_from([0, 0, 0, -p_scale // 4, p_scale // 2, p_scale]))
    rnd = draw(st.randoms(use_true_random=False))
    ids = rnd.sample(ID_POOL, n + m)
    sides = [Side.BUY] * n + [Side.SELL] * m
    rnd.shuffle(sides)
    orders = []
    for oid, side in zip(ids, sides, strict=True):
        e, p, big = rnd.randrange(len(e_pool)), rnd.randrange(len(p_pool)), rnd.randrange(16)
        energy, price = e_pool[e], p_pool[p]
        if side is Side.SELL:
            price = max(0, price + ask_shift)
            if big == 0:
                energy *= rnd.randrange(2, 20)  # an offer well beyond a typical demand
        orders.append(Order(oid, side, F(energy, e_scale), F(price, p_scale)))
    return orders, e_scale, p_scale


alphas = st.one_of(st.sampled_from([F(0), F(1), F(1, 5), F(1, 3), F(1, 2)]),
                   st.integers(0, 10).map(lambda k: F(k, 10)))


def case_of(c: Clearing, orders: list[Order]) -> str:
    """Which branch of the contract a clearing took."""
    if not c.fills:
        sides = {o.side for o in orders}
        return "no trade" if len(sides) == 2 else "one-sided or empty"
    if c.method == 2:
        return f"method 2, {c.details['long_side']} long"
    return "method 1, all filled" if not c.rejected else "method 1"


def grid_clearing(orders: list[Order], e_scale: int, p_scale: int, alpha: F) -> Clearing:
    """The columnar path on the book's own grid (not the common denominators
    ``from_orders`` picks), ranks from ``natural_rank`` per side, back to a Clearing."""
    buy_pos = [k for k, o in enumerate(orders) if o.side is Side.BUY]
    sell_pos = [k for k, o in enumerate(orders) if o.side is Side.SELL]

    def side(pos: list[int]) -> SideColumns:
        e = [int(orders[k].energy * e_scale) for k in pos]
        p = [int(orders[k].price * p_scale) for k in pos]
        return SideColumns(np.array(e, dtype=np.int64), np.array(p, dtype=np.int64),
                           natural_rank([orders[k].id for k in pos]))

    book = ColumnBook(side(buy_pos), side(sell_pos), e_scale, p_scale)
    result = clear_arrays(book, alpha)
    check_invariants(result, book)
    labels = Labels([orders[k].id for k in buy_pos], [orders[k].id for k in sell_pos],
                    buy_pos, sell_pos)
    return to_clearing(result, labels)


def check_invariants(r: ColumnarClearing, book: ColumnBook) -> None:
    """Conservation and the contract's price rules, on the arrays alone."""
    for arr in (r.seller, r.buyer, r.energy, r.rejected_buys, r.rejected_sells):
        assert arr.dtype == np.int64
    nb, ns = len(book.buys), len(book.sells)
    assert int(r.energy.sum()) == r.volume and (r.energy > 0).all()
    sold = np.zeros(ns, dtype=np.int64)
    np.add.at(sold, r.seller, r.energy)
    bought = np.zeros(nb, dtype=np.int64)
    np.add.at(bought, r.buyer, r.energy)
    assert (sold <= book.sells.energy).all() and (bought <= book.buys.energy).all()
    assert set(np.flatnonzero(sold == 0).tolist()) == set(r.rejected_sells.tolist())
    assert set(np.flatnonzero(bought == 0).tolist()) == set(r.rejected_buys.tolist())
    partial = int(((sold > 0) & (sold < book.sells.energy)).sum()
                  + ((bought > 0) & (bought < book.buys.energy)).sum())
    assert partial <= 1  # at most the marginal order is split
    if r.volume == 0:
        assert r.price is None and r.method is None
        return
    asks, bids = book.sells.price[r.seller], book.buys.price[r.buyer]
    assert (bids >= asks).all()
    assert r.price is not None and r.price_ticks is not None
    assert int(asks.max()) <= r.price_ticks <= int(bids.min())
    assert r.price.denominator > 0 and isinstance(r.price, F)


# ---- the property -----------------------------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(grid_books(), alphas)
def test_columnar_equals_reference(book: tuple[list[Order], int, int], alpha: F) -> None:
    orders, e_scale, p_scale = book
    ref = clear(orders, alpha)
    event(case_of(ref, orders))
    assert clear_columns(orders, alpha) == ref  # fills, rejected, price, method, details
    assert grid_clearing(orders, e_scale, p_scale, alpha) == ref
    cols, _ = from_orders(orders)
    got = clear_arrays(cols, alpha)
    assert got.volume_kwh == ref.volume and got.method == ref.method
    check_invariants(got, cols)


CASES: dict[str, Callable[[Clearing, list[Order]], bool]] = {
    "no trade": lambda c, o: case_of(c, o) == "no trade",
    "one-sided or empty": lambda c, o: case_of(c, o) == "one-sided or empty",
    "method 1": lambda c, o: case_of(c, o) == "method 1",
    "method 1, all filled": lambda c, o: case_of(c, o) == "method 1, all filled",
    "method 2, demand long": lambda c, o: case_of(c, o) == "method 2, demand long",
    "method 2, supply long": lambda c, o: case_of(c, o) == "method 2, supply long",
    # the walk stops inside an order because the next counterparty no longer crosses
    "split, stopped by price": lambda c, o: c.method == 2 and any(
        x.side is (Side.SELL if c.details["long_side"] == "demand" else Side.BUY)
        and x.id in c.rejected for x in o),
    # an offer above the whole demand (the paper's oversell, as the clearing sees it)
    "oversell offer": lambda c, o: c.method == 2 and any(
        x.side is Side.SELL and x.energy > sum(y.energy for y in o if y.side is Side.BUY)
        and c.sold(x.id) > 0 for x in o),
    "natural-key tie decides": lambda c, o: bool(c.fills) and any(
        x.id == "0" + y.id and x.side is y.side and x.price == y.price
        and x.energy == y.energy for x in o for y in o),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_case_is_reachable(name: str) -> None:
    """The strategy above reaches every branch (and the columnar path agrees there)."""
    orders, _, _ = find(grid_books(max_side=12),
                        lambda b: CASES[name](clear(b[0]), b[0]),
                        settings=settings(max_examples=5000, database=None,
                                          phases=[Phase.generate]))
    assert clear_columns(orders) == clear(orders)


# ---- by example: the paper's scenarios --------------------------------------------------

paper_book = book  # the paper's scenario books, as the object path's tests build them


def test_paper_scenario2_oversell_same_clearing_and_settlement() -> None:
    orders = paper_book(PRICES2, {"5": "3.0"})
    c = clear_columns(orders)
    assert c == clear(orders)
    assert (c.method, c.price, c.volume, c.details["marginal_order"]) == (2, F("0.16"),
                                                                         F("12.7"), "9")
    metered = {h: F(n) for h, n in NETS.items()}
    tariff = Tariff(F("0.37"), F("0.06"))
    assert settle(c.fills, metered, tariff, F(370)) == settle(clear(orders).fills, metered,
                                                              tariff, F(370))


def test_paper_scenario1_method1() -> None:
    prices = {**PRICES2, "4": "0.19", "5": "0.20", "6": "0.19", "9": "0.165"}
    orders = paper_book(prices)
    c = clear_columns(orders, F("0.2"))
    assert c == clear(orders, F("0.2"))
    assert c.method == 1 and c.price == F("0.17")
    assert (F(c.details["L"]), F(c.details["U"])) == (F("0.165"), F("0.19"))


def test_natural_rank() -> None:
    assert natural_rank(["10", "9", "010"]).tolist() == [10, 9, 10]
    r = natural_rank(["h10", "h9", "h09", "a"]).tolist()
    assert r[1] == r[2] and r[3] < r[1] < r[0]
    assert natural_rank(np.array([5, 3], dtype=np.int32)).tolist() == [5, 3]
    assert natural_rank([]).dtype == np.int64


# ---- wide integers: the lexsort and dense-rank fallbacks of the sort ------------------


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([(2, 2, 62), (10, 10, 40), (50, 40, 3), (62, 3, 3)]),
       st.integers(0, 40), st.integers(0, 40), st.randoms(use_true_random=False))
def test_wide_keys_equal_reference(bits: tuple[int, int, int], n: int, m: int,
                                   rnd: random.Random) -> None:
    """Prices, energies and ranks so wide that the packed key does not fit: the sort falls
    back (dense rank, lexsort) and must still give the reference's order."""
    p_bits, e_bits, r_bits = bits
    p_pool = [rnd.randrange(2**p_bits) for _ in range(3)]
    e_pool = [rnd.randrange(1, 2**e_bits) for _ in range(3)]
    ranks = rnd.sample(range(2**r_bits), n + m) if n + m <= 2**r_bits else None
    if ranks is None:
        return
    orders = [Order(str(ranks[k]), Side.BUY if k < n else Side.SELL,
                    F(rnd.choice(e_pool)), F(rnd.choice(p_pool))) for k in range(n + m)]

    def side(lo: int, hi: int) -> SideColumns:
        return SideColumns(np.array([int(o.energy) for o in orders[lo:hi]], dtype=np.int64),
                           np.array([int(o.price) for o in orders[lo:hi]], dtype=np.int64),
                           np.array(ranks[lo:hi], dtype=np.int64))

    result = clear_arrays(ColumnBook(side(0, n), side(n, n + m)))
    labels = Labels([o.id for o in orders[:n]], [o.id for o in orders[n:]],
                    list(range(n)), list(range(n, n + m)))
    assert to_clearing(result, labels) == clear(orders)


# ---- validation --------------------------------------------------------------------------


def test_columns_are_validated() -> None:
    one = np.array([1], dtype=np.int64)
    with pytest.raises(TypeError):
        SideColumns(np.array([1.5]), one)
    with pytest.raises(ValueError):
        SideColumns(np.array([0]), one)
    with pytest.raises(ValueError):
        SideColumns(one, np.array([-1]))
    with pytest.raises(ValueError):
        SideColumns(one, np.array([1, 2]))
    with pytest.raises(ValueError):
        SideColumns(np.array([2**62, 2**62]), np.array([1, 1]))  # the total overflows
    with pytest.raises(ValueError):
        ColumnBook(SideColumns([], []), SideColumns([], []), energy_scale=0)
    with pytest.raises(ValueError):
        clear_arrays(ColumnBook(SideColumns(one, one), SideColumns(one, one)), F(3, 2))
    dup = [Order("a", Side.BUY, F(1), F(1)), Order("a", Side.SELL, F(1), F(1))]
    with pytest.raises(ValueError):
        clear_columns(dup)


# ---- large books ------------------------------------------------------------------------


def random_side(rng: np.random.Generator, n: int, lo: int, hi: int,
                first_rank: int) -> SideColumns:
    return SideColumns(rng.integers(1, 5001, n), rng.integers(lo, hi + 1, n),
                       np.arange(first_rank, first_rank + 2 * n, 2))


def test_100k_per_side_clears_and_conserves_energy() -> None:
    rng = np.random.default_rng(7)
    n = 100_000  # energies in Wh, prices in thousandths: ties everywhere
    book = ColumnBook(random_side(rng, n, 50, 400, 1), random_side(rng, n, 30, 350, 2),
                      1000, 1000)
    r = clear_arrays(book)
    check_invariants(r, book)
    assert r.method in (1, 2) and r.volume > 0
    assert len(r.seller) == len(r.buyer) == len(r.energy) > n // 2


def test_3000_per_side_equals_reference() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    book = ColumnBook(random_side(rng, n, 50, 400, 1), random_side(rng, n, 30, 350, 2),
                      1000, 1000)
    orders: list[Order] = []
    for side, first, kind in ((book.buys, 1, Side.BUY), (book.sells, 2, Side.SELL)):
        orders += [Order(str(first + 2 * k), kind, F(e, 1000), F(p, 1000))
                   for k, (e, p) in enumerate(zip(side.energy.tolist(), side.price.tolist(),
                                                  strict=True))]
    labels = Labels([o.id for o in orders[:n]], [o.id for o in orders[n:]],
                    list(range(n)), list(range(n, 2 * n)))
    assert to_clearing(clear_arrays(book), labels) == clear(orders)
