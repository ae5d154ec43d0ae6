"""Household agents over a real mosquitto on loopback (docs/agents.md): ten reference-agent
processes clear scenario 2 as the scenario does; a killed agent, forged, replayed,
malformed and late orders end recorded in the ledger; an agent written from the docs only."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from contracts.numbers import fmt
from testbed.agents import MqttOrderSource, acl, enrol, gate_topic, order_topic, sign_order
from testbed.config.rig import load_rig
from testbed.config.scenario import load_scenario
from testbed.config.tomlfile import resolve
from testbed.ledger.chain import verify_run
from testbed.ledger.store import Store
from testbed.run.runner import run_scenario
from testbed.run.validation import write_junit
from tests.agent_fixtures import agent_scenario, own_key_folder  # noqa: F401
from tests.fixtures_mqtt import HOST, broker, mosquitto_available

pytestmark = [pytest.mark.skipif(not mosquitto_available(), reason="needs mosquitto"),
              pytest.mark.serial]
ROOT = Path(__file__).resolve().parent.parent



def txs(store: Store, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(r["body"]) for r in store.db.query(
        "select body from txs where run_id = ? order by height, seq", [run_id])]


def spawn_agent(port: int, hid: str, key: Path, price: str, energy: str | None) -> Any:
    cmd = [sys.executable, "-m", "testbed.cli", "agent", "--household", hid, "--broker",
           f"mqtt://{HOST}:{port}", "--key", str(key), "--price", price]
    if energy is not None:
        cmd += ["--energy", energy]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_ten_reference_agents_clear_scenario2_like_the_scenario(tmp_path: Path) -> None:
    base = load_scenario("scenario2")
    rig = load_rig("mock")
    ids = {h.id for h in base.households}
    today = asyncio.run(run_scenario(base, rig, Store(tmp_path / "a.db")))
    keys = enrol(sorted(ids), tmp_path / "keys")
    sc = agent_scenario(ids)
    with broker(tmp_path / "mq") as mq:
        procs = [spawn_agent(mq.port, h.id, tmp_path / "keys" / f"{h.id}.key",
                             fmt(Fraction(h.price or 0)),
                             None if h.offer_kwh is None else fmt(h.offer_kwh))
                 for h in base.households]
        store = Store(tmp_path / "b.db")

        async def main() -> Any:
            async with MqttOrderSource(mq.url, "agents10", gate_s=120) as source:
                return await run_scenario(sc, rig, store, run_id="agents10", orders=source,
                                          gate_s=120)
        out = asyncio.run(main())
        logs = [p.communicate(timeout=60) for p in procs]
    assert len(keys) == 10
    assert all(p.returncode == 0 for p in procs), logs
    first, again = today.intervals[0], out.intervals[0]
    assert again.clearing.price == first.clearing.price
    assert again.clearing.volume == first.clearing.volume
    assert again.clearing.fills == first.clearing.fills
    assert out.balances == today.balances
    assert verify_run(store, "agents10") is None
    junit = tmp_path / "agents.xml"
    write_junit(junit, out.checks, "testbed.scenario2")
    suites = {s.get("name"): s for s in ET.parse(junit).getroot()}
    agent_suites = [n for n in suites if str(n).startswith("agent ")]
    assert sorted(agent_suites) == sorted(f"agent {h}" for h in ids)
    assert all(suites[n].get("failures") == "0" for n in agent_suites)
    for out_text, _ in logs:  # each agent logged what it committed and what it got
        events = [json.loads(line)["event"] for line in out_text.splitlines()]
        assert "committed" in events and "result" in events


async def hostile(url_port: int, run_id: str, key: Any, forger: Any) -> None:
    """Household 3's messages: malformed, forged, another run's, then a valid order twice."""
    async with aiomqtt.Client(HOST, url_port) as c:
        await c.subscribe(gate_topic(run_id), qos=1)
        async for m in c.messages:
            gate = json.loads(bytes(m.payload or b"{}"))
            if gate.get("state") == "open":
                break
        order = {"type": "order", "run": run_id, "interval": 0, "household": "3",
                 "side": "buy", "energy_kwh": "3.5", "price": "0.19", "nonce": 5}
        topic = order_topic(run_id, "3")
        await c.publish(topic, b"{not json", qos=1)
        await c.publish(topic, json.dumps(sign_order(forger, order)), qos=1)
        await c.publish(topic, json.dumps(sign_order(key, {**order, "run": "old"})), qos=1)
        good = json.dumps(sign_order(key, order))
        await c.publish(topic, good, qos=1)
        await c.publish(topic, good, qos=1)  # replayed within the gate


def test_killed_forged_replayed_malformed_and_a_docs_only_agent(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from testbed.agents import load_key

    sc = agent_scenario({"1", "2", "3"})
    enrol(["1", "2", "3"], tmp_path / "keys")
    rig = load_rig("mock")
    run_id = "hostile"
    with broker(tmp_path / "mq") as mq:
        minimal = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/agents/minimal_agent.py"), HOST, str(mq.port),
             "1", str(tmp_path / "keys/1.key"), "0.20"], stdout=subprocess.PIPE, text=True)
        killed = spawn_agent(mq.port, "2", tmp_path / "keys/2.key", "0.19", None)
        killed.kill()  # before the gate: household 2 is absent
        killed.wait()
        store = Store(tmp_path / "h.db")

        async def main() -> Any:
            async with MqttOrderSource(mq.url, run_id, gate_s=8,
                                       close_when_complete=False) as source:
                attack = asyncio.create_task(hostile(
                    mq.port, run_id, load_key(tmp_path / "keys/3.key"),
                    Ed25519PrivateKey.generate()))
                out = await run_scenario(sc, rig, store, run_id=run_id, orders=source,
                                         gate_s=8)
                await attack
                return out
        out = asyncio.run(main())
        result = minimal.communicate(timeout=60)[0]
    assert out.status == "finished"
    assert verify_run(store, run_id) is None
    got = json.loads(result.splitlines()[-1])
    assert got["order"]["status"] == "accepted" and got["fills"], got
    book = txs(store, run_id)
    refused = {(t["household"], t["reason"].split(":")[0]) for t in book
               if t["type"] == "refused"}
    rejected = {(t["order"]["household"], t["reason"].split(":")[0]) for t in book
                if t["type"] == "rejected"}
    assert ("2", "absent") in refused
    assert {("3", "malformed"), ("3", "replayed")} <= refused
    assert {("3", "forged"), ("3", "duplicate")} <= rejected
    orders = [t for t in book if t["type"] == "order"]
    assert {o["household"] for o in orders} >= {"1", "3"}
    assert "2" not in {o["household"] for o in orders}
    checks = {c.suite: c for c in out.checks if c.name.endswith("order by the gate")}
    assert checks["agent 2"].passed is False and checks["agent 1"].passed


async def late_agent(port: int, run_id: str, key: Any, sent: list[bytes]) -> None:
    """Household 1's agent that publishes a valid signed order only once it has seen the
    gate close."""
    async with aiomqtt.Client(HOST, port) as c:
        await c.subscribe(gate_topic(run_id), qos=1)
        async for m in c.messages:
            gate = json.loads(bytes(m.payload or b"{}"))
            if gate.get("state") == "closed":
                break
        raw = json.dumps(sign_order(key, {
            "type": "order", "run": run_id, "interval": 0, "household": "1", "side": "buy",
            "energy_kwh": "3", "price": "0.2", "nonce": 0})).encode()
        await c.publish(order_topic(run_id, "1"), raw, qos=1)
        sent.append(raw)


def test_an_order_after_the_gate_closed_is_refused_as_late(tmp_path: Path) -> None:
    """Over a real mosquitto: household 1's order, valid and signed, arrives after the gate
    closed; it is refused as late with its payload's digest in the ledger, the household
    is absent for the interval, and the run completes and verifies."""
    import hashlib

    from testbed.agents import load_key

    sc = agent_scenario({"1"})
    enrol(["1"], tmp_path / "keys")
    rig = load_rig("mock")
    run_id = "late"
    sent: list[bytes] = []
    with broker(tmp_path / "mq") as mq:
        store = Store(tmp_path / "l.db")

        async def main() -> Any:
            async with MqttOrderSource(mq.url, run_id, gate_s=3,
                                       close_when_complete=False) as source:
                agent = asyncio.create_task(late_agent(
                    mq.port, run_id, load_key(tmp_path / "keys/1.key"), sent))

                def hold_until_the_late_order_came(controller: Any) -> None:
                    run_interval = controller.run_interval

                    async def waits(*args: Any, **kw: Any) -> Any:
                        for _ in range(600):  # generous: a loaded machine
                            if source._late:  # the broker delivered it, gate closed
                                break
                            await asyncio.sleep(0.05)
                        return await run_interval(*args, **kw)
                    controller.run_interval = waits

                out = await run_scenario(sc, rig, store, run_id=run_id, orders=source,
                                         gate_s=3, on_controller=hold_until_the_late_order_came)
                await agent
                return out
        out = asyncio.run(main())
    assert out.status == "finished" and len(sent) == 1
    book = txs(store, run_id)
    late = [t for t in book if t["type"] == "refused" and t["household"] == "1"]
    assert [t["reason"].split(":")[0] for t in late] == ["absent", "late"]
    assert late[1]["reason"] == "late: came after the gate closed"
    assert late[1]["payload_sha256"] == hashlib.sha256(sent[0]).hexdigest()
    assert "1" not in {t["household"] for t in book if t["type"] == "order"}
    checks = {c.suite: c for c in out.checks if c.name.endswith("order by the gate")}
    assert checks["agent 1"].passed is False
    assert verify_run(store, run_id) is None


def test_acl_lets_each_agent_publish_only_its_own_order_topic() -> None:
    text = acl(["1", "2"])
    assert "user agent-1\ntopic write testbed/+/orders/1\n" in text
    assert "topic write testbed/+/orders/2" not in text.split("user agent-2")[0].split(
        "user agent-1")[1]


def test_the_command_line_runs_a_scenario_with_an_agent(tmp_path: Path) -> None:
    _, text = resolve("scenarios", "scenario2")
    needle = '{ id = "1",  net_kwh = -3.0, price = 0.20 }'
    assert needle in text
    scenario = tmp_path / "agents.toml"
    scenario.write_text(text.replace(needle, needle[:-2] + ', orders = "agent" }'))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "testbed.cli"]
    keys = subprocess.run([*cli, "agents", "keys", "mock", str(tmp_path / "keys")], env=env,
                          capture_output=True, text=True, cwd=ROOT, check=True)
    assert len(keys.stdout.split()) == 10
    with broker(tmp_path / "mq") as mq:
        agent = spawn_agent(mq.port, "1", tmp_path / "keys/1.key", "0.2", None)
        run = subprocess.run([*cli, "run", str(scenario), "--db", str(tmp_path / "r.db"),
                              "--agents", mq.url, "--mqtt", mq.url, "--gate-s", "60",
                              "--json",
                              "--junit", str(tmp_path / "j.xml")],
                             env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
        log = agent.communicate(timeout=60)[0]
    assert run.returncode == 0, run.stderr
    suites = {s.get("name"): s for s in ET.parse(tmp_path / "j.xml").getroot()}
    assert suites["agent 1"].get("failures") == "0" and int(suites["agent 1"].get("tests")) > 1
    result = [json.loads(line) for line in log.splitlines() if '"event": "result"' in line]
    assert len(result) == 1 and isinstance(result[0]["readings_seen"], int)
    bad = subprocess.run([*cli, "run", str(scenario), "--db", str(tmp_path / "r.db")],
                         env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "--agents mqtt://HOST:PORT" in bad.stderr
    assert "Traceback" not in bad.stderr


def http_agent(port: int, key: Any, out: dict[str, Any]) -> None:
    """Household 1's agent over HTTP with urllib only: poll the gate, post, poll the result."""
    import time
    import urllib.error
    import urllib.request

    base = f"http://{HOST}:{port}"

    def get(path: str) -> Any:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError):  # not listening yet, or a 404
            return None

    deadline = time.monotonic() + 60
    while (gate := get("/gate")) is None or gate["state"] != "open":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    big = urllib.request.Request(base + "/orders/1", data=b"x" * 5000, method="POST")
    try:
        urllib.request.urlopen(big, timeout=5)
    except urllib.error.HTTPError as e:
        out["too_large"] = e.code
    order = sign_order(key, {"type": "order", "run": gate["run"], "interval": 0,
                             "household": "1", "side": "buy", "energy_kwh": "3",
                             "price": "0.2", "nonce": 0})
    req = urllib.request.Request(base + "/orders/1", data=json.dumps(order).encode(),
                                 method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        out["posted"] = r.status
    while (result := get("/results/1")) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    out["result"] = result


def test_an_agent_without_mqtt_bids_over_http(tmp_path: Path) -> None:
    import threading

    from testbed.agents import HttpOrderSource, load_key
    from tests.fixtures_mqtt import free_port

    enrol(["1"], tmp_path / "keys")
    port, out = free_port(), {}
    agent = threading.Thread(target=http_agent, daemon=True,
                             args=(port, load_key(tmp_path / "keys/1.key"), out))
    agent.start()
    store = Store(tmp_path / "h.db")

    async def main() -> Any:
        async with HttpOrderSource(f"http://{HOST}:{port}", "http", gate_s=60) as source:
            run = await run_scenario(agent_scenario({"1"}), load_rig("mock"), store,
                                     run_id="http", orders=source, gate_s=60)
            await asyncio.to_thread(agent.join, 30)  # the result is served until we leave
            return run
    run = asyncio.run(main())
    assert out["too_large"] == 413 and out["posted"] == 202
    assert out["result"]["order"]["status"] == "accepted" and out["result"]["fills"]
    assert run.status == "finished" and verify_run(store, "http") is None
