"""The ledger: certified keys, nonces, escrow, and a chain where any change is caught."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from contracts import ledger as rules
from testbed.cli.app import app
from testbed.ledger.chain import OPERATOR, Ledger, verify_run
from testbed.ledger.store import Store

runner = CliRunner()


def small_ledger(tmp_path: Path) -> tuple[Store, Ledger]:
    store = Store(tmp_path / "l.db")
    store.insert("runs", {"id": "r1", "scenario": "t", "status": "running"})
    with store.transaction():
        led = Ledger.create(store, "r1", ["a", "b"], {"a": 10_000})
    return store, led


def order(led: Ledger, household: str, side: str = "buy", energy: str = "1",
          price: str = "0.37") -> dict:  # type: ignore[type-arg]
    return led.sign_order({"household": household, "side": side, "energy_kwh": energy,
                           "price": price})


def test_orders_are_screened_with_reasons_and_escrow_is_released(tmp_path: Path) -> None:
    store, led = small_ledger(tmp_path)
    good = order(led, "a")  # 1 kWh at 0.37 AUD = 0.001 ETH = 1000 µ escrow
    forged = {**order(led, "a"), "energy_kwh": "2"}
    stranger = Ed25519PrivateKey.generate()
    unregistered = {"type": "order", "household": "c", "side": "buy", "energy_kwh": "1",
                    "price": "0.1", "nonce": 0}
    unregistered["signature"] = rules.sign(stranger, rules.order_message(unregistered))
    broke = order(led, "b")  # b has no money
    rich = order(led, "a", energy="100")  # 37 AUD > a's 10,000 µ (3.7 AUD)
    draft = led.draft()
    reasons = [draft.submit(o) for o in (good, good, forged, unregistered, broke, rich)]
    assert reasons[0] is None
    assert reasons[1].startswith("duplicate")
    assert reasons[2].startswith("forged")
    assert reasons[3].startswith("unregistered")
    assert reasons[4].startswith("insufficient funds: escrow 1000 µ needed, 0 µ")
    assert reasons[5].startswith("insufficient funds: escrow 100000 µ needed, 9000 µ")
    assert draft.state.available("a") == 9_000
    draft.add([{"type": "transfer", "from": "a", "to": "b", "amount": 700, "memo": "fill"}])
    with pytest.raises(rules.TxError, match="not released"):
        _seal_copy(led, draft)
    draft.release_escrow()
    with store.transaction():
        led.seal(0, draft)
    assert led.balances == {"a": 9_300, "b": 700, "grid": 0}
    assert not led.state.holds

    # the same order sent again in a later block is a replay; a stale nonce is refused too
    draft = led.draft()
    assert draft.submit(good).startswith("replayed")
    stale = led.sign_order({"household": "a", "side": "sell", "energy_kwh": "1",
                            "price": "0.1", "nonce": good["nonce"]})
    assert draft.submit(stale).startswith("stale nonce")
    with store.transaction():
        led.seal(1, draft)
    assert verify_run(store, "r1") is None
    kinds = [t["type"] for b in store.blocks("r1") for t in b["txs"]]
    assert kinds.count("order") == 1 and kinds.count("rejected") == 7


def _seal_copy(led: Ledger, draft) -> None:  # type: ignore[no-untyped-def]
    """Sealing with escrow still open must fail (on a copy, so the draft stays usable)."""
    from testbed.ledger.chain import BlockDraft
    BlockDraft(draft.state.copy(), list(draft.txs)).state.end_block()


def test_a_rejection_with_a_wrong_reason_or_a_bad_order_does_not_verify() -> None:
    state = rules.LedgerState()
    key = Ed25519PrivateKey.generate()
    op_pub = key.public_key().public_bytes_raw().hex()
    state.apply({"type": "operator", "public_key": op_pub, "aud_per_token": "370"})
    o = {"type": "order", "household": "x", "side": "buy", "energy_kwh": "1", "price": "1",
         "nonce": 0, "signature": "00"}
    with pytest.raises(rules.TxError, match="should have been rejected: unregistered"):
        state.copy().apply(o)
    with pytest.raises(rules.TxError, match="where the rules say"):
        state.copy().apply({"type": "rejected", "order": o, "reason": "forged"})


@pytest.fixture(scope="module")
def run_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("ledger") / "run.db"
    result = runner.invoke(app, ["run", "scenario2", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    return db


LEDGER_TABLES = {"blocks": ["run_id", "height"], "txs": ["run_id", "height", "seq"],
                 "keys": ["run_id", "account"], "balances": ["run_id", "account"]}


def _changed(value: object) -> object:
    if isinstance(value, int):
        return value + 1000
    if value is None:
        return 7
    text = str(value)
    return text[:-1] + ("0" if text[-1:] != "0" else "1") if text else "x"


def test_verify_passes_then_catches_every_changed_value_and_deleted_row(run_db: Path) -> None:
    conn = sqlite3.connect(run_db)
    (run_id,) = conn.execute("select id from runs").fetchone()

    def verdict() -> rules.ChainError | None:
        store = Store(run_db)
        try:
            return verify_run(store, run_id)
        finally:
            store.close()

    assert verdict() is None
    checked = 0
    for table in LEDGER_TABLES:
        cols = [r[1] for r in conn.execute(f"pragma table_info({table})")]
        rows = conn.execute(f"select rowid, * from {table}").fetchall()
        for rowid, *values in rows:
            for col, value in zip(cols, values, strict=True):
                conn.execute(f"update {table} set {col} = ? where rowid = ?",
                             [_changed(value), rowid])
                conn.commit()
                err = verdict()
                assert err is not None and err.reason, (table, col, value)
                assert 0 <= err.height <= 1
                conn.execute(f"update {table} set {col} = ? where rowid = ?", [value, rowid])
                conn.commit()
                checked += 1
            conn.execute(f"delete from {table} where rowid = ?", [rowid])
            conn.commit()
            assert verdict() is not None, (table, "deleted", values)
            conn.execute(f"insert into {table} (rowid, {', '.join(cols)}) values "
                         f"(?, {', '.join('?' * len(cols))})", [rowid, *values])
            conn.commit()
            checked += 1
        for col in ("ledger_height", "ledger_head"):
            (value,) = conn.execute(f"select {col} from runs").fetchone()
            conn.execute(f"update runs set {col} = ?", [_changed(value)])
            conn.commit()
            assert verdict() is not None, col
            conn.execute(f"update runs set {col} = ?", [value])
            conn.commit()
    assert verdict() is None and checked > 100


def test_ledger_cli_verify_and_show(run_db: Path, tmp_path: Path) -> None:
    ok = runner.invoke(app, ["ledger", "verify", str(run_db)])
    assert ok.exit_code == 0, ok.output
    shown = runner.invoke(app, ["ledger", "show", str(run_db)])
    assert shown.exit_code == 0 and "certificate" in shown.stdout and "grid" in shown.stdout
    bad = tmp_path / "bad.db"
    conn = sqlite3.connect(bad)
    with sqlite3.connect(run_db) as source:  # the WAL too, not the main file alone
        source.backup(conn)
    conn.execute("update txs set body = replace(body, '\"amount\":', '\"amount\":1') "
                 "where height = 1 and body like '%transfer%'")
    conn.commit()
    conn.close()
    failed = runner.invoke(app, ["ledger", "verify", str(bad)])
    assert failed.exit_code == 1
    assert "block 1" in failed.output and "Merkle root" in failed.output


# -- properties over random order flows ----------------------------------------------------

KEYS = {h: Ed25519PrivateKey.generate() for h in (OPERATOR, "h0", "h1", "h2")}
PUB = {h: k.public_key().public_bytes_raw().hex() for h, k in KEYS.items()}


def genesis(deposits: list[int]) -> rules.LedgerState:
    state = rules.LedgerState()
    txs: list[dict] = [{"type": "operator", "public_key": PUB[OPERATOR],  # type: ignore[type-arg]
                        "aud_per_token": "370"}]
    for h in ("h0", "h1", "h2"):
        txs.append({"type": "certificate", "account": h, "public_key": PUB[h],
                    "signature": rules.sign(KEYS[OPERATOR], rules.certificate_message(h, PUB[h]))})
    txs.append({"type": "open", "account": "grid"})
    txs += [{"type": "deposit", "account": f"h{i}", "amount": d} for i, d in enumerate(deposits)]
    rules.apply_block(state, txs)
    return state


order_st = st.tuples(st.sampled_from(["h0", "h1", "h2"]), st.sampled_from(["buy", "sell"]),
                     st.integers(1, 5000), st.integers(0, 500),
                     st.sampled_from(["fresh", "fresh", "replay", "forge"]))


@settings(max_examples=60, deadline=None)
@given(deposits=st.lists(st.integers(0, 50_000), min_size=3, max_size=3),
       blocks=st.lists(st.lists(order_st, max_size=8), min_size=1, max_size=4),
       pay=st.integers(0, 10_000))
def test_random_flows_conserve_money_release_escrow_and_never_replay(
        deposits: list[int], blocks: list[list[tuple]], pay: int) -> None:  # type: ignore[type-arg]
    state = genesis(deposits)
    nonce = dict.fromkeys(("h0", "h1", "h2"), 0)
    sent: list[dict] = []  # type: ignore[type-arg]
    executed: list[str] = []
    for block in blocks:
        draft = state.copy()
        for h, side, wh, milli, how in block:
            if how == "replay" and sent:
                o = sent[(wh + milli) % len(sent)]
            else:
                nonce[h] += 1
                o = {"type": "order", "household": h, "side": side,
                     "energy_kwh": f"{wh}/1000", "price": f"{milli}/1000", "nonce": nonce[h]}
                o["signature"] = rules.sign(KEYS[h], rules.order_message(o))
                if how == "forge":
                    o = {**o, "price": f"{milli + 1}/1000"}
                sent.append(o)
            reason = draft.rejection(o)
            draft.apply(o if reason is None else {"type": "rejected", "order": o,
                                                  "reason": reason})
            if reason is None:
                executed.append(rules.tx_hash(o))
        # settle: a buyer pays the grid, never beyond its balance (no credit), then every
        # escrow is released whole
        if pay:
            imported = {"type": "transfer", "from": "h0", "to": "grid", "amount": pay,
                        "memo": "import"}
            if draft.balances["h0"] >= pay:
                draft.apply(imported)
            else:
                with pytest.raises(rules.TxError, match="no credit"):
                    draft.copy().apply(imported)
        for digest, (owner, amount) in sorted(draft.holds.items()):
            draft.apply({"type": "release", "order": digest, "account": owner,
                         "amount": amount})
        draft.end_block()
        state = draft
        assert not state.holds  # escrow always released
        assert sum(state.balances.values()) == sum(deposits)  # conserved to the micro-unit
        assert min(state.balances[h] for h in ("h0", "h1", "h2")) >= 0  # no credit
    assert len(executed) == len(set(executed))  # no order executed twice
