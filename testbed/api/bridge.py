"""Runs of other processes, live on the dashboard: ``testbed serve --mqtt URL``.

A run started with ``testbed run ... --mqtt URL`` publishes its events (docs/telemetry.md);
the server subscribes to the run-scoped topics (``testbed/+/KIND``) on the same broker and
hands them to the live hub, so the dashboard follows that run as it follows its own. The
API's emergency stop goes the other way, onto ``testbed/estop``, which every run connected
to the broker obeys.

The hub follows one run at a time: a ``running`` status switches it to that run, and other
runs' events are left out. A status counts only when the operator signed it (its
``signature`` verifies against the operator's public key, ``operator.pub`` in the key
folder, :mod:`testbed.ledger.keys`): anyone who can publish on an open broker could otherwise list
a fake run as live. An unsigned or forged status is logged and dropped.

Readings arrive one household per message; the bridge puts the rows of one control period
together, as the hub expects. A malformed message is logged,
naming its topic, and dropped: another process's bug must not take the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from typing import Any

import aiomqtt

from testbed import json_input
from testbed.api.live import LiveHub
from testbed.errors import InputError
from testbed.ledger.keys import load_anchor, status_is_signed
from testbed.run.events import TOPICS
from testbed.telemetry import (
    GLOBAL_ESTOP,
    PREFIX,
    QOS_EVENTS,
    make_client,
    parse_broker_url,
    run_topic_filters,
)

log = logging.getLogger(__name__)
STARTED = ("running", "resumed")
MAX_MESSAGE = 1 << 20  # bytes: a status, block or reading is a few kB


def _finite(text: str) -> float:
    """A JSON number as a float, refused when it overflows (1e999) or is absurdly long."""
    value = float(text)
    if len(text) > 64 or not math.isfinite(value) or abs(value) >= 1e15:
        raise ValueError(f"number {text[:20]!r} out of bounds")
    return value


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not a number JSON allows")


class MqttBridge:
    def __init__(self, url: str, hub: LiveHub, *, username: str | None = None,
                 password: str | None = None, ca: str | None = None,
                 connect_timeout: float = 5.0, anchor: str | None = None) -> None:
        addr = parse_broker_url(url)  # InputError on a bad URL, before the server starts
        self.addr = addr.__class__(addr.host, addr.port, addr.tls or ca is not None,
                                   username if username is not None else addr.username,
                                   password if password is not None else addr.password)
        self.ca = ca
        self.anchor = anchor or self._anchor()
        self.hub = hub
        self.connect_timeout = connect_timeout
        self.identifier = f"testbed-serve-{uuid.uuid4().hex[:8]}"
        self.running: set[str] = set()  # runs whose last status says they are going
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._period: tuple[str, Any, Any, list[dict[str, Any]]] | None = None
        self._width: dict[str, int] = {}  # run -> households seen in its last full period

    @staticmethod
    def _anchor() -> str | None:
        try:
            return load_anchor()[0]
        except InputError as e:
            log.warning("MQTT bridge: %s; no run's status is accepted until it exists", e)
            return None

    # -- messages in --------------------------------------------------------------------

    def handle(self, topic: str, body: bytes, retained: bool = False) -> None:
        """One MQTT message from a run: to the hub, if it is about the run it follows."""
        parts = topic.split("/")
        if len(parts) < 3 or parts[0] != PREFIX or parts[2] == "estop":
            return
        run, kind = parts[1], parts[2]
        if kind not in TOPICS:
            log.warning("MQTT %s: unknown kind %r; ignored", topic, kind)
            return
        if len(body) > MAX_MESSAGE:
            log.warning("MQTT %s: %d bytes, more than %d; ignored", topic, len(body),
                        MAX_MESSAGE)
            return
        try:
            data = json_input.loads(body, parse_float=_finite, parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:
            log.warning("MQTT %s: not JSON (%s); ignored", topic, e)
            return
        if not isinstance(data, dict):
            log.warning("MQTT %s: expected a JSON object, got %s; ignored", topic,
                        type(data).__name__)
            return
        if kind == "status" and self.anchor is None:
            self.anchor = self._anchor()  # the operator's key may appear after we started
        if kind == "status" and (self.anchor is None
                                 or not status_is_signed(self.anchor, topic, data)):
            log.warning("MQTT %s: status not signed by the operator; ignored", topic)
            return
        data.pop("signature", None)
        data["run"] = run  # the topic names the run; a payload cannot claim another
        if kind == "status":
            status = data.get("status")
            if status in STARTED:
                self.running.add(run)
            else:
                self.running.discard(run)
            if retained and status not in STARTED:
                return  # how an old run ended: history, not live
        elif retained:
            return
        if kind == "status" and data.get("status") in STARTED and run != self.hub.run["id"]:
            self._flush()
            self.hub.observer("status", data)  # the hub switches to this run
            return
        if run != self.hub.run["id"]:
            return
        if kind == "readings":
            self._reading(run, data)
            return
        self._flush()
        self.hub.observer(kind, data)

    def _reading(self, run: str, row: dict[str, Any]) -> None:
        t = row.pop("period_t", row.get("t"))
        hour = row.pop("hour", None)
        row.pop("run", None)
        if self._period is not None and (self._period[0], self._period[1]) != (run, t):
            self._flush()
        if self._period is None:
            self._period = (run, t, hour, [])
        self._period[3].append(row)
        if len(self._period[3]) >= self._width.get(run, 10**9):
            self._flush()  # every rig of the period is in: no need to wait for the next

    def _flush(self) -> None:
        if self._period is None:
            return
        run, t, hour, rows = self._period
        self._period = None
        self._width[run] = len(rows)
        self.hub.observer("readings", {"run": run, "t": t, "interval_hour": hour, "rows": rows,
                                       "tripped": {}})

    # -- the connection -----------------------------------------------------------------

    async def run(self) -> None:
        """Subscribe and relay until cancelled; reconnect with back-off if the broker goes."""
        delay = 0.5
        while True:
            try:
                async with make_client(self.addr, self.ca, self.identifier,
                                       self.connect_timeout) as client:
                    self._client = client
                    # Run-scoped topics only: the rigs' stable per-device topics
                    # (testbed/RIG/HOUSEHOLD/DEVICE/QUANTITY) are not the hub's.
                    await client.subscribe([(f, QOS_EVENTS) for f in run_topic_filters()])
                    self.connected.set()
                    delay = 0.5
                    async for message in client.messages:
                        self.handle(str(message.topic), bytes(message.payload or b""),
                                    bool(message.retain))
            except aiomqtt.MqttError as e:
                log.warning("MQTT bridge: %s; reconnecting in %.1f s", e, delay)
            finally:
                self._client = None
                self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def estop(self, reason: str) -> bool:
        """Publish the emergency stop to every run on the broker; False if not connected."""
        client = self._client
        if client is None:
            return False
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(GLOBAL_ESTOP, reason.encode(), qos=QOS_EVENTS)
            return True
        return False
