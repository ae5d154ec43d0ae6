"""A CE-SDT community over one day: PV, batteries, loads, intervals, tariff, simulation.

The simulation is :func:`testbed.community.day.simulate_day`; nothing is imported here, so
that registering the `sweep` command does not load numpy and pvlib.
"""

# The largest community a day or a sweep takes: the paper simulates 15 to 100 households;
# memory grows with homes x ticks.
MAX_HOUSEHOLDS = 10_000
