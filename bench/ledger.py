"""Figure 5: signed orders verified per second, and verifying a stored chain per block.

A run's ledger is built the way ``testbed run`` builds it (``Ledger.create``, then per
interval a draft where every household's signed order is submitted, fills added, escrow
released, and the block sealed into SQLite), with ``--households`` households ordering in
each of ``--blocks`` intervals. Then, in the same process:

* ``verify_signature_per_s``: ``contracts.ledger.verify_signature`` on each order
  (canonical encoding of the order and the Ed25519 check), against
  ``raw_ed25519_per_s``: ``cryptography``'s ``verify`` on the same keys, signatures and
  bytes, prepared beforehand (the floor a signed order cannot beat);
* ``admission_per_s``: ``Ledger.order_is_valid`` (signature, hash, nonce, escrow checks);
* ``verify_run``: ``testbed.ledger.chain.verify_run`` (what ``testbed ledger verify`` runs: read
  the rows from SQLite and replay the chain), and ``verify_chain`` on blocks already in
  memory; per block, and as signed orders per second.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bench._common import best_of, emit, parser, profile_top
from contracts import ledger as rules
from testbed.ledger.chain import OPERATOR, Ledger, verify_run
from testbed.ledger.store import Store

TARGET_ORDERS_PER_S = 5000
RUN = "bench-ledger"


def build_run(store: Store, households: int, blocks: int) -> tuple[Ledger, list[dict[str, Any]]]:
    """A run's chain: genesis and ``blocks`` intervals of one order per household; the
    signed orders of all intervals."""
    ids = [str(i + 1) for i in range(households)]
    store.insert("runs", {"id": RUN, "status": "running"})
    with store.transaction():
        led = Ledger.create(store, RUN, ids, {h: 10**9 for h in ids})
    orders: list[dict[str, Any]] = []
    for interval in range(blocks):
        draft = led.draft()
        signed = []
        for k, h in enumerate(ids):
            side = "buy" if k % 2 == 0 else "sell"
            energy = f"{1 + (k * 7 + interval) % 4999}/1000"
            price = f"{(50 if side == 'buy' else 30) + (k * 13 + interval) % 300}/1000"
            signed.append(led.sign_order({"run": RUN, "interval": interval, "household": h,
                                          "side": side, "energy_kwh": energy,
                                          "price": price}))
        for o in signed:
            reason = draft.submit(o)
            if reason is not None:
                raise RuntimeError(f"bench order rejected: {reason}")
        draft.add({"type": "fill", "seller": ids[k + 1], "buyer": ids[k],
                   "energy_kwh": "1/1000", "price": "1/5"} for k in range(0, len(ids) - 1, 2))
        draft.release_escrow()
        with store.transaction():
            led.seal(interval, draft)
        orders += signed
    return led, orders


def signatures(led: Ledger, orders: list[dict[str, Any]]) -> dict[str, Any]:
    keys = {h: led.public(h) for h in {str(o["household"]) for o in orders}}
    prepared = [(Ed25519PublicKey.from_public_bytes(bytes.fromhex(keys[str(o["household"])])),
                 bytes.fromhex(str(o["signature"])), rules.order_message(o)) for o in orders]

    def ours() -> None:
        for o in orders:
            assert rules.verify_signature(keys[str(o["household"])], str(o["signature"]),
                                          rules.order_message(o))

    def raw() -> None:
        for key, sig, msg in prepared:
            key.verify(sig, msg)

    fresh = [led.sign_order({k: v for k, v in o.items()  # not yet on the chain: admissible
                             if k not in ("type", "nonce", "signature")}) for o in orders]

    def admission() -> None:
        for o in fresh:
            assert led.order_is_valid(o)

    n = len(orders)
    t_ours, t_raw, t_adm = best_of(ours, 3), best_of(raw, 3), best_of(admission, 3)
    return {"orders": n, "verify_signature_per_s": n / t_ours, "raw_ed25519_per_s": n / t_raw,
            "admission_per_s": n / t_adm, "verify_signature_over_raw": t_ours / t_raw,
            "admission_over_raw": t_adm / t_raw}


def chain(store: Store, led: Ledger, households: int, n_blocks: int,
          profile: bool) -> dict[str, Any]:
    blocks = store.blocks(RUN)
    op = led.public(OPERATOR)
    assert verify_run(store, RUN) is None and rules.verify_chain(blocks, op) is None
    t_run = best_of(lambda: verify_run(store, RUN), 3)
    t_chain = best_of(lambda: rules.verify_chain(blocks, op), 3)
    orders = households * n_blocks
    out: dict[str, Any] = {
        "blocks": len(blocks), "orders_per_block": households,
        "txs": sum(len(b["txs"]) for b in blocks),
        "verify_run_s": t_run, "verify_run_per_block_s": t_run / len(blocks),
        "verify_run_orders_per_s": orders / t_run,
        "verify_chain_s": t_chain, "verify_chain_per_block_s": t_chain / len(blocks),
        "verify_chain_orders_per_s": orders / t_chain,
        "reading_rows_share": max(0.0, 1.0 - t_chain / t_run)}
    if profile:
        out["profile_verify_run"] = profile_top(lambda: verify_run(store, RUN), 12)[1]
    return out


def run(households: int, n_blocks: int, profile: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        store = Store(Path(tmp) / "ledger.db")
        started = time.perf_counter()
        led, orders = build_run(store, households, n_blocks)
        build_s = time.perf_counter() - started
        sig = signatures(led, orders)
        ch = chain(store, led, households, n_blocks, profile)
        store.close()
    return {"figure": "ledger", "households": households, "intervals": n_blocks,
            "orders_verified_per_s": sig["verify_signature_per_s"],
            "verify_per_block_s": ch["verify_run_per_block_s"],
            "build_s": build_s, "signatures": sig, "chain": ch,
            "target": {"orders_per_s_min": TARGET_ORDERS_PER_S,
                       "met": sig["verify_signature_per_s"] >= TARGET_ORDERS_PER_S
                       and ch["verify_run_orders_per_s"] >= TARGET_ORDERS_PER_S}}


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--households", type=int, default=100, help="orders per block")
    p.add_argument("--blocks", type=int, default=50, help="intervals after genesis")
    p.add_argument("--profile", action="store_true", help="add a profile of verify_run")
    a = p.parse_args()
    emit(run(a.households, a.blocks, a.profile), a.json)


if __name__ == "__main__":
    main()
