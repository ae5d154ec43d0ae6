"""Seeded random order books, as a community's households would send them.

``n`` buy and ``n`` sell orders, ids the household numbers ``"1"``..``"2n"`` (interleaved
buy, sell), energies 0.001..5.000 kWh in whole Wh, prices 0.050..0.400 AUD/kWh (bids) and
0.030..0.350 (asks) in steps of ``10**-price_decimals``. With the default 5 decimals the
prices rarely tie, as pymarket's Huang mechanism needs (see ``bench.clearing``); with 3
(whole thousandths, as a HEMS may quote them) large books are full of ties on price and
energy, so the id tie-break is exercised too.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from contracts.orders import Order, Side

ENERGY_MILLI = (1, 5000)
BID = (0.050, 0.400)
ASK = (0.030, 0.350)


def raw_book(n: int, seed: int = 0, price_decimals: int = 5) -> dict[str, np.ndarray]:
    """The book as integer arrays: energy in Wh, price in ``10**-price_decimals`` AUD/kWh."""
    rng = np.random.default_rng(seed)
    scale = 10**price_decimals
    bid = (round(BID[0] * scale), round(BID[1] * scale))
    ask = (round(ASK[0] * scale), round(ASK[1] * scale))
    return {
        "buy_energy": rng.integers(ENERGY_MILLI[0], ENERGY_MILLI[1] + 1, n),
        "buy_price": rng.integers(bid[0], bid[1] + 1, n),
        "sell_energy": rng.integers(ENERGY_MILLI[0], ENERGY_MILLI[1] + 1, n),
        "sell_price": rng.integers(ask[0], ask[1] + 1, n),
    }


def order_book(n: int, seed: int = 0, price_decimals: int = 5) -> list[Order]:
    """``2n`` :class:`Order` objects (``n`` per side) in book order."""
    raw = raw_book(n, seed, price_decimals)
    scale = 10**price_decimals
    cache: dict[tuple[int, int], Fraction] = {}

    def frac(k: int, den: int) -> Fraction:
        f = cache.get((k, den))
        if f is None:
            f = cache[(k, den)] = Fraction(k, den)
        return f

    be, bp = raw["buy_energy"].tolist(), raw["buy_price"].tolist()
    se, sp = raw["sell_energy"].tolist(), raw["sell_price"].tolist()
    orders: list[Order] = []
    append = orders.append
    for i in range(n):
        append(Order(str(2 * i + 1), Side.BUY, frac(be[i], 1000), frac(bp[i], scale)))
        append(Order(str(2 * i + 2), Side.SELL, frac(se[i], 1000), frac(sp[i], scale)))
    return orders
