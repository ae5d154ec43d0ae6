"""Disputes and the no-credit gate through whole runs on the EVM (issue 17): the contract
holds a disputed household's fills and leaves it unsettled, and a buyer refused at the gate
places nothing, exactly as the Python contract and the SQLite ledger do, so the run's EVM
checks (clearing, refusals, every balance) pass and ``ledger verify`` replays the chain.
Both back-ends: the embedded py-evm and a node (ganache on loopback)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from testbed.config.rig import load_rig
from testbed.config.scenario import load_scenario
from testbed.ledger.chain import verify_run
from testbed.ledger.evm import verify_evm
from testbed.ledger.store import Store
from testbed.run.runner import RunOutcome, run_scenario
from tests.evm_fixtures import evm_node  # noqa: F401  (a fixture)
from tests.test_no_credit import _zero_buyers


@pytest.fixture(params=["evm", "node"])
def ledger(request: pytest.FixtureRequest) -> str:
    """``--ledger``: the embedded py-evm, or the loopback node (started once)."""
    return "evm" if request.param == "evm" else "evm+" + request.getfixturevalue("evm_node")


def evm_checks(out: RunOutcome) -> list[Any]:
    return [c for c in out.checks if c.suite == "EVM" or "EVM" in c.suite]


def test_a_disputed_reading_is_held_on_the_chain_as_in_the_ledger(
        ledger: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Household 1's meter is rated 1 W: the ledger refuses its 3 kWh, the run disputes
    it, and the chain holds its fill and leaves it unsettled (the controller's own counter
    checks off, as in tests/test_disputes.py)."""
    from drivers.clock import VirtualClock
    from drivers.spec import Limits
    from testbed.run import controller

    monkeypatch.setattr(controller, "counter_fault", lambda *a: None)
    monkeypatch.setattr(controller.Controller, "reading_problem", lambda *a: None)
    rig = load_rig("mock")
    h1 = rig.households[0]
    meter = dataclasses.replace(h1.devices["meter"], limits=Limits(max_power_w=1.0))
    rig = dataclasses.replace(rig, households=(
        dataclasses.replace(h1, devices={**h1.devices, "meter": meter}), *rig.households[1:]))
    store = Store(tmp_path / "d.db")
    try:
        out = asyncio.run(run_scenario(load_scenario("scenario2"), rig, store,
                                       clock=VirtualClock(),
                                       ledger=ledger))
        iv = out.intervals[0]
        assert list(iv.measurement.disputed) == ["1"]
        assert iv.settlement.held and all("1" in (f.seller, f.buyer)
                                          for f in iv.settlement.held)
        checks = evm_checks(out)
        assert len(checks) == 3 and all(c.passed for c in checks), checks
        evm = out.extra["evm"]
        assert evm["after_micro"]["1"] == evm["before_micro"]["1"]  # not settled
        assert out.balances["1"] == out.opening["1"]
        names = [r[0] for r in store.db.execute(
            "select name from evm_events where run_id = ? order by seq", [out.run_id])]
        assert names.count("Disputed") == 1 and names.count("Held") == len(iv.settlement.held)
        assert verify_run(store, out.run_id) is None
        assert verify_evm(store, out.run_id) is None
    finally:
        store.close()


def test_buyers_refused_at_the_gate_place_nothing_on_the_chain(
        ledger: str, tmp_path: Path) -> None:
    """Scenario 2 with every buyer's opening balance at zero: refused at the gate (no
    credit), no buy order reaches the chain, no balance goes below zero there either."""
    from testbed.config.scenario import load_scenario as load

    sc = load(str(_zero_buyers(tmp_path)))
    store = Store(tmp_path / "z.db")
    try:
        out = asyncio.run(run_scenario(sc, load_rig("mock"), store,
                                       ledger=ledger))
        assert evm_checks(out) and all(c.passed for c in evm_checks(out))
        evm = out.extra["evm"]
        assert all(v >= 0 for a, v in evm["after_micro"].items() if a != "grid")
        assert evm["after_micro"] == {**{h: v for h, v in out.balances.items()}}
        placed = [r[0] for r in store.db.execute(
            "select body from evm_events where run_id = ? and name = 'OrderPlaced'",
            [out.run_id])]
        assert placed and all('"is_buy": false' in b for b in placed)
        assert verify_evm(store, out.run_id) is None
    finally:
        store.close()
