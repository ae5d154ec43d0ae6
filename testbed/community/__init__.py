"""A CE-SDT community over one day: PV, batteries, loads, intervals, tariff, simulation."""

from testbed.community.day import DayResult, simulate_day

__all__ = ["DayResult", "simulate_day"]
