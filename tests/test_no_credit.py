"""No credit: no household balance ever goes below zero.

Three layers: the ledger refuses a transfer that overdraws a household (and verify replays
that rule); the gate (``contracts.settlement.fund``) limits what a household may draw or
offer to what its balance pays in the worst case; settlement given the balances charges a
fault's grid import only up to what is held and reports the rest as unfunded.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from contracts import ledger as rules
from contracts.mechanism import Fill
from contracts.settlement import GRID, Tariff, fund, settle
from testbed.cli.app import app

runner = CliRunner()
TARIFF = Tariff(Fraction("0.37"), Fraction("0.06"))
RATE = Fraction(370)
OP = Ed25519PrivateKey.generate()
KEYS = {h: Ed25519PrivateKey.generate() for h in ("b", "s")}


def _pub(k: Ed25519PrivateKey) -> str:
    return k.public_key().public_bytes_raw().hex()


def genesis(deposits: dict[str, int]) -> rules.LedgerState:
    state = rules.LedgerState()
    txs: list[dict[str, object]] = [{"type": "operator", "public_key": _pub(OP),
                                     "aud_per_token": "370"}]
    for h, k in KEYS.items():
        txs.append({"type": "certificate", "account": h, "public_key": _pub(k),
                    "signature": rules.sign(OP, rules.certificate_message(h, _pub(k)))})
    txs.append({"type": "open", "account": GRID})
    txs += [{"type": "deposit", "account": a, "amount": m} for a, m in deposits.items() if m]
    rules.apply_block(state, txs)
    return state


def test_the_ledger_refuses_an_overdraft_and_verify_replays_the_rule() -> None:
    state = genesis({"b": 100})
    over = {"type": "transfer", "from": "b", "to": GRID, "amount": 101, "memo": "import"}
    with pytest.raises(rules.TxError, match="no credit: 'b' pays 101 µ from a balance of 100"):
        state.copy().apply(over)
    state.apply({**over, "amount": 100})
    assert state.balances["b"] == 0
    state.apply({"type": "transfer", "from": GRID, "to": "s", "amount": 5, "memo": "feed-in"})
    assert state.balances[GRID] == 95  # the utility's account is outside the rule
    # a block holding an overdraft, sealed with the operator's own key, does not verify
    txs = [{"type": "operator", "public_key": _pub(OP), "aud_per_token": "370"},
           {"type": "open", "account": GRID}]
    for h, k in KEYS.items():
        txs.insert(1, {"type": "certificate", "account": h, "public_key": _pub(k),
                       "signature": rules.sign(OP, rules.certificate_message(h, _pub(k)))})
    blocks, prev = [], rules.GENESIS_PREV
    for height, body in enumerate([txs, [over]]):
        root = rules.merkle_root([rules.tx_hash(t) for t in body])
        digest = rules.block_hash(rules.header(height, prev, None, root))
        blocks.append({"height": height, "prev_hash": prev, "interval": None,
                       "merkle_root": root, "hash": digest, "txs": body,
                       "signature": rules.sign(OP, bytes.fromhex(digest))})
        prev = digest
    err = rules.verify_chain(blocks, _pub(OP))
    assert err is not None and err.height == 1 and "no credit" in err.reason


kwh = st.integers(1, 8_000_000).map(lambda n: Fraction(n, 1_000_000))
price = st.integers(0, 600).map(lambda n: Fraction(n, 1000))


@settings(max_examples=300, deadline=None)
@given(draw=kwh, bid=price, funds=st.integers(0, 20_000),
       fill_share=st.integers(0, 100), ask_cut=st.integers(0, 100),
       meter=st.integers(-1000, 1000), margin_pct=st.sampled_from([0, 1, 2, 5]))
def test_a_gated_buyer_never_goes_below_zero(draw: Fraction, bid: Fraction, funds: int,
                                             fill_share: int, ask_cut: int, meter: int,
                                             margin_pct: int) -> None:
    """Whatever clears (nothing, part, all at a price up to its bid) and whatever its meter
    reads within the margin, a buyer held to its funded draw pays in full from its balance:
    no overdraft, nothing unfunded, money conserved."""
    margin = Fraction(margin_pct, 100)
    f = fund(-draw, None, bid, TARIFF, funds, RATE, margin)
    allowed = -f.net_kwh
    assert 0 <= allowed <= draw and (f.reason is None) == (allowed == draw)
    if f.reason is not None:
        assert ("refused at the gate" if allowed == 0 else "draw limited") in f.reason
    cleared = allowed * fill_share / 100
    fill_price = bid * (100 - ask_cut) / 100
    fills = [Fill("s", "b", cleared, fill_price)] if cleared else []
    metered = -allowed * (1 + margin * meter / 1000)
    s = settle(fills, {"b": metered, "s": cleared}, TARIFF, RATE, funds={"b": funds, "s": 0})
    state = genesis({"b": funds})
    for t in s.transfers:  # raises TxError on an overdraft
        state.apply({"type": "transfer", "from": t.source, "to": t.target,
                     "amount": t.amount, "memo": t.memo})
    assert state.balances["b"] >= 0 and state.balances["s"] >= 0
    assert all(h.unfunded_micro == 0 for h in s.households)
    assert sum(state.balances.values()) == funds


@settings(max_examples=200, deadline=None)
@given(surplus=kwh, extra=kwh, ask=price, funds=st.integers(0, 20_000),
       delivered_pct=st.integers(0, 100))
def test_a_seller_off_the_bus_is_charged_only_what_it_holds(
        surplus: Fraction, extra: Fraction, ask: Fraction, funds: int,
        delivered_pct: int) -> None:
    """A seller that sold more than it delivered (oversold, or taken off the bus) pays the
    shortfall at the import tariff up to its balance; the rest is reported unfunded."""
    sold = surplus + extra
    fills = [Fill("s", "b", sold, ask)]
    metered = surplus * delivered_pct / 100
    s = settle(fills, {"s": metered, "b": -sold}, TARIFF, RATE,
               funds={"s": funds, "b": 10**9})
    state = genesis({"s": funds, "b": 10**9})
    for t in s.transfers:
        state.apply({"type": "transfer", "from": t.source, "to": t.target,
                     "amount": t.amount, "memo": t.memo})
    seller = next(h for h in s.households if h.id == "s")
    assert state.balances["s"] >= 0
    if seller.unfunded_micro:  # charged everything it held, and no more
        assert state.balances["s"] == 0


def _zero_buyers(tmp_path: Path) -> Path:
    from rigs import builtin

    text = builtin("scenarios")["scenario2"].read_text("utf-8")
    lines = [("opening_buyer = 0" if line.startswith("opening_buyer") else line)
             for line in text.splitlines()]
    path = tmp_path / "zero.toml"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def test_scenario2_with_every_buyer_at_zero_ends_with_no_negative_balance(
        tmp_path: Path) -> None:
    db = tmp_path / "z.db"
    out = runner.invoke(app, ["run", str(_zero_buyers(tmp_path)), "--db", str(db), "--json"])
    assert out.exit_code in (0, 1), out.output
    summary = json.loads(out.stdout)
    buyers = [h for h in summary["households"] if h["role"] == "buyer"]
    assert len(buyers) == 5
    for h in summary["households"]:
        assert h["balance_after_eth"] >= 0, h
    for h in buyers:
        assert h["balance_before_eth"] == 0
        assert h["funding"].startswith("refused at the gate (no credit)"), h
        assert h["metered_kwh"] == pytest.approx(0, abs=0.01), h  # it drew nothing
        assert h["id"] in summary["funding"]
    verified = runner.invoke(app, ["ledger", "verify", str(db)])
    assert verified.exit_code == 0, verified.output
    human = runner.invoke(app, ["report", summary["run_id"], "--db", str(db),
                                "--out", str(tmp_path / "rep")])
    assert human.exit_code == 0, human.output
    html = (tmp_path / "rep" / "report.html").read_text("utf-8")
    assert "Refused or limited (no credit)" in html and "refused at the gate" in html


def test_a_buyer_with_some_funds_is_limited_not_refused() -> None:
    f = fund(Fraction(-3), None, Fraction("0.2"), TARIFF, 1000, RATE, Fraction(0))
    # 1000 µ = 0.37 AUD buys exactly 1 kWh at the import tariff
    assert f.net_kwh == -1 and f.reason is not None and f.reason.startswith("draw limited to 1")
    assert fund(Fraction(-1), None, Fraction("0.2"), TARIFF, 1000, RATE, Fraction(0)).reason \
        is None
