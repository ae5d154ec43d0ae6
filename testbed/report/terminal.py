"""A run's figures: the JSON object, and the rich tables an operator reads.

Every figure is read from the run database by :func:`testbed.report.figures.figures`, the
one computation the API, dashboard and HTML report share; the paper's published figures
come from the scenario file's ``[paper]`` table and are only shown beside ours.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from contracts.numbers import MICRO
from testbed.ledger.store import Store
from testbed.report.figures import figures, paper_balance
from testbed.run.runner import RunOutcome


def summarise(run: RunOutcome) -> dict[str, Any]:
    """The run as one JSON-ready object (the ``--json`` output): its figures as the
    database holds them (:func:`testbed.report.figures.figures`, the one computation every
    view shares), with what only the live run knows: the interval it resumed from and, for
    ``--ledger evm...``, the contract's balances, gas and wall time. Raises ``ValueError``
    for an outcome without its database."""
    if run.db is None:
        raise ValueError(f"run {run.run_id}: no run database to read its figures from")
    store = Store(run.db, readonly=True)
    try:
        out = figures(store, run.run_id)
    finally:
        store.close()
    out["resumed_from_interval"] = run.resumed_from
    if "evm" in run.extra:
        out["evm"] = evm_summary(run.extra["evm"], run.balances, run.scenario.paper_balances)
    return out


def evm_summary(evm: dict[str, Any], ledger_micro: dict[str, int],
                paper: dict[str, tuple[Fraction, Fraction]] | None = None) -> dict[str, Any]:
    """The contract's balances (ETH held for each account) before and after, beside the
    SQLite ledger's after and, where the scenario gives them, the paper's before and after,
    with gas and wall time (``--ledger evm...``)."""
    before, after = evm["before_micro"], evm["after_micro"]
    rows = []
    for a in after:
        row = {"account": a, "address": evm["accounts"].get(a),
               "before_eth": before.get(a, 0) / MICRO, "after_eth": after[a] / MICRO,
               "ledger_after_eth": ledger_micro.get(a, 0) / MICRO,
               "equal": after[a] == ledger_micro.get(a, 0)}
        if paper:
            row.update(paper_balance(row["before_eth"], row["after_eth"], paper.get(a)))
        rows.append(row)
    return {"backend": evm["backend"], "contract": evm["contract"], "gas": evm["gas"],
            "setup_s": round(evm["setup_s"], 3),
            "interval_s": [round(x, 3) for x in evm["interval_s"]], "balances": rows}


# -- tables that fit -------------------------------------------------------------------------

Cell = str  # rich markup


def _width(cell: Cell) -> int:
    return Text.from_markup(cell).cell_len


def fitted(title: str, columns: list[tuple[str, str]], rows: list[list[Cell]],
           width: int, keep: int = 1) -> list[Table]:
    """``rows`` under ``columns`` (header, justify) as one table, or as several when one
    would be wider than ``width`` console cells: the columns are split, in order, into
    tables that fit, each repeating the first ``keep`` (the row's key). No column is ever
    narrower than its widest cell, so no number is cut; headers wrap at spaces. A table
    is ``1 + sum(column + 3)`` cells wide (rich's default box and padding)."""
    need = [max([_width(r[i]) for r in rows] + [max(len(w) for w in h.split())])
            for i, (h, _j) in enumerate(columns)]
    fixed = 1 + sum(w + 3 for w in need[:keep])
    groups: list[list[int]] = [[]]
    used = fixed
    for i in range(keep, len(columns)):
        if groups[-1] and used + need[i] + 3 > width:
            groups.append([])
            used = fixed
        groups[-1].append(i)
        used += need[i] + 3
    tables = []
    for n, group in enumerate(groups):
        idx = list(range(keep)) + group
        part = f" ({n + 1}/{len(groups)})" if len(groups) > 1 else ""
        t = Table(title=title + part)
        for i in idx:
            header, justify = columns[i]
            t.add_column(header, justify=justify,  # type: ignore[arg-type]
                         min_width=need[i], overflow="fold")
        for r in rows:
            t.add_row(*(r[i] for i in idx))
        tables.append(t)
    return tables


def print_fitted(console: Console, title: str, columns: list[tuple[str, str]],
                 rows: list[list[Cell]], keep: int = 1, caption: str | None = None) -> None:
    """:func:`fitted` at the console's width, printed."""
    for t in fitted(title, columns, rows, console.width, keep):
        t.caption = caption
        console.print(t)


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def render(summary: dict[str, Any], console: Console) -> None:
    console.print(f"[bold]{summary['title'] or summary['scenario']}[/bold]  "
                  f"run {summary['run_id']} on rig '{summary['rig']}'  ({summary['status']})")
    cols = [("id", "right"), ("net kWh", "right"), ("role", "left"), ("price", "right"),
            ("cleared kWh", "right"), ("metered kWh", "right"), ("dev %", "right"),
            ("lab Wh", "right"), ("grid imp kWh", "right"), ("grid exp kWh", "right"),
            ("AUD", "right"), ("ETH before", "right"), ("ETH after", "right")]
    rows = [[h["id"], _num(h["net_kwh"], "+.2f"), h["role"], _num(h["price"], ".3f"),
             _num(h["cleared_kwh"], "+.3f"), _num(h["metered_kwh"], "+.3f"),
             ("" if h["within_tolerance"] else "[red]") + _num(h["deviation_pct"], "+.3f"),
             _num(h["lab_metered_wh"], "+.3f"),
             _num(h["grid_import_kwh"], ".3f"), _num(h["grid_export_kwh"], ".3f"),
             _num(h["net_aud"], "+.3f"), _num(h["balance_before_eth"], ".6f"),
             _num(h["balance_after_eth"], ".6f")] for h in summary["households"]]
    print_fitted(console, "Households (market kWh and AUD; lab Wh as the meters read)",
                 cols, rows)

    fmt = {"clearing_price": ".3f", "method": "d", "volume_kwh": ".2f",
           "self_sufficiency": ".2%", "community_net_aud": "+.3f"}
    srows = []
    for key, spec in fmt.items():
        ours = summary.get(key)
        p = summary["paper"].get(key, {})
        diff = p.get("difference")
        srows.append([key.replace("_", " "), _num(ours, spec), _num(p.get("paper"), spec),
                      "" if diff is None else _num(diff, "+.4f" if spec != ".2%" else "+.3%")])
    print_fitted(console, "Summary, beside the paper", [
        ("figure", "left"), ("ours", "right"), ("paper", "right"), ("difference", "right")],
        srows)
    _render_dut(summary, console)
    for hid, why in summary.get("funding", {}).items():
        console.print(f"[yellow]household {hid}:[/yellow] {why}", highlight=False)
    for hid, why in summary.get("orders_rejected", {}).items():
        console.print(f"[yellow]household {hid}'s order refused:[/yellow] {why}",
                      highlight=False)
    if "evm" in summary:
        _render_evm(summary["evm"], console)
    elif any("paper_after_eth" in h for h in summary["households"]):
        _render_paper_balances(summary, console)
    led = summary["ledger"]
    console.print(f"ledger: {led['blocks']} blocks, head {led['head'][:16]}…, "
                  f"money conserved: {led['total_micro']} µ{summary['token']['symbol']} in all "
                  f"accounts; grid imported {summary['grid_import_kwh']:.3f} kWh, exported "
                  f"{summary['grid_export_kwh']:.3f} kWh")
    for where, why in summary["disputed"].items():  # energy the ledger holds unsettled
        console.print(f"[red]disputed, not settled: {escape(where)}: {escape(why)}[/red]",
                      highlight=False)


def _render_paper_balances(summary: dict[str, Any], console: Console) -> None:
    """The households' token balances before and after, beside the paper's (no EVM)."""
    sym = summary["token"]["symbol"]
    cols = [(c, "right") for c in ("id", "before", "paper before", "after", "paper after",
                                    "difference")]
    rows = [[h["id"], f"{h['balance_before_eth']:.6f}", _num(h["paper_before_eth"], ".4f"),
             f"{h['balance_after_eth']:.6f}", _num(h["paper_after_eth"], ".4f"),
             _num(h["paper_difference_after_eth"], "+.6f")] for h in summary["households"]]
    print_fitted(console, f"{sym} balances beside the paper's (its tables round to 4 "
                 "decimals)", cols, rows)


def _render_dut(summary: dict[str, Any], console: Console) -> None:
    """The devices under test: each DUT check with what was expected and measured."""
    dut = summary["validation"].get("dut", [])
    if not dut:
        return
    rows = [[escape(c["name"]), "[green]pass[/green]" if c["passed"] else "[red]FAIL[/red]",
             f"{c['expected']:.6g}", f"{c['measured']:.6g}", escape(c["message"])]
            for c in dut]
    print_fitted(console, "Devices under test (rig file: dut = true)", [
        ("check", "left"), ("result", "left"), ("expected", "right"), ("measured", "right"),
        ("detail", "left")], rows)


def _render_evm(evm: dict[str, Any], console: Console) -> None:
    paper = any("paper_after_eth" in b for b in evm["balances"])
    cols = ("account", "before", "paper before", "after", "paper after", "difference",
            "SQLite after", "equal") if paper else \
        ("account", "ETH before", "ETH after", "SQLite ledger after", "equal")
    rows = []
    for b in evm["balances"]:
        ours = [f"{b['before_eth']:.6f}", f"{b['after_eth']:.6f}"]
        if paper:  # the paper's Tables 3, 5, 6 (4 decimals); no row for the grid
            ours = [ours[0], _num(b.get("paper_before_eth"), ".4f"), ours[1],
                    _num(b.get("paper_after_eth"), ".4f"),
                    _num(b.get("paper_difference_after_eth"), "+.6f")]
        rows.append([b["account"], *ours, f"{b['ledger_after_eth']:.6f}",
                     "yes" if b["equal"] else "[red]NO[/red]"])
    print_fitted(console, f"ETH held by the contract {evm['contract']} on {evm['backend']}",
                 [(c, "left" if c == "account" else "right") for c in cols], rows,
                 caption="paper: its table's balances (4 decimals); difference: after - "
                 "paper after" if paper else None)
    console.print(f"gas: {', '.join(f'{k} {v:,}' for k, v in evm['gas'].items())}; "
                  f"wall time per interval {evm['interval_s']} s", highlight=False)
