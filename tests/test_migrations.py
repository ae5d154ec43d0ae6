"""Schema versions and migrations: databases of earlier releases open, migrate and verify.

Fixtures (``tests/fixtures/``), each one run of scenario2 on a copy of the mock rig with
``control_period_s = 240`` (60 readings), journal mode DELETE, vacuumed:

- ``release-a0e7c0a.db``: written by commit a0e7c0a (schema version 0, ledger format 1: an
  operator tx without a format, its key in the database's ``keystore`` table). That run
  printed volume 12.7 kWh, self-sufficiency 0.944882, community net -0.103 AUD.
- ``release-08ef03f.db``: written by commit 08ef03f (no ``runs.ledger_height``, no
  ``balances``; ledger format 0, households ``register`` their own keys).
- ``release-d8b04fd.db``: written by commit d8b04fd (schema version 3, ledger format 2:
  rows sealed by the digests of their JSON text), the operator's key outside it (its
  public half below). That run printed volume 12.7 kWh, self-sufficiency 0.944882,
  community net -0.103 AUD.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from testbed.cli.app import app
from testbed.ledger.chain import LEDGER_FORMAT, ledger_format, verify_run
from testbed.ledger.store import MIGRATIONS, SCHEMA, SCHEMA_VERSION, DamagedDatabase, Store
from testbed.report.figures import figures

runner = CliRunner()
FIXTURES = Path(__file__).parent / "fixtures"
A0E7 = FIXTURES / "release-a0e7c0a.db"
A0E7_RUN = "3666a173cd5d"
A0E7_OPERATOR = "6dec15dbea4edc69e3f58df3368783f4159bee230f46f0b3d074ff113c0a5171"
OLD_08EF = FIXTURES / "release-08ef03f.db"
D8B0 = FIXTURES / "release-d8b04fd.db"
D8B0_RUN = "115282e212e4"
D8B0_OPERATOR = "9839d38215ec1af721597b8825a054c8886208f5ace3f29af4b4445cbe971fd4"


def _copy(src: Path, tmp_path: Path) -> Path:
    db = tmp_path / src.name
    shutil.copyfile(src, db)
    return db


def _version(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def test_migrations_are_one_ordered_step_per_version() -> None:
    assert [m.to for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


def test_previous_release_verifies_read_only_without_writing(tmp_path: Path) -> None:
    db = _copy(A0E7, tmp_path)
    before = db.read_bytes()
    out = runner.invoke(app, ["ledger", "verify", str(db), "--operator-key", A0E7_OPERATOR])
    assert out.exit_code == 0, out.output
    assert f"ok   run {A0E7_RUN}: 2 blocks verified from genesis" in out.output
    assert "ledger format 1" in " ".join(out.output.split())
    assert db.read_bytes() == before and _version(db) == 0  # migrated in memory only
    store = Store(db, readonly=True)
    try:
        assert store.migrated_from == 0
        got = figures(store, A0E7_RUN)
    finally:
        store.close()
    assert (got["volume_kwh"], got["self_sufficiency"], got["community_net_aud"]) == (
        12.7, 0.944882, -0.103)  # what that release printed for this run


def test_a_ledger_format_2_release_verifies_and_an_edit_in_it_is_named(
        tmp_path: Path) -> None:
    """Rows sealed by the digests of their JSON text (format 2, before this release's
    binary digests) still verify, and an edited reading is still found and named."""
    db = _copy(D8B0, tmp_path)
    out = runner.invoke(app, ["ledger", "verify", str(db), "--operator-key", D8B0_OPERATOR])
    assert out.exit_code == 0, out.output
    assert f"ok run {D8B0_RUN}: 2 blocks verified from genesis, and every row they " \
           "sealed" in " ".join(out.output.split())
    store = Store(db, readonly=True)
    try:
        assert ledger_format(store.blocks(D8B0_RUN)) == 2 < LEDGER_FORMAT
        got = figures(store, D8B0_RUN)
    finally:
        store.close()
    assert (got["volume_kwh"], got["self_sufficiency"], got["community_net_aud"]) == (
        12.7, 0.944882, -0.103)  # what that release printed for this run
    with sqlite3.connect(db) as conn:
        t = conn.execute("select t from readings where household = '7' order by t limit 1 "
                         "offset 3").fetchone()[0]
        conn.execute("update readings set power_w = power_w + 1e-9 where household = '7' "
                     "and t = ?", (t,))
    out = runner.invoke(app, ["ledger", "verify", str(db), "--operator-key", D8B0_OPERATOR])
    assert out.exit_code == 1
    assert f"table readings, row household 7, t {t}: edited" in " ".join(out.output.split())


def test_previous_release_migrates_on_disk_and_takes_a_new_run(tmp_path: Path) -> None:
    db = _copy(A0E7, tmp_path)
    store = Store(db)
    try:
        assert store.migrated_from == 0
        assert store.run(A0E7_RUN)["ledger_format"] == 1
        assert verify_run(store, A0E7_RUN, A0E7_OPERATOR) is None
    finally:
        store.close()
    assert _version(db) == SCHEMA_VERSION
    with sqlite3.connect(db) as conn:
        for table, (columns, _pk) in SCHEMA.items():
            have = {r[1] for r in conn.execute(f"PRAGMA table_info([{table}])")}
            assert set(columns) <= have, table
    out = runner.invoke(app, ["run", "scenario2", "--db", str(db), "--json"])
    assert out.exit_code == 0, out.output
    store = Store(db, readonly=True)
    try:
        new = [r["id"] for r in store.runs() if r["id"] != A0E7_RUN]
        assert len(new) == 1 and store.run(new[0])["ledger_format"] == LEDGER_FORMAT
        assert verify_run(store, new[0]) is None
        assert ledger_format(store.blocks(new[0])) == LEDGER_FORMAT  # genesis names it
        assert store.blocks(new[0])[0]["txs"][0]["format"] == LEDGER_FORMAT
    finally:
        store.close()


def test_08ef03f_database_migrates_and_its_ledger_is_named_unverifiable(
        tmp_path: Path) -> None:
    """The issue's symptom: ``no such column: ledger_height``. The schema migrates (the
    head recorded from the chain), a new run goes in, and verify names the old ledger's
    format instead of failing on its rows."""
    db = _copy(OLD_08EF, tmp_path)
    out = runner.invoke(app, ["run", "scenario2", "--db", str(db), "--json"])
    assert out.exit_code == 0, out.output
    store = Store(db, readonly=True)
    try:
        old, new = (r["id"] for r in store.runs())
        assert store.run(old)["ledger_height"] == 2 and store.run(old)["ledger_format"] == 1
        err = verify_run(store, old)
        assert err is not None and "ledger format 0" in err.reason
        assert verify_run(store, new) is None
    finally:
        store.close()


@pytest.mark.parametrize("command", [["ledger", "verify"], ["runs"],
                                     ["report", "latest", "--out", "report"]])
def test_a_database_newer_than_the_code_is_refused(command: list[str],
                                                   tmp_path: Path) -> None:
    db = _copy(A0E7, tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = db.read_bytes()
    args = [*command, str(db)] if command[0] == "ledger" else [*command, "--db", str(db)]
    args = [str(tmp_path / a) if a == "report" and i > 0 else a for i, a in enumerate(args)]
    out = runner.invoke(app, args)
    assert out.exit_code == 2, out.output
    assert f"schema version {SCHEMA_VERSION + 1} is newer than this testbed's " \
           f"{SCHEMA_VERSION}" in out.output and "Traceback" not in out.output
    assert db.read_bytes() == before
    with pytest.raises(DamagedDatabase, match="newer"):
        Store(db)


def test_no_sql_outside_the_store() -> None:
    """Every SQL statement lives in testbed/ledger/store.py: no other module of testbed/
    reaches for the connection (``.db``), sqlite3 or sqlite-utils."""
    root = Path(__file__).parents[1] / "testbed"
    pattern = re.compile(r"\.db\.(execute|query|conn)\b|\.db\[|\bimport sqlite3\b|"
                         r"\bsqlite_utils\b|\bexecute\(\s*[\"'](select|insert|update|delete)",
                         re.IGNORECASE)
    found = [f"{path.relative_to(root)}:{n}" for path in sorted(root.rglob("*.py"))
             if path != root / "ledger" / "store.py"
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if pattern.search(line)]
    assert found == []


def test_a_new_database_has_the_tables_sqlite_utils_made(tmp_path: Path) -> None:
    """The store creates its tables and index itself (sqlite-utils is not imported by a
    run): the text SQLite keeps for each must be what sqlite-utils' ``create`` and
    ``create_index`` wrote, so databases of this release and earlier ones are alike."""
    import sqlite_utils

    store = Store(tmp_path / "new.db")
    try:
        ours = store.conn.execute("select type, name, sql from sqlite_master "
                                  "order by name").fetchall()
    finally:
        store.close()
    theirs = sqlite_utils.Database(tmp_path / "theirs.db")
    for name, (columns, pk) in SCHEMA.items():
        theirs[name].create(columns, pk=pk or None)  # type: ignore[union-attr]
    theirs["readings"].create_index(["run_id", "household", "t"],  # type: ignore[union-attr]
                                    if_not_exists=True)
    expected = theirs.execute("select type, name, sql from sqlite_master "
                              "order by name").fetchall()
    theirs.close()
    assert ours == expected


def test_the_store_commits_alone_rolls_back_whole_and_upserts(tmp_path: Path) -> None:
    """Without sqlite-utils: a write outside a transaction is on disk at once (another
    connection sees it); a transaction that raises leaves none of its rows, a nested one
    only its own; ``put_balances`` replaces, ``update_run``/``run`` refuse an unknown run."""
    from testbed.ledger.store import NotFoundError

    db = tmp_path / "t.db"
    store = Store(db)
    try:
        store.insert("runs", {"id": "r", "status": "running"})
        with sqlite3.connect(db) as other:
            assert other.execute("select status from runs").fetchall() == [("running",)]
        with pytest.raises(RuntimeError), store.transaction():
            store.insert("trades", {"run_id": "r", "interval": 0, "seq": 0})
            raise RuntimeError("half-way")
        with store.transaction():
            store.insert("trades", {"run_id": "r", "interval": 0, "seq": 1})
            with pytest.raises(RuntimeError), store.transaction():
                store.insert("trades", {"run_id": "r", "interval": 0, "seq": 2})
                raise RuntimeError("inner")
        assert [t["seq"] for t in store.rows("trades", "r")] == [1]
        store.put_balances("r", {"a": 1, "b": 2})
        store.put_balances("r", {"a": 5})
        assert store.balances("r") == {"a": 5, "b": 2}
        store.update_run("r", status="finished", ledger_height=3)
        assert (store.run("r")["status"], store.run("r")["ledger_height"]) == ("finished", 3)
        with pytest.raises(NotFoundError):
            store.update_run("nope", status="x")
        with pytest.raises(NotFoundError):
            store.run("nope")
        assert store.db["runs"].count == 1  # sqlite-utils on the same connection, on demand
    finally:
        store.close()


def test_insert_binds_complete_and_partial_rows_alike(tmp_path: Path) -> None:
    """``Store.insert`` writes rows that name every column and rows that lack some (NULL)
    in one call, in order; an unknown column is a KeyError naming it, and nothing of the
    call is written."""
    store = Store(tmp_path / "i.db")
    try:
        full = {c: None for c in SCHEMA["readings"][0]} | {
            "run_id": "r", "t": 1.5, "household": "7", "soc": 0.25, "interval": 2}
        store.insert("readings", [full, {**full, "t": 2.5}])
        store.insert("readings", [{"run_id": "r", "t": 3.5, "household": "7"}, full])
        got = [(r["t"], r["soc"], r["interval"]) for r in store.rows("readings", "r")]
        assert got == [(1.5, 0.25, 2), (2.5, 0.25, 2), (3.5, None, None), (1.5, 0.25, 2)]
        with pytest.raises(KeyError, match="'sco'"):
            store.insert("readings", [full, {**full, "sco": 1.0}])
        assert store.count("readings", "r") == 4
        # columns given once for the batch (RunLog: the run and the interval)
        store.insert("readings", [{"t": 4.5, "household": "8", "soc": 0.5}],
                     fixed={"run_id": "r", "interval": 3})
        assert [(r["t"], r["household"], r["soc"], r["interval"])
                for r in store.rows("readings", "r")][-1] == (4.5, "8", 0.5, 3)
        with pytest.raises(KeyError, match="'intervall'"):
            store.insert("readings", [full], fixed={"intervall": 3})
        assert store.count("readings", "r") == 5
    finally:
        store.close()
