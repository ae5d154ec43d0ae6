"""The run database (SQLite): runs, intervals, results, ledger, keys.

One file holds everything about a run so a lab can carry it away and audit it. Each
trading interval is written in one transaction, run data and ledger block together, so a
crash leaves either the whole interval on disk or none of it.

The store speaks SQL to the connection itself (``Store.conn``, in autocommit mode: a write
outside :meth:`Store.transaction` commits alone, as sqlite-utils' ``execute`` does). The
tables it creates are those sqlite-utils created (the same ``CREATE`` text, checked by
tests/test_migrations.py). sqlite-utils itself, a fifth of a mock run's start-up, is
imported only for ``Store.db``, the connection through sqlite-utils for tests and tools.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import operator
import sqlite3
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testbed import json_input
from testbed.errors import InputError

if TYPE_CHECKING:
    import sqlite_utils


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


class DamagedDatabase(InputError):
    """A run database that cannot be trusted: not SQLite, truncated or corrupted, of a
    foreign schema or a newer version, or holding a row that does not parse. The message
    names the file (and the table, run and key of a bad row)."""


class NotFoundError(LookupError):
    """No row with that key (:meth:`Store.run`, :meth:`Store.update_run`)."""

SCHEMA: dict[str, tuple[dict[str, type], list[str]]] = {
    "runs": ({"id": str, "scenario": str, "rig": str, "mechanism": str, "status": str,
              "started_at": str, "finished_at": str, "params": str, "summary": str,
              "ledger_height": int, "ledger_head": str, "ledger_format": int}, ["id"]),
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
# Schema version 3 brings them to an older database (``_to_3``).
SCHEMA["readings"][0]["interval"] = int
SCHEMA.update({
    "aborted_intervals": ({"run_id": str, "idx": int, "attempt": int, "at": str, "cause": str,
                           "reason": str, "lab_start_s": float, "lab_end_s": float,
                           "readings": int, "body": str}, ["run_id", "idx", "attempt"]),
    "aborted_readings": ({**SCHEMA["readings"][0], "attempt": int}, []),
    "events": ({"run_id": str, "at": str, "topic": str, "body": str}, []),
})
ABORT_CAUSES = ("signal", "estop", "fault", "killed")  # aborted_intervals.cause
EVENT_TOPICS = ("status", "orderbook", "clearing")  # kept in ``events`` (others have tables)
# -- end of issue 14 part A schema ---------------------------------------------------------


# -- schema versions and migrations ---------------------------------------------------------
#
# ``PRAGMA user_version`` is the schema version. 0: no version, written by the releases up to
# a0e7c0a (08ef03f lacked ``runs.ledger_height``/``ledger_head``, ``balances`` and
# ``safety``; both lacked the EVM tables and kept private keys beside the ledger). 1: the key
# folder outside the database, the EVM tables. 2: ledger format 2 (genesis names its format;
# each block seals a digest of every derived row, ``testbed.ledger.chain``), and
# ``runs.ledger_format``. 3: a durable run (readings by interval, aborted intervals, the
# events table). To change the schema: add the column or table to SCHEMA, append a
# :class:`Migration` that brings a database of the previous version to the new one, and raise
# nothing else: opening runs every step above the file's version, in order, in one
# transaction.


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in db.execute(f"PRAGMA table_info([{table}])").fetchall()}


def _table_names(db: sqlite3.Connection) -> list[str]:
    return [r[0] for r in db.execute("select name from sqlite_master where type = 'table'")]


_SQL_TYPES = {str: "TEXT", int: "INTEGER", float: "REAL"}


def create_table_sql(name: str, columns: dict[str, type], pk: list[str]) -> str:
    """The ``CREATE TABLE`` of a SCHEMA table, as sqlite-utils 4 wrote it (``Table.create``
    with these columns and key): the text SQLite keeps in ``sqlite_master``."""
    lines = [f'   "{c}" {_SQL_TYPES[kind]}{" PRIMARY KEY" if pk == [c] else ""}'
             for c, kind in columns.items()]
    if len(pk) > 1:
        lines.append(f'   PRIMARY KEY ({", ".join(f"{chr(34)}{c}{chr(34)}" for c in pk)})')
    return f'CREATE TABLE "{name}" (\n' + ",\n".join(lines) + "\n)"


READINGS_INDEX = ("CREATE INDEX IF NOT EXISTS \"idx_readings_run_id_household_t\"\n"
                  '    ON "readings" ("run_id", "household", "t")')


def _add_missing(db: sqlite3.Connection) -> None:
    """Every table and column of SCHEMA that the file lacks (new columns NULL)."""
    tables = set(_table_names(db))
    for name, (columns, pk) in SCHEMA.items():
        if name not in tables:
            db.execute(create_table_sql(name, columns, pk))
            continue
        for column in [c for c in columns if c not in _columns(db, name)]:
            kind = {int: "INTEGER", float: "FLOAT", str: "TEXT"}[columns[column]]
            db.execute(f"alter table [{name}] add column [{column}] {kind}")


def _to_1(db: sqlite3.Connection) -> None:
    """Version 0 (a0e7c0a and before) -> 1: the missing tables and columns; a run without a
    recorded head (08ef03f) gets the head of its chain as it stands, which ``ledger verify``
    then checks like any other (a block cut before the migration goes unnoticed: that
    release recorded nothing to notice it by)."""
    _add_missing(db)
    db.execute("update runs set ledger_height = (select count(*) from blocks b where "
               "b.run_id = runs.id), ledger_head = (select hash from blocks b where "
               "b.run_id = runs.id order by height desc limit 1) where ledger_height is null")


def _to_3(db: sqlite3.Connection) -> None:
    """2 -> 3: a run written as it happens: ``readings.interval`` (NULL in older rows), the
    tables ``aborted_intervals``, ``aborted_readings`` and ``events``."""
    _add_missing(db)


def _to_2(db: sqlite3.Connection) -> None:
    """1 -> 2: ``runs.ledger_format``; the runs before it are of ledger format 1 (no derived
    rows sealed)."""
    _add_missing(db)
    db.execute("update runs set ledger_format = 1 where ledger_format is null")


@dataclass(frozen=True)
class Migration:
    """One step: ``apply`` takes a database of version ``to - 1`` to version ``to``."""

    to: int
    apply: Callable[[sqlite3.Connection], None]


MIGRATIONS: tuple[Migration, ...] = (Migration(1, _to_1), Migration(2, _to_2),
                                     Migration(3, _to_3))
SCHEMA_VERSION = MIGRATIONS[-1].to  # PRAGMA user_version of a database this code writes


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
        self.migrated_from: int | None = None  # the schema version migrated on open, if any
        self._depth = 0
        self._after: list[Callable[[], None]] = []
        self._db: sqlite_utils.Database | None = None  # made by the ``db`` property
        self._savepoints = itertools.count()
        where = str(self.path)
        if self.path.exists() and not self.path.is_file():
            raise DamagedDatabase(where, "not a database file (a directory?)")
        if readonly and not self.path.is_file():
            raise DamagedDatabase(where, "no such database")
        try:
            # autocommit (isolation_level None): transactions are opened by _atomic alone
            if readonly:
                self.conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro",
                                            uri=True, check_same_thread=False,
                                            isolation_level=None)
            else:
                self.conn = sqlite3.connect(self.path, check_same_thread=False,
                                            isolation_level=None)
            self._open(check)
        except DamagedDatabase:
            self.close()
            raise
        except (sqlite3.DatabaseError, OSError) as e:
            self.close()
            raise DamagedDatabase(where, f"not a sound SQLite database ({e})") from None

    def _open(self, check: str) -> None:
        where = str(self.path)
        tables = set(_table_names(self.conn))
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise DamagedDatabase(where, f"schema version {version} is newer than this "
                                         f"testbed's {SCHEMA_VERSION}: open it with the "
                                         "release that wrote it, or a later one")
        if tables and "runs" not in tables:
            raise DamagedDatabase(where, "not a testbed run database (no 'runs' table; "
                                         f"tables: {', '.join(sorted(tables)[:5])})")
        if check == "full":
            bad = self.conn.execute("PRAGMA quick_check").fetchall()
            if bad != [("ok",)]:
                raise DamagedDatabase(where, f"corrupted: {bad[0][0]}")
        if self.readonly and not tables:
            raise DamagedDatabase(where, "empty: not a testbed run database")
        if not self.readonly:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
        if not tables:
            with self._atomic():
                _add_missing(self.conn)
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version < SCHEMA_VERSION or set(SCHEMA) - tables:
            self.migrated_from = version
            self._migrate(version)
        if not self.readonly:
            self.conn.execute(READINGS_INDEX)

    def _migrate(self, version: int) -> None:
        """Bring a database of schema ``version`` to this code's, step by step in one
        transaction. A read-only store migrates a copy in memory: the file is never written
        (``ledger verify`` of an old database reads it as this code would write it)."""
        if self.readonly:
            memory = sqlite3.connect(":memory:", check_same_thread=False,
                                     isolation_level=None)
            self.conn.backup(memory)
            self.conn.close()
            self.conn, self._db = memory, None
        try:
            with self._atomic():
                for step in MIGRATIONS:
                    if step.to > version:
                        step.apply(self.conn)
                _add_missing(self.conn)  # a table lost at this version comes back empty
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise DamagedDatabase(str(self.path), f"cannot migrate schema version {version} "
                                  f"to {SCHEMA_VERSION}: {e}") from None

    @property
    def db(self) -> sqlite_utils.Database:
        """The connection through sqlite-utils (``sqlite_utils.Database``), made on first
        use: for tests and tools. The store's own methods never need it, so a run does not
        import sqlite-utils (with its click, dateutil and plugin machinery)."""
        if self._db is None:
            _import_sqlite_utils()
            import sqlite_utils

            self._db = sqlite_utils.Database(self.conn, execute_plugins=False)
        return self._db

    @contextmanager
    def _atomic(self) -> Iterator[None]:
        """A real transaction, or a savepoint inside one (sqlite-utils' ``atomic()``): on
        any exception everything written inside is rolled back and it propagates."""
        conn = self.conn
        if conn.in_transaction:
            name = f"store_{next(self._savepoints)}"
            conn.execute(f"SAVEPOINT {name}")
            try:
                yield
            except BaseException:
                if conn.in_transaction:  # an error may have ended the transaction itself
                    conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                    conn.execute(f"RELEASE SAVEPOINT {name}")
                raise
            conn.execute(f"RELEASE SAVEPOINT {name}")
            return
        conn.execute("BEGIN")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """The rows of a ``select``, each a dict by column name."""
        cursor = self.conn.execute(sql, params)
        keys = [d[0] for d in cursor.description]
        return [dict(zip(keys, row, strict=True)) for row in cursor]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything written inside lands together or not at all.

        The connection is in autocommit mode, so ``with conn:`` alone would commit every
        insert on its own: ``_atomic()`` opens a real transaction (savepoints when nested).
        Callbacks given to :meth:`on_commit` inside run once the outermost one committed.
        """
        self._depth += 1
        try:
            with self._atomic():
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

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]] | dict[str, Any],
               fixed: Mapping[str, Any] | None = None) -> None:
        """Insert ``rows`` (dicts keyed by the table's columns; a missing key is NULL) in one
        statement; ``fixed``: columns with one value for every row (a run's readings batch:
        its run and interval), given once rather than copied into each row. Raises
        ``KeyError`` for a table or column the schema does not declare.

        A prepared ``executemany`` rather than sqlite-utils' ``insert_all``, which inspects
        every value for JSON: a mock day's 14,400 readings went from 0.2 s to 0.02 s. (Bound
        by position from a tuple per row: sqlite3's binding by name from the dicts
        themselves measured slower.)
        """
        rows = [rows] if isinstance(rows, dict) else rows
        if not rows:
            return
        fixed = fixed or {}
        declared = SCHEMA[table][0]
        unknown = set().union(fixed, *rows) - set(declared)
        if unknown:
            raise KeyError(f"table {table!r} has no column {sorted(unknown)[0]!r}")
        varying = [c for c in declared if c not in fixed]
        columns = [*fixed, *varying]
        sql = (f"insert into [{table}] ({', '.join(f'[{c}]' for c in columns)}) "
               f"values ({', '.join('?' * len(columns))})")
        given = tuple(fixed.values())
        try:  # rows that name every column (the control loop's): picked in C
            pick = operator.itemgetter(*varying) if len(varying) > 1 else None
            params = [(*given, *pick(row)) for row in rows] if pick else None
        except KeyError:
            params = None
        if params is None:  # a missing key is NULL
            params = [(*given, *map(row.get, varying)) for row in rows]
        with self._atomic():  # one transaction (a savepoint inside the caller's)
            self.conn.executemany(sql, params)

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set ``fields`` (columns of ``runs``) of the run's row: :class:`NotFoundError` for
        an unknown id, ``KeyError`` for a column the schema does not declare."""
        unknown = set(fields) - set(SCHEMA["runs"][0])
        if unknown:
            raise KeyError(f"table 'runs' has no column {sorted(unknown)[0]!r}")
        if self.find_run(run_id) is None:
            raise NotFoundError(f"no run {run_id!r}")
        if fields:
            sets = ", ".join(f"[{c}] = ?" for c in fields)
            self.conn.execute(f"update runs set {sets} where id = ?", [*fields.values(), run_id])

    def run(self, run_id: str) -> dict[str, Any]:
        """The run's row; raises :class:`NotFoundError` for an unknown id."""
        row = self.find_run(run_id)
        if row is None:
            raise NotFoundError(f"no run {run_id!r}")
        return row

    def find_run(self, run_id: str) -> dict[str, Any] | None:
        """The run's row, or None."""
        rows = self._query("select * from runs where id = ?", [run_id])
        return rows[0] if rows else None

    def runs(self, *, newest_first: bool = False) -> list[dict[str, Any]]:
        """Every run's row, by start time (oldest first unless ``newest_first``)."""
        order = "started_at desc, rowid desc" if newest_first else "started_at"
        return self._query(f"select * from runs order by {order}")

    def running_on(self, rig: str) -> list[dict[str, Any]]:
        """``id`` and ``started_at`` of the runs recorded as running on rig ``rig``."""
        return self._query(
            "select id, started_at from runs where status = 'running' and rig = ?", [rig])

    def rows(self, table: str, run_id: str) -> list[dict[str, Any]]:
        """Every row of one run in ``table`` (a table of SCHEMA other than ``runs``), in
        key order (insertion order for a table without a key: readings, safety). Raises
        ``KeyError`` for a table the schema does not declare."""
        pk = SCHEMA[table][1]
        if table == "runs":
            raise KeyError("runs: use run() or runs()")
        order = ", ".join(f"[{c}]" for c in pk if c != "run_id") or "rowid"
        return self._query(f"select * from [{table}] where run_id = ? order by {order}",
                           [run_id])

    def count(self, table: str, run_id: str) -> int:
        """How many rows of ``table`` belong to the run (KeyError for an unknown table)."""
        column = "id" if table == "runs" else "run_id"
        if table not in SCHEMA:
            raise KeyError(f"no table {table!r}")
        return int(self.conn.execute(f"select count(*) from [{table}] where [{column}] = ?",
                                     [run_id]).fetchone()[0])

    def series(self, run_id: str, field: str, household: str | None = None,
               ) -> list[tuple[str, float, float | None, float | None]]:
        """``(household, t, field, power_w)`` of the run's readings in the order taken;
        ``field`` must be a column of ``readings`` (else ``KeyError``)."""
        if field not in SCHEMA["readings"][0] or field in ("run_id", "household"):
            raise KeyError(f"readings has no field {field!r}")
        sql = f"select household, t, [{field}], power_w from readings where run_id = ?"
        args: list[Any] = [run_id]
        if household is not None:
            sql += " and household = ?"
            args.append(household)
        return [tuple(r) for r in self.conn.execute(sql + " order by rowid", args).fetchall()]

    def block_summaries(self, run_id: str) -> list[dict[str, Any]]:
        """The run's block headers with ``txs``, the number of transactions of each."""
        return self._query(
            "select b.*, (select count(*) from txs t where t.run_id = b.run_id and "
            "t.height = b.height) as txs from blocks b where b.run_id = ? order by height",
            [run_id])

    def orphan_tx_height(self, run_id: str) -> int | None:
        """The lowest height of a transaction row with no block row, or None."""
        value = self.conn.execute(
            "select min(height) from txs where run_id = ? and height not in "
            "(select height from blocks where run_id = ?)", [run_id, run_id]).fetchone()[0]
        return None if value is None else int(value)

    def balances(self, run_id: str) -> dict[str, int]:
        """account -> micro-units at the head, as the ``balances`` table holds them."""
        return {r["account"]: r["micro"] for r in self.rows("balances", run_id)}

    def put_balances(self, run_id: str, balances: dict[str, int]) -> None:
        """Replace the balances at the head (inside the caller's transaction)."""
        self._upsert("balances", [{"run_id": run_id, "account": a, "micro": m}
                                  for a, m in balances.items()])

    def put_evm(self, row: dict[str, Any]) -> None:
        """Record (or replace) a run's EVM deployment row (keys: the ``evm`` columns)."""
        self._upsert("evm", [row])

    def _upsert(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Insert each row, or update the columns it names of the row with its key (what
        sqlite-utils' ``upsert_all`` does; the rows name the same columns). ``KeyError``
        for a column the schema does not declare."""
        if not rows:
            return
        columns, pk = list(rows[0]), SCHEMA[table][1]
        unknown = set(columns) - set(SCHEMA[table][0])
        if unknown:
            raise KeyError(f"table {table!r} has no column {sorted(unknown)[0]!r}")
        update = ", ".join(f"[{c}] = excluded.[{c}]" for c in columns if c not in pk)
        sql = (f"insert into [{table}] ({', '.join(f'[{c}]' for c in columns)}) values "
               f"({', '.join('?' * len(columns))}) on conflict "
               f"({', '.join(f'[{c}]' for c in pk)}) "
               + (f"do update set {update}" if update else "do nothing"))
        with self._atomic():
            self.conn.executemany(sql, [tuple(row[c] for c in columns) for row in rows])

    def blocks(self, run_id: str) -> list[dict[str, Any]]:
        """The run's chain with each block's transactions, as ``contracts.ledger`` expects."""
        out = []
        for b in self._query("select * from blocks where run_id = ? order by height",
                             [run_id]):
            try:
                txs = [json_input.loads(r["body"]) for r in self._query(
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
        return [{"at": r["at"], **json.loads(r["body"])} for r in self.rows("safety", run_id)]

    # -- issue 14 part A: a durable run ------------------------------------------------

    def _has(self, table: str) -> bool:
        return bool(self.conn.execute("select 1 from sqlite_master where type = 'table' and "
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
            attempt = self.conn.execute(
                "select count(*) from aborted_intervals where run_id = ? and idx = ?",
                [run_id, index]).fetchone()[0]
            moved = self.conn.execute(
                f"insert into aborted_readings ({columns}, [attempt]) select {columns}, ? "
                "from readings where run_id = ? and [interval] = ? order by rowid",
                [attempt, run_id, index]).rowcount
            self.conn.execute("delete from readings where run_id = ? and [interval] = ?",
                              [run_id, index])
            row = {"run_id": run_id, "idx": index, "attempt": attempt,
                   "at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                   "cause": cause, "reason": reason, "lab_start_s": lab_start_s,
                   "lab_end_s": lab_end_s, "readings": moved,
                   "body": json.dumps(details or {}, default=str)}
            self.insert("aborted_intervals", row)
        return row

    def append_readings(self, rows: Sequence[Mapping[str, Any]],
                        fixed: Mapping[str, Any] | None = None) -> None:
        """Insert ``readings`` rows committed without an fsync (``synchronous=NORMAL`` for
        this one commit, WAL mode): on disk against the process's death (kill -9) at once,
        against a power loss once the next fully synced commit (the interval's) lands. A
        control period's batch then costs no disk flush that would hold the control loop.
        Raises ``KeyError`` like :meth:`insert`."""
        if not rows:
            return
        if self._depth:  # inside a transaction: it decides
            self.insert("readings", rows, fixed)
            return
        self.conn.execute("PRAGMA synchronous=NORMAL")
        try:
            self.insert("readings", rows, fixed)
        finally:
            self.conn.execute("PRAGMA synchronous=FULL")

    def aborted_intervals(self, run_id: str) -> list[dict[str, Any]]:
        """The run's intervals cut short, in the order they were (rows of
        ``aborted_intervals``, ``body`` parsed)."""
        if not self._has("aborted_intervals"):
            return []
        return [{**r, "body": json.loads(r["body"] or "{}")} for r in self._query(
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
        return {key: self.conn.execute(f"select count(*) from [{table}] where [{col}] = ?",
                                     [run_id]).fetchone()[0] if self._has(table) else 0
                for key, (table, col) in counts.items()}

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
