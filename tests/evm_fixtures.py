"""An Ethereum JSON-RPC node for the tests: ganache from tests/evm-node (npm ci in
scripts/test.sh), started on a free loopback port and stopped after the session."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent / "evm-node"
GANACHE = NODE_DIR / "node_modules" / "ganache" / "dist" / "node" / "cli.js"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    req = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return "result" in json.loads(resp.read())
    except OSError:
        return False


@pytest.fixture(scope="session")
def evm_node() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a fresh ganache (chain id 1337, funded accounts)."""
    node = shutil.which("node")
    if node is None or not GANACHE.is_file():
        pytest.fail(f"no ganache at {GANACHE}: run `npm ci --prefix {NODE_DIR}` "
                    "(scripts/test.sh does)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [node, str(GANACHE), "--server.host", "127.0.0.1", "--server.port", str(port),
         "--logging.quiet", "--wallet.defaultBalance", "100000", "--miner.instamine", "eager"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120  # generous: a loaded 2-core machine
        while not _answers(url):
            if proc.poll() is not None:
                pytest.fail(f"ganache exited: {proc.stderr.read().decode()[-500:]}")
            if time.monotonic() > deadline:
                pytest.fail("ganache did not answer within 120 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
