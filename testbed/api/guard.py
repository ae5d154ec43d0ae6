"""The HTTP server's guards: which Host names it answers, and how often a client may guess
the token.

* **Trusted hosts.** A page on another site can make a browser talk to a server on the
  loopback address under its own name (DNS rebinding); the server answers only requests
  whose ``Host`` is in its list: ``--allowed-host`` (repeatable), else
  ``$TESTBED_ALLOWED_HOSTS`` (comma-separated), else the loopback names
  :data:`LOOPBACK`. Anything else is a 400.
* **Failed-token rate limit.** A client (by its address) that presented ``limit`` wrong
  tokens within ``window_s`` seconds gets 429 with ``Retry-After`` for every control request
  until the window has passed, the right token included, so guessing costs time.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
HOSTS_ENV = "TESTBED_ALLOWED_HOSTS"


def allowed_hosts(given: Sequence[str] | None = None) -> list[str]:
    """The Host names to answer: ``given``, else ``$TESTBED_ALLOWED_HOSTS``, else loopback."""
    if given:
        return list(given)
    env = [h.strip() for h in os.environ.get(HOSTS_ENV, "").split(",") if h.strip()]
    return env or list(LOOPBACK)


class FailedAuthLimiter:
    """Counts wrong tokens per client over a sliding window (thread-safe)."""

    def __init__(self, limit: int = 10, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str) -> deque[float]:
        q = self._failures.setdefault(client, deque())
        now = self.clock()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def retry_after(self, client: str) -> int | None:
        """Seconds the client must wait before its next attempt, or None if it may try."""
        with self._lock:
            q = self._recent(client)
            if len(q) < self.limit:
                return None
            return max(1, math.ceil(q[0] + self.window_s - self.clock()))

    def failed(self, client: str) -> None:
        with self._lock:
            q = self._recent(client)
            q.append(self.clock())
            if len(self._failures) > 10_000:  # a flood of addresses: forget the idle ones
                for key in [k for k, v in self._failures.items() if not v][:5_000]:
                    del self._failures[key]
