"""The ledger's rules: canonical encoding, hashes, Merkle roots, signatures, the chain.

Pure functions over plain data (dicts of str/int/bool/None and lists), so anyone holding
the rows can recompute every hash, signature and balance from genesis. Storage lives in
``testbed.ledger.chain``; nothing here touches a disk or a clock.

A block: ``{"height", "prev_hash", "interval", "merkle_root", "txs": [...]}``. Its hash is
SHA-256 of the canonical header (everything but the txs, which the Merkle root commits to),
and the operator signs that hash.

The same :class:`LedgerState` both builds blocks and verifies them, so a block the
controller wrote is valid exactly when replaying it gives the same state. Transactions:

``operator``     first tx of genesis: the operator's public key (the root of trust) and
                 the token's AUD rate, which sets escrow amounts.
``certificate``  the operator's signature over a household's account and public key.
``open``         an account without a key (the grid).
``deposit``      opening balances; genesis only.
``order``        a household's signed order with a nonce; a buy order escrows
                 ceil(energy x price / rate) micro-units from its available balance.
``rejected``     an order refused, with the reason; replay re-derives the same reason.
``fill``         a trade the contract cleared (informational: money moves by transfers).
``transfer``     micro-units from one account to another (settlement). No credit: a
                 transfer may not take a household's (certified) balance below zero. The
                 ``grid`` account (``open``, no key) stands for the utility outside the
                 community: its balance is the community's net with the grid and may be
                 negative.
``release``      an escrow returned whole; every escrow opened in a block is released in it,
                 unless a dispute froze it.
``rating``       genesis only: the most energy an account's rig can move per hour
                 (``max_kw``, market kW: its rated power); a ``metered`` record above
                 ``max_kw`` x ``hours`` is refused.
``metered``      the energy a household's meter gave for an interval (``energy_kwh``,
                 ``hours``): what the interval is settled on.
``dispute``      a household's metered energy for an interval is disputed (``reason``):
                 it is not settled, and the escrows named in ``orders`` stay held across
                 blocks until a ``resolve`` releases them.
``resolve``      the operator's decision on a dispute (``reason``): the frozen escrow of
                 ``order`` is released (the settlement it decides comes as transfers).
``refused``      an agent's message the market refused before the rules saw an order
                 (late, malformed, for another run or interval, another household's topic,
                 a second order) or a household whose agent sent nothing by the gate:
                 ``household``, ``interval``, ``reason`` and ``payload_sha256`` of the raw
                 message (informational; it moves nothing).
``record``       the digests of the run's rows outside the chain that this block seals
                 (``rows``: table -> row key -> digest, ``testbed.ledger.chain``): genesis
                 seals the run's own row, each interval's block that interval's rows
                 (informational; it moves nothing, and an audit recomputes the digests).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from contracts.numbers import MICRO

GENESIS_PREV = "0" * 64
Json = Any


def canonical(obj: Json) -> bytes:
    """One byte string per value: sorted keys, no spaces, UTF-8; floats are refused."""
    _no_floats(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _no_floats(obj: Json) -> None:
    kind = type(obj)  # concrete types: ABC checks cost more than the encoding itself
    if kind is float:
        raise TypeError("floats are not allowed on the ledger: use decimal strings or ints")
    if kind is dict:
        for v in obj.values():
            if type(v) not in _SCALARS:
                _no_floats(v)
    elif kind is list or kind is tuple:
        for v in obj:
            if type(v) not in _SCALARS:
                _no_floats(v)
    elif kind not in _SCALARS and isinstance(obj, Mapping):
        _no_floats(dict(obj))


_SCALARS = frozenset({str, int, bool, type(None)})


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tx_hash(tx: Json) -> str:
    return sha256(canonical(tx))


def encoded_txs(txs: Sequence[Json]) -> list[tuple[str, bytes]]:
    """Each tx's :func:`tx_hash` and its :func:`canonical` form, from one encoding: a
    block's txs are hashed for its Merkle root and stored in that same form (a mock day's
    ``record`` tx seals 14,400 readings: encoding it once instead of twice)."""
    return [(sha256(body), body) for body in map(canonical, txs)]


def merkle_root(leaves: Sequence[str]) -> str:
    """Binary Merkle tree over hex leaf hashes; an odd node is paired with itself."""
    if not leaves:
        return sha256(b"")
    level = [bytes.fromhex(h) for h in leaves]
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [hashlib.sha256(level[i] + level[i + 1]).digest()
                 for i in range(0, len(level), 2)]
    return level[0].hex()


def header(height: int, prev_hash: str, interval: int | None, root: str) -> dict[str, Json]:
    return {"height": height, "prev_hash": prev_hash, "interval": interval, "merkle_root": root}


def block_hash(head: Mapping[str, Json]) -> str:
    return sha256(canonical(dict(head)))


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return key.sign(message).hex()


def verify_signature(public_hex: str, signature_hex: str, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(
            bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def order_message(order: Mapping[str, Json]) -> bytes:
    """What a household signs: its order without the signature field."""
    return canonical({k: v for k, v in order.items() if k != "signature"})


def certificate_message(account: str, public_key: str) -> bytes:
    """What the operator signs to register a household's key."""
    return canonical({"type": "certificate", "account": account, "public_key": public_key})


def escrow_amount(order: Mapping[str, Json], aud_per_token: Fraction) -> int:
    """Micro-units a buy order locks: its limit price times its energy, rounded up."""
    if order.get("side") != "buy":
        return 0
    aud = Fraction(str(order["energy_kwh"])) * Fraction(str(order["price"]))
    return -((-aud * MICRO) // aud_per_token)  # ceil: the escrow always covers the limit



@dataclass(frozen=True, slots=True)
class ChainError:
    height: int
    reason: str


class TxError(ValueError):
    """A transaction that does not apply to the ledger's state; the message says why."""


ORDER_FIELDS = ("household", "side", "energy_kwh", "price", "nonce", "signature")


@dataclass
class LedgerState:
    """Everything the chain implies so far: keys, balances, escrows, nonces, seen orders."""

    operator: str = ""
    aud_per_token: Fraction = Fraction(370)
    keys: dict[str, str] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)
    holds: dict[str, tuple[str, int]] = field(default_factory=dict)  # order hash -> escrow
    nonces: dict[str, int] = field(default_factory=dict)
    executed: set[str] = field(default_factory=set)  # hashes of orders accepted before
    height: int = 0
    minted: int = 0
    _block_orders: set[str] = field(default_factory=set)
    ratings: dict[str, Fraction] = field(default_factory=dict)  # account -> max kW
    frozen: dict[str, tuple[str, int]] = field(default_factory=dict)  # disputed escrows
    disputes: list[tuple[int, int, str, str]] = field(default_factory=list)
    # (height, interval, household, reason) of every dispute on the chain

    def copy(self) -> LedgerState:
        return LedgerState(self.operator, self.aud_per_token, dict(self.keys),
                           dict(self.balances), dict(self.holds), dict(self.nonces),
                           set(self.executed), self.height, self.minted,
                           set(self._block_orders), dict(self.ratings), dict(self.frozen),
                           list(self.disputes))

    def available(self, account: str) -> int:
        held = sum(a for owner, a in (*self.holds.values(), *self.frozen.values())
                   if owner == account)
        return self.balances.get(account, 0) - held

    def rejection(self, order: Mapping[str, Json]) -> str | None:
        """Why ``order`` must be refused, or ``None`` if it may execute. Deterministic."""
        missing = [f for f in ORDER_FIELDS if f not in order]
        if missing:
            return f"malformed: missing {', '.join(missing)}"
        owner = str(order["household"])
        try:
            energy, price = Fraction(str(order["energy_kwh"])), Fraction(str(order["price"]))
            nonce = int(order["nonce"])
        except (ValueError, ZeroDivisionError, TypeError):
            return "malformed: energy_kwh, price and nonce must be numbers"
        if order["side"] not in ("buy", "sell") or energy <= 0 or price < 0:
            return "malformed: side buy|sell, energy_kwh > 0, price >= 0"
        if owner not in self.keys:
            return f"unregistered: no certificate for {owner!r}"
        if not verify_signature(self.keys[owner], str(order["signature"]),
                                order_message(order)):
            return f"forged: signature does not verify against {owner!r}'s certified key"
        digest = tx_hash(dict(order))
        if digest in self._block_orders:
            return "duplicate: the same order is already in this block"
        if digest in self.executed:
            return "replayed: this order executed in an earlier block"
        if nonce <= self.nonces.get(owner, -1):
            return f"stale nonce: {nonce} is not above {owner!r}'s last nonce " \
                   f"{self.nonces[owner]}"
        need = escrow_amount(order, self.aud_per_token)
        if need > self.available(owner):
            return f"insufficient funds: escrow {need} µ needed, {self.available(owner)} µ " \
                   "available"
        return None

    def apply(self, tx: Mapping[str, Json]) -> None:
        """Apply one transaction of block ``self.height``, or raise :class:`TxError`."""
        kind = tx.get("type")
        handler = _HANDLERS.get(str(kind))
        if handler is None:
            raise TxError(f"unknown transaction type {kind!r}")
        try:
            handler(self, tx)
        except KeyError as missing:
            raise TxError(f"{kind} lacks field {missing}") from None

    def end_block(self) -> None:
        """Close the block: no escrow may stay open across blocks."""
        if self.holds:
            raise TxError(f"{len(self.holds)} escrow(s) opened in this block and not released")
        self._block_orders.clear()
        self.height += 1

    # -- one method per transaction type ------------------------------------------------

    def _operator(self, tx: Mapping[str, Json]) -> None:
        if self.height != 0 or self.operator:
            raise TxError("the operator is declared once, first in genesis")
        self.operator = str(tx["public_key"])
        self.aud_per_token = Fraction(str(tx["aud_per_token"]))

    def _certificate(self, tx: Mapping[str, Json]) -> None:
        account, key = str(tx["account"]), str(tx["public_key"])
        if not self.operator:
            raise TxError("certificate before the operator is declared")
        if account in self.balances:
            raise TxError(f"account {account!r} is already registered")
        if not verify_signature(self.operator, str(tx["signature"]),
                                certificate_message(account, key)):
            raise TxError(f"certificate of {account!r} is not signed by the operator")
        self.keys[account] = key
        self.balances[account] = 0

    def _open(self, tx: Mapping[str, Json]) -> None:
        account = str(tx["account"])
        if account in self.balances:
            raise TxError(f"account {account!r} is already registered")
        self.balances[account] = 0

    def _deposit(self, tx: Mapping[str, Json]) -> None:
        account, amount = str(tx["account"]), _amount(tx)
        if self.height != 0:
            raise TxError("deposits are only allowed in genesis")
        if account not in self.balances:
            raise TxError(f"deposit to unknown account {account!r}")
        self.balances[account] += amount
        self.minted += amount

    def admit(self, order: Mapping[str, Json]) -> str | None:
        """Execute ``order`` if the rules allow it (one signature check); else say why."""
        reason = self.rejection(order)
        if reason is None:
            self._execute(order)
        return reason

    def _order(self, tx: Mapping[str, Json]) -> None:
        reason = self.admit(tx)
        if reason is not None:
            raise TxError(f"order should have been rejected: {reason}")

    def _execute(self, tx: Mapping[str, Json]) -> None:
        digest = tx_hash(dict(tx))
        self._block_orders.add(digest)
        self.executed.add(digest)
        self.nonces[str(tx["household"])] = int(tx["nonce"])
        need = escrow_amount(tx, self.aud_per_token)
        if need:
            self.holds[digest] = (str(tx["household"]), need)

    def _rejected(self, tx: Mapping[str, Json]) -> None:
        order = tx["order"]
        if not isinstance(order, Mapping):
            raise TxError("rejected tx holds no order")
        reason = self.rejection(order)
        if reason is None:
            raise TxError("a valid order was recorded as rejected")
        if reason != tx["reason"]:
            raise TxError(f"rejection reason {tx['reason']!r} where the rules say {reason!r}")

    def _fill(self, tx: Mapping[str, Json]) -> None:
        for role in ("seller", "buyer"):
            if str(tx[role]) not in self.balances:
                raise TxError(f"fill names unknown {role} {tx[role]!r}")

    def _transfer(self, tx: Mapping[str, Json]) -> None:
        src, dst, amount = str(tx["from"]), str(tx["to"]), _amount(tx)
        if src not in self.balances or dst not in self.balances:
            raise TxError(f"transfer between unknown accounts {src!r} -> {dst!r}")
        if src in self.keys and self.balances[src] < amount:
            raise TxError(f"no credit: {src!r} pays {amount} µ from a balance of "
                          f"{self.balances[src]} µ")
        self.balances[src] -= amount
        self.balances[dst] += amount

    def _release(self, tx: Mapping[str, Json]) -> None:
        digest, amount = str(tx["order"]), _amount(tx)
        if digest not in self.holds:
            raise TxError(f"release of escrow {digest[:12]}… that is not open")
        owner, held = self.holds[digest]
        if (owner, held) != (str(tx["account"]), amount):
            raise TxError(f"release of {amount} µ to {tx['account']!r} where "
                          f"{held} µ of {owner!r} is held")
        del self.holds[digest]


    def _rating(self, tx: Mapping[str, Json]) -> None:
        account, max_kw = str(tx["account"]), _fraction(tx, "max_kw")
        if self.height != 0:
            raise TxError("ratings are declared in genesis only")
        if account not in self.balances or max_kw <= 0:
            raise TxError(f"rating of unknown account {account!r} or not positive")
        self.ratings[account] = max_kw

    def _metered(self, tx: Mapping[str, Json]) -> None:
        who = str(tx["household"])
        energy, hours = _fraction(tx, "energy_kwh"), _fraction(tx, "hours")
        if who not in self.balances or hours <= 0 or not isinstance(tx["interval"], int):
            raise TxError(f"metered energy of unknown account {who!r} or over no time")
        cap = self.ratings.get(who)
        if cap is not None and abs(energy) > cap * hours:
            raise TxError(f"metered {energy} kWh of {who!r} in {hours} h exceeds its rated "
                          f"{cap} kW x {hours} h = {cap * hours} kWh: not settled")

    def _dispute(self, tx: Mapping[str, Json]) -> None:
        who, interval, reason = str(tx["household"]), int(tx["interval"]), str(tx["reason"])
        if who not in self.balances or not reason:
            raise TxError(f"dispute of unknown account {who!r} or without a reason")
        orders = tx["orders"]
        if not isinstance(orders, list):
            raise TxError("dispute orders must be a list of order hashes")
        for digest in map(str, orders):
            if digest not in self.holds:
                raise TxError(f"dispute freezes escrow {digest[:12]}… that is not open")
            self.frozen[digest] = self.holds.pop(digest)
        self.disputes.append((self.height, interval, who, reason))

    def _refused(self, tx: Mapping[str, Json]) -> None:
        who, reason = str(tx["household"]), str(tx["reason"])
        if who not in self.balances or not reason or not isinstance(tx["interval"], int):
            raise TxError(f"refusal for unknown account {who!r}, without a reason or an "
                          "interval")
        if not isinstance(tx["payload_sha256"], str | None):
            raise TxError("refusal's payload_sha256 must be a hex string or null")

    def _record(self, tx: Mapping[str, Json]) -> None:
        rows = tx["rows"]
        if not isinstance(rows, dict) or not all(
                isinstance(table, dict) and all(isinstance(d, str) for d in table.values())
                for table in rows.values()):
            raise TxError("record's rows must map each table to row key -> digest")

    def _resolve(self, tx: Mapping[str, Json]) -> None:
        digest, reason = str(tx["order"]), str(tx["reason"])
        if digest not in self.frozen or not reason:
            raise TxError(f"resolve of escrow {digest[:12]}… that is not frozen, or without "
                          "a reason")
        del self.frozen[digest]


def _fraction(tx: Mapping[str, Json], key: str) -> Fraction:
    try:
        return Fraction(str(tx[key]))
    except (ValueError, ZeroDivisionError):
        raise TxError(f"{key} {tx[key]!r} is not a decimal number") from None


def _amount(tx: Mapping[str, Json]) -> int:
    amount = tx["amount"]
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
        raise TxError(f"amount {amount!r} is not a non-negative integer of micro-units")
    return amount


_HANDLERS = {
    "operator": LedgerState._operator, "certificate": LedgerState._certificate,
    "open": LedgerState._open, "deposit": LedgerState._deposit, "order": LedgerState._order,
    "rejected": LedgerState._rejected, "fill": LedgerState._fill,
    "transfer": LedgerState._transfer, "release": LedgerState._release,
    "rating": LedgerState._rating, "metered": LedgerState._metered,
    "dispute": LedgerState._dispute, "resolve": LedgerState._resolve,
    "refused": LedgerState._refused, "record": LedgerState._record,
}


def apply_block(state: LedgerState, txs: Sequence[Mapping[str, Json]]) -> None:
    """Apply a whole block's transactions to ``state`` (in place), or raise TxError."""
    for i, tx in enumerate(txs):
        try:
            state.apply(tx)
        except TxError as err:
            raise TxError(f"tx {i} ({tx.get('type')}): {err}") from None
    state.end_block()


def verify_chain(blocks: Sequence[Mapping[str, Json]], operator_public: str,
                 ) -> ChainError | None:
    """Recompute every hash, root, link, signature and balance; the first bad block or None.

    Each block is ``{"height", "prev_hash", "interval", "merkle_root", "hash", "signature",
    "txs"}``. ``operator_public`` is the trust anchor; genesis must declare the same key.
    """
    return replay(blocks, operator_public)[1]


def replay(blocks: Sequence[Mapping[str, Json]], operator_public: str,
           ) -> tuple[LedgerState, ChainError | None]:
    """The state after the longest valid prefix of ``blocks``, and the first error."""
    prev = GENESIS_PREV
    state = LedgerState()
    for expected_height, block in enumerate(blocks):
        h = int(block["height"])
        if h != expected_height:
            return state, ChainError(expected_height,
                                     f"block {expected_height} is missing (found {h})")
        if block["prev_hash"] != prev:
            return state, ChainError(h, "prev_hash does not match the previous block's hash")
        txs = list(block["txs"])
        root = merkle_root([tx_hash(tx) for tx in txs])
        if root != block["merkle_root"]:
            return state, ChainError(h, "Merkle root does not match its transactions")
        head = header(h, str(block["prev_hash"]), block["interval"], root)
        if block_hash(head) != block["hash"]:
            return state, ChainError(h, "block hash does not match its header")
        if not verify_signature(operator_public, str(block["signature"]),
                                bytes.fromhex(str(block["hash"]))):
            return state, ChainError(h, "operator signature is invalid")
        draft = state.copy()
        try:
            apply_block(draft, txs)
        except TxError as err:
            return state, ChainError(h, str(err))
        if h == 0 and draft.operator != operator_public:
            return state, ChainError(h, "genesis declares another operator key")
        if sum(draft.balances.values()) != draft.minted:
            return state, ChainError(h, "money is not conserved")
        state = draft
        prev = str(block["hash"])
    return state, None


def balances_from(blocks: Sequence[Mapping[str, Json]]) -> dict[str, int]:
    """Balances after replaying ``blocks`` (which must verify: no signature check here)."""
    state = LedgerState()
    for block in blocks:
        apply_block(state, list(block["txs"]))
    return state.balances
