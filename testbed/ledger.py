"""The run's ledger: keys, signed orders, and one signed hash-chained block per interval.

The rules (encoding, hashes, Merkle roots, verification) are ``contracts.ledger``; this
module holds the keys and the current head, and hands blocks to the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts import ledger as rules
from contracts.settlement import GRID, Transfer
from testbed.store import Store

OPERATOR = "operator"


def _public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw).hex()


def _private_hex(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption()).hex()


@dataclass
class Ledger:
    store: Store
    run_id: str
    keys: dict[str, Ed25519PrivateKey] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)
    height: int = 0
    head: str = rules.GENESIS_PREV

    @classmethod
    def load(cls, store: Store, run_id: str) -> Ledger:
        """Re-open a run's ledger: keys from the keystore, head and balances from the
        blocks, after verifying the whole chain from genesis."""
        from testbed.errors import InputError

        err = verify_run(store, run_id)
        if err is not None:
            raise InputError(f"ledger of run {run_id}", f"block {err.height}: {err.reason}")
        led = cls(store, run_id)
        for row in store.db.query("select * from keys where run_id = ?", [run_id]):
            led.keys[row["account"]] = Ed25519PrivateKey.from_private_bytes(
                bytes.fromhex(row["private_key"]))
        blocks = store.blocks(run_id)
        led.balances = rules.balances_from([t for b in blocks for t in b["txs"]], {})
        led.height = len(blocks)
        led.head = blocks[-1]["hash"] if blocks else rules.GENESIS_PREV
        return led

    def opening(self) -> dict[str, int]:
        """Balances as genesis left them (deposits only)."""
        blocks = self.store.blocks(self.run_id)
        return rules.balances_from(blocks[0]["txs"] if blocks else [], {})

    def public(self, account: str) -> str:
        return _public_hex(self.keys[account])

    def new_keys(self, accounts: list[str]) -> list[dict[str, Any]]:
        """An Ed25519 key per account (and the operator's); rows for the keystore table.

        The mock HEMS of every household keeps its key in the run database so a run can be
        resumed; a lab with real HEMS devices registers only their public keys.
        """
        rows = []
        for account in [OPERATOR, *accounts]:
            key = Ed25519PrivateKey.generate()
            self.keys[account] = key
            rows.append({"run_id": self.run_id, "account": account,
                         "public_key": _public_hex(key), "private_key": _private_hex(key)})
        return rows

    def sign_order(self, order: dict[str, Any]) -> dict[str, Any]:
        signed = dict(order)
        signed["signature"] = rules.sign(self.keys[str(order["household"])],
                                         rules.order_message(order))
        return signed

    def order_is_valid(self, order: dict[str, Any]) -> bool:
        owner = str(order.get("household"))
        return owner in self.keys and rules.verify_signature(
            self.public(owner), str(order.get("signature", "")), rules.order_message(order))

    def genesis_txs(self, opening: dict[str, int]) -> list[dict[str, Any]]:
        txs: list[dict[str, Any]] = [
            {"type": "register", "account": a, "public_key": self.public(a)}
            for a in self.keys if a != OPERATOR]
        txs.append({"type": "register", "account": GRID, "public_key": ""})
        txs += [{"type": "deposit", "account": a, "amount": amount}
                for a, amount in opening.items() if amount]
        return txs

    @staticmethod
    def transfer_txs(transfers: tuple[Transfer, ...]) -> list[dict[str, Any]]:
        return [{"type": "transfer", "from": t.source, "to": t.target, "amount": t.amount,
                 "memo": t.memo} for t in transfers]

    def append(self, interval: int | None, txs: list[dict[str, Any]]) -> dict[str, Any]:
        """Seal ``txs`` into the next block and write it (inside the caller's transaction)."""
        root = rules.merkle_root([rules.tx_hash(tx) for tx in txs])
        head = rules.header(self.height, self.head, interval, root)
        digest = rules.block_hash(head)
        block = {**head, "hash": digest,
                 "signature": rules.sign(self.keys[OPERATOR], bytes.fromhex(digest))}
        self.store.insert("blocks", {"run_id": self.run_id, **block})
        self.store.insert("txs", [{"run_id": self.run_id, "height": self.height, "seq": i,
                                   "body": rules.canonical(tx).decode()}
                                  for i, tx in enumerate(txs)])
        self.balances = rules.balances_from(txs, self.balances)
        self.height += 1
        self.head = digest
        return block


def verify_run(store: Store, run_id: str) -> rules.ChainError | None:
    row = store.db["keys"].get((run_id, OPERATOR))  # type: ignore[union-attr]
    return rules.verify_chain(store.blocks(run_id), row["public_key"])
