"""Stable per-device MQTT topics against a real mosquitto, watched with ``mosquitto_sub``.

``testbed/{rig}/{household}/{device}/{quantity}`` must carry each value with its unit and
wall-clock time, the same topic across runs, retained, at a bounded rate; the rig's status
topic must clear the retained status of the run before; ``--ha-discovery`` must announce
every value topic; and the Telegraf configuration in docs/telemetry.md must turn real
messages into the documented series (Telegraf itself is in none of the registries this
project installs from, so its topic filter, ``topic_parsing`` and ``json_v2`` paths are
applied here as Telegraf documents them). The doc's Node-RED flow is run for real by
tests/test_node_red.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import subprocess
import sys
import time
import tomllib
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import topic_matches_sub

from testbed.config.rig import load_rig
from testbed.config.scenario import load_scenario
from testbed.ledger.store import Store
from testbed.run.events import TOPICS
from testbed.run.runner import run_scenario
from testbed.telemetry import (
    DEVICE_QUANTITIES,
    MqttTelemetry,
    device_topic,
    rig_run_topic,
    run_topic_filters,
)
from tests.fixtures_mqtt import broker, mosquitto_available, retained, subscribe

pytestmark = pytest.mark.skipif(not mosquitto_available(),
                                reason="mosquitto not installed (scripts/test.sh installs it)")
ROOT = Path(__file__).resolve().parent.parent
POWER_7 = "testbed/mock/7/meter/power"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "testbed.cli", *args]


def _run_cli(url: str, db: Path, *extra: str) -> str:
    r = subprocess.run(_cli("run", "scenario2", "--mqtt", url, "--db", str(db), "--json",
                            *extra), cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["run_id"])


def _last_reading(db: Path, run_id: str, household: str) -> dict[str, Any]:
    store = Store(db)
    try:
        row = next(iter(store.db.query(
            "select * from readings where run_id = ? and household = ? order by t desc "
            "limit 1", [run_id, household])))
        return dict(row)
    finally:
        store.close()


def _check_value(payload: dict[str, Any], before_ms: int, after_ms: int) -> None:
    """A value message: a number, its unit, wall-clock time in both forms, lab/market time."""
    assert isinstance(payload["value"], float) and payload["unit"] == "W"
    assert before_ms <= payload["ts_ms"] <= after_ms
    iso = dt.datetime.fromisoformat(payload["time"].replace("Z", "+00:00"))
    assert iso.tzinfo is not None and iso.utcoffset() == dt.timedelta(0)
    assert round(iso.timestamp() * 1000) == payload["ts_ms"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", payload["time"])
    assert 0 <= payload["market_hour"] < 24 and payload["lab_s"] >= 0


def test_household_7_meter_power_across_two_runs(tmp_path: Path) -> None:
    """The issue's acceptance check: one subscription to household 7's meter power, made
    before two consecutive runs, receives values with units and wall-clock timestamps from
    both; the first run's retained status is cleared when the second starts; the rig's
    status and the last value stay retained; the documented Telegraf config reads them."""
    db = tmp_path / "runs.db"
    with broker(tmp_path / "broker") as b, \
            subscribe(b.port, POWER_7, probe=POWER_7) as power, \
            subscribe(b.port, "testbed/+/+/+/+", probe=POWER_7) as tree:
        before = int(time.time() * 1000)
        first = _run_cli(b.url, db)
        assert retained(b.port, f"testbed/{first}/status") is not None
        second = _run_cli(b.url, db)
        after = int(time.time() * 1000)
        got = retained(b.port, POWER_7)
        assert got is not None and got[0] is True  # retained
        last = json.loads(got[1])
        assert power.wait_for(lambda m: m[2] == got[1])  # the subscriber has it too

        values = [json.loads(p) for _, t, p in power.messages() if p != "probe"]
        runs = [v["run"] for v in values]
        assert runs.count(first) >= 1 and runs.count(second) >= 1
        assert runs == sorted(runs, key=[first, second].index)  # first run, then second
        for v in values:
            _check_value(v, before, after)
        # The last value is the second run's last reading of household 7, as on disk.
        row = _last_reading(db, second, "7")
        assert last["run"] == second and last["value"] == round(row["power_w"], 4)
        assert last["lab_s"] == row["t"]

        # Old run statuses do not pile up: the first run's is gone, the second's stays,
        # and the rig's one status says which run it was and how it ended.
        assert retained(b.port, f"testbed/{first}/status") is None
        final = retained(b.port, f"testbed/{second}/status")
        assert final is not None and json.loads(final[1])["status"] == "finished"
        rig = retained(b.port, rig_run_topic("mock"))
        assert rig is not None and rig[0]
        assert {k: v for k, v in json.loads(rig[1]).items() if k in ("run", "status")} == {
            "run": second, "status": "finished"}

        tree.wait_for(lambda m: m[1] == POWER_7 and m[2] == got[1])
        messages = [(t, p) for _, t, p in tree.messages() if p != "probe"]
    _telegraf_reads(messages, second)


def _telegraf_config() -> dict[str, Any]:
    """The ``telegraf.conf`` block of docs/telemetry.md, parsed as TOML."""
    text = (ROOT / "docs" / "telemetry.md").read_text()
    (block,) = re.findall(r"```toml\n(# telegraf\.conf.*?)```", text, re.S)
    return tomllib.loads(block)


def _telegraf_reads(messages: list[tuple[str, str]], run_id: str) -> None:
    """Apply the documented mqtt_consumer config as Telegraf does: subscription filter,
    ``topic_parsing`` (one topic level per ``/``, ``_`` skipped), ``json_v2`` tag and field
    paths (plain top-level keys, so the GJSON path is the key) and the ``unix_ms`` time."""
    (consumer,) = _telegraf_config()["inputs"]["mqtt_consumer"]
    assert consumer["data_format"] == "json_v2"
    (parsing,) = consumer["topic_parsing"]
    (spec,) = consumer["json_v2"]
    assert spec["timestamp_format"] == "unix_ms"
    casts = {"float": float, "string": str}
    metrics = []
    for topic, body in messages:
        if not any(topic_matches_sub(f, topic) for f in consumer["topics"]):
            continue
        assert topic_matches_sub(parsing["topic"], topic)
        levels = topic.split("/")
        name = levels[parsing["measurement"].split("/").index("measurement")]
        tags = {k: v for k, v in zip(parsing["tags"].split("/"), levels, strict=True)
                if k != "_"}
        data = json.loads(body)
        for t in spec["tag"]:
            assert re.fullmatch(r"\w+", t["path"])
            tags[t["path"]] = str(data[t["path"]])
        fields = {f["path"]: casts[f["type"]](data[f["path"]]) for f in spec["field"]}
        stamp = int(data[spec["timestamp_path"]])
        metrics.append((name, tags, fields, stamp))
    ours = [m for m in metrics if m[1] == {"rig": "mock", "household": "7",
                                          "quantity": "power", "unit": "W"}]
    assert ours and all(m[0] == "meter" for m in ours)
    assert ours[-1][2]["run"] == run_id and isinstance(ours[-1][2]["value"], float)
    # Every value topic of the run becomes a series: 10 households x the table.
    series = {(m[0], m[1]["household"], m[1]["quantity"]) for m in metrics}
    assert len(series) == 10 * len(DEVICE_QUANTITIES)
    assert {m[1]["unit"] for m in metrics} == {q.unit for q in DEVICE_QUANTITIES.values()}


async def test_rate_is_bounded_and_home_assistant_discovery(tmp_path: Path) -> None:
    """A 10-household day emits 14,400 readings; with the interval longer than the run the
    stable topics carry exactly two messages each (the first flush and the last), and
    ``ha_discovery`` announces every value topic once, retained, pointing at it."""
    rid = "t" + uuid.uuid4().hex[:11]
    store = Store(tmp_path / "run.db")
    with broker(tmp_path / "broker") as b, \
            subscribe(b.port, "testbed/mock/#", probe="testbed/mock/_probe") as values, \
            subscribe(b.port, "homeassistant/#", probe="homeassistant/_probe") as ha:
        async with MqttTelemetry(b.url, run_id=rid, rig="mock", ha_discovery=True,
                                 device_interval=3600.0) as tm:
            await run_scenario(load_scenario("scenario2"), load_rig("mock"), store,
                               run_id=rid, observers=[tm.observer])
            assert tm.rig is not None
        topics = {device_topic("mock", str(h), q) for h in range(1, 11)
                  for q in DEVICE_QUANTITIES.values()}
        assert values.wait_for(lambda m: m[1] == rig_run_topic("mock") and "finished" in m[2])
        assert tm.rig.published >= 2 * len(topics)
        assert values.wait_for(lambda m: sum(
            1 for x in values.messages() if x[1] in topics) >= 2 * len(topics))
        counts = Counter(t for _, t, _ in values.messages() if t in topics)
        assert set(counts) == topics and set(counts.values()) == {2}, counts
        n = store.db.execute("select count(*) from readings where run_id = ?", [rid])
        assert n.fetchone()[0] == 14400

        configs = {t: json.loads(p) for _, t, p in ha.messages() if t.endswith("/config")}
        assert len(configs) == len(topics)
        assert {c["state_topic"] for c in configs.values()} == topics
        power = configs["homeassistant/sensor/testbed_mock_7/meter_power/config"]
        assert power["state_topic"] == POWER_7 and power["unit_of_measurement"] == "W"
        assert power["device_class"] == "power"
        assert power["value_template"] == "{{ value_json.value }}"
        assert power["availability_topic"] == "testbed/mock/run"
        assert power["device"]["identifiers"] == ["testbed_mock_7"]
        assert len({c["unique_id"] for c in configs.values()}) == len(configs)
        got = retained(b.port, "homeassistant/sensor/testbed_mock_7/battery_soc/config")
        assert got is not None and got[0] and json.loads(got[1])["unit_of_measurement"] == "%"
    store.close()


async def test_a_live_runs_status_is_kept_an_ended_ones_cleared(tmp_path: Path) -> None:
    """Only a run that has ended loses its retained status to the next run on the rig."""
    a, b_, c = ("t" + uuid.uuid4().hex[:11] for _ in range(3))
    with broker(tmp_path / "broker") as b:
        async with MqttTelemetry(b.url, run_id=a, rig="bench") as ta:
            ta.observer("status", {"run": a, "status": "running"})
            await ta.wait_idle()
            assert ta.rig is not None
            await _rig_says(b.port, "running")
            async with MqttTelemetry(b.url, run_id=b_, rig="bench") as tb:
                tb.observer("status", {"run": b_, "status": "finished"})
            assert tb.rig is not None and tb.rig.cleared == []  # a is live: kept
            assert retained(b.port, f"testbed/{a}/status") is not None
            ta.observer("status", {"run": a, "status": "aborted"})
        # b's status was on the rig topic, then a's (aborted): the next run clears a's.
        async with MqttTelemetry(b.url, run_id=c, rig="bench") as tc:
            assert tc.rig is not None and tc.rig.cleared == [f"testbed/{a}/status"]
        assert retained(b.port, f"testbed/{a}/status") is None
        assert retained(b.port, f"testbed/{b_}/status") is not None  # not the rig's last


async def _rig_says(port: int, status: str) -> None:
    for _ in range(200):
        got = await asyncio.to_thread(retained, port, rig_run_topic("bench"))
        if got and json.loads(got[1]).get("status") == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the rig status never said {status}")


def test_run_filters_and_device_topics_never_overlap() -> None:
    """``testbed serve --mqtt`` subscribes to the run-scoped filters: they match every run
    topic and no stable device or rig topic, so the hub never sees the device tree."""
    filters = run_topic_filters()
    run_topics = [f"testbed/abc123/{k}" for k in TOPICS if k != "readings"]
    run_topics.append("testbed/abc123/readings/7")
    for t in run_topics:
        assert any(topic_matches_sub(f, t) for f in filters), t
    device = [device_topic("mock", "7", q) for q in DEVICE_QUANTITIES.values()]
    for t in [*device, rig_run_topic("mock"), "testbed/estop", "testbed/abc/estop"]:
        assert not any(topic_matches_sub(f, t) for f in filters), t
    # Topic levels cannot be forged by a name: wildcards and separators are replaced.
    assert device_topic("a/b", "+", DEVICE_QUANTITIES["power_w"]) == "testbed/a_b/_/meter/power"


def test_ha_discovery_needs_mqtt(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from testbed.cli.app import app

    r = CliRunner().invoke(app, ["run", "scenario2", "--db", str(tmp_path / "r.db"),
                                 "--ha-discovery"])
    assert r.exit_code == 2 and "--ha-discovery" in r.output and "--mqtt" in r.output
    assert "Traceback" not in r.output


async def test_a_status_queued_while_values_go_out_is_sent_before_closing() -> None:
    """The flusher must not go to sleep on work queued while it was publishing: the run's
    final status arriving during the last values' flush (an emergency stop) once hung the
    run's exit for the whole drain timeout."""
    from testbed.telemetry import BrokerAddress, RigTelemetry

    rig = RigTelemetry(BrokerAddress("127.0.0.1", 1, False, None, None), rig="r", run_id="x")
    sent: list[tuple[str, int]] = []

    class Client:
        async def publish(self, topic: str, body: bytes, qos: int, retain: bool) -> None:
            sent.append((topic, qos))
            if qos == 0 and len(sent) == 1:  # the first value: the run ends meanwhile
                rig.run_status({"status": "aborted"})
                rig._closing = True
            await asyncio.sleep(0)

    rig.readings({"interval_hour": 1.0, "rows": [{"household": "7", "t": 1.0,
                                                  "power_w": 5.0}]})
    await asyncio.wait_for(rig._flush_loop(Client()), 10)  # type: ignore[arg-type]
    assert sent == [("testbed/r/7/meter/power", 0), ("testbed/r/run", 1)]


def test_a_killed_run_leaves_its_rig_offline_and_the_next_run_clears_it(
        tmp_path: Path) -> None:
    """kill -9: the rig's status becomes its will, ``offline``; the next run on the rig then
    clears the dead run's retained status (its own will, ``offline``) too."""
    dead, nxt = ("t" + uuid.uuid4().hex[:11] for _ in range(2))
    script = (
        "import asyncio, sys\n"
        "from testbed.telemetry import MqttTelemetry\n"
        "async def main():\n"
        "    async with MqttTelemetry(sys.argv[1], run_id=sys.argv[2], rig='bench') as tm:\n"
        "        tm.observer('status', {'run': sys.argv[2], 'status': 'running'})\n"
        "        tm.observer('readings', {'interval_hour': 0.5, 'rows': [\n"
        "            {'household': '7', 't': 1.0, 'power_w': 12.5}]})\n"
        "        await tm.wait_idle()\n"
        "        print('ready', flush=True)\n"
        "        await asyncio.sleep(60)\n"
        "asyncio.run(main())\n")
    with broker(tmp_path / "broker") as b:
        proc = subprocess.Popen([sys.executable, "-c", script, b.url, dead], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            for _ in range(100):  # the value goes out within a flush interval (1 s)
                if retained(b.port, "testbed/bench/7/meter/power"):
                    break
        finally:
            proc.kill()
            proc.wait()
        got = None
        for _ in range(50):
            got = retained(b.port, rig_run_topic("bench"))
            if got and json.loads(got[1])["status"] == "offline":
                break
        assert got is not None and json.loads(got[1]) == {"run": dead, "status": "offline"}
        value = retained(b.port, "testbed/bench/7/meter/power")
        assert value is not None and json.loads(value[1])["value"] == 12.5  # last value kept
        for _ in range(50):
            will = retained(b.port, f"testbed/{dead}/status")
            if will and json.loads(will[1])["status"] == "offline":
                break
        assert will is not None

        async def next_run() -> list[str]:
            async with MqttTelemetry(b.url, run_id=nxt, rig="bench") as tm:
                assert tm.rig is not None
                return tm.rig.cleared

        assert asyncio.run(next_run()) == [f"testbed/{dead}/status"]
        assert retained(b.port, f"testbed/{dead}/status") is None


def test_values_json_cannot_carry_are_left_out_and_the_scenario_stays() -> None:
    from testbed.telemetry import BrokerAddress, RigTelemetry

    rig = RigTelemetry(BrokerAddress("127.0.0.1", 1, False, None, None), rig="r", run_id="x",
                       clock=lambda: 1796063329.275)
    rig.readings({"interval_hour": 1.0, "rows": [{"household": "7", "t": 2.0,
                                                  "power_w": float("nan"), "soc": 0.5,
                                                  "pv_w": float("inf")}]})
    assert list(rig._latest) == ["testbed/r/7/battery/soc"]
    assert json.loads(rig._latest["testbed/r/7/battery/soc"]) == {
        "value": 50.0, "unit": "%", "time": "2026-11-30T18:28:49.275Z",
        "ts_ms": 1796063329275, "run": "x", "market_hour": 1.0, "lab_s": 2.0}
    rig.run_status({"status": "running", "scenario": "scenario2"})
    rig.run_status({"status": "finished"})
    assert rig.status["scenario"] == "scenario2" and rig.status["status"] == "finished"
