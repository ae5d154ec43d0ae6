"""A CE-SDT community over one day: PV, batteries, loads, intervals, tariff, simulation.

The simulation is :func:`testbed.community.day.simulate_day`; nothing is imported here, so
that registering the `sweep` command does not load numpy and pvlib.
"""
