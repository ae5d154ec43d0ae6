"""Keys apart from the ledger: the trust anchor and the keystore live outside the run database.

Each forgery below is made by someone who can write the database but not the operator's key
folder. The forger's tool is shown to be complete: the same rewrite signed with the true
operator key (what the database used to hold) verifies, so only the anchor kept outside
catches it.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from contracts import ledger as rules
from testbed.cli.app import app
from testbed.errors import InputError
from testbed.ledger.chain import OPERATOR, Ledger, verify_run
from testbed.ledger.keys import Keyring, home, public_hex
from testbed.ledger.store import Store

runner = CliRunner()
Edit = Callable[[list[list[dict[str, Any]]], Ed25519PrivateKey], None]


@pytest.fixture(scope="module")
def run_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("keys") / "run.db"
    result = runner.invoke(app, ["run", "scenario2", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    return db


def _copy(run_db: Path, tmp_path: Path) -> Path:
    out = tmp_path / "forged.db"
    src = sqlite3.connect(run_db)
    dst = sqlite3.connect(out)
    src.backup(dst)
    src.close()
    dst.close()
    return out


def rechain(db: Path, key: Ed25519PrivateKey, edit: Edit) -> None:
    """Rewrite a run's chain as a forger would: apply ``edit`` to the blocks' transactions,
    then recompute every Merkle root, hash, link and balance,
    sign every block with ``key`` and rewrite the keys, balances and head rows to match."""
    conn = sqlite3.connect(db)
    (run_id,) = conn.execute("select id from runs").fetchone()
    store = Store(db)
    blocks = store.blocks(run_id)
    store.close()
    txs = [list(b["txs"]) for b in blocks]
    edit(txs, key)
    conn.execute("delete from blocks where run_id = ?", [run_id])
    conn.execute("delete from txs where run_id = ?", [run_id])
    prev, state = rules.GENESIS_PREV, rules.LedgerState()
    for b, body in zip(blocks, txs, strict=True):
        rules.apply_block(state, body)
        root = rules.merkle_root([rules.tx_hash(t) for t in body])
        head = rules.header(b["height"], prev, b["interval"], root)
        digest = rules.block_hash(head)
        conn.execute("insert into blocks values (?, ?, ?, ?, ?, ?, ?)",
                     [run_id, b["height"], b["interval"], prev, root, digest,
                      rules.sign(key, bytes.fromhex(digest))])
        conn.executemany("insert into txs values (?, ?, ?, ?)",
                         [(run_id, b["height"], i, rules.canonical(t).decode())
                          for i, t in enumerate(body)])
        prev = digest
    conn.execute("delete from balances where run_id = ?", [run_id])
    conn.executemany("insert into balances values (?, ?, ?)",
                     [(run_id, a, m) for a, m in state.balances.items()])
    conn.execute("delete from keys where run_id = ?", [run_id])
    conn.executemany("insert into keys values (?, ?, ?)",
                     [(run_id, a, k) for a, k in {**state.keys, OPERATOR: state.operator}.items()])
    conn.execute("update runs set ledger_height = ?, ledger_head = ?", [len(blocks), prev])
    conn.commit()
    conn.close()


def zero_a_payment(txs: list[list[dict[str, Any]]], key: Ed25519PrivateKey) -> None:
    paid = [t for t in txs[1] if t["type"] == "transfer" and t["amount"]]
    paid[0]["amount"] = 0


def rewrite_a_fill(txs: list[list[dict[str, Any]]], key: Ed25519PrivateKey) -> None:
    fill = next(t for t in txs[1] if t["type"] == "fill")
    fill["energy_kwh"] = "0.1"


def new_operator_mints(txs: list[list[dict[str, Any]]], key: Ed25519PrivateKey) -> None:
    pub = public_hex(key)
    for t in txs[0]:
        if t["type"] == "operator":
            t["public_key"] = pub
        elif t["type"] == "certificate":
            t["signature"] = rules.sign(key, rules.certificate_message(t["account"],
                                                                       t["public_key"]))
        elif t["type"] == "deposit":
            t["amount"] += 1_000_000_000  # minted


def cut_last_block(db: Path) -> None:
    """Delete the last block and its transactions, and the interval rows it sealed; no
    signature is needed: the rows, the balances and the run's head are set back to the
    block before (the interval's readings stay, as a cut-short interval's would)."""
    conn = sqlite3.connect(db)
    (run_id,) = conn.execute("select id from runs").fetchone()
    (last, interval) = conn.execute("select height, interval from blocks order by height "
                                    "desc limit 1").fetchone()
    conn.execute("delete from intervals where idx = ?", [interval])
    for table in ("trades", "results"):
        conn.execute(f"delete from {table} where interval = ?", [interval])
    conn.execute("delete from blocks where height = ?", [last])
    conn.execute("delete from txs where height = ?", [last])
    conn.commit()
    store = Store(db)
    blocks = store.blocks(run_id)
    store.close()
    conn.execute("delete from balances")
    conn.executemany("insert into balances values (?, ?, ?)",
                     [(run_id, a, m) for a, m in rules.balances_from(blocks).items()])
    conn.execute("update runs set ledger_height = ?, ledger_head = ?",
                 [len(blocks), blocks[-1]["hash"]])
    conn.commit()
    conn.close()


FORGERIES: dict[str, tuple[Edit, int, str]] = {
    "payment zeroed": (zero_a_payment, 0, "operator signature is invalid"),
    "fill rewritten": (rewrite_a_fill, 0, "operator signature is invalid"),
    "new operator key, minted money": (new_operator_mints, 0, "genesis names operator key"),
    "last block cut": (lambda txs, key: None, 1,
                       "block 1 is missing: the operator sealed 2 blocks"),
}


def _operator_key() -> Ed25519PrivateKey:
    return Keyring().operator()


def _verdict(db: Path, anchor: str | None = None,
             keyring: Keyring | None = None) -> rules.ChainError | None:
    store = Store(db)
    try:
        (run_id,) = store.db.execute("select id from runs").fetchone()
        return verify_run(store, run_id, anchor, keyring)
    finally:
        store.close()


def _auditor(tmp_path: Path) -> Keyring:
    """An auditor's folder: operator.pub alone, no record of any run's head."""
    bare = tmp_path / "auditor"
    bare.mkdir(exist_ok=True)
    (bare / "operator.pub").write_text(public_hex(_operator_key()) + "\n")
    return Keyring(bare)


@pytest.mark.parametrize("name", list(FORGERIES))
def test_forgeries_fail_verify_with_the_anchor_kept_outside(name: str, run_db: Path,
                                                            tmp_path: Path) -> None:
    edit, cut, reason = FORGERIES[name]
    db = _copy(run_db, tmp_path)
    assert _verdict(db) is None and _verdict(db, keyring=_auditor(tmp_path)) is None
    forger = Ed25519PrivateKey.generate()
    if cut:
        cut_last_block(db)
    else:
        rechain(db, forger, edit)
    err = _verdict(db)  # the operator's folder: anchor and recorded head
    assert err is not None and err.height in (0, 1), err
    if cut:
        assert reason in err.reason, err
    else:  # the anchor alone catches it
        alone = _verdict(db, keyring=_auditor(tmp_path))
        assert alone is not None and reason in alone.reason, alone
    cli = runner.invoke(app, ["ledger", "verify", str(db)])
    assert cli.exit_code == 1 and "BAD" in cli.output, cli.output
    # the forger's tool is complete: only what is kept outside the file tells it apart
    if name.startswith("new operator"):  # consistent under the forger's own anchor
        assert _verdict(db, public_hex(forger), _auditor(tmp_path)) is None
    elif cut:  # without the operator's record of the head the shorter chain is consistent
        assert _verdict(db, keyring=_auditor(tmp_path)) is None
    else:  # signed with the operator's key (which the database used to hold) it passes
        (tmp_path / "again").mkdir()
        again = _copy(run_db, tmp_path / "again")
        rechain(again, _operator_key(), edit)
        assert _verdict(again, keyring=_auditor(tmp_path)) is None


def test_verify_refuses_a_database_whose_genesis_names_another_operator(
        run_db: Path, tmp_path: Path) -> None:
    other = public_hex(Ed25519PrivateKey.generate())
    out = runner.invoke(app, ["ledger", "verify", str(run_db), "--operator-key", other])
    assert out.exit_code == 1 and "genesis names operator key" in out.output
    pub = tmp_path / "op.pub"
    pub.write_text(public_hex(_operator_key()) + "\n")
    ok = runner.invoke(app, ["ledger", "verify", str(run_db), "--operator-key", str(pub)])
    assert ok.exit_code == 0, ok.output
    missing = runner.invoke(app, ["ledger", "verify", str(run_db), "--operator-key",
                                  str(tmp_path / "nope.pub")])
    assert missing.exit_code == 2 and "nope.pub" in missing.output


def test_no_private_key_in_the_run_database_and_the_keystore_is_private(run_db: Path) -> None:
    conn = sqlite3.connect(run_db)
    tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    assert "keystore" not in tables
    (run_id,) = conn.execute("select id from runs").fetchone()
    (genesis,) = conn.execute("select hash from blocks where height = 0").fetchone()
    conn.close()
    ring = Keyring()
    record = ring.load_run(run_id, genesis)
    secrets = [k.private_bytes_raw().hex() for k in record.keys.values()]
    secrets.append(ring.operator().private_bytes_raw().hex())
    raw = run_db.read_bytes().hex()
    for wal in run_db.parent.glob(run_db.name + "-*"):
        raw += wal.read_bytes().hex()
    assert len(secrets) == 11 and not any(s in raw for s in secrets)
    for path in (home() / "operator.key", ring.run_path(run_id, genesis)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_passphrase_encrypts_the_keystore_and_a_loose_key_file_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "home"
    ring = Keyring(folder, b"correct horse")
    store = Store(tmp_path / "r.db")
    store.insert("runs", {"id": "r1", "scenario": "t", "status": "running"})
    with store.transaction():
        led = Ledger.create(store, "r1", ["a"], {"a": 5}, keyring=ring)
    secret = led.keys["a"].private_bytes_raw().hex()
    path = ring.run_path("r1", led.genesis)
    assert secret not in path.read_text()
    assert b"ENCRYPTED" in (folder / "operator.key").read_bytes()
    with pytest.raises(InputError, match="wrong passphrase"):
        Keyring(folder, b"wrong").load_run("r1", led.genesis)
    with pytest.raises(InputError, match="is encrypted"):
        Keyring(folder, None).operator()
    again = Ledger.load(store, "r1", Keyring(folder, b"correct horse"))
    assert again.keys["a"].private_bytes_raw().hex() == secret
    os.chmod(path, 0o644)
    with pytest.raises(InputError, match="must be mode 0600"):
        Keyring(folder, b"correct horse").load_run("r1", led.genesis)
    store.close()


def test_a_fresh_machine_runs_scenario2_and_verifies_with_no_configuration(
        tmp_path: Path) -> None:
    """No TESTBED_HOME, no XDG_CONFIG_HOME, an empty home: the first run creates the
    operator's key folder in ~/.config/testbed, and verify finds the anchor there."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("TESTBED_HOME", "XDG_CONFIG_HOME", "TESTBED_KEY_PASSPHRASE")}
    env["HOME"] = str(tmp_path / "home")
    main = "from testbed.cli.app import main; main()"
    ran = subprocess.run([sys.executable, "-c", main, "run", "scenario2", "--json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    folder = tmp_path / "home" / ".config" / "testbed"
    assert stat.S_IMODE((folder / "operator.key").stat().st_mode) == 0o600
    assert len(list((folder / "runs").glob("*.json"))) == 1
    verified = subprocess.run([sys.executable, "-c", main, "ledger", "verify", "testbed.db"],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
    assert verified.returncode == 0 and "ok" in verified.stdout, verified.stderr


def test_ethereum_keys_join_the_run_keystore_and_survive_later_heads(tmp_path: Path) -> None:
    """Keyring.save_eth_keys seals a node run's Ethereum keys into the run's keystore; a
    later head (record_head) keeps them; a damaged entry is one clear error."""
    import json

    ring = Keyring(tmp_path / "home", None)
    key = Ed25519PrivateKey.generate()
    ring.save_run("r", "ab" * 32, {"1": key}, 1, "ab" * 32)
    eth = {"operator": "0x" + "11" * 32, "1": "0x" + "22" * 32}
    ring.save_eth_keys("r", "ab" * 32, eth)
    Keyring(tmp_path / "home", None).record_head("r", "ab" * 32, 2, "cd" * 32)
    again = Keyring(tmp_path / "home", None)
    assert again.load_eth_keys("r", "ab" * 32) == eth
    assert again.head("r", "ab" * 32) == (2, "cd" * 32)
    assert public_hex(again.load_run("r", "ab" * 32).keys["1"]) == public_hex(key)
    path = ring.run_path("r", "ab" * 32)
    body = json.loads(path.read_text())
    body["eth_keys"] = {"plain": json.dumps({"1": "not a key"})}
    path.write_text(json.dumps(body))
    with pytest.raises(InputError, match="its Ethereum keys do not parse"):
        again.load_eth_keys("r", "ab" * 32)
    with pytest.raises(InputError, match="no keystore for this run"):
        ring.save_eth_keys("other", "ab" * 32, eth)


def test_agents_register_ethereum_addresses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            ) -> None:
    from testbed.agents import load_eth_key, registered_addresses

    monkeypatch.setenv("TESTBED_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    out = runner.invoke(app, ["agents", "keys", "mock", str(tmp_path / "k"), "--eth"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "k" / "3.eth.key").is_file()
    assert stat.S_IMODE((tmp_path / "k" / "3.eth.key").stat().st_mode) == 0o600
    from eth_account import Account

    addresses = registered_addresses([str(i) for i in range(1, 11)])
    assert Account.from_key(load_eth_key(tmp_path / "k" / "3.eth.key")).address == \
        addresses["3"]
    own = "0x" + "ab" * 20
    assert runner.invoke(app, ["agents", "address", "4", own]).exit_code == 0
    assert registered_addresses(["4"]) == {"4": own}
    bad = runner.invoke(app, ["agents", "address", "4", "0x12"])
    assert bad.exit_code == 2 and "is not an Ethereum address" in bad.output
    assert "Traceback" not in bad.output



def test_a_run_that_saw_no_operator_key_signs_with_the_one_another_run_created_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race of two runs started together on a new machine, made deterministic: run A
    finds no operator key, run B creates one before A writes its own. A must sign with B's
    key, the anchor on disk; writing A's key over it (the last writer wins) once left a
    run's genesis signed by a key the anchor disowned (a fault-matrix run failed verify)."""
    folder = tmp_path / "home"
    b = Keyring(folder, passphrase=None)
    real_exists = Path.exists
    looked: list[Path] = []

    def absent_then_b_creates(path: Path) -> bool:
        if path.name == "operator.key" and not looked:
            looked.append(path)
            assert not real_exists(path)
            b.operator()  # B wins between A's look and A's write
            return False
        return real_exists(path)

    monkeypatch.setattr(Path, "exists", absent_then_b_creates)
    signed_by_a = public_hex(Keyring(folder, passphrase=None).operator())
    monkeypatch.undo()
    anchor = (folder / "operator.pub").read_text().strip()
    assert signed_by_a == public_hex(b.operator()) == anchor


def _first_operator_key(directory: str) -> str:
    """In its own process: the operator key a run starting now would sign with."""
    return public_hex(Keyring(Path(directory), passphrase=None).operator())


def test_runs_starting_at_once_on_a_fresh_machine_sign_with_one_operator_key(
        tmp_path: Path) -> None:
    """Eight processes ask for the operator's key of an empty folder at the same moment (two
    runs started together on a new machine): one key is created, every process signs with
    it, and it is the anchor on disk. Creating it non-exclusively (the last writer wins)
    once let a run seal its genesis with a key the anchor then disowned."""
    import multiprocessing

    folder = tmp_path / "home"
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        signed = pool.map(_first_operator_key, [str(folder)] * 8)
    anchor = (folder / "operator.pub").read_text().strip()
    assert set(signed) == {anchor}
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []
