"""Issue 14 part A on the virtual clock: a run written as it happens, an interval cut short
recorded with its readings and why, resume by id alone, what ``testbed run`` shows.

The same rules in real time (Ctrl-C, an MQTT e-stop and kill -9 a minute into a run) are in
tests/test_realtime.py (serial group).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from testbed.cli.app import app
from testbed.config.rig import load_rig
from testbed.config.scenario import load_scenario
from testbed.ledger.store import Store
from testbed.run import lifecycle
from testbed.run.controller import Controller, EmergencyStop
from testbed.run.runner import run_scenario

runner = CliRunner()
STOP_AFTER = 300  # control periods (of the mock day's 1,440) before the e-stop


def _trades_and_balances(store: Store, run_id: str) -> tuple[list[tuple[Any, ...]], dict[str, int]]:
    trades = [tuple(r) for r in store.db.execute(
        "select interval, seq, seller, buyer, energy_kwh, price from trades where run_id = ? "
        "order by interval, seq", [run_id]).fetchall()]
    balances = dict(store.db.execute("select account, micro from balances where run_id = ?",
                                     [run_id]).fetchall())
    return trades, balances


async def _stopped_run(store: Store, run_id: str, after: int = STOP_AFTER) -> int:
    """Scenario 2 on the mock rig with an e-stop after ``after`` control periods; returns
    the reading rows the bus carried until then."""
    controllers: list[Controller] = []
    seen = {"periods": 0, "rows": 0}

    def count(topic: str, payload: dict[str, Any]) -> None:
        if topic == "readings":
            seen["periods"] += 1
            seen["rows"] += len(payload["rows"])
            if seen["periods"] == after:
                controllers[0].emergency_stop("red button at the bench")

    with pytest.raises(EmergencyStop):
        await run_scenario(load_scenario("scenario2"), load_rig("mock"), store, run_id=run_id,
                           observers=[count], on_controller=controllers.append)
    return seen["rows"]


async def test_an_estop_leaves_its_readings_and_reason_and_resume_matches(
        tmp_path: Path) -> None:
    ref = Store(tmp_path / "ref.db")
    await run_scenario(load_scenario("scenario2"), load_rig("mock"), ref, run_id="ref")
    expected = _trades_and_balances(ref, "ref")
    ref.close()

    store = Store(tmp_path / "stop.db")
    rows = await _stopped_run(store, "r1")
    assert store.run("r1")["status"] == "aborted"
    (aborted,) = store.aborted_intervals("r1")
    assert (aborted["idx"], aborted["cause"], aborted["reason"]) == (
        0, "estop", "red button at the bench")
    assert aborted["readings"] == rows > 0  # every reading until the stop, none lost
    on_disk = store.on_disk("r1")
    assert on_disk["aborted_readings"] == rows and on_disk["readings"] == 0
    assert on_disk["intervals"] == 0 and on_disk["trades"] == 0
    last_t = store.db.execute("select max(t) from aborted_readings where run_id = 'r1'"
                              ).fetchone()[0]
    assert aborted["lab_end_s"] - last_t <= load_rig("mock").control_period_s
    events = [r[0] for r in store.db.execute(
        "select body from events where run_id = 'r1' and topic = 'status'").fetchall()]
    assert [json.loads(b)["status"] for b in events] == ["running", "aborted"]

    out = await run_scenario(load_scenario("scenario2"), load_rig("mock"), store, resume="r1")
    assert out.status == "finished" and out.resumed_from == 0
    assert _trades_and_balances(store, "r1") == expected  # the virtual clock: exactly
    assert store.on_disk("r1")["readings"] == 14_400  # the resumed day's, once
    assert len(store.aborted_intervals("r1")) == 1  # an aborted resume is not a kill
    store.close()


def test_record_aborted_interval_refuses_an_unknown_cause(tmp_path: Path) -> None:
    store = Store(tmp_path / "x.db")
    with pytest.raises(ValueError, match="cause must be one of"):
        store.record_aborted_interval("r", 0, "why", cause="boredom")
    row = store.record_aborted_interval("r", 0, "first", cause="fault")
    again = store.record_aborted_interval("r", 0, "second", cause="signal")
    assert (row["attempt"], again["attempt"]) == (0, 1)
    store.close()


def test_readings_reach_the_disk_every_control_period(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """In real time one readings event comes per control period: each is on disk before
    the next arrives (a kill -9 loses at most the period in progress)."""
    store = Store(tmp_path / "x.db")
    wall = [100.0]
    monkeypatch.setattr(lifecycle.time, "monotonic", lambda: wall[0])
    log = lifecycle.RunLog(store, "r", flush_s=1.0)
    log.begin(0, 0.0)
    for k in range(5):
        wall[0] += 1.0  # one control period of wall time
        log("readings", {"rows": [{"t": float(k), "household": h, "meter_net_wh": 0.0,
                                   "power_w": 0.0} for h in ("1", "2")]})
        assert store.on_disk("r")["readings"] == 2 * (k + 1)
    store.close()


def test_readings_are_batched_in_virtual_time(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "x.db")
    monkeypatch.setattr(lifecycle.time, "monotonic", lambda: 5.0)  # no wall time passes
    log = lifecycle.RunLog(store, "r", flush_s=1.0)
    log.begin(0, 0.0)
    for k in range(50):
        log("readings", {"rows": [{"t": float(k), "household": "1", "meter_net_wh": 0.0,
                                   "power_w": 0.0}]})
    assert store.on_disk("r")["readings"] == 0
    log.commit()
    assert store.on_disk("r")["readings"] == 50
    store.close()


@pytest.fixture()
def stopped_db(tmp_path: Path) -> Path:
    """A database holding run ``s1`` of scenario 2, stopped by an e-stop mid-day, as the
    command line starts it (its launch kept for --resume)."""
    import asyncio

    db = tmp_path / "s.db"
    store = Store(db)

    async def go() -> None:
        controllers: list[Controller] = []

        def stop(topic: str, payload: dict[str, Any]) -> None:
            if topic == "readings" and payload["t"] >= 300:
                controllers[0].emergency_stop("red button")

        with pytest.raises(EmergencyStop):
            await run_scenario(load_scenario("scenario2"), load_rig("mock"), store,
                               run_id="s1", observers=[stop],
                               on_controller=controllers.append,
                               launch={"launch": {"scenario": "scenario2", "rig": "mock",
                                                  "speed": None, "ledger": "sqlite",
                                                  "agents": None, "gate_s": 10.0}})
    asyncio.run(go())
    store.close()
    return db


@pytest.mark.parametrize(("args", "named"), [
    (["--speed", "2"], "--speed 2"), (["scenario1"], "SCENARIO scenario1"),
    (["--rig", "lab3"], "--rig lab3"), (["--ledger", "evm"], "--ledger evm")])
def test_resume_refuses_an_argument_that_conflicts_with_the_run(
        stopped_db: Path, args: list[str], named: str) -> None:
    result = runner.invoke(app, ["run", *args, "--resume", "s1", "--db", str(stopped_db)])
    assert result.exit_code == 2, result.output
    assert f"error: {named}: conflicts with run s1" in result.stderr
    assert "Traceback" not in result.output


def test_resume_by_id_alone_completes_the_run(stopped_db: Path, tmp_path: Path) -> None:
    ref = runner.invoke(app, ["run", "scenario2", "--db", str(tmp_path / "ref.db"), "--json"])
    assert ref.exit_code == 0, ref.stderr
    result = runner.invoke(app, ["run", "--resume", "s1", "--db", str(stopped_db), "--json",
                                 "--quiet"])
    assert result.exit_code == 0, result.stderr
    out, expected = json.loads(result.stdout), json.loads(ref.stdout)
    assert out["run_id"] == "s1" and out["resumed_from_interval"] == 0
    assert [(h["id"], h["balance_after_eth"], h["cleared_kwh"]) for h in out["households"]] \
        == [(h["id"], h["balance_after_eth"], h["cleared_kwh"]) for h in expected["households"]]
    # the same arguments as the run's are accepted
    again = runner.invoke(app, ["run", "scenario2", "--rig", "mock", "--resume", "s1",
                                "--db", str(stopped_db)])
    assert again.exit_code == 2 and "has finished" in again.stderr


def test_run_prints_the_banner_and_one_line_per_market_hour(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    result = runner.invoke(app, ["run", "scenario2", "--db", str(db)])
    assert result.exit_code == 0, result.stderr
    err = result.stderr.splitlines()
    (head,) = [line for line in err if line.startswith("run ") and "scenario scenario2" in line]
    run_id = head.split()[1].rstrip(":")
    assert f"resume: testbed run --resume {run_id} --db {db}" in err
    assert any(line.startswith("e-stop: kill -USR1 ") for line in err)
    hours = [line for line in err if line.startswith("interval 1/1 ")]
    assert len(hours) == 24 and "market 12:00" in hours[12]
    store = Store(db)
    n = store.on_disk(run_id)
    store.close()
    assert err[-1] == (f"run {run_id} (finished) on disk in {db}: 1 interval(s), "
                       f"{n['readings']} readings, 7 trades, 2 ledger blocks, "
                       f"{n['safety_events']} safety and {n['events']} other events")
    quiet = runner.invoke(app, ["run", "scenario2", "--db", str(db), "--quiet"])
    assert quiet.exit_code == 0 and "interval 1/1" not in quiet.stderr
    assert "resume: testbed run --resume" in quiet.stderr


def test_resume_without_a_run_or_scenario_says_what_is_missing(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["run", "--db", str(tmp_path / "no.db")])
    assert missing.exit_code == 2 and "SCENARIO: missing" in missing.stderr
    nodb = runner.invoke(app, ["run", "--resume", "abc", "--db", str(tmp_path / "no.db")])
    assert nodb.exit_code == 2 and "--resume needs the run's database" in nodb.stderr


def test_the_live_display_shows_tracking_and_state() -> None:
    import io

    from rich.console import Console

    from testbed.cli.progress import Launch, RunDisplay

    for width in (80, 100):
        out = io.StringIO()
        console = Console(file=out, force_terminal=True, width=width, color_system=None)
        display = RunDisplay(console, Launch("scenario2", "mock", "1440", "t.db"))
        assert display.mode == "live"
        with display:
            display("status", {"run": "r9", "status": "running", "intervals": 1,
                               "from_interval": 0, "interval_hours": 24.0})
            time.sleep(0.3)  # let the redraw throttle pass
            display("readings", {"t": 30.0, "interval_hour": 12.0, "tripped": {
                "7": "meter lost: timeout"}, "goals_wh": {"1": 10.0, "7": -2.0},
                "rows": [{"household": "1", "meter_net_wh": 10.25, "power_w": 20.0,
                          "soc": 0.5}]})
        text = out.getvalue()
        assert "resume: testbed run --resume r9 --db t.db" in text
        assert "market 12:00" in text and "50%" in text
        assert "+0.250" in text and "OFF: meter" in text  # wrapped in its cell, not cut
        assert "…" not in text


def test_the_display_of_a_resume_with_no_interval_left() -> None:
    """A day killed after its last hour was sealed resumes from hour 24 of 24: the head
    says the last interval, 100 % and the end of the day, not ``interval 25/24 ... 0%``."""
    import io

    from rich.console import Console

    from testbed.cli.progress import Launch, RunDisplay

    console = Console(file=io.StringIO(), force_terminal=False, width=100)
    display = RunDisplay(console, Launch("cesdt", "mock", None, "t.db"))
    display("status", {"run": "k1", "status": "running", "intervals": 24,
                       "from_interval": 24, "interval_hours": 1.0})
    assert display.head().startswith("interval 24/24  lab 0.0 s  market 24:00  100%  ETA")
    display("status", {"run": "k2", "status": "running", "intervals": 24,
                       "from_interval": 3, "interval_hours": 1.0})
    assert display.head().startswith("interval 4/24  lab 0.0 s  market 03:00  0%")


def test_a_community_day_shares_the_lifecycle(tmp_path: Path) -> None:
    """The same life for ``testbed run cesdt``: the hour cut short by an e-stop is recorded
    with its readings and reason; the hours before it are committed with theirs."""
    import asyncio

    from testbed.run.community_day import run_cesdt_async

    store = Store(tmp_path / "c.db")
    controllers: list[Controller] = []
    periods = [0]

    def stop(topic: str, payload: dict[str, Any]) -> None:
        if topic == "readings":
            periods[0] += 1
            if periods[0] == 150:  # 2.5 hours of 60 periods
                controllers[0].emergency_stop("community e-stop")

    with pytest.raises(EmergencyStop):
        asyncio.run(run_cesdt_async(households=12, generating=0.5, seed=2,
                                    rig=load_rig("mock"), store=store, progress=False,
                                    observers=[stop], on_controller=controllers.append,
                                    run_id="c1"))
    (aborted,) = store.aborted_intervals("c1")
    assert (aborted["idx"], aborted["cause"], aborted["reason"]) == (2, "estop",
                                                                     "community e-stop")
    n = store.on_disk("c1")
    assert n["intervals"] == 2 and n["readings"] == 2 * 60 * 10
    assert aborted["readings"] == n["aborted_readings"] == 30 * 10
    assert store.run("c1")["status"] == "aborted"
    store.close()


def test_a_run_started_without_the_cli_is_resumable_by_id(tmp_path: Path) -> None:
    """The API starts runs through run_scenario without a launch: the run keeps one made
    from its scenario, rig and clock, so ``--resume ID`` alone works for it too."""
    import asyncio

    db = tmp_path / "api.db"
    store = Store(db)
    controllers: list[Controller] = []

    def stop(topic: str, payload: dict[str, Any]) -> None:
        if topic == "readings" and payload["t"] >= 60:
            controllers[0].emergency_stop("from the dashboard")

    with pytest.raises(EmergencyStop):
        asyncio.run(run_scenario(load_scenario("scenario1"), load_rig("mock"), store,
                                 run_id="a1", observers=[stop],
                                 on_controller=controllers.append))
    assert json.loads(store.run("a1")["params"])["launch"]["scenario"] == "scenario1"
    store.close()
    result = runner.invoke(app, ["run", "--resume", "a1", "--db", str(db), "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert "run a1 (finished)" in result.stderr


def test_a_failing_readings_write_fails_the_interval_not_the_readings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that cannot be written stays pending and is tried again with the interval's
    commit; when that fails too, the interval rolls back (tests/test_rules.py)."""
    store = Store(tmp_path / "x.db")
    wall = [0.0]
    monkeypatch.setattr(lifecycle.time, "monotonic", lambda: wall[0])
    log = lifecycle.RunLog(store, "r", flush_s=1.0)
    log.begin(0, 0.0)
    real = Store.append_readings
    full = [True]

    def append(self: Store, rows: list[dict[str, Any]], fixed: Any = None) -> None:
        if full[0]:
            raise OSError("disk full")
        real(self, rows, fixed)

    monkeypatch.setattr(Store, "append_readings", append)
    row = {"t": 0.0, "household": "1", "meter_net_wh": 0.0, "power_w": 0.0}
    wall[0] += 1.0
    with pytest.raises(OSError):  # the event bus logs this and goes on
        log("readings", {"rows": [row]})
    with pytest.raises(OSError):
        log.commit()
    full[0] = False
    log.commit()
    assert store.on_disk("r")["readings"] == 1
    store.close()
