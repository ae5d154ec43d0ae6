"""Recovery (issue 15 item 3), on the mock rig and the virtual clock (fast, deterministic):
a device that comes back is re-identified and its rig brought back onto the bus through
the checks of the start, the target energy it missed while off recorded (store and
report); it is judged on what it could follow, its shortfall settled with the grid on what
its meter measured. Scenario 2 is one interval, a day of 1,440 lab seconds on the mock rig."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.mock import devices
from testbed.config.rig import load_rig
from testbed.config.scenario import load_scenario
from testbed.ledger.chain import verify_run
from testbed.ledger.store import Store
from testbed.report.terminal import summarise
from testbed.run.runner import run_scenario

Gate = Callable[[Any], bool]  # the mock device -> True while it is to fail


def _silence(monkeypatch: pytest.MonkeyPatch, cls: type, methods: tuple[str, ...],
             household: str, failing: Gate) -> None:
    for name in methods:
        real = getattr(cls, name)

        async def call(self: Any, *args: Any, _real: Any = real) -> Any:
            if self.rig is self.plant.rigs[household] and failing(self):
                raise TimeoutError(f"household {household}: no reply")
            return await _real(self, *args)

        monkeypatch.setattr(cls, name, call)


def _between(start: float, end: float) -> Gate:
    return lambda dev: start <= dev.clock.now() < end


def _first(n: int) -> Gate:
    seen = {"n": 0}

    def gate(_dev: Any) -> bool:
        seen["n"] += 1
        return seen["n"] <= n
    return gate


def _refuse_once() -> Gate:
    calls = {"n": 0}

    def gate(dev: Any) -> bool:
        if dev.clock.now() < 12.0:
            return False
        calls["n"] += 1
        return calls["n"] == 1
    return gate


CASES: dict[str, tuple[type, tuple[str, ...], Callable[[], Gate]]] = {
    "meter silent 6 s": (devices.MockMeter, ("read",), lambda: _between(12.0, 18.0)),
    "meter misses its first 3 requests": (devices.MockMeter, ("read",), lambda: _first(3)),
    "battery silent 2 s": (devices.MockBattery, ("read", "set_power"),
                           lambda: _between(12.0, 14.0)),
    "a refused setting": (devices.MockPV, ("set_power",), _refuse_once),
}


async def _day(tmp: Path, case: str | None) -> tuple[Any, Store]:
    store = Store(tmp / "r.db")
    out = await run_scenario(load_scenario("scenario2"), load_rig("mock"), store,
                             run_id="r1")
    return out, store


@pytest.mark.parametrize("case", list(CASES))
async def test_each_rig_comes_back_and_the_run_passes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    cls, methods, gate = CASES[case]
    _silence(monkeypatch, cls, methods, "7", gate())
    out, store = await _day(tmp_path, case)
    summary = summarise(out)
    assert summary["status"] == "finished" and summary["validation"]["failed"] == []
    assert summary["tripped"] == {}, "every rig is on the bus at the day's end"
    assert verify_run(store, "r1") is None
    assert sum(out.balances.values()) == sum(out.opening.values())
    events = store.safety_events("r1")
    if case.startswith("meter"):
        left = [e for e in events if e["event"] == "rig_off_bus"]
        back = [e for e in events if e["event"] == "rig_back"]
        assert [e["household"] for e in left] == ["7"] and [e["household"] for e in back] \
            == ["7"], events
        assert back[0]["identity"] and back[0]["was"].startswith("meter")
        (entry,) = summary["readmitted"]
        assert entry["household"] == "7" and entry["off_s"] > 0
        # the target it missed while off: its routed energy's share of the time off
        routed_wh = out.intervals[0].targets_kwh["7"] * out.rig.energy_scale
        m = out.intervals[0].measurement
        assert entry["missed_wh"] == pytest.approx(float(routed_wh) * entry["off_s"]
                                                   / (m.end_s - m.start_s), rel=1e-3)
        # recorded with the interval in the store
        row = store.db.query("select details from intervals where run_id = 'r1'").__next__()
        assert json.loads(row["details"])["readmitted"]["7"]["off_s"] == entry["off_s"]
        # settled on what its meter measured: the shortfall is the grid's
        h7 = next(h for h in summary["households"] if h["id"] == "7")
        assert abs(h7["metered_kwh"]) < abs(float(out.intervals[0].targets_kwh["7"]))
    else:
        assert not [e for e in events if e["event"] == "rig_off_bus"]
        assert summary["readmitted"] == []


async def test_a_rig_that_left_for_what_its_instrument_said_stays_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not every departure is undone: a battery over its temperature stays off the bus."""
    reads = devices.MockBattery.read

    async def hot(self: devices.MockBattery) -> Any:
        r = await reads(self)
        if self.rig is self.plant.rigs["7"] and self.clock.now() >= 12.0:
            return r._replace(temperature_c=99.0)
        return r

    monkeypatch.setattr(devices.MockBattery, "read", hot)
    out, store = await _day(tmp_path, None)
    summary = summarise(out)
    assert list(summary["tripped"]) == ["7"] and summary["readmitted"] == []
    assert not [e for e in store.safety_events("r1") if e["event"] == "rig_back"]
