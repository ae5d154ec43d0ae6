"""A community day's figures as its run row carries them, read strictly, beside the paper's.

A community day (``testbed run cesdt``) is simulated in logical time, so its figures live in
``runs.summary`` rather than in readings and trades: ``classes`` (costs per class, the CE-SDT
paper's Fig. 10) and ``hourly`` (power over the day, its Fig. 5). Bad data there is an error
that names the run and the field, never a silently empty plot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CLASSES = ("omega1", "omega2", "all")
CLASS_LABELS = {"omega1": "Ω1 (consume only)", "omega2": "Ω2 (PV + battery)", "all": "all"}
# The paper's Fig. 10 as its text states it (cost over grid-only cost, by generating share):
# at 50 % Omega1 pays 60.2 %, Omega2 19.6 %, everyone 43.1 %; at 70 % Omega1 pays 44.7 %
# (and Omega2 earns money, a sign the text gives without a number).
PAPER_COST_RATIO: dict[float, dict[str, float]] = {
    0.5: {"omega1": 0.602, "omega2": 0.196, "all": 0.431},
    0.7: {"omega1": 0.447},
}


class SummaryError(ValueError):
    """A run's stored summary is not what a community day writes."""


@dataclass(frozen=True)
class BenchRig:
    """One rig of the bench that played a home of the day: energy routed vs metered."""

    rig: str
    home: str
    routed_kwh: float
    metered_kwh: float


@dataclass(frozen=True)
class CommunityDay:
    hours: list[float]
    series: dict[str, list[float | None]]  # "demand", "grid", ... -> kW (mean over the hour)
    classes: dict[str, dict[str, float | None]]  # class -> cost_aud, grid_only_cost_aud, ratio
    generating: float | None  # share of generating homes (Omega2), when the run says
    paper: dict[str, float]  # the run's own reference ratios (summary.paper_fig10), if any
    bench: list[BenchRig]

    def paper_ratios(self) -> dict[str, float]:
        """The paper's cost ratios at this run's generating share (empty if it gives none)."""
        if self.paper:
            return self.paper
        if self.generating is None:
            return {}
        for share, ratios in PAPER_COST_RATIO.items():
            if math.isclose(share, self.generating, abs_tol=1e-9):
                return ratios
        return {}


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SummaryError(f"{where}: expected a number or null, got {value!r}")
    return float(value)


def _hourly(raw: Any, where: str) -> tuple[list[float], dict[str, list[float | None]]]:
    """Rows ``[{"hour": h, "demand_kw": ..., "grid_kw": ...}, ...]`` (what a community day
    run writes) or columns ``{"demand": [24 values], ...}`` (the simulation's own form)."""
    series: dict[str, list[float | None]] = {}
    if isinstance(raw, list):
        hours = []
        for i, row in enumerate(raw):
            if not isinstance(row, Mapping):
                raise SummaryError(f"{where}[{i}]: expected an object, got {row!r}")
            if "hour" not in row:
                raise SummaryError(f"{where}[{i}]: 'hour' is missing")
            hour = _number(row["hour"], f"{where}[{i}].hour")
            if hour is None:
                raise SummaryError(f"{where}[{i}].hour: expected a number, got null")
            hours.append(hour)
            for key, value in row.items():
                if key != "hour":
                    name = key.removesuffix("_kw")
                    series.setdefault(name, [None] * i).append(
                        _number(value, f"{where}[{i}].{key}"))
            for column in series.values():  # a key missing from this row: no value
                column.extend([None] * (i + 1 - len(column)))
        return hours, series
    if isinstance(raw, Mapping):
        lengths = set()
        for key, column in raw.items():
            if not isinstance(column, list):
                raise SummaryError(f"{where}.{key}: expected a list of numbers")
            series[str(key).removesuffix("_kw")] = [
                _number(v, f"{where}.{key}[{i}]") for i, v in enumerate(column)]
            lengths.add(len(column))
        if len(lengths) > 1:
            raise SummaryError(f"{where}: columns differ in length ({sorted(lengths)})")
        return [float(h) for h in range(lengths.pop() if lengths else 0)], series
    raise SummaryError(f"{where}: expected a list of hourly rows, got {type(raw).__name__}")


def _classes(raw: Any, where: str) -> dict[str, dict[str, float | None]]:
    if not isinstance(raw, Mapping):
        raise SummaryError(f"{where}: expected an object of classes, got {raw!r}")
    out = {}
    for name, figures in raw.items():
        if not isinstance(figures, Mapping):
            raise SummaryError(f"{where}.{name}: expected an object, got {figures!r}")
        for key in ("cost_aud", "grid_only_cost_aud", "cost_ratio"):
            if key not in figures:
                raise SummaryError(f"{where}.{name}: '{key}' is missing")
        out[str(name)] = {k: _number(v, f"{where}.{name}.{k}") for k, v in figures.items()}
    return dict(sorted(out.items(), key=lambda kv: (
        CLASSES.index(kv[0]) if kv[0] in CLASSES else len(CLASSES), kv[0])))


def _paper(raw: Any, where: str) -> dict[str, float]:
    """``{"omega1": {"ours": r, "paper": p}, ...}`` -> class -> p (null entries left out)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SummaryError(f"{where}: expected an object of classes, got {raw!r}")
    out = {}
    for name, v in raw.items():
        if not isinstance(v, Mapping):
            raise SummaryError(f"{where}.{name}: expected an object, got {v!r}")
        paper = _number(v.get("paper"), f"{where}.{name}.paper")
        if paper is not None:
            out[str(name)] = paper
    return out


def _bench(raw: Any, where: str) -> list[BenchRig]:
    if raw is None:
        return []
    rigs = raw.get("rigs") if isinstance(raw, Mapping) else None
    if not isinstance(rigs, list):
        raise SummaryError(f"{where}.rigs: expected a list of rigs")
    out = []
    for i, r in enumerate(rigs):
        at = f"{where}.rigs[{i}]"
        if not isinstance(r, Mapping):
            raise SummaryError(f"{at}: expected an object, got {r!r}")
        values = []
        for key in ("routed_kwh", "metered_kwh"):
            v = _number(r.get(key), f"{at}.{key}")
            if v is None:
                raise SummaryError(f"{at}.{key}: expected a number, got null")
            values.append(v)
        out.append(BenchRig(str(r.get("rig_household", i + 1)), str(r.get("home", "")),
                            *values))
    return out


def community_day(run: Mapping[str, Any]) -> CommunityDay | None:
    """The community-day figures of a run row (summary parsed), or None if it has none."""
    summary = run.get("summary")
    if not isinstance(summary, Mapping) or not ({"classes", "hourly"} & set(summary)):
        return None
    where = f"run {run.get('id')!r}: summary"
    hours, series = ([], {}) if summary.get("hourly") is None else _hourly(
        summary["hourly"], f"{where}.hourly")
    classes = {} if summary.get("classes") is None else _classes(
        summary["classes"], f"{where}.classes")
    raw_params = run.get("params")
    params: Mapping[str, Any] = raw_params if isinstance(raw_params, Mapping) else {}
    share = summary.get("generating", params.get("generating"))
    return CommunityDay(hours, series, classes, _number(share, f"{where}.generating"),
                        _paper(summary.get("paper_fig10"), f"{where}.paper_fig10"),
                        _bench(summary.get("bench"), f"{where}.bench"))
