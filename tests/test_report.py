"""``testbed report``: a self-contained HTML page and real PNG plots for a scenario 2 run and
for a community day, figures beside the paper's, and clear errors for bad stored data."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from testbed.cli.app import app
from testbed.ledger.store import Store
from testbed.report.html import SummaryError, build_report
from testbed.run.runner import RunOutcome
from tests.web_conftest import community_day_run, community_day_summary, shared_scenario2

runner = CliRunner()


@pytest.fixture(scope="module")
def run2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunOutcome]:
    db = tmp_path_factory.mktemp("report") / "runs.db"
    return db, shared_scenario2(tmp_path_factory, db)


def _report(db: Path, run: str, out: Path) -> str:
    r = runner.invoke(app, ["report", run, "--db", str(db), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == str(out / "report.html")
    return (out / "report.html").read_text("utf-8")


def _inked(png: bytes) -> float:
    """Share of pixels that are not background: a plot, not an empty canvas."""
    img = imread(io.BytesIO(png), format="png")
    return float(np.mean(img[..., :3].min(axis=-1) < 0.9))


def _embedded(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"',
                                                     page)]


def _cells(page: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first``."""
    m = re.search(rf"<tr><td>{re.escape(first)}</td>(.*?)</tr>", page)
    assert m, first
    return re.findall(r"<td>(.*?)</td>", m.group(1))


def test_scenario2_report_has_plots_paper_figures_and_trades(
        run2: tuple[Path, RunOutcome], tmp_path: Path) -> None:
    db, out = run2
    page = _report(db, "latest", tmp_path)
    pngs = {p.name: p.read_bytes() for p in tmp_path.glob("*.png")}
    assert set(pngs) == {"power.png", "energy.png"}
    assert sorted(_embedded(page)) == sorted(pngs.values())  # self-contained
    for name, png in pngs.items():
        assert _inked(png) > 0.02, name
    assert imread(io.BytesIO(pngs["power.png"]), format="png").shape[1] > 900
    # Beside the paper: ours, the paper's, the difference.
    assert _cells(page, "clearing price") == ["0.16", "0.16", "+0"]
    assert _cells(page, "volume kwh")[:2] == ["12.7", "12.7"]
    # Every trade, with the seller's metered delivery beside the cleared energy.
    fills = out.intervals[0].clearing.fills
    assert page.count("<tr><td>0</td><td>") == len(fills) == 7
    assert f"<td>{fills[0].seller}</td><td>{fills[0].buyer}</td>" in page
    assert f"head <code>{out.ledger_head}</code>" in page
    assert f"{len(out.checks)} of {len(out.checks)} cleared-versus-metered" in page


def test_community_day_report_draws_fig5_and_fig10_from_the_summary(tmp_path: Path) -> None:
    db = tmp_path / "day.db"
    summary = community_day_run(db)
    page = _report(db, "communityday1", tmp_path / "out")
    pngs = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.png")}
    assert set(pngs) == {"community_power.png", "class_costs.png"}
    assert all(_inked(p) > 0.02 for p in pngs.values())
    assert len(_embedded(page)) == 2
    # Fig. 10 beside the paper at 50 % generating: 60.2 %, 19.6 %, 43.1 %.
    ours = summary["classes"]["omega1"]["cost_ratio"]
    row = _cells(page, "Ω1 (consume only)")
    assert row == ["31.50", "52.00", f"{ours:.1%}", "60.2%", f"{ours - 0.602:+.1%}"]
    assert _cells(page, "Ω2 (PV + battery)")[2:4] == ["20.4%", "19.6%"]
    assert _cells(page, "all")[3] == "43.1%"
    assert "with 50% of the homes generating" in page
    assert "This run has no ledger blocks." in page and "Cleared versus" not in page


def test_community_day_share_without_paper_figures_and_column_form(tmp_path: Path) -> None:
    db = tmp_path / "day.db"
    summary = community_day_summary(generating=0.3)
    rows = summary.pop("hourly")
    summary["hourly"] = {"demand": [r["demand_kw"] for r in rows],
                         "grid": [r["grid_kw"] for r in rows]}  # the simulation's own form
    community_day_run(db, summary=summary)
    store = Store(db)
    try:
        page, images = build_report(store, "communityday1")
    finally:
        store.close()
    assert set(images) == {"community_power.png", "class_costs.png"}
    assert "for 50 % and 70 % generating homes only" in page
    assert _cells(page, "all")[2:4] == [f"{41.7 / 102:.1%}", "–"]


def test_community_day_with_bench_rigs_and_its_own_paper_figures(tmp_path: Path) -> None:
    """What ``testbed run cesdt`` adds: rigs that played homes (routed vs metered energy)
    and its own reference ratios, which the report shows rather than its table's."""
    summary = community_day_summary(generating=0.3)
    summary["paper_fig10"] = {"omega1": {"ours": 0.61, "paper": 0.7}, "all": {"ours": 0.4,
                                                                             "paper": None}}
    summary["bench"] = {"rigs": [
        {"rig_household": "1", "home": "h1", "routed_kwh": 2.5, "metered_kwh": 2.49},
        {"rig_household": "2", "home": "h7", "routed_kwh": -1.25, "metered_kwh": -1.25}]}
    community_day_run(tmp_path / "day.db", summary=summary)
    page = _report(tmp_path / "day.db", "latest", tmp_path / "out")
    pngs = {p.name for p in (tmp_path / "out").glob("*.png")}
    assert pngs == {"community_power.png", "class_costs.png", "energy.png"}
    assert _cells(page, "Ω1 (consume only)")[3] == "70.0%"
    assert _cells(page, "all")[3] == "–"
    assert _cells(page, "1") == ["h1", "+2.500", "+2.490", "-0.0100"]
    assert _cells(page, "2") == ["h7", "-1.250", "-1.250", "+0.0000"]
    summary["bench"]["rigs"][1]["metered_kwh"] = None
    community_day_run(tmp_path / "bad.db", summary=summary)
    r = runner.invoke(app, ["report", "latest", "--db", str(tmp_path / "bad.db"),
                            "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2
    assert "summary.bench.rigs[1].metered_kwh: expected a number, got null" in \
        " ".join(r.output.split())


@pytest.mark.parametrize(("mutate", "where"), [
    (lambda s: s["hourly"][3].update(grid_kw="lots"), "summary.hourly[3].grid_kw"),
    (lambda s: s["hourly"][5].pop("hour"), "summary.hourly[5]: 'hour' is missing"),
    (lambda s: s["classes"]["omega2"].pop("cost_aud"),
     "summary.classes.omega2: 'cost_aud' is missing"),
    (lambda s: s.update(hourly="none"), "summary.hourly: expected a list"),
])
def test_malformed_summary_is_an_error_naming_the_field(tmp_path: Path, mutate: object,
                                                        where: str) -> None:
    summary = community_day_summary()
    mutate(summary)  # type: ignore[operator]
    community_day_run(tmp_path / "bad.db", "badday", summary=summary)
    r = runner.invoke(app, ["report", "badday", "--db", str(tmp_path / "bad.db"),
                            "--out", str(tmp_path / "out")])
    assert r.exit_code == 2
    assert f"run 'badday': {where}" in " ".join(r.output.split())
    assert not (tmp_path / "out").exists()  # nothing half-written
    with pytest.raises(SummaryError):
        store = Store(tmp_path / "bad.db")
        try:
            build_report(store, "badday")
        finally:
            store.close()


def test_run_without_data_unknown_run_and_missing_db(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    store = Store(db)
    with store.transaction():
        store.insert("runs", {"id": "cut", "scenario": "scenario2", "rig": "mock",
                              "mechanism": "dual_bidding", "status": "aborted",
                              "started_at": "2026-01-01T00:00:00+00:00", "finished_at": None,
                              "params": json.dumps({}), "summary": None})
    store.close()
    page = _report(db, "cut", tmp_path / "out")
    assert "committed no trading interval (status aborted)" in page
    assert list((tmp_path / "out").glob("*.png")) == []
    r = runner.invoke(app, ["report", "nosuch", "--db", str(db), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "no run 'nosuch'" in r.output
    r = runner.invoke(app, ["report", "latest", "--db", str(tmp_path / "none.db"),
                            "--out", str(tmp_path)])
    assert r.exit_code == 2 and "no such database" in r.output
