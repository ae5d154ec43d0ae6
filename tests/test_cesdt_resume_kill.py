"""A real-time community day stopped twice, Ctrl-C then kill -9, in a subprocess, and
resumed each time by its id alone: it ends with an uninterrupted day's money, to the
micro-unit, and ``testbed ledger verify`` passes. Wall time (about a minute), so serial.
A day killed after its last hour was sealed is finished by its resume (virtual time; in
a subprocess too, and about 10 s of CPU, so serial as well).
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from testbed.cli.app import app
from testbed.ledger.store import Store
from testbed.run import community_day
from tests.test_cesdt_resume import (  # noqa: F401 (reference: the fixture)
    DAY,
    _same_day,
    money,
    reference,
)
from tests.test_realtime import CLI, ENV, _run_id, cli

pytestmark = pytest.mark.serial
runner = CliRunner()

SPEED = "3600"  # an hour of the day in one lab second
TOLERANCE = "a rig's metered energy left the tolerance of its routed energy"


def _fast_rig(tmp_path: Path) -> Path:
    """The mock rig with a control period of 0.1 s: ten periods in each hour."""
    from rigs import builtin

    text = builtin("rigs")["mock"].read_text()
    lines = ["control_period_s = 0.1" if line.startswith("control_period_s") else line
             for line in text.splitlines()]
    rig = tmp_path / "fast.toml"
    rig.write_text("\n".join(lines) + "\n")
    return rig


def _hours(db: Path) -> int:
    """Sealed hours of the run on disk (0 while there is no run yet)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error:
        return 0
    try:
        return int(con.execute("select count(*) from intervals").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def _until_hours(run: subprocess.Popen[str], db: Path, hours: int) -> None:
    deadline = time.monotonic() + 120
    while _hours(db) < hours:
        assert run.poll() is None, run.communicate()[1]
        assert time.monotonic() < deadline, f"{hours} hours not sealed within 120 s"
        time.sleep(0.05)
    time.sleep(0.4)  # into the next hour


def test_a_day_ctrl_c_then_killed_resumes_to_the_uninterrupted_money(
        tmp_path: Path, reference: dict[str, Any]) -> None:  # noqa: F811
    rig = _fast_rig(tmp_path)
    db = tmp_path / "day.db"
    args = ["--households", str(DAY["households"]), "--generating", str(DAY["generating"]),
            "--seed", str(DAY["seed"])]
    first = subprocess.Popen([*CLI, "run", "cesdt", *args, "--rig", str(rig), "--speed",
                              SPEED, "--db", db.name, "--quiet"], env=ENV, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _until_hours(first, db, 3)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=60)
    rid = _run_id(db)
    assert first.returncode == 130, err
    assert f"resume: testbed run --resume {rid} --db {db.name}" in err.splitlines()[-1]

    second = subprocess.Popen([*CLI, "run", "--resume", rid, "--db", db.name, "--quiet"],
                              env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    _until_hours(second, db, 9)
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=10)
    sealed = _hours(db)

    last = cli("run", "--resume", rid, "--db", db.name, "--json", cwd=tmp_path)
    assert last.returncode == 0 or last.stderr.strip().endswith(TOLERANCE), last.stderr
    out = json.loads(last.stdout)
    assert out["run_id"] == rid and out["resumed_from_interval"] == sealed
    store = Store(db, readonly=True)
    try:
        causes = [(a["idx"], a["cause"]) for a in store.aborted_intervals(rid)]
        assert [c for _, c in causes] == ["signal", "killed"], causes
        assert causes[1][0] == sealed
        got = money(store, rid)
        for key in ("balances", "blocks", "ledger", "money", "trading", "classes", "hourly"):
            assert got[key] == reference[key], key
        assert store.run(rid)["status"] == "finished"
    finally:
        store.close()
    verify = cli("ledger", "verify", db.name, cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def test_a_day_on_the_emulated_rig_resumes_with_its_batteries_as_they_are(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        reference: dict[str, Any]) -> None:  # noqa: F811
    """The instruments (Modbus, SCPI on loopback) outlive the controller's failure, as a
    lab's do: the resumed day measures their batteries again (changed meanwhile) and ends
    with the money of an uninterrupted day."""
    from drivers.clock import RealClock
    from drivers.emulators.bench import EmulatedBench
    from testbed.config.rig import load_rig, rig_from_dict
    from testbed.ledger.chain import verify_run
    from testbed.run.community_day import run_cesdt_async
    from tests.test_cesdt_resume import _fail_at
    from tests.test_realtime import short_timeouts

    store = Store(tmp_path / "emu.db")
    async with EmulatedBench(load_rig("mock")) as emu:
        rig = rig_from_dict("emulated", short_timeouts(
            emu.rig_dict(time_scale=8640, control_period_s=0.1)))  # a day in 10 s
        with monkeypatch.context() as m:
            _fail_at(m, 5)
            with pytest.raises(RuntimeError, match="injected"):
                await run_cesdt_async(**DAY, rig=rig, store=store, progress=False,
                                      clock=RealClock(), run_id="e1")
        # While the controller was down, the batteries changed (charged by hand, say):
        # the resume must find them as they are now, not as the run last saw them.
        soc = {}
        for rid, r in emu.plant.rigs.items():
            r.battery.energy_wh = (0.3 + 0.05 * int(rid)) * r.battery.capacity_wh
            soc[rid] = r.battery.soc
        assert store.run("e1")["status"] == "failed"
        summary = await run_cesdt_async(**DAY, rig=rig, store=store, progress=False,
                                        clock=RealClock(), resume="e1")
    assert summary["resumed_from_interval"] == 5
    first: dict[str, float] = {}  # each battery's first reading after the resume
    rows = store.rows("readings", "e1")
    for row in rows:
        if row["interval"] >= 5 and row["soc"] is not None:
            first.setdefault(row["household"], row["soc"])
    # (a rig the loaded machine's deadlines took off the bus reads no SOC: not judged here)
    assert first, (len(rows), rows[:2], sorted({r["interval"] for r in rows}))
    for rid, value in first.items():  # as the bench has them now
        assert value == pytest.approx(soc[rid], abs=0.005), rid
    got = money(store, "e1")
    for key in ("balances", "blocks", "ledger", "money", "trading", "classes", "hourly"):
        assert got[key] == reference[key], key
    assert verify_run(store, "e1") is None
    store.close()


KILL_AFTER_LAST_HOUR = """
import asyncio, os, signal, sys
from testbed.config.rig import load_rig
from testbed.ledger.store import Store
from testbed.run import community_day
from tests.test_cesdt_resume import DAY, LAUNCH

real = community_day._DayRun.hour

def hour(self, index, measured):
    real(self, index, measured)
    if index == 23 and sys.argv[2] == "hour":  # the day's last block sealed: killed
        os.kill(os.getpid(), signal.SIGKILL)    # before the run is closed

def summarise(*args, **kwargs):  # the day run and the bench safe: killed while its
    os.kill(os.getpid(), signal.SIGKILL)  # summary is made, before the run is closed

community_day._DayRun.hour = hour
if sys.argv[2] == "summary":
    community_day.summarise = summarise
asyncio.run(community_day.run_cesdt_async(**DAY, rig=load_rig("mock"), store=Store(sys.argv[1]),
                                          progress=False, run_id="k1", launch=LAUNCH))
"""


def _printed(summary: dict[str, Any]) -> str:
    from rich.console import Console

    console = Console(record=True, width=100, force_terminal=False)
    community_day.render_cesdt(summary, console)
    return _anonymous(console.export_text(), summary["run_id"])


def _anonymous(text: str, run_id: str) -> str:
    """``text`` without what names the run: its id and its ledger's head (genesis names
    the run, so every block hash differs from one run to another)."""
    return re.sub(r"head [0-9a-f]{16}\.\.\.", "head HEAD...", text.replace(run_id, "RUN"))


@pytest.mark.parametrize(("point", "left"), [("hour", "running"), ("summary", "running")])
def test_a_day_killed_after_its_last_hour_is_finished_by_its_resume(
        tmp_path: Path, reference: dict[str, Any], point: str, left: str) -> None:  # noqa: F811
    """kill -9 once the 24th hour is sealed, before the run is closed, or while its
    summary is being made (the summary is written with the ``finished`` status, in one
    update: ``lifecycle.drive(summary=...)``): the run is left ``running``, without a
    summary, every hour on disk. ``testbed run --resume ID`` runs no hour, records no
    aborted hour (none was cut short), marks the day finished and prints the summary of
    the uninterrupted day; the ledger verifies. Break (the second case): write the status
    before the summary (the run was left ``finished`` without one, and refused)."""
    db = tmp_path / "k.db"
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_LAST_HOUR, str(db), point],
                            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store = Store(db, readonly=True)
    row = store.run("k1")
    assert (row["status"], row["summary"]) == (left, None)
    assert store.count("intervals", "k1") == 24 and store.aborted_intervals("k1") == []
    store.close()

    shown = runner.invoke(app, ["run", "--resume", "k1", "--db", str(db)])
    assert shown.exit_code == 0, shown.stderr
    resumed = runner.invoke(app, ["runs", "--db", str(db), "--json"])
    assert [(r["id"], r["status"]) for r in json.loads(resumed.stdout)] == [("k1", "finished")]
    closing = shown.stderr.strip().splitlines()[-1]
    assert closing.startswith("run k1 (finished)") and "aborted" not in closing, closing
    store = Store(db)
    try:
        assert store.aborted_intervals("k1") == []
        got = _same_day(store, "k1", reference)
        summary = json.loads(store.run("k1")["summary"])
        assert summary["status"] == "finished" and summary["resumed_from_interval"] == 24
        assert summary["bench"] == reference["bench"]
        # printed as the uninterrupted day's summary is, to the character (but the run)
        assert _anonymous(shown.stdout, "k1") == _printed(reference["summary"])
        assert got["ledger"]["total_micro"] == got["ledger"]["opening_micro"]
    finally:
        store.close()
    verify = runner.invoke(app, ["ledger", "verify", str(db)])
    assert verify.exit_code == 0, verify.output
