"""The ``testbed`` command line: one typer app (:mod:`testbed.cli.app`), a module per group.

Command modules are thin: they parse options, call the work in :mod:`testbed.run`,
:mod:`testbed.ledger` or :mod:`testbed.report`, and print. Heavy libraries are imported
inside the commands that need them, so ``testbed --help`` starts fast.
"""
