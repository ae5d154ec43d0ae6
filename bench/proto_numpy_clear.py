"""Prototype: the dual-bidding clearing of ``contracts/dual_bidding.py`` on numpy arrays.

Same contract, same result (``bench.clearing`` compares every fill, the price, the method,
the details and the rejected ids with ``contracts.dual_bidding.clear``: its
``prototype_same_result``), but:

1. the book goes to int64 arrays on the same common denominators (one pass over the
   orders), with a fall back to the reference when a value or a cumulative sum would not
   fit in 62 bits;
2. each side is sorted by one argsort of (price, energy, id rank) packed into an int64 (a
   ``np.lexsort`` if they do not fit) instead of ``sorted`` with a Python key building a
   ``natural_key`` tuple per order; ids that are all ASCII digits (household numbers) rank
   by their integer value, which is exactly what ``natural_key`` gives them; other ids are
   ranked once by ``natural_key``;
3. the matching walk is vectorised: the fills are the segments between the merged
   breakpoints of the two sides' cumulative energies, the buyer and the seller of each
   segment come from ``np.searchsorted``, and the walk stops at the first segment whose
   bid is below its ask (bids fall and asks rise along the walk, so that condition is
   monotone);
4. one :class:`~fractions.Fraction` per distinct fill energy, not one per fill.

What remains in Python is one pass over the orders to read them, and building the
``Fill`` objects of the result (``bench.clearing`` reports how the time splits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from itertools import repeat
from typing import Any

import numpy as np

from contracts.dual_bidding import METHOD_EXACT, METHOD_SPLIT
from contracts.dual_bidding import clear as reference_clear
from contracts.mechanism import Clearing, Fill
from contracts.orders import Order, Side, natural_key

LIMIT = 2**62  # values and cumulative sums must stay inside int64


def _common(values: list[Fraction]) -> tuple[int, list[int]] | None:
    """(common denominator, integer numerators over it), or None if they would not fit."""
    dens = {f.denominator for f in values}
    den = math.lcm(*dens)
    if len(dens) == 1:
        nums = [f.numerator for f in values]
    else:
        nums = [f.numerator * (den // f.denominator) for f in values]
    top = max(nums, default=0)
    if top * max(1, len(nums)) >= LIMIT:
        return None
    return den, nums


def id_rank(ids: list[str]) -> np.ndarray:
    """An int64 key per id that sorts (stably) as ``natural_key`` does."""
    if all(s.isascii() and s.isdigit() and len(s) < 18 for s in ids):
        return np.fromiter(map(int, ids), dtype=np.int64, count=len(ids))
    order = sorted(range(len(ids)), key=lambda k: natural_key(ids[k]))
    rank = np.empty(len(ids), dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(len(ids), dtype=np.int64)
    return rank


def match(orders: Sequence[Order]) -> dict[str, Any] | None:
    """The clearing as arrays (sorted sides, fill segments, where the walk stopped);
    None when the book does not fit int64 (the caller then uses the reference)."""
    ids = [o.id for o in orders]
    if len(set(ids)) != len(ids):
        raise ValueError("order ids must be unique within a book")
    energy = _common([o.energy for o in orders])
    price = _common([o.price for o in orders])
    if energy is None or price is None:
        return None
    e_den, e_nums = energy
    p_den, p_nums = price
    n = len(orders)
    e = np.fromiter(e_nums, dtype=np.int64, count=n)
    p = np.fromiter(p_nums, dtype=np.int64, count=n)
    buy = np.fromiter((o.side is Side.BUY for o in orders), dtype=bool, count=n)
    out = match_arrays(e, p, buy, id_rank(ids))
    out.update(ids=ids, e_den=e_den, p_den=p_den)
    return out


def match_arrays(e: np.ndarray, p: np.ndarray, buy: np.ndarray,
                 rank: np.ndarray) -> dict[str, Any]:
    """The matching on int64 arrays (energy, price over common denominators, side, id
    rank): the part of the clearing that does not touch a Python object per order."""
    b_idx, s_idx = np.flatnonzero(buy), np.flatnonzero(~buy)
    b_ord = b_idx[_order(-p[b_idx], -e[b_idx], rank[b_idx])]
    s_ord = s_idx[_order(p[s_idx], -e[s_idx], rank[s_idx])]
    out: dict[str, Any] = {"b_ord": b_ord, "s_ord": s_ord, "pb": p[b_ord], "ps": p[s_ord],
                           "k": 0, "q": 0}
    if not len(b_ord) or not len(s_ord):
        return out
    cum_b, cum_s = np.cumsum(e[b_ord]), np.cumsum(e[s_ord])
    top = min(int(cum_b[-1]), int(cum_s[-1]))
    # Both sums rise strictly (energies > 0): merge by one sort, drop the shared points
    # (np.union1d goes through a hash table in numpy 2, several times slower here).
    ends = np.sort(np.concatenate((cum_b, cum_s)))
    ends = ends[np.concatenate(([True], ends[1:] != ends[:-1]))]
    ends = ends[: np.searchsorted(ends, top, side="right")]
    starts = np.concatenate(([0], ends[:-1]))
    bi = np.searchsorted(cum_b, starts, side="right")
    si = np.searchsorted(cum_s, starts, side="right")
    crossing = out["pb"][bi] >= out["ps"][si]
    k = int(np.argmin(crossing)) if not crossing.all() else len(crossing)
    q = int(ends[k - 1]) if k else 0
    i = int(np.searchsorted(cum_b, q, side="right"))
    j = int(np.searchsorted(cum_s, q, side="right"))
    out.update(cum_b=cum_b, cum_s=cum_s, starts=starts[:k], ends=ends[:k], bi=bi[:k],
               si=si[:k], k=k, q=q, i=i, j=j)
    return out


def _order(*keys: np.ndarray) -> np.ndarray:
    """Indices sorting by ``keys`` (first is primary); ranks are unique, so the order is
    total. One argsort of a packed int64 key when the keys fit in 62 bits, else lexsort."""
    if not len(keys[0]):
        return np.zeros(0, dtype=np.int64)
    shifted = [k - k.min() for k in keys]
    bits = [max(1, int(k.max()).bit_length()) for k in shifted]
    if sum(bits) > 62:
        return np.lexsort(tuple(reversed(keys)))  # lexsort: last key is the primary one
    packed = np.zeros(len(keys[0]), dtype=np.int64)
    for k, b in zip(shifted, bits, strict=True):
        packed = (packed << b) | k
    return np.argsort(packed, kind="stable")


def clear(orders: Sequence[Order], alpha: Fraction = Fraction(1, 5)) -> Clearing:
    """Drop-in for ``contracts.dual_bidding.clear``: the same Clearing, field for field."""
    m = match(orders)
    if m is None:
        return reference_clear(orders, alpha)
    ids: list[str] = m["ids"]
    if not m["k"]:
        return Clearing((), tuple(ids), None, None)
    b_ord, s_ord, pb, ps = m["b_ord"], m["s_ord"], m["pb"], m["ps"]
    cum_b, cum_s, q, i, j = m["cum_b"], m["cum_s"], m["q"], m["i"], m["j"]
    p_den, e_den = m["p_den"], m["e_den"]
    nb, ns = len(b_ord), len(s_ord)

    part_b = i < nb and q > (int(cum_b[i - 1]) if i else 0)
    part_s = j < ns and q > (int(cum_s[j - 1]) if j else 0)
    details: dict[str, str]
    if part_b:
        method, price_int = METHOD_SPLIT, Fraction(int(pb[i]))
        details = {"marginal_order": ids[int(b_ord[i])], "long_side": "demand"}
    elif part_s:
        method, price_int = METHOD_SPLIT, Fraction(int(ps[j]))
        details = {"marginal_order": ids[int(s_ord[j])], "long_side": "supply"}
    else:
        # Sides are sorted by price, so each extreme is at the cut: O(1).
        lower = int(ps[j - 1]) if i >= nb else max(int(ps[j - 1]), int(pb[i]))
        upper = int(pb[i - 1]) if j >= ns else min(int(pb[i - 1]), int(ps[j]))
        method = METHOD_EXACT
        price_int = alpha * upper + (1 - alpha) * lower
        details = {"L": str(Fraction(lower, p_den)), "U": str(Fraction(upper, p_den))}
    price = price_int / p_den

    filled = np.zeros(len(ids), dtype=bool)
    filled[b_ord[: i + part_b]] = True
    filled[s_ord[: j + part_s]] = True
    rejected = tuple(ids[k] for k in np.flatnonzero(~filled).tolist())

    sellers = _pick(ids, s_ord[m["si"]])
    buyers = _pick(ids, b_ord[m["bi"]])
    qty = m["ends"] - m["starts"]
    values, inverse = np.unique(qty, return_inverse=True)
    fracs = [Fraction(v, e_den) for v in values.tolist()]
    energies = [fracs[k] for k in inverse.tolist()]
    fills = tuple(map(Fill, sellers, buyers, energies, repeat(price)))
    return Clearing(fills=fills, rejected=rejected, price=price, method=method,
                    details=details)


def _pick(ids: list[str], index: np.ndarray) -> list[str]:
    return [ids[k] for k in index.tolist()]
