"""Helpers shared by the API, dashboard and report tests (imported, not a conftest plugin).

``scenario_db`` runs a built-in scenario on the mock rig into a database once and returns
the outcome, so each test module pays for one run (about 3 s on virtual time);
``community_day_run`` writes the run row a CE-SDT community day leaves.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from testbed.config.rig import load_rig
from testbed.config.scenario import load_scenario
from testbed.ledger.store import Store
from testbed.run.runner import RunOutcome, run_scenario

_SHARED: dict[Path, RunOutcome] = {}


def shared_scenario2(tmp_path_factory: Any, db: Path) -> RunOutcome:
    """A scenario 2 run copied into ``db``: the run itself happens once per test process
    (each xdist worker has its own base temp dir) and every module gets its own copy."""
    template = Path(tmp_path_factory.getbasetemp()) / "shared-scenario2" / "runs.db"
    if template not in _SHARED:
        template.parent.mkdir(exist_ok=True)
        _SHARED[template] = scenario_db(template, "scenario2")
    with sqlite3.connect(template) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    return _SHARED[template]


def scenario_db(db: Path, name: str = "scenario2") -> RunOutcome:
    """Run in a thread of its own: the caller's thread may already have an event loop
    (playwright's sync API runs one)."""
    def go() -> RunOutcome:
        store = Store(db)
        try:
            return asyncio.run(run_scenario(load_scenario(name), load_rig("mock"), store))
        finally:
            store.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(go).result()


def community_day_summary(generating: float = 0.5) -> dict[str, Any]:
    """What a community day run writes to ``runs.summary`` (issue 6's contract with the
    CE-SDT run): costs per class and hourly rows. The numbers are made up for the test but
    shaped like a day: PV at noon, demand peaks morning and evening, peers trade at noon."""
    hourly = []
    for h in range(24):
        pv = max(0.0, 12.0 * math.sin(math.pi * (h - 6) / 13)) if 6 <= h <= 19 else 0.0
        load = 8.0 + 6.0 * math.exp(-((h - 7.5) ** 2) / 3) + 9.0 * math.exp(-((h - 19) ** 2) / 4)
        demand = max(0.0, load - 0.6 * pv) + 1.5
        grid = max(0.0, demand - 0.5 * pv)
        hourly.append({"hour": h, "demand_kw": round(demand, 3), "grid_kw": round(grid, 3),
                       "p2p_kw": round(demand - grid, 3), "pv_kw": round(pv, 3),
                       "load_kw": round(load, 3)})
    classes = {"omega1": {"cost_aud": 31.5, "grid_only_cost_aud": 52.0, "cost_ratio": 31.5 / 52},
               "omega2": {"cost_aud": 10.2, "grid_only_cost_aud": 50.0, "cost_ratio": 0.204},
               "all": {"cost_aud": 41.7, "grid_only_cost_aud": 102.0, "cost_ratio": 41.7 / 102}}
    return {"households": 20, "generating": generating, "classes": classes, "hourly": hourly}


def community_day_run(db: Path, run_id: str = "communityday1",
                      summary: Any = None) -> dict[str, Any]:
    """Insert a finished community day (mechanism ``cesdt``) as its run writes it: no
    intervals or readings, its figures in ``runs.summary`` (``summary`` stored as given)."""
    summary = community_day_summary() if summary is None else summary
    store = Store(db)
    try:
        with store.transaction():
            store.insert("runs", {"id": run_id, "scenario": "cesdt", "rig": "model",
                                  "mechanism": "cesdt", "status": "finished",
                                  "started_at": "2026-11-15T00:00:00+00:00",
                                  "finished_at": "2026-11-15T00:00:05+00:00",
                                  "params": json.dumps({"households": 20}),
                                  "summary": json.dumps(summary)})
    finally:
        store.close()
    return summary
