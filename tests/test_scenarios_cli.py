"""Each paper scenario end to end through the CLI, on the built-in mock rig."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contracts import ledger as rules
from testbed.cli.app import app
from testbed.ledger.store import Store

runner = CliRunner()

EXPECTED = {  # scenarios.md, "Expected"
    "scenario1": {"clearing_price": 0.17, "method": 1, "volume_kwh": 10.2,
                  "self_sufficiency": "80.31", "community_net_aud": -0.661},
    "scenario2": {"clearing_price": 0.16, "method": 2, "volume_kwh": 12.7,
                  "self_sufficiency": "94.49", "community_net_aud": -0.103},
    "scenario3": {"clearing_price": None, "method": None, "volume_kwh": 0.0,
                  "self_sufficiency": "0.00", "community_net_aud": -3.823},
}


def run_json(tmp_path: Path, *args: str) -> dict:  # type: ignore[type-arg]
    result = runner.invoke(app, ["run", *args, "--db", str(tmp_path / "t.db"), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_scenario_figures(tmp_path: Path, name: str) -> None:
    out = run_json(tmp_path, name)
    exp = EXPECTED[name]
    iv = out["intervals"][0]
    assert iv["clearing_price"] == exp["clearing_price"] and iv["method"] == exp["method"]
    assert iv["volume_kwh"] == pytest.approx(exp["volume_kwh"], abs=1e-9)
    assert f"{out['self_sufficiency'] * 100:.2f}" == exp["self_sufficiency"]
    assert round(out["community_net_aud"], 3) == exp["community_net_aud"]
    assert out["ledger"]["blocks"] == 2 and len(out["ledger"]["head"]) == 64

    households = out["households"]
    assert len(households) == 10
    for h in households:
        # metered tracks the routed target (cleared trades + grid settlement) within 0.5 %
        target = h["cleared_kwh"] + h["grid_export_kwh"] - h["grid_import_kwh"]
        assert h["metered_kwh"] == pytest.approx(target, rel=0.005, abs=1e-6)
        assert h["within_tolerance"]
        # the ledger's balance change is the settlement, to the micro-ETH
        change_aud = (h["balance_after_eth"] - h["balance_before_eth"]) * 370
        assert change_aud == pytest.approx(h["net_aud"], abs=2 * 370e-6)
    # money is conserved exactly across all accounts (households and the grid)
    assert out["ledger"]["total_micro"] == 10_000 * sum(
        1 for h in households if h["net_kwh"] < 0)

    store = Store(tmp_path / "t.db")
    try:
        op = store.db["keys"].get((out["run_id"], "operator"))["public_key"]
        assert rules.verify_chain(store.blocks(out["run_id"]), op) is None
        assert store.run(out["run_id"])["status"] == "finished"
    finally:
        store.close()


def test_scenario3_matches_table6_per_household(tmp_path: Path) -> None:
    out = run_json(tmp_path, "scenario3")
    for h in out["households"]:
        assert h["net_aud"] == pytest.approx(h["paper_net_aud"], abs=5e-4)


def test_scenario2_oversell_is_settled_with_the_grid(tmp_path: Path) -> None:
    out = run_json(tmp_path, "scenario2")
    h5 = next(h for h in out["households"] if h["id"] == "5")
    assert h5["cleared_kwh"] == 3.0
    assert h5["metered_kwh"] == pytest.approx(2.3, abs=1e-5)
    assert h5["grid_import_kwh"] == pytest.approx(0.7, abs=1e-5)
    assert out["oversell_shortfall_kwh"] == pytest.approx(0.7, abs=1e-5)


def test_human_output_shows_paper_beside_ours(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "scenario1", "--db", str(tmp_path / "h.db")])
    assert result.exit_code == 0, result.output
    assert "0.170" in result.stdout and "80.31%" in result.stdout
    assert "-0.785" in result.stdout  # the paper's figure beside ours


def test_builtins_work_from_any_folder(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run([sys.executable, "-m", "testbed.cli", "run", "scenario2", "--json"],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["clearing_price"] == 0.16
    assert (tmp_path / "testbed.db").exists()  # default database in the working folder
    listing = subprocess.run([sys.executable, "-m", "testbed.cli", "scenarios"], cwd=tmp_path,
                             capture_output=True, text=True, env=env, timeout=60)
    assert "scenario1" in listing.stdout and "scenario3" in listing.stdout


def test_clear_command(tmp_path: Path) -> None:
    book = tmp_path / "book.json"
    book.write_text(json.dumps([
        {"id": "b1", "side": "buy", "energy_kwh": 2, "price": 0.3},
        {"id": "s1", "side": "sell", "energy_kwh": 2, "price": 0.1},
        {"id": "s2", "side": "sell", "energy_kwh": 1, "price": 0.5}]))
    result = runner.invoke(app, ["clear", str(book), "--alpha", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out == {"method": 1, "price": 0.2, "volume_kwh": 2.0,  # L 0.1, U 0.3
                   "fills": [{"seller": "s1", "buyer": "b1", "energy_kwh": 2.0}],
                   "rejected": ["s2"]}


@pytest.mark.parametrize("content, needle", [
    ([{"id": "a", "side": "buy", "energy_kwh": 1, "price": 1}, {"id": "b", "side": "sell",
      "energy_kwh": -2, "price": 1}], "order [1] field 'energy_kwh'"),
    ([{"id": "a", "side": "buy", "price": 1}], "order [0] field 'energy_kwh': missing"),
    ({"not": "a list"}, "must be a JSON list"),
])
def test_clear_rejects_malformed_books(tmp_path: Path, content: object, needle: str) -> None:
    book = tmp_path / "bad.json"
    book.write_text(json.dumps(content))
    result = runner.invoke(app, ["clear", str(book), "--json"])
    assert result.exit_code == 2
    assert needle in result.stderr


def test_bad_rig_and_scenario_files_name_the_key(tmp_path: Path) -> None:
    rig = tmp_path / "rig.toml"
    rig.write_text('name = "x"\ntime_scale = 60\npower_scale = -1\n[grid]\ndriver = "mock"\n'
                   '[[households]]\nid = "1"\n[households.pv]\ndriver="mock"\n'
                   '[households.battery]\ndriver="mock"\n[households.load]\ndriver="mock"\n'
                   '[households.meter]\ndriver="mock"\n[households.relay]\ndriver="mock"\n')
    result = runner.invoke(app, ["run", "scenario2", "--rig", str(rig),
                                 "--db", str(tmp_path / "x.db")])
    assert result.exit_code == 2
    assert "key 'power_scale'" in result.stderr and "must be > 0" in result.stderr

    sc = tmp_path / "sc.toml"
    sc.write_text(Path(__file__).resolve().parent.parent.joinpath(
        "rigs/scenarios/scenario2.toml").read_text().replace(
        'price = 0.16, offer_kwh = 3.0', 'price = "cheap"'))
    result = runner.invoke(app, ["run", str(sc), "--db", str(tmp_path / "y.db")])
    assert result.exit_code == 2
    assert "[households id=5] key 'price'" in result.stderr and "price" in result.stderr
    result = runner.invoke(app, ["run", "nonesuch", "--db", str(tmp_path / "z.db")])
    assert result.exit_code == 2 and "built-in" in result.stderr

    sc.write_text(sc.read_text().replace('price = "cheap"', 'price = 0.16, offer_kwh = 3.0')
                  .replace('"Australia/Sydney"', '"Mars/Olympus_Mons"'))
    result = runner.invoke(app, ["run", str(sc), "--db", str(tmp_path / "w.db")])
    assert result.exit_code == 2
    assert "profiles" in result.stderr and "timezone" in result.stderr
    assert "Mars/Olympus_Mons" in result.stderr
