"""Gas and wall time of the market contract on an EVM (``contracts/evm/market.vy``).

For each ``--orders`` size ``n``: a fresh deployment with ``2 n`` certified households, the
buyers funded, then one interval exactly as ``testbed run --ledger evm`` drives it: ``n``
buy and ``n`` sell orders (each a transaction from its household's account), the
operator's ``clear`` and the oracle's ``settle`` with every household's reading. Books are
seeded (``bench/books.py``'s ranges, energies in whole Wh): about half of each side
crosses. Per size:

* ``order_gas``: mean gas of one order (``place_order``, intrinsic 21,000 included);
* ``clear_gas`` and ``settle_gas``: the whole transaction; ``fills``;
* ``interval_s``: wall time from the first order to the settlement mined.

``--node URL`` runs the same on a JSON-RPC node (receipts' ``gasUsed``) for the sizes up
to ``--node-max``. ``block`` fits the clearing and settlement gas linearly over the sizes
(least squares) and extrapolates to the largest book whose ``clear`` and whose ``settle``
each fit one block of ``--block-gas`` (30 M); ``--search`` measures it instead, by
bisecting the seeded books (``block.measured_largest_side``). The contract itself caps a
side at ``MAX_SIDE`` orders (``block.capped_by``).
"""

from __future__ import annotations

import random
import statistics
import time
from fractions import Fraction
from typing import Any

from bench._common import emit, parser
from contracts.evm import MAX_SIDE, WEI_PER_ETH
from testbed.ledger.evm import Chain, EmbeddedChain, EvmMarket, RpcChain

TARIFF = (Fraction("0.37"), Fraction("0.06"))
BLOCK_GAS = 30_000_000


def one_interval(chain: Chain, n: int, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    ids = [str(i + 1) for i in range(2 * n)]
    market = EvmMarket(chain, ids, alpha=Fraction(1, 5), import_aud_per_kwh=TARIFF[0],
                       feed_in_aud_per_kwh=TARIFF[1], aud_per_token=Fraction(370),
                       household_wei=WEI_PER_ETH // 10)
    book = []
    for k, h in enumerate(ids):
        side = "buy" if k < n else "sell"
        energy = Fraction(rng.randint(1, 5000), 1000)
        price = Fraction(rng.randint(5000 if side == "buy" else 3000,
                                     40000 if side == "buy" else 35000), 10**5)
        book.append((h, side, energy, price))
        if side == "buy":
            market.deposit(h, WEI_PER_ETH // 50)
    started = time.perf_counter()
    for h, side, energy, price in book:
        market.place(h, side, energy, price)
    clearing = market.clear()
    market.settle({h: clearing.sold(h) - clearing.bought(h) for h in ids})
    elapsed = time.perf_counter() - started
    gas = market.gas.by_kind
    return {"orders_per_side": n, "order_gas": round(statistics.fmean(gas["order"])),
            "order_gas_max": max(gas["order"]), "clear_gas": gas["clear"][0],
            "settle_gas": gas["settle"][0], "fills": len(clearing.fills),
            "deploy_gas": gas["deploy"][0], "interval_s": round(elapsed, 3),
            "interval_tx": 2 * n + 2,
            "clear_fits_block": gas["clear"][0] <= BLOCK_GAS,
            "settle_fits_block": gas["settle"][0] <= BLOCK_GAS}


def linear(xs: list[int], ys: list[int]) -> tuple[float, float]:
    """Least-squares intercept and slope."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def block_fit(rows: list[dict[str, Any]], block_gas: int) -> dict[str, Any]:
    ns = [r["orders_per_side"] for r in rows]
    out: dict[str, Any] = {"block_gas": block_gas, "max_side_in_contract": MAX_SIDE}
    if len(set(ns)) < 2:
        return out
    for key in ("clear_gas", "settle_gas"):
        a, b = linear(ns, [r[key] for r in rows])
        out[f"{key}_per_side_order"] = round(b)
        out[f"{key}_fixed"] = round(a)
        out[f"largest_side_by_{key}"] = int((block_gas - a) // b)
    fits = min(out["largest_side_by_clear_gas"], out["largest_side_by_settle_gas"])
    out["largest_side_in_one_block"] = min(fits, MAX_SIDE)
    out["capped_by"] = "MAX_SIDE" if fits > MAX_SIDE else "block gas"
    out["orders_per_block_at_mean_order_gas"] = block_gas // rows[-1]["order_gas"]
    return out


def largest_in_block(block_gas: int, hi: int) -> dict[str, Any]:
    """Bisect the seeded books for the largest side whose ``clear`` and ``settle`` each fit
    ``block_gas`` (measured, not extrapolated)."""
    lo, best = 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        row = one_interval(EmbeddedChain(gas_limit=2**40), mid)
        if row["clear_gas"] <= block_gas and row["settle_gas"] <= block_gas:
            lo, best = mid + 1, row
        else:
            hi = mid - 1
    return {"orders_per_side": None if best is None else best["orders_per_side"],
            "clear_gas": None if best is None else best["clear_gas"],
            "settle_gas": None if best is None else best["settle_gas"]}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--orders", default="10,100,1000", help="orders per side, comma-separated")
    p.add_argument("--node", default=None, help="also on this JSON-RPC node (http://...)")
    p.add_argument("--node-max", type=int, default=100, help="largest size on the node")
    p.add_argument("--block-gas", type=int, default=30_000_000)
    p.add_argument("--search", action="store_true",
                   help="also bisect for the largest side that fits one block (measured)")
    args = p.parse_args()
    sizes = [int(x) for x in args.orders.split(",")]
    # a transaction may use more gas than a block holds here: to measure what does not fit
    embedded = [one_interval(EmbeddedChain(gas_limit=2**40), n) for n in sizes]
    node = ([one_interval(RpcChain(args.node), n) for n in sizes if n <= args.node_max]
            if args.node else [])
    block = block_fit(embedded, args.block_gas)
    if args.search:
        block["measured_largest_side"] = largest_in_block(args.block_gas, MAX_SIDE)
    result: dict[str, Any] = {
        "rows": embedded,
        "block": block,
        "block_source": "embedded (its gas equals the node's receipts: tests/test_evm.py)",
        "node_rows": node,
        "node": args.node,
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
