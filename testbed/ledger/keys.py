"""Keys kept apart from the ledger they protect: the operator's trust anchor, the keystore.

A run database holds the chain and the *public* keys only. Whoever can write that file must
not be able to re-sign it, so every private key and the trust anchor live in the operator's
key folder (:func:`home`)::

    $TESTBED_HOME (default $XDG_CONFIG_HOME/testbed, else ~/.config/testbed)
      operator.key            the operator's Ed25519 private key, PKCS#8 PEM, mode 0600,
                              encrypted when TESTBED_KEY_PASSPHRASE is set at creation
      operator.pub            its public key as 64 hex digits: the trust anchor an auditor
                              copies (``testbed ledger verify --operator-key FILE``)
      runs/RUN-GENESIS.json   one keystore per run, mode 0600: the private keys of the
                              households' (mock) HEMS, so the run can be resumed (scrypt +
                              AES-GCM when a passphrase is set), and the head the operator
                              sealed last, so a block cut from the end of the chain is seen;
                              on an EVM node run (``--ledger evm+http://``) also the
                              secp256k1 keys of the operator's and households' Ethereum
                              accounts (``eth_keys``, sealed the same way), so a resumed run,
                              ``ledger verify`` or a HEMS can sign for them later

The folder and the operator's key are created on the first run. A lab whose HEMS hold their
own keys keeps only the operator's. :class:`Keyring` is the one place that signs blocks and
certificates and hands out the anchor; a verifier needs only :func:`load_anchor`.

Errors: :class:`testbed.errors.InputError` naming the file (and what to do) for a missing,
unreadable, wrongly permitted or undecryptable key file.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from testbed import json_input
from testbed.errors import InputError

HOME_ENV = "TESTBED_HOME"
PASSPHRASE_ENV = "TESTBED_KEY_PASSPHRASE"
OPERATOR_KEY = "operator.key"
OPERATOR_PUB = "operator.pub"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def home() -> Path:
    """The operator's key folder: ``$TESTBED_HOME``, else ``$XDG_CONFIG_HOME/testbed``, else
    ``~/.config/testbed``."""
    explicit = os.environ.get(HOME_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "testbed"


def public_hex(key: Ed25519PrivateKey) -> str:
    """The raw Ed25519 public key as 64 lower-case hex digits."""
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw).hex()


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def _write_private(path: Path, data: bytes, *, exclusive: bool = False) -> bool:
    """Write ``data`` to ``path`` atomically with mode 0600 (never readable by others).

    ``exclusive``: only if ``path`` does not exist yet, decided atomically (a hard link, so
    two processes creating the same file at once cannot both win); returns False when
    another writer was first and its file was kept.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data):x}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if not exclusive:
        os.replace(tmp, path)
        return True
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


def _read_private(path: Path) -> bytes:
    """A private key file's bytes; refused when group or others may read or write it."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InputError(str(path), f"a private key file must be mode 0600, it is "
                             f"{stat.S_IMODE(mode):04o} (chmod 600 {path})")
        return path.read_bytes()
    except OSError as e:
        raise InputError(str(path), e.strerror or "cannot be read") from None


def load_anchor(source: str | Path | None = None) -> tuple[str, str]:
    """The operator's public key (64 hex digits) and where it came from.

    ``source``: 64 hex digits, or a file holding them (``operator.pub``) or a PEM public
    key; ``None`` reads ``operator.pub`` in :func:`home`. Raises InputError when there is
    none or it is not an Ed25519 public key.
    """
    if source is not None and _HEX64.fullmatch(str(source).strip().lower()):
        return str(source).strip().lower(), "--operator-key"
    path = Path(source) if source is not None else home() / OPERATOR_PUB
    where = str(path)
    if not path.is_file():
        raise InputError(where, "no operator public key here (the trust anchor): give "
                         "--operator-key FILE|HEX, or set TESTBED_HOME to the operator's "
                         "key folder")
    try:
        raw = path.read_bytes()[:4096]
        text = raw.decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        raise InputError(where, "not an operator public key (64 hex digits or PEM)") from None
    if _HEX64.fullmatch(text.lower()):
        return text.lower(), where
    try:
        key = serialization.load_pem_public_key(raw)
        pub = key.public_bytes(serialization.Encoding.Raw,
                               serialization.PublicFormat.Raw).hex()
    except (ValueError, TypeError):
        raise InputError(where, "not an operator public key (64 hex digits or an Ed25519 "
                         "PEM public key)") from None
    return pub, where


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What the operator keeps about one run outside its database."""

    keys: dict[str, Ed25519PrivateKey]
    height: int  # blocks sealed (the head is block height - 1)
    head: str | None


@dataclass
class Keyring:
    """The operator's key folder: signs with the operator's key, keeps each run's keystore.

    ``directory`` defaults to :func:`home`; ``passphrase`` to ``$TESTBED_KEY_PASSPHRASE``.
    """

    directory: Path = field(default_factory=home)
    passphrase: bytes | None = field(default_factory=_passphrase)
    _operator: Ed25519PrivateKey | None = None
    _sealed_keys: dict[tuple[str, str], Any] = field(default_factory=dict)
    _sealed_eth: dict[tuple[str, str], Any] = field(default_factory=dict)

    def operator(self) -> Ed25519PrivateKey:
        """The operator's private key, created with ``operator.pub`` on first use."""
        if self._operator is None:
            path = self.directory / OPERATOR_KEY
            created = None if path.exists() else self._create_operator(path)
            # a run started at the same moment may have created it first: its key stands
            self._operator = created or self._load_operator(path)
        return self._operator

    def anchor(self) -> str:
        """The operator's public key (from ``operator.pub``, the file auditors copy)."""
        return load_anchor(self.directory / OPERATOR_PUB)[0]

    def _create_operator(self, path: Path) -> Ed25519PrivateKey | None:
        """A new operator key written to ``path``, or None when another process wrote one
        first (then that one is the operator's)."""
        key = Ed25519PrivateKey.generate()
        algo: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(self.passphrase) if self.passphrase
            else serialization.NoEncryption())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                algo)
        if not _write_private(path, pem, exclusive=True):
            return None
        self._write_anchor(key)
        return key

    def _write_anchor(self, key: Ed25519PrivateKey) -> None:
        """``operator.pub`` for ``key``, replaced atomically (a reader never sees half)."""
        pub = self.directory / OPERATOR_PUB
        tmp = pub.with_name(f".{pub.name}.{os.getpid()}.{id(key):x}.tmp")
        tmp.write_text(public_hex(key) + "\n", "ascii")
        os.replace(tmp, pub)

    def _load_operator(self, path: Path) -> Ed25519PrivateKey:
        data = _read_private(path)
        try:
            key = serialization.load_pem_private_key(data, self.passphrase)
        except TypeError:
            raise InputError(str(path), f"the operator key is encrypted: set {PASSPHRASE_ENV}"
                             if self.passphrase is None else
                             f"the operator key is not encrypted: unset {PASSPHRASE_ENV}"
                             ) from None
        except ValueError:
            raise InputError(str(path), "not an operator private key, or the passphrase "
                             f"in {PASSPHRASE_ENV} is wrong") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise InputError(str(path), "the operator key must be Ed25519")
        pub = self.directory / OPERATOR_PUB
        if not pub.exists():  # its creator may not have written it yet: the same content
            self._write_anchor(key)
        elif load_anchor(pub)[0] != public_hex(key):
            raise InputError(str(pub), f"does not belong to {path}: restore the pair")
        return key

    # -- per-run keystore -----------------------------------------------------------------

    def run_path(self, run_id: str, genesis: str) -> Path:
        """The keystore of the run whose genesis block hashes to ``genesis``."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[:64]
        return self.directory / "runs" / f"{safe}-{genesis[:16]}.json"

    def save_run(self, run_id: str, genesis: str, keys: dict[str, Ed25519PrivateKey],
                 height: int, head: str | None) -> None:
        """Write the run's keystore (households' private keys, the sealed head), mode 0600.
        The keys are encrypted once per run and reused as the head moves on."""
        sealed = self._sealed_keys.get((run_id, genesis))
        if sealed is None:
            plain = {a: k.private_bytes_raw().hex() for a, k in sorted(keys.items())}
            sealed = self._seal(json.dumps(plain).encode())
            self._sealed_keys[(run_id, genesis)] = sealed
        self._write_run(run_id, genesis, height, head)

    def _write_run(self, run_id: str, genesis: str, height: int, head: str | None,
                   final: str | None = None) -> None:
        body: dict[str, Any] = {"run_id": run_id, "genesis": genesis, "height": height,
                                "head": head, "keys": self._sealed_keys[(run_id, genesis)]}
        if (run_id, genesis) in self._sealed_eth:
            body["eth_keys"] = self._sealed_eth[(run_id, genesis)]
        if final is not None:
            body["final"] = final
        _write_private(self.run_path(run_id, genesis), json.dumps(body, indent=1).encode())

    def _cache(self, run_id: str, genesis: str) -> bool:
        """Take the sealed keys of an existing keystore into the cache; False if none."""
        if (run_id, genesis) in self._sealed_keys:
            return True
        path = self.run_path(run_id, genesis)
        if not path.exists():
            return False
        body = self._body(path)
        self._sealed_keys[(run_id, genesis)] = body["keys"]
        if "eth_keys" in body:
            self._sealed_eth[(run_id, genesis)] = body["eth_keys"]
        return True

    def save_eth_keys(self, run_id: str, genesis: str, keys: Mapping[str, str]) -> None:
        """Add the Ethereum accounts' private keys (account -> 0x-hex secp256k1 key, e.g.
        ``operator`` and each household) to the run's keystore, sealed as its other keys.
        The keystore must exist (the genesis block's commit writes it)."""
        if not self._cache(run_id, genesis):
            raise InputError(str(self.run_path(run_id, genesis)), "no keystore for this run "
                             "to add the Ethereum keys to")
        plain = json.dumps(dict(sorted(keys.items()))).encode()
        self._sealed_eth[(run_id, genesis)] = self._seal(plain)
        head = self.head(run_id, genesis) or (0, None)
        self._write_run(run_id, genesis, *head)

    def load_eth_keys(self, run_id: str, genesis: str) -> dict[str, str]:
        """The run's Ethereum keys (account -> 0x-hex), decrypted; {} if it kept none.
        Raises InputError for a missing or damaged keystore or a wrong passphrase."""
        path = self.run_path(run_id, genesis)
        if not path.exists():
            raise InputError(str(path), f"no keystore for run {run_id}: the Ethereum keys "
                             "are needed to resume it (is TESTBED_HOME the folder that ran "
                             "it?)")
        sealed = self._body(path).get("eth_keys")
        if sealed is None:
            return {}
        try:
            plain = json_input.loads(self._open(sealed, path))
            if not isinstance(plain, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) and re.fullmatch(
                        r"0x[0-9a-fA-F]{64}", v) for k, v in plain.items()):
                raise ValueError
        except (ValueError, TypeError):
            raise InputError(str(path), "damaged keystore: its Ethereum keys do not parse"
                             ) from None
        return {str(k): str(v) for k, v in plain.items()}

    def record_head(self, run_id: str, genesis: str, height: int, head: str) -> None:
        """Note that the run's chain now has ``height`` blocks ending in ``head``."""
        if not self._cache(run_id, genesis):
            return
        self._write_run(run_id, genesis, height, head)

    def record_final(self, run_id: str, genesis: str, digest: str) -> None:
        """Note the digest of the run's closing state (its row's status, finish time and
        summary, :func:`testbed.ledger.chain.final_digest`), written after its last block:
        ``ledger verify`` then detects an edit of those too. Nothing without a keystore."""
        path = self.run_path(run_id, genesis)
        if not self._cache(run_id, genesis):
            return
        body = self._body(path)
        height = body.get("height")
        self._write_run(run_id, genesis, height if isinstance(height, int) else 0,
                        body.get("head"), digest)

    def final(self, run_id: str, genesis: str) -> str | None:
        """The closing-state digest the operator recorded for this run, or None."""
        path = self.run_path(run_id, genesis)
        if not path.exists():
            return None
        value = self._body(path).get("final")
        return value if isinstance(value, str) else None

    def head(self, run_id: str, genesis: str) -> tuple[int, str | None] | None:
        """The head the operator recorded for this run, or None if it keeps no record."""
        path = self.run_path(run_id, genesis)
        if not path.exists():
            return None
        body = self._body(path)
        height = body.get("height")
        if not isinstance(height, int) or isinstance(height, bool):
            raise InputError(str(path), "key 'height' is not an integer")
        return height, body.get("head")

    def load_run(self, run_id: str, genesis: str) -> RunRecord:
        """The run's keystore: every household key, decrypted. Raises InputError."""
        path = self.run_path(run_id, genesis)
        if not path.exists():
            raise InputError(str(path), f"no keystore for run {run_id}: the households' keys "
                             "are needed to resume it (is TESTBED_HOME the folder that ran "
                             "it?)")
        body = self._body(path)
        opened = self._open(body.get("keys"), path)
        try:
            plain = json_input.loads(opened)
            keys = {str(a): Ed25519PrivateKey.from_private_bytes(bytes.fromhex(h))
                    for a, h in plain.items()}
        except (KeyError, ValueError, TypeError, AttributeError):
            raise InputError(str(path), "damaged keystore: its keys do not parse") from None
        self._sealed_keys[(run_id, genesis)] = body["keys"]
        if "eth_keys" in body:
            self._sealed_eth[(run_id, genesis)] = body["eth_keys"]
        height, head = body.get("height", 0), body.get("head")
        return RunRecord(keys, height if isinstance(height, int) else 0,
                         head if isinstance(head, str) else None)

    def _body(self, path: Path) -> dict[str, Any]:
        data = _read_private(path)
        try:
            body = json_input.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise InputError(str(path), "damaged keystore: not JSON") from None
        if not isinstance(body, dict):
            raise InputError(str(path), "damaged keystore: not a JSON object")
        return body

    def _seal(self, plain: bytes) -> Any:
        if self.passphrase is None:
            return {"plain": plain.decode()}
        salt, nonce = os.urandom(16), os.urandom(12)
        key = Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(self.passphrase)
        blob = AESGCM(key).encrypt(nonce, plain, None)
        return {"kdf": "scrypt", "n": 2**14, "salt": base64.b64encode(salt).decode(),
                "nonce": base64.b64encode(nonce).decode(),
                "ciphertext": base64.b64encode(blob).decode()}

    def _open(self, sealed: Any, path: Path) -> bytes:
        if not isinstance(sealed, dict):
            raise InputError(str(path), "damaged keystore: 'keys' is not an object")
        if "plain" in sealed:
            return str(sealed["plain"]).encode()
        if self.passphrase is None:
            raise InputError(str(path), f"the keystore is encrypted: set {PASSPHRASE_ENV}")
        try:
            if sealed.get("kdf") != "scrypt" or sealed.get("n") != 2**14:
                raise ValueError  # a cost chosen by the file could hang the machine
            salt = base64.b64decode(sealed["salt"])
            key = Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(
                self.passphrase)
            return AESGCM(key).decrypt(base64.b64decode(sealed["nonce"]),
                                       base64.b64decode(sealed["ciphertext"]), None)
        except InvalidTag:
            raise InputError(str(path), f"wrong passphrase in {PASSPHRASE_ENV}") from None
        except (KeyError, ValueError, TypeError):
            raise InputError(str(path), "damaged keystore: its encryption header does not "
                             "parse") from None


# -- signed status messages (``testbed run --mqtt`` -> ``testbed serve --mqtt``) -----------


def status_message(topic: str, payload: Mapping[str, Any]) -> bytes:
    """What the operator signs for a status message: its topic and its payload without the
    signature, as sorted compact JSON (so the topic, i.e. the run, cannot be swapped)."""
    body = {k: v for k, v in payload.items() if k != "signature"}
    return json.dumps({"topic": topic, "payload": body}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode()


def sign_status(key: Ed25519PrivateKey, topic: str, payload: Mapping[str, Any],
                ) -> dict[str, Any]:
    """``payload`` with the operator's ``signature`` (hex) over :func:`status_message`."""
    return {**payload, "signature": key.sign(status_message(topic, payload)).hex()}


def status_is_signed(anchor: str, topic: str, payload: Mapping[str, Any]) -> bool:
    """Whether ``payload`` on ``topic`` carries the operator's valid signature."""
    from contracts.ledger import verify_signature

    sig = payload.get("signature")
    return isinstance(sig, str) and len(sig) == 128 and verify_signature(
        anchor, sig, status_message(topic, payload))
