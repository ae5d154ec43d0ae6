#!/usr/bin/env python3
"""Check that an environment holds exactly the versions a lock file pins.

    python scripts/check-lock.py requirements-test.lock
    python scripts/check-lock.py --drift requirements-test.lock   # report only, exit 0

Run with the environment's own interpreter. Only the lines whose environment markers hold
here count (a universal lock pins some packages per Python version or platform). Exit 1,
listing each difference, when a locked package is missing or at another version (packages
the lock does not name are ignored: pip, setuptools and the project itself).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(lock: str, *, drift: bool = False) -> int:
    pins: dict[str, str] = {}
    for line in re.findall(r"^[A-Za-z0-9_.-]+==[^\\\n]+", Path(lock).read_text(), re.M):
        req = Requirement(line.strip())
        if req.marker is None or req.marker.evaluate():
            pins[_norm(req.name)] = str(req.specifier).removeprefix("==")
    installed = {_norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
    if drift:  # what the newest releases changed (scripts/test-latest.sh)
        changed = [f"  {n}: {v} -> {installed.get(n, 'absent')}"
                   for n, v in sorted(pins.items()) if installed.get(n) != v]
        new = [f"  {n}: not locked -> {installed[n]}" for n in sorted(installed)
               if n not in pins and n not in ("pip", "setuptools", "testbed")]
        print("\n".join([*changed, *new]) or "  none")
        print(f"  {len(changed)} drifted, {len(new)} new")
        return 0
    wrong = [f"{n}: locked {v}, installed {installed.get(n, 'nothing')}"
             for n, v in sorted(pins.items()) if installed.get(n) != v]
    for line in wrong:
        print(f"lock mismatch: {line}", file=sys.stderr)
    if not wrong:
        print(f"{lock}: all {len(pins)} packages at their locked versions")
    return 1 if wrong else 0


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--drift"]
    sys.exit(main(args[0] if args else "requirements-test.lock", drift="--drift" in sys.argv))
