#!/usr/bin/env python3
"""Break each rule that guards money or the bench, once, and check that its test catches it.

Each entry names the rule, the file, the exact text that implements it, the broken text, and
the ``pytest -k`` selector of its tests in ``tests/test_rules.py``. Every file is restored
afterwards, whatever happens. Run from the repository root, in the project's environment:

    .venv/bin/python scripts/check-rule-tests.py

Exit status 1 when a break goes unnoticed by the tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import NamedTuple


class Break(NamedTuple):
    rule: str
    path: str
    rule_text: str
    broken_text: str
    tests: str


BREAKS = [
    Break("guard withholds the write", "drivers/limits.py",
          "        if not self._floor_w <= watts <= self._clear_w:\n"
          "            check_power(self.spec, watts, bidirectional=self._bidirectional,\n"
          "                        voltage_v=self._voltage_v)\n"
          "        await self._inner.set_power(watts)",
          "        await self._inner.set_power(watts)\n"
          "        if not self._floor_w <= watts <= self._clear_w:\n"
          "            check_power(self.spec, watts, bidirectional=self._bidirectional,\n"
          "                        voltage_v=self._voltage_v)",
          "test_limit_guard_withholds"),
    Break("max current both directions", "drivers/limits.py",
          "amps = abs(watts) / voltage_v", "amps = watts / voltage_v", "test_max_current"),
    Break("trip opens the relay", "testbed/run/controller.py",
          "for d in (h.relay, h.pv, h.load, h.battery)),",
          "for d in (h.pv, h.pv, h.load, h.battery)),", "relay_open_read_back"),
    Break("trip reads the relay back", "testbed/run/controller.py",
          "relay_open = not await h.relay.read_closed()", "relay_open = True", "stays_closed"),
    Break("untaken energy is not feed-in", "contracts/settlement.py",
          "max(deviation - bought[h], Fraction(0))", "max(deviation, Fraction(0))", "feed_in"),
    Break("money rounds half-even", "contracts/numbers.py",
          "    return round(x)\n",
          "    import math\n    return math.floor(x + Fraction(1, 2))\n", "half"),
    Break("an interval rolls back whole", "testbed/ledger/store.py",
          "            with self._atomic():\n                yield", "            yield",
          "fails_half_way"),
    Break("genesis names the operator", "contracts/ledger.py",
          "if h == 0 and draft.operator != operator_public:", "if False:", "genesis"),
]


def main() -> int:
    missed = 0
    for b in BREAKS:
        path = Path(b.path)
        source = path.read_text()
        if source.count(b.rule_text) != 1:
            print(f"{b.rule}: the rule's text is no longer in {b.path}: update this script")
            return 2
        path.write_text(source.replace(b.rule_text, b.broken_text))
        try:
            run = subprocess.run(
                [sys.executable, "-m", "pytest", "tests/test_rules.py", "-q",
                 "-p", "no:cacheprovider", "-k", b.tests], capture_output=True, text=True)
        finally:
            path.write_text(source)
        caught = run.returncode != 0
        missed += not caught
        summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "?"
        print(f"{b.rule:32s} {'caught' if caught else 'NOT CAUGHT'}: {summary}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
