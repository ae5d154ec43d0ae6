"""Start-up cost of the command line, as ratios to the floor of any typer + rich program.

    python -m bench.startup [--repeat N] [--json]

Times whole processes, best of ``--repeat`` runs each (the least disturbed by other load),
interleaved so that a burst of load on the machine hits all three alike, after one warm-up
run that leaves the bytecode cached:

* ``floor``: ``python -c "import typer, rich.console"``, what any typer + rich CLI pays;
* ``help``: ``testbed --help``;
* ``run``: ``testbed run scenario2 --db X`` on the built-in mock rig, a fresh database each
  time (the README's main job, under the virtual clock).

Targets (issue 11): ``help`` at most 2x the floor, ``run`` at most 8x.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _entry_point(tree: Path | None) -> list[str]:
    if tree is not None:  # another checkout of the project, e.g. an earlier commit
        return [sys.executable, "-m", "testbed.cli"]
    script = Path(sys.executable).parent / "testbed"
    return [str(script)] if script.exists() else [sys.executable, "-m", "testbed.cli"]


# Bytecode is cached as after `pip install .` (pip compiles it): a machine that sets
# PYTHONDONTWRITEBYTECODE would otherwise recompile the project's sources on every start.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _time(cmd: list[str], cwd: str) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=ENV)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(repeat: int, tree: Path | None = None) -> dict[str, Any]:
    """Best and median wall seconds, best CPU seconds, and the ratios to the floor; ``tree``
    measures the ``testbed`` of another checkout (``python -m testbed.cli`` from there)."""
    if tree is not None:
        ENV["PYTHONPATH"] = str(tree.resolve())
    testbed = _entry_point(tree)
    commands = {"floor": lambda i: [sys.executable, "-c", "import typer, rich.console"],
                "help": lambda i: [*testbed, "--help"],
                "run": lambda i: [*testbed, "run", "scenario2", "--db", f"run{i}.db"]}
    wall: dict[str, list[float]] = {k: [] for k in commands}
    cpu: dict[str, list[float]] = {k: [] for k in commands}
    with tempfile.TemporaryDirectory() as tmp:
        _time(commands["run"](-1), tmp)  # warm-up: writes the bytecode
        for i in range(repeat):
            for name, command in commands.items():
                w, c = _time(command(i), tmp)
                wall[name].append(w)
                cpu[name].append(c)
    best = {k: min(v) for k, v in wall.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    return {
        "command": " ".join(testbed),
        "tree": None if tree is None else str(tree),
        "repeat": repeat,
        "best_s": {k: round(v, 4) for k, v in best.items()},
        "median_s": {k: round(statistics.median(v), 4) for k, v in wall.items()},
        "best_cpu_s": {k: round(v, 4) for k, v in best_cpu.items()},
        "help_over_floor": round(best["help"] / best["floor"], 2),
        "run_over_floor": round(best["run"] / best["floor"], 2),
        "cpu_help_over_floor": round(best_cpu["help"] / best_cpu["floor"], 2),
        "cpu_run_over_floor": round(best_cpu["run"] / best_cpu["floor"], 2),
        "targets": {"help_over_floor": 2.0, "run_over_floor": 8.0},
        "machine": {"cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
                    "python": sys.version.split()[0]},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--tree", type=Path, default=None,
                        help="measure the testbed of this checkout instead (a baseline)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure(max(1, args.repeat), args.tree)
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
