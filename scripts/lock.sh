#!/usr/bin/env bash
# Refresh the lock files from pyproject.toml's ranges: the one documented way to change a
# dependency's version. Resolves for Python 3.11 on every platform (uv's universal mode) and
# records every file's hash, so `pip install --require-hashes -r LOCK` installs exactly these.
#   bash scripts/lock.sh            # re-resolve, keeping the locked versions where they still fit
#   bash scripts/lock.sh --upgrade  # move every package to its newest release within the ranges
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "uv>=0.13,<0.14"
common=(--universal --python-version 3.11 --generate-hashes --quiet "$@")
# runtime + tests first; the runtime lock is then constrained to the same versions
python3 -m uv pip compile pyproject.toml --extra test "${common[@]}" -o requirements-test.lock
python3 -m uv pip compile pyproject.toml -c requirements-test.lock "${common[@]}" -o requirements.lock
echo "requirements.lock: $(grep -c '^[a-z]' requirements.lock) packages;" \
     "requirements-test.lock: $(grep -c '^[a-z]' requirements-test.lock) packages"
