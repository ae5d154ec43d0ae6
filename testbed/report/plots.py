"""The report's figures as PNG bytes (matplotlib, Agg, no pyplot global state).

Each function takes plain data (from :mod:`testbed.report.figures`) and returns PNG bytes,
or ``None`` when the run has nothing to plot, so a report never shows an empty axis.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939"]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def power_over_day(series: Mapping[str, Any], totals: Mapping[str, Sequence[float | None]],
                   unit: str) -> bytes | None:
    """Top: each rig's net power onto the bus and the grid's (as the paper's Fig. 5);
    bottom: the community's PV, load and battery power, which the nets are made of."""
    x = series.get("hours") or series.get("t") or []
    if not x:
        return None
    scale = series.get("_scale", 1.0)
    fig = Figure(figsize=(10, 6.4))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for i, (hid, values) in enumerate(series["households"].items()):
        top.plot(x, [None if v is None else v * scale for v in values], lw=1.1,
                 color=COLOURS[i % len(COLOURS)], label=f"household {hid}")
    top.plot(x, [v * scale for v in series["grid_w"]], lw=2.4, color="black", label="grid")
    top.axhline(0, color="#999", lw=0.8)
    top.set_ylabel(f"net power onto the bus ({unit})")
    top.set_title("Power over the day: each household's rig and the grid node")
    top.legend(ncol=6, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.02),
               frameon=False)
    for name, values in totals.items():
        bottom.plot(x, [None if v is None else v * scale for v in values], lw=1.6, label=name)
    bottom.axhline(0, color="#999", lw=0.8)
    bottom.set_ylabel(f"community ({unit})")
    bottom.set_xlabel("market hour" if series.get("hours") else "lab time (s)")
    bottom.legend(fontsize=8, frameon=False)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    return _png(fig)


def community_power(hours: Sequence[float],
                    series: Mapping[str, Sequence[float | None]]) -> bytes | None:
    """A community day's power (the CE-SDT paper's Fig. 5): what the homes needed from the
    system after their own PV and battery ("user usage") and what the grid supplied; the gap
    between them is what was traded peer to peer. Other series go in a panel below."""
    if not hours or not series:
        return None
    # Each value holds over its hour: one more edge so the last hour is drawn too.
    step = hours[-1] - hours[-2] if len(hours) > 1 else 1.0
    hours = [*hours, hours[-1] + step]
    series = {k: [*v, v[-1] if v else None] for k, v in series.items()}
    main = [k for k in ("demand", "grid") if k in series]
    rest = [k for k in series if k not in main]
    fig = Figure(figsize=(10, 6.4 if rest and main else 4.2))
    axes = fig.subplots(2, 1, sharex=True) if rest and main else [fig.subplots()]
    top = axes[0]

    def line(ax: Any, name: str, **kw: Any) -> None:
        ax.plot(hours, [float("nan") if v is None else v for v in series[name]], **kw)

    if main:
        labels = {"demand": "user usage (demand on the system)", "grid": "grid usage"}
        for name, colour in (("demand", "#1f77b4"), ("grid", "black")):
            if name in series:
                line(top, name, lw=2, color=colour, label=labels[name], drawstyle="steps-post")
        if len(main) == 2:
            d = [float("nan") if v is None else v for v in series["demand"]]
            g = [float("nan") if v is None else v for v in series["grid"]]
            top.fill_between(hours, g, d, step="post", alpha=0.25, color="#2ca02c",
                             label="traded peer to peer (the gap)")
        top.set_ylabel("kW (mean over the hour)")
        top.set_title("Total power usage over the day (as the CE-SDT paper's Fig. 5)")
        top.legend(fontsize=8, frameon=False)
    for i, name in enumerate(rest if main else list(series)):
        ax = axes[-1]
        line(ax, name, lw=1.4, color=COLOURS[i % len(COLOURS)], label=name,
             drawstyle="steps-post")
        ax.set_ylabel("kW (mean over the hour)")
        ax.legend(fontsize=8, frameon=False, ncol=4)
    axes[-1].set_xlabel("hour of day")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.axhline(0, color="#999", lw=0.8)
    return _png(fig)


def cleared_vs_metered(households: Sequence[Mapping[str, Any]],
                       trades: Sequence[Mapping[str, Any]] | None,
                       cleared_label: str = "cleared (market)") -> bytes | None:
    """Left: cleared and metered net energy per household; right: each trade's cleared
    energy beside the seller's metered delivery to it (when the run recorded it). With
    ``trades`` None (a run that settles per rig, not per trade) only the left panel."""
    if not households and not trades:
        return None
    fig = Figure(figsize=(11, 4.2) if trades is not None else (8, 4.2))
    if trades is None:
        left, right = fig.subplots(), None
    else:
        left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    ids = [h["id"] for h in households]
    pos = range(len(ids))
    w = 0.4
    left.bar([p - w / 2 for p in pos], [h["cleared_kwh"] for h in households], w,
             label=cleared_label, color="#4c78a8")
    left.bar([p + w / 2 for p in pos], [h["metered_kwh"] for h in households], w,
             label="metered", color="#f58518")
    left.set_xticks(list(pos), ids)
    left.axhline(0, color="#999", lw=0.8)
    left.set_xlabel("household")
    left.set_ylabel("net energy (kWh, + export)")
    left.set_title(f"{cleared_label.split(' ')[0].capitalize()} vs metered, per household")
    left.legend(fontsize=8, frameon=False)
    if right is None:
        left.grid(axis="y", alpha=0.3)
        return _png(fig)
    if trades:
        labels = [f"{t['seller']}→{t['buyer']}" for t in trades]
        tp = range(len(trades))
        right.bar([p - w / 2 for p in tp], [t["energy_kwh"] for t in trades], w,
                  label="cleared", color="#4c78a8")
        delivered = [t.get("metered_kwh") for t in trades]
        if any(d is not None for d in delivered):
            right.bar([p + w / 2 for p in tp], [d or 0.0 for d in delivered], w,
                      label="metered delivery (seller)", color="#f58518")
        right.set_xticks(list(tp), labels, rotation=45, ha="right", fontsize=8)
        right.set_ylabel("kWh")
        right.set_title("Cleared vs metered, per trade")
        right.legend(fontsize=8, frameon=False)
    else:
        right.text(0.5, 0.5, "no trades cleared", ha="center", va="center")
        right.set_axis_off()
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def class_costs(classes: Mapping[str, Mapping[str, float | None]],
                paper_ratio: Mapping[str, float], labels: Mapping[str, str]) -> bytes | None:
    """Costs per class (the CE-SDT paper's Fig. 10). Left: the day's cost with CE-SDT beside
    the same homes buying everything from the grid; right: their ratio, ours beside the
    paper's where the paper gives one for this generating share."""
    names = [n for n, c in classes.items()
             if c.get("cost_aud") is not None or c.get("grid_only_cost_aud") is not None]
    if not names:
        return None
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    w = 0.38
    xs = range(len(names))
    ticks = [labels.get(n, n) for n in names]
    left.bar([x - w / 2 for x in xs], [classes[n].get("cost_aud") or 0.0 for n in names], w,
             color="#4c78a8", label="with CE-SDT")
    left.bar([x + w / 2 for x in xs],
             [classes[n].get("grid_only_cost_aud") or 0.0 for n in names], w,
             color="#bab0ac", label="grid only")
    left.set_xticks(list(xs), ticks, fontsize=8)
    left.set_ylabel("cost of the day (AUD, whole class)")
    left.set_title("Cost per class")
    left.legend(fontsize=8, frameon=False)
    ours = [classes[n].get("cost_ratio") for n in names]
    right.bar([x - w / 2 for x in xs], [r or 0.0 for r in ours], w, color="#4c78a8",
              label="ours")
    paper = [paper_ratio.get(n) for n in names]
    if any(p is not None for p in paper):
        right.bar([x + w / 2 for x in xs], [p or 0.0 for p in paper], w, color="#f58518",
                  label="paper (Fig. 10)")
    for x, r in zip(xs, ours, strict=True):
        if r is not None:
            right.annotate(f"{r:.1%}", (x - w / 2, r), ha="center",
                           va="bottom" if r >= 0 else "top", fontsize=8)
    right.set_xticks(list(xs), ticks, fontsize=8)
    right.set_ylabel("cost / grid-only cost")
    right.set_title("Cost ratio per class")
    right.legend(fontsize=8, frameon=False)
    for ax in (left, right):
        ax.axhline(0, color="#999", lw=0.8)
        ax.grid(axis="y", alpha=0.3)
    return _png(fig)
