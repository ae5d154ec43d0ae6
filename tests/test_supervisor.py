"""The supervisor takes an overheating battery's rig off the bus; the run goes on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from drivers.clock import RealClock
from rigs import builtin
from testbed.config.rig import load_rig
from testbed.config.scenario import load_scenario
from testbed.ledger.chain import verify_run
from testbed.ledger.store import Store
from testbed.run.runner import run_scenario


async def test_hot_battery_trips_its_rig_only(tmp_path: Path) -> None:
    text = builtin("rigs")["mock"].read_text().replace(
        '[[households]]\nid = "7"\n',
        '[[households]]\nid = "7"\n[households.battery]\ntemperature_c = 52.0\n', 1)
    path = tmp_path / "hot.toml"
    path.write_text(text)
    events: list[tuple[str, dict]] = []  # type: ignore[type-arg]
    store = Store(tmp_path / "hot.db")
    out = await run_scenario(load_scenario("scenario2"), load_rig(str(path)), store,
                             observers=[lambda t, p: events.append((t, p))])
    assert out.status == "finished"
    tripped = out.intervals[0].measurement.tripped
    assert list(tripped) == ["7"] and "52.0 °C" in tripped["7"] and "45 °C" in tripped["7"]
    assert any(t == "safety" and p.get("event") == "rig_off_bus" and p["household"] == "7"
               for t, p in events)
    # ... and the same events are on disk, in order, for whoever reads the run afterwards
    logged = store.safety_events(out.run_id)
    kinds = [e["event"] for e in logged]
    assert "rig_off_bus" in kinds and kinds[-1] == "safe_state"
    assert next(e for e in logged if e["event"] == "rig_off_bus")["household"] == "7"
    # household 7 sold 7.5 kWh it could not deliver: the grid supplied it, at import
    h7 = next(h for h in out.intervals[0].settlement.households if h.id == "7")
    assert float(h7.metered_kwh) < 0.1 and float(h7.grid_import_kwh) > 7.4
    assert verify_run(store, out.run_id) is None
    assert sum(out.balances.values()) == sum(out.opening.values())


async def test_a_second_cancel_during_safe_state_still_opens_every_relay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that gives up on a slow stop cancels again: the safe state must still land
    and the run's status be written."""
    from drivers.mock import devices

    slow_open = devices.MockRelay.safe_state

    async def slow(self: devices.MockRelay) -> None:
        await asyncio.sleep(0.3)  # a relay board that answers slowly
        await slow_open(self)

    monkeypatch.setattr(devices.MockRelay, "safe_state", slow)
    store = Store(tmp_path / "cancel.db")
    controllers: list = []  # type: ignore[type-arg]
    task = asyncio.ensure_future(run_scenario(
        load_scenario("scenario2"), load_rig("mock"), store, run_id="c1",
        on_controller=controllers.append, clock=RealClock()))
    while not controllers:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    task.cancel()
    await asyncio.sleep(0.1)  # inside the safe state now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    plant = controllers[0].bench.ctx.plant
    assert not any(r.relay_closed for r in plant.rigs.values())
    assert not any(r.pv.on for r in plant.rigs.values())
    assert store.run("c1")["status"] == "aborted"


def test_preflight_refuses_a_run_naming_device_quantity_required_and_allowed(
        tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from testbed.cli.app import app

    text = builtin("rigs")["mock"].read_text().replace(
        '[[households]]\nid = "7"\n',
        '[[households]]\nid = "7"\n[households.pv]\nmax_power_w = 100\n', 1)
    rig = tmp_path / "small-pv.toml"
    rig.write_text(text)
    result = CliRunner().invoke(app, ["run", "scenario2", "--rig", str(rig),
                                      "--db", str(tmp_path / "p.db")])
    assert result.exit_code == 2
    line = next(x for x in result.stderr.splitlines() if "household 7 pv" in x)
    assert "power_w needs" in line and "allowed [0, 100] W" in line
    assert not (tmp_path / "p.db").exists() or Store(tmp_path / "p.db").runs() == []


def test_coarse_preflight_finds_what_the_full_one_finds() -> None:
    from testbed.run import preflight
    from testbed.run.runner import apply_speed, plans_for

    sc = load_scenario("scenario2")
    rig, _ = apply_speed(load_rig("mock"), "20")  # 4,320 control periods: sampled coarser
    intervals = [(0.0, sc.interval_hours, plans_for(sc))]
    coarse = preflight.check(rig, intervals)
    full = preflight.PREFLIGHT_STEPS_PER_DAY
    try:
        preflight.PREFLIGHT_STEPS_PER_DAY = 10**9
        fine = preflight.check(rig, intervals)
    finally:
        preflight.PREFLIGHT_STEPS_PER_DAY = full
    assert coarse and [(v.device, v.quantity) for v in coarse] == \
        [(v.device, v.quantity) for v in fine]
    for a, b in zip(coarse, fine, strict=True):
        assert a.required == pytest.approx(b.required, rel=1e-3)
    assert any("capacity_wh too small" in str(v) for v in coarse if v.quantity == "soc")


async def test_lost_meter_trips_only_its_rig_and_the_others_track_on_virtual_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real-time version (tests/test_realtime.py) cannot judge tracking on a loaded
    machine; on the virtual clock every other rig must stay within the rig's tolerance."""
    from drivers.mock import devices

    real_read = devices.MockMeter.read

    async def read(self: devices.MockMeter) -> Any:
        if self.name == "household 3 meter" and self.clock.now() > 400.0:
            raise ConnectionError("no reply")  # silent from a third of the day on
        return await real_read(self)

    monkeypatch.setattr(devices.MockMeter, "read", read)
    store = Store(tmp_path / "lost.db")
    out = await run_scenario(load_scenario("scenario2"), load_rig("mock"), store)
    iv = out.intervals[0]
    assert list(iv.measurement.tripped) == ["3"] and "meter lost" in iv.measurement.tripped["3"]
    others = [c for c in iv.checks if not c.name.endswith(" 3")
              and "->3 " not in c.name and "household 3 " not in c.name]
    assert others and all(c.passed for c in others), [c for c in others if not c.passed]
    assert verify_run(store, out.run_id) is None
    assert sum(out.balances.values()) == sum(out.opening.values())
