"""Live telemetry of a run over MQTT, and the emergency stop that comes back the same way.

A lab's dashboards, loggers and safety panels already speak MQTT, so a run publishes its
event bus (:mod:`testbed.run.events`) under ``testbed/{run}/...`` and listens for an emergency
stop on ``testbed/{run}/estop`` and ``testbed/estop``. Topics and payloads: docs/telemetry.md.

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
import inspect
import json
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from testbed.errors import InputError
from testbed.ledger.keys import Keyring, sign_status

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


class MqttTelemetry:
    """Publish one run's events to an MQTT broker; call ``on_estop`` on an emergency stop.

    Use as ``async with MqttTelemetry(url, run_id=rid, on_estop=switch.trip) as tm:`` and
    pass ``tm.observer`` to ``run_scenario(..., run_id=rid, observers=[tm.observer])``.
    Entering connects (and raises :class:`TelemetryError` if the broker is not there, before
    the bench is touched); leaving publishes what is queued and disconnects cleanly.
    """

    def __init__(self, url: str, *, run_id: str, username: str | None = None,
                 password: str | None = None, tls: bool = False, ca: str | None = None,
                 on_estop: Callable[[str], Any] | None = None, client_id: str | None = None,
                 max_backlog: int = 100_000, drain_timeout: float = 30.0,
                 connect_timeout: float = 5.0, operator: Ed25519PrivateKey | None = None,
                 ) -> None:
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

    # -- the observer: sync, never blocks the controller --------------------------------

    def observer(self, topic: str, payload: dict[str, Any]) -> None:
        """EventBus observer: turn one event into MQTT messages and queue them."""
        if topic == "readings":
            if len(self._queue) >= self.max_backlog:
                self.dropped += len(payload.get("rows", []))
                return
            t, hour = payload.get("t"), payload.get("interval_hour")
            for row in payload.get("rows", []):
                msg = {"run": self.run_id, **row, "period_t": t, "hour": hour}
                self._put(f"readings/{topic_part(row.get('household'))}", msg, QOS_READINGS)
        elif topic == "status":
            self._put("status", sign_status(self.operator, f"{self.base}/status", payload),
                      QOS_EVENTS, retain=True)
        else:
            self._put(topic, payload, QOS_EVENTS)

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
        self._task = asyncio.create_task(self._run(), name=f"mqtt-{self.run_id}")
        waiter = asyncio.create_task(self._connected.wait())
        done, _ = await asyncio.wait({self._task, waiter}, timeout=self.connect_timeout + 1,
                                     return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._task in done:
            err = self._task.exception()
            raise TelemetryError(f"MQTT broker {self.host}:{self.port}: {err}") from err
        if not self._connected.is_set():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            raise TelemetryError(f"MQTT broker {self.host}:{self.port}: no answer")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Publish what is queued (bounded by ``drain_timeout``), then disconnect cleanly."""
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

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                async with self._client() as client:
                    self._connected.set()
                    delay = 0.5
                    await client.subscribe([(t, QOS_EVENTS) for t in self.estop_topics])
                    if await self._serve(client):
                        return
            except aiomqtt.MqttError as e:
                if not self._connected.is_set():
                    raise  # the first connection: the caller is told
                if self._closing and not self._queue:
                    return
                log.warning("MQTT connection lost (%s); reconnecting in %.1f s; an emergency "
                            "stop sent meanwhile is queued by the broker", e, delay)
                self._put("safety", {"run": self.run_id, "event": "estop_channel_lost",
                                     "reason": str(e)}, QOS_EVENTS)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)  # the stop channel must come back quickly

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
