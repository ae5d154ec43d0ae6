"""A private mosquitto broker per test, and the real mosquitto clients to watch it.

Each broker gets a free loopback port and its own config (``listener PORT 127.0.0.1``,
``allow_anonymous true``, or TLS + a password file), so tests never touch a system broker
and can run in parallel. The clients are Debian's ``mosquitto_sub`` / ``mosquitto_pub``:
what an operator would use, not our own code checking itself.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOST = "127.0.0.1"


def mosquitto_available() -> bool:
    return all(shutil.which(t) for t in ("mosquitto", "mosquitto_sub", "mosquitto_pub"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{HOST}:{self.port}"


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"mosquitto did not listen on {port} in {timeout} s")


@contextmanager
def broker(workdir: Path, extra: list[str] | None = None, tls: bool = False) -> Iterator[Broker]:
    """Start mosquitto on a free port; stop it (and only it) afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    lines = [f"listener {port} {HOST}", *(extra or ["allow_anonymous true"])]
    if os.geteuid() == 0:
        # As root mosquitto drops to its own user, which cannot read pytest's 0700 tmp dirs.
        lines.append("user root")
    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    log = (workdir / "mosquitto.log").open("wb")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=log)
    try:
        _wait_listening(port, proc)
        yield Broker(port, workdir, proc, tls)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(workdir: Path) -> TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1, valid for a day."""
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("testbed test CA"))
          .issuer_name(name("testbed test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name(HOST)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(workdir / "ca.pem", workdir / "server.pem", workdir / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


@dataclass
class Subscriber:
    """``mosquitto_sub`` in the background; lines are ``retain topic payload``."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    thread: threading.Thread | None = None

    def messages(self) -> list[tuple[bool, str, str]]:
        out = []
        for line in list(self.lines):
            retain, topic, payload = line.split(" ", 2)
            out.append((retain == "1", topic, payload))
        return out

    def wait_for(self, predicate: object, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(m) for m in self.messages()):  # type: ignore[operator]
                return True
            time.sleep(0.05)
        return False


@contextmanager
def subscribe(port: int, topic: str, probe: str | None = None,
              extra: tuple[str, ...] = ()) -> Iterator[Subscriber]:
    """Run ``mosquitto_sub -t TOPIC`` (``extra``: TLS and credential options); with ``probe``
    (a topic the filter matches), return only once the subscription is live, proven by a
    probe message coming back."""
    proc = subprocess.Popen(
        ["mosquitto_sub", "-h", HOST, "-p", str(port), "-t", topic, "-q", "1",
         "-F", "%r %t %p", *extra], stdout=subprocess.PIPE, text=True)
    sub = Subscriber(proc)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sub.lines.append(line.rstrip("\n"))

    sub.thread = threading.Thread(target=pump, daemon=True)
    sub.thread.start()
    try:
        if probe is not None:
            deadline = time.monotonic() + 10
            while not any(t == probe for _, t, _ in sub.messages()):
                assert time.monotonic() < deadline, "mosquitto_sub never subscribed"
                publish(port, probe, "probe", *extra)
                time.sleep(0.05)
        yield sub
    finally:
        proc.terminate()
        proc.wait(5)
        sub.thread.join(5)


def publish(port: int, topic: str, message: str, *extra: str) -> None:
    subprocess.run(["mosquitto_pub", "-h", HOST, "-p", str(port), "-t", topic, "-m", message,
                    *extra], check=True, timeout=10)


def retained(port: int, topic: str, *extra: str) -> tuple[bool, str] | None:
    """The retained message on ``topic`` as a fresh subscriber sees it, or None."""
    r = subprocess.run(["mosquitto_sub", "-h", HOST, "-p", str(port), "-t", topic, "-C", "1",
                        "-W", "2", "-F", "%r %p", *extra], capture_output=True, text=True,
                       timeout=10)
    line = r.stdout.strip()
    if not line:
        return None
    flag, payload = line.split(" ", 1)
    return flag == "1", payload
