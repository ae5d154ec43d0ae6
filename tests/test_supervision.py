"""Supervision of every device (issue 15), on the mock rig (virtual clock, fast): a relay
board whose safe state cannot be confirmed never lets a run end as finished or exit 0, and
the grid node's loss stops the run cleanly, the interval recorded as aborted with what was
measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from drivers.mock import devices
from testbed.cli.app import app
from testbed.config.rig import load_rig
from testbed.config.scenario import load_scenario
from testbed.ledger.chain import verify_run
from testbed.ledger.store import Store
from testbed.run.controller import GridLost, SafeStateIncomplete
from testbed.run.runner import run_scenario


def _silent_relay_7(monkeypatch: pytest.MonkeyPatch) -> None:
    opens = devices.MockRelay.safe_state

    async def safe_state(self: devices.MockRelay) -> None:
        if self.rig is self.plant.rigs["7"]:
            raise TimeoutError("household 7 relay: no reply")
        await opens(self)

    monkeypatch.setattr(devices.MockRelay, "safe_state", safe_state)


async def test_an_unconfirmed_safe_state_is_never_a_finished_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _silent_relay_7(monkeypatch)
    store = Store(tmp_path / "r.db")
    with pytest.raises(SafeStateIncomplete) as caught:
        await run_scenario(load_scenario("scenario2"), load_rig("mock"), store, run_id="r1")
    assert caught.value.devices == ["household 7 relay: household 7 relay: no reply"]
    assert store.run("r1")["status"] == "failed"
    assert verify_run(store, "r1") is None


def test_the_command_line_exits_non_zero_naming_the_live_device(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _silent_relay_7(monkeypatch)
    result = CliRunner().invoke(app, ["run", "scenario2", "--db", str(tmp_path / "c.db")])
    assert result.exit_code == 4, result.output
    assert "household 7 relay" in result.output and "Traceback" not in result.output


async def test_grid_node_loss_stops_the_run_cleanly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = devices.MockGrid.read
    calls = {"n": 0}

    async def read(self: devices.MockGrid) -> Any:
        calls["n"] += 1
        if calls["n"] > 100:  # a hundred control periods in, the node goes silent
            raise TimeoutError("grid node: no reply")
        return await reads(self)

    monkeypatch.setattr(devices.MockGrid, "read", read)
    store = Store(tmp_path / "g.db")
    controllers: list[Any] = []
    with pytest.raises(GridLost, match="grid node lost"):
        await run_scenario(load_scenario("scenario2"), load_rig("mock"), store, run_id="g1",
                           on_controller=controllers.append)
    assert store.run("g1")["status"] == "aborted"
    events = store.safety_events("g1")
    aborted = next(e for e in events if e["event"] == "interval_aborted")
    assert "at the interval's end" not in aborted["reason"]  # noticed in the period
    assert len(aborted["metered_wh"]) == 10 and any(v != 0 for v in aborted["metered_wh"].values())
    assert events[-1]["event"] == "safe_state" and events[-1]["complete"]
    plant = controllers[0].bench.ctx.plant
    assert not any(r.relay_closed or r.pv.on or r.load.on for r in plant.rigs.values())
    assert verify_run(store, "g1") is None
