"""``testbed report RUN --out DIR``: one self-contained HTML page with PNG plots of a run.

Read entirely from the run database (:mod:`testbed.report.figures`), so a run can be
reported on any machine that has its ``.db`` file, long after the process that ran it. The
PNGs are embedded in the HTML (one file to mail or archive) and also written beside it.

A market run (dual bidding, grid only) gets its power over the day from the meters' readings,
cleared versus metered energy per household and per trade, and its figures beside the
paper's; a community day (mechanism ``cesdt``) gets the CE-SDT paper's Fig. 5 and Fig. 10
from the summary its run row carries (:mod:`testbed.report.community`), and, when rigs
played some of its homes, their power and routed-versus-metered energy.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from testbed.ledger.store import Store
from testbed.report import figures as data
from testbed.report import plots
from testbed.report.community import CLASS_LABELS, CommunityDay, SummaryError, community_day
from testbed.report.page import document, esc, figure, fmt, table

__all__ = ["SummaryError", "build_report", "write_report"]

_TRADE_CHECK = re.compile(r"^trade (\d+) .* seller ")


def _trade_deliveries(store: Store, run_id: str) -> dict[tuple[int, int], float]:
    """(interval, seq) -> the seller's metered delivery to that trade, from the run's checks."""
    out = {}
    for c in data.validation(store, run_id)["checks"]:
        m = _TRADE_CHECK.match(str(c.get("name", "")))
        if m and c.get("measured") is not None:
            out[(int(c["interval"]), int(m.group(1)))] = float(c["measured"])
    return out


def _power_png(store: Store, run_id: str) -> bytes | None:
    """Net power per rig and the grid (market kW when the rig's scale is known), and the
    community's PV, load and battery power they are made of."""
    series = data.readings(store, run_id, "power_w", max_points=1440)
    unit, scale = "lab W", 1.0
    if series["power_scale"]:
        unit, scale = "kW", 1.0 / (1000.0 * series["power_scale"])
    series["_scale"] = scale
    totals: dict[str, list[Any]] = {}
    for field, label in (("pv_w", "PV"), ("load_w", "load"), ("battery_w", "battery")):
        s = data.readings(store, run_id, field, max_points=1440)
        cols = list(s["households"].values())
        totals[label] = [sum(c[k] for c in cols if c[k] is not None) if cols else None
                         for k in range(s["points"])]
    return plots.power_over_day(series, totals, unit)


def _market(store: Store, run_id: str, images: dict[str, bytes]) -> list[str]:
    figs = data.figures(store, run_id)
    valid = data.validation(store, run_id)
    trades = data.trades(store, run_id)
    deliveries = _trade_deliveries(store, run_id)
    for t in trades:
        t["metered_kwh"] = deliveries.get((t["interval"], t["seq"]))
    if (png := _power_png(store, run_id)) is not None:
        images["power.png"] = png
    if (png := plots.cleared_vs_metered(figs["households"], trades)) is not None:
        images["energy.png"] = png

    paper_rows = [[esc(k.replace("_", " ")), fmt(v["ours"]), fmt(v["paper"]),
                   fmt(v["difference"], "+.4g")] for k, v in figs["paper"].items()]
    ours_rows = [[esc(k.replace("_", " ")), fmt(figs.get(k))]
                 for k in ("clearing_price", "method", "volume_kwh", "self_sufficiency",
                           "community_net_aud", "oversell_shortfall_kwh", "total_demand_kwh",
                           "grid_import_kwh", "grid_export_kwh")]
    hh_rows = [[esc(h["id"]), fmt(h["cleared_kwh"], "+.3f"), fmt(h["metered_kwh"], "+.3f"),
                fmt(h["grid_import_kwh"], ".3f"), fmt(h["grid_export_kwh"], ".3f"),
                fmt(h["market_aud"], "+.3f"), fmt(h["grid_aud"], "+.3f"),
                fmt(h["net_aud"], "+.3f"), fmt(h.get("paper_net_aud"), "+.3f"),
                fmt(h.get("paper_difference_aud"), "+.4f")] for h in figs["households"]]
    trade_rows = [[str(t["interval"]), str(t["seq"]), esc(t["seller"]), esc(t["buyer"]),
                   fmt(t["energy_kwh"], ".3f"), fmt(t["metered_kwh"], ".3f"),
                   fmt(t["price"], ".3f")] for t in trades]
    failed = [c for c in valid["checks"] if not c.get("passed")]
    return [
        '<section class="cols"><div>',
        "<h2>Summary, beside the paper</h2>",
        table(["figure", "ours", "paper", "difference"], paper_rows) if paper_rows
        else "<p>The scenario gives no published figures to compare with.</p>",
        "</div><div><h2>This run</h2>", table(["figure", "value"], ours_rows),
        "</div></section>",
        "<h2>Power over the day</h2>",
        figure(images, "power.png", "Net power per household and grid; community PV, load, "
                                    "battery") or "<p>No meter readings were recorded.</p>",
        "<h2>Cleared versus metered energy</h2>",
        figure(images, "energy.png", "Cleared vs metered energy per household and per trade"),
        "<h3>Households</h3>",
        table(["household", "cleared kWh", "metered kWh", "grid import kWh",
               "grid export kWh", "market AUD", "grid AUD", "net AUD", "paper net AUD",
               "difference"], hh_rows),
        *(["<h3>Refused or limited (no credit)</h3>",
            table(["household", "why"], [[esc(h), esc(why)]
                                         for h, why in figs["funding"].items()])]
          if figs["funding"] else []),
        "<h3>Trades</h3>",
        table(["interval", "#", "seller", "buyer", "cleared kWh", "metered kWh",
               "price AUD/kWh"], trade_rows) if trade_rows else "<p>No trades cleared.</p>",
        "<h2>Validation</h2>",
        f'<p class="{"ok" if valid["ok"] else "bad"}">{valid["passed"]} of {valid["total"]} '
        f"cleared-versus-metered checks passed.</p>",
        table(["interval", "check", "message"],
              [[str(c["interval"]), esc(c["name"]), esc(c["message"])] for c in failed])
        if failed else "",
    ]


def _community(day: CommunityDay, images: dict[str, bytes]) -> list[str]:
    paper = day.paper_ratios()
    if (png := plots.community_power(day.hours, day.series)) is not None:
        images["community_power.png"] = png
    if (png := plots.class_costs(day.classes, paper, CLASS_LABELS)) is not None:
        images["class_costs.png"] = png
    rows = []
    for name, c in day.classes.items():
        ours, theirs = c.get("cost_ratio"), paper.get(name)
        rows.append([esc(CLASS_LABELS.get(name, name)), fmt(c.get("cost_aud"), ".2f"),
                     fmt(c.get("grid_only_cost_aud"), ".2f"), fmt(ours, ".1%"),
                     fmt(theirs, ".1%"),
                     fmt(None if ours is None or theirs is None else ours - theirs, "+.1%")])
    share = ("" if day.generating is None
             else f" with {day.generating:.0%} of the homes generating")
    note = ("" if paper or day.generating is None else
            "<p>The paper states cost ratios for 50 % and 70 % generating homes only.</p>")
    return [
        f"<h2>Costs per class{esc(share)}, beside the paper's Fig. 10</h2>",
        table(["class", "cost AUD", "grid-only AUD", "cost ratio", "paper", "difference"],
              rows) if rows else "<p>The run's summary has no costs per class.</p>",
        note,
        figure(images, "class_costs.png", "Costs per class and their ratio to buying "
                                          "everything from the grid (as the paper's Fig. 10)"),
        "<h2>Power over the day</h2>",
        figure(images, "community_power.png", "User usage and grid usage over the day; the "
                                              "gap is traded peer to peer (as the paper's "
                                              "Fig. 5)")
        or "<p>The run's summary has no hourly series.</p>",
    ]


def _community_bench(store: Store, run_id: str, day: CommunityDay,
                     images: dict[str, bytes]) -> list[str]:
    """The homes of the day that rigs played: their power on the bench, and the energy each
    rig was routed beside what its meter measured (a community day settles per home, not
    per trade, so this is where the market meets the meters)."""
    if (png := _power_png(store, run_id)) is not None:
        images["power.png"] = png
    rigs = [{"id": r.rig, "cleared_kwh": r.routed_kwh, "metered_kwh": r.metered_kwh}
            for r in day.bench]
    if (png := plots.cleared_vs_metered(rigs, None, "routed")) is not None:
        images["energy.png"] = png
    if "power.png" not in images and not rigs:
        return []
    rows = [[esc(r.rig), esc(r.home), fmt(r.routed_kwh, "+.3f"), fmt(r.metered_kwh, "+.3f"),
             fmt(r.metered_kwh - r.routed_kwh, "+.4f")] for r in day.bench]
    return [
        "<h2>On the bench</h2>",
        figure(images, "power.png", "Net power per rig and grid; the rigs' PV, load, battery"),
        figure(images, "energy.png", "Energy routed to each rig vs what its meter measured"),
        table(["rig", "home", "routed kWh", "metered kWh", "difference"], rows) if rows
        else "",
    ]


def _ledger(store: Store, run_id: str) -> str:
    v = data.verification(store, run_id)
    if not v["blocks"]:
        return "<p>This run has no ledger blocks.</p>"
    text = (f'head <code>{esc(v.get("head"))}</code>; every hash, Merkle root, link and '
            "signature verified from genesis." if v["ok"] else
            f'broken at block {esc(v["height"])}: {esc(v["reason"])}')
    return f'<p class="{"ok" if v["ok"] else "bad"}">Ledger: {v["blocks"]} blocks, {text}</p>'


def build_report(store: Store, run_id: str) -> tuple[str, dict[str, bytes]]:
    """The HTML page and its PNGs (name -> bytes) for one run.

    Raises ``data.NotFound`` for an unknown run and :class:`SummaryError` when a community
    day's stored summary is malformed (the message names the run and the field).
    """
    run = data.get_run(store, run_id)
    day = community_day(run)
    has_market = store.count("intervals", run_id) > 0
    images: dict[str, bytes] = {}
    title = data.figures(store, run_id).get("title") if has_market and day is None else None
    parts = [
        f"<h1>{esc(title or run['scenario'])}</h1>",
        f'<p class="meta">run <code>{esc(run_id)}</code> · scenario {esc(run["scenario"])}'
        f' · rig {esc(run["rig"])} · mechanism {esc(run["mechanism"])} · status '
        f'<b>{esc(run["status"])}</b> · started {esc(run["started_at"])} · finished '
        f'{esc(run["finished_at"])}</p>',
    ]
    if day is not None:
        parts += _community(day, images)
        parts += _community_bench(store, run_id, day, images)
    elif has_market:
        parts += _market(store, run_id, images)
    else:
        parts.append(f"<p>This run committed no trading interval (status "
                     f"{esc(run['status'])}): there is nothing to plot.</p>")
    parts += ["<h2>Ledger</h2>", _ledger(store, run_id),
              f'<footer>Generated {dt.datetime.now(dt.UTC).isoformat(timespec="seconds")} '
              f"from {esc(store.path.name)} by <code>testbed report</code>. Figures are "
              "recomputed from the run database; the paper's come from the scenario file "
              "and the paper's text.</footer>"]
    return document(f"testbed report · {run_id}", parts), images


def write_report(db: str | Path, run_id: str, out_dir: str | Path) -> Path:
    """Write ``report.html`` and its PNGs into ``out_dir``; the HTML's path."""
    out = Path(out_dir)
    store = Store(db, readonly=True)
    try:
        page, images = build_report(store, run_id)
    finally:
        store.close()
    out.mkdir(parents=True, exist_ok=True)
    for name, png in images.items():
        (out / name).write_bytes(png)
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
