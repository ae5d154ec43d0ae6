"""EVM runs resumed (issue 17): a run on ``--ledger evm`` or ``evm+http://`` that dies in
its interval is resumed with ``--resume`` and ends with the same trades and the same ETH
in every account as a run that was never interrupted; the node's accounts' keys are kept
(sealed) in the run's keystore for it.

The embedded chain lives in the process that dies: the resumed run rebuilds it by
replaying the run's recorded transactions at the recorded addresses and requires the
same events. The node outlives the process: the resumed run reconnects to the recorded
contract with the keystore's keys and cancels the interval the dead process had started
on the chain (its orders and clearing), or refuses when the chain settled an interval the
run database never committed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.config.rig import load_rig
from testbed.config.scenario import load_scenario
from testbed.errors import InputError
from testbed.ledger.evm import verify_evm
from testbed.ledger.keys import Keyring
from testbed.ledger.store import Store
from testbed.report.terminal import summarise
from testbed.run.controller import Controller
from testbed.run.runner import Run, run_scenario
from tests.evm_fixtures import evm_node  # noqa: F401  (a fixture)


class Died(RuntimeError):
    """The controller's process dying mid-interval, as far as the run can tell."""


def run(db: Path, ledger: str, *, resume: str | None = None, run_id: str | None = None,
        on_controller: Any = None) -> dict[str, Any]:
    store = Store(db)
    try:
        out = asyncio.run(run_scenario(load_scenario("scenario2"), load_rig("mock"), store,
                                       ledger=ledger, resume=resume, run_id=run_id,
                                       on_controller=on_controller))
        return summarise(out)
    finally:
        store.close()


def die_while_metering(controller: Controller) -> None:
    """The orders are on the chain and cleared, the bench is running: the process dies."""
    async def dead(*args: object, **kw: object) -> Any:
        raise Died("killed while the bench ran the interval")
    controller.run_interval = dead  # type: ignore[method-assign]


def same_as_uninterrupted(resumed: dict[str, Any], reference: dict[str, Any]) -> None:
    assert resumed["resumed_from_interval"] == 0
    assert resumed["validation"]["failed"] == []
    for key in ("clearing_price", "method", "volume_kwh", "community_net_aud"):
        assert resumed[key] == reference[key], key
    ours = {r["account"]: r["after_eth"] for r in resumed["evm"]["balances"]}
    ref = {r["account"]: r["after_eth"] for r in reference["evm"]["balances"]}
    assert ours == ref  # every account's ETH, to the micro-ETH
    assert all(r["equal"] for r in resumed["evm"]["balances"])  # chain = SQLite ledger


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run(tmp_path_factory.mktemp("ref") / "ref.db", "evm")


def test_embedded_run_dies_and_resumes_by_replaying_its_transactions(
        tmp_path: Path, reference: dict[str, Any]) -> None:
    db = tmp_path / "e.db"
    with pytest.raises(Died):
        run(db, "evm", run_id="dies", on_controller=die_while_metering)
    resumed = run(db, "evm", resume="dies")
    same_as_uninterrupted(resumed, reference)
    store = Store(db)
    try:
        assert verify_evm(store, "dies") is None
        assert store.db["trades"].count == 7  # scenario 2's fills, once
    finally:
        store.close()


def test_embedded_resume_refuses_a_damaged_record(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    with pytest.raises(Died):
        run(db, "evm", run_id="damaged", on_controller=die_while_metering)
    store = Store(db)
    with store.transaction():  # a deposit recorded larger than the chain made it
        seq, body = store.db.execute("select seq, body from evm_events where run_id = ? and "
                                     "name = 'Certified'", ["damaged"]).fetchone()
        forged = {**json.loads(body), "account": "0x" + "11" * 20}
        store.db.execute("update evm_events set body = ? where run_id = ? and seq = ?",
                         [json.dumps(forged), "damaged", seq])
    store.close()
    with pytest.raises(InputError, match="recorded events"):
        run(db, "evm", resume="damaged")


@pytest.fixture
def passphrase(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("TESTBED_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TESTBED_KEY_PASSPHRASE", "correct horse")
    yield


def test_node_run_keeps_its_ethereum_keys_sealed_and_resumes_on_the_contract(
        evm_node: str, tmp_path: Path, reference: dict[str, Any],  # noqa: F811
        passphrase: None) -> None:
    ledger = f"evm+{evm_node}"
    db = tmp_path / "n.db"
    with pytest.raises(Died):
        run(db, ledger, run_id="node-dies", on_controller=die_while_metering)
    store = Store(db)
    body = json.loads(store.db.execute("select body from evm where run_id = 'node-dies'"
                                       ).fetchone()[0])
    genesis = store.blocks("node-dies")[0]["hash"]
    store.close()
    ring = Keyring()
    path = ring.run_path("node-dies", genesis)
    sealed = json.loads(path.read_text())["eth_keys"]
    assert set(sealed) == {"kdf", "n", "salt", "nonce", "ciphertext"}  # encrypted
    keys = ring.load_eth_keys("node-dies", genesis)
    from eth_account import Account

    assert {h: Account.from_key(k).address for h, k in keys.items()} == \
        {"operator": body["operator"], **body["accounts"]}
    # the dead process had placed and cleared interval 0 on the node
    resumed = run(db, ledger, resume="node-dies")
    same_as_uninterrupted(resumed, reference)
    store = Store(db)
    try:
        names = [r[0] for r in store.db.execute(
            "select name from evm_events where run_id = 'node-dies' order by seq")]
        assert names.count("Cleared") == 2 and names.count("Cancelled") == 1
        assert names.count("Settled") == 1
        assert verify_evm(store, "node-dies") is None  # the node's own logs, from deployment
    finally:
        store.close()


def test_node_resume_refuses_an_interval_the_chain_settled_but_the_run_never_committed(
        evm_node: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    ledger = f"evm+{evm_node}"
    db = tmp_path / "s.db"

    def died(*args: object, **kw: object) -> None:
        raise Died("killed between the chain's settlement and the commit")
    with monkeypatch.context() as m:
        m.setattr(Run, "_interval_rows", died)
        with pytest.raises(Died):
            run(db, ledger, run_id="settled")
    with pytest.raises(InputError, match="settled interval 0 after run settled's last commit"):
        run(db, ledger, resume="settled")
    with pytest.raises(InputError, match="ran on evm\\+http"):
        run(db, "evm", resume="settled")
