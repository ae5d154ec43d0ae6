"""A documented NSW time-of-use tariff and the solar feed-in, as exact fractions.

The CE-SDT paper's hourly price table (its Table 2, "Energy AU", November) did not survive in
our copy, so we use a published NSW retail time-of-use tariff instead:

* **Rates**: EnergyAustralia residential time of use in the Ausgrid (Sydney) network, as
  quoted by Elite Power Group, "Peak vs off-peak electricity times, hours and tariffs, NSW"
  (page updated 19 January 2026): off-peak 29.61 c/kWh, shoulder 37.33 c/kWh, peak
  70.65 c/kWh (retail rates as published to households, GST included).
* **Hours**: Ausgrid's three-period summer windows (1 November to 31 March, working
  weekdays) as Ausgrid's "Time of use pricing" page and Solar Choice's "Time of use tariff
  schedules" give them: peak 14:00-20:00, shoulder 07:00-14:00 and 20:00-22:00, off-peak
  22:00-07:00. Weekends have no peak; the day simulation therefore defaults to a Wednesday.
  These windows held from July 2018; since 1 July 2024 Ausgrid's network tariff has two
  periods, peak 15:00-21:00 every day, and retailers follow it at their own pace. We keep
  the three-period form because it is what the paper's "hourly" price table implies.
* The rates were taken from that comparison page when this model was written and could not
  be re-checked from the sandbox it was finished in; treat them as representative, and pass
  another :class:`~contracts.cesdt.Tariff` to compare.
* **Feed-in**: 10 c/kWh, the paper's "about 10 cents/kWh" (section 4.1).

Daily supply charges are left out: they are the same with or without trading, so they
would only dilute every cost ratio.
"""

from __future__ import annotations

from fractions import Fraction

from contracts.cesdt import Tariff

OFF_PEAK = Fraction("0.2961")
SHOULDER = Fraction("0.3733")
PEAK = Fraction("0.7065")
FEED_IN = Fraction("0.10")

RATES = {"off_peak": OFF_PEAK, "shoulder": SHOULDER, "peak": PEAK}

# Period of each hour of a summer working weekday, hour h covering [h:00, h+1:00).
PERIODS: tuple[str, ...] = (
    ("off_peak",) * 7  # 00-07
    + ("shoulder",) * 7  # 07-14
    + ("peak",) * 6  # 14-20
    + ("shoulder",) * 2  # 20-22
    + ("off_peak",) * 2  # 22-24
)


def nsw_time_of_use(feed_in: Fraction = FEED_IN) -> Tariff:
    """The tariff above as contract data: 24 hourly import prices and the feed-in."""
    return Tariff(tuple(RATES[p] for p in PERIODS), feed_in)
