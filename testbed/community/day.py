"""One day of a CE-SDT community, round by round in the contract's logical time.

The community (:mod:`testbed.community.homes`): ``households`` homes, a share
``generating`` of them in Omega2 (5 kW-peak PV and a 5 kWh battery, charged only from their
own PV), the rest in Omega1 (consume only), each with a load type, a PV type if it
generates, and its own settlement interval (Eq. 14).

At every minute where some homes start an interval (the HEMS forecasts the interval; the
forecast is the model, i.e. perfect), for those homes at once (numpy over the homes):

1. the unsold PV surplus of the previous interval is exported at the feed-in tariff;
2. PV covers the load; a surplus charges the battery (Eq. 7-10) and the rest becomes the
   home's *pool* for this interval; a deficit is drawn from the battery down to its Eq. 11
   reserve; what is still missing is the home's request, made at tick ``60 * minute``
   (ticks are seconds), its limit the Eq. 6 suggestion for its energy;
3. the contract broadcasts the round's requests; every generating home that is not
   buying answers (market.md step 5): its pool, then its battery down to its minimum SOC
   (its Eq. 11 reserve), within the rated power left in its interval, at the Eq. 5
   suggestion for its spare energy, never below the feed-in. Offers arrive after a seeded
   latency; a late one is rejected (:class:`~testbed.community.params.CommunityParams`).
   With ``keep_own_needs`` the battery also keeps what the home itself will need later
   in the day (:func:`_own_needs`);
4. :meth:`contracts.cesdt.Cesdt.settle_round` pairs requests and offers (Eq. 12/13), the
   grid covers the rest; sellers deliver from their pool first, then their battery.

Money is exact and integer: energies reach the contract in whole Wh and prices are whole
ticks or tariff prices, so every amount is an integer number of ``1 / units_per_aud`` AUD
(:class:`Money`). What the homes pay in all equals the grid's import revenue minus the
feed-in it paid, to the unit. The grid-only cost of a home is its whole load bought from
the grid, each interval at the price of the hour it starts in (no supply charges).

The day is a steady state: batteries open at ``SOC_dsr`` (where Eq. 11 leaves them) and the
contract's windows of recent prices open as the day before closed them (:func:`simulate_day`).

Flows are booked to the hour their interval starts in: the hourly series, and each home's
hourly PV, load and net energy onto the bus, which :mod:`testbed.run.community_bench` routes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

import numpy as np

from contracts.cesdt import Cesdt, Offer, Request, Round, Tariff, quantize, suggested_price
from contracts.orders import Side
from testbed.community import battery as bat
from testbed.community.homes import Community, build_community
from testbed.community.intervals import DAY_MINUTES, IntervalTable, cumulative, interval_table
from testbed.community.intervals import settled as settled_energy
from testbed.community.params import CommunityParams

CLASSES = ("omega1", "omega2", "all")
SERIES = ("demand", "grid", "p2p", "export", "load", "pv")
_WH = [Fraction(i, 1000) for i in range(20_001)]  # whole Wh as kWh, the common energies


def kwh(wh: int) -> Fraction:
    return _WH[wh] if wh < len(_WH) else Fraction(wh, 1000)


class Money:
    """Exact money as integers: ``wh`` Wh at a price of ``p`` AUD/kWh is
    ``wh * price_units(p)`` units of ``1 / units_per_aud`` AUD. Every price of the day
    (tariff, feed-in, whole ticks) has a denominator dividing ``price_den``."""

    def __init__(self, tariff: Tariff, tick: Fraction) -> None:
        dens = [p.denominator for p in tariff.import_prices]
        self.price_den = math.lcm(*dens, tariff.feed_in.denominator, tick.denominator)
        self.units_per_aud = 1000 * self.price_den

    def price_units(self, price: Fraction) -> int:
        if self.price_den % price.denominator:
            raise ValueError(f"price {price} is not a whole number of 1/{self.price_den} AUD")
        return price.numerator * (self.price_den // price.denominator)

    def aud(self, units: int) -> Fraction:
        return Fraction(units, self.units_per_aud)


class Recorder(Protocol):
    """Receives what the ledger seals: every round with its offers, every feed-in."""

    def round(self, hour: int, rnd: Round, offers: Sequence[Offer]) -> None: ...

    def export(self, hour: int, home: str, energy: Fraction, amount: Fraction) -> None: ...


@dataclass(frozen=True)
class DayResult:
    """Costs per class and hourly series of one simulated day.

    ``costs[c]`` for ``c`` in omega1, omega2, all: ``cost_aud``, ``grid_only_cost_aud`` and
    ``cost_ratio`` (``None`` for an empty class). ``hourly`` series are kWh per hour of day
    (mean kW): ``demand`` (what homes requested after their own PV and battery, the paper's
    "user usage"), ``grid`` (what the grid supplied to them), ``p2p``, ``export``, ``load``,
    ``pv``. ``household_cost`` etc. are exact AUD. ``home_hourly`` holds each home's hourly
    ``pv``, ``load`` and ``net`` (energy onto the bus, + export) as (homes, 24) arrays.
    """

    households: int
    generating: float
    seed: int
    ids: tuple[str, ...]
    omega2: tuple[str, ...]
    costs: dict[str, dict[str, float | None]]
    hourly: dict[str, list[float]]
    household_cost: dict[str, Fraction]
    grid_only_cost: dict[str, Fraction]
    grid_revenue: Fraction
    feed_in_paid: Fraction
    paid_to_peers: Fraction
    end_soc: dict[str, float]
    requests: int
    offers: int
    late_offers: int
    rounds: int
    fills: int
    passes: int
    home_hourly: dict[str, np.ndarray] = field(compare=False, repr=False)

    @property
    def class_sizes(self) -> dict[str, int]:
        n2 = len(self.omega2)
        return {"omega1": self.households - n2, "omega2": n2, "all": self.households}


Windows = tuple[tuple[Fraction, ...], tuple[Fraction, ...]]


def simulate_day(
    households: int = 100,
    generating: float = 0.5,
    seed: int = 0,
    params: CommunityParams | None = None,
    *,
    recorder: Recorder | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DayResult:
    """Run one day of CE-SDT trading; deterministic in its arguments (module doc).

    The windows of recent prices open as the day before closed them. The first pass opens
    them full of the feed-in price (where the default weights leave them every evening); if
    the day closes otherwise, it runs again from its close, at most ``params.passes``
    times. ``recorder`` sees only the last pass; ``progress(done, total)`` is called after
    each minute of each pass at which intervals start.
    """
    p = params or CommunityParams()
    day = _Day(build_community(households, generating, seed, p), generating, seed, p)
    opening: Windows = ((p.tariff.feed_in,) * p.price_window,) * 2
    for n in range(1, p.passes + 1):
        buffer = _Buffer() if recorder is not None else None
        run = _Pass(day, opening, buffer)
        run.go(progress)
        if run.closing() == opening or n == p.passes:
            break
        opening = run.closing()
    if buffer is not None and recorder is not None:
        buffer.replay(recorder)
    return run.result(n)


class _Buffer:
    """Holds a pass's recorder events until it is known to be the last pass."""

    def __init__(self) -> None:
        self.events: list[Callable[[Recorder], None]] = []

    def round(self, hour: int, rnd: Round, offers: Sequence[Offer]) -> None:
        self.events.append(lambda r: r.round(hour, rnd, offers))

    def export(self, hour: int, home: str, energy: Fraction, amount: Fraction) -> None:
        self.events.append(lambda r: r.export(hour, home, energy, amount))

    def replay(self, recorder: Recorder) -> None:
        for event in self.events:
            event(recorder)


class _PriceWindow:
    """The last ``size`` traded prices with a running sum (the same value as
    :func:`contracts.cesdt.mean_price` over the window, read at every round)."""

    __slots__ = ("prices", "total")

    def __init__(self, size: int, opening: Sequence[Fraction]) -> None:
        self.prices: deque[Fraction] = deque(maxlen=size)
        self.total = Fraction(0)
        self.extend(opening)

    def extend(self, prices: Sequence[Fraction]) -> None:
        for price in prices[-(self.prices.maxlen or 1):]:
            if len(self.prices) == self.prices.maxlen:
                self.total -= self.prices[0]
            self.prices.append(price)
            self.total += price

    def mean(self, default: Fraction) -> Fraction:
        return self.total / len(self.prices) if self.prices else default


class _Day:
    """What does not change between passes: the community, every interval's load, PV
    (Eq. 14) and Eq. 11 reserve, the money units."""

    def __init__(self, com: Community, generating: float, seed: int,
                 params: CommunityParams) -> None:
        self.com, self.generating, self.seed, self.p = com, generating, seed, params
        self.money = Money(params.tariff, params.weights.tick)
        self.table = t = interval_table(com.st, com.phase)
        self.load = settled_energy(cumulative(com.load_hourly), com.load_type[t.home], t.start,
                                   t.end)
        self.pv = np.where(com.generating[t.home], settled_energy(
            cumulative(com.pv_hourly), np.maximum(com.pv_type[t.home], 0), t.start, t.end), 0.0)
        self.hours = t.hours
        self.reserve = _reserves(params.battery, t, self.load, self.pv, len(com.ids))
        # What a seller's battery keeps from its offers (market.md step 5).
        self.keep = (np.maximum(self.reserve, _own_needs(params.battery, t, self.load, self.pv,
                                                         com.generating))
                     if params.keep_own_needs else self.reserve)


class _Pass:
    """One pass over the day: the state of every home, money, series and counters."""

    def __init__(self, day: _Day, opening: Windows, recorder: Recorder | None) -> None:
        self.day, self.p, self.money, self.recorder = day, day.p, day.money, recorder
        com, n = day.com, len(day.com.ids)
        self.contract = Cesdt(self.p.tariff, self.p.weights, self.p.timeout)
        self.index = {h: i for i, h in enumerate(com.ids)}
        self.bids = com.bids.tolist()
        self.gen_idx = np.flatnonzero(com.generating)
        self.hour_units = [self.money.price_units(x) for x in self.p.tariff.import_prices]
        self.latency = np.random.default_rng(np.random.SeedSequence(day.seed).spawn(6)[5])
        self.energy = np.full(n, self.p.battery.start_kwh)
        self.pool, self.budget, self.keep = np.zeros(n), np.zeros(n), np.zeros(n)
        self.cur_hour = np.zeros(n, dtype=np.int64)
        self.cost, self.grid_only = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        self.hourly = {k: np.zeros(24) for k in SERIES}
        self.per_home = {k: np.zeros((n, 24)) for k in ("pv", "load", "net")}
        self.sell_window = _PriceWindow(self.p.price_window, opening[0])
        self.buy_window = _PriceWindow(self.p.price_window, opening[1])
        self.grid_units = self.feed_units = self.peer_units = 0
        self.counts = dict.fromkeys(("requests", "offers", "late", "rounds", "fills"), 0)

    def go(self, progress: Callable[[int, int], None] | None) -> None:
        table, gen = self.day.table, self.day.com.generating
        ticks, bounds = table.ticks()
        for k, t in enumerate(ticks.tolist()):
            a, b = int(bounds[k]), int(bounds[k + 1])
            homes, hour = table.home[a:b], t // 60
            self.export(homes[gen[homes]])
            self.cur_hour[homes] = hour
            need = self.own_energy(a, b, homes, hour)
            asking = need > 0
            if asking.any():
                self.round(t, hour, homes[asking], need[asking])
            if progress is not None:
                progress(k + 1, len(ticks))
        self.export(self.gen_idx)

    def export(self, homes: np.ndarray) -> None:
        """Feed in the homes' unsold pools, booked to their interval's hour."""
        wh = _floor_wh(self.pool[homes])
        self.pool[homes] = 0.0
        sold = wh > 0
        homes, wh, hours = homes[sold], wh[sold], self.cur_hour[homes][sold]
        feed_in = self.p.tariff.feed_in
        units = wh * self.money.price_units(feed_in)
        self.cost[homes] -= units
        self.feed_units += int(units.sum())
        np.add.at(self.hourly["export"], hours, wh / 1000.0)
        self.per_home["net"][homes, hours] += wh / 1000.0
        if self.recorder is not None:
            ids = self.day.com.ids
            for h, w, hr in zip(homes.tolist(), wh.tolist(), hours.tolist(), strict=True):
                self.recorder.export(hr, ids[h], kwh(w), kwh(w) * feed_in)

    def own_energy(self, a: int, b: int, homes: np.ndarray, hour: int) -> np.ndarray:
        """Steps 1-2 for the intervals ``a:b`` of the table: PV, load and battery; returns
        each home's unmet need in whole Wh."""
        day, spec = self.day, self.p.battery
        load, pv, dt = day.load[a:b], day.pv[a:b], day.hours[a:b]
        self.grid_only[homes] += np.rint(load * 1000.0).astype(np.int64) * self.hour_units[hour]
        self.per_home["load"][homes, hour] += load
        self.per_home["pv"][homes, hour] += pv
        self.hourly["load"][hour] += load.sum()
        self.hourly["pv"][hour] += pv.sum()
        deficit = load.copy()
        g = day.com.generating[homes]
        if g.any():
            gh, net, gdt, res = homes[g], pv[g] - load[g], dt[g], day.reserve[a:b][g]
            e = self.energy[gh]
            charging = net >= 0.0
            x = np.where(charging, np.minimum(net, bat.charge_limit(spec, e, gdt)), 0.0)
            y = np.where(charging, 0.0,
                         np.minimum(-net, bat.discharge_limit(spec, e, gdt, res)))
            self.energy[gh] = bat.step(spec, e, (x - y) / gdt, gdt)
            self.pool[gh] = np.where(charging, net - x, 0.0)
            self.budget[gh] = spec.rated_kw * gdt - y
            self.keep[gh] = day.keep[a:b][g]
            deficit[g] = np.where(charging, 0.0, -net - y)
        return np.rint(deficit * 1000.0).astype(np.int64)

    def round(self, t: int, hour: int, buyers: np.ndarray, need: np.ndarray) -> None:
        """Steps 3-4: the requests made at minute ``t``, the offers, the contract, bills."""
        price = self.p.tariff.import_prices[hour]
        requests = self.requests(t, hour, price, buyers, need)
        offers = self.offers(t, price, buyers) if self.day.com.bids[buyers].any() else []
        rnd = self.contract.settle_round(requests, offers)
        self.bill(rnd, hour, buyers, need)
        c = self.counts
        c["requests"] += len(requests)
        c["offers"] += len(offers)
        c["rounds"] += 1
        c["fills"] += len(rnd.fills)
        if self.recorder is not None:
            self.recorder.round(hour, rnd, offers)

    def requests(self, t: int, hour: int, price: Fraction, buyers: np.ndarray,
                 need: np.ndarray) -> list[Request]:
        """Step 1, each limit the Eq. 6 suggestion for the request's energy."""
        p, ids = self.p, self.day.com.ids
        mean = self.buy_window.mean(price)
        limits: dict[int, Fraction] = {}
        out = []
        for h, wh in zip(buyers.tolist(), need.tolist(), strict=True):
            if not self.bids[h]:
                out.append(Request(ids[h], kwh(wh), False, price, 60 * t, hour))
                continue
            limit = limits.get(wh)
            if limit is None:
                limit = limits[wh] = suggested_price(Side.BUY, kwh(wh), mean, price, p.weights,
                                                     p.tariff.feed_in)
            out.append(Request(ids[h], kwh(wh), True, limit, 60 * t, hour))
        return out

    def offers(self, t: int, price: Fraction, buyers: np.ndarray) -> list[Offer]:
        """Step 5 for every generating home not buying in this round."""
        p, ids, spec = self.p, self.day.com.ids, self.p.battery
        s = np.setdiff1d(self.gen_idx, buyers, assume_unique=True)
        spare = _floor_wh(self.pool[s]) + _floor_wh(np.minimum(
            bat.available(spec, self.energy[s], self.keep[s]), np.clip(self.budget[s], 0, None)))
        s, spare = s[spare > 0], spare[spare > 0]
        delays = np.ceil(self.latency.exponential(p.mean_latency_s, size=len(s))).astype(int)
        self.counts["late"] += int((delays > p.timeout).sum())
        mean = self.sell_window.mean(price)
        asks: dict[int, Fraction] = {}
        out = []
        for h, wh, d in zip(s.tolist(), spare.tolist(), delays.tolist(), strict=True):
            ask = asks.get(wh)
            if ask is None:
                ask = asks[wh] = suggested_price(Side.SELL, kwh(wh), mean, price, p.weights,
                                                 p.tariff.feed_in)
            out.append(Offer(ids[h], kwh(wh), ask, 60 * t + d))
        return out

    def bill(self, rnd: Round, hour: int, buyers: np.ndarray, need: np.ndarray) -> None:
        """Step 9 on the homes' accounts: peers are paid fill by fill, the grid for the rest
        of each request; sellers deliver from their pool first, then their battery."""
        n, index, price_den = len(self.day.com.ids), self.index, self.money.price_den
        got: dict[int, list[int]] = {}  # buyer -> [Wh from peers, units paid to them]
        sold: dict[int, int] = {}  # seller -> Wh
        payer, payee, pay = [], [], []
        for f in rnd.fills:
            bi, si = index[f.buyer], index[f.seller]
            e, p = f.energy, f.price
            wh = e.numerator * (1000 // e.denominator)
            m = wh * p.numerator * (price_den // p.denominator)
            payer.append(bi)
            payee.append(si)
            pay.append(m)
            sold[si] = sold.get(si, 0) + wh
            acc = got.get(bi)
            if acc is None:
                got[bi] = [wh, m]
            else:
                acc[0] += wh
                acc[1] += m
        if pay:
            amounts = np.asarray(pay, dtype=np.int64)
            np.add.at(self.cost, np.asarray(payer), amounts)
            np.add.at(self.cost, np.asarray(payee), -amounts)
            self.peer_units += int(amounts.sum())
        peer_wh = np.zeros(n, dtype=np.int64)
        peer_wh[list(got)] = [v[0] for v in got.values()]
        grid_wh = need - peer_wh[buyers]
        self.cost[buyers] += grid_wh * self.hour_units[hour]
        self.grid_units += int(grid_wh.sum()) * self.hour_units[hour]

        sellers = np.fromiter(sold, dtype=np.int64, count=len(sold))
        swh = np.fromiter(sold.values(), dtype=np.int64, count=len(sold))
        from_pool = np.minimum(swh, _floor_wh(self.pool[sellers]))
        from_battery = (swh - from_pool) / 1000.0
        self.pool[sellers] -= from_pool / 1000.0
        self.energy[sellers] -= from_battery / self.p.battery.eta_d
        self.budget[sellers] -= from_battery
        self.per_home["net"][sellers, hour] += swh / 1000.0
        self.per_home["net"][buyers, hour] -= need / 1000.0
        window, tick = self.p.price_window, self.p.weights.tick
        self.sell_window.extend([f.price for f in rnd.fills[-window:]])
        self.buy_window.extend([quantize(Fraction(units, wh * price_den), tick)
                                for wh, units in list(got.values())[-window:]])
        self.hourly["demand"][hour] += need.sum() / 1000.0
        self.hourly["grid"][hour] += grid_wh.sum() / 1000.0
        self.hourly["p2p"][hour] += swh.sum() / 1000.0

    def closing(self) -> Windows:
        return tuple(self.sell_window.prices), tuple(self.buy_window.prices)

    def result(self, passes: int) -> DayResult:
        com, money, gen = self.day.com, self.money, self.day.com.generating
        members = {"omega1": ~gen, "omega2": gen, "all": np.ones_like(gen)}
        costs: dict[str, dict[str, float | None]] = {}
        for name, mask in members.items():
            c = money.aud(int(self.cost[mask].sum()))
            base = money.aud(int(self.grid_only[mask].sum()))
            costs[name] = {"cost_aud": float(c), "grid_only_cost_aud": float(base),
                           "cost_ratio": float(c / base) if base else None}
        soc = bat.soc(self.p.battery, self.energy)
        return DayResult(
            households=len(com.ids), generating=self.day.generating, seed=self.day.seed,
            ids=com.ids, omega2=com.omega2, costs=costs,
            hourly={k: [float(x) for x in v] for k, v in self.hourly.items()},
            household_cost={h: money.aud(int(c)) for h, c in zip(com.ids, self.cost,
                                                                strict=True)},
            grid_only_cost={h: money.aud(int(c)) for h, c in zip(com.ids, self.grid_only,
                                                                strict=True)},
            grid_revenue=money.aud(self.grid_units), feed_in_paid=money.aud(self.feed_units),
            paid_to_peers=money.aud(self.peer_units),
            end_soc={com.ids[i]: float(soc[i]) for i in self.gen_idx.tolist()},
            requests=self.counts["requests"], offers=self.counts["offers"],
            late_offers=self.counts["late"], rounds=self.counts["rounds"],
            fills=self.counts["fills"], passes=passes, home_hourly=self.per_home,
        )


def _reserves(spec: bat.BatterySpec, table: IntervalTable, load: np.ndarray, pv: np.ndarray,
              n: int) -> np.ndarray:
    """Eq. 11 reserve of every interval, from the forecast PV surplus still to come."""
    chargeable = np.minimum(np.clip(pv - load, 0.0, None), spec.rated_kw * table.hours)
    by_home = np.lexsort((table.start, table.home))
    c, homes = chargeable[by_home], table.home[by_home]
    inclusive = np.cumsum(c)
    before_home = np.concatenate(([0.0], inclusive))[np.searchsorted(homes, np.arange(n))]
    total = np.bincount(homes, weights=c, minlength=n)
    after = np.empty_like(chargeable)
    after[by_home] = total[homes] - (inclusive - before_home[homes])
    return bat.reserve(spec, np.clip(after, 0.0, None), (DAY_MINUTES - table.end) / 60.0)


def _own_needs(spec: bat.BatterySpec, table: IntervalTable, load: np.ndarray, pv: np.ndarray,
               gen: np.ndarray) -> np.ndarray:
    """What each generating home's battery must still hold at the end of each interval to
    serve the home's own forecast deficits for the rest of the day and end at SOC_dsr
    (backward over the home's intervals: a deficit adds what it will draw, a surplus
    takes off what it will charge, within Eq. 9 and Eq. 10). With
    ``CommunityParams.keep_own_needs`` a HEMS offers only what is above this."""
    homes = np.flatnonzero(gen)
    by_home = np.lexsort((table.start, table.home))
    keep = np.zeros(len(table))
    if not homes.size:
        return keep
    h_sorted = table.home[by_home]
    first = np.searchsorted(h_sorted, homes)
    count = np.searchsorted(h_sorted, homes, side="right") - first
    width = int(count.max())
    col = np.arange(width)
    valid = col[None, :] < count[:, None]
    where = np.where(valid, first[:, None] + col[None, :], 0)
    iv = by_home[where]  # (generators, intervals) -> table index
    net = np.where(valid, pv[iv] - load[iv], 0.0)
    cap = spec.rated_kw * table.hours[iv]
    draw = np.where(net < 0, np.minimum(-net, cap) / spec.eta_d, 0.0)
    charge = np.where(net > 0, np.minimum(net, cap) * spec.eta_c, 0.0)
    need = np.full(len(homes), spec.start_kwh + bat.CUTOFF_KWH)
    for k in range(width - 1, -1, -1):
        keep[iv[valid[:, k], k]] = need[valid[:, k]]
        need = np.clip(need + draw[:, k] - charge[:, k], spec.floor, spec.ceiling)
    return keep


def _floor_wh(kwh_values: np.ndarray) -> np.ndarray:
    """Whole Wh in ``kwh_values``, rounded down (never offer or export more than there is)."""
    return np.floor(kwh_values * 1000.0 + 1e-9).astype(np.int64)
