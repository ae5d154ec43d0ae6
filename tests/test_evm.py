"""The market contract on a real EVM (contracts/evm/market.vy) against contracts/.

Differential: random books of up to 60 orders per side (ties in price and energy,
oversell, random meter deviations) clear and settle on the EVM exactly as
``contracts.dual_bidding`` and ``contracts.settlement`` do: fills, price, method, rejected
orders and every account's money to the micro-ETH. Rejections: forged, replayed, unfunded
and uncertified orders, and a wrong priority proposal, each refused by the contract with
its reason. Both on the embedded py-evm and on a JSON-RPC node (ganache on loopback).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.dual_bidding import clear as py_clear
from contracts.evm import WEI_PER_ETH
from contracts.orders import Order, Side
from contracts.settlement import GRID, Tariff, apply, settle
from testbed.config.rig import load_rig
from testbed.config.scenario import load_scenario
from testbed.ledger.evm import ChainRevert, EmbeddedChain, EvmMarket, RpcChain, encode_call
from testbed.ledger.store import Store
from testbed.report.terminal import summarise
from testbed.run.runner import run_scenario
from tests.evm_fixtures import evm_node  # noqa: F401  (a fixture)

HOUSEHOLDS = [str(i) for i in range(1, 121)]  # 60 buyers and 60 sellers at most
NODE_SIDE = 12  # smaller books on the node: each order is an HTTP round trip and a block
ALPHA = Fraction(1, 5)
TARIFF = Tariff(Fraction("0.37"), Fraction("0.06"))
RATE = Fraction(370)
MICRO_KWH = Fraction(1, 10**6)


def new_market(chain: EmbeddedChain | RpcChain, households: list[str] = HOUSEHOLDS,
               deposit_eth: int = 2) -> EvmMarket:
    market = EvmMarket(chain, households, alpha=ALPHA, import_aud_per_kwh=TARIFF.import_aud_per_kwh,
                       feed_in_aud_per_kwh=TARIFF.feed_in_aud_per_kwh, aud_per_token=RATE,
                       household_wei=(deposit_eth + 1) * WEI_PER_ETH)
    for h in households:
        if deposit_eth:
            market.deposit(h, deposit_eth * WEI_PER_ETH)
    return market


@pytest.fixture(scope="module")
def embedded_market() -> EvmMarket:
    return new_market(EmbeddedChain())


@pytest.fixture(scope="module")
def node_market(evm_node: str) -> EvmMarket:  # noqa: F811
    return new_market(RpcChain(evm_node), HOUSEHOLDS[:2 * NODE_SIDE])


# Few distinct values, so ties in price and in energy are common; energies in whole
# milli-kWh up to 5 kWh (escrow <= 2.5 AUD), prices on a 0.005 AUD grid.
ENERGY = st.integers(1, 50).map(lambda n: Fraction(n, 10)) | st.integers(1, 5000).map(
    lambda n: Fraction(n, 1000))
WHOLE = st.integers(1, 2).map(Fraction)  # a book of 1 and 2 kWh often meets exactly: method 1
PRICE = st.integers(20, 40).map(lambda n: Fraction(n, 200))
DEVIATION = st.integers(-300_000, 300_000)  # micro-kWh the meter differs from the trade


Book = tuple[list[Order], dict[str, Fraction], set[str]]


@st.composite
def books(draw: st.DrawFn, max_side: int = 60) -> Book:
    ids = draw(st.permutations(HOUSEHOLDS[:2 * max_side]))
    n_buy = draw(st.integers(0, max_side))
    n_sell = draw(st.integers(0, max_side))
    energy = draw(st.sampled_from([ENERGY, WHOLE]))
    orders = [Order(h, Side.BUY, draw(energy), draw(PRICE)) for h in ids[:n_buy]]
    orders += [Order(h, Side.SELL, draw(energy), draw(PRICE))
               for h in ids[n_buy:n_buy + n_sell]]
    orders = draw(st.permutations(orders))  # the order of arrival must not matter
    deviation = {h: draw(DEVIATION) * MICRO_KWH for h in HOUSEHOLDS[:2 * max_side]}
    # a disputed reading (meter fault) now and then: that household is not settled, and
    # every fill it is party to is held
    disputed = draw(st.sets(st.sampled_from(sorted(o.id for o in orders)), max_size=2)
                    if orders else st.just(set[str]()))
    return orders, deviation, disputed


def check_same(market: EvmMarket, orders: list[Order], deviation: dict[str, Fraction],
               disputed: set[str] | None = None) -> None:
    """One interval on the chain and in contracts/: identical in every figure and µETH,
    with the Python contract's disputes and its no-credit rule (funds: the balances)."""
    disputed = disputed or set()
    before = market.balances()
    for o in orders:
        market.place(o.id, o.side.value, o.energy, o.price)
    chain = market.clear()
    python = py_clear(orders, ALPHA)
    assert chain.fills == python.fills
    assert (chain.price, chain.method, chain.rejected) == (python.price, python.method,
                                                           python.rejected)
    # Meters: the cleared position plus a random deviation (oversell shortfall, unsold
    # surplus, a buyer taking less): the grid settles it at the tariffs.
    metered = {h: python.sold(h) - python.bought(h) + deviation.get(h, Fraction(0))
               for h in market.hid}
    market.settle(metered, disputed)
    expected = apply({**before, GRID: before["grid"]},
                     settle(python.fills, metered, TARIFF, RATE, funds=before,
                            disputed={h: "meter fault" for h in disputed}).transfers)
    after = market.balances()
    assert after == expected
    assert min(after[h] for h in market.hid) >= 0  # no credit


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.data_too_large])
@given(books())
def test_embedded_evm_clears_and_settles_like_contracts(
        embedded_market: EvmMarket, book: Book) -> None:
    check_same(embedded_market, *book)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                               HealthCheck.data_too_large])
@given(books(max_side=NODE_SIDE))
def test_node_clears_and_settles_like_contracts(
        node_market: EvmMarket, book: Book) -> None:
    check_same(node_market, *book)


POOR = [str(i) for i in range(1, 13)]


@st.composite
def poor_books(draw: st.DrawFn) -> tuple[dict[str, int], Book]:
    """Households with little or nothing deposited, sellers that deliver far less than they
    sold: grid import their balance cannot pay (the no-credit rule)."""
    funds = {h: draw(st.sampled_from([0, 1, 250, 4_000])) for h in POOR}  # micro-ETH
    orders = [Order(h, Side.SELL, draw(WHOLE), draw(PRICE)) for h in POOR[:6]]
    orders += [Order(h, Side.BUY, Fraction(1, 100), draw(PRICE)) for h in POOR[6:]
               if funds[h] >= 10]
    deviation = {h: -draw(st.integers(0, 3)) * Fraction(1) for h in POOR}
    disputed = draw(st.sets(st.sampled_from(POOR), max_size=2))
    return funds, (orders, deviation, disputed)


@pytest.fixture(params=["embedded", "node"])
def new_chain(request: pytest.FixtureRequest) -> Any:
    """A function making a fresh chain: embedded py-evm, or the loopback node's."""
    url = None if request.param == "embedded" else request.getfixturevalue("evm_node")
    return lambda: EmbeddedChain() if url is None else RpcChain(url)


def test_no_credit_and_disputes_on_the_chain_like_contracts(new_chain: Any) -> None:
    """Unfunded grid import and disputed readings: the chain caps and holds exactly as
    contracts.settlement does (differential, a fresh deployment per book)."""
    chain = new_chain
    node = not isinstance(chain(), EmbeddedChain)

    @settings(max_examples=2 if node else 6, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(poor_books())
    def one(case: tuple[dict[str, int], Book]) -> None:
        funds, (orders, deviation, disputed) = case
        market = new_market(chain(), POOR, deposit_eth=0)
        for h, micro in funds.items():
            if micro:
                market.deposit(h, micro * 10**12)
        check_same(market, orders, deviation, disputed)

    one()


def test_known_books_on_the_evm(embedded_market: EvmMarket) -> None:
    """Method 1 (exact meet, alpha between L and U), method 2 on either side, no trade."""
    zero: dict[str, Fraction] = {}

    def pair(bought: int, bid: str) -> list[Order]:
        return [Order("1", Side.BUY, Fraction(bought), Fraction(bid)),
                Order("2", Side.SELL, Fraction(2), Fraction("0.15"))]

    cases = [pair(2, "0.20"), pair(3, "0.20"), pair(1, "0.20"), pair(1, "0.10"), []]
    methods = []
    for orders in cases:
        check_same(embedded_market, orders, zero)
        methods.append(py_clear(orders, ALPHA).method)
    assert methods == [1, 2, 2, None, None]


# ---- rejections, on both chains -----------------------------------------------------------------

@pytest.fixture(params=["embedded", "node"])
def fresh(request: pytest.FixtureRequest) -> Iterator[EvmMarket]:
    """A small market: households 1-3 certified, 1 and 2 funded, 3 not."""
    chain = (EmbeddedChain() if request.param == "embedded"
             else RpcChain(request.getfixturevalue("evm_node")))
    market = new_market(chain, ["1", "2", "3"], deposit_eth=0)
    market.deposit("1", WEI_PER_ETH // 100)
    market.deposit("2", WEI_PER_ETH // 100)
    yield market


def refused(market: EvmMarket, **kw: object) -> str:
    args = {"household": "1", "side": "buy", "energy_kwh": Fraction(1),
            "price": Fraction("0.2"), **kw}
    with pytest.raises(ChainRevert) as caught:
        market.place(**args)  # type: ignore[arg-type]
    return caught.value.reason


def test_forged_order_from_another_account_is_refused(fresh: EvmMarket) -> None:
    # household 2's own certified account places an order in household 1's name
    assert refused(fresh, sender=fresh.accounts["2"]).startswith("forged")
    # an outsider that holds no certificate likewise
    outsider, _ = fresh.chain.new_account(WEI_PER_ETH)
    assert refused(fresh, sender=outsider).startswith("forged")


def test_replayed_order_is_refused(fresh: EvmMarket) -> None:
    fresh.place("1", "buy", Fraction(1), Fraction("0.2"), nonce=0)
    assert refused(fresh, nonce=0).startswith("replayed")
    assert refused(fresh, nonce=5).startswith("replayed")  # nor may one skip ahead
    # a fresh nonce in the same interval: one order per household per interval
    assert refused(fresh, nonce=1).startswith("duplicate")


def test_replayed_raw_transaction_is_refused_by_the_node(evm_node: str) -> None:  # noqa: F811
    """The exact signed bytes sent twice: the node refuses the second (account nonce)."""
    chain = RpcChain(evm_node)
    market = new_market(chain, ["1", "2"], deposit_eth=1)
    sender = market.accounts["1"]
    data = encode_call("place_order", [1, 0, 0, True, 10**6, 200_000])
    from eth_utils import to_checksum_address

    signed = chain._keys[sender].sign_transaction({
        "to": to_checksum_address(market.address), "data": data, "value": 0, "gas": 500_000,
        "gasPrice": int(chain.rpc("eth_gasPrice", []), 16), "chainId": chain.chain_id,
        "nonce": int(chain.rpc("eth_getTransactionCount", [sender, "pending"]), 16)})
    raw = "0x" + bytes(signed.raw_transaction).hex()
    chain._wait(chain.rpc("eth_sendRawTransaction", [raw]))
    with pytest.raises(Exception, match="nonce"):
        chain.rpc("eth_sendRawTransaction", [raw])
    assert market.view("order_count") == 1


def test_unfunded_buy_order_is_refused(fresh: EvmMarket) -> None:
    assert refused(fresh, household="3").startswith("unfunded")
    # 0.01 ETH = 3.7 AUD covers 18.5 kWh at 0.20 AUD/kWh, not 20 kWh
    assert refused(fresh, energy_kwh=Fraction(20)).startswith("unfunded")
    fresh.place("3", "sell", Fraction(1), Fraction("0.1"))  # selling needs no escrow


def test_uncertified_order_is_refused(fresh: EvmMarket) -> None:
    outsider, _ = fresh.chain.new_account(WEI_PER_ETH)
    with pytest.raises(ChainRevert, match="uncertified"):
        fresh._tx(outsider, "place_order", [4, 0, 0, True, 10**6, 200_000])
    with pytest.raises(ChainRevert, match="uncertified"):
        fresh._tx(outsider, "deposit", [], 10**15)
    with pytest.raises(ChainRevert, match="only the operator"):
        fresh._tx(outsider, "certify", [outsider])


def test_wrong_priority_proposal_and_readings_are_refused(fresh: EvmMarket) -> None:
    fresh.place("1", "buy", Fraction(1), Fraction("0.2"))
    fresh.place("2", "buy", Fraction(1), Fraction("0.3"))  # the better bid, placed second
    fresh.place("3", "sell", Fraction(2), Fraction("0.1"))
    with pytest.raises(ChainRevert, match="not the market's"):
        fresh._tx(fresh.operator, "clear", [[0, 1], [2]])
    with pytest.raises(ChainRevert, match="every order"):
        fresh._tx(fresh.operator, "clear", [[1], [2]])
    with pytest.raises(ChainRevert, match="only the operator"):
        fresh._tx(fresh.accounts["1"], "clear", [[1, 0], [2]])
    fresh.clear()
    with pytest.raises(ChainRevert, match="one reading per"):
        fresh._tx(fresh.operator, "settle", [[0, 0], [False, False]])
    with pytest.raises(ChainRevert, match="one dispute flag per"):
        fresh._tx(fresh.operator, "settle", [[0, 0, 0], [False]])
    with pytest.raises(ChainRevert, match="oracle"):
        fresh._tx(fresh.accounts["1"], "settle", [[0, 0, 0], [False] * 3])


# ---- the paper's scenarios through `testbed run --ledger ...` -------------------------------

def run_scenario_on(scenario: str, ledger: str, db: Path) -> dict[str, Any]:
    """``testbed run SCENARIO --ledger LEDGER --json`` in this process (the compiled
    contract is shared), as the summary the CLI prints."""
    store = Store(db)
    try:
        outcome = asyncio.run(run_scenario(load_scenario(scenario), load_rig("mock"), store,
                                           ledger=ledger))
    finally:
        store.close()
    return summarise(outcome)


@pytest.mark.parametrize("scenario", ["scenario1", "scenario2", "scenario3"])
def test_scenarios_on_the_embedded_evm_match_the_sqlite_ledger(scenario: str,
                                                                tmp_path: Path) -> None:
    """The chain clears and settles; the run's checks compare its clearing with
    contracts/ and every balance with the SQLite ledger of the same run."""
    evm = run_scenario_on(scenario, "evm", tmp_path / "e.db")
    assert evm["validation"]["failed"] == []
    rows = evm["evm"]["balances"]
    by_id = {h["id"]: h["balance_after_eth"] for h in evm["households"]}
    assert all(r["equal"] for r in rows) and len(rows) == len(by_id) + 1
    assert {r["account"]: r["after_eth"] for r in rows if r["account"] != "grid"} == by_id
    if scenario == "scenario2":
        assert (evm["clearing_price"], evm["volume_kwh"], evm["self_sufficiency"],
                evm["community_net_aud"]) == (0.16, 12.7, 0.944882, -0.103)
    # The paper's balances (Tables 3, 5, 6) as the scenario file gives them, beside ours: in
    # the JSON, per household and per EVM account, and in the EVM table the run prints.
    paper = load_scenario(scenario).paper_balances
    assert set(paper) == set(by_id)
    for row in [*evm["households"], *(r for r in rows if r["account"] != "grid")]:
        hid = row.get("id", row.get("account"))
        ours_before = row.get("balance_before_eth", row.get("before_eth"))
        ours_after = row.get("balance_after_eth", row.get("after_eth"))
        assert (row["paper_before_eth"], row["paper_after_eth"]) == \
            (float(paper[hid][0]), float(paper[hid][1]))
        assert row["paper_difference_before_eth"] == round(ours_before - float(paper[hid][0]), 6)
        assert row["paper_difference_after_eth"] == round(ours_after - float(paper[hid][1]), 6)
    grid = next(r for r in rows if r["account"] == "grid")
    assert grid["paper_after_eth"] is None and grid["paper_difference_after_eth"] is None
    printed = rendered(evm)
    assert all(len(line) <= 100 for line in printed.splitlines())
    for hid, (before, after) in paper.items():
        b = next(r for r in rows if r["account"] == hid)
        table = printed[printed.index("ETH held by the contract"):]
        line = next(ln for ln in table.splitlines() if ln.split("│")[1:2] != [] and
                    ln.split("│")[1].strip() == hid)
        cells = [c.strip() for c in line.split("│")[2:-1]]
        assert cells[:6] == [f"{b['before_eth']:.6f}", f"{float(before):.4f}",
                             f"{b['after_eth']:.6f}", f"{float(after):.4f}",
                             f"{b['after_eth'] - float(after):+.6f}",
                             f"{b['ledger_after_eth']:.6f}"], line


def rendered(summary: dict[str, Any]) -> str:
    """What ``testbed run`` prints for the summary on a 100-column terminal."""
    import io

    from rich.console import Console

    from testbed.report.terminal import render

    out = io.StringIO()
    render(summary, Console(file=out, width=100, color_system=None, emoji=False))
    return out.getvalue()


def test_scenario_without_the_papers_balances_still_runs(tmp_path: Path) -> None:
    """A scenario file without [paper.households_eth_*] runs on the EVM and prints the EVM
    table without the paper's columns; with them, the SQLite-only run prints its own table."""
    from rigs import builtin

    text = builtin("scenarios")["scenario2"].read_text("utf-8")
    bare = tmp_path / "bare.toml"
    bare.write_text(text[:text.index("[paper.households_eth_before]")], "utf-8")
    assert load_scenario(str(bare)).paper_balances == {}
    store = Store(tmp_path / "b.db")
    try:
        summary = summarise(asyncio.run(run_scenario(load_scenario(str(bare)),
                                                     load_rig("mock"), store, ledger="evm")))
    finally:
        store.close()
    assert summary["validation"]["failed"] == [] and summary["clearing_price"] == 0.16
    assert all("paper_after_eth" not in h for h in summary["households"])
    assert all("paper_after_eth" not in r for r in summary["evm"]["balances"])
    printed = rendered(summary)
    assert "SQLite ledger after" in printed and "paper after" not in printed
    sqlite = run_scenario_on("scenario2", "sqlite", tmp_path / "s.db")
    printed = rendered(sqlite)
    paper = load_scenario("scenario2").paper_balances
    assert "paper after" in printed and all(len(ln) <= 100 for ln in printed.splitlines())
    for h in sqlite["households"]:
        assert h["paper_after_eth"] == float(paper[h["id"]][1])


@pytest.mark.parametrize(("tables", "message"), [
    ('[paper.households_eth_before]\n"1" = 0.01\n', "key 'households_eth_after': missing"),
    ('[paper.households_eth_before]\n"1" = 0.01\n[paper.households_eth_after]\n"2" = 0\n',
     "must name the same households"),
    ('[paper.households_eth_before]\n"11" = 0.01\n[paper.households_eth_after]\n"11" = 0\n',
     "not a household"),
    ('[paper.households_eth_before]\n"1" = -0.01\n[paper.households_eth_after]\n"1" = 0\n',
     "must lie in"),
    ('[paper.households_eth_before]\n"1" = "1e999999"\n[paper.households_eth_after]\n'
     '"1" = 0\n', "households_eth_before] key '1'"),
    ('[paper.households_eth_before]\n"1" = true\n[paper.households_eth_after]\n"1" = 0\n',
     "expected a number"),
])
def test_papers_balances_are_parsed_strictly(tables: str, message: str, tmp_path: Path) -> None:
    from rigs import builtin
    from testbed.errors import InputError

    text = builtin("scenarios")["scenario2"].read_text("utf-8")
    bad = tmp_path / "bad.toml"
    bad.write_text(text[:text.index("[paper.households_eth_before]")] + tables, "utf-8")
    with pytest.raises(InputError, match=message):
        load_scenario(str(bad))


def test_scenario2_on_the_node(evm_node: str, tmp_path: Path) -> None:  # noqa: F811
    evm = run_scenario_on("scenario2", f"evm+{evm_node}", tmp_path / "n.db")
    assert (evm["clearing_price"], evm["method"], evm["volume_kwh"],
            evm["community_net_aud"]) == (0.16, 2, 12.7, -0.103)
    assert all(r["equal"] for r in evm["evm"]["balances"])
    assert evm["validation"]["failed"] == []
    from testbed.ledger.evm import verify_evm

    store = Store(tmp_path / "n.db")
    try:  # the node's logs from the deployment, against the run database
        assert verify_evm(store, evm["run_id"]) is None
        with store.transaction():
            store.db.execute("update trades set energy_kwh = '1' where run_id = ? and seq = 0",
                             [evm["run_id"]])
        assert "fills differ" in (verify_evm(store, evm["run_id"]) or "")
    finally:
        store.close()


def test_no_node_is_one_clear_message(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "testbed.cli", "run", "scenario2", "--ledger",
                          "evm+http://127.0.0.1:9", "--db", str(tmp_path / "x.db")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "no Ethereum JSON-RPC node answers at http://127.0.0.1:9" in out.stderr
    assert "Traceback" not in out.stderr


# ---- testbed ledger verify on an EVM run ------------------------------------------------------

def test_verify_replays_the_embedded_chain_and_catches_tampering(tmp_path: Path) -> None:
    from testbed.ledger.evm import verify_evm

    db = tmp_path / "v.db"
    run_id = run_scenario_on("scenario2", "evm", db)["run_id"]
    store = Store(db)
    try:
        assert verify_evm(store, run_id) is None
        with store.transaction():  # a meter reading changed after the run
            row = store.db.execute("select body from results where run_id = ? and "
                                   "household = '7'", [run_id]).fetchone()[0]
            store.db.execute("update results set body = ? where run_id = ? and household = '7'",
                             [row.replace('"metered_kwh": "15/2"', '"metered_kwh": "7.4"'),
                              run_id])
        assert "household 7" in (verify_evm(store, run_id) or "")
        with store.transaction():
            store.db.execute("update results set body = ? where run_id = ? and household = '7'",
                             [row, run_id])
            seq, body = store.db.execute("select seq, body from evm_events where run_id = ? "
                                         "and name = 'Fill'", [run_id]).fetchone()
            forged = {**json.loads(body), "money": json.loads(body)["money"] + 1}
            store.db.execute("update evm_events set body = ? where run_id = ? and seq = ?",
                             [json.dumps(forged), run_id, seq])
        assert "differ" in (verify_evm(store, run_id) or "")  # the chain says otherwise
        with store.transaction():
            store.db.execute("update evm_events set body = ? where run_id = ? and seq = ?",
                             [body, run_id, seq])
        assert verify_evm(store, run_id) is None
        with store.transaction():  # a recorded event dropped: the replay has one more
            store.db.execute("delete from evm_events where run_id = ? and seq = (select "
                             "max(seq) from evm_events where run_id = ? and name = 'Fill')",
                             [run_id, run_id])
        assert "differ" in (verify_evm(store, run_id) or "")
    finally:
        store.close()


def test_embedded_gas_equals_the_node_receipts(evm_node: str) -> None:  # noqa: F811
    """The same seeded interval costs the same gas in py-evm as in the node's receipts
    (cold storage each transaction, EIP-2200 originals, capped refunds); only the deploy
    differs, by ganache 7 not charging EIP-3860's initcode words."""
    from bench.evm_gas import one_interval

    embedded, node = one_interval(EmbeddedChain(), 5), one_interval(RpcChain(evm_node), 5)
    keys = ("order_gas", "order_gas_max", "clear_gas", "settle_gas", "fills")
    assert {k: embedded[k] for k in keys} == {k: node[k] for k in keys}
    assert embedded["deploy_gas"] - node["deploy_gas"] == 2 * ((len(
        compiled_initcode()) + 31) // 32)


def compiled_initcode() -> bytes:
    from eth_abi.abi import encode

    from testbed.ledger.evm import compiled

    abi = compiled()
    return abi.bytecode + encode(abi.constructor, [1, 5, 370_000_000, 370_000, 60_000])


def test_the_runs_checks_fail_when_the_chain_and_contracts_disagree() -> None:
    """The runner's three EVM checks: each must fail on a disagreement it guards."""
    import dataclasses

    from testbed.run.runner import chain_checks

    book = [Order("1", Side.BUY, Fraction(2), Fraction("0.2")),
            Order("2", Side.SELL, Fraction(1), Fraction("0.1"))]
    python = py_clear(book, ALPHA)
    same = chain_checks(0, "EVM", python, python, {}, {}, {"1": 5, "grid": 0},
                        {"1": 5, "grid": 0})
    assert [c.passed for c in same] == [True, True, True]
    other_price = dataclasses.replace(python, price=Fraction("0.15"))
    bad = chain_checks(0, "EVM", python, other_price, {"1": "x"}, {}, {"1": 5, "grid": 0},
                       {"1": 6, "grid": 0})
    assert [c.passed for c in bad] == [False, False, False]
    assert "1: ledger 5 µ, chain 6 µ" in bad[2].message


def test_a_hems_signed_transaction_is_its_order_and_forgeries_are_refused(
        new_chain: Any) -> None:
    """Household 1's HEMS holds its Ethereum key (the operator certifies its registered
    address and deposits for it): its own signed transaction places its order; the same
    bytes again, a transaction signed by another key, one for another chain, and one
    whose order is not the signed order's are each refused, on both back-ends."""
    from eth_account import Account

    from testbed.agents import eth_order_tx

    hems, other = Account.create(), Account.create()
    chain = new_chain()
    market = EvmMarket(chain, ["1", "2"], alpha=ALPHA,
                       import_aud_per_kwh=TARIFF.import_aud_per_kwh,
                       feed_in_aud_per_kwh=TARIFF.feed_in_aud_per_kwh, aud_per_token=RATE,
                       registered={"1": hems.address})
    market.deposit("1", WEI_PER_ETH // 100)
    assert market.balances()["1"] == 10_000 and market.keys["1"] == ""
    order = {"household": "1", "side": "buy", "energy_kwh": "1", "price": "0.2"}
    gate = {"evm": market.gate(["1"])}
    assert gate["evm"]["accounts"]["1"]["address"] == hems.address
    forged = bytes.fromhex(eth_order_tx(gate, order, "0x" + bytes(other.key).hex())[2:])
    with pytest.raises(ChainRevert, match="forged"):
        market.submit_raw("1", forged)
    wrong_chain = bytes.fromhex(eth_order_tx({"evm": {**gate["evm"], "chain_id": 5}}, order,
                                             "0x" + bytes(hems.key).hex())[2:])
    with pytest.raises(ChainRevert, match=r"chain|signature|sender"):
        market.submit_raw("1", wrong_chain)
    gate = {"evm": market.gate(["1"])}  # a refused transaction may have used a nonce
    raw = bytes.fromhex(eth_order_tx(gate, order, "0x" + bytes(hems.key).hex())[2:])
    with pytest.raises(ChainRevert, match="mismatch"):
        market.submit_raw("1", raw, (True, 2 * 10**6, 200_000))
    placed = market.submit_raw("1", raw, (True, 10**6, 200_000))
    assert (placed.hid, placed.is_buy, placed.energy, placed.price) == (1, True, 10**6, 200_000)
    with pytest.raises(ChainRevert, match="nonce"):
        market.submit_raw("1", raw)  # replayed: the same signed bytes
    assert market.view("order_count") == 1
