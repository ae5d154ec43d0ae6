"""The run's records: the signed hash-chained ledger, its keys, the EVM back-end, and the store.

Every SQL statement of the project lives in :mod:`testbed.ledger.store`.
"""
