"""pymarket's Huang mechanism, the baseline of ``bench.clearing`` (benchmark only).

pymarket 0.7.6 (PyPI, the last release, 2019) installs and imports on Python 3.11 with
numpy 2 and pandas 3, but ``HuangAuction.run()`` fails in its last step: pymarket's
``split_transactions_merged_players`` writes into ``row.copy().values``, which pandas 3
(copy-on-write) hands out read-only (``ValueError: assignment destination is read-only``).
:class:`Huang` replaces only that step with the same code on a writable copy; merging,
the auction itself and the split proportions are pymarket's own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pymarket as pm
from pymarket.transactions.transactions import TransactionManager


def _split(transactions: Any, bids: Any, maping: dict[int, list[int]]) -> Any:
    """pymarket's ``split_transactions_merged_players`` (no fees), on a writable row."""
    trans = TransactionManager()
    for _, t in transactions.get_df().iterrows():
        rows = maping[t.bid]
        perc = (bids.iloc[rows, :] / bids.iloc[rows, :].quantity.sum()).quantity
        for r in rows:
            t_ = np.array(t.values, dtype=object)  # pymarket: t.copy().values (read-only)
            t_[0] = r
            t_[1] *= perc[r]
            trans.add_transaction(*t_)
    return trans


class Huang(pm.HuangAuction):  # type: ignore[misc]
    """``pymarket.HuangAuction`` with its post-processing fixed for pandas 3."""

    def _cleanup(self, trans: Any) -> Any:
        return _split(trans, self.old_bids, self.maping)


def bids(raw: dict[str, np.ndarray], price_scale: int) -> Any:
    """The book of :func:`bench.books.raw_book` as pymarket's bid table (kWh, AUD/kWh)."""
    bm = pm.BidManager()
    n = len(raw["buy_energy"])
    be, bp = raw["buy_energy"].tolist(), raw["buy_price"].tolist()
    se, sp = raw["sell_energy"].tolist(), raw["sell_price"].tolist()
    for i in range(n):
        bm.add_bid(be[i] / 1000, bp[i] / price_scale, 2 * i, True)
        bm.add_bid(se[i] / 1000, sp[i] / price_scale, 2 * i + 1, False)
    return bm.get_df()


def clear(table: Any) -> tuple[Any, dict[str, Any]]:
    """Run the Huang mechanism: (transactions table, its extra: prices, quantity)."""
    trans, extra = Huang(table).run()
    return trans.get_df(), {k: float(v) for k, v in extra.items()}
