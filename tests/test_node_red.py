"""docs/telemetry.md's Node-RED flow, run by a real Node-RED against a private mosquitto.

The flow is read from the doc's "Node-RED" section and run as it stands: Node-RED 4.1.15
from tests/node-red (installed by ``npm ci`` from the committed lock in scripts/test.sh;
nothing is fetched here), headless (tests/node-red/settings.js: no editor, no HTTP port, no
update check), its own user directory, configured only by the environment variables the
doc names. Its subscription is made once, before two consecutive ``testbed run scenario2
--mqtt`` CLI runs on the mock rig; the file it appends to must then hold household 7's
meter power from both runs, in watts, timed by the wall clock, ending with the second run's
last reading as the run database holds it. Node-RED is then stopped by SIGINT, as Ctrl-C
would, and must exit cleanly.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_mqtt import broker, mosquitto_available, publish, retained
from tests.test_telemetry_topics import POWER_7, _last_reading, _run_cli

ROOT = Path(__file__).resolve().parent.parent
NODE_RED_DIR = ROOT / "tests" / "node-red"
RED_JS = NODE_RED_DIR / "node_modules" / "node-red" / "red.js"
SETTINGS = NODE_RED_DIR / "settings.js"
WAIT_S = 120.0  # generous: a loaded 2-core machine; every wait ends as soon as it is met

pytestmark = [
    pytest.mark.serial,  # two CLI runs and a Node.js process: ~30 s of wall time
    pytest.mark.skipif(not mosquitto_available(),
                       reason="mosquitto not installed (scripts/test.sh installs it)"),
]


def doc_flow() -> list[dict[str, Any]]:
    """The one ```json block of docs/telemetry.md's "### Node-RED" section, parsed."""
    text = (ROOT / "docs" / "telemetry.md").read_text()
    (section,) = re.findall(r"^### Node-RED\n(.*?)(?=^##)", text, re.S | re.M)
    (block,) = re.findall(r"```json\n(.*?)```", section, re.S)
    flow = json.loads(block)
    assert isinstance(flow, list)
    return flow


@dataclass
class NodeRed:
    proc: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


@contextmanager
def node_red(flow: Path, user_dir: Path, env: dict[str, str]) -> Iterator[NodeRed]:
    """Start Node-RED on ``flow``; stop it with SIGINT afterwards (kill only if it hangs)."""
    node = shutil.which("node")
    if node is None or not RED_JS.is_file():
        pytest.fail(f"no Node-RED at {RED_JS}: run `npm ci --prefix {NODE_RED_DIR}` "
                    "(scripts/test.sh does)")
    user_dir.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NODE_RED_")}
    log_path = user_dir.parent / "node-red.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [node, str(RED_JS), "--settings", str(SETTINGS), "--userDir", str(user_dir),
             str(flow)], env={**clean, **env}, stdout=log, stderr=subprocess.STDOUT,
            text=True)
    red = NodeRed(proc, log_path)
    try:
        yield red
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = path.read_text()
    # A line is whole once its newline is written: the file node appends line by line.
    return [json.loads(line) for line in text.split("\n")[:-1]]


def _wait_lines(red: NodeRed, path: Path, done: Callable[[list[dict[str, Any]]], bool],
                what: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT_S
    while True:
        lines = _lines(path)
        if done(lines):
            return lines
        if red.proc.poll() is not None:
            raise AssertionError(f"Node-RED exited ({red.proc.returncode}) before {what}:\n"
                                 f"{red.log()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} in {path} within {WAIT_S:.0f} s; it holds "
                                 f"{lines[-3:]}; Node-RED said:\n{red.log()[-2000:]}")
        time.sleep(0.1)


def _ms(iso: str) -> int:
    stamp = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    assert stamp.utcoffset() == dt.timedelta(0), iso
    return round(stamp.timestamp() * 1000)


def test_the_documented_flow_logs_household_7_across_two_runs(tmp_path: Path) -> None:
    """The issue's acceptance check with Node-RED as the subscriber, running the doc's flow."""
    flow = doc_flow()
    (sub,) = [n for n in flow if n["type"] == "mqtt in"]
    assert sub["topic"] == POWER_7 and sub["datatype"] == "json"
    flow_file = tmp_path / "flow.json"
    flow_file.write_text(json.dumps(flow, indent=2))
    out = tmp_path / "log" / "household7.jsonl"  # the flow's file node creates the directory
    db = tmp_path / "runs.db"
    pinned = json.loads((NODE_RED_DIR / "package.json").read_text())["dependencies"]

    with broker(tmp_path / "broker") as b:
        # A retained probe on the topic: Node-RED gets it as soon as its subscription is
        # live, and the flow writes it, so the whole flow is proven running before any run.
        publish(b.port, POWER_7, json.dumps({"value": 0.0, "unit": "W", "run": "probe",
                                             "time": "2000-01-01T00:00:00.000Z"}), "-r")
        env = {"MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(b.port), "POWER_LOG": str(out)}
        with node_red(flow_file, tmp_path / "node-red", env) as red:
            _wait_lines(red, out, lambda ls: any(x["run"] == "probe" for x in ls),
                        "probe line (Node-RED subscribed)")
            before = int(time.time() * 1000)
            first = _run_cli(b.url, db)
            second = _run_cli(b.url, db)
            got = retained(b.port, POWER_7)
            assert got is not None and got[0] is True
            last_sent = json.loads(got[1])
            assert last_sent["run"] == second
            want = {k: last_sent[k] for k in ("value", "unit", "time", "run")}
            lines = _wait_lines(red, out,
                                lambda ls: bool(ls) and ls[-1].get("time") == want["time"],
                                "line for the second run's last value")
            after = int(time.time() * 1000)
            red.proc.send_signal(signal.SIGINT)
            assert red.proc.wait(60) == 0, red.log()[-2000:]
        log = red.log()

    assert f"Node-RED version: v{pinned['node-red']}" in log
    assert f"Connected to broker: mqtt://127.0.0.1:{b.port}" in log
    assert "[error]" not in log, log[-2000:]
    assert "Stopped flows" in log

    assert lines[0]["run"] == "probe"
    assert lines[-1] == want  # the last value sent, as the flow's object
    values = lines[1:]
    assert all(set(v) == {"value", "unit", "time", "run"} for v in values), values[:3]
    runs = [v["run"] for v in values]
    assert runs.count(first) >= 1 and runs.count(second) >= 1, set(runs)
    assert runs == sorted(runs, key=[first, second].index)  # the first run, then the second
    for v in values:
        # JavaScript has one number type: Node-RED writes 0.0 as 0.
        assert v["unit"] == "W" and type(v["value"]) in (int, float), v
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", v["time"]), v
        assert before <= _ms(v["time"]) <= after, (before, v, after)
    # The last value is the second run's last reading of household 7, as on disk.
    row = _last_reading(db, second, "7")
    assert values[-1]["run"] == second and values[-1]["value"] == round(row["power_w"], 4)
