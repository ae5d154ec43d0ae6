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
from collections.abc import Collection, Mapping, Sequence
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


@dataclass(frozen=True, slots=True)
class RawTx:
    """A signed Ethereum transaction as a household's HEMS sends it: its sender (recovered
    from the signature), chain id, account nonce, recipient, value (wei), gas and data."""

    sender: str
    chain_id: int | None
    nonce: int
    to: str
    value: int
    gas: int
    data: bytes


def decode_tx(raw: bytes) -> RawTx:
    """Decode a signed legacy (EIP-155) or EIP-1559 (type 2) transaction and recover its
    sender. Raises ValueError saying what is wrong with it."""
    import rlp  # type: ignore[import-untyped]
    from eth_account import Account

    chain_id: int | None
    try:
        if raw[:1] == b"\x02":
            f = rlp.decode(raw[1:])
            chain_id, nonce, gas, to, value, data = (
                _int(f[0]), _int(f[1]), _int(f[4]), f[5], _int(f[6]), f[7])
        elif raw and raw[0] >= 0xc0:
            f = rlp.decode(raw)
            nonce, gas, to, value, data, v = _int(f[0]), _int(f[2]), f[3], _int(f[4]), f[5], \
                _int(f[6])
            chain_id = (v - 35) // 2 if v >= 35 else None
        else:
            raise ValueError("neither a legacy nor an EIP-1559 transaction")
        sender = str(Account.recover_transaction(raw))
    except Exception as err:  # rlp's and eth-account's many error types: one message
        raise ValueError(f"not a signed Ethereum transaction ({err})") from None
    if len(to) != 20:
        raise ValueError("a transaction that creates a contract, not an order")
    return RawTx(sender, chain_id, nonce, "0x" + bytes(to).hex(), value, gas, bytes(data))


def _int(b: bytes) -> int:
    return int.from_bytes(b, "big")


# ---- the two chains ---------------------------------------------------------------------------

class Chain(Protocol):
    """What :class:`EvmMarket` needs of a chain. Addresses are 0x-hex strings."""

    label: str

    def new_account(self, wei: int) -> tuple[str, str]:
        """A fresh account funded with ``wei``: (address, private key hex or "")."""
        ...

    def fund(self, address: str, wei: int) -> None:
        """Give an account someone else holds the key of ``wei`` for its gas."""
        ...

    def adopt(self, key: str) -> str:
        """Sign for the account of private key ``key`` (hex) from now on; its address."""
        ...

    def deploy(self, sender: str, data: bytes) -> tuple[str, int, int]:
        """Create the contract: (address, block number, gas)."""
        ...

    def transact(self, sender: str, to: str, data: bytes, value: int = 0) -> Receipt:
        """Send a transaction; raise :class:`ChainRevert` if the contract refuses it."""
        ...

    def call(self, to: str, data: bytes) -> bytes: ...

    def send_raw(self, raw: bytes) -> Receipt:
        """Send a transaction someone else signed (a HEMS's order); ChainRevert with the
        contract's reason, or with why the chain refuses the transaction itself."""
        ...

    def account_nonce(self, address: str) -> int:
        """The account's next transaction nonce."""
        ...

    def gas_price(self) -> int: ...

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
    chain_id = 1337  # what a HEMS signs its transactions for (EIP-155), as ganache's

    def __init__(self, preset: Sequence[str] = (), gas_limit: int = GAS_LIMIT) -> None:
        self.gas_limit = gas_limit  # per transaction; above a block's only to measure
        self._preset = list(preset)  # addresses new_account hands out first (a replay)
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
        address = self._preset.pop(0) if self._preset else self.env.generate_address()
        self.env.set_balance(address, wei)
        return str(address), ""

    def fund(self, address: str, wei: int) -> None:
        self.env.set_balance(address, self.env.get_balance(address) + wei)

    def adopt(self, key: str) -> str:
        from eth_account import Account

        return str(Account.from_key(key).address)

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

    def send_raw(self, raw: bytes) -> Receipt:
        """Check the signed transaction as a node would (chain id, the account's nonce,
        its balance for the value) and execute it as its sender; the nonce advances."""
        try:
            tx = decode_tx(raw)
        except ValueError as err:
            raise ChainRevert("transaction", str(err)) from None
        fn = _name_of(tx.data)
        if tx.chain_id != self.chain_id:
            raise ChainRevert(fn, f"signed for chain {tx.chain_id}, not {self.chain_id}")
        state = self.env.evm.vm.state
        expected = state.get_nonce(bytes.fromhex(tx.sender[2:]))
        if tx.nonce != expected:
            raise ChainRevert(fn, f"nonce {tx.nonce}: the account's next is {expected} "
                              "(a replayed or skipped transaction)")
        receipt = self.transact(tx.sender, tx.to, tx.data, tx.value)
        state.increment_nonce(bytes.fromhex(tx.sender[2:]))
        return receipt

    def account_nonce(self, address: str) -> int:
        return int(self.env.evm.vm.state.get_nonce(bytes.fromhex(address[2:])))

    def gas_price(self) -> int:
        return 0  # the embedded chain charges no gas price

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
        self.fund(account.address, wei)
        return str(account.address), key

    def fund(self, address: str, wei: int) -> None:
        self._wait(self.rpc("eth_sendTransaction", [{"from": self._faucet[0], "to": address,
                                                     "value": hex(wei)}]))

    def adopt(self, key: str) -> str:
        from eth_account import Account

        account = Account.from_key(key)
        self._keys[account.address] = account
        return str(account.address)

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

    def send_raw(self, raw: bytes) -> Receipt:
        """The node checks and mines it; its revert reason is read first by simulating
        the call from the recovered sender (a node mines a reverted transaction without)."""
        try:
            tx = decode_tx(raw)
        except ValueError as err:
            raise ChainRevert("transaction", str(err)) from None
        fn = _name_of(tx.data)
        try:
            self.rpc("eth_estimateGas", [{"from": tx.sender, "to": tx.to,
                                          "data": "0x" + tx.data.hex(),
                                          "value": hex(tx.value)}])
            digest = self.rpc("eth_sendRawTransaction", ["0x" + raw.hex()])
        except _RpcError as err:
            raise ChainRevert(fn, err.reason()) from None
        receipt = self._wait(digest)
        if int(receipt["status"], 16) != 1:
            raise ChainRevert(fn, "reverted on the node")
        return Receipt(int(receipt["gasUsed"], 16), self._events(receipt["logs"]))

    def account_nonce(self, address: str) -> int:
        return int(self.rpc("eth_getTransactionCount", [address, "pending"]), 16)

    def gas_price(self) -> int:
        return int(self.rpc("eth_gasPrice", []), 16)

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
    ``registered``: household -> the address of an account its HEMS holds the key of (the
    operator certifies that address, funds its gas and deposits on its behalf; its orders
    are the HEMS's own transactions, :meth:`submit_raw`); every other household gets a new
    account whose key is :attr:`keys` (``""`` on the embedded chain, which needs none).
    """

    def __init__(self, chain: Chain, households: Sequence[str], *, alpha: Fraction,
                 import_aud_per_kwh: Fraction, feed_in_aud_per_kwh: Fraction,
                 aud_per_token: Fraction, household_wei: int = HOUSEHOLD_GAS_WEI,
                 registered: Mapping[str, str] | None = None) -> None:
        self.chain = chain
        self.gas = GasLog()
        self.names = {i + 1: h for i, h in enumerate(sorted(households, key=natural_key))}
        self.hid = {h: i for i, h in self.names.items()}
        self.external = dict(registered or {})
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
            if name in self.external:
                address, key = self.external[name], ""
                chain.fund(address, household_wei)
            else:
                address, key = chain.new_account(household_wei)
            self.accounts[name], self.keys[name] = address, key
            self.gas.add("certify", self._tx(self.operator, "certify", [address]).gas)
            if self.view("hid_of", address) != hid:
                raise EvmError(f"the contract at {self.address} numbered household {name} "
                               f"{self.view('hid_of', address)}, not {hid}")
        self.interval = 0
        self._book: list[ChainOrder] = []

    @classmethod
    def attach(cls, chain: Chain, households: Sequence[str], *, address: str,
               deploy_block: int, operator: str, accounts: Mapping[str, str],
               registered: Mapping[str, str] | None = None) -> EvmMarket:
        """The deployment at ``address`` again (a resumed run): its operator and households'
        accounts as the run recorded them, each checked against the contract's own record
        (EvmError naming the first that differs). The open interval is the contract's."""
        market = cls.__new__(cls)
        market.chain, market.gas = chain, GasLog()
        market.names = {i + 1: h for i, h in enumerate(sorted(households, key=natural_key))}
        market.hid = {h: i for i, h in market.names.items()}
        market.external = dict(registered or {})
        market.operator, market.operator_key = operator, ""
        market.address, market.deploy_block = address, deploy_block
        market.accounts, market.keys = dict(accounts), {h: "" for h in accounts}
        try:
            on_chain = str(market.view("operator"))
        except (ChainRevert, EvmError) as err:
            raise EvmError(f"no market contract answers at {address} on {chain.label}: "
                           f"{err}") from None
        if on_chain.lower() != operator.lower():
            raise EvmError(f"the contract at {address} has operator {on_chain}, the run "
                           f"recorded {operator}")
        for hid, name in market.names.items():
            if str(market.view("account_of", hid)).lower() != accounts[name].lower():
                raise EvmError(f"the contract at {address} certified another account for "
                               f"household {name} than the run recorded")
        market.interval = int(market.view("interval"))
        market._book = []
        return market

    def _tx(self, sender: str, fn: str, args: Sequence[Any], value: int = 0) -> Receipt:
        return self.chain.transact(sender, self.address, encode_call(fn, args), value)

    def view(self, fn: str, *args: Any) -> Any:
        return decode_result(fn, self.chain.call(self.address, encode_call(fn, args)))

    def deposit(self, household: str, wei: int) -> None:
        """The household sends ``wei`` from its own account into its contract balance (the
        operator sends it on behalf of a household whose HEMS holds its key)."""
        if household in self.external:
            self.chain.fund(self.operator, wei)
            self.gas.add("deposit", self._tx(self.operator, "deposit_for",
                                             [self.hid[household]], wei).gas)
            return
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

    def submit_raw(self, household: str, raw: bytes,
                   expect: tuple[bool, int, int] | None = None) -> ChainOrder:
        """A household's order as its HEMS signed it: a transaction from its own account
        calling ``place_order`` for it (docs/agents.md), and when ``expect`` is given with
        that (is_buy, micro-kWh, micro-AUD/kWh). Returns the order as the chain holds it;
        ChainRevert, before anything is sent, when it is not such a transaction, and with
        the contract's reason when the contract refuses it."""
        try:
            tx = decode_tx(raw)
        except ValueError as err:
            raise ChainRevert("transaction", str(err)) from None
        from eth_abi.abi import decode

        selector, types, _ = compiled().functions["place_order"]
        if tx.to.lower() != self.address.lower() or tx.data[:4] != selector:
            raise ChainRevert("transaction", "not a call of place_order on the market "
                              f"contract {self.address}")
        try:
            hid, _iv, _nonce, is_buy, energy, price = decode(types, tx.data[4:])
        except Exception as err:  # eth-abi's decoding errors
            raise ChainRevert("place_order", f"malformed call data ({err})") from None
        if hid != self.hid.get(household):
            raise ChainRevert("place_order", f"an order for household number {hid}, not "
                              f"{household}'s ({self.hid.get(household)})")
        if expect is not None and (bool(is_buy), energy, price) != expect:
            raise ChainRevert("place_order", "mismatch: the Ethereum transaction's order is "
                              "not the signed order's side, energy and price")
        receipt = self.chain.send_raw(raw)
        self.gas.add("order", receipt.gas)
        placed = next(e for e in receipt.events if e.name == "OrderPlaced")
        order = ChainOrder(placed.args["index"], hid, bool(is_buy), energy, price)
        self._book.append(order)
        return order

    def gate(self, households: Sequence[str]) -> dict[str, Any]:
        """What each household's HEMS needs to sign its order as a transaction (the gate's
        ``evm`` object, docs/agents.md): chain id, contract, gas price, and per household
        its account, its number, its next order nonce and its account's next nonce."""
        return {"chain_id": getattr(self.chain, "chain_id", None), "contract": self.address,
                "gas_price": str(self.chain.gas_price()), "interval": self.interval,
                "accounts": {h: {"address": self.accounts[h], "hid": self.hid[h],
                                 "order_nonce": int(self.view("nonce_of", self.accounts[h])),
                                 "tx_nonce": self.chain.account_nonce(self.accounts[h])}
                             for h in households}}

    def clear(self) -> Clearing:
        """The operator proposes the priority order; the contract checks it and clears."""
        buys, sells = priority(self._book)
        receipt = self._tx(self.operator, "clear", [buys, sells])
        self.gas.add("clear", receipt.gas)
        cleared = next(e for e in receipt.events if e.name == "Cleared")
        fills = [e.args for e in receipt.events if e.name == "Fill"]
        return clearing_from_events(cleared.args, fills, self._book, self.names)

    def settle(self, metered_kwh: Mapping[str, Fraction],
               disputed: Collection[str] = ()) -> None:
        """The oracle posts every household's metered net energy (kWh, + exported) and
        which of them are ``disputed`` (not settled, their fills held)."""
        missing = sorted(set(self.hid) - set(metered_kwh), key=natural_key)
        if missing:
            raise ValueError(f"no meter reading for households {missing}")
        readings = [micro_units(metered_kwh[self.names[h]], f"reading of {self.names[h]}")
                    for h in sorted(self.names)]
        flags = [self.names[h] in disputed for h in sorted(self.names)]
        self.gas.add("settle", self._tx(self.operator, "settle", [readings, flags]).gas)
        self.interval += 1
        self._book = []

    def cancel(self) -> None:
        """Void the open interval's orders and fills (a run resumed after dying in it)."""
        self._tx(self.operator, "cancel", [])
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
                 feed_in_aud_per_kwh: Fraction, aud_per_token: Fraction,
                 registered: Mapping[str, str] | None = None) -> None:
        self.spec = spec
        self.params: dict[str, Any] = {
            "households": list(households), "alpha": str(alpha),
            "import_aud_per_kwh": str(import_aud_per_kwh),
            "feed_in_aud_per_kwh": str(feed_in_aud_per_kwh),
            "aud_per_token": str(aud_per_token), "registered": dict(registered or {})}
        self._recorded = 0
        self.chain = connect(spec)
        started = time.perf_counter()
        try:
            self.market = EvmMarket(self.chain, households, alpha=alpha,
                                    import_aud_per_kwh=import_aud_per_kwh,
                                    feed_in_aud_per_kwh=feed_in_aud_per_kwh,
                                    aud_per_token=aud_per_token, registered=registered)
        except EvmError:
            raise
        except ValueError as err:
            raise EvmError(f"{spec}: {err}") from None
        self.params["operator"] = self.market.operator
        for h, micro in opening_micro.items():
            if micro:
                self.market.deposit(h, micro * units.WEI_PER_MICRO)
        self.before = self.market.balances()
        self.setup_s = time.perf_counter() - started
        self.interval_s: list[float] = []
        self._t0 = 0.0

    @classmethod
    def resume(cls, store: Store, run_id: str, spec: str, eth_keys: Mapping[str, str],
               intervals_done: int) -> ChainLedger:
        """The chain of a run resumed after its process died (``--resume``), at the state
        of its last committed interval. Embedded (``evm``): a fresh py-evm replays every
        recorded transaction from the deployment, at the recorded addresses, and must
        emit exactly the recorded events. Node (``evm+http://``): the contract at the
        recorded address, signed for with the keys from the run's keystore (``eth_keys``);
        its events must begin with the recorded ones; an interval the chain had started
        after the last commit (orders, a clearing) is cancelled on the chain, and one it
        had settled cannot be redone (EvmError saying so)."""
        rows = store.rows("evm", run_id)
        if not rows:
            raise EvmError(f"run {run_id} has no EVM deployment to resume on {spec}")
        backend, contract, deploy_block, body = (rows[0][k] for k in (
            "backend", "contract", "deploy_block", "body"))
        if spec != backend and not (spec.startswith("evm+") and backend.startswith("evm+")):
            raise EvmError(f"run {run_id} ran on {backend}, not {spec}: resume it there")
        params = json_input.loads(body)
        recorded = _recorded_events(store, run_id)
        self = cls.__new__(cls)
        self.spec, self.params, self._recorded = spec, params, len(recorded)
        started = time.perf_counter()
        if spec == "evm":
            self.market = replay_embedded(params, recorded)
            if _comparable(self.market.events(), True) != _comparable(recorded, True):
                raise EvmError(f"run {run_id}: replaying its recorded transactions does not "
                               "give its recorded events; the record is damaged")
        else:
            chain = RpcChain(spec.removeprefix("evm+"))
            missing = [a for a in ["operator", *params["households"]]
                       if a not in eth_keys and a not in params.get("registered", {})]
            if missing:
                raise EvmError(f"run {run_id}: the keystore holds no Ethereum key for "
                               f"{missing[0]!r}; the run cannot sign for it")
            for key in eth_keys.values():
                chain.adopt(key)
            self.market = EvmMarket.attach(
                chain, params["households"], address=contract, deploy_block=deploy_block,
                operator=params["operator"], accounts=params["accounts"],
                registered=params.get("registered"))
            live = self.market.events()
            if _comparable(live[:len(recorded)], True) != _comparable(recorded, True):
                raise EvmError(f"the contract at {contract} on {spec} does not hold run "
                               f"{run_id}'s recorded events (another chain, or a node that "
                               "lost its state)")
            settled = [e for e in live[len(recorded):] if e.name == "Settled"]
            if settled:
                raise EvmError(f"the contract at {contract} settled interval "
                               f"{settled[0].args['interval']} after run {run_id}'s last "
                               "commit; that interval cannot be run again")
            if self.market.interval != intervals_done:
                raise EvmError(f"the contract at {contract} is at interval "
                               f"{self.market.interval}, the run at {intervals_done}")
            if self.market.view("order_count") or self.market.view("phase"):
                self.market.cancel()
        self.chain = self.market.chain
        self.before = _balances_from_deposits(params["households"], recorded)
        self.setup_s = time.perf_counter() - started
        self.interval_s, self._t0 = [], 0.0
        return self

    def secrets(self) -> dict[str, str]:
        """The Ethereum keys this process made (``operator`` and each household's), for the
        run's keystore (:meth:`testbed.ledger.keys.Keyring.save_eth_keys`); {} on the embedded
        chain, which needs none, and none for a household whose HEMS holds its own."""
        out = {"operator": self.market.operator_key} if self.market.operator_key else {}
        out.update({h: k for h, k in self.market.keys.items() if k})
        return out

    def place(self, order: Mapping[str, Any]) -> str | None:
        """Send a signed order of the SQLite ledger as the household's own transaction (the
        one its HEMS signed, ``eth_tx``, if it sent one); the contract's reason if it
        refuses it, else None."""
        if not self._t0:
            self._t0 = time.perf_counter()
        household = str(order["household"])
        if "eth_tx" in order:
            return self._place_raw(order)
        if household in self.market.external:
            return (f"no transaction: household {household}'s HEMS holds its Ethereum key "
                    "and sent no eth_tx")
        try:
            self.market.place(str(order["household"]), str(order["side"]),
                              Fraction(str(order["energy_kwh"])), Fraction(str(order["price"])))
        except ChainRevert as err:
            return err.reason
        except ValueError as err:
            return f"malformed: {err}"
        return None

    def _place_raw(self, order: Mapping[str, Any]) -> str | None:
        try:
            raw = bytes.fromhex(str(order["eth_tx"]).removeprefix("0x"))
            want = (order["side"] == "buy",
                    micro_units(Fraction(str(order["energy_kwh"])), "energy_kwh"),
                    micro_units(Fraction(str(order["price"])), "price"))
            self.market.submit_raw(str(order["household"]), raw, want)
        except ChainRevert as err:
            return err.reason
        except ValueError as err:
            return f"malformed: {err}"
        return None

    def gate(self, households: Sequence[str]) -> dict[str, Any]:
        return self.market.gate(households)

    def clear(self) -> Clearing:
        try:
            return self.market.clear()
        except ChainRevert as err:
            raise EvmError(f"the contract refused to clear: {err.reason}") from None

    def settle(self, metered_kwh: Mapping[str, Fraction],
               disputed: Collection[str] = ()) -> dict[str, int]:
        """Post the readings and which are disputed; the contract settles. Returns the
        balances after (micro-ETH)."""
        try:
            self.market.settle(metered_kwh, disputed)
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

def _comparable(events: Sequence[Event], accounts: bool = False,
                ) -> list[tuple[str, dict[str, Any]]]:
    """Events without what a replay cannot reproduce: blocks, and accounts' addresses
    unless ``accounts`` (a replay at the recorded addresses, the node itself)."""
    return [(e.name, {k: str(v).lower() if k == "account" else v for k, v in e.args.items()
                      if accounts or k != "account"}) for e in events]


def _recorded_events(store: Store, run_id: str) -> list[Event]:
    return [Event(r["name"], json_input.loads(r["body"]), r["block"])
            for r in store.rows("evm_events", run_id)]


def _balances_from_deposits(households: Sequence[str], events: Sequence[Event],
                            ) -> dict[str, int]:
    """Micro-ETH each account held after its deposits (what :class:`ChainLedger` reports
    as before the run), from the recorded ``Deposit`` events."""
    names = {i + 1: h for i, h in enumerate(sorted(households, key=natural_key))}
    names[GRID_HID] = "grid"
    out = dict.fromkeys([*names.values()], 0)
    for e in events:
        if e.name == "Deposit":
            out[names[e.args["hid"]]] += wei_to_micro(e.args["amount"])
    return out


def replay_embedded(params: Mapping[str, Any], recorded: Sequence[Event]) -> EvmMarket:
    """Re-execute a run's transactions on a fresh embedded EVM from deployment, the inputs
    read from the recorded events (deposits, orders, clearings, meter readings, disputes,
    cancellations), at the run's recorded addresses; returns that deployment (its
    ``events()`` are what this chain emitted)."""
    held_elsewhere = params.get("registered") or {}
    preset = [params["operator"], *(params["accounts"][h] for h in sorted(
        params["households"], key=natural_key) if h not in held_elsewhere)] \
        if "operator" in params else []
    market = EvmMarket(EmbeddedChain(preset), params["households"],
                       alpha=Fraction(params["alpha"]),
                       import_aud_per_kwh=Fraction(params["import_aud_per_kwh"]),
                       feed_in_aud_per_kwh=Fraction(params["feed_in_aud_per_kwh"]),
                       aud_per_token=Fraction(params["aud_per_token"]),
                       household_wei=HOUSEHOLD_GAS_WEI + sum(
                           e.args["amount"] for e in recorded if e.name == "Deposit"),
                       registered=params.get("registered"))
    readings: dict[str, Fraction] = {}
    disputed: set[str] = set()
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
            elif e.name == "Disputed":
                disputed.add(market.names[a["hid"]])
            elif e.name == "Cancelled":
                market.cancel()
            elif e.name == "Settled":
                market.settle(readings, disputed)
                readings, disputed = {}, set()
        except (ChainRevert, KeyError, ValueError) as err:
            raise EvmError(f"replaying {e.name} {a}: {err}") from None
    return market


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
    recorded = _recorded_events(store, run_id)
    try:
        if backend == "evm":
            live = replay_embedded(params, recorded).events()
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
    """The chain's events against the run database: each settled interval's clearing,
    fills, meter readings and disputes, and the balances they give against the SQLite
    ledger's. An interval cancelled on the chain (the run died in it and was resumed)
    counts for nothing."""
    households = sorted(json.loads(store.rows("evm", run_id)[0]["body"])["households"],
                        key=natural_key)
    cleared_rows = {r["idx"]: (r["clearing_price"], r["method"])
                    for r in store.rows("intervals", run_id)}
    results = {(r["interval"], r["household"]): r["body"] for r in store.rows("results", run_id)}
    all_trades = store.rows("trades", run_id)
    names = {i + 1: h for i, h in enumerate(households)}
    names[GRID_HID] = "grid"
    micro: dict[str, int] = {}
    interval = 0
    cleared: dict[str, Any] | None = None
    fills: list[tuple[str, str, Fraction, int]] = []
    held: list[tuple[str, str, Fraction, int]] = []
    disputed: set[str] = set()

    def add(account: str, amount: int) -> None:
        micro[account] = micro.get(account, 0) + amount

    for e in events:
        a = e.args
        if e.name == "Deposit":
            add(names[a["hid"]], a["amount"] // 10**12)
        elif e.name == "Fill":
            fills.append((names[a["seller"]], names[a["buyer"]], Fraction(a["energy"], 10**6),
                          a["money"]))
        elif e.name == "Held":
            held.append((names[a["seller"]], names[a["buyer"]], Fraction(a["energy"], 10**6),
                         a["money"]))
        elif e.name == "Disputed":
            disputed.add(names[a["hid"]])
        elif e.name == "Transfer":
            add(names[a["source"]], -(a["amount"] // 10**12))
            add(names[a["target"]], a["amount"] // 10**12)
        elif e.name == "Cleared":
            cleared, interval = dict(a), a["interval"]
        elif e.name == "Cancelled":
            cleared, fills, held, disputed = None, [], [], set()
        elif e.name == "Reading":
            got = results.get((a["interval"], names[a["hid"]]))
            body = {} if got is None else json.loads(got)
            metered = None if got is None else Fraction(body["metered_kwh"])
            if metered != Fraction(a["metered"], 10**6):
                return (f"interval {a['interval']} household {names[a['hid']]}: the oracle "
                        f"posted {Fraction(a['metered'], 10**6)} kWh, the meters "
                        f"{metered} kWh")
            if bool(body.get("disputed")) != (names[a["hid"]] in disputed):
                return (f"interval {a['interval']} household {names[a['hid']]}: disputed "
                        f"{'on the chain' if names[a['hid']] in disputed else 'in the run'} "
                        "only")
        elif e.name == "Settled":
            if cleared is not None:
                row = cleared_rows.get(interval)
                price = (None if cleared["method"] == 0 else
                         str(Fraction(cleared["price_num"], cleared["price_den"] * 10**6)))
                if row is None or (row[0], row[1]) != (price, cleared["method"] or None):
                    return (f"interval {interval}: the chain cleared at {price} (method "
                            f"{cleared['method']}), the run database says {row}")
            trades = [(r["seller"], r["buyer"], Fraction(r["energy_kwh"]))
                      for r in all_trades if r["interval"] == interval]
            if trades != [f[:3] for f in fills]:
                return (f"interval {interval}: the chain's {len(fills)} fills differ from "
                        f"the run database's {len(trades)} trades")
            for fill in fills:
                if fill in held:
                    held.remove(fill)
                else:
                    add(fill[0], fill[3])
                    add(fill[1], -fill[3])
            if held:
                return f"interval {interval}: the chain held a fill it never made: {held[0]}"
            cleared, fills, disputed = None, [], set()
    ledger = store.balances(run_id)
    for account, amount in sorted(ledger.items()):
        if micro.get(account, 0) != amount:
            return (f"account {account}: the chain's events give {micro.get(account, 0)} µETH, "
                    f"the SQLite ledger {amount} µETH")
    return None
