"""Issue 14 item 8: the terminal output fits 100 (and 80) columns without cutting a number,
failing checks are named, and DUT results are shown."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len
from rich.console import Console
from typer.testing import CliRunner

from testbed.cli.app import app
from testbed.config.rig import load_rig
from testbed.config.scenario import load_scenario
from testbed.ledger.store import Store
from testbed.report.terminal import fitted, render, summarise
from testbed.run.runner import run_scenario
from tests.test_dut import dut_rig

NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?%?")


def _summary(tmp_path: Path, scenario: str) -> dict[str, Any]:
    store = Store(tmp_path / f"{scenario}.db")
    try:
        out = asyncio.run(run_scenario(load_scenario(scenario), load_rig("mock"), store))
    finally:
        store.close()
    return summarise(out)


def _shown(summary: dict[str, Any], width: int) -> str:
    out = io.StringIO()
    render(summary, Console(file=out, width=width, color_system=None))
    return out.getvalue()


def _cells(h: dict[str, Any]) -> list[str]:
    """Every number of a household's row, as the table formats it."""
    return [f"{h['net_kwh']:+.2f}", f"{h['cleared_kwh']:+.3f}", f"{h['metered_kwh']:+.3f}",
            f"{h['deviation_pct']:+.3f}", f"{h['lab_metered_wh']:+.3f}",
            f"{h['grid_import_kwh']:.3f}", f"{h['grid_export_kwh']:.3f}",
            f"{h['net_aud']:+.3f}", f"{h['balance_before_eth']:.6f}",
            f"{h['balance_after_eth']:.6f}"]


@pytest.mark.parametrize("scenario", ["scenario1", "scenario2", "scenario3"])
def test_every_number_is_whole_at_100_and_80_columns(tmp_path: Path, scenario: str) -> None:
    summary = _summary(tmp_path, scenario)
    for width in (100, 80):
        text = _shown(summary, width)
        lines = text.splitlines()
        assert max(cell_len(line) for line in lines) <= width
        # the one ellipsis is the ledger head's hash, shortened on purpose
        assert [line for line in lines if "…" in line and "head " not in line] == []
        for h in summary["households"]:
            row = [line for line in lines if re.match(rf"[│┃]\s+{h['id']}\s+│", line)]
            shown = {n for line in row for n in NUMBER.findall(line)}
            missing = [c for c in _cells(h) if c not in shown]
            assert not missing, (width, h["id"], missing)


def test_tables_split_only_when_they_must() -> None:
    cols = [("id", "right"), *((f"column {i}", "right") for i in range(8))]
    rows = [["1", *(f"{-1234.567891 * i:+.6f}" for i in range(8))]]
    assert len(fitted("t", cols, rows, 200)) == 1
    parts = fitted("t", cols, rows, 60)
    assert len(parts) > 1 and all(p.columns[0].header == "id" for p in parts)
    for p in parts:
        out = io.StringIO()
        Console(file=out, width=60, color_system=None).print(p)
        assert max(cell_len(line) for line in out.getvalue().splitlines()) <= 60
        assert "…" not in out.getvalue()


def test_failing_checks_are_named_and_dut_results_shown(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "scenario2", "--rig", str(dut_rig(tmp_path, 1.05)),
                                      "--db", str(tmp_path / "d.db"), "--quiet"])
    assert result.exit_code == 1, result.output
    assert "Devices under test" in result.stdout
    assert "household 1 BMS energy change" in result.stdout and "FAIL" in result.stdout
    failed = [line for line in result.stderr.splitlines() if line.startswith("  FAIL ")]
    assert failed and all("interval 0 DUT: household 1 " in line for line in failed)
    assert re.search(rf"{len(failed)} validation check\(s\) failed:", result.stderr)


def test_the_community_day_fits_80_columns(tmp_path: Path) -> None:
    from testbed.run.community_day import render_cesdt, run_cesdt

    store = Store(tmp_path / "c.db")
    summary = run_cesdt(households=14, generating=0.5, seed=3, rig=load_rig("mock"),
                        store=store, progress=False)
    store.close()
    for width in (100, 80):
        out = io.StringIO()
        render_cesdt(summary, Console(file=out, width=width, color_system=None))
        lines = out.getvalue().splitlines()
        assert max(cell_len(line) for line in lines) <= width
        assert not any("…" in line for line in lines)
        for row in summary["hourly"]:
            assert any(f"{row['pv_kw']:.2f}" in line and line.split()[1] == str(row["hour"])
                       for line in lines), row
