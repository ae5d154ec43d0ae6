"""What a run tells the outside world as it goes: one bus, a fixed set of topics.

Observers (MQTT publisher, WebSocket feed, tests) subscribe with a plain callable; the
controller never waits on them. An observer that needs I/O queues the event and does the
I/O in its own task. Payloads are JSON-ready dicts.

Topics: ``status`` (run state), ``readings`` (every control period: per-household rows),
``orderbook`` (the signed orders of an interval), ``clearing`` (price, method, volume),
``trade`` (one per fill), ``block`` (each sealed ledger block), ``safety`` (safe state,
limit trips, lost instruments, emergency stop).

On MQTT (:mod:`testbed.telemetry`, docs/telemetry.md) each topic goes to
``testbed/{run}/{topic}``, and ``readings`` and ``status`` also to the rig's stable
per-device topics ``testbed/{rig}/{household}/{device}/{quantity}`` and ``testbed/{rig}/run``
(the table ``testbed.telemetry.DEVICE_QUANTITIES``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

TOPICS = ("status", "readings", "orderbook", "clearing", "trade", "block", "safety")
Observer = Callable[[str, dict[str, Any]], None]
log = logging.getLogger(__name__)


class EventBus:
    def __init__(self, observers: list[Observer] | None = None,
                 context: dict[str, Any] | None = None) -> None:
        self.observers: list[Observer] = list(observers or [])
        self.context = dict(context or {})  # merged into every payload, e.g. the run id

    def subscribe(self, observer: Observer) -> None:
        self.observers.append(observer)

    def emit(self, topic: str, payload: dict[str, Any]) -> None:
        if topic not in TOPICS:
            raise ValueError(f"unknown event topic {topic!r}")
        payload = {**self.context, **payload}
        for observe in list(self.observers):
            try:
                observe(topic, payload)
            except Exception:  # an observer's bug must not stop the bench
                log.exception("observer failed on %s", topic)
