"""Count what one ``testbed run scenario2 --mqtt`` puts on the stable per-device topics.

Usage: .venv/bin/python scripts/measure-telemetry.py  (needs mosquitto and its clients).
Starts a private mosquitto (tests/fixtures_mqtt.py), runs the real CLI once, and prints
the wall time, the run-scoped readings and the messages per stable topic (docs/telemetry.md).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures_mqtt import broker, subscribe  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, broker(Path(tmp) / "b") as b, \
            subscribe(b.port, "testbed/#", probe="testbed/_probe") as sub:
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "testbed.cli", "run", "scenario2", "--mqtt",
                        b.url, "--db", str(Path(tmp) / "r.db"), "--json"], cwd=ROOT,
                       check=True, capture_output=True)
        wall = time.monotonic() - t0
        sub.wait_for(lambda m: m[1] == "testbed/mock/run" and "finished" in m[2])
        msgs = sub.messages()
    stable = Counter(t for _, t, _ in msgs if t.count("/") == 4)
    readings = sum(1 for _, t, _ in msgs if "/readings/" in t)
    print(f"wall {wall:.1f} s; run-scoped readings {readings}; stable topics {len(stable)}, "
          f"messages {sum(stable.values())} (per topic {min(stable.values())}-"
          f"{max(stable.values())}, {sum(stable.values()) / wall:.0f}/s)")


if __name__ == "__main__":
    main()
