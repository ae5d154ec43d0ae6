"""Who is who in a community: classes, load and PV types, settlement intervals, bidding.

Everything is drawn from the seed through independent streams, so changing the share of
generating homes changes nothing else: a seeded order of the homes is cut at the share
(its first ``generating`` part is Omega2), so a larger share adds generators and keeps the
others. Types are dealt along that order from balanced, shuffled decks: any 5 consecutive
homes hold the 5 household sizes, any 15 all 15 load types, any 3 the 3 PV roofs, so one
class differs from another by who generates, not by which types it happened to draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from testbed.community.intervals import draw_intervals
from testbed.community.loads import PATTERNS, load_types
from testbed.community.params import CommunityParams
from testbed.community.pv import PV_TYPES, hourly_pv_kw


@dataclass(frozen=True, eq=False)
class Community:
    """Per home (arrays in home order): Omega2 or not, bids or not, load type, PV type
    (-1: none) and settlement interval; the 15 load and 3 PV profiles (hourly mean kW)."""

    ids: tuple[str, ...]
    generating: np.ndarray
    bids: np.ndarray
    load_type: np.ndarray
    pv_type: np.ndarray
    load_names: tuple[str, ...]
    load_hourly: np.ndarray  # (15, 24)
    pv_hourly: np.ndarray  # (3, 24)
    st: np.ndarray
    phase: np.ndarray

    @property
    def omega2(self) -> tuple[str, ...]:
        return tuple(i for i, g in zip(self.ids, self.generating.tolist(), strict=True) if g)


def build_community(households: int, generating: float, seed: int,
                    params: CommunityParams) -> Community:
    """The community of ``households`` homes, ``round(generating * households)`` of them
    generating (module doc)."""
    if households < 1:
        raise ValueError(f"households must be >= 1, got {households}")
    if not 0.0 <= generating <= 1.0:
        raise ValueError(f"generating is a share in [0, 1], got {generating}")
    s_types, s_deal, s_order, s_bid, s_st = np.random.SeedSequence(seed).spawn(5)
    types = load_types(int(s_types.generate_state(1)[0]))
    rank = np.empty(households, dtype=np.int64)
    rank[np.random.default_rng(s_order).permutation(households)] = np.arange(households)
    deal = np.random.default_rng(s_deal)
    n_patterns = len(PATTERNS)
    n_sizes = len(types) // n_patterns
    sizes, patterns = deal.permutation(n_sizes), deal.permutation(n_patterns)
    load_idx = sizes[rank % n_sizes] * n_patterns + patterns[(rank // n_sizes + rank) % n_patterns]
    gen = rank < round(generating * households)
    pv_idx = np.where(gen, deal.permutation(len(PV_TYPES))[rank % len(PV_TYPES)], -1)
    bids = np.random.default_rng(s_bid).random(households) < params.bidding
    st, phase = draw_intervals(households, int(s_st.generate_state(1)[0]),
                               params.settlement_minutes, params.phase_step)
    pv = np.array([hourly_pv_kw(t, site=params.site, date=params.date,
                                cloudiness=params.cloudiness, seed=seed) for t in PV_TYPES])
    return Community(
        ids=tuple(f"h{i + 1}" for i in range(households)), generating=gen, bids=bids,
        load_type=load_idx, pv_type=pv_idx, load_names=tuple(t.name for t in types),
        load_hourly=np.array([t.hourly_kw for t in types]), pv_hourly=pv, st=st, phase=phase)
