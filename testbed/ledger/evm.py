"""The market contract on an Ethereum virtual machine: ``--ledger evm`` and ``evm+http://``.

Two chains behind one small interface (:class:`Chain`): :class:`EmbeddedChain`, py-evm in
this process through titanoboa (no server), and :class:`RpcChain`, any Ethereum JSON-RPC
node (transactions signed here with each account's secp256k1 key, sent raw). Both run the
same bytecode, compiled once per process from ``contracts/evm/market.vy`` by the vyper
package from PyPI (nothing is downloaded at run time).

:class:`EvmMarket` drives one deployment: the operator certifies every household's account
and funds it with its opening deposit, each household's order is a transaction from its own
account with its nonce, the operator proposes the priority order and the contract clears,
and the operator's oracle posts the meter readings for settlement. The runner calls it
through :class:`ChainLedger`, a back-end beside the signed SQLite ledger.

Errors: :class:`ChainRevert` (the contract refused, with its reason), :class:`EvmError`
(no node, no compiler, a bad URL: one message naming what).
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from importlib import resources
from typing import Any, Protocol

from contracts import evm as units
from contracts.evm import ChainOrder, clearing_from_events, micro_units, priority, wei_to_micro
from contracts.mechanism import Clearing
from contracts.orders import natural_key
from testbed import json_input
from testbed.errors import InputError
from testbed.ledger.store import Store

GRID_HID = 0
GAS_LIMIT = 30_000_000  # one block at the usual limit
OPERATOR_FUNDS = 10**19  # wei the operator account gets on a chain it funds itself
HOUSEHOLD_GAS_WEI = 10**17  # wei for each household account's own gas


class EvmError(InputError):
    """The EVM back-end cannot run (no node, no compiler, a node's error): says what."""

    def __init__(self, problem: str) -> None:
        super().__init__("--ledger", problem)


class ChainRevert(RuntimeError):
    """The contract refused a transaction; ``reason`` is its revert string."""

    def __init__(self, function: str, reason: str) -> None:
        self.function, self.reason = function, reason
        super().__init__(f"{function}: {reason}")


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded contract log: ``name``, its arguments, the block it is in."""

    name: str
    args: dict[str, Any]
    block: int = 0


@dataclass(frozen=True, slots=True)
class Receipt:
    """A mined transaction: total gas (intrinsic included) and its decoded events."""

    gas: int
    events: list[Event]


# ---- ABI: compile once, encode calls, decode logs and reverts ------------------------------

@dataclass(frozen=True)
class Abi:
    bytecode: bytes
    functions: dict[str, tuple[bytes, list[str], list[str]]]  # name -> selector, in, out
    events: dict[bytes, tuple[str, list[tuple[str, str, bool]]]]  # topic0 -> name, args
    constructor: list[str]


def _keccak(data: bytes) -> bytes:
    from eth_hash.auto import keccak

    return bytes(keccak(data))


@lru_cache(maxsize=1)
def compiled() -> Abi:
    """The market contract's ABI and bytecode: contracts/evm/market.vy (package data), compiled
    by the installed vyper package."""
    try:
        import vyper  # type: ignore[import-untyped]
    except ImportError:
        raise EvmError("the EVM back-end needs the 'evm' extra: pip install 'testbed[evm]'") \
            from None
    source = resources.files("contracts.evm").joinpath("market.vy").read_text("utf-8")
    out = vyper.compile_code(source, output_formats=["abi", "bytecode"])
    functions, events, constructor = {}, {}, []
    for item in out["abi"]:
        types = [i["type"] for i in item.get("inputs", [])]
        if item["type"] == "function":
            sig = f"{item['name']}({','.join(types)})"
            functions[item["name"]] = (_keccak(sig.encode())[:4], types,
                                       [o["type"] for o in item.get("outputs", [])])
        elif item["type"] == "event":
            sig = f"{item['name']}({','.join(types)})"
            events[_keccak(sig.encode())] = (item["name"], [
                (i["name"], i["type"], bool(i["indexed"])) for i in item["inputs"]])
        elif item["type"] == "constructor":
            constructor = types
    return Abi(bytes.fromhex(out["bytecode"].removeprefix("0x")), functions, events,
               constructor)


def encode_call(fn: str, args: Sequence[Any]) -> bytes:
    from eth_abi.abi import encode

    selector, types, _ = compiled().functions[fn]
    return selector + encode(types, list(args))


def decode_result(fn: str, data: bytes) -> Any:
    from eth_abi.abi import decode

    out = compiled().functions[fn][2]
    values = decode(out, data)
    return values[0] if len(values) == 1 else values


def decode_log(topics: Sequence[bytes], data: bytes, block: int = 0) -> Event | None:
    """A log of the market contract as an :class:`Event`; ``None`` for any other log."""
    from eth_abi.abi import decode

    if not topics or topics[0] not in compiled().events:
        return None
    name, inputs = compiled().events[topics[0]]
    plain = decode([t for _, t, indexed in inputs if not indexed], data)
    args: dict[str, Any] = {}
    it_topic, it_plain = iter(topics[1:]), iter(plain)
    for arg, typ, indexed in inputs:
        args[arg] = decode([typ], next(it_topic))[0] if indexed else next(it_plain)
    return Event(name, {k: str(v) if isinstance(v, str) else v for k, v in args.items()}, block)


def revert_reason(data: bytes) -> str:
    """The string of a Solidity/Vyper ``Error(string)`` revert, or a description."""
    from eth_abi.abi import decode

    if data[:4] == bytes.fromhex("08c379a0"):
        return str(decode(["string"], data[4:])[0])
    return f"reverted without a reason ({data.hex() or 'no data'})"


def intrinsic_gas(data: bytes, create: bool = False) -> int:
    """The gas a transaction pays before execution (EIP-2028 calldata, EIP-3860 initcode)."""
    zeros = data.count(0)
    gas = 21_000 + 4 * zeros + 16 * (len(data) - zeros)
    if create:
        gas += 32_000 + 2 * ((len(data) + 31) // 32)
    return gas


# ---- the two chains ---------------------------------------------------------------------------

class Chain(Protocol):
    """What :class:`EvmMarket` needs of a chain. Addresses are 0x-hex strings."""

    label: str

    def new_account(self, wei: int) -> tuple[str, str]:
        """A fresh account funded with ``wei``: (address, private key hex or "")."""
        ...

    def deploy(self, sender: str, data: bytes) -> tuple[str, int, int]:
        """Create the contract: (address, block number, gas)."""
        ...

    def transact(self, sender: str, to: str, data: bytes, value: int = 0) -> Receipt:
        """Send a transaction; raise :class:`ChainRevert` if the contract refuses it."""
        ...

    def call(self, to: str, data: bytes) -> bytes: ...

    def wallet(self, address: str) -> int:
        """The account's own ETH (wei), outside the contract."""
        ...

    def logs(self, address: str, from_block: int) -> list[Event]:
        """Every market event since ``from_block`` (embedded: every one kept)."""
        ...

    def close(self) -> None: ...


class EmbeddedChain:
    """py-evm in this process (titanoboa's environment): no server, no gas price.

    Each call is charged as a node charges a transaction: storage and accounts start cold
    (EIP-2929; titanoboa would keep them warm across calls), the intrinsic gas is added and
    the refund capped at a fifth (EIP-3529), so the gas equals a node's receipt."""

    label = "evm (embedded py-evm)"

    def __init__(self, gas_limit: int = GAS_LIMIT) -> None:
        self.gas_limit = gas_limit  # per transaction; above a block's only to measure
        try:
            import boa  # type: ignore[import-untyped]
        except ImportError:
            raise EvmError("the EVM back-end needs the 'evm' extra: "
                           "pip install 'testbed[evm]'") from None
        self._boa = boa
        self.env = boa.Env()
        self._events: list[Event] = []
        self._block = 0

    def new_account(self, wei: int) -> tuple[str, str]:
        address = self.env.generate_address()
        self.env.set_balance(address, wei)
        return str(address), ""

    def deploy(self, sender: str, data: bytes) -> tuple[str, int, int]:
        self._new_transaction()
        address, comp = self.env.deploy(sender=sender, bytecode=data, gas=self.gas_limit)
        if comp.is_error:
            raise ChainRevert("deploy", _failure(comp))
        self._collect(comp)
        return str(address), 0, _charged(comp, intrinsic_gas(data, create=True))

    def transact(self, sender: str, to: str, data: bytes, value: int = 0) -> Receipt:
        fn = _name_of(data)
        if self.env.get_balance(sender) < value:
            raise ChainRevert(fn, "insufficient funds for the value sent")
        self._new_transaction()
        comp = self.env.execute_code(to_address=to, sender=sender, data=data, value=value,
                                     gas=self.gas_limit)
        self._block += 1
        if comp.is_error:
            raise ChainRevert(fn, _failure(comp))
        events = self._collect(comp)
        return Receipt(_charged(comp, intrinsic_gas(data)), events)

    def _new_transaction(self) -> None:
        """What a node does between transactions: storage's original values are the state
        so far (EIP-2200 pricing) and every slot and account is cold again (EIP-2929)."""
        self.env.evm.vm.state.lock_changes()
        self.env._reset_access_counters()

    def _collect(self, comp: Any) -> list[Event]:
        events = [e for _, _, topics, data in sorted(comp.get_raw_log_entries())
                  if (e := decode_log([t.to_bytes(32, "big") for t in topics], data,
                                      self._block)) is not None]
        self._events += events
        return events

    def call(self, to: str, data: bytes) -> bytes:
        comp = self.env.execute_code(to_address=to, data=data, is_modifying=False)
        if comp.is_error:
            raise ChainRevert(_name_of(data), revert_reason(bytes(comp.output)))
        return bytes(comp.output)

    def wallet(self, address: str) -> int:
        return int(self.env.get_balance(address))

    def logs(self, address: str, from_block: int) -> list[Event]:
        return list(self._events)

    def close(self) -> None:
        pass


def _failure(comp: Any) -> str:
    """Why an embedded call failed: its revert string, else the VM's error (out of gas)."""
    if comp.output:
        return revert_reason(bytes(comp.output))
    return f"{type(comp.error).__name__}: {comp.error}".rstrip(": ")


def _charged(comp: Any, intrinsic: int) -> int:
    """A transaction's gas as a receipt states it: executed plus intrinsic, less the
    storage refund capped at a fifth of that (EIP-3529)."""
    gross = int(comp.get_gas_used()) + intrinsic
    return gross - min(int(comp.get_gas_refund()), gross // 5)


def _name_of(data: bytes) -> str:
    for name, (selector, _, _) in compiled().functions.items():
        if data[:4] == selector:
            return name
    return "call"


class RpcChain:
    """Any Ethereum JSON-RPC node at ``url`` (``http://HOST:PORT``).

    Accounts are made here (secp256k1 keys) and funded from the node's first unlocked
    account; every transaction is signed here and sent raw, then its receipt awaited. A
    transaction the contract would refuse is caught by ``eth_estimateGas`` first, which
    returns the revert reason (a node mines a reverted transaction without one)."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url, self.timeout_s = url, timeout_s
        self.label = f"evm+{url}"
        self._keys: dict[str, Any] = {}
        self._id = 0
        try:
            self.chain_id = int(self.rpc("eth_chainId", []), 16)
            self._faucet = self.rpc("eth_accounts", [])
        except EvmError as err:
            raise EvmError(f"no Ethereum JSON-RPC node answers at {url} ({err.problem}); "
                           "start one, e.g. `npx ganache --server.port PORT`") from None
        if not self._faucet:
            raise EvmError(f"the node at {url} has no unlocked account to fund the run's "
                           "accounts from")

    def rpc(self, method: str, params: list[Any]) -> Any:
        self._id += 1
        body = json.dumps({"jsonrpc": "2.0", "id": self._id, "method": method,
                           "params": params}).encode()
        req = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                reply = json_input.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise EvmError(f"{method}: {err}") from None
        if "error" in reply:
            raise _RpcError(reply["error"])
        return reply["result"]

    def new_account(self, wei: int) -> tuple[str, str]:
        from eth_account import Account

        key = "0x" + secrets.token_hex(32)
        account = Account.from_key(key)
        self._keys[account.address] = account
        tx = self.rpc("eth_sendTransaction", [{"from": self._faucet[0], "to": account.address,
                                               "value": hex(wei)}])
        self._wait(tx)
        return str(account.address), key

    def _send(self, sender: str, to: str | None, data: bytes, value: int,
              fn: str) -> dict[str, Any]:
        tx: dict[str, Any] = {"from": sender, "data": "0x" + data.hex(), "value": hex(value)}
        if to is not None:
            tx["to"] = to
        try:
            gas = int(self.rpc("eth_estimateGas", [tx]), 16)
        except _RpcError as err:
            raise ChainRevert(fn, err.reason()) from None
        from eth_utils.address import to_checksum_address

        fields: dict[str, Any] = {
            "data": data, "value": value, "gas": gas + gas // 5,
            "gasPrice": int(self.rpc("eth_gasPrice", []), 16),
            "nonce": int(self.rpc("eth_getTransactionCount", [sender, "pending"]), 16),
            "chainId": self.chain_id}
        if to is not None:
            fields["to"] = to_checksum_address(to)
        signed = self._keys[sender].sign_transaction(fields)
        raw = getattr(signed, "raw_transaction", None) or signed.rawTransaction
        try:
            digest = self.rpc("eth_sendRawTransaction", ["0x" + bytes(raw).hex()])
        except _RpcError as err:
            raise ChainRevert(fn, err.reason()) from None
        receipt = self._wait(digest)
        if int(receipt["status"], 16) != 1:
            raise ChainRevert(fn, "reverted on the node")
        return receipt

    def _wait(self, digest: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            receipt = self.rpc("eth_getTransactionReceipt", [digest])
            if receipt is not None:
                return dict(receipt)
            if time.monotonic() > deadline:
                raise EvmError(f"transaction {digest} was not mined within "
                               f"{self.timeout_s:g} s")
            time.sleep(0.05)

    def _events(self, logs: Sequence[Mapping[str, Any]]) -> list[Event]:
        return [e for lg in logs
                if (e := decode_log([bytes.fromhex(t[2:]) for t in lg["topics"]],
                                    bytes.fromhex(lg["data"][2:]),
                                    int(lg["blockNumber"], 16))) is not None]

    def deploy(self, sender: str, data: bytes) -> tuple[str, int, int]:
        receipt = self._send(sender, None, data, 0, "deploy")
        return (str(receipt["contractAddress"]), int(receipt["blockNumber"], 16),
                int(receipt["gasUsed"], 16))

    def transact(self, sender: str, to: str, data: bytes, value: int = 0) -> Receipt:
        receipt = self._send(sender, to, data, value, _name_of(data))
        return Receipt(int(receipt["gasUsed"], 16), self._events(receipt["logs"]))

    def call(self, to: str, data: bytes) -> bytes:
        try:
            out = self.rpc("eth_call", [{"to": to, "data": "0x" + data.hex()}, "latest"])
        except _RpcError as err:
            raise ChainRevert(_name_of(data), err.reason()) from None
        return bytes.fromhex(str(out)[2:])

    def wallet(self, address: str) -> int:
        return int(self.rpc("eth_getBalance", [address, "latest"]), 16)

    def logs(self, address: str, from_block: int) -> list[Event]:
        return self._events(self.rpc("eth_getLogs", [{"address": address,
                                                       "fromBlock": hex(from_block),
                                                       "toBlock": "latest"}]))

    def close(self) -> None:
        pass


class _RpcError(EvmError):
    def __init__(self, error: Mapping[str, Any]) -> None:
        self.error = dict(error)
        super().__init__(f"the node says: {error.get('message', error)}")

    def reason(self) -> str:
        data = self.error.get("data")
        if isinstance(data, Mapping):
            data = data.get("result") or data.get("data")
        if isinstance(data, str) and data.startswith("0x08c379a0"):
            return revert_reason(bytes.fromhex(data[2:]))
        message = str(self.error.get("message", ""))
        return message.split("revert ", 1)[-1] if "revert " in message else message


def connect(spec: str) -> Chain:
    """``evm`` -> the embedded chain; ``evm+http://HOST:PORT`` -> that node."""
    if spec == "evm":
        return EmbeddedChain()
    if spec.startswith("evm+http://") or spec.startswith("evm+https://"):
        return RpcChain(spec.removeprefix("evm+"))
    raise EvmError(f"{spec}: expected 'sqlite', 'evm' or 'evm+http://HOST:PORT'")


# ---- one deployment of the market -------------------------------------------------------------

@dataclass
class GasLog:
    """Gas per kind of transaction, in the order sent."""

    by_kind: dict[str, list[int]] = field(default_factory=dict)

    def add(self, kind: str, gas: int) -> None:
        self.by_kind.setdefault(kind, []).append(gas)


class EvmMarket:
    """One deployment of ``market.vy`` on ``chain``, with its operator and households.

    ``households``: order ids in any order; they are certified in natural order, so the
    chain's numbers 1, 2, ... follow the Python contract's tie-break on the id.
    Prices and tariffs: AUD/kWh (whole micro-AUD); ``aud_per_token``: AUD per ETH.
    """

    def __init__(self, chain: Chain, households: Sequence[str], *, alpha: Fraction,
                 import_aud_per_kwh: Fraction, feed_in_aud_per_kwh: Fraction,
                 aud_per_token: Fraction, household_wei: int = HOUSEHOLD_GAS_WEI) -> None:
        self.chain = chain
        self.gas = GasLog()
        self.names = {i + 1: h for i, h in enumerate(sorted(households, key=natural_key))}
        self.hid = {h: i for i, h in self.names.items()}
        self.operator, self.operator_key = chain.new_account(OPERATOR_FUNDS)
        abi = compiled()
        from eth_abi.abi import encode

        alpha = Fraction(alpha)
        args = [alpha.numerator, alpha.denominator,
                micro_units(Fraction(aud_per_token), "aud_per_token"),
                micro_units(Fraction(import_aud_per_kwh), "import tariff"),
                micro_units(Fraction(feed_in_aud_per_kwh), "feed-in tariff")]
        self.address, self.deploy_block, gas = chain.deploy(
            self.operator, abi.bytecode + encode(abi.constructor, args))
        self.gas.add("deploy", gas)
        self.accounts: dict[str, str] = {}
        self.keys: dict[str, str] = {}
        for hid, name in self.names.items():
            address, key = chain.new_account(household_wei)
            self.accounts[name], self.keys[name] = address, key
            self.gas.add("certify", self._tx(self.operator, "certify", [address]).gas)
            if self.view("hid_of", address) != hid:
                raise EvmError(f"the contract at {self.address} numbered household {name} "
                               f"{self.view('hid_of', address)}, not {hid}")
        self.interval = 0
        self._book: list[ChainOrder] = []

    def _tx(self, sender: str, fn: str, args: Sequence[Any], value: int = 0) -> Receipt:
        return self.chain.transact(sender, self.address, encode_call(fn, args), value)

    def view(self, fn: str, *args: Any) -> Any:
        return decode_result(fn, self.chain.call(self.address, encode_call(fn, args)))

    def deposit(self, household: str, wei: int) -> None:
        """The household sends ``wei`` from its own account into its contract balance."""
        self.gas.add("deposit", self._tx(self.accounts[household], "deposit", [], wei).gas)

    def fund_grid(self, wei: int) -> None:
        self._tx(self.operator, "deposit", [], wei)

    def place(self, household: str, side: str, energy_kwh: Fraction, price: Fraction,
              *, sender: str | None = None, nonce: int | None = None) -> int:
        """Send the household's order (from its account unless ``sender`` says otherwise);
        returns its index. Raises :class:`ChainRevert` with the contract's reason."""
        hid = self.hid.get(household, 0)
        sender = sender or self.accounts[household]
        if nonce is None:
            nonce = self.view("nonce_of", sender)
        energy, price_u = micro_units(energy_kwh, "energy_kwh"), micro_units(price, "price")
        receipt = self._tx(sender, "place_order",
                           [hid, self.interval, nonce, side == "buy", energy, price_u])
        self.gas.add("order", receipt.gas)
        placed = next(e for e in receipt.events if e.name == "OrderPlaced")
        self._book.append(ChainOrder(placed.args["index"], hid, side == "buy", energy, price_u))
        return int(placed.args["index"])

    def clear(self) -> Clearing:
        """The operator proposes the priority order; the contract checks it and clears."""
        buys, sells = priority(self._book)
        receipt = self._tx(self.operator, "clear", [buys, sells])
        self.gas.add("clear", receipt.gas)
        cleared = next(e for e in receipt.events if e.name == "Cleared")
        fills = [e.args for e in receipt.events if e.name == "Fill"]
        return clearing_from_events(cleared.args, fills, self._book, self.names)

    def settle(self, metered_kwh: Mapping[str, Fraction]) -> None:
        """The oracle posts every household's metered net energy (kWh, + exported)."""
        missing = sorted(set(self.hid) - set(metered_kwh), key=natural_key)
        if missing:
            raise ValueError(f"no meter reading for households {missing}")
        readings = [micro_units(metered_kwh[self.names[h]], f"reading of {self.names[h]}")
                    for h in sorted(self.names)]
        self.gas.add("settle", self._tx(self.operator, "settle", [readings]).gas)
        self.interval += 1
        self._book = []

    def balances(self) -> dict[str, int]:
        """Micro-ETH each household (and ``grid``) holds in the contract."""
        out = {name: wei_to_micro(self.view("balance_of", hid))
               for hid, name in self.names.items()}
        out["grid"] = wei_to_micro(self.view("balance_of", GRID_HID))
        return out

    def events(self) -> list[Event]:
        return self.chain.logs(self.address, self.deploy_block)


# ---- the runner's back-end ---------------------------------------------------------------------

class ChainLedger:
    """The runner's view of an EVM deployment (``--ledger evm`` or ``evm+http://...``),
    beside the signed SQLite ledger: same orders, same readings, and the chain's clearing
    and balances are what the run reports; :meth:`checks` compares them with the Python
    contract's. Balances in micro-ETH (the ledger token, 1 ETH = ``aud_per_token`` AUD)."""

    def __init__(self, spec: str, households: Sequence[str], opening_micro: Mapping[str, int],
                 *, alpha: Fraction, import_aud_per_kwh: Fraction,
                 feed_in_aud_per_kwh: Fraction, aud_per_token: Fraction) -> None:
        self.spec = spec
        self.params = {"households": list(households), "alpha": str(alpha),
                       "import_aud_per_kwh": str(import_aud_per_kwh),
                       "feed_in_aud_per_kwh": str(feed_in_aud_per_kwh),
                       "aud_per_token": str(aud_per_token)}
        self._recorded = 0
        self.chain = connect(spec)
        started = time.perf_counter()
        try:
            self.market = EvmMarket(self.chain, households, alpha=alpha,
                                    import_aud_per_kwh=import_aud_per_kwh,
                                    feed_in_aud_per_kwh=feed_in_aud_per_kwh,
                                    aud_per_token=aud_per_token)
        except EvmError:
            raise
        except ValueError as err:
            raise EvmError(f"{spec}: {err}") from None
        for h, micro in opening_micro.items():
            if micro:
                self.market.deposit(h, micro * units.WEI_PER_MICRO)
        self.before = self.market.balances()
        self.setup_s = time.perf_counter() - started
        self.interval_s: list[float] = []
        self._t0 = 0.0

    def place(self, order: Mapping[str, Any]) -> str | None:
        """Send a signed order of the SQLite ledger as the household's own transaction;
        the contract's reason if it refuses it, else None."""
        if not self._t0:
            self._t0 = time.perf_counter()
        try:
            self.market.place(str(order["household"]), str(order["side"]),
                              Fraction(str(order["energy_kwh"])), Fraction(str(order["price"])))
        except ChainRevert as err:
            return err.reason
        except ValueError as err:
            return f"malformed: {err}"
        return None

    def clear(self) -> Clearing:
        try:
            return self.market.clear()
        except ChainRevert as err:
            raise EvmError(f"the contract refused to clear: {err.reason}") from None

    def settle(self, metered_kwh: Mapping[str, Fraction]) -> dict[str, int]:
        """Post the readings; the contract settles. Returns the balances after (micro-ETH)."""
        try:
            self.market.settle(metered_kwh)
        except ChainRevert as err:
            raise EvmError(f"the contract refused the meter readings: {err.reason}") from None
        except ValueError as err:
            raise EvmError(str(err)) from None
        self.interval_s.append(time.perf_counter() - self._t0)
        self._t0 = 0.0
        return self.market.balances()

    def describe(self) -> dict[str, Any]:
        """What a report shows: back-end, contract, balances before/after, gas, wall time."""
        return {"backend": self.chain.label, "contract": self.market.address,
                "deploy_block": self.market.deploy_block,
                "accounts": dict(self.market.accounts),
                "before_micro": self.before, "after_micro": self.market.balances(),
                "gas": {k: sum(v) for k, v in self.market.gas.by_kind.items()},
                "setup_s": self.setup_s, "interval_s": self.interval_s}

    def record(self, store: Store, run_id: str) -> None:
        """Write the deployment and the events since the last call to the run database
        (inside the caller's transaction), for ``testbed ledger verify``."""
        store.put_evm({
            "run_id": run_id, "backend": self.spec, "contract": self.market.address,
            "deploy_block": self.market.deploy_block,
            "body": json.dumps({**self.params, "accounts": self.market.accounts})})
        events = self.market.events()
        store.insert("evm_events", [{"run_id": run_id, "seq": self._recorded + i,
                                     "block": e.block, "name": e.name,
                                     "body": json.dumps(e.args)}
                                    for i, e in enumerate(events[self._recorded:])])
        self._recorded = len(events)


# ---- testbed ledger verify ---------------------------------------------------------------------

def _comparable(events: Sequence[Event]) -> list[tuple[str, dict[str, Any]]]:
    """Events without what a replay cannot reproduce: accounts' addresses and blocks."""
    return [(e.name, {k: v for k, v in e.args.items() if k != "account"}) for e in events]


def replay_embedded(params: Mapping[str, Any], recorded: Sequence[Event]) -> list[Event]:
    """Re-execute a run's transactions on a fresh embedded EVM from deployment, the inputs
    read from the recorded events (deposits, orders, clearings, meter readings), and return
    the events this chain emits."""
    market = EvmMarket(EmbeddedChain(), params["households"], alpha=Fraction(params["alpha"]),
                       import_aud_per_kwh=Fraction(params["import_aud_per_kwh"]),
                       feed_in_aud_per_kwh=Fraction(params["feed_in_aud_per_kwh"]),
                       aud_per_token=Fraction(params["aud_per_token"]),
                       household_wei=HOUSEHOLD_GAS_WEI + sum(
                           e.args["amount"] for e in recorded if e.name == "Deposit"))
    readings: dict[str, Fraction] = {}
    for e in recorded:
        a = e.args
        try:
            if e.name == "Deposit":
                if a["hid"] == GRID_HID:
                    market.fund_grid(a["amount"])
                else:
                    market.deposit(market.names[a["hid"]], a["amount"])
            elif e.name == "OrderPlaced":
                market.place(market.names[a["hid"]], "buy" if a["is_buy"] else "sell",
                             Fraction(a["energy"], 10**6), Fraction(a["price"], 10**6),
                             nonce=a["nonce"])
            elif e.name == "Cleared":
                market.clear()
            elif e.name == "Reading":
                readings[market.names[a["hid"]]] = Fraction(a["metered"], 10**6)
            elif e.name == "Settled":
                market.settle(readings)
                readings = {}
        except (ChainRevert, KeyError, ValueError) as err:
            raise EvmError(f"replaying {e.name} {a}: {err}") from None
    return market.events()


def verify_evm(store: Store, run_id: str) -> str | None:
    """Check an EVM run: the chain's events from the contract's deployment (read from the
    node, or re-executed on a fresh embedded EVM) equal those recorded, and agree with the
    run's clearings, trades, meter readings and the SQLite ledger's balances. Returns the
    first disagreement, or None (also for a run without an EVM back-end)."""
    rows = store.rows("evm", run_id)
    if not rows:
        return None
    backend, contract, deploy_block = (rows[0][k] for k in ("backend", "contract",
                                                             "deploy_block"))
    params = json_input.loads(rows[0]["body"])
    recorded = [Event(r["name"], json_input.loads(r["body"]), r["block"])
                for r in store.rows("evm_events", run_id)]
    try:
        if backend == "evm":
            live = replay_embedded(params, recorded)
        else:
            live = RpcChain(backend.removeprefix("evm+")).logs(contract, deploy_block)
    except EvmError as err:
        return f"cannot replay the chain: {err.problem}"
    if _comparable(live) != _comparable(recorded):
        first = next((i for i, (x, y) in enumerate(zip(_comparable(live),
                                                       _comparable(recorded), strict=False))
                      if x != y), min(len(live), len(recorded)))
        return (f"event {first}: the chain ({backend}) has {len(live)} events, the run "
                f"recorded {len(recorded)}; they first differ at "
                f"{live[first].name if first < len(live) else 'the end'}")
    return _check_against_run(store, run_id, recorded)


def _check_against_run(store: Store, run_id: str, events: Sequence[Event]) -> str | None:
    households = sorted(json.loads(store.rows("evm", run_id)[0]["body"])["households"],
                        key=natural_key)
    cleared = {r["idx"]: (r["clearing_price"], r["method"])
               for r in store.rows("intervals", run_id)}
    results = {(r["interval"], r["household"]): r["body"] for r in store.rows("results", run_id)}
    all_trades = store.rows("trades", run_id)
    names = {i + 1: h for i, h in enumerate(households)}
    names[GRID_HID] = "grid"
    micro: dict[str, int] = {}
    interval = 0
    fills: list[tuple[str, str, Fraction]] = []
    for e in events:
        a = e.args
        if e.name == "Deposit":
            micro[names[a["hid"]]] = micro.get(names[a["hid"]], 0) + a["amount"] // 10**12
        elif e.name == "Fill":
            seller, buyer = names[a["seller"]], names[a["buyer"]]
            micro[seller] = micro.get(seller, 0) + a["money"]
            micro[buyer] = micro.get(buyer, 0) - a["money"]
            fills.append((seller, buyer, Fraction(a["energy"], 10**6)))
        elif e.name == "Transfer":
            for hid, sign in ((a["source"], -1), (a["target"], 1)):
                micro[names[hid]] = micro.get(names[hid], 0) + sign * (a["amount"] // 10**12)
        elif e.name == "Cleared":
            row = cleared.get(a["interval"])
            price = (None if a["method"] == 0 else
                     str(Fraction(a["price_num"], a["price_den"] * 10**6)))
            if row is None or (row[0], row[1]) != (price, a["method"] or None):
                return (f"interval {a['interval']}: the chain cleared at {price} (method "
                        f"{a['method']}), the run database says {row}")
            interval = a["interval"]
        elif e.name == "Reading":
            got = results.get((a["interval"], names[a["hid"]]))
            metered = None if got is None else Fraction(json.loads(got)["metered_kwh"])
            if metered != Fraction(a["metered"], 10**6):
                return (f"interval {a['interval']} household {names[a['hid']]}: the oracle "
                        f"posted {Fraction(a['metered'], 10**6)} kWh, the meters "
                        f"{metered} kWh")
        elif e.name == "Settled":
            trades = [(r["seller"], r["buyer"], Fraction(r["energy_kwh"]))
                      for r in all_trades if r["interval"] == interval]
            if trades != fills:
                return (f"interval {interval}: the chain's {len(fills)} fills differ from "
                        f"the run database's {len(trades)} trades")
            fills = []
    ledger = store.balances(run_id)
    for account, amount in sorted(ledger.items()):
        if micro.get(account, 0) != amount:
            return (f"account {account}: the chain's events give {micro.get(account, 0)} µETH, "
                    f"the SQLite ledger {amount} µETH")
    return None
