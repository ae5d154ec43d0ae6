"""The runner's order intake through a scripted order source (no broker): late, second,
misplaced and malformed orders, the absent default, and the docs' schemas against the
messages the code sends."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from testbed.agents import acl, check_order, enrol, load_key, reference_order, sign_order
from testbed.config.rig import load_rig
from testbed.config.scenario import load_scenario, scenario_from_dict
from testbed.config.tomlfile import parse, resolve
from testbed.ledger.chain import verify_run
from testbed.ledger.store import Store
from testbed.run.runner import run_scenario
from tests.agent_fixtures import agent_scenario, own_key_folder  # noqa: F401
from tests.fixtures_mqtt import broker, mosquitto_available

DOCS = Path(__file__).resolve().parent.parent / "docs" / "agents.md"


def schemas() -> dict[str, dict[str, Any]]:
    text = DOCS.read_text()
    return {m[1]: json.loads(m[2]) for m in re.finditer(
        r"```json schema=(\w+)\n(.*?)```", text, re.S)}


def examples() -> dict[str, dict[str, Any]]:
    text = DOCS.read_text()
    return {m[1]: json.loads(m[2]) for m in re.finditer(
        r"```json example=(\w+)\n(.*?)```", text, re.S)}



class Scripted:
    """An order source that answers each gate with a script: fn(gate) -> arrivals."""

    def __init__(self, script: Any, late: list[tuple[str, bytes]] | None = None) -> None:
        self.script, self._late = script, late or []
        self.gates: list[dict[str, Any]] = []
        self.sent: dict[str, dict[str, Any]] = {}

    async def collect(self, gate: dict[str, Any], households: list[str],
                      ) -> list[tuple[str, bytes]]:
        self.gates.append(gate)
        return list(self.script(gate))

    def late(self) -> list[tuple[str, bytes]]:
        out, self._late = self._late, []
        return out

    async def results(self, results: Mapping[str, dict[str, Any]]) -> None:
        self.sent.update(results)


def raw(order: dict[str, Any]) -> bytes:
    return json.dumps(order).encode()


def test_docs_examples_and_the_codes_messages_fit_the_documented_schemas(
        tmp_path: Path) -> None:
    sch, ex = schemas(), examples()
    assert set(sch) == set(ex) == {"gate", "order", "result"}
    for name in sch:
        jsonschema_rs.validate(sch[name], ex[name])
    enrol(["1"], tmp_path / "keys")
    key = load_key(tmp_path / "keys/1.key")

    def script(gate: dict[str, Any]) -> list[tuple[str, bytes]]:
        order = reference_order(gate, "1", 0, Fraction("0.2"), None, None)
        assert order is not None
        signed = sign_order(key, order)
        jsonschema_rs.validate(sch["order"], signed)
        return [("1", raw(signed))]

    src = Scripted(script)
    out = asyncio.run(run_scenario(agent_scenario({"1"}), load_rig("mock"),
                                   Store(tmp_path / "s.db"), orders=src, run_id="schema"))
    jsonschema_rs.validate(sch["gate"], src.gates[0])
    jsonschema_rs.validate(sch["result"], src.sent["1"])
    assert src.sent["1"]["order"]["status"] == "accepted" and src.sent["1"]["fills"]
    assert out.status == "finished"
    # a message the schema refuses is refused by the market too (one each way)
    bad = {**sign_order(key, {"type": "order", "run": "schema", "interval": 0,
                              "household": "1", "side": "buy", "energy_kwh": "3.0e0",
                              "price": "0.2", "nonce": 1})}
    assert not jsonschema_rs.is_valid(sch["order"], {**bad, "energy_kwh": 3})
    assert check_order(raw({**bad, "energy_kwh": 3}), "1", "schema", 0)[1] == \
        "malformed: 'energy_kwh' must be a decimal string > 0"


def test_intake_late_second_misplaced_and_absent_default(tmp_path: Path) -> None:
    enrol(["1", "3"], tmp_path / "keys", lab_held=True)
    k1 = load_key(tmp_path / "keys/1.key")
    sc = agent_scenario({"1", "3"}, absent="scenario")

    def order(gate: dict[str, Any], h: str, key: Ed25519PrivateKey, nonce: int,
              energy: str) -> bytes:
        return raw(sign_order(key, {"type": "order", "run": gate["run"], "interval": 0,
                                    "household": h, "side": "buy", "energy_kwh": energy,
                                    "price": "0.2", "nonce": nonce}))

    def script(gate: dict[str, Any]) -> list[tuple[str, bytes]]:
        return [("1", order(gate, "1", k1, 0, "3")),
                ("1", order(gate, "1", k1, 1, "1")),       # a second, different order
                ("2", order(gate, "1", k1, 2, "1")),       # a scenario household's topic
                ("3", order(gate, "1", k1, 3, "1")),       # 1's order on 3's topic
                ("99", b"x")]                               # no such account: dropped
    late = [("1", b'{"late": true}')]
    store = Store(tmp_path / "i.db")
    out = asyncio.run(run_scenario(sc, load_rig("mock"), store, orders=Scripted(script, late),
                                   run_id="intake"))
    assert verify_run(store, "intake") is None
    txs = [json.loads(r["body"]) for r in store.db.query(
        "select body from txs where run_id = 'intake' order by height, seq")]
    refused = [(t["household"], t["reason"]) for t in txs if t["type"] == "refused"]
    assert ("1", "second order: one order per household and interval") in refused
    assert ("2", "not an agent household: its orders come from the scenario") in refused
    assert ("3", "not its household: an order for '1' on '3''s topic") in refused
    assert ("1", "late: came after the gate closed") in refused
    assert ("3", "absent: no valid order by the gate; the scenario's order placed") in refused
    assert all(h != "99" for h, _ in refused)
    # household 3's lab-held key placed the scenario's order: the run equals the scenario's
    today = asyncio.run(run_scenario(load_scenario("scenario2"), load_rig("mock"),
                                     Store(tmp_path / "t.db")))
    assert out.intervals[0].clearing.fills == today.intervals[0].clearing.fills
    assert out.balances == today.balances


def test_a_scenario_with_agents_needs_a_source_and_registered_keys(tmp_path: Path) -> None:
    from testbed.errors import InputError


    with pytest.raises(InputError, match="bid through agents"):
        asyncio.run(run_scenario(agent_scenario({"1"}), load_rig("mock"),
                                 Store(tmp_path / "n.db")))
    with pytest.raises(InputError, match="no agent key is registered for it"):
        asyncio.run(run_scenario(agent_scenario({"4"}), load_rig("mock"),
                                 Store(tmp_path / "n.db"), orders=Scripted(lambda g: [])))
    source, text = resolve("scenarios", "scenario2")
    data = parse(source, text)
    data["households"][0]["orders"] = "firmware"
    with pytest.raises(InputError,
                       match=r"\[households id=1\] key 'orders'.*'scenario', 'agent'"):
        scenario_from_dict(source, data)


@pytest.mark.skipif(not mosquitto_available() or not shutil.which("mosquitto_passwd"),
                    reason="needs mosquitto")
def test_the_generated_acl_stops_an_agent_publishing_for_another(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    for i, user in enumerate(("testbed", "agent-1", "agent-2")):
        subprocess.run(["mosquitto_passwd", "-b", *([] if i else ["-c"]), str(pw), user,
                        "pw"], check=True)
    (tmp_path / "acl").write_text(acl(["1", "2"]))
    extra = ["allow_anonymous false", f"password_file {pw}", f"acl_file {tmp_path / 'acl'}"]
    from tests.fixtures_mqtt import publish, subscribe

    probe = "testbed/r/orders/probe"  # the market may publish anywhere under testbed/
    with broker(tmp_path / "mq", extra) as mq, subscribe(
            mq.port, "testbed/r/orders/+", probe, extra=("-u", "testbed", "-P", "pw")) as sub:
        publish(mq.port, "testbed/r/orders/2", "forged-by-1", "-u", "agent-1", "-P", "pw")
        publish(mq.port, "testbed/r/orders/1", "own", "-u", "agent-1", "-P", "pw")
        assert sub.wait_for(lambda m: m[1] == "testbed/r/orders/1")
        assert [t for _, t, _ in sub.messages() if t != probe] == ["testbed/r/orders/1"]


def test_the_agents_url_picks_the_transport_or_says_what_is_expected() -> None:
    from testbed.agents import HttpOrderSource, MqttOrderSource, order_source
    from testbed.errors import InputError

    assert isinstance(order_source("mqtt://127.0.0.1:1883", "r", 1), MqttOrderSource)
    assert isinstance(order_source("http://127.0.0.1:8089", "r", 1), HttpOrderSource)
    with pytest.raises(InputError, match="expected mqtt://HOST:PORT or http://HOST:PORT"):
        order_source("ftp://127.0.0.1", "r", 1)
    with pytest.raises(InputError, match="expected http://HOST:PORT to listen on"):
        order_source("http://127.0.0.1", "r", 1)
