"""Agents on the EVM ledger (issues 17 and 18): each household's HEMS holds its own
Ethereum key, the operator certifies its registered address, and its order reaches the
contract as its own signed transaction (``eth_tx``, docs/agents.md) over a real mosquitto
on loopback. Scenario 2 so bid clears and settles as the scenario does on the chain."""

from __future__ import annotations

import asyncio
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from contracts.numbers import fmt
from testbed.agents import (
    MqttOrderSource,
    enrol,
    enrol_eth,
    load_eth_key,
    load_key,
    reference_agent,
    registered_addresses,
)
from testbed.config.rig import load_rig
from testbed.config.scenario import load_scenario
from testbed.ledger.chain import verify_run
from testbed.ledger.evm import verify_evm
from testbed.ledger.store import Store
from testbed.run.runner import run_scenario
from tests.agent_fixtures import agent_scenario, own_key_folder  # noqa: F401
from tests.fixtures_mqtt import broker, mosquitto_available

pytestmark = [pytest.mark.skipif(not mosquitto_available(), reason="needs mosquitto"),
              pytest.mark.serial]


def txs(store: Store, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(r["body"]) for r in store.db.query(
        "select body from txs where run_id = ? order by height, seq", [run_id])]


def test_ten_agents_sign_their_orders_as_ethereum_transactions(tmp_path: Path) -> None:
    base = load_scenario("scenario2")
    rig = load_rig("mock")
    ids = sorted(h.id for h in base.households)
    today = asyncio.run(run_scenario(base, rig, Store(tmp_path / "a.db"), ledger="evm"))
    enrol(ids, tmp_path / "keys")
    enrol_eth(ids, tmp_path / "keys")
    addresses = registered_addresses(ids)
    assert len(addresses) == 10
    keys = {h: (load_key(tmp_path / "keys" / f"{h}.key"),
                load_eth_key(tmp_path / "keys" / f"{h}.eth.key")) for h in ids}
    store = Store(tmp_path / "b.db")
    with broker(tmp_path / "mq") as mq:
        async def main() -> Any:
            agents = [asyncio.create_task(reference_agent(
                h.id, mq.url, keys[h.id][0], eth_key=keys[h.id][1],
                price=Fraction(h.price or 0),
                energy=None if h.offer_kwh is None else h.offer_kwh))
                for h in base.households]
            async with MqttOrderSource(mq.url, "eth10", gate_s=120) as source:
                out = await run_scenario(agent_scenario(set(ids)), rig, store,
                                         run_id="eth10", orders=source, gate_s=120,
                                         ledger="evm")
                gate = source.gate
            results = await asyncio.wait_for(asyncio.gather(*agents), 120)
            return out, results, gate
        out, results, gate = asyncio.run(main())
    assert out.status == "finished"
    assert [c for c in out.checks if not c.passed] == []
    first, again = today.intervals[0], out.intervals[0]
    assert (again.clearing.price, again.clearing.volume, again.clearing.fills) == \
        (first.clearing.price, first.clearing.volume, first.clearing.fills)
    assert fmt(again.clearing.price or 0) == "0.16"
    assert out.extra["evm"]["after_micro"] == today.extra["evm"]["after_micro"]
    # the households' accounts are the HEMS's own, and every order came as its transaction
    assert {h: a.lower() for h, a in out.extra["evm"]["accounts"].items()} == \
        {h: a.lower() for h, a in addresses.items()}
    orders = [t for t in txs(store, "eth10") if t["type"] == "order"]
    assert len(orders) == 10 and all(t["eth_tx"].startswith("0x") for t in orders)
    # the gate with its evm object and the orders with eth_tx fit docs/agents.md's schemas
    import jsonschema_rs

    from tests.test_agent_intake import schemas

    sch = schemas()
    assert gate is not None and set(gate["evm"]["accounts"]) == set(ids)
    jsonschema_rs.validate(sch["gate"], gate)
    for t in orders:
        jsonschema_rs.validate(sch["order"], {k: v for k, v in t.items()})
    assert all(len(r) == 1 and r[0]["interval"] == 0 for r in results)
    assert verify_run(store, "eth10") is None
    assert verify_evm(store, "eth10") is None


class Died(RuntimeError):
    """The controller's process dying while the bench runs the interval."""


def die_while_metering(controller: Any) -> None:
    async def dead(*args: object, **kw: object) -> Any:
        raise Died("killed while the bench ran the interval")
    controller.run_interval = dead


@pytest.mark.parametrize("ledger", ["sqlite", "evm"])
def test_a_run_with_agents_dies_and_resumes(ledger: str, tmp_path: Path) -> None:
    """Households 1-3 bid through reference agents (on the EVM with their own Ethereum
    keys). The run dies after their orders were taken; the agents keep running; the
    resumed run opens the interval's gate again, they bid again, and it ends as a run
    that never died: same fills, same balances (SQLite ledger and contract), ledger and
    chain verifying."""
    base = load_scenario("scenario2")
    rig = load_rig("mock")
    agents = ["1", "2", "3"]
    reference = asyncio.run(run_scenario(base, rig, Store(tmp_path / "ref.db"),
                                         ledger=ledger))
    enrol(agents, tmp_path / "keys")
    if ledger == "evm":
        enrol_eth(agents, tmp_path / "keys")
    store = Store(tmp_path / "r.db")
    sc = agent_scenario(set(agents))
    with broker(tmp_path / "mq") as mq:
        async def main() -> Any:
            tasks = [asyncio.create_task(reference_agent(
                h.id, mq.url, load_key(tmp_path / "keys" / f"{h.id}.key"),
                eth_key=(load_eth_key(tmp_path / "keys" / f"{h.id}.eth.key")
                         if ledger == "evm" else None),
                price=Fraction(h.price or 0),
                energy=None if h.offer_kwh is None else h.offer_kwh))
                for h in base.households if h.id in agents]
            async with MqttOrderSource(mq.url, "again", gate_s=120) as source:
                with pytest.raises(Died):
                    await run_scenario(sc, rig, store, run_id="again", orders=source,
                                       gate_s=120, ledger=ledger,
                                       on_controller=die_while_metering)
            async with MqttOrderSource(mq.url, "again", gate_s=120) as source:
                out = await run_scenario(sc, rig, store, resume="again", orders=source,
                                         gate_s=120, ledger=ledger)
            await asyncio.wait_for(asyncio.gather(*tasks), 120)
            return out
        out = asyncio.run(main())
    assert out.status == "finished" and out.resumed_from == 0
    assert [c for c in out.checks if not c.passed] == []
    assert out.intervals[0].clearing.fills == reference.intervals[0].clearing.fills
    assert out.balances == reference.balances
    if ledger == "evm":
        assert out.extra["evm"]["after_micro"] == reference.extra["evm"]["after_micro"]
        assert verify_evm(store, "again") is None
    orders = [t for t in txs(store, "again") if t["type"] == "order"]
    assert sorted(t["household"] for t in orders) == sorted(h.id for h in base.households)
    assert verify_run(store, "again") is None
