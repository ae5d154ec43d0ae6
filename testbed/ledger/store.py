"""The run database (SQLite through sqlite-utils): runs, intervals, results, ledger, keys.

One file holds everything about a run so a lab can carry it away and audit it. Each
trading interval is written in one transaction, run data and ledger block together, so a
crash leaves either the whole interval on disk or none of it.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from testbed import json_input
from testbed.errors import InputError


def _import_sqlite_utils() -> None:
    """Import sqlite-utils without numpy and pandas.

    sqlite-utils imports both whenever they are installed (pvlib brings them) only to map
    their scalar types to SQLite column types; the store never writes one. Those imports are
    most of the start-up of every command that opens a database, so the two are hidden while
    sqlite-utils loads (it then falls back as if they were absent) and visible straight after.
    """
    hidden = [m for m in ("numpy", "pandas") if m not in sys.modules]
    if "sqlite_utils" in sys.modules or not hidden:
        return
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` fail
    try:
        import sqlite_utils  # noqa: F401
    finally:
        for name in hidden:
            del sys.modules[name]


_import_sqlite_utils()
import sqlite_utils  # noqa: E402

SCHEMA_VERSION = 1  # PRAGMA user_version of a database this code writes


class DamagedDatabase(InputError):
    """A run database that cannot be trusted: not SQLite, truncated or corrupted, of a
    foreign schema or a newer version, or holding a row that does not parse. The message
    names the file (and the table, run and key of a bad row)."""

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
    "safety": ({"run_id": str, "at": str, "event": str, "body": str}, []),
    # --ledger evm...: the deployment (back-end, contract, parameters) and its events
    "evm": ({"run_id": str, "backend": str, "contract": str, "deploy_block": int,
             "body": str}, ["run_id"]),
    "evm_events": ({"run_id": str, "seq": int, "block": int, "name": str, "body": str},
                   ["run_id", "seq"]),
}

# -- issue 14 part A: a durable run --------------------------------------------------------
# Schema of a run written as it happens (testbed/run/lifecycle.py):
# * ``readings.interval``: the interval a reading belongs to (readings are written every
#   control period, before their interval commits);
# * ``aborted_intervals``: an interval cut short (signal, e-stop, fault, a killed process),
#   one row per attempt, with why and how many readings it had;
# * ``aborted_readings``: those readings, moved out of ``readings`` (which keeps only the
#   readings of committed intervals and of the one in progress, as reports expect);
# * ``events``: the run's status, order-book and clearing events as they happen.
# ADDED_COLUMNS are added by ALTER TABLE to a database written before them (for part B's
# migrations: fold into the schema version that introduces them).
ADDED_COLUMNS: dict[str, dict[str, type]] = {"readings": {"interval": int}}
SCHEMA["readings"][0].update(ADDED_COLUMNS["readings"])
SCHEMA.update({
    "aborted_intervals": ({"run_id": str, "idx": int, "attempt": int, "at": str, "cause": str,
                           "reason": str, "lab_start_s": float, "lab_end_s": float,
                           "readings": int, "body": str}, ["run_id", "idx", "attempt"]),
    "aborted_readings": ({**SCHEMA["readings"][0], "attempt": int}, []),
    "events": ({"run_id": str, "at": str, "topic": str, "body": str}, []),
})
PART_A_TABLES = frozenset({"aborted_intervals", "aborted_readings", "events"})
ABORT_CAUSES = ("signal", "estop", "fault", "killed")  # aborted_intervals.cause
EVENT_TOPICS = ("status", "orderbook", "clearing")  # kept in ``events`` (others have tables)
# -- end of issue 14 part A schema ---------------------------------------------------------


class Store:
    """A run database. ``readonly``: the file must exist and is opened read-only (SQLite
    ``mode=ro``), nothing is created or written; else the schema is created on a new or
    empty file. ``check``: ``"full"`` runs SQLite's ``quick_check`` over every page as well
    as the schema check (``"schema"``, cheap: done on every open). Raises
    :class:`DamagedDatabase` with one message for anything that is not a sound testbed
    database."""

    def __init__(self, path: str | Path, *, readonly: bool = False,
                 check: str = "schema") -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._depth = 0
        self._after: list[Callable[[], None]] = []
        where = str(self.path)
        if self.path.exists() and not self.path.is_file():
            raise DamagedDatabase(where, "not a database file (a directory?)")
        if readonly and not self.path.is_file():
            raise DamagedDatabase(where, "no such database")
        try:
            if readonly:
                conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                       check_same_thread=False)
            else:
                conn = sqlite3.connect(self.path, check_same_thread=False)
            self.db = sqlite_utils.Database(conn, execute_plugins=False)  # no plugin scan
            self._open(check)
        except DamagedDatabase:
            self.close()
            raise
        except (sqlite3.DatabaseError, OSError) as e:
            self.close()
            raise DamagedDatabase(where, f"not a sound SQLite database ({e})") from None

    def _open(self, check: str) -> None:
        where = str(self.path)
        tables = {r[0] for r in self.db.execute(
            "select name from sqlite_master where type = 'table'").fetchall()}
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise DamagedDatabase(where, f"schema version {version} is newer than this "
                                         f"testbed's {SCHEMA_VERSION}")
        if tables and "runs" not in tables:
            raise DamagedDatabase(where, "not a testbed run database (no 'runs' table; "
                                         f"tables: {', '.join(sorted(tables)[:5])})")
        if check == "full":
            bad = self.db.execute("PRAGMA quick_check").fetchall()
            if bad != [("ok",)]:
                raise DamagedDatabase(where, f"corrupted: {bad[0][0]}")
        for name, (columns, _pk) in SCHEMA.items():
            if name not in tables:
                continue
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({name})").fetchall()}
            missing = sorted(set(columns) - have - set(ADDED_COLUMNS.get(name, {})))
            if missing:
                raise DamagedDatabase(where, f"table {name!r} lacks column {missing[0]!r}: "
                                             "not this testbed's schema")
        if self.readonly:
            if not tables:
                raise DamagedDatabase(where, "empty: not a testbed run database")
            if set(SCHEMA) - tables - PART_A_TABLES:
                raise DamagedDatabase(where, "not a testbed run database (no table "
                                      f"{sorted(set(SCHEMA) - tables - PART_A_TABLES)[0]!r})")
            return
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        for name, (columns, pk) in SCHEMA.items():
            if name not in tables:
                self.db[name].create(columns, pk=pk or None)  # type: ignore[union-attr]
        self.db["readings"].create_index(["run_id", "household", "t"], if_not_exists=True)  # type: ignore[union-attr]
        self._add_columns(tables)
        if version < SCHEMA_VERSION:
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything written inside lands together or not at all.

        sqlite-utils 4 runs in autocommit mode, so ``with conn:`` alone would commit every
        insert on its own: ``atomic()`` opens a real transaction (savepoints when nested).
        Callbacks given to :meth:`on_commit` inside run once the outermost one committed.
        """
        self._depth += 1
        try:
            with self.db.atomic():
                yield
        except BaseException:
            self._depth -= 1
            if not self._depth:
                self._after.clear()
            raise
        self._depth -= 1
        if not self._depth:
            after, self._after = self._after, []
            for fn in after:
                fn()

    def on_commit(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once the current transaction has committed (now if there is none):
        what is recorded outside the database (the operator's head) never runs ahead of it."""
        if self._depth:
            self._after.append(fn)
        else:
            fn()

    def insert(self, table: str, rows: list[dict[str, Any]] | dict[str, Any]) -> None:
        """Insert ``rows`` (dicts keyed by the table's columns; a missing key is NULL) in one
        statement. Raises ``KeyError`` for a table or column the schema does not declare.

        A prepared ``executemany`` rather than sqlite-utils' ``insert_all``, which inspects
        every value for JSON: a mock day's 14,400 readings went from 0.2 s to 0.02 s.
        """
        rows = [rows] if isinstance(rows, dict) else rows
        if not rows:
            return
        columns = list(SCHEMA[table][0])
        unknown = {key for row in rows for key in row} - set(columns)
        if unknown:
            raise KeyError(f"table {table!r} has no column {sorted(unknown)[0]!r}")
        sql = (f"insert into [{table}] ({', '.join(f'[{c}]' for c in columns)}) "
               f"values ({', '.join('?' * len(columns))})")
        with self.db.atomic():  # one transaction (a savepoint inside the caller's)
            self.db.conn.executemany(sql, [tuple(map(row.get, columns)) for row in rows])

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
            try:
                txs = [json_input.loads(r["body"]) for r in self.db.query(
                    "select body from txs where run_id = ? and height = ? order by seq",
                    [run_id, b["height"]])]
            except (TypeError, ValueError, RecursionError):
                raise DamagedDatabase(f"{self.path} table txs, run {run_id}, block "
                                      f"{b['height']}", "a transaction is not JSON") from None
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

    # -- issue 14 part A: a durable run ------------------------------------------------

    def _add_columns(self, tables: set[str]) -> None:
        """ADDED_COLUMNS onto a database written before them (NULL in older rows)."""
        sql_type = {int: "INTEGER", float: "FLOAT", str: "TEXT"}
        for name, columns in ADDED_COLUMNS.items():
            if name not in tables:
                continue
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({name})").fetchall()}
            for column, kind in columns.items():
                if column not in have:
                    self.db.execute(f"alter table [{name}] add column [{column}] "
                                    f"{sql_type[kind]}")

    def _has(self, table: str) -> bool:
        return bool(self.db.execute("select 1 from sqlite_master where type = 'table' and "
                                    "name = ?", [table]).fetchone())

    def record_aborted_interval(self, run_id: str, index: int, reason: str, *, cause: str,
                                lab_start_s: float | None = None,
                                lab_end_s: float | None = None,
                                details: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record interval ``index`` of ``run_id`` as cut short, in one transaction: its
        readings so far (rows of ``readings`` with that interval) move to
        ``aborted_readings`` under a new attempt number, and a row of
        ``aborted_intervals`` says why. ``cause``: one of :data:`ABORT_CAUSES` (``signal``,
        ``estop``, ``fault``, ``killed``); ``reason``: the operator's words (the signal's
        name, the e-stop's reason, the fault); ``lab_start_s``/``lab_end_s``: lab seconds
        of the attempt; ``details``: JSON-ready extras (tripped rigs, metered Wh so far).
        Returns the row written (``readings``: how many moved). Raises ``ValueError`` for
        an unknown cause. Called by the run lifecycle and for faults (issue 15)."""
        if cause not in ABORT_CAUSES:
            raise ValueError(f"cause must be one of {', '.join(ABORT_CAUSES)}, got {cause!r}")
        columns = ", ".join(f"[{c}]" for c in SCHEMA["readings"][0])
        with self.transaction():
            attempt = self.db.execute(
                "select count(*) from aborted_intervals where run_id = ? and idx = ?",
                [run_id, index]).fetchone()[0]
            moved = self.db.execute(
                f"insert into aborted_readings ({columns}, [attempt]) select {columns}, ? "
                "from readings where run_id = ? and [interval] = ? order by rowid",
                [attempt, run_id, index]).rowcount
            self.db.execute("delete from readings where run_id = ? and [interval] = ?",
                            [run_id, index])
            row = {"run_id": run_id, "idx": index, "attempt": attempt,
                   "at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                   "cause": cause, "reason": reason, "lab_start_s": lab_start_s,
                   "lab_end_s": lab_end_s, "readings": moved,
                   "body": json.dumps(details or {}, default=str)}
            self.insert("aborted_intervals", row)
        return row

    def append_readings(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``readings`` rows committed without an fsync (``synchronous=NORMAL`` for
        this one commit, WAL mode): on disk against the process's death (kill -9) at once,
        against a power loss once the next fully synced commit (the interval's) lands. A
        control period's batch then costs no disk flush that would hold the control loop.
        Raises ``KeyError`` like :meth:`insert`."""
        if not rows:
            return
        if self._depth:  # inside a transaction: it decides
            self.insert("readings", rows)
            return
        self.db.execute("PRAGMA synchronous=NORMAL")
        try:
            self.insert("readings", rows)
        finally:
            self.db.execute("PRAGMA synchronous=FULL")

    def aborted_intervals(self, run_id: str) -> list[dict[str, Any]]:
        """The run's intervals cut short, in the order they were (rows of
        ``aborted_intervals``, ``body`` parsed)."""
        if not self._has("aborted_intervals"):
            return []
        return [{**r, "body": json.loads(r["body"] or "{}")} for r in self.db.query(
            "select * from aborted_intervals where run_id = ? order by rowid", [run_id])]

    def event_log(self, run_id: str) -> Callable[[str, dict[str, Any]], None]:
        """An event-bus observer that keeps the run's :data:`EVENT_TOPICS` events in the
        ``events`` table as they happen (safety events: :meth:`safety_log`)."""
        def observe(topic: str, payload: dict[str, Any]) -> None:
            if topic in EVENT_TOPICS:
                self.insert("events", {
                    "run_id": run_id, "topic": topic,
                    "at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                    "body": json.dumps(payload, default=str)})
        return observe

    def on_disk(self, run_id: str) -> dict[str, int]:
        """How many rows of each kind the database holds for ``run_id``, read back (for the
        closing message): intervals, readings, trades, blocks, safety events, events,
        aborted intervals and their readings."""
        counts = {"intervals": ("intervals", "run_id"), "readings": ("readings", "run_id"),
                  "trades": ("trades", "run_id"), "blocks": ("blocks", "run_id"),
                  "safety_events": ("safety", "run_id"), "events": ("events", "run_id"),
                  "aborted_intervals": ("aborted_intervals", "run_id"),
                  "aborted_readings": ("aborted_readings", "run_id")}
        return {key: self.db.execute(f"select count(*) from [{table}] where [{col}] = ?",
                                     [run_id]).fetchone()[0] if self._has(table) else 0
                for key, (table, col) in counts.items()}

    def close(self) -> None:
        db = getattr(self, "db", None)
        if db is not None:
            db.close()
