"""``python -m testbed.cli``: the same as the ``testbed`` command."""
# ruff: noqa: E402  (the start-up signal handlers come before the imports)

from testbed.cli import early

early.install()

from testbed.cli.app import main

main()
