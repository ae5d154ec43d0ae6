"""Scenario mechanism name -> contract instance: one table, no if-chains."""

from __future__ import annotations

from collections.abc import Callable

from contracts.dual_bidding import DualBidding
from contracts.grid_only import GridOnly
from contracts.mechanism import Mechanism
from testbed.config.scenario import Scenario
from testbed.errors import InputError

MECHANISMS: dict[str, Callable[[Scenario], Mechanism]] = {
    "dual_bidding": lambda s: DualBidding(alpha=s.alpha),
    "grid_only": lambda s: GridOnly(),
}


def mechanism_for(scenario: Scenario) -> Mechanism:
    try:
        return MECHANISMS[scenario.mechanism](scenario)
    except KeyError:
        raise InputError(f"{scenario.source} key 'mechanism'",
                         f"unknown mechanism {scenario.mechanism!r} "
                         f"(known: {', '.join(MECHANISMS)})") from None
