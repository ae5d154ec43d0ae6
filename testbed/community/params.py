"""The CE-SDT scenario: every parameter of a community day that is not who or how many.

One frozen value, so that a run records exactly what it simulated (:meth:`as_dict`) and a
sweep varies only households, the generating share and the seed. Defaults and their
sources are documented where each model lives (``pv``, ``battery``, ``loads``, ``tariffs``,
``intervals``); the market's own choices are here.

Prices (Eq. 5/6, :data:`WEIGHTS`): a seller undercuts the recent average (``mu`` = 0.95),
and undercuts more the more spare energy it has (``lam`` = -0.01 AUD/kWh per kWh: energy
unsold by the end of its interval fetches only the feed-in); a buyer's limit is the recent
average plus 0.02 AUD/kWh per kWh it needs (``beta``; ``nu`` = 1). Suggestions are clamped
to ``[feed-in, grid price]``. Competing sellers thus bring the traded price down to the
feed-in, their outside option, within a few dozen trades: what the community gains over
the grid goes to the buyers, and what a generating home gains is the grid energy it no
longer buys. The window of recent prices is the last 20 trades.

Time: one contract tick is one second. Offers reach the contract after a network + HEMS
latency drawn from an exponential distribution (mean 4 s); the timeout is 30 ticks, so an
offer is late about once in 1,800 (``exp(-30/4)``) and is rejected with the reason.

Sellers' batteries: market.md step 5 has a supplier offer its PV surplus, "then battery
down to its minimum SOC"; we keep that (and Eq. 11) by default. A seller then sells the
energy its own evening needs at the feed-in and buys its evening back from the grid, so
in this model trading leaves Omega2 worse off than not trading (docs/community.md).
``keep_own_needs`` makes the HEMS keep what the home itself will need later in the day.

Weather: ``cloudiness`` 0.3 makes a mostly sunny mid-November day, about 30 kWh from a
5 kW roof (6 kWh/kWp; a clear day gives 7.2, the Clean Energy Council's best-month average
for Sydney is about 4.8).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

from contracts.cesdt import PriceWeights, Tariff
from testbed.community.battery import BatterySpec
from testbed.community.intervals import PHASE_STEP, SETTLEMENT_MINUTES
from testbed.community.pv import DEFAULT_DATE, SYDNEY, Site
from testbed.community.tariffs import nsw_time_of_use

WEIGHTS = PriceWeights(lam=Fraction("-0.01"), mu=Fraction("0.95"), beta=Fraction("0.02"),
                       nu=Fraction(1))


@dataclass(frozen=True)
class CommunityParams:
    """Eq. 5/6 weights, contract timeout (ticks), latency, price window, weather, battery,
    tariff, settlement intervals (Eq. 14) and the share of homes that ask for bids."""

    weights: PriceWeights = WEIGHTS
    timeout: int = 30
    mean_latency_s: float = 4.0
    price_window: int = 20
    date: str = DEFAULT_DATE
    site: Site = SYDNEY
    cloudiness: float = 0.3
    bidding: float = 1.0
    battery: BatterySpec = field(default_factory=BatterySpec)
    tariff: Tariff = field(default_factory=nsw_time_of_use)
    settlement_minutes: Sequence[int] = SETTLEMENT_MINUTES
    phase_step: int = PHASE_STEP
    passes: int = 3
    keep_own_needs: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.bidding <= 1.0:
            raise ValueError(f"bidding is a share in [0, 1], got {self.bidding}")
        if not 0.0 <= self.cloudiness <= 1.0:
            raise ValueError(f"cloudiness must lie in [0, 1], got {self.cloudiness}")
        if self.timeout < 0 or self.price_window < 1 or self.mean_latency_s < 0 or self.passes < 1:
            raise ValueError("need timeout >= 0, price_window >= 1, mean_latency_s >= 0, "
                             "passes >= 1")
        object.__setattr__(self, "settlement_minutes", tuple(self.settlement_minutes))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: exact numbers as decimal or fraction strings."""
        w = self.weights
        return {
            "weights": {k: str(getattr(w, k)) for k in ("lam", "mu", "beta", "nu", "tick")},
            "timeout_ticks": self.timeout, "mean_latency_s": self.mean_latency_s,
            "price_window": self.price_window, "date": self.date, "site": asdict(self.site),
            "cloudiness": self.cloudiness, "bidding": self.bidding,
            "battery": asdict(self.battery),
            "tariff": {"import_aud_per_kwh": [str(p) for p in self.tariff.import_prices],
                       "feed_in_aud_per_kwh": str(self.tariff.feed_in)},
            "settlement_minutes": list(self.settlement_minutes), "phase_step": self.phase_step,
            "passes": self.passes, "keep_own_needs": self.keep_own_needs,
        }
