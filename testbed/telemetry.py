"""Live telemetry of a run over MQTT, and the emergency stop that comes back the same way.

A lab's dashboards, loggers and safety panels already speak MQTT, so a run publishes its
event bus (:mod:`testbed.run.events`) under ``testbed/{run}/...`` and listens for an emergency
stop on ``testbed/{run}/estop`` and ``testbed/estop``. Besides these run-scoped topics,
:class:`RigTelemetry` keeps stable per-device topics that do not change from run to run,
``testbed/{rig}/{household}/{device}/{quantity}`` (table :data:`DEVICE_QUANTITIES`), each a
retained last value with its unit, wall-clock and lab/market time, at most one message per
topic per ``interval`` seconds; optionally announced to Home Assistant (MQTT discovery).
Topics and payloads: docs/telemetry.md.

The controller must never wait on the network: :attr:`MqttTelemetry.observer` only appends
to a queue, and one task publishes it in order. A broker that goes away is reconnected to
with back-off while the queue holds the events (readings are dropped first when it grows
past ``max_backlog``; market, ledger and safety events never are). Leaving the context
drains the queue, so the last trade and the final status reach the broker before a clean
disconnect; a process that dies instead leaves the retained last will ``offline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import json
import logging
import math
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from testbed.errors import InputError
from testbed.ledger.keys import Keyring, sign_status
from testbed.run.events import TOPICS

log = logging.getLogger(__name__)

PREFIX = "testbed"
GLOBAL_ESTOP = f"{PREFIX}/estop"
QOS_READINGS = 0  # high rate, superseded a period later: at most once is the right trade-off
QOS_EVENTS = 1  # market, ledger, safety and status events: at least once
_BATCH = 10  # publishes in flight at once (more only logs "pending publish calls" warnings)


class TelemetryError(Exception):
    """The broker could not be reached when the run asked for telemetry."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://[user:pass@]host[:port]`` (1883) or ``mqtts://...`` (TLS, 8883)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
        raise InputError("--mqtt", f"expected mqtt://host[:port] or mqtts://host[:port], "
                                   f"got {url!r}")
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise InputError("--mqtt", f"bad port in {url!r}") from None
    return BrokerAddress(parts.hostname, port, tls,
                         unquote(parts.username) if parts.username else None,
                         unquote(parts.password) if parts.password else None)


def make_client(addr: BrokerAddress, ca: str | None, identifier: str, timeout: float,
                will: aiomqtt.Will | None = None,
                persistent: bool = False) -> aiomqtt.Client:
    """One aiomqtt client as every part of the testbed connects: TLS when asked (``ca``
    names the broker's CA, else the system's), keep-alive 15 s, Nagle off. A
    ``persistent`` session makes the broker queue QoS 1 messages (an emergency stop) for
    this client id while the link is down, and deliver them on reconnect."""
    tls_context = ssl.create_default_context(cafile=ca) if addr.tls or ca else None
    return aiomqtt.Client(
        addr.host, addr.port, username=addr.username, password=addr.password,
        identifier=identifier, will=will, tls_context=tls_context, timeout=timeout,
        keepalive=15, clean_session=not persistent,
        # paho leaves Nagle on: the first messages would stall ~40 ms (field notes).
        socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),))


def topic_part(value: object) -> str:
    """One topic level: MQTT wildcards and separators cannot appear inside a level."""
    text = str(value)
    for ch in "/+#\0":
        text = text.replace(ch, "_")
    return text or "_"


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), default=str).encode()


def run_topic_filters() -> list[str]:
    """The subscription filters that match every run-scoped topic (``testbed/{run}/{kind}``,
    readings one level deeper) and none of the stable per-device topics: one per event
    topic of :data:`testbed.run.events.TOPICS`."""
    return [f"{PREFIX}/+/{kind}" + ("/+" if kind == "readings" else "") for kind in TOPICS]


@dataclass(frozen=True)
class Quantity:
    """One stable per-device topic: ``testbed/{rig}/{household}/{device}/{quantity}``.

    ``scale`` turns the reading's value into ``unit`` (the state of charge: a fraction, 0-1,
    published in %); ``ha_class`` is the Home Assistant ``device_class`` (None: none)."""

    device: str
    quantity: str
    unit: str
    scale: float = 1.0
    ha_class: str | None = None
    digits: int = 4  # decimals kept: below the meters' resolution, no float noise


# The one table from a reading row (testbed.run.controller, event ``readings``) to the
# stable topics. The setpoints are what the controller just wrote to the rig's instruments;
# the meter's power and energy are measured. Units are the rig's lab units (W, Wh).
DEVICE_QUANTITIES: dict[str, Quantity] = {
    "power_w": Quantity("meter", "power", "W", ha_class="power"),
    "meter_net_wh": Quantity("meter", "energy_net", "Wh", digits=6),
    "pv_w": Quantity("pv", "power_setpoint", "W", ha_class="power"),
    "load_w": Quantity("load", "power_setpoint", "W", ha_class="power"),
    "battery_w": Quantity("battery", "power_setpoint", "W", ha_class="power"),
    "soc": Quantity("battery", "soc", "%", scale=100.0, ha_class="battery", digits=2),
}
LIVE = ("starting", "running", "resumed")  # rig statuses of a run still going
HA_PREFIX = "homeassistant"


def device_topic(rig: str, household: object, q: Quantity) -> str:
    """``testbed/{rig}/{household}/{device}/{quantity}``: the same for every run on the rig."""
    return f"{PREFIX}/{topic_part(rig)}/{topic_part(household)}/{q.device}/{q.quantity}"


def rig_run_topic(rig: str) -> str:
    """``testbed/{rig}/run``: the rig's one retained status, which run it is on and how that
    run stands (``starting``, ``running``, ``resumed``, ``finished``, ``aborted``, ``failed``,
    or ``offline`` as the last will)."""
    return f"{PREFIX}/{topic_part(rig)}/run"


def wall_clock(epoch_s: float) -> dict[str, Any]:
    """``{"time": ISO 8601 UTC with milliseconds, "ts_ms": epoch milliseconds}``."""
    ms = round(epoch_s * 1000)
    iso = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")
    return {"time": iso.replace("+00:00", "Z"), "ts_ms": ms}


def _ha_id(*parts: object) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", "_".join(str(p) for p in parts))


async def _stay_connected(make: Callable[[], aiomqtt.Client],
                          serve: Callable[[aiomqtt.Client], Awaitable[bool]],
                          connected: asyncio.Event, finished: Callable[[], bool],
                          on_lost: Callable[[aiomqtt.MqttError], None]) -> None:
    """Connect with ``make`` and ``serve`` until it returns True; on a lost link reconnect
    with back-off from 0.5 s to 5 s (the stop channel must come back quickly). The first
    connection's failure is raised: the caller is told before the run starts."""
    delay = 0.5
    while True:
        try:
            async with make() as client:
                connected.set()
                delay = 0.5
                if await serve(client):
                    return
        except aiomqtt.MqttError as e:
            if not connected.is_set():
                raise
            if finished():
                return
            on_lost(e)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def _await_connected(task: asyncio.Task[None], connected: asyncio.Event, timeout: float,
                           where: str) -> None:
    """Wait until ``task`` has connected; :class:`TelemetryError` if it failed or timed out."""
    waiter = asyncio.create_task(connected.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=timeout,
                                 return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task in done:
        err = task.exception()
        raise TelemetryError(f"MQTT broker {where}: {err}") from err
    if not connected.is_set():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise TelemetryError(f"MQTT broker {where}: no answer")


class _Controllable(Protocol):
    def emergency_stop(self, reason: str = ...) -> None: ...


class StopSwitch:
    """Carries an emergency stop to a run's controller, even one asked for before it exists.

    ``run_scenario`` creates its controller inside; pass :meth:`attach` as its
    ``on_controller`` and :meth:`trip` to whatever can request a stop (MQTT, the HTTP API,
    a signal). A stop requested during set-up is applied the moment the controller appears.
    """

    def __init__(self) -> None:
        self.controller: _Controllable | None = None
        self.reason: str | None = None

    def attach(self, controller: _Controllable) -> None:
        self.controller = controller
        if self.reason is not None:
            controller.emergency_stop(self.reason)

    def trip(self, reason: str = "emergency stop") -> None:
        if self.reason is None:
            self.reason = reason
        if self.controller is not None:
            self.controller.emergency_stop(self.reason)

    @property
    def tripped(self) -> bool:
        return self.reason is not None


class RigTelemetry:
    """Stable per-device topics of one rig, the same whichever run drives it.

    Every reading row becomes one retained message per quantity of :data:`DEVICE_QUANTITIES`
    on ``testbed/{rig}/{household}/{device}/{quantity}``::

        {"value": 31.25, "unit": "W", "time": "2026-11-30T18:40:01.123Z",
         "ts_ms": 1796064001123, "lab_s": 1.0, "market_hour": 0.025,
         "run": "422c72cbeb3e"}

    ``time``/``ts_ms`` are the wall clock (UTC) when the controller emitted the reading,
    ``lab_s`` the controller's clock (virtual on the mock rig), ``market_hour`` the market
    hour the control period stands for. Values are coalesced: per topic only the latest is
    kept and all are published every ``interval`` wall seconds (and at the end), so a topic
    carries at most one message per ``interval`` however fast the run goes.

    The rig's one status is ``testbed/{rig}/run`` (retained; :func:`rig_run_topic`); its
    last will, on this connection of its own, says ``offline``. On connecting, the retained
    status of the rig's previous run is read there and, if that run has ended, its retained
    ``testbed/{run}/status`` is cleared: run statuses do not pile up on the broker.
    With ``ha_discovery`` each topic is announced once to Home Assistant
    (``{ha_prefix}/sensor/testbed_{rig}_{household}/{device}_{quantity}/config``).

    Raises :class:`TelemetryError` on entering if the broker cannot be reached.
    """

    def __init__(self, addr: BrokerAddress, *, rig: str, run_id: str, ca: str | None = None,
                 interval: float = 1.0, ha_discovery: bool = False,
                 ha_prefix: str = HA_PREFIX, connect_timeout: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        if not interval > 0:
            raise InputError("telemetry interval", f"expected seconds > 0, got {interval}")
        self.addr, self.ca, self.rig, self.run_id = addr, ca, rig, run_id
        self.interval = interval
        self.ha_discovery = ha_discovery
        self.ha_prefix = ha_prefix
        self.connect_timeout = connect_timeout
        self.clock = clock
        self.status_topic = rig_run_topic(rig)
        self.status: dict[str, Any] = {"run": run_id, "status": "starting"}
        self.cleared: list[str] = []  # run-status topics of ended runs cleared here
        self.published = 0
        self.coalesced = 0  # values superseded before they were sent
        self._latest: dict[str, bytes] = {}  # topic -> newest value, not yet sent
        self._control: deque[tuple[str, bytes]] = deque()  # QoS 1, retained, never dropped
        self._announced: set[str] = set()
        self._wake = asyncio.Event()
        self._seen_self = asyncio.Event()  # our own status came back: earlier ones are in
        self._connected = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    # -- from the event bus: sync, never blocks -----------------------------------------

    def readings(self, payload: dict[str, Any]) -> None:
        """One ``readings`` event: each row's quantities to their stable topics."""
        hour = payload.get("interval_hour")
        stamp = {**wall_clock(self.clock()), "run": self.run_id,
                 "market_hour": round(hour, 6) if isinstance(hour, int | float) else None}
        for row in payload.get("rows", []):
            household = row.get("household")
            for key, q in DEVICE_QUANTITIES.items():
                value = row.get(key)
                if not isinstance(value, int | float) or not math.isfinite(value):
                    continue  # absent, or not a number JSON can carry
                topic = device_topic(self.rig, household, q)
                if topic not in self._announced:
                    self._announce(topic, household, q)
                if topic in self._latest:
                    self.coalesced += 1
                elif not self._latest:
                    self._wake.set()  # the flusher sleeps while there is nothing to send
                self._latest[topic] = _json({"value": round(value * q.scale, q.digits),
                                             "unit": q.unit, **stamp, "lab_s": row.get("t")})

    def run_status(self, payload: dict[str, Any]) -> None:
        """One ``status`` event: the rig's retained status follows the run's."""
        scenario = payload.get("scenario", self.status.get("scenario"))
        self.status = {"run": self.run_id, "status": payload.get("status"),
                       **({} if scenario is None else {"scenario": scenario}),
                       **wall_clock(self.clock())}
        self._send_control(self.status_topic, self.status)

    def _announce(self, topic: str, household: object, q: Quantity) -> None:
        self._announced.add(topic)
        if not self.ha_discovery:
            return
        node = _ha_id("testbed", self.rig, household)
        config: dict[str, Any] = {
            "name": f"{q.device} {q.quantity.replace('_', ' ')}",
            "unique_id": _ha_id(node, q.device, q.quantity),
            "state_topic": topic, "value_template": "{{ value_json.value }}",
            "unit_of_measurement": q.unit, "state_class": "measurement",
            "json_attributes_topic": topic,
            "availability_topic": self.status_topic,
            "availability_template": "{{ 'online' if value_json.status in "
                                     f"{list(LIVE)} else 'offline' }}}}",
            "device": {"identifiers": [node], "name": f"testbed {self.rig} household "
                       f"{household}", "manufacturer": "testbed", "model": "HIL rig"}}
        if q.ha_class is not None:
            config["device_class"] = q.ha_class
        self._send_control(f"{self.ha_prefix}/sensor/{node}/{_ha_id(q.device, q.quantity)}"
                           "/config", config)

    def _send_control(self, topic: str, payload: dict[str, Any] | None) -> None:
        self._control.append((topic, b"" if payload is None else _json(payload)))
        self._wake.set()

    # -- connection ---------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(self.status_topic, _json({"run": self.run_id, "status": "offline"}),
                            qos=QOS_EVENTS, retain=True)
        return make_client(self.addr, self.ca, f"testbed-{topic_part(self.rig)}-"
                           f"{topic_part(self.run_id)}", self.connect_timeout, will)

    async def __aenter__(self) -> RigTelemetry:
        self._task = asyncio.create_task(_stay_connected(
            self._client, self._serve, self._connected, lambda: self._closing,
            lambda e: log.warning("MQTT (rig topics) connection lost (%s); reconnecting", e)),
            name=f"mqtt-rig-{self.rig}")
        try:
            await _await_connected(self._task, self._connected, self.connect_timeout + 1,
                                   f"{self.addr.host}:{self.addr.port}")
        except TelemetryError:
            self._task = None
            raise
        # Our own status coming back proves the previous run's retained one was handled.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._seen_self.wait(), self.connect_timeout)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self, timeout: float = 30.0) -> None:
        """Send the last values and statuses, then disconnect cleanly (no will)."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            log.warning("MQTT (rig topics): not flushed in %.0f s; giving up", timeout)
            self._task.cancel()
        except Exception:
            log.exception("MQTT rig telemetry task failed")
        with contextlib.suppress(BaseException):
            await self._task
        self._task = None

    async def _serve(self, client: aiomqtt.Client) -> bool:
        await client.subscribe(self.status_topic, qos=QOS_EVENTS)
        # (Re)state where the rig is: also overwrites a will fired while the link was down.
        self._control.appendleft((self.status_topic, _json(self.status)))
        listen = asyncio.create_task(self._listen(client))
        try:
            await self._flush_loop(client)
            return True
        finally:
            listen.cancel()
            await asyncio.gather(listen, return_exceptions=True)

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                data = json.loads(bytes(message.payload or b"{}"))
            except ValueError:
                continue
            if not isinstance(data, dict):
                continue
            previous = data.get("run")
            if previous == self.run_id:
                self._seen_self.set()
            elif message.retain and isinstance(previous, str) and data.get("status") not in LIVE:
                # The rig's previous run has ended: its retained status goes (MQTT clears a
                # retained message with an empty retained one). A live one is left alone.
                topic = f"{PREFIX}/{topic_part(previous)}/status"
                self.cleared.append(topic)
                self._send_control(topic, None)

    async def _flush_loop(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        next_values = loop.time()
        while True:
            self._wake.clear()  # before looking: whatever is queued from here on wakes us
            while self._control:  # statuses and announcements first, in order
                topic, body = self._control[0]
                await client.publish(topic, body, qos=QOS_EVENTS, retain=True)
                self._control.popleft()
                self.published += 1
            if self._latest and (self._closing or loop.time() >= next_values):
                values, self._latest = self._latest, {}
                items = list(values.items())
                try:
                    for i in range(0, len(items), _BATCH):
                        await asyncio.gather(*(client.publish(t, b, qos=QOS_READINGS,
                                                              retain=True)
                                               for t, b in items[i:i + _BATCH]))
                        self.published += len(items[i:i + _BATCH])
                except aiomqtt.MqttError:
                    for t, b in values.items():  # resent after reconnecting, unless newer
                        self._latest.setdefault(t, b)
                    raise
                next_values = loop.time() + self.interval
            if self._control:
                continue  # queued while the values went out
            if self._closing and not self._latest:
                return
            wait = max(0.0, next_values - loop.time()) if self._latest else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)


class MqttTelemetry:
    """Publish one run's events to an MQTT broker; call ``on_estop`` on an emergency stop.

    Use as ``async with MqttTelemetry(url, run_id=rid, on_estop=switch.trip) as tm:`` and
    pass ``tm.observer`` to ``run_scenario(..., run_id=rid, observers=[tm.observer])``.
    Entering connects (and raises :class:`TelemetryError` if the broker is not there, before
    the bench is touched); leaving publishes what is queued and disconnects cleanly.

    With ``rig`` (the rig's name) the readings and statuses also go to the rig's stable
    per-device topics (:class:`RigTelemetry`, its own connection and last will), at most one
    message per topic per ``device_interval`` seconds; ``ha_discovery`` announces them to
    Home Assistant.
    """

    def __init__(self, url: str, *, run_id: str, username: str | None = None,
                 password: str | None = None, tls: bool = False, ca: str | None = None,
                 on_estop: Callable[[str], Any] | None = None, client_id: str | None = None,
                 max_backlog: int = 100_000, drain_timeout: float = 30.0,
                 connect_timeout: float = 5.0, operator: Ed25519PrivateKey | None = None,
                 rig: str | None = None, ha_discovery: bool = False,
                 device_interval: float = 1.0) -> None:
        addr = parse_broker_url(url)
        self.host, self.port = addr.host, addr.port
        self.username = username if username is not None else addr.username
        self.password = password if password is not None else addr.password
        self.tls = tls or addr.tls or ca is not None
        self.ca = ca
        self.run_id = run_id
        # Status messages are signed with the operator's key: ``serve --mqtt`` lists a run
        # as live only on a status that verifies against the operator's public key.
        self.operator = operator if operator is not None else Keyring().operator()
        self.base = f"{PREFIX}/{topic_part(run_id)}"
        self.estop_topics = (f"{self.base}/estop", GLOBAL_ESTOP)
        self.on_estop = on_estop
        self.client_id = client_id or f"testbed-{topic_part(run_id)}"
        self.max_backlog = max_backlog
        self.drain_timeout = drain_timeout
        self.connect_timeout = connect_timeout
        self.published = 0
        self.dropped = 0  # readings dropped because the backlog was full
        self.estops: list[str] = []
        self._queue: deque[tuple[str, bytes, int, bool]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._connected = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.rig: RigTelemetry | None = None if rig is None else RigTelemetry(
            BrokerAddress(self.host, self.port, self.tls, self.username, self.password),
            rig=rig, run_id=run_id, ca=ca, interval=device_interval,
            ha_discovery=ha_discovery, connect_timeout=connect_timeout)
        # Event topic -> what it becomes on MQTT; any other topic is relayed as it is.
        self._routes: dict[str, Callable[[dict[str, Any]], None]] = {
            "readings": self._readings, "status": self._status}

    # -- the observer: sync, never blocks the controller --------------------------------

    def observer(self, topic: str, payload: dict[str, Any]) -> None:
        """EventBus observer: turn one event into MQTT messages and queue them."""
        route = self._routes.get(topic)
        if route is None:
            self._put(topic, payload, QOS_EVENTS)
        else:
            route(payload)

    def _readings(self, payload: dict[str, Any]) -> None:
        if self.rig is not None:
            self.rig.readings(payload)
        if len(self._queue) >= self.max_backlog:
            self.dropped += len(payload.get("rows", []))
            return
        t, hour = payload.get("t"), payload.get("interval_hour")
        for row in payload.get("rows", []):
            msg = {"run": self.run_id, **row, "period_t": t, "hour": hour}
            self._put(f"readings/{topic_part(row.get('household'))}", msg, QOS_READINGS)

    def _status(self, payload: dict[str, Any]) -> None:
        if self.rig is not None:
            self.rig.run_status(payload)
        self._put("status", sign_status(self.operator, f"{self.base}/status", payload),
                  QOS_EVENTS, retain=True)

    def _put(self, sub: str, payload: dict[str, Any], qos: int, retain: bool = False) -> None:
        self._queue.append((f"{self.base}/{sub}", _json(payload), qos, retain))
        self._idle.clear()
        self._wake.set()

    # -- connection ---------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        topic = f"{self.base}/status"
        will = aiomqtt.Will(topic, _json(sign_status(self.operator, topic, {
                                "run": self.run_id, "status": "offline"})),
                            qos=QOS_EVENTS, retain=True)
        return make_client(BrokerAddress(self.host, self.port, self.tls, self.username,
                                         self.password), self.ca, self.client_id,
                           self.connect_timeout, will, persistent=True)

    async def __aenter__(self) -> MqttTelemetry:
        self._task = asyncio.create_task(_stay_connected(
            self._client, self._subscribed, self._connected,
            lambda: self._closing and not self._queue, self._lost), name=f"mqtt-{self.run_id}")
        await _await_connected(self._task, self._connected, self.connect_timeout + 1,
                               f"{self.host}:{self.port}")
        if self.rig is not None:
            try:
                await self.rig.__aenter__()
            except BaseException:
                await self.close()
                raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Publish what is queued (bounded by ``drain_timeout``), then disconnect cleanly."""
        if self.rig is not None:
            await self.rig.close(self.drain_timeout)
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.drain_timeout)
        except TimeoutError:
            log.warning("MQTT: %d messages not published in %.0f s; giving up",
                        len(self._queue), self.drain_timeout)
            self._task.cancel()
        except Exception:
            log.exception("MQTT telemetry task failed")
        with contextlib.suppress(BaseException):
            await self._task
        self._task = None

    async def _subscribed(self, client: aiomqtt.Client) -> bool:
        await client.subscribe([(t, QOS_EVENTS) for t in self.estop_topics])
        return await self._serve(client)

    def _lost(self, e: aiomqtt.MqttError) -> None:
        log.warning("MQTT connection lost (%s); reconnecting; an emergency stop sent "
                    "meanwhile is queued by the broker", e)
        self._put("safety", {"run": self.run_id, "event": "estop_channel_lost",
                             "reason": str(e)}, QOS_EVENTS)

    async def _serve(self, client: aiomqtt.Client) -> bool:
        """Publish and listen until closing and drained (True) or the connection fails."""
        pub = asyncio.create_task(self._publish_loop(client))
        sub = asyncio.create_task(self._listen(client))
        try:
            done, _ = await asyncio.wait({pub, sub}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raises MqttError
            return pub in done
        finally:
            for task in (pub, sub):
                task.cancel()
            await asyncio.gather(pub, sub, return_exceptions=True)

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue[i] for i in range(min(_BATCH, len(self._queue)))]
            # Taken off the queue only once sent, so a reconnect resends rather than loses.
            await asyncio.gather(*(client.publish(t, p, qos=q, retain=r)
                                   for t, p, q, r in batch))
            for _ in batch:
                self._queue.popleft()
            self.published += len(batch)

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if message.retain:
                # Delivered from the broker's store: sent before this run subscribed, stale.
                log.warning("MQTT: ignoring a retained message on %s", message.topic)
                continue
            # One printable line whatever was sent: it goes to terminals and logs.
            raw = bytes(message.payload or b"")[:200].decode("utf-8", "replace")
            body = "".join(c if c.isprintable() else "?" for c in raw)
            reason = f"MQTT {message.topic}" + (f": {body}" if body else "")
            self.estops.append(reason)
            log.warning("emergency stop requested over %s", reason)
            self._put("safety", {"run": self.run_id, "event": "estop_requested",
                                 "source": "mqtt", "topic": str(message.topic),
                                 "message": body}, QOS_EVENTS)
            if self.on_estop is not None:
                try:
                    result = self.on_estop(reason)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("on_estop callback failed")

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far has been published (tests, tooling)."""
        await asyncio.wait_for(self._idle.wait(), timeout)
