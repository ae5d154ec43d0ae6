"""The ledger's rules: tampering with any value, or deleting a row, is caught."""

from __future__ import annotations

import copy

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts import ledger as rules
from testbed.ledger import OPERATOR, Ledger
from testbed.store import Store


def make_chain(tmp_path) -> tuple[list[dict], str]:  # type: ignore[no-untyped-def]
    store = Store(tmp_path / "l.db")
    led = Ledger(store, "r1")
    store.insert("keys", led.new_keys(["a", "b"]))
    led.append(None, led.genesis_txs({"a": 1000}))
    order = led.sign_order({"type": "order", "run": "r1", "interval": 0, "household": "a",
                            "side": "buy", "energy_kwh": "1", "price": "0.2", "nonce": 0})
    led.append(0, [order, {"type": "transfer", "from": "a", "to": "b", "amount": 300,
                           "memo": "x"}])
    return store.blocks("r1"), led.public(OPERATOR)


def test_chain_verifies_and_balances_replay(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocks, op = make_chain(tmp_path)
    assert rules.verify_chain(blocks, op) is None
    assert rules.balances_from([t for b in blocks for t in b["txs"]], {}) == \
        {"a": 700, "b": 300, "grid": 0}


def test_any_changed_value_names_the_block(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocks, op = make_chain(tmp_path)
    changes = [
        lambda b: b[1]["txs"][1].update(amount=301),
        lambda b: b[1]["txs"][0].update(price="0.1"),
        lambda b: b[0]["txs"][2].update(amount=10**6),
        lambda b: b[1].update(prev_hash="f" * 64),
        lambda b: b[1].update(signature="00" * 64),
        lambda b: b[1]["txs"].pop(),
        lambda b: b.pop(0),
    ]
    for change in changes:
        bad = copy.deepcopy(blocks)
        change(bad)
        err = rules.verify_chain(bad, op)
        assert err is not None and err.reason


def test_forged_order_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = Store(tmp_path / "l.db")
    led = Ledger(store, "r")
    led.new_keys(["a"])
    order = led.sign_order({"type": "order", "household": "a", "side": "buy",
                            "energy_kwh": "1", "price": "1", "nonce": 1})
    assert led.order_is_valid(order)
    forged = {**order, "signature": rules.sign(Ed25519PrivateKey.generate(),
                                               rules.order_message(order))}
    assert not led.order_is_valid(forged)
    assert not led.order_is_valid({**order, "energy_kwh": "2"})


def test_merkle_root_odd_and_empty() -> None:
    assert rules.merkle_root([]) == rules.sha256(b"")
    a, b, c = (rules.sha256(x) for x in (b"a", b"b", b"c"))
    assert rules.merkle_root([a, b, c]) != rules.merkle_root([a, b])
    assert rules.merkle_root([a]) == a


def test_interval_transaction_is_all_or_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = Store(tmp_path / "a.db")
    try:
        with store.transaction():
            store.insert("trades", {"run_id": "r", "interval": 0, "seq": 0, "seller": "s",
                                    "buyer": "b", "energy_kwh": "1", "price": "1"})
            store.insert("blocks", {"run_id": "r", "height": 0, "interval": 0, "prev_hash": "",
                                    "merkle_root": "", "hash": "", "signature": ""})
            raise RuntimeError("crash mid-interval")
    except RuntimeError:
        pass
    reopened = Store(tmp_path / "a.db")
    assert reopened.db["trades"].count == 0 and reopened.db["blocks"].count == 0
