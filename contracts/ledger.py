"""The ledger's rules: canonical encoding, hashes, Merkle roots, signatures, the chain.

Pure functions over plain data (dicts of str/int/bool/None and lists), so anyone holding
the rows can recompute every hash and signature and every balance from genesis. Storage
lives in ``testbed.ledger``; nothing here touches a disk or a clock.

A block: ``{"height", "prev_hash", "interval", "merkle_root", "txs": [...]}``. Its hash is
SHA-256 of the canonical header (everything but the txs, which the Merkle root commits to),
and the operator signs that hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

GENESIS_PREV = "0" * 64
Json = Any


def canonical(obj: Json) -> bytes:
    """One byte string per value: sorted keys, no spaces, UTF-8; floats are refused."""
    _no_floats(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _no_floats(obj: Json) -> None:
    if isinstance(obj, float):
        raise TypeError("floats are not allowed on the ledger: use decimal strings or ints")
    if isinstance(obj, Mapping):
        for v in obj.values():
            _no_floats(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _no_floats(v)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tx_hash(tx: Json) -> str:
    return sha256(canonical(tx))


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


@dataclass(frozen=True, slots=True)
class ChainError:
    height: int
    reason: str


def balances_from(txs: Iterable[Mapping[str, Json]], start: Mapping[str, int]) -> dict[str, int]:
    """Replay deposits and transfers onto ``start``; unknown accounts raise ``KeyError``."""
    out = dict(start)
    for tx in txs:
        kind = tx.get("type")
        if kind == "register":
            out.setdefault(str(tx["account"]), 0)
        elif kind == "deposit":
            out[str(tx["account"])] += int(tx["amount"])
        elif kind == "transfer":
            src, dst, amount = str(tx["from"]), str(tx["to"]), int(tx["amount"])
            if src not in out or dst not in out:
                raise KeyError(f"transfer between unknown accounts {src!r} -> {dst!r}")
            if amount < 0:
                raise ValueError(f"negative transfer {amount}")
            out[src] -= amount
            out[dst] += amount
    return out


def verify_chain(blocks: Sequence[Mapping[str, Json]], operator_public: str) -> ChainError | None:
    """Recompute every hash, root, link and signature; the first bad block, or ``None``.

    Each block is ``{"height", "prev_hash", "interval", "merkle_root", "hash", "signature",
    "txs"}``. Orders inside are checked against the keys registered in earlier blocks.
    """
    prev = GENESIS_PREV
    keys: dict[str, str] = {}
    balances: dict[str, int] = {}
    for expected_height, block in enumerate(blocks):
        h = int(block["height"])
        if h != expected_height:
            return ChainError(expected_height, f"block height {h} where {expected_height} due")
        if block["prev_hash"] != prev:
            return ChainError(h, "prev_hash does not match the previous block's hash")
        txs = list(block["txs"])
        root = merkle_root([tx_hash(tx) for tx in txs])
        if root != block["merkle_root"]:
            return ChainError(h, "Merkle root does not match its transactions")
        head = header(h, block["prev_hash"], block["interval"], root)
        if block_hash(head) != block["hash"]:
            return ChainError(h, "block hash does not match its header")
        if not verify_signature(operator_public, str(block["signature"]),
                                bytes.fromhex(block["hash"])):
            return ChainError(h, "operator signature is invalid")
        total_before = sum(balances.values())
        minted = 0
        for i, tx in enumerate(txs):
            if tx.get("type") == "register":
                keys[str(tx["account"])] = str(tx["public_key"])
            elif tx.get("type") == "deposit":
                if h != 0:
                    return ChainError(h, f"tx {i}: deposits are only allowed in genesis")
                minted += int(tx["amount"])
            elif tx.get("type") == "order":
                owner = str(tx["household"])
                if owner not in keys:
                    return ChainError(h, f"tx {i}: order by unregistered household {owner!r}")
                if not verify_signature(keys[owner], str(tx.get("signature", "")),
                                        order_message(tx)):
                    return ChainError(h, f"tx {i}: order signature of {owner!r} is invalid")
        try:
            balances = balances_from(txs, balances)
        except (KeyError, ValueError) as err:
            return ChainError(h, f"transactions do not apply: {err}")
        if sum(balances.values()) != total_before + minted:
            return ChainError(h, "money is not conserved")
        prev = str(block["hash"])
    return None
