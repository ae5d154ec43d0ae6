"""Money never follows a bad reading: counter faults, disputed intervals, rated energy.

The rules here guard money: each was broken on purpose once to see its test fail.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import ledger as rules
from contracts.mechanism import Fill
from contracts.settlement import Tariff, settle
from drivers.roles import MeterReading
from testbed.ledger.chain import Ledger, verify_run
from testbed.ledger.store import Store
from testbed.run.controller import counter_fault
from testbed.run.runner import _dispute_txs

TARIFF = Tariff(Fraction("0.25"), Fraction("0.05"))
RATE = Fraction(370)


def meter(at: float, import_wh: float, export_wh: float = 0.0,
          resolution_wh: float = 0.0) -> MeterReading:
    return MeterReading(at, import_wh, export_wh, 0.0, 48.0, 0.0, resolution_wh)


# -- the counter rule ------------------------------------------------------------------------


def test_a_counter_may_move_as_far_as_the_rating_allows_and_no_further() -> None:
    prev = meter(10.0, 100.0)
    # 1,100 W for 1 s (plus one 1 s period of latency): at most 0.611 Wh
    assert counter_fault(prev, meter(11.0, 100.6), 1100.0, 1.0) is None
    jump = counter_fault(prev, meter(11.0, 100.7), 1100.0, 1.0)
    assert jump is not None and "jumped" in jump and "1100 W" in jump
    assert counter_fault(prev, meter(11.0, 1e7), None, 1.0) is None  # no rating: no bound


def test_a_counter_may_not_go_back_by_more_than_one_count() -> None:
    prev = meter(0.0, 100.0, 50.0, resolution_wh=1.0)
    assert counter_fault(prev, meter(1.0, 99.0, 50.0, resolution_wh=1.0), 1100, 1) is None
    back = counter_fault(prev, meter(1.0, 100.0, 48.0, resolution_wh=1.0), 1100, 1)
    assert back is not None and "export_wh went backwards from 50 to 48 Wh" in back


def test_an_unwrapped_rollover_is_one_small_step() -> None:
    from drivers.bench.modbus_devices import EnergyCounter

    c = EnergyCounter(rollover=10_000_000.0)
    values = [c.unwrap(raw) for raw in (9_999_990.0, 9_999_999.0, 3.0, 12.0)]
    assert values == [9_999_990.0, 9_999_999.0, 10_000_003.0, 10_000_012.0]
    assert c.unwrap(5.0) == 10_000_005.0  # a drop that is no wrap is passed on as read
    assert counter_fault(meter(0, 10_000_012.0), meter(1, 10_000_005.0), 1100, 1)


def _counter_fault_by_the_rule(prev: MeterReading, new: MeterReading, rated_w: float | None,
                               period_s: float) -> str | None:
    """The counter rule as written before its fast path (docs/performance.md): each
    counter in turn, backwards first, then the rating's bound."""
    slack = max(prev.resolution_wh, new.resolution_wh) + 1e-6
    elapsed = max(new.at - prev.at, 0.0)
    for name in ("import_wh", "export_wh"):
        step = getattr(new, name) - getattr(prev, name)
        if step < -slack:
            return f"{name} backwards"
        if rated_w is not None and step > rated_w * (elapsed + period_s) / 3600.0 + slack:
            return f"{name} jumped"
    return None


_wh = st.one_of(st.floats(-1e3, 1e3), st.sampled_from([0.0, 1e-6, -1e-6, float("nan")]))


@given(st.floats(0, 100), _wh, _wh, st.floats(0, 100), _wh, _wh,
       st.sampled_from([0.0, 0.5, 1.0]), st.one_of(st.none(), st.floats(0, 5000)))
def test_the_counter_rules_fast_path_judges_as_the_rule(
        t0: float, i0: float, e0: float, dt: float, di: float, de: float, res: float,
        rated: float | None) -> None:
    """``counter_fault`` answers the control loop's plausible case before its loop: it must
    find a fault exactly when the rule does, and the same one (NaN, ties, no rating)."""
    prev, new = meter(t0, i0, e0, res), meter(t0 + dt, i0 + di, e0 + de, res)
    expected = _counter_fault_by_the_rule(prev, new, rated, 1.0)
    got = counter_fault(prev, new, rated, 1.0)
    assert (got is None) == (expected is None), (got, expected)
    if got is not None and expected is not None:
        assert got.startswith(expected.split()[0]) and expected.split()[1][:4] in got


# -- settlement of a disputed household ------------------------------------------------------


def test_a_disputed_household_is_not_settled_and_its_fills_are_held() -> None:
    fills = [Fill("2", "1", Fraction(2), Fraction("0.19")),
             Fill("2", "3", Fraction(1), Fraction("0.19"))]
    metered = {"1": Fraction(0), "2": Fraction(3), "3": Fraction(-1)}
    s = settle(fills, metered, TARIFF, RATE, disputed={"1": "meter counter fault"})
    by_id = {h.id: h for h in s.households}
    assert by_id["1"].disputed == "meter counter fault"
    assert by_id["1"].grid_aud == 0 and by_id["1"].market_aud == 0
    assert s.held == (fills[0],)
    assert not [t for t in s.transfers if "1" in (t.source, t.target)]
    # the seller delivered 3 kWh: 1 sold and paid, 2 held (not fed in at the tariff too)
    assert by_id["2"].market_aud == Fraction("0.19")
    assert by_id["2"].grid_export_kwh == 0 and by_id["2"].grid_import_kwh == 0


# -- the ledger's own rules ------------------------------------------------------------------


def _ledger(tmp_path: Path) -> tuple[Store, Ledger]:
    store = Store(tmp_path / "d.db")
    store.insert("runs", {"id": "r1", "scenario": "t", "status": "running"})
    with store.transaction():
        led = Ledger.create(store, "r1", ["1", "2"], {"1": 10_000, "2": 10_000},
                            ratings={"1": Fraction(11), "2": Fraction(11)})
    return store, led


def _metered(household: str, kwh: str, hours: str = "24") -> dict[str, object]:
    return {"type": "metered", "household": household, "interval": 0, "energy_kwh": kwh,
            "hours": hours}


def test_the_ledger_refuses_metered_energy_beyond_rating_times_interval(
        tmp_path: Path) -> None:
    _, led = _ledger(tmp_path)
    draft = led.draft()
    draft.add([_metered("1", "-264")])  # 11 kW x 24 h: the most it can be
    with pytest.raises(rules.TxError, match=r"exceeds its rated 11 kW x 24 h = 264 kWh"):
        draft.add([_metered("2", "287999625.6")])
    with pytest.raises(rules.TxError, match="genesis only"):
        led.draft().add([{"type": "rating", "account": "1", "max_kw": "1000"}])


def test_a_dispute_keeps_the_escrow_across_blocks_until_resolved(tmp_path: Path) -> None:
    store, led = _ledger(tmp_path)
    draft = led.draft()
    buy = led.sign_order({"household": "1", "side": "buy", "energy_kwh": "1",
                          "price": "0.37"})
    assert draft.submit(buy) is None
    txs = _dispute_txs(0, {"1": "meter counter fault: import_wh went backwards"},
                       (Fill("2", "1", Fraction(1), Fraction("0.37")),), [buy],
                       draft.state.holds)
    assert txs[0]["orders"] == [rules.tx_hash(buy)]
    draft.add(txs)
    draft.release_escrow()  # nothing left to release: the escrow is frozen
    with store.transaction():
        led.seal(0, draft)
    assert verify_run(store, "r1") is None
    assert led.state.available("1") == 10_000 - 1_000  # still held in the next block
    assert led.state.disputes == [(1, 0, "1", "meter counter fault: import_wh went backwards")]
    later = led.draft()
    later.add([{"type": "resolve", "order": rules.tx_hash(buy),
                "reason": "operator: meter replaced, trade void"}])
    with store.transaction():
        led.seal(1, later)
    assert verify_run(store, "r1") is None and led.state.available("1") == 10_000


async def test_the_run_disputes_what_the_ledger_refuses(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger is the last line: with the controller's own checks switched off, energy
    beyond a rig's rating is still not settled."""
    import dataclasses

    from drivers.clock import VirtualClock
    from drivers.spec import Limits
    from testbed.config.rig import load_rig
    from testbed.config.scenario import load_scenario
    from testbed.run import controller
    from testbed.run.runner import run_scenario

    monkeypatch.setattr(controller, "counter_fault", lambda *a: None)
    monkeypatch.setattr(controller.Controller, "reading_problem", lambda *a: None)
    rig = load_rig("mock")
    h1 = rig.households[0]
    meter = dataclasses.replace(h1.devices["meter"], limits=Limits(max_power_w=1.0))
    rig = dataclasses.replace(rig, households=(
        dataclasses.replace(h1, devices={**h1.devices, "meter": meter}), *rig.households[1:]))
    store = Store(tmp_path / "r.db")
    out = await run_scenario(load_scenario("scenario2"), rig, store, clock=VirtualClock())
    iv = out.intervals[0]
    # 1 W lab at power scale 0.1 is 0.01 kW: 0.24 kWh a day, and household 1 moved 3 kWh
    assert iv.measurement.disputed["1"].startswith("the ledger refuses its metered energy: "
                                                   "metered -3")
    assert "exceeds its rated 1/100 kW x 24 h" in iv.measurement.disputed["1"]
    assert list(iv.measurement.disputed) == ["1"]
    assert out.balances["1"] == out.opening["1"]
    assert verify_run(store, out.run_id) is None
