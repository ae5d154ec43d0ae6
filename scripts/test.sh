#!/usr/bin/env bash
# Set up and pass every test, on a fresh machine or a used one.
#   bash scripts/test.sh [extra pytest args]
# 1. Installs the system tools the tests talk to (socat, mbpoll, mosquitto and its clients,
#    Debian's chromium for the dashboard test) when missing, ganache from
#    tests/evm-node/package-lock.json (npm ci) for the EVM tests' JSON-RPC node, and Node-RED
#    from tests/node-red/package-lock.json for the test that runs docs/telemetry.md's flow.
# 2. Makes a virtual environment .venv with exactly the versions in requirements-test.lock
#    (hash-checked; made anew when the lock changes), then installs the project itself
#    without dependencies.
# 3. Runs the linters, then the suite (scripts/run-suite.sh): in parallel (3 workers), except
#    the tests marked `serial` (they need wall time), which run after, four at a time, and the
#    fault matrix (`alone`), last, by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
# command:Debian package (the browser test drives Debian's chromium, not a downloaded one)
for pair in socat:socat mbpoll:mbpoll mosquitto:mosquitto mosquitto_sub:mosquitto-clients \
            chromium:chromium node:nodejs npm:npm; do
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
[ -f tests/evm-node/node_modules/ganache/dist/node/cli.js ] ||
  npm ci --prefix tests/evm-node --no-audit --no-fund --ignore-scripts --loglevel=error
# Node-RED 4.1.15 (the newest for Node.js 20), as tests/node-red's lock says: no install
# scripts either. Cold, 13.6 s beside ganache's 6.1 s; both at once took as long (21 s, load
# average 8), so one after the other.
[ -f tests/node-red/node_modules/node-red/red.js ] ||
  npm ci --prefix tests/node-red --no-audit --no-fund --ignore-scripts --loglevel=error

VENV="${TESTBED_VENV:-.venv}"
PY="$VENV/bin/python"
# The environment holds exactly the lock: made anew whenever the lock changed since.
want="$(sha256sum requirements-test.lock | cut -d' ' -f1)"
if [ ! -x "$PY" ] || [ "$(cat "$VENV/.lock-sha256" 2>/dev/null)" != "$want" ]; then
  echo "installing requirements-test.lock into $VENV"
  python3 -m venv --clear "$VENV"
  # --no-compile: a module is compiled when first imported (a fifth of the install's time
  # went to compiling every module of every package, most of which no test imports)
  "$PY" -m pip install -q --disable-pip-version-check --no-compile --require-hashes \
    -r requirements-test.lock
  echo "$want" > "$VENV/.lock-sha256"
fi
"$PY" -m pip install -q --disable-pip-version-check --no-deps -e . \
  --config-settings editable_mode=compat   # a path entry: no import hook on every start
"$PY" -m pip check
"$PY" scripts/check-lock.py requirements-test.lock
bash scripts/run-suite.sh "$VENV" "$@"
