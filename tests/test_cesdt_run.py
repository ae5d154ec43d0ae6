"""``run_cesdt`` on the mock rig, the day's ledger money, and ``testbed sweep cesdt``."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from fractions import Fraction as F
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from contracts.numbers import aud_to_micro
from contracts.settlement import GRID, apply
from testbed.cli.community import register
from testbed.community.day import simulate_day
from testbed.config.rig import load_rig
from testbed.errors import InputError
from testbed.ledger.chain import verify_run
from testbed.ledger.community_records import AUD_PER_ETH, DayBook, Transfers
from testbed.ledger.store import Store
from testbed.run.community_day import render_cesdt, run_cesdt, run_cesdt_async
from testbed.run.controller import Controller, EmergencyStop


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Store]:
    """14 homes (10 on the mock rig's racks, 4 simulated), half generating."""
    store = Store(tmp_path_factory.mktemp("cesdt") / "t.db")
    events: list[str] = []
    summary = run_cesdt(households=14, generating=0.5, seed=3, rig=load_rig("mock"),
                        store=store, progress=False, observers=[lambda t, p: events.append(t)])
    summary["_events"] = events
    return summary, store


def test_run_summary_has_the_keys_the_report_reads(run: tuple[dict[str, Any], Store]) -> None:
    s, store = run
    assert s["scenario"] == "cesdt" and s["households"] == 14 and s["generating"] == 0.5
    assert s["seed"] == 3 and set(s["classes"]) == {"omega1", "omega2", "all"}
    for c in s["classes"].values():
        assert set(c) == {"cost_aud", "grid_only_cost_aud", "cost_ratio"}
    assert [h["hour"] for h in s["hourly"]] == list(range(24))
    assert {"demand_kw", "grid_kw"} <= set(s["hourly"][12])
    row = store.run(s["run_id"])
    assert row["status"] == "finished" and row["mechanism"] == "cesdt"
    stored = json.loads(row["summary"])
    assert stored["classes"] == s["classes"] and stored["hourly"] == s["hourly"]
    assert store.db.execute("select count(*) from intervals where run_id = ?",
                            [s["run_id"]]).fetchone()[0] == 24
    assert {"status", "block", "readings"} <= set(s["_events"])


def test_run_seals_a_verifiable_ledger_that_conserves_money(
    run: tuple[dict[str, Any], Store],
) -> None:
    s, store = run
    led = s["ledger"]
    assert led["blocks"] == 25 and led["refused_orders"] == 0
    assert led["signed_orders"] == s["trading"]["requests"] + s["trading"]["offers"]
    assert led["conserved"] and led["total_micro"] == led["opening_micro"]
    assert s["money"]["conserved"]
    assert verify_run(store, s["run_id"]) is None
    balances = {r["account"]: r["micro"] for r in store.db.query(
        "select * from balances where run_id = ?", [s["run_id"]])}
    assert balances[GRID] == led["grid_micro"]
    # The grid's micro-units are the homes' exact day bills, rounded once per pair.
    paid = F(s["money"]["households_paid_aud"])
    assert abs(balances[GRID] - aud_to_micro(paid, AUD_PER_ETH)) <= 2 * 14


def test_run_routes_the_first_homes_on_the_rig_and_meters_them(
    run: tuple[dict[str, Any], Store],
) -> None:
    s, store = run
    b = s["bench"]
    assert b["homes_on_rig"] == 10 and b["simulated_homes"] == 4
    assert [r["home"] for r in b["rigs"]] == [f"h{i}" for i in range(1, 11)]
    assert b["within_tolerance"] and not b["tripped"]
    for r in b["rigs"]:
        assert r["metered_kwh"] == pytest.approx(r["routed_kwh"], abs=0.01)
    assert store.db.execute("select count(distinct household) from readings where run_id = ?",
                            [s["run_id"]]).fetchone()[0] == 10


def test_render_prints_classes_beside_the_paper(run: tuple[dict[str, Any], Store]) -> None:
    console = Console(record=True, width=140)
    render_cesdt(run[0], console)
    text = console.export_text()
    assert "omega2" in text and "paper (Fig. 10)" in text and "0.602" in text


def test_an_emergency_stop_leaves_the_bench_safe_and_the_run_aborted(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    events: list[dict[str, Any]] = []

    def stop_at_once(controller: Controller) -> None:
        controller.emergency_stop("test")

    with pytest.raises(EmergencyStop):
        asyncio.run(run_cesdt_async(
            households=3, generating=0.5, seed=1, rig=load_rig("mock"), store=store,
            progress=False, on_controller=stop_at_once,
            observers=[lambda t, p: events.append(p) if t == "safety" else None]))
    (row,) = store.runs()
    assert row["status"] == "aborted" and row["finished_at"]
    assert any(e.get("event") == "safe_state" and e["complete"] for e in events)


def test_bad_input_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    with pytest.raises(InputError):
        run_cesdt(households=0, generating=0.5, seed=1, rig=load_rig("mock"), store=store,
                  progress=False)
    with pytest.raises(InputError):
        run_cesdt(households=5, generating=1.5, seed=1, rig=load_rig("mock"), store=store,
                  progress=False)
    assert store.runs() == []


@settings(max_examples=6, deadline=None)
@given(st.integers(2, 12), st.sampled_from([0.25, 0.5, 0.75]), st.integers(0, 10**6))
def test_the_days_transfers_conserve_money_to_the_micro_unit(households: int,
                                                             generating: float,
                                                             seed: int) -> None:
    book = DayBook()
    day = simulate_day(households, generating, seed, recorder=book)
    transfers = Transfers()
    opening = {h: 100_000 for h in day.ids} | {GRID: 0}
    balances = dict(opening)
    exact: dict[tuple[str, str], F] = defaultdict(F)
    micro: dict[tuple[str, str], int] = defaultdict(int)
    for hour, hb in enumerate(book.hours):
        for pair, aud in hb.owed.items():
            exact[pair] += aud
        moved = transfers.hour(hour, hb.owed)
        assert all(t.amount > 0 for t in moved)
        for t in moved:
            micro[(t.source, t.target)] += t.amount
        balances = apply(balances, moved)
    assert sum(balances.values()) == sum(opening.values())  # conserved exactly
    assert micro == {p: aud_to_micro(a, AUD_PER_ETH) for p, a in exact.items()
                     if aud_to_micro(a, AUD_PER_ETH)}
    for h in day.ids:  # each home's change is its exact cost, rounded once per pair
        pairs = sum(1 for p in exact if h in p)
        cost = aud_to_micro(day.household_cost[h], AUD_PER_ETH)
        assert abs(opening[h] - balances[h] - cost) <= pairs


def test_sweep_command_writes_tables_and_figures(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a second command, so typer keeps "sweep" as a subcommand
        """Unused."""

    out = tmp_path / "sweep"
    result = CliRunner().invoke(app, ["sweep", "cesdt", "--generating", "0.3,0.7",
                                      "--households", "8,12", "--replicates", "1",
                                      "--out", str(out), "--seed", "2", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert len(body["costs"]) == 2 * 2 * 3
    costs = pd.read_csv(out / "costs.csv")
    assert set(costs["class"]) == {"omega1", "omega2", "all"}
    assert len(pd.read_csv(out / "hourly.csv")) == 2 * 2 * 24
    for n in range(5, 11):
        (png,) = out.glob(f"fig{n}_*.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = CliRunner().invoke(app, ["sweep", "dual", "--out", str(out)])
    assert bad.exit_code == 2 and "unknown sweep" in bad.output
    bad = CliRunner().invoke(app, ["sweep", "cesdt", "--generating", "x", "--out", str(out)])
    assert bad.exit_code == 2


def test_cli_run_cesdt_json_and_ledger_verify(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from testbed.cli.app import app

    db = str(tmp_path / "cli.db")
    cli = CliRunner()
    result = cli.invoke(app, ["run", "cesdt", "--households", "15", "--generating", "0.5",
                              "--seed", "2", "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["scenario"] == "cesdt" and out["households"] == 15
    assert set(out["classes"]) == {"omega1", "omega2", "all"}
    assert len(out["hourly"]) == 24 and {"demand_kw", "grid_kw"} <= set(out["hourly"][0])
    verified = cli.invoke(app, ["ledger", "verify", db])
    assert verified.exit_code == 0 and "ok" in verified.stdout
    refused = cli.invoke(app, ["run", "cesdt", "--generating", "1.5", "--db", db])
    assert refused.exit_code == 2 and "--generating" in refused.stderr
