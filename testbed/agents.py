"""Household agents: the HEMS under test places its own orders over MQTT (docs/agents.md).

Per interval the market publishes the gate on ``testbed/{run}/gate`` (retained); each agent
household's agent publishes one signed order on ``testbed/{run}/orders/{household}`` before
the gate closes; after the block is sealed the market publishes what became of it on
``testbed/{run}/results/{household}``. Schemas and examples: docs/agents.md.

* :func:`check_order` turns one raw message into an order for the ledger, or the reason it
  is refused (malformed, another run or interval, another household's topic);
* :class:`MqttOrderSource` is the runner's :class:`testbed.run.runner.OrderSource` over MQTT;
* :func:`reference_agent` is ``testbed agent``: the built-in reference HEMS;
* :func:`enrol` writes agent keys and registers them with the operator; :func:`acl` writes
  a mosquitto ACL so each agent may publish only its own order topic.

Errors: :class:`testbed.errors.InputError` for bad keys and files.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts import ledger as rules
from contracts.numbers import exact, fmt
from testbed import json_input
from testbed.errors import InputError
from testbed.ledger.keys import _read_private, _write_private, home, load_anchor, public_hex

log = logging.getLogger(__name__)

PREFIX = "testbed"
MAX_MESSAGE = 4096  # bytes: an order is ~300; anything larger is refused unread
# field -> (JSON types allowed, what it must be) of an order message (docs/agents.md)
ORDER_SCHEMA: dict[str, tuple[tuple[type, ...], str]] = {
    "type": ((str,), '"order"'),
    "run": ((str,), "the gate's run"),
    "interval": ((int,), "the gate's interval"),
    "household": ((str,), "the agent's own household"),
    "side": ((str,), '"buy" or "sell"'),
    "energy_kwh": ((str,), "a decimal string > 0"),
    "price": ((str,), "a decimal string >= 0 (AUD/kWh)"),
    "nonce": ((int,), "an integer above the household's last"),
    "signature": ((str,), "128 hex digits, Ed25519 over the canonical order"),
}
# optional fields: on the EVM ledger, the order as the household's own signed transaction
ORDER_OPTIONAL: dict[str, tuple[tuple[type, ...], str]] = {
    "eth_tx": ((str,), "0x and the hex of a signed transaction calling place_order"),
}
_ETH_TX = re.compile(r"0x(?:[0-9a-f]{2}){60,1000}")


def gate_topic(run: str) -> str:
    return f"{PREFIX}/{run}/gate"


def order_topic(run: str, household: str) -> str:
    return f"{PREFIX}/{run}/orders/{household}"


def result_topic(run: str, household: str) -> str:
    return f"{PREFIX}/{run}/results/{household}"


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def check_order(raw: bytes, topic_household: str, run: str, interval: int,
                ) -> tuple[dict[str, Any] | None, str | None]:
    """The order in ``raw`` (published on ``topic_household``'s topic for gate ``run`` /
    ``interval``), or None and the reason it is refused before the ledger's rules see it:
    ``malformed: ...`` (not JSON, a field missing, of the wrong type, unknown, out of
    bounds), ``replayed: ...`` (for another run or interval) or ``not its household: ...``.
    Signature, certificate, nonce and funds are the ledger's (``contracts.ledger``)."""
    if len(raw) > MAX_MESSAGE:
        return None, f"malformed: {len(raw)} bytes, more than {MAX_MESSAGE}"
    try:
        body = json_input.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, TypeError, RecursionError):
        return None, "malformed: not a UTF-8 JSON object"
    if not isinstance(body, dict):
        return None, "malformed: not a JSON object"
    for key, (types, what) in ORDER_SCHEMA.items():
        value = body.get(key)
        if key not in body or isinstance(value, bool) or not isinstance(value, types):
            return None, f"malformed: {key!r} must be {what}"
    unknown = sorted(set(body) - set(ORDER_SCHEMA) - set(ORDER_OPTIONAL))
    if unknown:
        return None, f"malformed: unknown field {unknown[0]!r}"
    for key, (types, what) in ORDER_OPTIONAL.items():
        if key in body and (not isinstance(body[key], types)
                            or not _ETH_TX.fullmatch(str(body[key]))):
            return None, f"malformed: {key!r} must be {what}"
    if body["type"] != "order":
        return None, "malformed: 'type' must be \"order\""
    for key in ("energy_kwh", "price"):
        try:
            exact(body[key])
        except ValueError as err:
            return None, f"malformed: {key!r}: {err}"
    if body["run"] != run or body["interval"] != interval:
        return None, (f"replayed: an order for run {str(body['run'])[:40]!r} interval "
                      f"{body['interval']}, not this gate's (run {run!r} interval {interval})")
    if body["household"] != topic_household:
        return None, (f"not its household: an order for {str(body['household'])[:40]!r} "
                      f"on {topic_household!r}'s topic")
    return body, None


def sign_order(key: Ed25519PrivateKey, order: Mapping[str, Any]) -> dict[str, Any]:
    """``order`` with its ``signature``: Ed25519 over the canonical JSON of every other
    field (sorted keys, no spaces, UTF-8; ``contracts.ledger.order_message``)."""
    body = {k: v for k, v in order.items() if k != "signature"}
    return {**body, "signature": rules.sign(key, rules.order_message(body))}


# -- keys -----------------------------------------------------------------------------------


def agents_dir() -> Path:
    """Where the operator registers agent keys: ``agents/`` in the key folder."""
    return home() / "agents"


def load_key(path: Path) -> Ed25519PrivateKey:
    """An agent's private key file (PKCS#8 PEM, mode 0600). Raises InputError."""
    data = _read_private(path)
    try:
        key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError):
        raise InputError(str(path), "not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(str(path), "an agent key must be Ed25519")
    return key


def enrol(households: list[str], out: Path, lab_held: bool = False) -> list[Path]:
    """A new key per household written to ``out/{id}.key`` (PEM, 0600) for its agent; its
    public half registered with the operator (``agents/{id}.pub``; with ``lab_held`` also
    the private key, so the testbed may place the scenario's order for an absent agent).
    Returns the key files."""
    paths = []
    for h in households:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        _write_private(out / f"{h}.key", pem)
        reg = agents_dir()
        reg.mkdir(parents=True, exist_ok=True, mode=0o700)
        (reg / f"{h}.pub").write_text(public_hex(key) + "\n", "ascii")
        if lab_held:
            _write_private(reg / f"{h}.key", pem)
        else:  # a key the lab held before is no longer this household's
            (reg / f"{h}.key").unlink(missing_ok=True)
        paths.append(out / f"{h}.key")
    return paths


def registered(households: list[str]) -> dict[str, str | Ed25519PrivateKey]:
    """Each agent household's registered key: the lab-held private key if the operator keeps
    one, else the public key. InputError naming the file when one is not registered."""
    out: dict[str, str | Ed25519PrivateKey] = {}
    for h in households:
        held, pub = agents_dir() / f"{h}.key", agents_dir() / f"{h}.pub"
        if held.exists():
            out[h] = load_key(held)
        elif pub.exists():
            out[h] = load_anchor(pub)[0]
        else:
            raise InputError(str(pub), f"household {h!r} bids through an agent, but no agent "
                             f"key is registered for it (testbed agents keys RIG DIR)")
    return out


ETH_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def register_address(household: str, address: str) -> Path:
    """Register the Ethereum address of an account household ``household``'s HEMS holds
    the key of (``agents/{id}.eth``): on ``--ledger evm...`` the operator certifies that
    address instead of making one, and the household's orders are its HEMS's own
    transactions. Returns the file; InputError for an address that is not 0x + 40 hex."""
    if not ETH_ADDRESS.fullmatch(address.strip()):
        raise InputError(f"household {household}", f"{address[:60]!r} is not an Ethereum "
                         "address (0x and 40 hex digits)")
    reg = agents_dir()
    reg.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = reg / f"{household}.eth"
    path.write_text(address.strip() + "\n", "ascii")
    return path


def enrol_eth(households: list[str], out: Path) -> list[Path]:
    """A new Ethereum (secp256k1) key per household in ``out/{id}.eth.key`` (0x-hex, mode
    0600) for its HEMS, its address registered with :func:`register_address`."""
    from eth_account import Account

    paths = []
    for h in households:
        account = Account.create()
        _write_private(out / f"{h}.eth.key", ("0x" + bytes(account.key).hex() + "\n").encode())
        register_address(h, str(account.address))
        paths.append(out / f"{h}.eth.key")
    return paths


def load_eth_key(path: Path) -> str:
    """An agent's Ethereum key file (0x + 64 hex digits, mode 0600). Raises InputError."""
    text = _read_private(path).decode("ascii", "replace").strip()
    if not re.fullmatch(r"0x[0-9a-fA-F]{64}", text):
        raise InputError(str(path), "not an Ethereum private key (0x and 64 hex digits)")
    return text


def registered_addresses(households: list[str]) -> dict[str, str]:
    """The Ethereum addresses registered for ``households`` (those that have one)."""
    out = {}
    for h in households:
        path = agents_dir() / f"{h}.eth"
        if path.exists():
            text = path.read_text("ascii", "replace").strip()
            if not ETH_ADDRESS.fullmatch(text):
                raise InputError(str(path), "not an Ethereum address (0x and 40 hex digits)")
            out[h] = text
    return out


def acl(households: list[str], market_user: str = "testbed") -> str:
    """A mosquitto ACL file: the market (user ``market_user``) reads and writes the run's
    topics; the agent of household H (user ``agent-H``) publishes only on its own order
    topic and reads the gate, its results and its rig's readings."""
    lines = ["# mosquitto acl_file generated by `testbed agents acl` (docs/agents.md)",
             f"user {market_user}", "topic readwrite testbed/#", ""]
    for h in households:
        lines += [f"user agent-{h}", f"topic write {PREFIX}/+/orders/{h}",
                  f"topic read {PREFIX}/+/gate", f"topic read {PREFIX}/+/results/{h}",
                  f"topic read {PREFIX}/+/readings/{h}", ""]
    return "\n".join(lines)


# -- the market side: an order source over MQTT ---------------------------------------------


class Intake:
    """What every transport's order source shares: the gate's window. Messages that arrive
    while a gate is open are taken in arrival order until it closes (or, with
    ``close_when_complete``, once every agent household has sent a well-formed order);
    the rest are kept as late. A transport calls :meth:`arrive` and implements
    :meth:`announce` and :meth:`results`."""

    def __init__(self, run_id: str, gate_s: float = 10.0,
                 close_when_complete: bool = True) -> None:
        from testbed.telemetry import topic_part

        self.run_id, self.gate_s = topic_part(run_id), gate_s
        self.close_when_complete = close_when_complete
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._open = False
        self._late: list[tuple[str, bytes]] = []
        self.gate: dict[str, Any] | None = None

    def arrive(self, household: str, raw: bytes) -> None:
        if self._open:
            self._queue.put_nowait((household, raw))
        else:
            self._late.append((household, raw))

    async def announce(self, gate: dict[str, Any]) -> None:
        self.gate = gate

    async def results(self, results: Mapping[str, dict[str, Any]]) -> None:
        raise NotImplementedError

    async def collect(self, gate: dict[str, Any], households: list[str],
                      ) -> list[tuple[str, bytes]]:
        """Announce ``gate`` and return the (household, raw message) pairs that came before
        it closed, in arrival order."""
        while not self._queue.empty():
            self._late.append(self._queue.get_nowait())
        self._open = True
        await self.announce(gate)
        deadline = time.monotonic() + self.gate_s
        got: list[tuple[str, bytes]] = []
        waiting = set(households)
        while time.monotonic() < deadline and not (self.close_when_complete and not waiting):
            try:
                h, raw = await asyncio.wait_for(self._queue.get(), deadline - time.monotonic())
            except TimeoutError:
                break
            got.append((h, raw))
            if check_order(raw, h, gate["run"], gate["interval"])[0] is not None:
                waiting.discard(h)
        self._open = False
        while not self._queue.empty():
            got.append(self._queue.get_nowait())
        await self.announce({**gate, "state": "closed"})
        return got

    def late(self) -> list[tuple[str, bytes]]:
        """Messages that came while no gate was open (since the last call)."""
        out, self._late = self._late, []
        return out


class MqttOrderSource(Intake):
    """The runner's order source over MQTT (:class:`testbed.run.runner.OrderSource`): the gate on
    ``testbed/{run}/gate`` (retained), orders from ``testbed/{run}/orders/+``, results to
    ``testbed/{run}/results/{household}``. Use ``async with``."""

    def __init__(self, url: str, run_id: str, gate_s: float = 10.0,
                 close_when_complete: bool = True) -> None:
        super().__init__(run_id, gate_s, close_when_complete)
        self.url = url
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MqttOrderSource:
        from testbed.telemetry import make_client, parse_broker_url

        self._client = make_client(parse_broker_url(self.url), None,
                                   f"testbed-market-{self.run_id}", 5.0)
        await self._client.__aenter__()
        await self._client.subscribe(f"{PREFIX}/{self.run_id}/orders/+", qos=1)
        self._task = asyncio.create_task(self._listen())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(Exception):
            await self._client.publish(gate_topic(self.run_id), b"", qos=1, retain=True)
        with contextlib.suppress(Exception):
            await self._client.__aexit__(None, None, None)

    async def _listen(self) -> None:
        async for message in self._client.messages:
            household = str(message.topic).rsplit("/", 1)[-1]
            self.arrive(household, bytes(message.payload or b"")[:MAX_MESSAGE + 1])

    async def announce(self, gate: dict[str, Any]) -> None:
        self.gate = gate
        await self._client.publish(gate_topic(self.run_id), json.dumps(gate).encode(),
                                   qos=1, retain=True)

    async def results(self, results: Mapping[str, dict[str, Any]]) -> None:
        for h, body in results.items():
            await self._client.publish(result_topic(self.run_id, h),
                                       json.dumps(body).encode(), qos=1)


class HttpOrderSource(Intake):
    """The order source over HTTP for devices without MQTT (docs/agents.md): the market
    listens on ``host:port`` and answers ``GET /gate``, ``POST /orders/{household}`` (the
    order as the body, at most 4096 bytes; 202 when taken, the verdict comes in the result)
    and ``GET /results/{household}`` (404 until there is one). Use ``async with``."""

    def __init__(self, url: str, run_id: str, gate_s: float = 10.0,
                 close_when_complete: bool = True) -> None:
        from urllib.parse import urlsplit

        super().__init__(run_id, gate_s, close_when_complete)
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "http" or not parts.hostname or port is None:
            raise InputError("--agents", f"expected http://HOST:PORT to listen on, got {url!r}")
        self.host, self.port = parts.hostname, port
        self._results: dict[str, dict[str, Any]] = {}
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HttpOrderSource:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as e:
            raise InputError("--agents", f"cannot listen on {self.host}:{self.port}: "
                             f"{e.strerror}") from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def results(self, results: Mapping[str, dict[str, Any]]) -> None:
        self._results.update(results)

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await asyncio.wait_for(self._answer(reader), 10)
        except (TimeoutError, ValueError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ConnectionError):
            status, body = 400, {"error": "bad request"}
        data = json.dumps(body).encode()
        reason = {200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found",
                  413: "Payload Too Large"}[status]
        with contextlib.suppress(ConnectionError):
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
                         .encode() + data)
            await writer.drain()
        writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > 8192:
            return 400, {"error": "headers too long"}
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)}
        parts = path.split("?", 1)[0].strip("/").split("/")
        if method == "GET" and parts == ["gate"]:
            return (200, self.gate) if self.gate is not None else (404, {"error": "no gate"})
        if method == "GET" and len(parts) == 2 and parts[0] == "results":
            found = self._results.get(parts[1])
            return (200, found) if found is not None else (404, {"error": "no result yet"})
        if method == "POST" and len(parts) == 2 and parts[0] == "orders":
            length = int(headers.get("content-length", "-1"))
            if not 0 <= length <= MAX_MESSAGE:
                return 413, {"error": f"an order is 0 to {MAX_MESSAGE} bytes"}
            self.arrive(parts[1], await reader.readexactly(length))
            return 202, {"received": True}
        return 404, {"error": "GET /gate, POST /orders/ID, GET /results/ID"}


# URL scheme of ``--agents`` -> the transport's order source
SOURCES: dict[str, type[MqttOrderSource] | type[HttpOrderSource]] = {
    "mqtt": MqttOrderSource, "mqtts": MqttOrderSource, "http": HttpOrderSource}


def order_source(url: str, run_id: str, gate_s: float) -> MqttOrderSource | HttpOrderSource:
    """The order source for ``--agents URL`` (mqtt://, mqtts:// or http://)."""
    kind = SOURCES.get(url.split("://", 1)[0])
    if kind is None:
        raise InputError("--agents", f"expected mqtt://HOST:PORT or http://HOST:PORT, "
                                     f"got {url!r}")
    return kind(url, run_id, gate_s)


# -- the reference agent (``testbed agent``) ------------------------------------------------


PLACE_ORDER = "place_order(uint256,uint256,uint256,bool,uint256,uint256)"


def eth_order_tx(gate: Mapping[str, Any], order: Mapping[str, Any], eth_key: str) -> str:
    """``order`` as the household's own Ethereum transaction (docs/agents.md, "Orders on
    the EVM ledger"): a call of the market contract's ``place_order(hid, interval,
    order_nonce, is_buy, energy, price)`` (energy in micro-kWh, price in micro-AUD/kWh),
    signed with ``eth_key`` (0x-hex) for the gate's chain, at the account's next nonce and
    the gate's gas price. Returns 0x and the raw transaction's hex. KeyError when the gate
    has no ``evm`` object for the household; ValueError for an energy or price that is not
    a whole number of millionths."""
    from eth_abi.abi import encode
    from eth_account import Account
    from eth_hash.auto import keccak
    from eth_utils.address import to_checksum_address

    evm, household = gate["evm"], str(order["household"])
    mine = evm["accounts"][household]
    energy, price = exact(order["energy_kwh"]) * 10**6, exact(order["price"]) * 10**6
    if energy.denominator != 1 or price.denominator != 1:
        raise ValueError("energy_kwh and price must be whole millionths on the EVM ledger")
    data = keccak(PLACE_ORDER.encode())[:4] + encode(
        ["uint256", "uint256", "uint256", "bool", "uint256", "uint256"],
        [int(mine["hid"]), int(evm["interval"]), int(mine["order_nonce"]),
         order["side"] == "buy", int(energy), int(price)])
    signed = Account.sign_transaction({
        "to": to_checksum_address(str(evm["contract"])), "data": data, "value": 0,
        "gas": 600_000, "gasPrice": int(evm["gas_price"]), "nonce": int(mine["tx_nonce"]),
        "chainId": int(evm["chain_id"])}, eth_key)
    return "0x" + bytes(signed.raw_transaction).hex()


def reference_order(gate: Mapping[str, Any], household: str, nonce: int,
                    price: Fraction | None, energy: Fraction | None,
                    measured_kwh: Fraction | None) -> dict[str, Any] | None:
    """The reference strategy (docs/agents.md): forecast the interval's net as the last
    interval's measured net scaled to this interval's hours if the agent saw one, else the
    gate's ``forecast_kwh`` for its household; sell a surplus, buy a deficit, of that
    energy (or ``energy``), at ``price`` (else the gate's ``suggested_price``, else the
    midpoint of feed-in and import tariff). None when the forecast is zero."""
    forecast = measured_kwh if measured_kwh is not None else Fraction(
        str(gate["forecast_kwh"][household]))
    if forecast == 0:
        return None
    tariff = gate["tariff"]
    if price is None:
        suggested = gate.get("suggested_price")
        price = Fraction(str(suggested)) if suggested is not None else (
            Fraction(str(tariff["import_aud_per_kwh"])) +
            Fraction(str(tariff["feed_in_aud_per_kwh"]))) / 2
    amount = energy if energy is not None else abs(forecast)
    return {"type": "order", "run": gate["run"], "interval": gate["interval"],
            "household": household, "side": "sell" if forecast > 0 else "buy",
            "energy_kwh": fmt(amount, 9), "price": fmt(price, 9), "nonce": nonce}


async def reference_agent(household: str, url: str, key: Ed25519PrivateKey, *,
                          price: Fraction | None = None, energy: Fraction | None = None,
                          runs: int = 1, eth_key: str | None = None) -> list[dict[str, Any]]:
    """Run the reference HEMS of ``household``: for each gate of a run (``runs`` runs, then
    return), forecast (:func:`reference_order`), sign and publish its order (on the EVM
    ledger, with ``eth_key``, carrying it as its own transaction, :func:`eth_order_tx`),
    follow its
    rig's PV, load and battery readings (``testbed/{run}/readings/{household}``, published
    when the run has ``--mqtt`` on the same broker), and log what it committed and what it
    got, with the last reading (one JSON line each on stdout). Returns the results."""
    from testbed.telemetry import make_client, parse_broker_url

    results: list[dict[str, Any]] = []
    measured: dict[str, Fraction] = {}  # run -> net kWh the meter gave for the last interval
    seen: set[tuple[str, int, str]] = set()
    rig: dict[str, dict[str, Any]] = {}  # run -> its rig's last reading
    readings: dict[str, int] = {}
    done_runs: set[str] = set()
    client = make_client(parse_broker_url(url), None,
                         f"agent-{household}-{time.time_ns() % 10**9}", 5.0)
    async with client:
        await client.subscribe([(f"{PREFIX}/+/gate", 1),
                                (f"{PREFIX}/+/results/{household}", 1),
                                (f"{PREFIX}/+/readings/{household}", 0)])
        print(json.dumps({"agent": household, "event": "ready"}), flush=True)
        async for message in client.messages:
            topic = str(message.topic)
            raw = bytes(message.payload or b"")
            if not raw:
                continue
            try:
                body = json_input.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                continue
            if not isinstance(body, dict):
                continue
            run = topic.split("/")[1]
            if "/readings/" in topic:  # its rig's PV, load and battery (docs/telemetry.md)
                rig[run] = {k: body.get(k) for k in RIG_FIELDS}
                readings[run] = readings.get(run, 0) + 1
                continue
            if topic.endswith("/gate"):
                # one order per gate; a resumed run opens the interval's gate again
                key_ = (run, int(body.get("interval", -1)), str(body.get("opens")))
                if body.get("state") != "open" or key_ in seen or run in done_runs or \
                        household not in body.get("forecast_kwh", {}) or \
                        _closed(body.get("closes")):
                    continue
                seen.add(key_)
                order = reference_order(body, household, int(body["interval"]), price,
                                        energy, measured.get(run))
                if order is None:
                    print(json.dumps({"agent": household, "event": "no order",
                                      "interval": body["interval"]}), flush=True)
                    continue
                if eth_key is not None and household in body.get("evm", {}).get("accounts",
                                                                                {}):
                    order["eth_tx"] = eth_order_tx(body, order, eth_key)
                signed = sign_order(key, order)
                await client.publish(order_topic(run, household), json.dumps(signed).encode(),
                                     qos=1)
                print(json.dumps({"agent": household, "event": "committed", **order}),
                      flush=True)
            else:
                results.append(body)
                measured[run] = Fraction(str(body.get("metered_kwh", "0")))
                print(json.dumps({"agent": household, "event": "result", **body,
                                  "readings_seen": readings.get(run, 0),
                                  "rig": rig.get(run)}), flush=True)
                if body.get("last"):
                    done_runs.add(run)
                    if len(done_runs) >= runs:
                        return results
    return results


RIG_FIELDS = ("pv_w", "load_w", "battery_w", "soc", "meter_net_wh", "hour")


def _closed(closes: object) -> bool:
    try:
        when = dt.datetime.fromisoformat(str(closes))
    except ValueError:
        return True
    return when < dt.datetime.now(dt.UTC)
