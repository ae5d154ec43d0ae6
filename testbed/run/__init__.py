"""A run on the bench: its lifecycle, the controller and supervisor, pre-flight, validation, DUTs.

Data flows one way: rig files (:mod:`testbed.config`) -> drivers -> :mod:`testbed.run` ->
contracts -> :mod:`testbed.ledger` -> :mod:`testbed.report`.
"""
