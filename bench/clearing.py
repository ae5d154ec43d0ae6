"""Figure 1: our dual-bidding clearing against pymarket's Huang mechanism, same books.

For each size ``n`` (orders per side) one seeded book (:mod:`bench.books`) is built once,
as ``Order`` objects for ``contracts.dual_bidding.clear`` and as pymarket's bid table for
its Huang mechanism (:mod:`bench._pymarket`), outside the timed part. ``testbed_s`` is the
best of a few ``clear(book)`` calls, ``pymarket_huang_s`` the best of a few
``HuangAuction(bids).run()`` (pymarket's merge, auction and split), up to
``--pymarket-max`` orders per side: beyond that it takes minutes (``null`` when pymarket is
not installed: ``pip install -r bench/requirements.txt``). ``huang_over_testbed``
is their ratio (> 1: ours is faster). (The numpy prototype measured here earlier became
:mod:`contracts.columnar` and was removed.)

``testbed_columnar_s`` is the columnar path, :func:`contracts.columnar.clear_arrays`, on the
same book as int64 columns (energy in Wh, price in ``10**-price_decimals`` AUD/kWh, the ids'
natural rank): best of the same number of calls. ``columnar_build_s`` is building those
columns from the generator's integer arrays (validation included), ``columnar_from_orders_s``
converting the ``Order`` objects instead (:func:`contracts.columnar.from_orders`, one call),
``columnar_to_clearing_s`` turning the result into a ``Clearing`` of ``Fill`` objects
(:func:`contracts.columnar.to_clearing`, one call), and ``columnar_same_result`` whether that
``Clearing`` equals the object path's field for field (fills, rejected ids, price, method,
details). ``object_over_columnar`` is ``testbed_s`` over ``testbed_columnar_s``.

From 100,000 orders per side, ``testbed_gc_off_s`` is one more run of our clearing with
Python's cyclic garbage collector off: what the collections triggered during the clearing
cost (each full one walks every live object, the whole book included).

Growth: ``exponent`` is the least-squares slope of log(time) on log(n) over the sizes of at
least 1,000 orders per side (1 is linear; n log n shows as a little above 1), and
``per_n_log_n`` the time over ``n log2 n`` per size, flat for O(n log n).

The top-level ``orders_per_side``, ``testbed_s``, ``testbed_columnar_s`` and
``pymarket_huang_s`` repeat the largest size that both mechanisms cleared (or the largest
size, if pymarket ran at none); ``target`` has both paths' times at 1,000,000 per side.
"""

from __future__ import annotations

import gc
import importlib
import math
import time
from fractions import Fraction
from types import ModuleType
from typing import Any

import numpy as np

from bench import books
from bench._common import best_of, emit, fit_exponent, parser, profile_top, ratio
from contracts.columnar import (
    ColumnBook,
    Labels,
    SideColumns,
    clear_arrays,
    from_orders,
    to_clearing,
)
from contracts.dual_bidding import clear
from contracts.orders import Order

try:  # the baseline is installed for the benchmark only (bench/requirements.txt)
    _pymarket: ModuleType | None = importlib.import_module("bench._pymarket")
except ImportError:
    _pymarket = None

TARGET_1M_S = 2.0
GC_FROM = 100_000


def _repeats(n: int) -> int:
    return 5 if n <= 10_000 else 3 if n <= 100_000 else 1


def row(n: int, seed: int, decimals: int, pymarket_max: int) -> dict[str, Any]:
    """Every figure for one size."""
    started = time.perf_counter()
    book = books.order_book(n, seed, decimals)
    out: dict[str, Any] = {"orders_per_side": n, "book_build_s": time.perf_counter() - started}
    result = clear(book)
    out["testbed_s"] = best_of(lambda: clear(book), _repeats(n))
    out |= {"per_order_pair_us": out["testbed_s"] / n * 1e6,
            "per_n_log_n_ns": out["testbed_s"] / (n * math.log2(n)) * 1e9,
            "testbed_price": None if result.price is None else float(result.price),
            "testbed_method": result.method, "testbed_fills": len(result.fills),
            "testbed_volume_kwh": float(result.volume)}
    if n >= GC_FROM:  # how much of it is the cyclic GC walking the live book
        gc.disable()
        try:
            out["testbed_gc_off_s"] = best_of(lambda: clear(book), 1)
        finally:
            gc.enable()
    out |= _columnar(n, seed, decimals, book, result)
    out["object_over_columnar"] = ratio(out["testbed_s"], out["testbed_columnar_s"])
    out["pymarket_huang_s"] = None
    if _pymarket is not None and n <= pymarket_max:
        pm = _pymarket
        table = pm.bids(books.raw_book(n, seed, decimals), 10**decimals)
        trans, extra = pm.clear(table)
        out["pymarket_huang_s"] = best_of(lambda: pm.clear(table), 3 if n <= 1000 else 1)
        out |= {"huang_price_sell": extra.get("price_sell"),
                "huang_price_buy": extra.get("price_buy"),
                "huang_volume_kwh": extra.get("quantity_traded", 0.0),
                "huang_transactions": len(trans)}
    out["huang_over_testbed"] = ratio(out["pymarket_huang_s"], out["testbed_s"])
    gc.collect()
    return out


def _columnar(n: int, seed: int, decimals: int, book: list[Order], result: Any) -> dict[str, Any]:
    """The columnar path on the same book: build the columns, clear, compare."""
    raw = books.raw_book(n, seed, decimals)
    started = time.perf_counter()
    cols = ColumnBook(  # ids "1", "2", ...: buys odd, sells even; natural rank = the number
        SideColumns(raw["buy_energy"], raw["buy_price"], np.arange(1, 2 * n, 2)),
        SideColumns(raw["sell_energy"], raw["sell_price"], np.arange(2, 2 * n + 1, 2)),
        energy_scale=1000, price_scale=10**decimals)
    out: dict[str, Any] = {"columnar_build_s": time.perf_counter() - started}
    res = clear_arrays(cols)
    out["testbed_columnar_s"] = best_of(lambda: clear_arrays(cols), _repeats(n))
    out["columnar_from_orders_s"] = best_of(lambda: from_orders(book), 1)
    labels = Labels([str(2 * k + 1) for k in range(n)], [str(2 * k + 2) for k in range(n)],
                    list(range(0, 2 * n, 2)), list(range(1, 2 * n, 2)))
    started = time.perf_counter()
    back = to_clearing(res, labels)
    out["columnar_to_clearing_s"] = time.perf_counter() - started
    out["columnar_same_result"] = back == result
    return out


def growth(rows: list[dict[str, Any]]) -> dict[str, Any]:
    big = [r for r in rows if r["orders_per_side"] >= 1000]
    out: dict[str, Any] = {"exponent": None, "exponent_sizes": [r["orders_per_side"] for r in big]}
    if len(big) >= 2:
        out["exponent"] = fit_exponent([r["orders_per_side"] for r in big],
                                       [r["testbed_s"] for r in big])
        out["columnar_exponent"] = fit_exponent([r["orders_per_side"] for r in big],
                                                [r["testbed_columnar_s"] for r in big])
    return out


def run(sizes: list[int], seed: int, decimals: int, pymarket_max: int,
        profile_orders: int | None) -> dict[str, Any]:
    rows = [row(n, seed, decimals, pymarket_max) for n in sizes]
    both = [r for r in rows if r["pymarket_huang_s"] is not None] or rows
    head = both[-1]
    out: dict[str, Any] = {
        "figure": "clearing",
        "orders_per_side": head["orders_per_side"], "testbed_s": head["testbed_s"],
        "testbed_columnar_s": head["testbed_columnar_s"],
        "pymarket_huang_s": head["pymarket_huang_s"],
        "huang_over_testbed": head["huang_over_testbed"],
        "pymarket": "installed" if _pymarket is not None else
        "not installed (pip install -r bench/requirements.txt)",
        "price_decimals": decimals, "seed": seed, "rows": rows, "growth": growth(rows),
        "target": {"orders_per_side": 1_000_000, "max_s": TARGET_1M_S},
    }
    at_1m = [r for r in rows if r["orders_per_side"] == 1_000_000]
    if at_1m:
        out["target"]["testbed_s"] = at_1m[0]["testbed_s"]
        out["target"]["met"] = at_1m[0]["testbed_s"] < TARGET_1M_S
        out["target"]["testbed_columnar_s"] = at_1m[0]["testbed_columnar_s"]
        out["target"]["columnar_met"] = at_1m[0]["testbed_columnar_s"] < TARGET_1M_S
    if profile_orders:
        book = books.order_book(profile_orders, seed, decimals)
        _, top = profile_top(lambda: clear(book, Fraction(1, 5)), 12)
        out["profile"] = {"orders_per_side": profile_orders, "top_by_own_time": top}
    return out


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--orders", default="1000",
                   help="orders per side, comma-separated (e.g. 100,1000,10000,100000,1000000)")
    p.add_argument("--pymarket-max", type=int, default=3000,
                   help="largest size given to pymarket (it grows about quadratically)")
    p.add_argument("--price-decimals", type=int, default=5, choices=(3, 4, 5, 6))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=int, default=None, metavar="N",
                   help="add a cProfile of our clearing at N orders per side")
    a = p.parse_args()
    sizes = [int(x) for x in a.orders.split(",") if x]
    emit(run(sizes, a.seed, a.price_decimals, a.pymarket_max, a.profile), a.json)


if __name__ == "__main__":
    main()
