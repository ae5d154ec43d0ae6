"""The run's ledger on disk: keys, signed orders with nonces and escrow, sealed blocks.

The rules (encoding, hashes, Merkle roots, what a transaction may do) are
``contracts.ledger``; this module holds the keys and the current state, builds blocks
through the same :class:`~contracts.ledger.LedgerState` a verifier replays, and writes
them to the store inside the caller's transaction.

Tables: ``blocks`` and ``txs`` (the chain), ``keys`` (each account's public key, a copy
checked against the certificates), ``balances`` (the state after the head, for auditors),
``runs.ledger_height``/``ledger_head``. No private key and no trust anchor is in the
database: the operator's key, its public half (the anchor ``verify_run`` checks genesis
and every block against) and each run's keystore with the sealed head (so a block cut from
the end is noticed) live in the operator's key folder, :mod:`testbed.ledger.keys`.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts import ledger as rules
from contracts.settlement import GRID, Transfer
from testbed import json_input
from testbed.errors import InputError
from testbed.ledger.keys import Keyring, load_anchor
from testbed.ledger.keys import public_hex as _public_hex
from testbed.ledger.store import SCHEMA, Store

OPERATOR = "operator"
AUD_PER_TOKEN = Fraction(370)
# The ledger's format, named by genesis (the operator tx's ``format``). 0 (08ef03f and
# before: households ``register`` their own keys, no operator tx): not verifiable by these
# rules. 1 (an operator tx without ``format``, up to a0e7c0a): the chain alone. 2: every
# block seals the digests of the rows written with it (``record``), so an audit covers
# what reports read. 3: the same, each row digested from its values' binary form
# (:class:`_RowBytes`) rather than their JSON text, whose decimal floats were half the cost
# of sealing a mock day's 14,400 readings (docs/performance.md, start-up).
LEDGER_FORMAT = 3

# Rows sealed by the ledger: table -> (key columns, columns digested). A run's own row is
# sealed at genesis without what changes later (status, finish, summary, the head, which
# verify_run checks against the chain itself). Safety events are written as they happen
# and sealed by the next block, keyed by ``n``, their place in the run's safety log; those
# after the last block (the final safe state), like readings after the last sealed one, are
# not sealed and pass.
SEALED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "runs": (("id",), ("id", "scenario", "rig", "mechanism", "started_at", "params")),
    **{table: (key, tuple(c for c in SCHEMA[table][0] if c != "run_id"))
       for table, key in (("intervals", ("idx",)), ("trades", ("interval", "seq")),
                          ("results", ("interval", "household")),
                          ("readings", ("household", "t")))},
    "safety": (("n",), ("n", "at", "event", "body")),
}
def _as_float(value: Any) -> float | None:
    """As a REAL column gives it back: 1.0 for 1, 0.0 for -0.0, NULL for NaN."""
    if value is None:
        return None
    number = float(value)
    return None if number != number else number + 0.0  # -0.0 + 0.0 is 0.0


def _as(kind: type) -> Callable[[Any], Any]:
    if kind is float:
        return _as_float

    def cast(value: Any) -> Any:
        return None if value is None else kind(value)
    return cast


# Per sealed table: (key columns, digested columns), each with the cast of its declared
# type (a column the schema does not declare, safety's ``n``, is an integer position).
_PLANS: dict[str, tuple[tuple[tuple[str, Callable[[Any], Any]], ...], ...]] = {
    table: tuple(tuple((c, _as(SCHEMA[table][0].get(c, int))) for c in columns)
                 for columns in spec)
    for table, spec in SEALED.items()}
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _list_encoder() -> Callable[[list[Any]], str]:
    """:data:`_ENCODE` for a list of scalars, without building a C encoder per call.

    ``JSONEncoder.encode`` makes a new C encoder on every call, a third of the cost of a
    short row (a mock day seals 14,400 readings). The encoder here is that same C encoder,
    made once with the same arguments (separators ``,``/``:``, no ASCII escaping, NaN
    allowed; no circular check, which a flat row of scalars never needs): the same text.
    Without the C accelerator, :data:`_ENCODE` itself."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _ENCODE
    base = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    encoder = make(None, base.default, json.encoder.encode_basestring, None,
                   base.key_separator, base.item_separator, False, False, True)

    def encode(values: list[Any]) -> str:
        return "".join(encoder(values, 0))
    return encode


_ENCODE_ROW = _list_encoder()


def row_key(table: str, row: Mapping[str, Any]) -> str:
    """The sealed row's key: its key columns' values joined by ``/`` (e.g. ``0/3``)."""
    return "/".join([str(cast(row.get(c))) for c, cast in _PLANS[table][0]])


# Keys of ``runs.params`` that name the process holding the run (testbed.run.lifecycle):
# rewritten by every resume, so not sealed; everything else in params is.
HOLDER_PARAMS = ("pid", "host")


def _sealed_params(text: Any) -> Any:
    """``runs.params`` as sealed: canonical JSON without :data:`HOLDER_PARAMS` (text that is
    not a JSON object is sealed as it is)."""
    try:
        params = json.loads(text)
    except (TypeError, ValueError):
        return text
    if not isinstance(params, dict):
        return text
    return json.dumps({k: v for k, v in params.items() if k not in HOLDER_PARAMS},
                      sort_keys=True, separators=(",", ":"))


class _RowBytes:
    """A row's digested values, cast, as bytes (ledger format 3): the REAL columns as
    little-endian IEEE-754 doubles (NULL as NaN, which a REAL column never holds: SQLite
    stores NaN as NULL), the INTEGER columns as a presence byte and a signed 64-bit
    integer, then each TEXT column as a 4-byte little-endian length and its UTF-8 (NULL:
    length 0xFFFFFFFF), each group in schema order. Exact and unambiguous, like the JSON
    text of formats 2 and before, and one ``struct.pack`` per row instead of a decimal
    conversion per float."""

    def __init__(self, kinds: Sequence[type]) -> None:
        self.floats = [i for i, k in enumerate(kinds) if k is float]
        self.ints = [i for i, k in enumerate(kinds) if k is int]
        self.texts = [i for i, k in enumerate(kinds) if k is not float and k is not int]
        self.pack = struct.Struct("<" + "d" * len(self.floats) + "Bq" * len(self.ints)).pack

    def __call__(self, values: list[Any]) -> bytes:
        numbers = [_NAN if (v := values[i]) is None else v for i in self.floats]
        for i in self.ints:
            v = values[i]
            numbers += (v is not None, v or 0)
        out = self.pack(*numbers)
        for i in self.texts:
            text = values[i]
            if text is None:
                out += b"\xff\xff\xff\xff"
            else:
                data = text.encode()
                out += len(data).to_bytes(4, "little") + data
        return out


_NAN = float("nan")
_ROW_BYTES = {table: _RowBytes([SCHEMA[table][0].get(c, int) for c in columns])
              for table, (_keys, columns) in SEALED.items()}


def _json_bytes(values: list[Any]) -> bytes:
    """Formats 2 and before: the values' JSON text (:data:`_ENCODE_ROW`), UTF-8."""
    return _ENCODE_ROW(values).encode()


def row_digest(table: str, row: Mapping[str, Any], fmt: int = LEDGER_FORMAT) -> str:
    """SHA-256 (128 bits, hex) of the row's digested columns in schema order (a run's
    ``params`` without the process that holds it, :data:`HOLDER_PARAMS`), in ledger format
    ``fmt``'s form: binary (:class:`_RowBytes`) from format 3, JSON text before."""
    return _digests(table, (row,), fmt)[row_key(table, row)]


def _digests(table: str, rows: Iterable[Mapping[str, Any]],
             fmt: int = LEDGER_FORMAT) -> dict[str, str]:
    """:func:`row_key` -> :func:`row_digest` of each row of ``table`` (a later row with the
    same key wins), in one loop: a mock day's 14,400 readings are sealed here."""
    keys, columns = _PLANS[table]
    params = SEALED["runs"][1].index("params") if table == "runs" else None
    # every sealed table's key columns are digested too, cast alike: the key is made of
    # the values already cast for the digest
    names = [c for c, _cast in columns]
    at = [names.index(c) for c, _cast in keys]
    sha256 = hashlib.sha256
    as_bytes = _ROW_BYTES[table] if fmt >= 3 else _json_bytes
    out: dict[str, str] = {}
    for row in rows:
        get = row.get
        values = [cast(get(c)) for c, cast in columns]
        key = "/".join([str(values[i]) for i in at])
        if params is not None:
            values[params] = _sealed_params(values[params])
        out[key] = sha256(as_bytes(values)).hexdigest()[:32]
    return out


def record_tx(rows: Mapping[str, Iterable[Mapping[str, Any]]]) -> dict[str, Any]:
    """The ``record`` transaction sealing ``rows`` (table -> the rows as written), in this
    release's ledger format (:data:`LEDGER_FORMAT`)."""
    return {"type": "record", "rows": {table: _digests(table, table_rows)
                                       for table, table_rows in rows.items()}}


def ledger_format(blocks: list[dict[str, Any]]) -> int:
    """The format genesis names: 1 when its operator tx names none (the releases up to
    a0e7c0a), 0 when genesis has no operator tx (08ef03f and before), -1 when the format
    is not an integer."""
    first = blocks[0]["txs"][:1] if blocks else []
    if not first or not isinstance(first[0], dict) or first[0].get("type") != "operator":
        return 0
    value = first[0].get("format", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def check_records(store: Store, run_id: str, blocks: list[dict[str, Any]],
                  ) -> rules.ChainError | None:
    """Every sealed row against the table: the first one edited, deleted or added, naming
    the table and the row (readings after the last sealed one are a cut-short interval's,
    not sealed yet, and pass). Format-1 ledgers seal no rows: None."""
    fmt = ledger_format(blocks)
    if fmt < 2:
        return None
    sealed: dict[str, dict[str, tuple[str, int]]] = {t: {} for t in SEALED}
    for b in blocks:
        for tx in b["txs"]:
            if isinstance(tx, dict) and tx.get("type") == "record":
                for table, digests in tx["rows"].items():
                    if table in sealed:
                        sealed[table].update({k: (d, int(b["height"]))
                                              for k, d in digests.items()})
    last = len(blocks) - 1
    for table, (key_columns, _columns) in SEALED.items():
        rows = [r for r in ([store.find_run(run_id)] if table == "runs"
                            else store.rows(table, run_id)) if r is not None]
        expect = dict(sealed[table])
        if table == "safety":
            rows = [{**r, "n": n} for n, r in enumerate(rows)]
        tail = {"readings": "t", "safety": "n"}.get(table)
        latest = max((float(k.rsplit("/", 1)[-1]) for k in expect), default=None) \
            if tail else None

        def name(key: str, table: str = table, columns: tuple[str, ...] = key_columns) -> str:
            return f"table {table}, row " + ", ".join(
                f"{c} {v}" for c, v in zip(columns, key.split("/", len(columns) - 1),
                                           strict=True))

        for row in rows:
            key = row_key(table, row)
            if key not in expect:
                if tail and (latest is None or float(row[tail]) > latest):
                    continue  # after the last sealed one: not sealed yet
                return rules.ChainError(last, f"{name(key)}: not sealed by the ledger "
                                              "(added or its key edited)")
            digest, height = expect.pop(key)
            if row_digest(table, row, fmt) != digest:
                return rules.ChainError(height, f"{name(key)}: edited (block {height} "
                                                "sealed other values)")
        if expect:
            key, (_digest, height) = min(expect.items(), key=lambda kv: kv[1][1])
            return rules.ChainError(height, f"{name(key)}: deleted (sealed in block "
                                            f"{height})")
    return None


@dataclass
class BlockDraft:
    """The next block while it is being built: every tx is checked as it is added."""

    state: rules.LedgerState
    txs: list[dict[str, Any]] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)  # order hash -> reason

    def submit(self, order: dict[str, Any]) -> str | None:
        """Record ``order`` as executed, or as rejected with the reason (returned)."""
        reason = self.state.admit(order)  # a rejected order changes no state
        if reason is None:
            self.txs.append(order)
        else:
            self.txs.append({"type": "rejected", "order": order, "reason": reason})
            self.rejected[rules.tx_hash(order)] = reason
        return reason

    def add(self, txs: Iterable[dict[str, Any]]) -> None:
        for tx in txs:
            self.state.apply(tx)
            self.txs.append(tx)

    def release_escrow(self) -> None:
        """Return every escrow opened in this block, whole (settlement already paid)."""
        self.add([{"type": "release", "order": digest, "account": owner, "amount": amount}
                  for digest, (owner, amount) in sorted(self.state.holds.items())])


@dataclass
class Ledger:
    store: Store
    run_id: str
    keyring: Keyring = field(default_factory=Keyring)
    keys: dict[str, Ed25519PrivateKey] = field(default_factory=dict)
    state: rules.LedgerState = field(default_factory=rules.LedgerState)
    head: str = rules.GENESIS_PREV
    genesis: str = ""
    external: dict[str, str] = field(default_factory=dict)  # agent keys we hold no secret of
    safety_sealed: int = 0  # safety log rows sealed so far
    _issued: dict[str, int] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return self.state.height

    @property
    def balances(self) -> dict[str, int]:
        return self.state.balances

    @classmethod
    def create(cls, store: Store, run_id: str, accounts: list[str], opening: dict[str, int],
               aud_per_token: Fraction = AUD_PER_TOKEN, keyring: Keyring | None = None,
               ratings: Mapping[str, Fraction] | None = None,
               agents: Mapping[str, str | Ed25519PrivateKey] | None = None) -> Ledger:
        """A key for every account, signed by the operator's key from ``keyring`` (default:
        the operator's key folder, created on first use), and the genesis block (inside the
        caller's transaction). The households' keys go to the run's keystore file;
        ``ratings``: account -> rated market kW of its rig; ``agents``: account -> the key
        its agent signs with, registered with the operator (:mod:`testbed.agents`): a
        public key (64 hex digits) or, for a lab-held agent key, the private key."""
        led = cls(store, run_id, keyring or Keyring())
        led.new_keys(accounts, agents or {})
        run = store.find_run(run_id)
        led.append(None, [*led.genesis_txs(opening, aud_per_token, ratings),
                          *([record_tx({"runs": [run]})] if run is not None else [])])
        return led

    @classmethod
    def load(cls, store: Store, run_id: str, keyring: Keyring | None = None) -> Ledger:
        """Re-open a run's ledger after verifying the whole chain from genesis against the
        operator's key; the households' keys come from the run's keystore file."""
        ring = keyring or Keyring()
        err = verify_run(store, run_id, ring.anchor(), ring)
        if err is not None:
            raise InputError(f"ledger of run {run_id}", f"block {err.height}: {err.reason}")
        led = cls(store, run_id, ring)
        blocks = store.blocks(run_id)
        led.keys = {OPERATOR: ring.operator(),
                    **ring.load_run(run_id, blocks[0]["hash"]).keys}
        led.state, _ = rules.replay(blocks, led.public(OPERATOR))
        led.safety_sealed = 1 + max((int(n) for b in blocks for tx in b["txs"]
                                     if isinstance(tx, dict) and tx.get("type") == "record"
                                     for n in tx["rows"].get("safety", {})), default=-1)
        led.head = blocks[-1]["hash"] if blocks else rules.GENESIS_PREV
        led.genesis = blocks[0]["hash"]
        return led

    def record(self, rows: Mapping[str, Iterable[Mapping[str, Any]]]) -> dict[str, Any]:
        """The ``record`` tx for the next block: ``rows`` (table -> the rows about to be
        written with it) and the safety events logged since the last block."""
        log = self.store.rows("safety", self.run_id)
        fresh = [{**r, "n": n} for n, r in enumerate(log) if n >= self.safety_sealed]
        self.safety_sealed = len(log)
        return record_tx({**rows, **({"safety": fresh} if fresh else {})})

    def opening(self) -> dict[str, int]:
        """Balances as genesis left them (deposits only)."""
        return rules.balances_from(self.store.blocks(self.run_id)[:1])

    def public(self, account: str) -> str:
        if account in self.external:
            return self.external[account]
        return _public_hex(self.keys[account])

    def new_keys(self, accounts: list[str],
                 agents: Mapping[str, str | Ed25519PrivateKey] | None = None,
                 ) -> list[dict[str, Any]]:
        """An Ed25519 key per account beside the operator's (an agent's account takes its
        registered key from ``agents``); writes the public keys to the ``keys`` table (the
        private ones reach the keystore file with genesis) and returns the public rows."""
        self.keys[OPERATOR] = self.keyring.operator()
        for account in accounts:
            given = (agents or {}).get(account)
            if isinstance(given, str):
                self.external[account] = given
            else:
                self.keys[account] = given or Ed25519PrivateKey.generate()
        rows = [{"run_id": self.run_id, "account": a, "public_key": self.public(a)}
                for a in [*self.keys, *self.external]]
        self.store.insert("keys", rows)
        return rows

    def genesis_txs(self, opening: Mapping[str, int],
                    aud_per_token: Fraction = AUD_PER_TOKEN,
                    ratings: Mapping[str, Fraction] | None = None) -> list[dict[str, Any]]:
        """The operator (trust anchor), a certificate per household key, the grid's
        account, the opening deposits and the rigs' ratings."""
        op = self.keys[OPERATOR]
        txs: list[dict[str, Any]] = [{"type": "operator", "public_key": self.public(OPERATOR),
                                      "aud_per_token": str(aud_per_token),
                                      "format": LEDGER_FORMAT}]
        for account in [*self.keys, *self.external]:
            if account != OPERATOR:
                pub = self.public(account)
                txs.append({"type": "certificate", "account": account, "public_key": pub,
                            "signature": rules.sign(op, rules.certificate_message(account,
                                                                                  pub))})
        txs.append({"type": "open", "account": GRID})
        txs += [{"type": "deposit", "account": a, "amount": amount}
                for a, amount in opening.items() if amount]
        txs += [{"type": "rating", "account": a, "max_kw": str(kw)}
                for a, kw in sorted((ratings or {}).items())]
        return txs

    def next_nonce(self, household: str) -> int:
        """A nonce above every one this household has used (on the chain or issued)."""
        n = max(self.state.nonces.get(household, -1), self._issued.get(household, -1)) + 1
        self._issued[household] = n
        return n

    def sign_order(self, order: dict[str, Any]) -> dict[str, Any]:
        """The household's HEMS signs ``order`` (given a fresh nonce if it has none)."""
        signed = {"type": "order", **order}
        signed.setdefault("nonce", self.next_nonce(str(order["household"])))
        signed["signature"] = rules.sign(self.keys[str(order["household"])],
                                         rules.order_message(signed))
        return signed

    def order_is_valid(self, order: dict[str, Any]) -> bool:
        return self.state.rejection(order) is None

    def draft(self) -> BlockDraft:
        return BlockDraft(self.state.copy())

    @staticmethod
    def transfer_txs(transfers: Iterable[Transfer]) -> list[dict[str, Any]]:
        return [{"type": "transfer", "from": t.source, "to": t.target, "amount": t.amount,
                 "memo": t.memo} for t in transfers]

    def append(self, interval: int | None, txs: list[dict[str, Any]]) -> dict[str, Any]:
        """Check ``txs`` against the rules, then seal and write them as the next block."""
        draft = self.draft()
        draft.add(txs)
        return self.seal(interval, draft)

    def seal(self, interval: int | None, draft: BlockDraft) -> dict[str, Any]:
        """Seal ``draft`` into the next block and write it (inside the caller's
        transaction). Raises :class:`contracts.ledger.TxError` if it leaves escrow open."""
        state = draft.state
        state.end_block()
        txs = draft.txs
        height = state.height - 1
        encoded = rules.encoded_txs(txs)
        root = rules.merkle_root([digest for digest, _body in encoded])
        head = rules.header(height, self.head, interval, root)
        digest = rules.block_hash(head)
        block = {**head, "hash": digest,
                 "signature": rules.sign(self.keys[OPERATOR], bytes.fromhex(digest))}
        store = self.store
        store.insert("blocks", {"run_id": self.run_id, **block})
        store.insert("txs", [{"run_id": self.run_id, "height": height, "seq": i,
                              "body": body.decode()}
                             for i, (_digest, body) in enumerate(encoded)])
        store.put_balances(self.run_id, state.balances)
        store.update_run(self.run_id, ledger_height=height + 1, ledger_head=digest,
                         **({"ledger_format": LEDGER_FORMAT} if height == 0 else {}))
        self.state, self.head = state, digest
        ring, run_id = self.keyring, self.run_id
        if height == 0:
            self.genesis = digest
            households = {a: k for a, k in self.keys.items() if a != OPERATOR}
            store.on_commit(lambda: ring.save_run(run_id, digest, households, 1, digest))
        else:
            genesis = self.genesis
            store.on_commit(lambda: ring.record_head(run_id, genesis, height + 1, digest))
        return block


def verify_run(store: Store, run_id: str, anchor: str | None = None,
               keyring: Keyring | None = None) -> rules.ChainError | None:
    """Verify one run's ledger rows from genesis against the operator's public key
    ``anchor`` (64 hex digits; default: ``operator.pub`` in the operator's key folder, never
    the database): every signature, hash, link and balance, the rows' own form, the keys
    table, the head the run recorded, and the head the operator's keystore recorded (a block
    cut from the end). Returns the first error (height, reason) or None."""
    ring = keyring or Keyring()
    if anchor is None:
        try:
            anchor = load_anchor(ring.directory / "operator.pub")[0]
        except InputError as e:
            return rules.ChainError(0, f"no trust anchor: {e}")
    keys = {r["account"]: r["public_key"] for r in store.rows("keys", run_id)}
    headers = store.rows("blocks", run_id)
    if not headers:
        return rules.ChainError(0, "the run has no genesis block")
    tx_rows: dict[int, list[dict[str, Any]]] = {}
    for r in store.rows("txs", run_id):
        tx_rows.setdefault(r["height"], []).append(r)
    blocks = []
    for header in headers:
        h = header["height"]
        rows = tx_rows.get(h, [])
        block = {k: header[k] for k in ("height", "interval", "prev_hash", "merkle_root",
                                        "hash", "signature")}
        txs = []
        for i, row in enumerate(rows):
            if row["seq"] != i:
                return rules.ChainError(h, f"tx row {row['seq']} where {i} is due")
            try:
                tx = json_input.loads(row["body"])
            except (ValueError, TypeError, RecursionError):
                return rules.ChainError(h, f"tx {i} is not JSON")
            try:
                form = rules.canonical(tx).decode()
            except TypeError:
                form = None
            if form != row["body"]:
                return rules.ChainError(h, f"tx {i} is not in canonical form")
            txs.append(tx)
        blocks.append({**block, "txs": txs})
    first = blocks[0]["txs"][:1]
    fmt = ledger_format(blocks)
    if fmt == 0:
        return rules.ChainError(0, "genesis is of ledger format 0 (households register "
                                   "their own keys; releases up to 08ef03f): these rules "
                                   "cannot verify it; use the release that wrote it")
    named = first[0].get("public_key") if first and isinstance(first[0], dict) else None
    if named != anchor:
        return rules.ChainError(0, f"genesis names operator key {str(named)[:16]}…, not the "
                                   f"operator's key {anchor[:16]}… (the trust anchor)")
    if not 1 <= fmt <= LEDGER_FORMAT:
        return rules.ChainError(0, f"genesis names ledger format {first[0].get('format')!r}; "
                                   f"this testbed reads formats 1 to {LEDGER_FORMAT}")
    try:
        recorded_head = ring.head(run_id, str(blocks[0]["hash"]))
    except InputError as e:
        return rules.ChainError(0, f"the operator's record of this run: {e}")
    if recorded_head is not None:
        n, digest = recorded_head
        if n < 1:
            return rules.ChainError(0, f"the operator's record of run {run_id} is damaged")
        if len(blocks) < n:
            return rules.ChainError(len(blocks), f"block {len(blocks)} is missing: the "
                                    f"operator sealed {n} blocks (keystore of run {run_id})")
        if blocks[n - 1]["hash"] != digest:
            return rules.ChainError(n - 1, f"block {n - 1} is not the block the operator "
                                           "sealed there (keystore's head)")
    state, err = rules.replay(blocks, anchor)
    if err is not None:
        return err
    orphans = store.orphan_tx_height(run_id)
    if orphans is not None:
        return rules.ChainError(orphans, f"transactions at height {orphans} have no block")
    last = len(blocks) - 1
    run_row = store.find_run(run_id)
    if run_row is None:
        return rules.ChainError(0, "the run's row is missing, and with it the recorded head")
    recorded, head = run_row["ledger_height"], run_row["ledger_head"]
    if recorded != len(blocks) or head != (blocks[-1]["hash"] if blocks else None):
        if recorded is not None and recorded > len(blocks):
            return rules.ChainError(len(blocks), f"block {len(blocks)} is missing: the run "
                                                 f"recorded {recorded} blocks")
        return rules.ChainError(max(last, 0), f"the run recorded {recorded} blocks ending in "
                                              f"{head}, not this chain's head")
    certified = dict(state.keys)
    certified[OPERATOR] = state.operator
    if OPERATOR not in keys:
        return rules.ChainError(0, "the operator's public key is missing from the keys table")
    if keys != certified:
        bad = sorted(set(keys.items()) ^ set(certified.items()))[0][0]
        return rules.ChainError(0, f"keys table entry for {bad!r} does not match the chain")
    stored = store.balances(run_id)
    if stored != state.balances:
        bad = sorted(set(stored.items()) ^ set(state.balances.items()))[0][0]
        return rules.ChainError(last, f"balances table for {bad!r}: {stored.get(bad)} µ, "
                                      f"the chain gives {state.balances.get(bad)} µ")
    try:
        final = ring.final(run_id, str(blocks[0]["hash"]))
    except InputError as e:
        return rules.ChainError(0, f"the operator's record of this run: {e}")
    if final is not None and final != final_digest(run_row):
        return rules.ChainError(last, f"table runs, row id {run_id}: status, finished_at or "
                                      "summary edited after the run ended (the operator's "
                                      "keystore sealed them)")
    return check_records(store, run_id, blocks)


# The columns of a run's row written when it ends, after its last block: sealed in the
# operator's keystore instead (Keyring.record_final), by :func:`seal_final`.
FINAL_COLUMNS = ("status", "finished_at", "summary")


def final_digest(row: Mapping[str, Any]) -> str:
    """SHA-256 (128 bits, hex) of the run row's :data:`FINAL_COLUMNS` as JSON."""
    text = json.dumps([row.get(c) for c in FINAL_COLUMNS], separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def seal_final(store: Store, run_id: str, keyring: Keyring | None = None) -> None:
    """Record, in the operator's keystore of the run, the digest of how the run ended
    (:func:`final_digest`), so that ``ledger verify`` detects a later edit of its status,
    finish time or summary. Nothing for a run without a chain or keystore."""
    row = store.find_run(run_id)
    heads = store.rows("blocks", run_id)
    if row is None or not heads:
        return
    (keyring or Keyring()).record_final(run_id, str(heads[0]["hash"]), final_digest(row))
