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
"$VENV/bin/python" - <<'PY'
import re
from importlib import metadata

locked = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)", open("requirements-test.lock").read(),
                         re.M))
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = {norm(k): v for k, v in locked.items()}
installed = {norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
drift = [(n, locked[n], installed.get(n, "absent")) for n in sorted(locked)
         if installed.get(n) != locked[n]]
new = sorted(set(installed) - set(locked) - {"pip", "setuptools", "testbed"})
for name, old, now in drift:
    print(f"  {name}: {old} -> {now}")
for name in new:
    print(f"  {name}: not locked -> {installed[name]}")
print(f"  {len(drift)} drifted, {len(new)} new" if drift or new else "  none")
PY
echo "== the suite on the newest releases"
bash scripts/run-suite.sh "$VENV" "$@"
