"""Issue 5 on emulated rigs: lost meters, SIGINT, SIGKILL and resume, in real time.

The emulators serve the same plant over real protocols; the controller runs in real time,
with the rig's time scale raised so a market day takes seconds of lab time. These tests need
wall time, so they run in the serial group (scripts/test.sh), one at a time; they wait for
states (a run on disk, a rig file written), never for a fixed time, and they do not judge how
well rigs track their targets, which depends on the machine's load: that is tested on the
virtual clock (tests/test_supervisor.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contracts import ledger as rules
from drivers.clock import RealClock
from drivers.emulators.bench import EmulatedBench
from testbed.config.rig import load_rig, rig_from_dict
from testbed.config.scenario import load_scenario
from testbed.ledger.chain import verify_run
from testbed.ledger.store import Store
from testbed.run.runner import run_scenario

pytestmark = pytest.mark.serial

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
CLI = [sys.executable, "-m", "testbed.cli"]


def short_timeouts(data: dict) -> dict:  # type: ignore[type-arg]
    for table in [data["grid"], *(t for h in data["households"] for t in h.values()
                                  if isinstance(t, dict))]:
        table["timeout_s"] = 0.6
    return data


async def test_lost_meter_takes_rig_off_bus_and_run_completes(tmp_path: Path) -> None:
    scenario = load_scenario("scenario2")
    async with EmulatedBench(load_rig("mock")) as emu:
        rig = rig_from_dict("emulated", short_timeouts(
            emu.rig_dict(time_scale=8640, control_period_s=0.5)))  # a day in 10 s
        store = Store(tmp_path / "drop.db")
        events: list[tuple[str, dict]] = []  # type: ignore[type-arg]

        async def drop_meter_later() -> None:
            # a third of the way into its day, by the energy it has drawn, not by the wall
            # clock: on a loaded machine the run may take seconds to start
            meter = emu.plant.rigs["3"].meter
            while meter.import_wh < 3.5 * rig.energy_scale / 3:
                await asyncio.sleep(0.05)
            emu.device("household 3 meter").faults.inject("no_reply")

        dropper = asyncio.create_task(drop_meter_later())
        out = await run_scenario(scenario, rig, store, clock=RealClock(),
                                 observers=[lambda t, p: events.append((t, p))])
        dropped = dropper.done()
        dropper.cancel()
        plant = emu.plant

    assert dropped, "household 3 never drew a third of its energy: the meter was not cut"

    assert out.status == "finished"
    iv = out.intervals[0]
    # Household 3 leaves the bus for its meter. (On a machine loaded beyond real time, a
    # healthy rig may also miss its deadlines and be taken off: correct, and not judged here.)
    assert "meter" in iv.measurement.tripped.get("3", ""), iv.measurement.tripped
    assert any(t == "safety" and p.get("event") == "rig_off_bus" and p["household"] == "3"
               for t, p in events)
    assert not plant.rigs["3"].relay_closed and not plant.rigs["3"].pv.on
    # household 3 (a buyer of 3.5 kWh) took part of it; it pays for what it bought, and the
    # grid met the rest of the community's trades with it
    h3 = next(h for h in iv.settlement.households if h.id == "3")
    assert -3.5 < float(h3.metered_kwh) < -0.5
    assert float(h3.market_aud) == pytest.approx(-3.5 * 0.16)
    failed = [c.name for c in iv.checks if not c.passed]
    assert any(" 3" in name for name in failed)  # household 3's own check fails
    op = store.db["keys"].get((out.run_id, "operator"))["public_key"]
    assert rules.verify_chain(store.blocks(out.run_id), op) is None
    assert sum(out.balances.values()) == sum(out.opening.values())


def start_emulator(tmp_path: Path, time_scale: int, *extra: str,
                   ) -> tuple[subprocess.Popen, Path]:  # type: ignore[type-arg]
    rig = tmp_path / "lab.toml"
    proc = subprocess.Popen([*CLI, "emulate", "mock", "--write-rig", str(rig), "--time-scale",
                             str(time_scale), *extra], env=ENV, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not rig.exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "emulator did not write its rig file"
        time.sleep(0.1)
    time.sleep(0.3)
    return proc, rig


def stop(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=ENV, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def wait_until_running(run: subprocess.Popen, db: Path, lab_s: float) -> None:  # type: ignore[type-arg]
    """Until the run is on disk as running and ``lab_s`` more seconds have passed, however
    long the process took to start on a loaded machine."""
    deadline = time.monotonic() + 60
    while True:
        assert run.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, "the run did not start within 60 s"
        if db.exists():
            with contextlib.suppress(sqlite3.Error):
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
                try:
                    if con.execute("select count(*) from runs where status = 'running'"
                                   ).fetchone()[0]:
                        break
                finally:
                    con.close()
        time.sleep(0.1)
    time.sleep(lab_s)


def test_sigint_leaves_every_output_off_and_relay_open(tmp_path: Path) -> None:
    emu, rig = start_emulator(tmp_path, time_scale=2880)
    try:
        run = subprocess.Popen([*CLI, "run", "scenario2", "--rig", str(rig), "--db", "r.db"],
                               env=ENV, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        wait_until_running(run, tmp_path / "r.db", 3.0)  # the day takes 30 s here
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=30)
        assert run.returncode == 130, err
        check = cli("rig", "check", str(rig), "--json", cwd=tmp_path)
        rows = json.loads(check.stdout)
        states = {r["device"]: r["state"] for r in rows}
        outputs = [s["output"] for s in states.values() if "output" in s]
        relays = [s["relay"] for s in states.values() if "relay" in s]
        assert len(outputs) == 30 and set(outputs) == {"off"}, states
        assert len(relays) == 10 and set(relays) == {"open"}, states
        runs = json.loads(cli("runs", "--db", "r.db", "--json", cwd=tmp_path).stdout)
        assert [r["status"] for r in runs] == ["aborted"]
    finally:
        stop(emu)


def test_sigkill_mid_interval_then_resume_gives_uninterrupted_balances(tmp_path: Path) -> None:
    expected = json.loads(cli("run", "scenario2", "--db", "ref.db", "--json",
                              cwd=tmp_path).stdout)
    emu, rig = start_emulator(tmp_path, time_scale=4320)
    try:
        run = subprocess.Popen([*CLI, "run", "scenario2", "--rig", str(rig), "--db", "k.db"],
                               env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        wait_until_running(run, tmp_path / "k.db", 5.0)  # mid-interval: the day takes 20 s
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
        runs = json.loads(cli("runs", "--db", "k.db", "--json", cwd=tmp_path).stdout)
        assert [r["status"] for r in runs] == ["running"]  # killed: nothing marked it
        resumed = cli("run", "scenario2", "--rig", str(rig), "--db", "k.db", "--resume",
                      runs[0]["id"], "--json", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        out = json.loads(resumed.stdout)
    finally:
        stop(emu)
    assert out["run_id"] == runs[0]["id"] and out["resumed_from_interval"] == 0
    assert out["ledger"]["blocks"] == 2  # genesis + the one interval, not doubled
    mine = {h["id"]: h["balance_after_eth"] for h in out["households"]}
    ref = {h["id"]: h["balance_after_eth"] for h in expected["households"]}
    assert mine.keys() == ref.keys()
    # Trades are the same; what settles with the grid follows the meters, which in real time
    # land near the routed energy rather than on it exactly (within the rig's 0.5 % tolerance
    # on a quiet machine). So each balance may differ by that deviation at the import tariff
    # (+1 µETH of rounding); the margin here is 4 x the tolerance, for a loaded machine.
    import_aud = 0.37  # scenario 2's import tariff (scenarios.md)
    for h in out["households"]:
        bound = 4 * 0.005 * abs(h["metered_kwh"]) * import_aud / 370 * 1e6 + 1
        diff = abs(round(mine[h["id"]] * 1e6) - round(ref[h["id"]] * 1e6))
        assert diff <= bound, (h["id"], mine[h["id"]], ref[h["id"]], bound)
    assert out["ledger"]["total_micro"] == expected["ledger"]["total_micro"]
    store = Store(tmp_path / "k.db")
    op = store.db["keys"].get((out["run_id"], "operator"))["public_key"]
    assert rules.verify_chain(store.blocks(out["run_id"]), op) is None
    assert verify_run(store, out["run_id"]) is None  # the derived rows too, across the kill
    assert store.db["trades"].count == 7  # scenario 2's fills, once


def _safe_on_the_wire(rig: Path, cwd: Path) -> None:
    """Every output off and every relay open, as the instruments report them."""
    rows = json.loads(cli("rig", "check", str(rig), "--json", cwd=cwd).stdout)
    states = {r["device"]: r["state"] for r in rows}
    assert {s["output"] for s in states.values() if "output" in s} == {"off"}, states
    assert {s["relay"] for s in states.values() if "relay" in s} == {"open"}, states


def test_a_second_sigterm_50_ms_after_the_first_is_absorbed(tmp_path: Path) -> None:
    """Issue 15: the second SIGTERM used to kill the process with 143; it is absorbed, the
    safe state completes once, the exit status is the documented 130 and the closing line
    says only what the read-back confirmed."""
    emu, rig = start_emulator(tmp_path, time_scale=2880)
    try:
        run = subprocess.Popen([*CLI, "run", "scenario2", "--rig", str(rig), "--db", "t.db"],
                               env=ENV, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        wait_until_running(run, tmp_path / "t.db", 2.0)
        run.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=30)
        assert run.returncode == 130, err
        # reported when it lands during the safe state; after it, the process is leaving
        assert "Traceback" not in err
        assert "every output off, every relay open (read back)" in err
        assert err.count("safe_state") <= 1  # the safe state once (its event, if printed)
        _safe_on_the_wire(rig, tmp_path)
    finally:
        stop(emu)


def _wait_until_caught(process: subprocess.Popen[str], sig: signal.Signals) -> None:
    """Until ``process`` catches ``sig`` (its bit in SigCgt of /proc/PID/status): the first
    moment Python code of the program runs, whatever the machine's load."""
    deadline = time.monotonic() + 60
    status = Path(f"/proc/{process.pid}/status")
    while time.monotonic() < deadline and process.poll() is None:
        caught = next(int(line.split()[1], 16) for line in status.read_text().splitlines()
                      if line.startswith("SigCgt:"))
        if caught & (1 << (sig - 1)):
            return
        time.sleep(0.005)
    raise AssertionError(f"the program never caught {sig.name}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("phase", ["start-up", "running"])
def test_a_signal_in_any_phase_ends_in_the_safe_state(tmp_path: Path, sig: signal.Signals,
                                                     phase: str) -> None:
    """SIGINT or SIGTERM at start-up (imports, files, pre-flight: nothing switched on yet)
    or once the run is on disk: exit 130, no traceback, and what the closing line claims
    holds on the wire."""
    emu, rig = start_emulator(tmp_path, time_scale=2880)
    try:
        run = subprocess.Popen([*CLI, "run", "scenario2", "--rig", str(rig), "--db", "p.db"],
                               env=ENV, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        if phase == "running":
            wait_until_running(run, tmp_path / "p.db", 0.0)
        else:  # loading: once the program's first handler is in (before it, the kernel's
            _wait_until_caught(run, sig)  # default ends any process, 143, no code of ours)
            time.sleep(0.1)
        run.send_signal(sig)
        _, err = run.communicate(timeout=60)
        assert run.returncode == 130, err
        assert "Traceback" not in err
        if phase == "running":
            assert f"stopped by {signal.Signals(sig).name}: every output off, every relay " \
                "open (read back)" in err
        _safe_on_the_wire(rig, tmp_path)
    finally:
        stop(emu)


def test_pace_9600_is_refused_with_the_link_budget(tmp_path: Path) -> None:
    """Issue 15 item 5, through the command line: the emulator's RTU line paced at 9,600
    baud cannot carry ten meters' exchanges in a 1 s period; pre-flight refuses the run
    before touching the bench, with the budget it computed (it used to run and fail 12
    checks without a warning)."""
    emu, rig = start_emulator(tmp_path, 2880, "--pace", "9600", "--control-period", "1.0")
    try:
        result = cli("run", "scenario2", "--rig", str(rig), "--db", "p.db", cwd=tmp_path)
        from drivers.bench.budget import line_loads, over_budget
        from drivers.registry import build_bench

        bench = build_bench(load_rig(str(rig)), RealClock())
        computed = over_budget(bench, 1.0)
        loads = line_loads(bench)
    finally:
        stop(emu)
    assert result.returncode == 2, result.stderr
    err = " ".join(result.stderr.split())
    assert "the links cannot carry this control period" in err and "Traceback" not in err
    assert len(computed) == 1 and computed[0] in err, (computed, err)
    # the meters' line: ten meters, 9,600 baud; its figure is printed as computed
    assert loads[0].baud == 9600 and len(loads[0].devices) == 10
    assert f"{loads[0].seconds * 1000:.1f} ms a control period" in err
    print(computed[0])  # the figure, for the report (pytest -s)


# -- issue 14 part A: stopped a minute into a real-time run ---------------------------------
# The mock rig at --speed 4320 runs scenario 2's day in 20 s of wall time in real time (a
# market minute is 14 ms): stopped a few seconds in, i.e. hours into the market day.

SPEED = "4320"


def _run_id(db: Path) -> str:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return str(con.execute("select id from runs").fetchone()[0])
    finally:
        con.close()


def _aborted(db: Path, rid: str) -> tuple[list[dict], int, float | None]:  # type: ignore[type-arg]
    """The run's aborted intervals, its aborted readings and the last one's lab time."""
    store = Store(db, readonly=True)
    try:
        rows = store.aborted_intervals(rid)
        n, last = store.db.execute("select count(*), max(t) from aborted_readings where "
                                   "run_id = ?", [rid]).fetchone()
        return rows, n, last
    finally:
        store.close()


def _trades(db: Path) -> list[tuple]:  # type: ignore[type-arg]
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("select seller, buyer, energy_kwh, price from trades "
                           "order by interval, seq").fetchall()
    finally:
        con.close()


def _same_trades_as_uninterrupted(out: dict, tmp_path: Path, db: Path) -> None:  # type: ignore[type-arg]
    """The resumed run's trades equal an uninterrupted run's (virtual time, same scenario);
    its balances follow its meters (see the SIGKILL test above for their bound)."""
    ref = json.loads(cli("run", "scenario2", "--db", "ref.db", "--json", "--quiet",
                         cwd=tmp_path).stdout)
    ref_trades = _trades(tmp_path / "ref.db")
    assert _trades(db) == ref_trades and len(ref_trades) == 7
    assert out["status"] == "finished" and out["resumed_from_interval"] == 0
    assert out["volume_kwh"] == ref["volume_kwh"]
    assert out["ledger"]["total_micro"] == ref["ledger"]["total_micro"]
    assert {h["id"]: h["cleared_kwh"] for h in out["households"]} == \
        {h["id"]: h["cleared_kwh"] for h in ref["households"]}


def _check_stopped(tmp_path: Path, db: Path, rid: str, stderr: str, cause: str,
                   reason: str) -> None:
    assert f"run {rid}" in stderr and f"resume: testbed run --resume {rid} --db " in stderr
    rows, n, last = _aborted(db, rid)
    assert [(r["idx"], r["cause"]) for r in rows] == [(0, cause)], rows
    assert reason in rows[0]["reason"]
    assert rows[0]["readings"] == n > 0 and last is not None
    # readings up to the stop, within one control period (1 s) and a margin for load
    assert rows[0]["lab_end_s"] - last <= 2.0, (rows[0]["lab_end_s"], last)
    assert f"1 aborted interval(s) with {n} readings" in stderr  # counted in the database


def test_sigint_a_minute_in_leaves_readings_and_reason_then_resume(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    run = subprocess.Popen([*CLI, "run", "scenario2", "--speed", SPEED, "--db", "c.db"],
                           env=ENV, cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    wait_until_running(run, db, 3.0)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    rid = _run_id(db)
    _check_stopped(tmp_path, db, rid, err, "signal", "stopped by SIGINT")
    resumed = cli("run", "--resume", rid, "--db", "c.db", "--json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    _same_trades_as_uninterrupted(json.loads(resumed.stdout), tmp_path, db)


def test_mqtt_estop_a_minute_in_leaves_readings_and_reason(tmp_path: Path) -> None:
    from tests.fixtures_mqtt import broker, mosquitto_available, publish

    if not mosquitto_available():
        pytest.skip("needs mosquitto, mosquitto_pub and mosquitto_sub")
    db = tmp_path / "m.db"
    with broker(tmp_path / "broker") as b:
        run = subprocess.Popen([*CLI, "run", "scenario2", "--speed", SPEED, "--db", "m.db",
                                "--mqtt", b.url], env=ENV, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until_running(run, db, 3.0)
            rid = _run_id(db)
            publish(b.port, f"testbed/{rid}/estop", "smoke at rack 3")
            _, err = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    assert run.returncode == 3, err
    assert f"e-stop: publish any message to testbed/{rid}/estop" in err
    _check_stopped(tmp_path, db, rid, err, "estop", "smoke at rack 3")


def test_kill_9_a_minute_in_leaves_readings_then_resume_records_why(tmp_path: Path) -> None:
    db = tmp_path / "k9.db"
    run = subprocess.Popen([*CLI, "run", "scenario2", "--speed", SPEED, "--db", "k9.db",
                            "--quiet"], env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    wait_until_running(run, db, 3.0)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=10)
    rid = _run_id(db)
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    n, last = con.execute("select count(*), max(t) from readings where run_id = ? and "
                          "interval = 0", [rid]).fetchone()
    con.close()
    assert n > 0  # on disk as they came: at most the period in progress was lost
    resumed = cli("run", "--resume", rid, "--db", "k9.db", "--json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    rows, moved, moved_last = _aborted(db, rid)
    assert [(r["cause"], r["readings"]) for r in rows] == [("killed", n)]
    assert "kill -9" in rows[0]["reason"] and (moved, moved_last) == (n, last)
    _same_trades_as_uninterrupted(json.loads(resumed.stdout), tmp_path, db)
