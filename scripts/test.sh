#!/usr/bin/env bash
# Set up and pass every test, on a fresh machine or a used one.
#   bash scripts/test.sh [extra pytest args]
# Installs the system tools the tests talk to (socat, mbpoll, mosquitto and its clients,
# Debian's chromium for the dashboard test) when missing, the package with its test extras,
# then runs the linters and the whole suite on 2 cores.
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

python3 -m pip install -q --disable-pip-version-check -e ".[test]"
python3 -m ruff check .
python3 -m mypy
python3 -m pytest -n 2 -q -p no:cacheprovider "$@"
