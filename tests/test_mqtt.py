"""MQTT telemetry against a real mosquitto, watched with the real mosquitto clients.

``testbed run scenario2 --mqtt ...`` must put every reading, the clearing, each trade and
the ledger block on the broker, leave its status retained, leave ``offline`` as its will if
the process dies, and stop (safely) when someone presses the MQTT emergency stop.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from testbed.config.rig import load_rig
from testbed.config.scenario import load_scenario
from testbed.ledger.keys import Keyring, status_is_signed
from testbed.ledger.store import Store
from testbed.run.controller import EmergencyStop
from testbed.run.runner import run_scenario
from testbed.telemetry import (
    MqttTelemetry,
    StopSwitch,
    TelemetryError,
    parse_broker_url,
    topic_part,
)
from tests.fixtures_mqtt import (
    broker,
    make_tls_files,
    mosquitto_available,
    publish,
    retained,
    subscribe,
)

pytestmark = pytest.mark.skipif(not mosquitto_available(),
                                reason="mosquitto not installed (scripts/test.sh installs it)")
ROOT = Path(__file__).resolve().parent.parent


def _rid() -> str:
    return "t" + uuid.uuid4().hex[:11]


def _payloads(msgs: list[tuple[bool, str, str]], topic: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(p) for _, t, p in msgs if t == topic]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "testbed.cli", *args]


def test_cli_run_scenario2_publishes_readings_clearing_trades_block_and_status(
        tmp_path: Path) -> None:
    """The issue's acceptance check: ``mosquitto_sub -t 'testbed/#'`` during ``testbed run
    scenario2 --mqtt ...`` sees every reading, the clearing, every trade and the block."""
    db = tmp_path / "run.db"
    with broker(tmp_path / "broker") as b, \
            subscribe(b.port, "testbed/#", probe="testbed/_probe") as sub:
        r = subprocess.run(_cli("run", "scenario2", "--mqtt", b.url, "--db", str(db), "--json"),
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        rid = json.loads(r.stdout)["run_id"]
        base = f"testbed/{rid}"
        assert sub.wait_for(lambda m: m[1] == f"{base}/status" and "finished" in m[2])
        msgs = sub.messages()
        store = Store(db)
        try:
            # Every reading of every household, as many as the run wrote to its database.
            per_house = Counter(t.rsplit("/", 1)[1] for _, t, _ in msgs
                                if t.startswith(f"{base}/readings/"))
            in_db = {r["household"]: r["n"] for r in store.db.query(
                "select household, count(*) n from readings where run_id = ? "
                "group by household", [rid])}
            assert per_house == in_db and len(in_db) == 10 and min(in_db.values()) > 100
            reading = _payloads(msgs, f"{base}/readings/7")[-1]
            assert reading["run"] == rid and {"power_w", "pv_w", "load_w", "battery_w",
                                              "soc", "meter_net_wh", "t"} <= set(reading)

            (clearing,) = _payloads(msgs, f"{base}/clearing")
            assert clearing["price"] == 0.16 and clearing["method"] == 2
            assert clearing["volume_kwh"] == pytest.approx(12.7)

            (book,) = _payloads(msgs, f"{base}/orderbook")
            assert len(book["orders"]) == 10 and all(o["signature"] for o in book["orders"])

            trades = _payloads(msgs, f"{base}/trade")
            db_trades = list(store.db.query("select seq, seller, buyer, energy_kwh from "
                                            "trades where run_id = ? order by seq", [rid]))
            assert len(trades) == len(db_trades) == 7
            assert [(t["seq"], t["seller"], t["buyer"], t["energy_kwh"]) for t in trades] == \
                [(t["seq"], t["seller"], t["buyer"], float(Fraction(t["energy_kwh"])))
                 for t in db_trades]

            (block,) = _payloads(msgs, f"{base}/block")
            assert block["hash"] == store.blocks(rid)[-1]["hash"] and block["interval"] == 0
        finally:
            store.close()

        statuses = [p["status"] for p in _payloads(msgs, f"{base}/status")]
        assert statuses[0] == "running" and statuses[-1] == "finished"
        assert any(p["event"] == "safe_state" for p in _payloads(msgs, f"{base}/safety"))

        # A subscriber arriving after the run still learns how it ended: retained status.
        got = retained(b.port, f"{base}/status")
        assert got is not None and got[0] is True
        final = json.loads(got[1])
        assert status_is_signed(Keyring().anchor(), f"{base}/status", final)  # operator's
        assert {k: v for k, v in final.items() if k != "signature"} == {
            "run": rid, "status": "finished"}


def test_cli_tls_credentials_and_mqtt_estop(tmp_path: Path) -> None:
    """``--mqtt mqtts://... --mqtt-user --mqtt-ca`` with the password from the environment;
    an emergency stop published from the shell ends the run safely, exit code 3."""
    work = tmp_path / "broker"
    work.mkdir()
    tls = make_tls_files(work)
    passwd = work / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "lab", "s3cret"], check=True)
    extra = [f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}",
             f"password_file {passwd}", "allow_anonymous false"]
    auth = ("--cafile", str(tls.ca), "-u", "lab", "-P", "s3cret")
    db = tmp_path / "run.db"
    with broker(work, extra, tls=True) as b, \
            subscribe(b.port, "testbed/#", "testbed/_probe", auth) as sub:
        env = {**os.environ, "TESTBED_MQTT_PASSWORD": "s3cret"}
        # A day in a minute, in real time: long enough to be stopped mid-run.
        proc = subprocess.Popen(_cli("run", "scenario2", "--speed", "1440", "--db", str(db),
                                     "--mqtt", f"mqtts://127.0.0.1:{b.port}", "--mqtt-user",
                                     "lab", "--mqtt-ca", str(tls.ca)),
                                cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert sub.wait_for(lambda m: m[1].endswith("/status") and "running" in m[2]), \
                proc.communicate(timeout=30)
            status = next(m for m in sub.messages() if m[1].endswith("/status"))
            rid = json.loads(status[2])["run"]
            publish(b.port, f"testbed/{rid}/estop", "from the shell", *auth)
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 3, stderr
        assert "emergency stop (MQTT testbed/" in stderr and "from the shell" in stderr
        got = retained(b.port, f"testbed/{rid}/status", *auth)
        assert got is not None and json.loads(got[1])["status"] == "aborted"
    store = Store(db)
    try:
        assert store.run(rid)["status"] == "aborted"
    finally:
        store.close()


def test_cli_bad_or_unreachable_broker_fails_before_the_run(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from testbed.cli.app import app
    from tests.fixtures_mqtt import free_port

    db = tmp_path / "run.db"
    r = CliRunner().invoke(app, ["run", "scenario2", "--db", str(db), "--mqtt",
                                 "http://127.0.0.1:1"])
    assert r.exit_code == 2 and "--mqtt: expected mqtt://host[:port]" in r.output
    port = free_port()
    r = CliRunner().invoke(app, ["run", "scenario2", "--db", str(db), "--mqtt",
                                 f"mqtt://127.0.0.1:{port}"])
    assert r.exit_code == 2
    assert f"--mqtt: MQTT broker 127.0.0.1:{port}" in " ".join(r.output.split())
    store = Store(db)
    try:
        assert store.runs() == []  # the bench was never touched
    finally:
        store.close()


async def test_mqtt_estop_stops_the_run_and_leaves_it_safe(tmp_path: Path) -> None:
    rid = _rid()
    base = f"testbed/{rid}"
    store = Store(tmp_path / "run.db")
    switch = StopSwitch()
    pressed: list[asyncio.Task[None]] = []

    with broker(tmp_path / "broker") as b, \
            subscribe(b.port, f"{base}/#", probe=f"{base}/_probe") as sub:
        async with MqttTelemetry(b.url, run_id=rid, on_estop=switch.trip) as tm:
            def press_on_first_reading(topic: str, payload: dict) -> None:  # type: ignore[type-arg]
                if topic == "readings" and not pressed:
                    pressed.append(asyncio.ensure_future(asyncio.to_thread(
                        publish, b.port, f"{base}/estop", "red button")))

            with pytest.raises(EmergencyStop, match="red button"):
                await run_scenario(load_scenario("scenario2"), load_rig("mock"), store,
                                   run_id=rid, observers=[tm.observer, press_on_first_reading],
                                   on_controller=switch.attach)
            await pressed[0]
        assert tm.estops == [f"MQTT {base}/estop: red button"]
        assert store.run(rid)["status"] == "aborted"
        n = store.db.execute("select count(*) from readings where run_id = ?", [rid]).fetchone()
        assert n[0] < 14400  # stopped well before the end of the day

        assert sub.wait_for(lambda m: m[1] == f"{base}/status" and "aborted" in m[2])
        events = [p["event"] for p in _payloads(sub.messages(), f"{base}/safety")]
        assert "estop_requested" in events and "safe_state" in events
        got = retained(b.port, f"{base}/status")
        assert got is not None and json.loads(got[1])["status"] == "aborted"
    store.close()


async def test_global_estop_topic_and_stale_retained_estops(tmp_path: Path) -> None:
    calls: list[str] = []

    async def on_estop(reason: str) -> None:  # an async callback is awaited too
        calls.append(reason)

    with broker(tmp_path / "broker") as b:
        # A retained stop left on the broker earlier must not kill every later run.
        publish(b.port, "testbed/estop", "old", "-r")
        async with MqttTelemetry(b.url, run_id=_rid(), on_estop=on_estop):
            await asyncio.sleep(0.3)
            assert calls == []
            await asyncio.to_thread(publish, b.port, "testbed/estop", "all benches")
            for _ in range(100):
                if calls:
                    break
                await asyncio.sleep(0.02)
        assert calls == ["MQTT testbed/estop: all benches"]


def test_last_will_says_offline_when_the_process_dies(tmp_path: Path) -> None:
    rid = _rid()
    script = (
        "import asyncio, sys\n"
        "from testbed.telemetry import MqttTelemetry\n"
        "async def main():\n"
        "    async with MqttTelemetry(sys.argv[1], run_id=sys.argv[2]) as tm:\n"
        "        tm.observer('status', {'run': sys.argv[2], 'status': 'running'})\n"
        "        await tm.wait_idle()\n"
        "        print('ready', flush=True)\n"
        "        await asyncio.sleep(60)\n"
        "asyncio.run(main())\n")
    with broker(tmp_path / "broker") as b:
        proc = subprocess.Popen([sys.executable, "-c", script, b.url, rid], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            got = retained(b.port, f"testbed/{rid}/status")
            assert got is not None and json.loads(got[1])["status"] == "running"
        finally:
            proc.kill()  # no clean DISCONNECT: the broker must publish the will
            proc.wait()
        for _ in range(50):
            got = retained(b.port, f"testbed/{rid}/status")
            if got and json.loads(got[1])["status"] == "offline":
                break
        will = json.loads(got[1]) if got else {}
        assert got is not None and got[0] and will.pop("signature") and will == {
            "run": rid, "status": "offline"}


async def test_tls_and_credentials(tmp_path: Path) -> None:
    work = tmp_path / "broker"
    work.mkdir()
    tls = make_tls_files(work)
    passwd = work / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "lab", "s3cret"], check=True)
    extra = [f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}",
             f"password_file {passwd}", "allow_anonymous false"]
    rid = _rid()
    with broker(work, extra, tls=True) as b:
        with pytest.raises(TelemetryError):
            async with MqttTelemetry(b.url, run_id=rid, username="lab", password="wrong",
                                     ca=str(tls.ca)):
                pass
        async with MqttTelemetry(f"mqtts://lab:s3cret@127.0.0.1:{b.port}", run_id=rid,
                                 ca=str(tls.ca)) as tm:
            tm.observer("clearing", {"run": rid, "interval": 0, "price": 0.16})
            tm.observer("status", {"run": rid, "status": "finished"})
        got = retained(b.port, f"testbed/{rid}/status", "--cafile", str(tls.ca),
                       "-u", "lab", "-P", "s3cret")
        assert got is not None and json.loads(got[1])["status"] == "finished"


def test_broker_url_and_topic_parts() -> None:
    a = parse_broker_url("mqtts://u%40x:p@broker.lab:9000")
    assert (a.host, a.port, a.tls, a.username, a.password) == ("broker.lab", 9000, True,
                                                               "u@x", "p")
    assert parse_broker_url("mqtt://localhost").port == 1883
    assert parse_broker_url("mqtts://localhost").port == 8883
    from testbed.errors import InputError
    with pytest.raises(InputError):
        parse_broker_url("http://localhost")
    assert topic_part("a/b+#") == "a_b__"


async def test_unreachable_broker_is_an_error_before_the_run(tmp_path: Path) -> None:
    from tests.fixtures_mqtt import free_port
    with pytest.raises(TelemetryError, match=r"127\.0\.0\.1"):
        async with MqttTelemetry(f"mqtt://127.0.0.1:{free_port()}", run_id=_rid()):
            pass


def test_serve_follows_a_cli_run_over_mqtt_and_stops_it(tmp_path: Path) -> None:
    """``testbed serve --mqtt``: a run of another process shows live in the API (and so on
    the dashboard), and the API's emergency stop reaches it through the broker."""
    from fastapi.testclient import TestClient

    from testbed.api import create_app

    token = "bridge-token-1"
    db = tmp_path / "runs.db"

    def poll(c: TestClient, pred: Any, what: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = c.get("/api/live").json()
            if pred(live):
                return live  # type: ignore[no-any-return]
            time.sleep(0.05)
        raise AssertionError(f"/api/live never showed {what}: {live}")

    with broker(tmp_path / "broker") as b, \
            TestClient(create_app(db, token=token, mqtt=b.url)) as c:
        assert c.get("/api/health").json()["mqtt"] is True
        proc = subprocess.Popen(_cli("run", "scenario2", "--speed", "1440", "--db", str(db),
                                     "--mqtt", b.url), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            live = poll(c, lambda v: v["run"]["status"] == "running" and len(v["latest"]) == 10
                        and v["clearing"] is not None and len(v["history"]) > 3,
                        "the CLI run's readings and clearing")
            rid = live["run"]["id"]
            assert live["active"] == [rid] and live["clearing"]["price"] == 0.16
            assert len(live["orderbook"]["orders"]) == 10
            point = live["history"][-1]
            assert len(point["power_w"]) == 10
            assert point["grid_w"] == pytest.approx(-sum(point["power_w"].values()))
            assert c.get(f"/api/runs/{rid}").json()["live"] is True

            r = c.post("/api/estop", json={"reason": "dashboard button"},
                       headers={"Authorization": f"Bearer {token}"})
            assert r.json() == {"stopped": [rid], "mqtt": "sent"}
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 3 and "dashboard button" in stderr
        live = poll(c, lambda v: v["run"]["status"] == "aborted", "the run aborted")
        assert live["active"] == [] and live["safety"]["state"] == "safe"
        assert c.get(f"/api/runs/{rid}").json()["status"] == "aborted"
