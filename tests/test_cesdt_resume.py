"""Issue 14 item 4: a community day (``testbed run cesdt``) resumed by its id.

A day cut short (an exception at hour N, a Ctrl-C, an e-stop) and resumed ends with the
settlements and balances of an uninterrupted day to the micro-unit, its ledger verifies,
and it appears once in the run list and the figures. On the mock rig, virtual clock, in
process; the SIGKILL of a real-time day in a subprocess is tests/test_cesdt_resume_kill.py
(serial).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from testbed.cli.app import app
from testbed.config.rig import load_rig
from testbed.errors import InputError
from testbed.ledger.chain import verify_run
from testbed.ledger.store import Store
from testbed.run import community_day
from testbed.run.community_day import run_cesdt, run_cesdt_async
from testbed.run.controller import Controller, EmergencyStop

runner = CliRunner()
DAY = {"households": 12, "generating": 0.5, "seed": 2}  # 10 homes on the mock rig, 2 not
LAUNCH = {"launch": {"scenario": "cesdt", "rig": "mock", "speed": None, "ledger": "sqlite",
                     "agents": None, "gate_s": 10.0, **DAY}}  # as `testbed run cesdt` keeps it


def money(store: Store, run_id: str) -> dict[str, Any]:
    """Everything of a day that is money or trading: every fill and transfer of every
    hour's block (exact integers and fractions as the ledger holds them), the balances
    table, and the summary's money, trading and cost figures."""
    blocks = [[{k: v for k, v in tx.items() if k != "signature"} for tx in b["txs"]
               if tx.get("type") in ("fill", "transfer", "deposit")]
              for b in store.blocks(run_id)]
    summary = json.loads(store.run(run_id)["summary"])
    led = {k: v for k, v in summary["ledger"].items() if k != "head"}
    return {"blocks": blocks, "balances": store.balances(run_id), "ledger": led,
            **{k: summary[k] for k in ("money", "trading", "classes", "hourly")}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same day, never interrupted."""
    store = Store(tmp_path_factory.mktemp("ref") / "ref.db")
    summary = run_cesdt(**DAY, rig=load_rig("mock"), store=store, progress=False)
    out = money(store, summary["run_id"])
    out["bench"] = summary["bench"]
    out["summary"] = summary
    store.close()
    return out


def _fail_at(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    """An exception in hour ``at``, after the rig ran it and before its block is sealed."""
    real = community_day._DayRun.hour

    def hour(self: community_day._DayRun, index: int, measured: Any) -> None:
        if index == at:
            raise RuntimeError(f"injected at hour {at}")
        real(self, index, measured)

    monkeypatch.setattr(community_day._DayRun, "hour", hour)


def _same_day(store: Store, run_id: str, reference: dict[str, Any]) -> dict[str, Any]:
    got = money(store, run_id)
    for key in ("balances", "blocks", "ledger", "money", "trading", "classes", "hourly"):
        assert got[key] == reference[key], key
    assert verify_run(store, run_id) is None
    return got


def test_a_day_failed_at_hour_7_resumes_to_the_uninterrupted_money(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: dict[str, Any]) -> None:
    store = Store(tmp_path / "f.db")
    with monkeypatch.context() as m:
        _fail_at(m, 7)
        with pytest.raises(RuntimeError, match="injected"):
            run_cesdt(**DAY, rig=load_rig("mock"), store=store, progress=False)
    (row,) = store.runs()
    rid = row["id"]
    assert row["status"] == "failed" and store.count("intervals", rid) == 7
    (aborted,) = store.aborted_intervals(rid)
    assert (aborted["idx"], aborted["cause"]) == (7, "fault")
    events: list[dict[str, Any]] = []
    summary = run_cesdt(**DAY, rig=load_rig("mock"), store=store, progress=False,
                        resume=rid, observers=[lambda t, p: events.append(p)
                                               if t == "status" else None])
    assert summary["resumed_from_interval"] == 7 and summary["status"] == "finished"
    assert store.run(rid)["status"] == "finished"
    assert {"status": "resumed", "from_interval": 7} in [
        {k: e.get(k) for k in ("status", "from_interval")} for e in events]
    _same_day(store, rid, reference)
    # the bench's figures go on from the hours before the stop: the whole day's, 24 hours
    assert summary["bench"]["rigs"] == reference["bench"]["rigs"]
    store.close()


async def test_a_ctrl_c_day_resumes_to_the_uninterrupted_money(
        tmp_path: Path, reference: dict[str, Any]) -> None:
    """A Ctrl-C is the CLI cancelling the run's task with the signal's name."""
    store = Store(tmp_path / "c.db")
    periods = [0]
    task: asyncio.Task[dict[str, Any]] | None = None

    def ctrl_c(topic: str, payload: dict[str, Any]) -> None:
        if topic == "readings":
            periods[0] += 1
            if periods[0] == 11 * 60 + 20 and task is not None:  # 20 min into hour 11
                task.cancel("SIGINT")

    task = asyncio.create_task(run_cesdt_async(
        **DAY, rig=load_rig("mock"), store=store, progress=False, observers=[ctrl_c],
        run_id="c1", launch=LAUNCH))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.run("c1")["status"] == "aborted"
    (aborted,) = store.aborted_intervals("c1")
    assert (aborted["idx"], aborted["cause"], aborted["reason"]) == (11, "signal",
                                                                     "stopped by SIGINT")
    summary = await run_cesdt_async(**DAY, rig=load_rig("mock"), store=store,
                                    progress=False, resume="c1")
    assert summary["resumed_from_interval"] == 11
    _same_day(store, "c1", reference)
    store.close()


def test_a_day_stopped_after_its_last_hour_only_closes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: dict[str, Any]) -> None:
    """Every hour sealed, the run stopped before its summary: the resume runs no hour,
    puts the bench safe and writes the day's summary."""
    store = Store(tmp_path / "k.db")
    real = community_day._DayRun.hour

    def hour(self: community_day._DayRun, index: int, measured: Any) -> None:
        real(self, index, measured)
        if index == 23:
            raise RuntimeError("after the last hour")

    with monkeypatch.context() as m:
        m.setattr(community_day._DayRun, "hour", hour)
        with pytest.raises(RuntimeError):
            run_cesdt(**DAY, rig=load_rig("mock"), store=store, progress=False)
    rid = store.runs()[0]["id"]
    assert store.count("intervals", rid) == 24 and store.aborted_intervals(rid) == []
    summary = run_cesdt(**DAY, rig=load_rig("mock"), store=store, progress=False, resume=rid)
    assert summary["resumed_from_interval"] == 24
    _same_day(store, rid, reference)
    store.close()


def test_a_resume_refuses_another_day_or_a_finished_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.db")
    with pytest.raises(EmergencyStop):
        asyncio.run(run_cesdt_async(**DAY, rig=load_rig("mock"), store=store, progress=False,
                                    run_id="e1", on_controller=lambda c: c.emergency_stop("x")))
    for other, named in (({"seed": 3}, "seed 2, not 3"), ({"households": 11},
                                                          "households 12, not 11")):
        with pytest.raises(InputError, match=named):
            run_cesdt(**{**DAY, **other}, rig=load_rig("mock"), store=store, progress=False,
                      resume="e1")
    assert store.aborted_intervals("e1")[0]["cause"] == "estop"
    run_cesdt(**DAY, rig=load_rig("mock"), store=store, progress=False, resume="e1")
    with pytest.raises(InputError, match="has finished"):
        run_cesdt(**DAY, rig=load_rig("mock"), store=store, progress=False, resume="e1")
    store.close()


@pytest.fixture()
def stopped_day(tmp_path: Path) -> Path:
    """Run ``d1``, a community day started as the command line starts it, e-stopped in
    hour 3."""
    db = tmp_path / "d.db"
    store = Store(db)
    controllers: list[Controller] = []
    periods = [0]

    def stop(topic: str, payload: dict[str, Any]) -> None:
        if topic == "readings":
            periods[0] += 1
            if periods[0] == 3 * 60 + 30:
                controllers[0].emergency_stop("red button")

    with pytest.raises(EmergencyStop):
        asyncio.run(run_cesdt_async(**DAY, rig=load_rig("mock"), store=store, progress=False,
                                    observers=[stop], on_controller=controllers.append,
                                    run_id="d1", launch=LAUNCH))
    store.close()
    return db


@pytest.mark.parametrize(("args", "named"), [
    (["--households", "13"], "--households 13"), (["--seed", "9"], "--seed 9"),
    (["--generating", "0.7"], "--generating 0.7"), (["--speed", "1440"], "--speed 1440"),
    (["--rig", "lab3"], "--rig lab3"), (["scenario2"], "SCENARIO scenario2"),
    (["--ledger", "evm"], "--ledger evm")])
def test_a_conflicting_argument_is_refused_in_one_line(
        stopped_day: Path, args: list[str], named: str) -> None:
    result = runner.invoke(app, ["run", *args, "--resume", "d1", "--db", str(stopped_day)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"error: {named}: conflicts with run d1"), result.stderr
    assert Store(stopped_day, readonly=True).run("d1")["status"] == "aborted"  # untouched


def test_a_community_option_on_a_scenario_file_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "scenario2", "--seed", "4", "--db",
                                 str(tmp_path / "x.db")])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: --seed 4: applies to a community day (cesdt) "
                                     "only, not to scenario scenario2")


def test_resume_by_id_alone_appears_once_in_the_runs_and_figures(
        stopped_day: Path, reference: dict[str, Any], tmp_path: Path) -> None:
    from testbed.report.figures import list_runs
    from testbed.report.html import write_report

    result = runner.invoke(app, ["run", "--resume", "d1", "--db", str(stopped_day),
                                 "--json", "--quiet"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["run_id"] == "d1" and out["resumed_from_interval"] == 3
    assert "run d1 (finished)" in result.stderr
    assert "1 aborted interval(s)" in result.stderr
    listed = runner.invoke(app, ["runs", "--db", str(stopped_day), "--json"])
    assert [r["id"] for r in json.loads(listed.stdout)] == ["d1"]
    store = Store(stopped_day)
    try:
        _same_day(store, "d1", reference)
        assert [r["id"] for r in list_runs(store)] == ["d1"]
        assert [r["idx"] for r in store.rows("intervals", "d1")] == list(range(24))
        n = store.on_disk("d1")
        assert n["intervals"] == 24 and n["readings"] == 24 * 60 * 10  # each hour once
        assert n["aborted_intervals"] == 1 and n["aborted_readings"] == 30 * 10
    finally:
        store.close()
    page = write_report(stopped_day, "d1", tmp_path / "report").read_text()
    assert page.count("d1") >= 1 and "Fig. 10" in page
    verify = runner.invoke(app, ["ledger", "verify", str(stopped_day)])
    assert verify.exit_code == 0, verify.output


def test_a_day_that_no_longer_matches_its_ledger_is_refused(
        stopped_day: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The day is recomputed on resume: were its bills different now (the code changed),
    the first hour whose transfers differ from the block's is named, nothing written."""
    from contracts.settlement import Transfer
    from testbed.ledger.community_records import Transfers

    real = Transfers.hour

    def one_more(self: Transfers, hour: int, owed: Any) -> tuple[Transfer, ...]:
        out = real(self, hour, owed)
        return tuple(Transfer(t.source, t.target, t.amount + (hour == 1), t.memo)
                     for t in out)

    monkeypatch.setattr(Transfers, "hour", one_more)
    store = Store(stopped_day)
    try:
        with pytest.raises(InputError, match="the transfers of hour 1 on the ledger are not "
                                             "those of the day recomputed"):
            run_cesdt(**DAY, rig=load_rig("mock"), store=store, progress=False, resume="d1")
        assert store.run("d1")["status"] == "aborted"
        assert len(store.aborted_intervals("d1")) == 1
    finally:
        store.close()


def test_a_community_option_on_a_market_resume_is_refused(tmp_path: Path) -> None:
    from testbed.config.scenario import load_scenario
    from testbed.run.runner import run_scenario

    db = tmp_path / "m.db"
    store = Store(db)
    with pytest.raises(EmergencyStop):
        asyncio.run(run_scenario(load_scenario("scenario1"), load_rig("mock"), store,
                                 run_id="m1", on_controller=lambda c: c.emergency_stop("x")))
    store.close()
    result = runner.invoke(app, ["run", "--resume", "m1", "--households", "5", "--db",
                                 str(db)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --households 5: conflicts with run m1")
    assert len(result.stderr.strip().splitlines()) == 1
