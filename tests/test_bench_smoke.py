"""Each benchmark command runs at a tiny size and prints one JSON object with its documented
keys (docs/performance.md). No timing is asserted here: the figures are the benchmarks'."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Tiny runs, all started at once (they wait on emulators and subprocesses, not only CPU).
COMMANDS: dict[str, list[str]] = {
    "clearing": ["--orders", "100,300", "--pymarket-max", "100", "--profile", "200"],
    "drivers": ["--calls", "3", "--rounds", "1", "--baud", "0,115200", "--registers", "2",
                "--rtu-calls", "2"],
    "cycle": ["--households", "2", "--cycles", "4", "--repeats", "1", "--turnaround-ms", "1"],
    "community": ["--households", "4", "--settlement-minutes", "0", "--no-profile"],
    "ledger": ["--households", "4", "--blocks", "2", "--profile"],
    "startup": ["--repeat", "1"],
    "evm_gas": ["--orders", "2,3"],
}

KEYS: dict[str, set[str]] = {
    "clearing": {"orders_per_side", "testbed_s", "testbed_columnar_s", "pymarket_huang_s",
                 "huang_over_testbed", "rows", "growth", "profile"},
    "drivers": {"modbus_tcp_overhead", "modbus_tcp_device_overhead", "scpi_query_s",
                "rtu_wire_efficiency", "modbus_tcp", "scpi", "modbus_rtu"},
    "cycle": {"cycle_s", "slowest_single_s", "cycle_over_slowest", "cycle_over_serial",
              "phase_s", "single_s", "controller"},
    "community": {"households", "day_s", "rows", "target"},
    "ledger": {"orders_verified_per_s", "verify_per_block_s", "signatures", "chain", "target"},
    "startup": {"best_s", "best_cpu_s", "help_over_floor", "run_over_floor",
                "cpu_help_over_floor", "cpu_run_over_floor", "targets"},
    "evm_gas": {"rows", "block", "block_source", "node_rows"},
}


def _run_all() -> dict[str, tuple[int, str, str]]:
    """Every command at once; (exit code, stdout, stderr) by bench name."""
    procs = {name: subprocess.Popen([sys.executable, "-m", f"bench.{name}", *args, "--json"],
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
             for name, args in COMMANDS.items()}
    out = {}
    for name, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        out[name] = (proc.returncode, stdout, stderr)
    return out


def _result(outputs: dict[str, tuple[int, str, str]], name: str) -> dict[str, Any]:
    code, stdout, stderr = outputs[name]
    assert code == 0, f"bench.{name} failed:\n{stderr[-3000:]}"
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, f"bench.{name} printed {len(lines)} lines, not one JSON object"
    result = json.loads(lines[0])
    assert isinstance(result, dict), f"bench.{name}: not a JSON object"
    assert KEYS[name] <= set(result), f"bench.{name}: missing {KEYS[name] - set(result)}"
    assert result["machine"]["cpus"] >= 1
    return result


def test_every_bench_prints_its_documented_json() -> None:
    """One test, so that the commands run once (concurrently), not once per xdist worker."""
    outputs = _run_all()
    results = {name: _result(outputs, name) for name in COMMANDS}

    clearing = results["clearing"]
    first, second = clearing["rows"]
    assert first["orders_per_side"] == 100 and second["pymarket_huang_s"] is None
    assert first["testbed_s"] > 0 and first["testbed_fills"] > 0
    assert first["testbed_columnar_s"] > 0 and first["columnar_same_result"] is True
    if importlib.util.find_spec("pymarket") is None:  # a benchmark-only install
        assert clearing["pymarket_huang_s"] is None and "not installed" in clearing["pymarket"]
    else:
        assert first["pymarket_huang_s"] > 0
        assert first["huang_volume_kwh"] > 0  # pymarket's Huang mechanism ran and traded
        assert math.isclose(clearing["huang_over_testbed"],
                            first["pymarket_huang_s"] / first["testbed_s"])

    drivers = results["drivers"]
    assert set(drivers["rtu_wire_efficiency"]) == {"115200"}
    paced = drivers["modbus_rtu"][1]["reads"][0]
    assert paced["wire_s"] > 0 and paced["seconds_per_read"]["link"] > 0

    cycle = results["cycle"]
    assert cycle["instruments"] == 10 and cycle["controller"]["tripped"] == {}
    assert cycle["cycle_over_slowest"] == pytest.approx(
        cycle["cycle_s"] / cycle["slowest_single_s"])

    ledger = results["ledger"]
    assert ledger["chain"]["blocks"] == 3  # genesis and two intervals
    assert ledger["signatures"]["orders"] == 8

    assert results["community"]["rows"][0]["households"] == 4

    startup = results["startup"]
    assert startup["best_s"]["run"] > startup["best_s"]["floor"] > 0
    assert startup["run_over_floor"] == pytest.approx(
        startup["best_s"]["run"] / startup["best_s"]["floor"], rel=0.01)
