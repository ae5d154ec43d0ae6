"""A sweep of community days over households and generating shares: the paper's Fig. 5-10.

Each cell (households N, share g) pools ``R`` independent communities (seeds derived from
the sweep's seed; the first is the seed itself, so a cell of one replicate is exactly
``testbed run cesdt --seed S``). By default ``R = ceil(100 / N)``: a class of two generating
homes (15 homes at 10 %) is otherwise one draw of two load types, and its cost ratio says
more about those two homes than about the mechanism. Pooled figures are sums over the
replicates: a class's cost ratio is its total cost over its total grid-only cost.

Outputs (all computed here): ``costs.csv`` (per cell and class: homes, cost, grid-only
cost, ratio, mean cost per home), ``hourly.csv`` (per cell and hour: community and per-home
demand, grid, P2P, export, load, PV, kWh in the hour = mean kW), ``sweep.json`` (both, and
the parameters), and ``fig5``..``fig10`` PNGs after the paper's figures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from testbed.community.day import CLASSES, SERIES, DayResult, simulate_day
from testbed.community.params import CommunityParams

POOL_HOMES = 100
COLOURS = {"omega1": "#1f77b4", "omega2": "#2ca02c", "all": "#ff7f0e"}
LINES = ["-", "--", ":", "-."]


def replicate_seeds(seed: int, replicates: int) -> list[int]:
    """``seed`` itself, then seeds derived from it (independent streams)."""
    derived = np.random.SeedSequence(seed).generate_state(max(replicates - 1, 0), np.uint32)
    return [seed, *(int(x) for x in derived)]


@dataclass(frozen=True)
class Cell:
    households: int
    generating: float
    days: tuple[DayResult, ...]

    def classes(self) -> list[dict[str, Any]]:
        rows = []
        for cls in CLASSES:
            homes = sum(d.class_sizes[cls] for d in self.days)
            cost = sum(d.costs[cls]["cost_aud"] or 0.0 for d in self.days)
            base = sum(d.costs[cls]["grid_only_cost_aud"] or 0.0 for d in self.days)
            rows.append({"households": self.households, "generating": self.generating,
                         "replicates": len(self.days), "class": cls, "homes": homes,
                         "cost_aud": cost, "grid_only_cost_aud": base,
                         "cost_ratio": cost / base if base else None,
                         "mean_cost_aud": cost / homes if homes else None,
                         "mean_grid_only_cost_aud": base / homes if homes else None})
        return rows

    def hourly(self) -> pd.DataFrame:
        homes = self.households * len(self.days)
        total = {k: np.sum([d.hourly[k] for d in self.days], axis=0) / len(self.days)
                 for k in SERIES}
        frame = pd.DataFrame({"households": self.households, "generating": self.generating,
                              "hour": np.arange(24), **{f"{k}_kw": v for k, v in total.items()}})
        for k in SERIES:
            frame[f"{k}_kw_per_home"] = frame[f"{k}_kw"] * len(self.days) / homes
        return frame


def run_sweep(households: Sequence[int], shares: Sequence[float], seed: int,
              replicates: int | None = None, params: CommunityParams | None = None,
              progress: Callable[[int, int], None] | None = None) -> list[Cell]:
    """Every (households, share) cell; ``progress(done, total)`` after each day."""
    plan = [(n, g, replicate_seeds(seed, replicates or math.ceil(POOL_HOMES / n)))
            for n in households for g in shares]
    total, done, cells = sum(len(s) for _, _, s in plan), 0, []
    for n, g, seeds in plan:
        days = []
        for s in seeds:
            days.append(simulate_day(n, g, s, params))
            done += 1
            if progress is not None:
                progress(done, total)
        cells.append(Cell(n, g, tuple(days)))
    return cells


def tables(cells: Sequence[Cell]) -> tuple[pd.DataFrame, pd.DataFrame]:
    costs = pd.DataFrame([row for c in cells for row in c.classes()])
    hourly = pd.concat([c.hourly() for c in cells], ignore_index=True)
    return costs, hourly


def default_cell(cells: Sequence[Cell]) -> tuple[int, float]:
    """The paper's "default settings" (its Table 1 is lost): the most households, and the
    share nearest one half."""
    n = max(c.households for c in cells)
    g = min({c.generating for c in cells}, key=lambda x: (abs(x - 0.5), x))
    return n, g


def write(cells: Sequence[Cell], out: Path, meta: dict[str, Any]) -> list[Path]:
    """Tables and figures into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    costs, hourly = tables(cells)
    files = [out / "costs.csv", out / "hourly.csv", out / "sweep.json"]
    costs.to_csv(files[0], index=False)
    hourly.to_csv(files[1], index=False)
    files[2].write_text(json.dumps({**meta, "costs": costs.to_dict(orient="records"),
                                    "hourly": hourly.to_dict(orient="records")}, indent=1))
    n0, g0 = default_cell(cells)
    for name, fig in figures(costs, hourly, n0, g0).items():
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        files.append(path)
    return files


def figures(costs: pd.DataFrame, hourly: pd.DataFrame, n0: int, g0: float) -> dict[str, Figure]:
    """Fig. 5-10 after the paper, from the tables."""
    at_n = hourly[hourly.households == n0]
    at_g = hourly[hourly.generating == g0]
    default = at_n[at_n.generating == g0]
    return {
        "fig5_power_default": _fig5(default, n0, g0),
        "fig6_user_power_by_households": _lines(
            at_g, "households", "demand_kw_per_home", "homes",
            f"Fig. 6: power each home needs from the system ({g0:.0%} generating)"),
        "fig7_grid_power_by_households": _lines(
            at_g, "households", "grid_kw_per_home", "homes",
            f"Fig. 7: grid power per home ({g0:.0%} generating)"),
        "fig8_user_power_by_share": _lines(
            at_n, "generating", "demand_kw_per_home", "generating",
            f"Fig. 8: power each home needs from the system ({n0} homes)"),
        "fig9_grid_power_by_share": _lines(
            at_n, "generating", "grid_kw_per_home", "generating",
            f"Fig. 9: grid power per home ({n0} homes)"),
        "fig10_costs_by_share": _fig10(costs, n0),
    }


def _fig5(frame: pd.DataFrame, n: int, g: float) -> Figure:
    fig = Figure(figsize=(9, 4))
    ax = fig.subplots()
    ax.plot(frame.hour, frame.demand_kw, marker="o", ms=3, label="users (need from system)")
    ax.plot(frame.hour, frame.grid_kw, marker="s", ms=3, label="grid (supplied)")
    ax.fill_between(frame.hour, frame.grid_kw, frame.demand_kw, alpha=0.25,
                    label="traded between users")
    ax.set(xlabel="hour of day", ylabel="kW (kWh in the hour)",
           title=f"Fig. 5: total power, {n} homes, {g:.0%} generating")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return fig


def _lines(frame: pd.DataFrame, by: str, column: str, label: str, title: str) -> Figure:
    fig = Figure(figsize=(9, 4))
    ax = fig.subplots()
    for key, group in frame.groupby(by):
        text = f"{key:.0%}" if by == "generating" else f"{key}"
        ax.plot(group.hour, group[column], marker="o", ms=3, label=f"{text} {label}")
    ax.set(xlabel="hour of day", ylabel="kW per home", title=title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return fig


def _fig10(costs: pd.DataFrame, n0: int) -> Figure:
    fig = Figure(figsize=(12, 4.2))
    left, right = fig.subplots(1, 2)
    at_n = costs[costs.households == n0].pivot(index="generating", columns="class",
                                               values=["mean_cost_aud",
                                                       "mean_grid_only_cost_aud"])
    shares = list(at_n.index)
    width = 0.8 / len(CLASSES)
    for j, cls in enumerate(CLASSES):
        xs = np.arange(len(shares)) - 0.4 + width * (j + 0.5)
        left.bar(xs, at_n["mean_cost_aud"][cls], width, color=COLOURS[cls], label=cls)
        left.scatter(xs, at_n["mean_grid_only_cost_aud"][cls], marker="_", s=200,
                     color="black", label="grid only" if j == 0 else None)
    left.set_xticks(range(len(shares)), [f"{g:.0%}" for g in shares])
    left.axhline(0, color="#999", lw=0.8)
    left.set(xlabel="share of generating homes", ylabel="AUD per home per day",
             title=f"Fig. 10: average daily cost ({n0} homes)")
    left.legend(frameon=False, fontsize=8)
    for k, (n, group) in enumerate(costs.groupby("households")):
        for cls in CLASSES:
            rows = group[group["class"] == cls].dropna(subset=["cost_ratio"])
            right.plot(rows.generating, rows.cost_ratio, LINES[k % len(LINES)], marker="o",
                       ms=3, color=COLOURS[cls], label=f"{cls}, {n} homes")
    right.axhline(1, color="#999", lw=0.8)
    right.axhline(0, color="#999", lw=0.8)
    right.set(xlabel="share of generating homes", ylabel="cost / grid-only cost",
              title="Cost ratio per class")
    right.legend(frameon=False, fontsize=7, ncol=3, loc="lower left")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return fig
