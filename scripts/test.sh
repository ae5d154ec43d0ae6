#!/usr/bin/env bash
# Set up and pass every test, on a fresh machine or a used one.
#   bash scripts/test.sh [extra pytest args]
# 1. Installs the system tools the tests talk to (socat, mbpoll, mosquitto and its clients,
#    Debian's chromium for the dashboard test) when missing, and ganache from
#    tests/evm-node/package-lock.json (npm ci) for the EVM tests' JSON-RPC node.
# 2. Makes a virtual environment .venv (kept between runs) and installs exactly the versions
#    in requirements-test.lock (hash-checked), then the project itself without dependencies.
# 3. Runs the linters, then the suite: in parallel on 2 cores, except the tests marked
#    `serial` (they need wall time), which run after, one at a time.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
# command:Debian package (the browser test drives Debian's chromium, not a downloaded one)
for pair in socat:socat mbpoll:mbpoll mosquitto:mosquitto mosquitto_sub:mosquitto-clients \
            chromium:chromium; do
  tool="${pair%%:*}"
  [ -x "/usr/sbin/$tool" ] || command -v "$tool" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  echo "installing system tools: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The Ethereum JSON-RPC node of the EVM tests: ganache, exactly as tests/evm-node's lock says
# (npm ci; nothing is fetched while the tests run). The README's commands need no node.
command -v npm >/dev/null 2>&1 || { echo "scripts/test.sh: the EVM tests need node and npm"; exit 1; }
[ -f tests/evm-node/node_modules/ganache/dist/node/cli.js ] ||
  npm ci --prefix tests/evm-node --no-audit --no-fund --ignore-scripts --loglevel=error

VENV="${TESTBED_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check --require-hashes -r requirements-test.lock
"$PY" -m pip install -q --disable-pip-version-check --no-deps -e .
"$PY" -m pip check
export PATH="$PWD/$VENV/bin:$PATH"   # tests start `testbed` as a subprocess

"$PY" -m ruff check .
"$PY" -m mypy
"$PY" -m pytest -n 2 -q -p no:cacheprovider -m "not serial" "$@"
"$PY" -m pytest -q -p no:cacheprovider -m serial "$@" || [ $? -eq 5 ]  # 5: no serial test here
