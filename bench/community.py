"""Figure 4: a CE-SDT community day in virtual time, and where its time goes.

``testbed.community.simulate_day`` for each ``--households`` size (half of the homes
generating, ``--seed``), with every home on ``--settlement-minutes`` (default 1: every home
settles every minute, 1,440 rounds; ``0`` keeps the scenario's own mix of intervals). The
day runs in the contract's logical time (ticks), so ``day_s`` is pure CPU: no clock is
waited on; a two-home day runs first, so one-time imports and caches are not billed to
the first size. ``profile`` is a cProfile of the largest size, run apart from the timed run (a
profile slows it), as the functions with the most own time, and ``by_module`` the same
time summed per source file.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections import defaultdict
from typing import Any

from bench._common import emit, parser, profile_rows
from testbed.community.day import simulate_day
from testbed.community.params import CommunityParams

TARGET_1000_S = 30.0


def _params(settlement_minutes: int) -> CommunityParams:
    if settlement_minutes:
        return CommunityParams(settlement_minutes=(settlement_minutes,))
    return CommunityParams()


def day(n: int, seed: int, params: CommunityParams) -> dict[str, Any]:
    started = time.perf_counter()
    r = simulate_day(households=n, generating=0.5, seed=seed, params=params)
    elapsed = time.perf_counter() - started
    return {"households": n, "day_s": elapsed, "rounds": r.rounds, "requests": r.requests,
            "offers": r.offers, "fills": r.fills,
            "us_per_request": elapsed / max(1, r.requests) * 1e6,
            "cost_ratio_all": r.costs["all"]["cost_ratio"]}


def profile(n: int, seed: int, params: CommunityParams) -> dict[str, Any]:
    prof = cProfile.Profile()
    prof.runcall(simulate_day, households=n, generating=0.5, seed=seed, params=params)
    stats = pstats.Stats(prof)
    modules: dict[str, float] = defaultdict(float)
    for (path, _line, _name), row in stats.stats.items():  # type: ignore[attr-defined]
        modules[_module(path)] += row[2]
    total = sum(modules.values()) or 1.0
    by_module = [{"module": m, "own_s": round(t, 3), "share": round(t / total, 3)}
                 for m, t in sorted(modules.items(), key=lambda kv: -kv[1])]
    return {"households": n, "profiled_s": total, "top_by_own_time": profile_rows(prof, 15),
            "by_module": by_module[:10]}


def _module(path: str) -> str:
    for root in ("contracts/", "testbed/", "drivers/"):
        if root in path:
            return root + path.split(root, 1)[1]
    if "fractions.py" in path:
        return "fractions (stdlib)"
    if "numpy" in path:
        return "numpy"
    return "builtins and other" if path.startswith("~") else path.rsplit("/", 1)[-1]


def run(sizes: list[int], seed: int, settlement_minutes: int, with_profile: bool
        ) -> dict[str, Any]:
    params = _params(settlement_minutes)
    simulate_day(households=2, generating=0.5, seed=seed, params=params)  # warm: imports, caches
    rows = [day(n, seed, params) for n in sizes]
    out: dict[str, Any] = {"figure": "community", "settlement_minutes": settlement_minutes or
                           list(params.settlement_minutes), "seed": seed, "rows": rows,
                           "households": rows[-1]["households"], "day_s": rows[-1]["day_s"],
                           "target": {"households": 1000, "max_s": TARGET_1000_S}}
    at_1000 = [r for r in rows if r["households"] == 1000]
    if at_1000:
        out["target"] |= {"day_s": at_1000[0]["day_s"],
                          "met": at_1000[0]["day_s"] < TARGET_1000_S}
    if with_profile:
        out["profile"] = profile(sizes[-1], seed, params)
    return out


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--households", default="100,1000", help="comma-separated sizes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--settlement-minutes", type=int, default=1,
                   help="every home's interval in minutes (0: the scenario's mix)")
    p.add_argument("--no-profile", action="store_true", help="skip the profile")
    a = p.parse_args()
    sizes = [int(x) for x in a.households.split(",") if x]
    emit(run(sizes, a.seed, a.settlement_minutes, not a.no_profile), a.json)


if __name__ == "__main__":
    main()
