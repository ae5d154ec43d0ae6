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

``--phases N`` also breaks the mock run down, in CPU seconds (best of N fresh processes,
each running ``testbed run scenario2`` in-process with a timer around each phase; the
timers add about a microsecond per call): the floor's imports, testbed's own, typer
building the command tree, and within the run the control loop, sealing the readings,
writing them, the block seal, pre-flight, the figures and their rendering.

``--instructions`` also counts the instructions each of the three executes once, under
valgrind's cachegrind (no cache simulation; Debian's ``valgrind``): a figure that does not
depend on what else the machine is doing, for comparing two trees on a shared machine (a
run takes about a minute under it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
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


# Phases of the mock run, timed in-process (``--phases``): name -> (module, attribute path).
PHASES = {
    "control_loop": ("testbed.run.controller", "Controller.run_interval"),
    "seal_readings": ("testbed.ledger.chain", "Ledger.record"),
    "seal_block": ("testbed.ledger.chain", "Ledger.seal"),
    "readings_to_disk": ("testbed.ledger.store", "Store.append_readings"),
    "runlog_observer": ("testbed.run.lifecycle", "RunLog.__call__"),
    "preflight": ("testbed.run.preflight", "ensure_fits"),
    "figures": ("testbed.report.terminal", "summarise"),
    "render": ("testbed.report.terminal", "render"),
}


def _phase_child(db: str) -> None:
    """One fresh process: the run in-process, CPU seconds per phase printed as JSON."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]  # bench/drivers.py
    import functools
    import importlib
    import inspect

    clock = time.process_time
    t0 = clock()
    import rich.console  # noqa: F401
    import typer
    t1 = clock()
    from testbed.cli import app as cli
    from testbed.report import terminal  # noqa: F401  (what `testbed run` imports lazily)
    from testbed.run import runner  # noqa: F401
    t2 = clock()
    import typer.main

    typer.main.get_command(cli.app)
    t3 = clock()
    spent = dict.fromkeys(PHASES, 0.0)
    for name, (module, path) in PHASES.items():
        owner: Any = importlib.import_module(module)
        *parents, attr = path.split(".")
        for part in parents:
            owner = getattr(owner, part)
        fn = getattr(owner, attr)

        def timed(fn: Any = fn, name: str = name) -> Any:
            if inspect.iscoroutinefunction(fn):
                @functools.wraps(fn)
                async def wrapper(*a: Any, **k: Any) -> Any:
                    start = clock()
                    try:
                        return await fn(*a, **k)
                    finally:
                        spent[name] += clock() - start
                return wrapper

            @functools.wraps(fn)
            def plain(*a: Any, **k: Any) -> Any:
                start = clock()
                try:
                    return fn(*a, **k)
                finally:
                    spent[name] += clock() - start
            return plain
        setattr(owner, attr, timed())
    sys.argv = ["testbed", "run", "scenario2", "--db", db]
    t4 = clock()
    try:
        cli.main()
    except SystemExit as stop:
        if stop.code:
            raise
    t5 = clock()
    print(json.dumps({"floor_imports": t1 - t0, "testbed_imports": t2 - t1,
                      "command_tree": t3 - t2, "run_command": t5 - t4, **spent}),
          file=sys.__stderr__)


def phases(repeat: int, tree: Path | None = None) -> dict[str, float]:
    """Best CPU seconds of each phase over ``repeat`` fresh processes (``_phase_child``,
    this file run as a script), of this checkout or of ``tree``'s."""
    best: dict[str, float] = {}
    root = (tree or Path(__file__).parents[1]).resolve()
    env = {**ENV, "PYTHONPATH": str(root)}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            out = subprocess.run([sys.executable, str(Path(__file__).resolve()),
                                  "--phase-child", f"phases{i}.db"], cwd=tmp, check=True, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            got = json.loads(out.stderr.strip().splitlines()[-1])
            best = {k: min(v, best.get(k, v)) for k, v in got.items()}
    return {k: round(v, 4) for k, v in best.items()}


def instructions(tree: Path | None = None) -> dict[str, Any]:
    """Instructions executed by one run of each command (cachegrind's ``I refs``), after a
    warm-up run, and the ratios to the floor's; ``{"error": ...}`` without valgrind."""
    if shutil.which("valgrind") is None:
        return {"error": "valgrind is not installed (Debian package valgrind)"}
    if tree is not None:
        ENV["PYTHONPATH"] = str(tree.resolve())
    testbed = _entry_point(tree)
    commands = {"floor": [sys.executable, "-c", "import typer, rich.console"],
                "help": [*testbed, "--help"],
                "run": [*testbed, "run", "scenario2", "--db", "counted.db"]}
    grind = ["valgrind", "--tool=cachegrind", "--cache-sim=no",
             "--cachegrind-out-file=/dev/null"]
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        _time([*testbed, "run", "scenario2", "--db", "warm.db"], tmp)  # bytecode written
        for name, cmd in commands.items():
            out = subprocess.run([*grind, *cmd], cwd=tmp, env=ENV, check=True, text=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).stderr
            found = re.search(r"I\s+refs:\s+([\d,]+)", out)
            if found is None:
                return {"error": f"no instruction count from valgrind: {out[-300:]}"}
            counts[name] = int(found.group(1).replace(",", ""))
    return {"count": counts,
            "help_over_floor": round(counts["help"] / counts["floor"], 2),
            "run_over_floor": round(counts["run"] / counts["floor"], 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--tree", type=Path, default=None,
                        help="measure the testbed of this checkout instead (a baseline)")
    parser.add_argument("--phases", type=int, default=0,
                        help="also break the mock run down by phase, best of N processes")
    parser.add_argument("--instructions", action="store_true",
                        help="also count each command's instructions (valgrind)")
    parser.add_argument("--phase-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.phase_child is not None:
        _phase_child(args.phase_child)
        return
    result = measure(max(1, args.repeat), args.tree)
    if args.phases > 0:
        result["phases_cpu_s"] = phases(args.phases, args.tree)
    if args.instructions:
        result["instructions"] = instructions(args.tree)
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
