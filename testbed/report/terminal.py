"""A run's figures: the JSON object, and the rich tables an operator reads.

Every figure is computed from the run (clearing, meters, ledger); the paper's published
figures come from the scenario file's ``[paper]`` table and are only shown beside ours.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from contracts.numbers import MICRO
from testbed.run.runner import RunOutcome


def _f(x: Fraction | float | None, places: int = 6) -> float | None:
    return None if x is None else round(float(x), places)


def _difference(ours: object, paper: object) -> float | None:
    """``ours - paper`` to 6 places, or None where either is not a number."""
    numbers = (int, float)
    if isinstance(ours, numbers) and isinstance(paper, numbers) and not isinstance(ours, bool):
        return round(float(ours) - float(paper), 6)
    return None


def summarise(run: RunOutcome) -> dict[str, Any]:
    """The run as one JSON-ready object (the ``--json`` output)."""
    sc, rig = run.scenario, run.rig
    rate = sc.aud_per_token
    households: list[dict[str, Any]] = []
    volume = shortfall = demand = Fraction(0)
    community = Fraction(0)
    grid_import = grid_export = Fraction(0)
    intervals = []
    for iv in run.intervals:
        c, s = iv.clearing, iv.settlement
        volume += c.volume
        community += s.community_net_aud
        grid_import += s.grid_import_kwh
        grid_export += s.grid_export_kwh
        for h in s.households:
            if h.cleared_kwh > 0:
                shortfall += max(h.cleared_kwh - h.metered_kwh, Fraction(0))
            demand += max(-h.metered_kwh, Fraction(0))
        intervals.append({"index": iv.index, "clearing_price": _f(c.price), "method": c.method,
                          "volume_kwh": _f(c.volume), "fills": len(c.fills),
                          "rejected": list(c.rejected), "block": iv.block["hash"],
                          "grid_import_wh_lab": _f(iv.measurement.grid_import_wh, 4),
                          "grid_export_wh_lab": _f(iv.measurement.grid_export_wh, 4)})

    by_id = {h.id: h for h in sc.households}
    last = run.intervals[-1] if run.intervals else None
    funding = {h: why for iv in run.intervals for h, why in iv.funding.items()}
    rejected = {h: why for iv in run.intervals for h, why in iv.rejected_orders.items()}
    tol = rig.tolerance_pct / 100
    if last is not None:
        for h in last.settlement.households:
            spec = by_id[h.id]
            target = last.targets_kwh[h.id]
            dev = (h.metered_kwh - target) / abs(target) if target else h.metered_kwh
            households.append({
                "id": h.id,
                "role": {"sell": "seller", "buy": "buyer", None: "none"}[spec.side],
                "net_kwh": _f(spec.net_kwh),
                "price": _f(spec.price),
                "offered_kwh": _f(spec.order_kwh) if spec.side else 0.0,
                "cleared_kwh": _f(h.cleared_kwh),
                "metered_kwh": _f(h.metered_kwh),
                "target_kwh": _f(target),
                "deviation_pct": _f(dev * 100, 4),
                "within_tolerance": abs(dev) <= tol,
                "lab_metered_wh": _f(last.measurement.metered_wh[h.id], 4),
                "grid_import_kwh": _f(h.grid_import_kwh),
                "grid_export_kwh": _f(h.grid_export_kwh),
                "market_aud": _f(h.market_aud),
                "grid_aud": _f(h.grid_aud),
                "net_aud": _f(h.net_aud),
                "disputed": h.disputed or None,  # why its energy was not settled
                "balance_before_eth": run.opening[h.id] / MICRO,
                "balance_after_eth": run.balances[h.id] / MICRO,
                "balance_change_aud": _f(Fraction(run.balances[h.id] - run.opening[h.id],
                                                  MICRO) * rate),
                "funding": funding.get(h.id),
                "order_rejected": rejected.get(h.id),
                "unfunded_micro": h.unfunded_micro,
            })

    self_suff = (volume - shortfall) / demand if demand else Fraction(0)
    first = run.intervals[0].clearing if run.intervals else None
    ours = {"clearing_price": _f(first.price) if first else None,
            "method": first.method if first else None,
            "volume_kwh": _f(volume), "self_sufficiency": _f(self_suff),
            "community_net_aud": _f(community)}
    paper = {k: {"ours": ours.get(k), "paper": v, "difference": _difference(ours.get(k), v)}
             for k, v in sc.paper.items() if k in ours}
    if "households_net_aud" in sc.paper:
        for row in households:
            pv = sc.paper["households_net_aud"].get(row["id"])
            row["paper_net_aud"] = pv
            row["paper_difference_aud"] = None if pv is None else round(row["net_aud"] - pv, 6)
    if sc.paper_balances:  # the paper's Tables 3, 5, 6: balances before and after trading
        for row in households:
            pb = sc.paper_balances.get(row["id"])
            row.update(_paper_balance(row["balance_before_eth"], row["balance_after_eth"], pb))
    return {
        "run_id": run.run_id,
        "scenario": sc.name,
        "title": sc.title,
        "rig": rig.name,
        "status": run.status,
        "mechanism": None if first is None else sc.mechanism,
        "intervals": intervals,
        **ours,
        "oversell_shortfall_kwh": _f(shortfall),
        "total_demand_kwh": _f(demand),
        "grid_import_kwh": _f(grid_import),
        "grid_export_kwh": _f(grid_export),
        "households": households,
        "paper": paper,
        "scales": {"time_scale": rig.time_scale, "power_scale": rig.power_scale,
                   "lab_wh_per_kwh": round(rig.energy_scale, 6),
                   "control_period_s": rig.control_period_s},
        "token": {"symbol": sc.token_symbol, "aud_per_token": float(rate)},
        "validation": {"checks": len(run.checks),
                       "failed": [c.name for c in run.checks if not c.passed],
                       "failed_checks": [{"suite": c.suite, "name": c.name,
                                          "message": c.message}
                                         for c in run.checks if not c.passed],
                       "dut": [{"suite": c.suite, "name": c.name, "passed": c.passed,
                                "expected": c.expected, "measured": c.measured,
                                "message": c.message} for c in run.checks
                               if c.suite.endswith(" DUT")],
                       "tolerance_pct": rig.tolerance_pct},
        "tripped": {h: why for iv in run.intervals for h, why in iv.measurement.tripped.items()},
        # rigs that left the bus and came back: interval, why, seconds off, target Wh missed
        "readmitted": [{"interval": iv.index, "household": h, **back}
                       for iv in run.intervals
                       for h, back in iv.measurement.readmitted.items()],
        "funding": funding,
        "orders_rejected": rejected,
        "disputed": {f"interval {iv.index} household {h}": why for iv in run.intervals
                     for h, why in iv.measurement.disputed.items()},
        "resumed_from_interval": run.resumed_from,
        "ledger": {"blocks": run.ledger_blocks, "head": run.ledger_head,
                   "total_micro": sum(run.balances.values()),
                   "grid_balance_eth": run.balances.get("grid", 0) / MICRO},
        **({"evm": evm_summary(run.extra["evm"], run.balances, sc.paper_balances)}
           if "evm" in run.extra else {}),
    }


def _paper_balance(before_eth: float, after_eth: float,
                   paper: tuple[Fraction, Fraction] | None) -> dict[str, float | None]:
    """The paper's balance before and after beside ours, and ours minus the paper's (None
    where the paper gives no balance for the account)."""
    if paper is None:
        return {"paper_before_eth": None, "paper_after_eth": None,
                "paper_difference_before_eth": None, "paper_difference_after_eth": None}
    pb, pa = _f(paper[0]), _f(paper[1])
    return {"paper_before_eth": pb, "paper_after_eth": pa,
            "paper_difference_before_eth": _difference(before_eth, pb),
            "paper_difference_after_eth": _difference(after_eth, pa)}


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
            row.update(_paper_balance(row["before_eth"], row["after_eth"], paper.get(a)))
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
