"""The run database (SQLite through sqlite-utils): runs, intervals, results, ledger, keys.

One file holds everything about a run so a lab can carry it away and audit it. Each
trading interval is written in one transaction, run data and ledger block together, so a
crash leaves either the whole interval on disk or none of it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

SCHEMA: dict[str, tuple[dict[str, type], list[str]]] = {
    "runs": ({"id": str, "scenario": str, "rig": str, "mechanism": str, "status": str,
              "started_at": str, "finished_at": str, "params": str, "summary": str,
              "ledger_height": int, "ledger_head": str}, ["id"]),
    "intervals": ({"run_id": str, "idx": int, "clearing_price": str, "method": int,
                   "volume_kwh": str, "details": str, "lab_start_s": float,
                   "lab_end_s": float}, ["run_id", "idx"]),
    "results": ({"run_id": str, "interval": int, "household": str, "body": str},
                ["run_id", "interval", "household"]),
    "trades": ({"run_id": str, "interval": int, "seq": int, "seller": str, "buyer": str,
                "energy_kwh": str, "price": str}, ["run_id", "interval", "seq"]),
    "readings": ({"run_id": str, "t": float, "household": str, "meter_net_wh": float,
                  "power_w": float, "pv_w": float, "load_w": float, "battery_w": float,
                  "soc": float}, []),
    "blocks": ({"run_id": str, "height": int, "interval": int, "prev_hash": str,
                "merkle_root": str, "hash": str, "signature": str}, ["run_id", "height"]),
    "txs": ({"run_id": str, "height": int, "seq": int, "body": str},
            ["run_id", "height", "seq"]),
    "keys": ({"run_id": str, "account": str, "public_key": str}, ["run_id", "account"]),
    "balances": ({"run_id": str, "account": str, "micro": int}, ["run_id", "account"]),
    "keystore": ({"run_id": str, "account": str, "private_key": str}, ["run_id", "account"]),
    "safety": ({"run_id": str, "at": str, "event": str, "body": str}, []),
    # --ledger evm...: the deployment (back-end, contract, parameters) and its events
    "evm": ({"run_id": str, "backend": str, "contract": str, "deploy_block": int,
             "body": str}, ["run_id"]),
    "evm_events": ({"run_id": str, "seq": int, "block": int, "name": str, "body": str},
                   ["run_id", "seq"]),
}


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.db = sqlite_utils.Database(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        for name, (columns, pk) in SCHEMA.items():
            if not self.db[name].exists():
                self.db[name].create(columns, pk=pk or None)  # type: ignore[union-attr]
        self.db["readings"].create_index(["run_id", "household", "t"], if_not_exists=True)  # type: ignore[union-attr]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything written inside lands together or not at all.

        sqlite-utils 4 runs in autocommit mode, so ``with conn:`` alone would commit every
        insert on its own: ``atomic()`` opens a real transaction (savepoints when nested).
        """
        with self.db.atomic():
            yield

    def insert(self, table: str, rows: list[dict[str, Any]] | dict[str, Any]) -> None:
        rows = [rows] if isinstance(rows, dict) else rows
        if rows:
            self.db[table].insert_all(rows)  # type: ignore[union-attr]

    def update_run(self, run_id: str, **fields: Any) -> None:
        self.db["runs"].update(run_id, fields)  # type: ignore[union-attr]

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.db["runs"].get(run_id))  # type: ignore[union-attr]

    def runs(self) -> list[dict[str, Any]]:
        return list(self.db.query("select * from runs order by started_at"))

    def blocks(self, run_id: str) -> list[dict[str, Any]]:
        """The run's chain with each block's transactions, as ``contracts.ledger`` expects."""
        out = []
        for b in self.db.query("select * from blocks where run_id = ? order by height",
                               [run_id]):
            txs = [json.loads(r["body"]) for r in self.db.query(
                "select body from txs where run_id = ? and height = ? order by seq",
                [run_id, b["height"]])]
            out.append({**b, "txs": txs})
        return out

    def safety_log(self, run_id: str) -> Callable[[str, dict[str, Any]], None]:
        """An event-bus observer that keeps the run's safety events (trips, e-stops, the safe
        state) on disk, each as it happens: what a lab reads after an incident."""
        def observe(topic: str, payload: dict[str, Any]) -> None:
            if topic == "safety":
                self.insert("safety", {
                    "run_id": run_id, "event": str(payload.get("event", "")),
                    "at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                    "body": json.dumps(payload, default=str)})
        return observe

    def safety_events(self, run_id: str) -> list[dict[str, Any]]:
        return [{"at": r["at"], **json.loads(r["body"])} for r in self.db.query(
            "select at, body from safety where run_id = ? order by rowid", [run_id])]

    def close(self) -> None:
        self.db.close()
