"""The dual-bidding contract, by example (market.md section 1) and by property."""

from __future__ import annotations

import random
from fractions import Fraction as F

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.dual_bidding import DualBidding, clear
from contracts.numbers import aud_to_micro
from contracts.orders import Order, OrderError, Side, parse_book
from contracts.settlement import GRID, Tariff, apply, settle

NETS = {"1": "-3.0", "2": "2.1", "3": "-3.5", "4": "-2.6", "5": "2.3", "6": "-1.1",
        "7": "7.5", "8": "-2.5", "9": "1.6", "10": "1.1"}
PRICES2 = {"1": "0.20", "2": "0.19", "3": "0.19", "4": "0.17", "5": "0.16", "6": "0.16",
           "7": "0.16", "8": "0.16", "9": "0.16", "10": "0.15"}


def book(prices: dict[str, str], offers: dict[str, str] | None = None) -> list[Order]:
    offers = offers or {}
    return parse_book([
        {"id": h, "side": "sell" if not n.startswith("-") else "buy",
         "energy_kwh": offers.get(h, n.lstrip("-")), "price": prices[h]}
        for h, n in NETS.items()])


def o(oid: str, side: str, energy: str, price: str) -> Order:
    return Order(oid, Side(side), F(energy), F(price))


def test_scenario2_method2_supply_long() -> None:
    c = clear(book(PRICES2, {"5": "3.0"}))
    assert (c.method, c.price, c.volume) == (2, F("0.16"), F("12.7"))
    assert c.rejected == ("2",)
    assert c.sold("9") == F("1.1") and c.sold("5") == F(3) and c.sold("7") == F("7.5")
    assert c.details["marginal_order"] == "9"


def test_scenario1_method1_alpha() -> None:
    prices = {**PRICES2, "4": "0.19", "5": "0.20", "6": "0.19", "9": "0.165"}
    c = clear(book(prices), F("0.2"))
    assert c.method == 1
    assert (F(c.details["L"]), F(c.details["U"])) == (F("0.165"), F("0.19"))
    assert c.price == F("0.17") and c.volume == F("10.2")
    assert set(c.rejected) == {"2", "5", "8"}


def test_method1_alpha_endpoints() -> None:
    b = [o("b", "buy", "1", "0.30"), o("s", "sell", "1", "0.10")]
    assert clear(b, F(0)).price == F("0.10")
    assert clear(b, F(1)).price == F("0.30")


def test_demand_long_marginal_buyer_sets_price() -> None:
    c = clear([o("b", "buy", "5", "0.25"), o("s", "sell", "3", "0.10")])
    assert (c.method, c.price, c.volume) == (2, F("0.25"), F(3))
    assert c.details["long_side"] == "demand"


def test_ties_larger_energy_then_id() -> None:
    c = clear([o("s1", "sell", "1", "0.1"), o("s2", "sell", "2", "0.1"),
               o("s3", "sell", "2", "0.1"), o("b", "buy", "2", "0.2")])
    assert [(f.seller, f.energy) for f in c.fills] == [("s2", F(2))]
    c = clear([o("b10", "buy", "1", "0.2"), o("b9", "buy", "1", "0.2"),
               o("s", "sell", "1", "0.1")])
    assert c.fills[0].buyer == "b9"  # natural order: 9 before 10


def test_no_crossing_and_one_sided_books() -> None:
    c = clear([o("b", "buy", "1", "0.1"), o("s", "sell", "1", "0.2")])
    assert (c.fills, c.price, c.method, c.rejected) == ((), None, None, ("b", "s"))
    assert clear([o("s", "sell", "1", "0.2")]).fills == ()
    assert clear([o("b", "buy", "1", "0.2")]).rejected == ("b",)
    assert clear([]).volume == 0


def test_oversell_settles_shortfall_at_import() -> None:
    c = clear(book(PRICES2, {"5": "3.0"}))
    metered = {h: F(n) for h, n in NETS.items()}  # household 5 delivers its 2.3 only
    s = settle(c.fills, metered, Tariff(F("0.37"), F("0.06")), F(370))
    h5 = next(h for h in s.households if h.id == "5")
    assert h5.grid_import_kwh == F("0.7") and h5.grid_aud == F("-0.259")
    assert s.community_net_aud == F("-0.103")


def test_alpha_validated() -> None:
    with pytest.raises(ValueError):
        DualBidding(alpha=F(2))


@pytest.mark.parametrize("raw, index, field", [
    ([{"id": "a", "side": "buy", "energy_kwh": 1, "price": 0.1}, {"id": "b"}], 1, "side"),
    ([{"id": "a", "side": "hold", "energy_kwh": 1, "price": 0.1}], 0, "side"),
    ([{"id": "a", "side": "buy", "energy_kwh": 0, "price": 0.1}], 0, "energy_kwh"),
    ([{"id": "a", "side": "buy", "energy_kwh": 1, "price": -1}], 0, "price"),
    ([{"id": "a", "side": "buy", "energy_kwh": "x", "price": 1}], 0, "energy_kwh"),
    ([{"id": "a", "side": "buy", "energy_kwh": 1, "price": 1},
      {"id": "a", "side": "sell", "energy_kwh": 1, "price": 1}], 1, "id"),
])
def test_malformed_orders_name_index_and_field(raw: object, index: int, field: str) -> None:
    with pytest.raises(OrderError) as e:
        parse_book(raw)
    assert (e.value.index, e.value.field) == (index, field)
    assert f"[{index}]" in str(e.value) and field in str(e.value)


# ---- properties -----------------------------------------------------------------------

decimals = st.integers(min_value=1, max_value=5000).map(lambda n: F(n, 1000))
prices = st.integers(min_value=0, max_value=400).map(lambda n: F(n, 1000))


@st.composite
def books(draw: st.DrawFn) -> list[Order]:
    n = draw(st.integers(min_value=0, max_value=12))
    return [Order(str(i), draw(st.sampled_from(list(Side))), draw(decimals), draw(prices))
            for i in range(n)]


@settings(max_examples=300, deadline=None)
@given(books(), st.integers(min_value=0, max_value=10).map(lambda n: F(n, 10)))
def test_clearing_properties(orders: list[Order], alpha: F) -> None:
    c = clear(orders, alpha)
    by_id = {x.id: x for x in orders}
    for f in c.fills:
        assert by_id[f.buyer].price >= by_id[f.seller].price  # no fill with bid < ask
        assert f.energy > 0 and f.price == c.price
    for x in orders:  # nobody trades more than it ordered
        assert (c.sold(x.id) if x.side is Side.SELL else c.bought(x.id)) <= x.energy
    if c.fills:
        asks = [by_id[f.seller].price for f in c.fills]
        bids = [by_id[f.buyer].price for f in c.fills]
        assert c.price is not None and max(asks) <= c.price <= min(bids)
    # the volume is the crossing quantity: no rejected bid could still trade with a left ask
    left_asks = [x for x in orders if x.side is Side.SELL and c.sold(x.id) < x.energy]
    left_bids = [x for x in orders if x.side is Side.BUY and c.bought(x.id) < x.energy]
    assert not any(b.price >= a.price for b in left_bids for a in left_asks)


@settings(max_examples=200, deadline=None)
@given(books(), st.randoms(use_true_random=False))
def test_same_book_any_order_same_result(orders: list[Order], rnd: random.Random) -> None:
    shuffled = list(orders)
    rnd.shuffle(shuffled)
    a, b = clear(orders), clear(shuffled)
    assert (a.fills, a.price, a.method) == (b.fills, b.price, b.method)
    assert set(a.rejected) == set(b.rejected)


@settings(max_examples=300, deadline=None)
@given(books(), st.data())
def test_money_conserved_exactly(orders: list[Order], data: st.DataObject) -> None:
    c = clear(orders)
    ids = [x.id for x in orders]
    metered = {h: F(data.draw(st.integers(min_value=-5000, max_value=5000)), 1000) for h in ids}
    rate = data.draw(st.sampled_from([F(370), F(1), F(3, 7)]))
    s = settle(c.fills, metered, Tariff(F("0.37"), F("0.06")), rate)
    opening = {h: data.draw(st.integers(min_value=0, max_value=10**7)) for h in ids}
    opening[GRID] = 0
    after = apply(opening, s.transfers)
    assert sum(after.values()) == sum(opening.values())
    # every fill is paid exactly: buyer pays what the seller receives, rounded once
    for f in c.fills:
        assert any(t.source == f.buyer and t.target == f.seller
                   and t.amount == aud_to_micro(f.energy * f.price, rate)
                   for t in s.transfers) or aud_to_micro(f.energy * f.price, rate) == 0
    # community net is exactly the grid's side of the money
    grid_aud = sum((h.grid_aud for h in s.households), F(0))
    assert s.community_net_aud == grid_aud
