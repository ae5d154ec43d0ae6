"""``testbed ledger verify DB`` and ``testbed ledger show DB``: auditing a run database.

Verification needs the database and the operator's public key, which never comes from the
database it checks: ``--operator-key FILE|HEX``, else ``operator.pub`` in the operator's key
folder (``testbed.ledger.keys.home``). Every signature, hash, Merkle root, link, escrow and balance
is recomputed from genesis (``testbed.ledger.chain.verify_run``); a genesis naming another
operator key fails.
"""


import json
from pathlib import Path
from typing import Annotated, Any

import typer

from testbed import json_input
from testbed.cli.output import console, err, fail

ledger_app = typer.Typer(help="Audit a run database's ledger.", no_args_is_help=True,
                         rich_markup_mode=None)

DbArg = Annotated[Path, typer.Argument(help="SQLite run database")]
RunOpt = Annotated[str | None, typer.Option("--run", help="one run id (default: every run)")]
KeyOpt = Annotated[str | None, typer.Option(
    "--operator-key", help="the operator's public key: a file (operator.pub, or PEM) or 64 "
    "hex digits (default: operator.pub in $TESTBED_HOME, ~/.config/testbed)")]


def _open(db: Path) -> Any:
    """The database opened read-only after a full integrity check; exit 2 with one message
    when it is missing, empty, foreign or damaged (nothing is written to it)."""
    from testbed.ledger.store import DamagedDatabase, Store

    try:
        return Store(db, readonly=True, check="full")
    except DamagedDatabase as e:
        fail(str(e))


def _run_ids(store: Any, run: str | None) -> list[str]:
    ids = [r["id"] for r in store.runs()]
    if run is not None:
        if run not in ids:
            fail(f"--run {run}: no such run in {store.path}")
        return [run]
    return ids


@ledger_app.command()
def verify(db: DbArg, run: RunOpt = None, operator_key: KeyOpt = None,
           as_json: Annotated[bool, typer.Option("--json", help="print a JSON list")] = False,
           ) -> None:
    """Recompute every signature, hash and balance from genesis against the operator's key
    (kept outside the database), and every derived row (intervals, trades, results,
    readings, the run's own) against the digests its block sealed; exit 1 naming the first
    bad block, or the table and row, of any run that fails, 2 when there is no operator key
    or no database, or the database is newer than this testbed."""
    from testbed.errors import InputError
    from testbed.ledger.chain import verify_run
    from testbed.ledger.keys import load_anchor

    store = _open(db)
    try:
        anchor, _source = load_anchor(operator_key)
    except InputError as e:
        store.close()
        fail(str(e))
    try:
        results = []
        for rid in _run_ids(store, run):
            bad = verify_run(store, rid, anchor)
            blocks = store.count("blocks", rid)
            chain = _verify_chain(store, rid) if bad is None else None
            fmt = (store.find_run(rid) or {}).get("ledger_format")
            results.append({"run_id": rid, "ok": bad is None and chain is None,
                            "blocks": blocks, "ledger_format": fmt,
                            "bad_block": None if bad is None else bad.height,
                            "reason": chain if bad is None else bad.reason,
                            "disputed": _disputes(store, rid)})
    finally:
        store.close()
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if r["ok"]:
                console.print(f"[green]ok[/green]   run {r['run_id']}: {r['blocks']} blocks "
                              "verified from genesis" + (
                                  ", and every row they sealed" if (r["ledger_format"] or 0) >= 2
                                  else f" (ledger format {r['ledger_format']}: its release "
                                       "sealed no derived rows; those were not checked)"),
                              highlight=False)
                for d in r["disputed"]:
                    console.print(f"     disputed, not settled: interval {d['interval']} "
                                  f"household {d['household']} (block {d['block']}): "
                                  f"{d['reason']}", highlight=False, soft_wrap=True)
            elif r["bad_block"] is None:
                console.print(f"[red]BAD[/red]  run {r['run_id']}: EVM: {r['reason']}",
                              highlight=False)
            else:
                console.print(f"[red]BAD[/red]  run {r['run_id']}: block {r['bad_block']}: "
                              f"{r['reason']}", highlight=False)
    if not results:
        err.print(f"{db}: no runs")
    if any(not r["ok"] for r in results):
        raise typer.Exit(1)


def _disputes(store: Any, run_id: str) -> list[dict[str, Any]]:
    """Every ``dispute`` on a run's chain: the intervals whose metered energy was not
    settled, for whom and why (canonical bodies: the type reads exactly so)."""
    out = []
    for row in store.rows("txs", run_id):
        if '"type":"dispute"' not in row["body"]:
            continue
        try:
            tx = json_input.loads(row["body"])
        except ValueError:
            continue  # verify names the block; this list only reads what parses
        if isinstance(tx, dict) and tx.get("type") == "dispute":
            out.append({"block": row["height"], "interval": tx.get("interval"),
                        "household": tx.get("household"), "reason": tx.get("reason"),
                        "escrows_kept": len(tx.get("orders", []))})
    return out


_DESCRIBE_LEDGER_RULES: dict[str, Any] = {
    "dispute": lambda tx: (f"{tx['household']} interval {tx['interval']} NOT settled: "
                           f"{tx['reason']} ({len(tx['orders'])} escrow(s) kept)"),
    "resolve": lambda tx: f"escrow {str(tx['order'])[:12]}… released: {tx['reason']}",
    "metered": lambda tx: (f"{tx['household']} interval {tx['interval']}: "
                           f"{tx['energy_kwh']} kWh in {tx['hours']} h"),
    "rating": lambda tx: f"{tx['account']} rated {tx['max_kw']} kW",
}


def _verify_chain(store: Any, run_id: str) -> str | None:
    """An EVM run (``--ledger evm...``): its chain's events against the run; else None."""
    if store.count("evm", run_id) == 0:
        return None
    from testbed.ledger.evm import verify_evm

    return verify_evm(store, run_id)


def _describe(tx: dict[str, Any]) -> str:
    from contracts.numbers import MICRO

    kind = tx.get("type")
    if kind in _DESCRIBE_LEDGER_RULES:
        return str(_DESCRIBE_LEDGER_RULES[str(kind)](tx))
    if kind == "order":
        return (f"{tx['household']} {tx['side']} {tx['energy_kwh']} kWh @ {tx['price']} "
                f"(nonce {tx['nonce']})")
    if kind == "rejected":
        o = tx.get("order", {})
        return f"{o.get('household')} {o.get('side')}: {tx.get('reason')}"
    if kind == "transfer":
        return f"{tx['from']} -> {tx['to']} {tx['amount'] / MICRO:.6f} ({tx.get('memo', '')})"
    if kind == "release":
        return f"escrow {tx['amount'] / MICRO:.6f} back to {tx['account']}"
    if kind == "fill":
        return f"{tx['seller']} -> {tx['buyer']} {tx['energy_kwh']} kWh @ {tx['price']}"
    if kind == "deposit":
        return f"{tx['account']} +{tx['amount'] / MICRO:.6f}"
    if kind in ("certificate", "operator"):
        return f"{tx.get('account', 'operator')} key {str(tx['public_key'])[:16]}…"
    return str(tx.get("account", ""))


@ledger_app.command()
def show(db: DbArg, run: RunOpt = None,
         txs: Annotated[bool, typer.Option(help="list every transaction")] = True) -> None:
    """Print each run's blocks, their transactions, and the balances at the head."""
    from rich.table import Table

    from contracts.numbers import MICRO

    store = _open(db)
    try:
        for rid in _run_ids(store, run):
            console.rule(f"run {rid}")
            for b in store.blocks(rid):
                console.print(f"[bold]block {b['height']}[/bold] interval {b['interval']} "
                              f"hash {b['hash'][:16]}… prev {b['prev_hash'][:16]}… "
                              f"root {b['merkle_root'][:16]}… {len(b['txs'])} txs",
                              highlight=False)
                if txs:
                    for i, tx in enumerate(b["txs"]):
                        console.print(f"  {i:4d} {tx.get('type', '?'):<11} {_describe(tx)}",
                                      highlight=False, soft_wrap=True)
            table = Table("account", "balance (token)", "micro-units", title="balances")
            for account, micro in sorted(store.balances(rid).items()):
                table.add_row(account, f"{micro / MICRO:.6f}", str(micro))
            console.print(table)
    finally:
        store.close()


def register(app: typer.Typer) -> None:
    app.add_typer(ledger_app, name="ledger")
