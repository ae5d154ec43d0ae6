#!/usr/bin/env bash
# The same suite against the newest releases that pyproject.toml's ranges allow, not the
# lock: run it before refreshing the lock (scripts/lock.sh) to see what would drift and
# whether the suite still passes. Not part of CI.
#   bash scripts/test-latest.sh [extra pytest args]
# Prints every package whose newest version differs from requirements-test.lock, then runs
# the suite in .venv-latest; the exit status is the suite's.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-latest
python3 -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade -e ".[test]" \
  --config-settings editable_mode=compat
echo "== drift from requirements-test.lock (locked -> newest)"
"$VENV/bin/python" scripts/check-lock.py --drift requirements-test.lock
echo "== the suite on the newest releases"
bash scripts/run-suite.sh "$VENV" "$@"
