"""What every benchmark shares: timing, the machine's state, and the JSON/text output."""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import math
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


def machine() -> dict[str, Any]:
    """Where and under what load a figure was taken (this machine is shared: 2 cores)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            "loadavg_1m": round(load[0], 2), "platform": platform.platform(terse=True)}


def best_of(fn: Callable[[], Any], repeat: int = 3, *, min_time: float = 0.0) -> float:
    """The least wall time of ``repeat`` calls (the least disturbed by the other core's
    work); a call shorter than ``min_time`` is repeated in a loop and averaged."""
    best = math.inf
    gc.collect()
    for _ in range(max(1, repeat)):
        loops, elapsed = 0, 0.0
        started = time.perf_counter()
        while True:
            fn()
            loops += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_time:
                break
        best = min(best, elapsed / loops)
    return best


def profile_top(fn: Callable[[], Any], top: int = 12) -> tuple[Any, list[dict[str, Any]]]:
    """Run ``fn`` under cProfile; its result and the ``top`` entries by internal time."""
    prof = cProfile.Profile()
    result = prof.runcall(fn)
    return result, profile_rows(prof, top)


def profile_rows(prof: cProfile.Profile, top: int = 12) -> list[dict[str, Any]]:
    """The ``top`` entries of a finished profile by internal time (coroutines count one
    call per resumption)."""
    stats = pstats.Stats(prof, stream=io.StringIO())
    total = sum(v[2] for v in stats.stats.values()) or 1.0  # type: ignore[attr-defined]
    rows = []
    for (path, line, name), (_cc, ncalls, tottime, cumtime, _callers) in \
            stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{_short(path)}:{line}({name})", "calls": ncalls,
                     "tottime_s": round(tottime, 4), "cumtime_s": round(cumtime, 4),
                     "share_of_total": round(tottime / total, 3)})
    rows.sort(key=lambda r: -r["tottime_s"])
    return rows[:top]


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3", os.getcwd() + "/"):
        if marker in path:
            return path.split(marker, 1)[1] if marker.endswith("/") else path.rsplit("/", 1)[-1]
    return path


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def emit(result: dict[str, Any], as_json: bool) -> None:
    result = {**result, "machine": machine()}
    if as_json:
        json.dump(result, sys.stdout, default=_plain)
        sys.stdout.write("\n")
        return
    _print_text(result)


def _plain(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def _print_text(obj: Any, indent: str = "") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict | list) and v and not _flat_list(v):
                print(f"{indent}{k}:")
                _print_text(v, indent + "  ")
            else:
                print(f"{indent}{k}: {_fmt(v)}")
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, dict):
                print(f"{indent}- " + ", ".join(f"{k}={_fmt(v)}" for k, v in item.items()))
            else:
                print(f"{indent}- {_fmt(item)}")


def _flat_list(v: Any) -> bool:
    return isinstance(v, list) and all(not isinstance(x, dict | list) for x in v)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / den
