"""Shared fixtures: the repo root on sys.path so tests run from a checkout too, and a key
folder of this test process's own (never the operator's ~/.config/testbed)."""

import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The operator's keys (testbed/ledger/keys.py) of every run a test makes, in-process or in a
# subprocess (which inherits the environment).
os.environ["TESTBED_HOME"] = tempfile.mkdtemp(prefix="testbed-home-")
os.environ.pop("TESTBED_KEY_PASSPHRASE", None)
# The API answers only its trusted Host names (loopback by default): the test client's
# "testserver" is one more (tests/test_hostile.py checks the default without it).
os.environ["TESTBED_ALLOWED_HOSTS"] = "127.0.0.1,localhost,::1,[::1],testserver"


@pytest.fixture
def handlers_kept() -> Iterator[None]:
    """The SIGINT and SIGTERM handlers as they were, after a test that installs its own
    (``testbed run``'s, in-process)."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in before.items():
        signal.signal(s, h)
