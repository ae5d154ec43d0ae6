"""The market's rules: pure, deterministic code with no I/O, no asyncio and no clock.

Every party can re-execute these functions from the signed orders on the ledger and get
the same result, bit for bit: energy and prices are exact fractions, money is integers.
"""
