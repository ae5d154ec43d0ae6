"""``ledger verify`` covers what reports read: every value of every derived table.

Each interval's block seals a digest of every row written with it (intervals, trades,
results, readings), and genesis the run's own row (``testbed.ledger.chain.SEALED``). Here
one value at a time is changed, or one row deleted, in a finished run's database, and
verify must fail naming the table and the row; the ledger tables themselves are covered
the same way in ``test_ledger.py``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from contracts import ledger as rules
from testbed.cli.app import app
from testbed.ledger.chain import SEALED, row_digest, row_key, verify_run
from testbed.ledger.store import Store

runner = CliRunner()
SMALL = ("runs", "intervals", "trades", "results", "safety")


@pytest.fixture(scope="module")
def run_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """scenario2 on the mock rig read every 60 s (240 readings): a finished run."""
    folder = tmp_path_factory.mktemp("derived")
    rig = folder / "mock-slow.toml"
    text = (Path(__file__).parents[1] / "rigs" / "rigs" / "mock.toml").read_text()
    rig.write_text(text.replace("control_period_s = 1.0", "control_period_s = 60.0"))
    db = folder / "run.db"
    out = runner.invoke(app, ["run", "scenario2", "--rig", str(rig), "--db", str(db),
                              "--json"])
    assert out.exit_code == 0, out.output
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
        (run_id,) = conn.execute("select id from runs").fetchone()
    return db, run_id


@pytest.fixture()
def conn(run_db: tuple[Path, str]) -> Iterator[sqlite3.Connection]:
    c = sqlite3.connect(run_db[0])
    yield c
    c.close()


def verdict(db: Path, run_id: str) -> rules.ChainError | None:
    store = Store(db, readonly=True)
    try:
        return verify_run(store, run_id)
    finally:
        store.close()


def _changed(value: Any) -> Any:
    if isinstance(value, int):
        return value + 1000
    if isinstance(value, float):
        return value + 0.5
    if value is None:
        return 7
    text = str(value)
    return text[:-1] + ("0" if text[-1:] != "0" else "1") if text else "x"


def _rows(conn: sqlite3.Connection, table: str, run_id: str,
          ) -> list[tuple[int, dict[str, Any]]]:
    cur = conn.execute(f"select rowid, * from [{table}] where "
                       f"{'id' if table == 'runs' else 'run_id'} = ?", [run_id])
    names = [d[0] for d in cur.description][1:]
    rows = [(r[0], dict(zip(names, r[1:], strict=True))) for r in cur.fetchall()]
    if table == "safety":  # keyed by place in the log; those after the last block unsealed
        store = Store(conn.execute("PRAGMA database_list").fetchone()[2], readonly=True)
        try:
            sealed = {int(n) for b in store.blocks(run_id) for tx in b["txs"]
                      if tx.get("type") == "record" for n in tx["rows"].get("safety", {})}
        finally:
            store.close()
        assert sealed == set(range(len(sealed))) and sealed, sealed
        rows = [(rowid, {**row, "n": n}) for n, (rowid, row) in enumerate(rows)
                if n in sealed]
    return rows


def _named(err: rules.ChainError | None, table: str, row: dict[str, Any]) -> bool:
    """verify's first error names ``table`` and the row by its key columns."""
    if err is None:
        return False
    keys = SEALED[table][0]
    name = f"table {table}, row " + ", ".join(f"{c} {row[c]}" for c in keys)
    return name in err.reason


def _expect_named(db: Path, run_id: str, conn: sqlite3.Connection, table: str, rowid: int,
                  row: dict[str, Any], column: str | None) -> None:
    """Change ``column`` (or delete the row when None), see verify name it, restore."""
    if column is None:
        conn.execute(f"delete from [{table}] where rowid = ?", [rowid])
    else:
        conn.execute(f"update [{table}] set [{column}] = ? where rowid = ?",
                     [_changed(row[column]), rowid])
    conn.commit()
    try:
        err = verdict(db, run_id)
        if table == "runs" and column in (None, "id"):  # no row for the run any more
            assert err is not None and "run's row is missing" in err.reason
        elif column in SEALED[table][0]:  # a key edited: that row is gone, another added
            assert err is not None and f"table {table}, row" in err.reason, err
        else:
            assert _named(err, table, row), (table, column, row, err)
    finally:
        conn.execute(f"delete from [{table}] where rowid = ?", [rowid])
        names = [n for n in row if not (table == "safety" and n == "n")]
        conn.execute(f"insert into [{table}] (rowid, {', '.join(f'[{n}]' for n in names)}) "
                     f"values (?, {', '.join('?' * len(names))})",
                     [rowid, *(row[n] for n in names)])
        conn.commit()


def test_the_untouched_run_verifies(run_db: tuple[Path, str]) -> None:
    assert verdict(*run_db) is None


@pytest.mark.parametrize("table", SMALL)
def test_every_value_and_row_of_a_small_derived_table_is_sealed(
        table: str, run_db: tuple[Path, str], conn: sqlite3.Connection) -> None:
    db, run_id = run_db
    columns = [c for c in SEALED[table][1] if c not in ("run_id", "n")]
    rows = _rows(conn, table, run_id)
    assert rows, table
    for rowid, row in rows:
        for column in columns:
            _expect_named(db, run_id, conn, table, rowid, row, column)
        _expect_named(db, run_id, conn, table, rowid, row, None)
    assert verdict(db, run_id) is None  # restored


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pick=st.integers(min_value=0), column=st.sampled_from(
    [*SEALED["readings"][1], None]))
def test_any_reading_changed_or_deleted_is_named(pick: int, column: str | None,
                                                  run_db: tuple[Path, str],
                                                  conn: sqlite3.Connection) -> None:
    db, run_id = run_db
    rows = _rows(conn, "readings", run_id)
    rowid, row = rows[pick % len(rows)]
    _expect_named(db, run_id, conn, "readings", rowid, row, column)


def test_an_added_row_is_named(run_db: tuple[Path, str], conn: sqlite3.Connection) -> None:
    db, run_id = run_db
    conn.execute("insert into trades (run_id, interval, seq, seller, buyer, energy_kwh, "
                 "price) values (?, 0, 99, '1', '2', '1', '1/10')", [run_id])
    conn.commit()
    try:
        err = verdict(db, run_id)
        assert err is not None and "table trades, row interval 0, seq 99: not sealed" \
            in err.reason
    finally:
        conn.execute("delete from trades where seq = 99")
        conn.commit()


def test_the_cli_names_an_edited_trade_and_exits_1(run_db: tuple[Path, str],
                                                   tmp_path: Path) -> None:
    db = tmp_path / "edited.db"
    db.write_bytes(run_db[0].read_bytes())
    with sqlite3.connect(db) as c:
        c.execute("update trades set energy_kwh = '99' where seq = 0")
    out = runner.invoke(app, ["ledger", "verify", str(db)])
    assert out.exit_code == 1
    assert "table trades, row interval 0, seq 0: edited" in " ".join(out.output.split())


def test_a_row_digests_alike_before_and_after_sqlite(tmp_path: Path) -> None:
    """SQLite gives back 0.0 for -0.0, NULL for NaN and 1.0 for 1 in a REAL column: the
    digest sealed from the row in memory must be the one verify computes from the table
    (a meter reading -0.0 W failed verify once)."""
    row = {"run_id": "r", "t": 1, "household": "1", "meter_net_wh": -0.0,
           "power_w": float("nan"), "pv_w": 2, "load_w": None, "battery_w": -1.5,
           "soc": 0.5}
    store = Store(tmp_path / "roundtrip.db")
    try:
        store.insert("readings", row)
        (back,) = store.rows("readings", "r")
    finally:
        store.close()
    assert back["meter_net_wh"] == 0.0 and back["power_w"] is None
    assert row_digest("readings", row) == row_digest("readings", back)
    assert row_key("readings", row) == row_key("readings", back)


@pytest.mark.parametrize("column", ["status", "finished_at", "summary"])
def test_how_the_run_ended_is_sealed_outside_the_database(
        column: str, run_db: tuple[Path, str], conn: sqlite3.Connection) -> None:
    """A run row's closing state (status, finish time, summary: the community report reads
    the summary) is written after the last block; the operator's keystore seals it."""
    db, run_id = run_db
    (before,) = conn.execute(f"select [{column}] from runs where id = ?", [run_id]).fetchone()
    conn.execute(f"update runs set [{column}] = ? where id = ?", [_changed(before), run_id])
    conn.commit()
    try:
        err = verdict(db, run_id)
        assert err is not None and f"table runs, row id {run_id}" in err.reason, err
    finally:
        conn.execute(f"update runs set [{column}] = ? where id = ?", [before, run_id])
        conn.commit()
    assert verdict(db, run_id) is None


@given(st.lists(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                          st.text(max_size=8)), max_size=10))
def test_the_row_encoder_writes_what_json_writes(values: list[Any]) -> None:
    """Rows are sealed through one C encoder made once (``chain._ENCODE_ROW``, a mock day's
    14,400 readings): it must write the text ``json.dumps`` writes with the ledger's
    separators, byte for byte (quotes, non-ASCII, NaN, infinities, -0.0), or every sealed
    digest would change."""
    import json

    from testbed.ledger import chain

    expected = json.dumps(values, separators=(",", ":"), ensure_ascii=False)
    assert chain._ENCODE_ROW(values) == expected
    assert chain._ENCODE_ROW(["é\"\\\n", -0.0, float("nan"), float("-inf"), 1e300]) == \
        '["é\\"\\\\\\n",-0.0,NaN,-Infinity,1e+300]'


def test_sealing_in_bulk_digests_each_row_as_alone() -> None:
    """``record_tx`` seals a table's rows in one loop; each digest and key must be the one
    ``row_digest``/``row_key`` give the row alone (what verify recomputes), the later of
    two rows with one key winning as before."""
    from testbed.ledger.chain import record_tx

    rows = [{"t": float(i), "household": str(i % 3), "meter_net_wh": i / 7, "power_w": -i,
             "pv_w": None, "load_w": 2, "battery_w": 0.1 * i, "soc": 0.5, "interval": 0}
            for i in range(20)] + [{"t": 0.0, "household": "0", "soc": 0.25}]
    sealed = record_tx({"readings": rows, "runs": [{"id": "r", "params": '{"pid": 1}'}]})
    assert sealed["rows"]["readings"] == {row_key("readings", r): row_digest("readings", r)
                                          for r in rows}
    assert sealed["rows"]["readings"]["0/0.0"] == row_digest("readings", rows[-1])
    assert sealed["rows"]["runs"] == {"r": row_digest("runs", {"id": "r",
                                                              "params": '{"pid": 2}'})}


_KINDS = (float, str, int, float, str)
_value = {float: st.one_of(st.none(), st.floats(allow_nan=False).map(lambda x: x + 0.0)),
          int: st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)),
          str: st.one_of(st.none(), st.text(max_size=6))}
_row = st.tuples(*(_value[k] for k in _KINDS)).map(list)


@settings(max_examples=500, deadline=None)
@given(a=_row, b=_row)
@example(a=[0.0, "a", 1, None, "bc"], b=[0.0, "ab", 1, None, "c"])
@example(a=[None, None, None, None, None], b=[0.0, "", 0, 0.0, ""])
@example(a=[1.0, "x", None, 2.0, "y"], b=[1.0, "x", 0, 2.0, "y"])
def test_the_binary_row_form_tells_every_two_rows_apart(a: list[Any], b: list[Any]) -> None:
    """Ledger format 3 digests a row's cast values from bytes (``chain._RowBytes``): two
    rows give the same bytes only when they are the same values (NULL, 0, the empty text
    and text that looks like a length all told apart). Break: TEXT without its length
    prefix (``["a", "bc"]`` and ``["ab", "c"]`` then collide); INTEGER without its presence
    byte (NULL and 0 then collide)."""
    from testbed.ledger.chain import _RowBytes

    as_bytes = _RowBytes(_KINDS)
    assert (as_bytes(a) == as_bytes(b)) == (a == b)
