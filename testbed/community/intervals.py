"""Per-user settlement intervals, the paper's Eq. 14, deterministic from a seed.

The paper gives each user a random settlement interval ``ST`` (minutes) instead of the hour,
so that users of the same type do not all trade at once (and the network is less congested),
and scales hourly power to it:

    ``P_s = P_T * ST / 60``   (load),   ``P_s_pv = P_T_pv * ST / 60``   (PV)      (Eq. 14)

``P_T`` the mean power (kW) of hour ``T``, ``P_s`` the energy (kWh) of one interval. We draw
``ST`` from divisors of 60 (15, 20, 30, 60 minutes) and a random phase for each user on a
5-minute grid (the NEM's settlement period since October 2021, so requests meet in at most
288 rounds a day); an interval that straddles an hour boundary is the sum of Eq. 14 over its
pieces in each hour, which :func:`settled` takes from per-minute cumulative sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DAY_MINUTES = 24 * 60
SETTLEMENT_MINUTES: tuple[int, ...] = (15, 20, 30, 60)
PHASE_STEP = 5


def settled_energy(power_kw: float, st_minutes: int) -> float:
    """Eq. 14: energy (kWh) of an ``st_minutes`` interval inside one hour of mean power."""
    return power_kw * st_minutes / 60.0


def draw_intervals(
    n: int, seed: int, choices: Sequence[int] = SETTLEMENT_MINUTES, phase_step: int = PHASE_STEP
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's interval length ``ST`` (minutes) and phase (``[0, ST)``, on the grid
    ``gcd(ST, phase_step)``, so 1-minute intervals all start on the minute)."""
    if not choices or any(c <= 0 or 60 % c for c in choices):
        raise ValueError(f"settlement intervals must divide 60 minutes, got {list(choices)}")
    rng = np.random.default_rng(seed)
    st = rng.choice(np.asarray(choices, dtype=np.int64), size=n)
    grid = np.gcd(st, phase_step)
    phase = (rng.random(n) * (st // grid)).astype(np.int64) * grid
    return st, phase


def boundaries(st: int, phase: int, day: int = DAY_MINUTES) -> list[int]:
    """Interval boundaries (minutes) covering ``[0, day]``: 0, phase, phase+ST, ..., day."""
    return [0, *range(phase if phase > 0 else st, day, st), day]


@dataclass(frozen=True)
class IntervalTable:
    """Every interval of every user, sorted by start minute (then user): parallel arrays."""

    home: np.ndarray
    start: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return len(self.home)

    @property
    def hours(self) -> np.ndarray:
        return np.asarray((self.end - self.start) / 60.0, dtype=float)

    def ticks(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct start minutes and, for each, where its intervals begin in the table
        (with one extra entry, the table's length)."""
        starts, first = np.unique(self.start, return_index=True)
        return starts, np.append(first, len(self.start))


def interval_table(st: np.ndarray, phase: np.ndarray) -> IntervalTable:
    """All users' intervals from their ``ST`` and phase."""
    bounds = [np.asarray(boundaries(int(s), int(p)), dtype=np.int64) for s, p in zip(st, phase,
                                                                                    strict=True)]
    home = np.concatenate([np.full(len(b) - 1, i, dtype=np.int64) for i, b in enumerate(bounds)])
    start = np.concatenate([b[:-1] for b in bounds])
    end = np.concatenate([b[1:] for b in bounds])
    order = np.lexsort((home, start))
    return IntervalTable(home[order], start[order], end[order])


def cumulative(hourly_kw: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per-minute cumulative energy (kWh) of hourly mean-power profiles: the last axis goes
    from 24 hours to 24*60+1 minute marks."""
    per_minute = np.repeat(np.asarray(hourly_kw, dtype=float), 60, axis=-1) / 60.0
    zero = np.zeros((*per_minute.shape[:-1], 1))
    return np.concatenate((zero, np.cumsum(per_minute, axis=-1)), axis=-1)


def settled(cum: np.ndarray, row: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Energy (kWh) over minutes ``[start, end)`` of profile ``row`` of ``cum``: Eq. 14
    summed over the hours each interval spans."""
    return np.asarray(cum[row, end] - cum[row, start], dtype=float)
