"""Scenario files (TOML): the market's data for a run, and the paper's published figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from contracts.numbers import exact, fmt
from contracts.settlement import Tariff
from testbed.config.tomlfile import Table, load_table, resolve
from testbed.errors import InputError


@dataclass(frozen=True, slots=True)
class ScenarioHousehold:
    id: str
    net_kwh: Fraction  # + surplus, - deficit over one interval
    price: Fraction | None  # ask or bid; None = places no order
    offer_kwh: Fraction | None = None  # what a seller offers if not its surplus
    orders: str = "scenario"  # who bids: ORDER_SOURCES (docs/agents.md)

    @property
    def side(self) -> str | None:
        if self.price is None or self.net_kwh == 0:
            return None
        return "sell" if self.net_kwh > 0 else "buy"

    @property
    def order_kwh(self) -> Fraction:
        return self.offer_kwh if self.offer_kwh is not None else abs(self.net_kwh)


@dataclass(frozen=True, slots=True)
class Profiles:
    daily_load_kwh: float
    latitude: float
    longitude: float
    date: str
    site: str
    timezone: str = "Australia/Sydney"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    title: str
    mechanism: str
    interval_hours: float
    alpha: Fraction
    tariff: Tariff
    token_symbol: str
    aud_per_token: Fraction
    opening_buyer: Fraction
    opening_seller: Fraction
    households: tuple[ScenarioHousehold, ...]
    profiles: Profiles
    paper: dict[str, Any] = field(default_factory=dict)
    # The paper's per-household token balances (its Tables 3, 5 and 6): id -> (before,
    # after) trading, exact; empty when the scenario file gives none.
    paper_balances: dict[str, tuple[Fraction, Fraction]] = field(default_factory=dict)
    source: str = ""
    agent_absent: str = "none"  # an agent's household with no order by the gate: ABSENT

    def opening_tokens(self, h: ScenarioHousehold) -> Fraction:
        return self.opening_buyer if h.net_kwh < 0 else self.opening_seller


# A household's ``orders``: the scenario's own order, or a signed order from its agent (an
# external HEMS or ``testbed agent``) over the agent protocol (docs/agents.md).
ORDER_SOURCES = ("scenario", "agent")
# ``agent_absent``: what an agent's household gets when nothing valid came by the gate.
ABSENT = ("none", "scenario")


def load_scenario(name_or_path: str) -> Scenario:
    source, text = resolve("scenarios", name_or_path)
    return scenario_from_table(load_table(source, text))


# Bounds of the exact figures a scenario gives: key -> (low, high), both inclusive.
BOUNDS: dict[str, tuple[Fraction, Fraction]] = {
    "net_kwh": (Fraction(-10_000), Fraction(10_000)),
    "price": (Fraction(0), Fraction(1_000)),
    "offer_kwh": (Fraction(1, 10**6), Fraction(10_000)),
    "alpha": (Fraction(0), Fraction(1)),
    "import_aud_per_kwh": (Fraction(0), Fraction(1_000)),
    "feed_in_aud_per_kwh": (Fraction(0), Fraction(1_000)),
    "aud_per_token": (Fraction(1, 10**6), Fraction(10**9)),
    "opening_buyer": (Fraction(0), Fraction(10**6)),
    "opening_seller": (Fraction(0), Fraction(10**6)),
    "paper_balance": (Fraction(0), Fraction(10**6)),  # a household's tokens in the paper
}

# [paper] tables of each household's token balance before and after trading (ETH as the
# paper prints it), keyed by household id; both or neither.
PAPER_BALANCES = ("households_eth_before", "households_eth_after")


def _exact(t: Table, key: str, default: Any = ..., bounds: str | None = None) -> Fraction:
    """An exact number within ``BOUNDS[bounds or key]``; its text bounded
    (``contracts.numbers``) before any arithmetic. InputError naming the file, table and
    key."""
    value = t.raw(key, default)
    if value is default and default is not ...:
        return value  # type: ignore[no-any-return]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InputError(t.where(key), f"expected a number, got {value!r}")
    try:
        x = exact(value)
    except ValueError as err:
        raise InputError(t.where(key), str(err)) from None
    low, high = BOUNDS[bounds or key]
    if not low <= x <= high:
        raise InputError(t.where(key), f"must lie in [{fmt(low)}, {fmt(high)}], got {value!r}")
    return x


def scenario_from_dict(source: str, data: dict[str, Any]) -> Scenario:
    """A scenario from parsed TOML (no line numbers in its messages)."""
    return scenario_from_table(Table(source, "", data))


def scenario_from_table(top: Table) -> Scenario:
    """A scenario from its top-level table; InputError naming FILE:LINE, table and key."""
    source = top.source
    tariff_t, token_t, prof_t = top.table("tariff"), top.table("token"), top.table("profiles")
    households = []
    for h in top.tables("households"):
        h.rename(f"households id={h.text('id')}")
        price = _exact(h, "price", None)
        if price is not None and price < 0:
            raise InputError(h.where("price"), f"must be >= 0, got {price}")
        offer = _exact(h, "offer_kwh", None)
        if offer is not None and offer <= 0:
            raise InputError(h.where("offer_kwh"), f"must be > 0, got {offer}")
        orders = h.text("orders", "scenario")
        if orders not in ORDER_SOURCES:
            raise InputError(h.where("orders"), f"expected one of {list(ORDER_SOURCES)}, "
                                                f"got {orders!r}")
        households.append(ScenarioHousehold(h.text("id"), _exact(h, "net_kwh"), price, offer,
                                            orders))
        h.reject_unknown()
    ids = [h.id for h in households]
    if not households:
        raise InputError(top.where("households"), "a scenario needs at least one household")
    if len(set(ids)) != len(ids):
        raise InputError(top.where("households"), "household ids must be unique")
    paper_t = top.table("paper", {})
    alpha = _exact(top, "alpha", Fraction(1, 5))
    if not 0 <= alpha <= 1:
        raise InputError(top.where("alpha"), f"must lie in [0, 1], got {alpha}")
    scenario = Scenario(
        name=top.text("name"),
        title=top.text("title", ""),
        mechanism=top.text("mechanism"),
        interval_hours=top.number("interval_hours", positive=True, low=1 / 60, high=24),
        alpha=alpha,
        tariff=Tariff(_exact(tariff_t, "import_aud_per_kwh"),
                      _exact(tariff_t, "feed_in_aud_per_kwh")),
        token_symbol=token_t.text("symbol", "ETH"),
        aud_per_token=_exact(token_t, "aud_per_token"),
        opening_buyer=_exact(token_t, "opening_buyer"),
        opening_seller=_exact(token_t, "opening_seller"),
        households=tuple(households),
        profiles=Profiles(
            daily_load_kwh=prof_t.number("daily_load_kwh", positive=True, high=10_000),
            latitude=prof_t.number("latitude", low=-90, high=90),
            longitude=prof_t.number("longitude", low=-180, high=180),
            date=_date(prof_t),
            site=prof_t.text("site", ""),
            timezone=_timezone(prof_t),
        ),
        paper={k: v for k, v in paper_t.data.items() if k not in PAPER_BALANCES},
        paper_balances=_paper_balances(paper_t, ids),
        source=source,
        agent_absent=top.text("agent_absent", "none"),
    )
    if scenario.agent_absent not in ABSENT:
        raise InputError(top.where("agent_absent"), f"expected one of {list(ABSENT)}, got "
                                                     f"{scenario.agent_absent!r}")
    if scenario.aud_per_token <= 0:
        raise InputError(token_t.where("aud_per_token"), "must be > 0")
    for t in (top, tariff_t, token_t, prof_t):
        t.reject_unknown()
    return scenario


def _paper_balances(paper: Table, ids: list[str]) -> dict[str, tuple[Fraction, Fraction]]:
    """``[paper.households_eth_before]`` and ``[paper.households_eth_after]``: each
    household's balance before and after trading as the paper prints it, for households of
    this scenario, the same ids in both; exact and bounded as every other figure."""
    if not any(paper.has(k) for k in PAPER_BALANCES):
        return {}
    before, after = (paper.table(k) for k in PAPER_BALANCES)  # one without the other: missing
    for t in (before, after):
        for hid in t.data:
            if hid not in ids:
                raise InputError(t.where(hid), "not a household of this scenario")
    if set(before.data) != set(after.data):
        raise InputError(after.where(", ".join(sorted(set(before.data) ^ set(after.data)))),
                         f"{PAPER_BALANCES[0]} and {PAPER_BALANCES[1]} must name the same "
                         "households")
    return {hid: (_exact(before, hid, bounds="paper_balance"),
                  _exact(after, hid, bounds="paper_balance"))
            for hid in ids if hid in before.data}


def _date(table: Table) -> str:
    """The day the profiles are drawn for, an ISO date (YYYY-MM-DD) that exists."""
    import datetime as dt

    text = table.text("date")
    try:
        dt.date.fromisoformat(text)
    except ValueError as err:
        raise InputError(table.where("date"), f"expected a date YYYY-MM-DD: {err}") from None
    return text


def _timezone(table: Table) -> str:
    """The site's IANA time zone: the PV shape is placed in its local clock hours."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = table.text("timezone", "Australia/Sydney")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(table.where("timezone"), f"unknown time zone {name!r} "
                         "(an IANA name such as 'Australia/Sydney')") from None
    return name
