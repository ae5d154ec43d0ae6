"""CE-SDT contract (market.md section 2): each step by example, then properties."""

from __future__ import annotations

import random
from fractions import Fraction as F

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.cesdt import (
    GRID,
    METHOD_GRID,
    METHOD_PEERS,
    METHOD_PEERS_AND_GRID,
    Cesdt,
    Offer,
    PriceWeights,
    Request,
    Round,
    Tariff,
    mean_price,
    quantize,
    settle,
    settle_round,
    suggest,
    suggested_price,
)
from contracts.mechanism import Mechanism
from contracts.orders import Order, Side

GRID_PRICE = F("0.7065")
TIMEOUT = 30
TARIFF = Tariff(tuple([F("0.2961")] * 14 + [GRID_PRICE] * 6 + [F("0.3733")] * 4), F("0.10"))


def request(buyer: str = "b", energy: str = "3", limit: str = "0.5", bid: bool = True,
            at: int = 100) -> Request:
    return Request(buyer, F(energy), bid, F(limit), at, 18)


def offer(seller: str, energy: str, price: str, at: int = 105) -> Offer:
    return Offer(seller, F(energy), F(price), at)


def one(requests: list[Request], offers: list[Offer]) -> Round:
    return settle_round(requests, offers, GRID_PRICE, TIMEOUT)


# --- steps 3, 6-9 by example -----------------------------------------------------------


def test_no_bid_request_is_served_by_the_grid() -> None:
    rnd = settle(request(bid=False), [offer("s1", "5", "0.1")], GRID_PRICE, TIMEOUT)
    (bill,) = rnd.bills
    assert rnd.fills == () and bill.method == METHOD_GRID and rnd.clearing.method is None
    assert bill.grid_energy == 3 and bill.lines == ((GRID, F(3), GRID_PRICE),)
    assert bill.total == 3 * GRID_PRICE
    assert rnd.rejected[0].reason == "no request of this round asked for bids"


def test_late_offer_is_rejected_with_a_reason_and_one_at_the_deadline_is_not() -> None:
    on_time = offer("s1", "1", "0.2", at=130)  # made at 100, timeout 30: the last tick
    late = offer("s2", "1", "0.1", at=131)
    rnd = settle(request(), [late, on_time], GRID_PRICE, TIMEOUT)
    assert [f.seller for f in rnd.fills] == ["s1"]
    (rej,) = rnd.rejected
    assert rej.seller == "s2" and rej.screened
    assert rej.reason == "late: submitted at tick 131, after the timeout at tick 130"
    assert rnd.deadline == 130 and rnd.clearing.rejected == ("s2",)


def test_offer_made_before_the_request_is_rejected() -> None:
    rnd = settle(request(at=100), [offer("s1", "1", "0.1", at=99)], GRID_PRICE, TIMEOUT)
    assert rnd.peer_energy == 0 and "before the request" in rnd.rejected[0].reason


def test_offers_rank_cheapest_first_then_larger_energy_then_natural_id() -> None:
    offers = [offer("s10", "0.5", "0.2"), offer("s2", "0.5", "0.2"), offer("s3", "0.7", "0.2"),
              offer("s1", "1", "0.15")]
    rnd = settle(request(energy="10"), offers, GRID_PRICE, TIMEOUT)
    # Eq. 12: 0.15 first; at 0.2 the larger energy; then "s2" before "s10".
    assert [f.seller for f in rnd.fills] == ["s1", "s3", "s2", "s10"]
    assert [f.price for f in rnd.fills] == [F("0.15"), F("0.2"), F("0.2"), F("0.2")]


def test_requests_rank_by_cap_and_the_kth_takes_the_cheapest_left() -> None:
    requests = [request("b1", "1", "0.30"), request("b2", "1", "0.50"),
                request("b3", "2", "0.30")]
    offers = [offer("s1", "1", "0.10"), offer("s2", "1", "0.20"), offer("s3", "5", "0.29")]
    rnd = one(requests, offers)
    # Eq. 13: b2 (0.50) first, then b3 (0.30, larger energy), then b1.
    assert [(f.buyer, f.seller, f.energy) for f in rnd.fills] == [
        ("b2", "s1", 1), ("b3", "s2", 1), ("b3", "s3", 1), ("b1", "s3", 1)]
    assert [r.buyer for r in rnd.requests] == ["b2", "b3", "b1"]
    assert rnd.grid_energy == 0 and rnd.clearing.method == METHOD_PEERS
    assert rnd.received("s3") == 2 * F("0.29")


def test_one_offer_is_split_between_requests_and_never_promised_twice() -> None:
    rnd = one([request("b1", "2"), request("b2", "2")], [offer("s1", "3", "0.1")])
    assert sum(f.energy for f in rnd.fills) == 3
    assert rnd.bill("b1").grid_energy + rnd.bill("b2").grid_energy == 1


def test_last_accepted_offer_is_partly_filled_and_the_rest_not_needed() -> None:
    offers = [offer("s1", "2", "0.1"), offer("s2", "2", "0.2"), offer("s3", "2", "0.3")]
    rnd = settle(request(energy="3"), offers, GRID_PRICE, TIMEOUT)
    assert [(f.seller, f.energy) for f in rnd.fills] == [("s1", F(2)), ("s2", F(1))]
    (bill,) = rnd.bills
    assert bill.grid_energy == 0 and bill.method == METHOD_PEERS
    assert {r.seller: r.reason for r in rnd.rejected} == {
        "s3": "not needed: the round's requests were already met"}
    assert not rnd.rejected[0].screened
    assert bill.total == 2 * F("0.1") + 1 * F("0.2")


def test_grid_covers_what_the_offers_do_not() -> None:
    rnd = settle(request(energy="3"), [offer("s1", "1.25", "0.1")], GRID_PRICE, TIMEOUT)
    (bill,) = rnd.bills
    assert bill.peer_energy == F("1.25") and bill.grid_energy == F("1.75")
    assert bill.method == METHOD_PEERS_AND_GRID == rnd.clearing.method
    assert bill.lines[-1] == (GRID, F("1.75"), GRID_PRICE)
    assert bill.paid_to_grid == F("1.75") * GRID_PRICE
    assert bill.received("s1") == F("1.25") * F("0.1")


def test_offer_above_the_limit_price_is_not_accepted_even_if_needed() -> None:
    offers = [offer("s1", "1", "0.30"), offer("s2", "5", "0.31")]
    rnd = settle(request(energy="3", limit="0.30"), offers, GRID_PRICE, TIMEOUT)
    assert [f.seller for f in rnd.fills] == ["s1"] and rnd.grid_energy == 2
    assert rnd.rejected[0].reason == ("price 0.31 above the cap of every buyer still short "
                                      "(at most 0.3 AUD/kWh)")


def test_no_peer_is_paid_more_than_the_grid_whatever_the_limit() -> None:
    rnd = settle(request(limit="5"), [offer("s1", "5", "0.8")], GRID_PRICE, TIMEOUT)
    assert rnd.peer_energy == 0 and rnd.grid_energy == 3
    assert "at most 0.7065" in rnd.rejected[0].reason


def test_malformed_offers_are_rejected_and_malformed_rounds_refused() -> None:
    offers = [offer("b", "1", "0.1"), offer(GRID, "1", "0.1"), offer("s1", "0", "0.1"),
              offer("s2", "1", "-0.1")]
    rnd = settle(request(), offers, GRID_PRICE, TIMEOUT)
    assert rnd.peer_energy == 0 and all(r.screened for r in rnd.rejected)
    reasons = {r.seller: r.reason for r in rnd.rejected}
    assert reasons["b"] == "a buyer cannot supply a request of its own round"
    assert reasons[GRID].startswith("invalid seller id")
    assert reasons["s1"].startswith("energy must be > 0")
    assert reasons["s2"].startswith("price must be >= 0")
    with pytest.raises(ValueError, match="one offer per seller"):
        settle(request(), [offer("s1", "1", "0.1"), offer("s1", "2", "0.1")], GRID_PRICE, 30)
    with pytest.raises(ValueError, match="one request per buyer"):
        one([request("b"), request("b")], [])
    with pytest.raises(ValueError, match="one tick"):
        one([request("b1", at=1), request("b2", at=2)], [])
    with pytest.raises(ValueError, match="at least one request"):
        one([], [])
    with pytest.raises(ValueError):
        Request("b", F(0), True, F(1), 0, 0)
    with pytest.raises(ValueError):
        Request("b", F(1), True, F(1), 0, 24)
    with pytest.raises(ValueError):
        Request(GRID, F(1), True, F(1), 0, 0)


# --- step 2: prices, Eq. 5 and Eq. 6 ---------------------------------------------------

W = PriceWeights(lam=F("-0.01"), mu=F("0.95"), beta=F("0.02"), nu=F(1))


def test_eq5_and_eq6_weighted_sums_rounded_and_clamped() -> None:
    mean = F("0.30")
    # Eq. 5: -0.01 * 2 + 0.95 * 0.30 = 0.265; Eq. 6: 0.02 * 2 + 1 * 0.30 = 0.34.
    assert suggested_price(Side.SELL, F(2), mean, GRID_PRICE, W, F("0.1")) == F("0.265")
    assert suggested_price(Side.BUY, F(2), mean, GRID_PRICE, W, F("0.1")) == F("0.34")
    # Rounded to the 0.0001 tick, ties to even: 0.95 * 0.12345 = 0.1172775 -> 0.1173.
    plain = PriceWeights(mu=F("0.95"))
    assert suggested_price(Side.SELL, F(0), F("0.12345"), GRID_PRICE, plain) == F("0.1173")
    assert quantize(F("0.00005"), plain.tick) == 0 and quantize(F("0.00015"), plain.tick) == F(
        "0.0002")
    # Clamped to [floor, grid price].
    assert suggested_price(Side.SELL, F(50), mean, GRID_PRICE, W, F("0.1")) == F("0.1")
    assert suggested_price(Side.BUY, F(50), mean, GRID_PRICE, W, F("0.1")) == GRID_PRICE


def test_suggest_reads_the_tariff_and_falls_back_to_the_grid_price() -> None:
    req = Request("b", F(1), True, F(1), 0, 15)
    s = suggest(req, TARIFF, PriceWeights())
    assert s.grid_price == GRID_PRICE  # hour 15 of the tariff above
    assert s.sell == s.buy == GRID_PRICE  # no history: the mean is the grid price
    s = Cesdt(TARIFF).suggest(req, recent_sell=[F("0.2"), F("0.3")], recent_buy=[F("0.4")])
    assert (s.sell, s.buy) == (F("0.25"), F("0.4"))
    assert mean_price([], F(7)) == F(7)


def test_tariff_is_data_and_validated() -> None:
    assert TARIFF.price(0) == F("0.2961") and TARIFF.price(23) == F("0.3733")
    with pytest.raises(ValueError):
        Tariff((F(1),) * 23, F(0))
    with pytest.raises(ValueError):
        TARIFF.price(24)
    with pytest.raises(ValueError):
        Cesdt(TARIFF, timeout=-1)


# --- the Mechanism view ----------------------------------------------------------------


def test_cesdt_is_a_mechanism_and_clears_a_book_pay_as_offer() -> None:
    mech: Mechanism = Cesdt(TARIFF)
    book = [Order("b1", Side.BUY, F(2), F("0.30")), Order("b2", Side.BUY, F(1), F("0.20")),
            Order("s1", Side.SELL, F("1.5"), F("0.15")), Order("s2", Side.SELL, F(2), F("0.25"))]
    c = mech.clear(book)
    assert mech.name == "cesdt"
    # b1 (highest limit) first: s1 then s2; b2's limit 0.20 is below s2's 0.25: grid.
    assert [(f.seller, f.buyer, f.energy, f.price) for f in c.fills] == [
        ("s1", "b1", F("1.5"), F("0.15")), ("s2", "b1", F("0.5"), F("0.25"))]
    assert c.price is None and c.method == METHOD_PEERS_AND_GRID
    assert c.rejected == ("b2",) and c.details["grid_energy_kwh"] == "1"
    assert c.paid("b1") == F("1.5") * F("0.15") + F("0.5") * F("0.25")
    assert mech.clear([]).method is None


def test_cesdt_settles_with_its_tariff_and_timeout() -> None:
    mech = Cesdt(TARIFF, timeout=5)
    rnd = mech.settle(request(at=100), [offer("s1", "1", "0.1", at=106)])
    assert rnd.deadline == 105 and rnd.peer_energy == 0
    assert rnd.grid_price == TARIFF.price(18)
    assert mech.settle_round([request(at=100)], []).bills[0].grid_price == TARIFF.price(18)


# --- properties ------------------------------------------------------------------------

energies = st.integers(1, 4000).map(lambda n: F(n, 1000))
prices = st.integers(0, 9000).map(lambda n: F(n, 10000))
IDS = [f"h{i}" for i in range(1, 16)]


@st.composite
def rounds(draw: st.DrawFn) -> tuple[list[Request], list[Offer]]:
    made_at = draw(st.integers(0, 50))
    hour = draw(st.integers(0, 23))
    people = draw(st.lists(st.sampled_from(IDS), unique=True, min_size=1, max_size=12))
    n_buy = draw(st.integers(1, len(people)))
    requests = [Request(b, draw(energies), draw(st.booleans()), draw(prices), made_at, hour)
                for b in people[:n_buy]]
    # Some offers come from the round's own buyers (refused) or outside the window.
    sellers = people[n_buy:] + draw(st.lists(st.sampled_from(people[:n_buy]), unique=True,
                                             max_size=1))
    offers = [Offer(s, draw(energies), draw(prices), draw(st.integers(made_at - 3,
                                                                      made_at + 40)))
              for s in sellers]
    return requests, offers


@settings(max_examples=150, deadline=None)
@given(rounds())
def test_money_and_energy_are_conserved_exactly(case: tuple[list[Request], list[Offer]]) -> None:
    requests, offers = case
    rnd = one(requests, offers)
    for bill in rnd.bills:
        assert bill.peer_energy + bill.grid_energy == bill.request.energy
        assert bill.grid_energy >= 0
        cap = min(bill.request.limit_price, GRID_PRICE)
        assert all(f.price <= cap for f in bill.fills)
    paid = sum((b.total for b in rnd.bills), F(0))
    received = sum((rnd.received(o.seller) for o in offers), F(0))
    assert paid == received + rnd.grid_energy * GRID_PRICE
    offered = {o.seller: o.energy for o in offers}
    for o in offers:
        assert rnd.clearing.sold(o.seller) <= offered[o.seller]


@settings(max_examples=150, deadline=None)
@given(rounds())
def test_no_offer_outside_the_window_is_accepted(case: tuple[list[Request], list[Offer]]) -> None:
    requests, offers = case
    rnd = one(requests, offers)
    tick = requests[0].made_at
    when = {o.seller: o.submitted_at for o in offers}
    for f in rnd.fills:
        assert tick <= when[f.seller] <= tick + TIMEOUT
    late = {o.seller for o in offers if o.submitted_at > tick + TIMEOUT}
    buyers = {r.buyer for r in requests}
    reasons = {r.seller: r.reason for r in rnd.rejected if r.screened}
    assert late <= set(reasons)
    assert all(reasons[s].startswith("late: ") for s in late - buyers)


@settings(max_examples=150, deadline=None)
@given(rounds(), st.randoms(use_true_random=False))
def test_round_does_not_depend_on_arrival_order(case: tuple[list[Request], list[Offer]],
                                                rnd_: random.Random) -> None:
    requests, offers = case
    r2, o2 = list(requests), list(offers)
    rnd_.shuffle(r2)
    rnd_.shuffle(o2)
    assert one(r2, o2) == one(requests, offers)


@settings(max_examples=150, deadline=None)
@given(rounds())
def test_nothing_cheaper_is_left_while_a_buyer_who_would_take_it_goes_to_the_grid(
    case: tuple[list[Request], list[Offer]],
) -> None:
    requests, offers = case
    rnd = one(requests, offers)
    unused = {r.seller: r for r in rnd.rejected if not r.screened}
    price = {o.seller: o.price for o in offers}
    for bill in rnd.bills:
        if bill.request.wants_bid and bill.grid_energy:
            cap = min(bill.request.limit_price, GRID_PRICE)
            assert all(price[s] > cap for s in unused)


orders = st.lists(
    st.tuples(st.sampled_from([Side.BUY, Side.SELL]), energies, prices), max_size=8
).map(lambda rows: [Order(f"o{i}", side, e, p) for i, (side, e, p) in enumerate(rows)])


@settings(max_examples=100, deadline=None)
@given(orders, st.randoms(use_true_random=False))
def test_book_clearing_conserves_energy_and_ignores_book_order(book: list[Order],
                                                               rnd_: random.Random) -> None:
    mech = Cesdt(TARIFF)
    c = mech.clear(book)
    for o in book:
        if o.side is Side.SELL:
            assert c.sold(o.id) <= o.energy
        else:
            assert c.bought(o.id) <= o.energy
            assert all(f.price <= o.price for f in c.fills if f.buyer == o.id)
    assert sum((c.paid(o.id) for o in book), F(0)) == 0  # peers' money nets to zero
    demand = sum((o.energy for o in book if o.side is Side.BUY), F(0))
    assert c.volume + F(c.details["grid_energy_kwh"]) == demand
    shuffled = list(book)
    rnd_.shuffle(shuffled)
    again = mech.clear(shuffled)
    assert again.fills == c.fills and sorted(again.rejected) == sorted(c.rejected)
