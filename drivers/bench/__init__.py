"""Real instrument drivers by device role, built on an instrument file and a protocol link.

``drivers.bench.factories`` gives the ``scpi`` and ``modbus`` entries of the driver
registry; ``drivers.bench.health`` is the failure policy every driver shares.
"""
