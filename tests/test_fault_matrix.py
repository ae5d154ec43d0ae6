"""The fault matrix of docs/operator-guide.md, measured: each fault kind on each device role
of household 1 (a two-household emulated rig, 0.25 s control period, real time), what the
controller did and what the bench ended in. The document's table must say what this finds.

Regenerate the table with ``python -m tests.test_fault_matrix``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.clock import RealClock
from drivers.emulators.bench import EmulatedBench
from drivers.emulators.modbus_device import EmulatedModbusDevice
from drivers.registry import build_bench
from testbed.config.rig import load_rig, rig_from_dict
from testbed.config.scenario import load_scenario
from testbed.run.controller import Controller
from testbed.run.runner import plans_for

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "operator-guide.md"
ROLES = ("pv", "load", "battery", "meter", "relay", "grid")
PERIOD_S = 0.25
INTERVAL_S = 2.0  # lab seconds: 8 control periods

Inject = Callable[[EmulatedBench, str], None]


def _fault(kind: str, **options: float) -> Inject:
    def inject(emu: EmulatedBench, device: str) -> None:
        emu.device(device).faults.inject(kind, **options)  # type: ignore[arg-type]
    return inject


def _busy(emu: EmulatedBench, device: str) -> None:
    dev = emu.device(device)
    assert isinstance(dev, EmulatedModbusDevice)
    dev.quirks.busy_every = 10


def _counter_back(emu: EmulatedBench, device: str) -> None:
    dev = emu.device(device)
    assert isinstance(dev, EmulatedModbusDevice)
    dev.quirks.counter_offset["import_wh"] = -1000.0


# fault -> (how to switch it on, the roles it applies to)
FAULTS: dict[str, tuple[Inject, tuple[str, ...]]] = {
    "no reply (lasting)": (_fault("no_reply"), ROLES),
    "instrument error (lasting)": (_fault("exception", code=4), ROLES),
    # SCPI: no shipped instrument file declares a busy code
    "busy every 10th request": (_busy, ("battery", "meter", "relay", "grid")),
    "counter goes backwards": (_counter_back, ("meter",)),
}


async def measure(fault: str, role: str) -> tuple[str, str]:
    """(what the controller did, what the bench ended in) for ``fault``, switched on three
    control periods into the interval, on household 1's ``role`` (``grid``: the grid node)."""
    inject, roles = FAULTS[fault]
    if role not in roles:
        return "n/a", "n/a"
    rig = load_rig("mock")
    rig = dataclasses.replace(rig, households=rig.households[:2])
    sc = load_scenario("scenario2")
    plans = [p for p in plans_for(sc) if p.household in ("1", "2")]
    async with EmulatedBench(rig) as emu:
        data = emu.rig_dict(time_scale=24 * 3600 / INTERVAL_S, control_period_s=PERIOD_S)
        for table in [data["grid"], *(t for h in data["households"] for t in h.values()
                                      if isinstance(t, dict))]:
            table["timeout_s"] = 0.2
        lab = rig_from_dict("emulated", data)
        device = "grid" if role == "grid" else f"household 1 {role}"
        controller = Controller(build_bench(lab, RealClock()), RealClock())
        action = "none"

        async def inject_mid_interval() -> None:
            await asyncio.sleep(3 * PERIOD_S)
            inject(emu, device)

        try:
            await controller.connect_rigs()
            task = asyncio.create_task(inject_mid_interval())
            try:
                done = await controller.run_interval(plans, start_hour=0.0, hours=24.0)
            except Exception:  # any failure ends the run: that is the finding
                action = "run stops"
            else:
                if "1" in done.disputed:
                    action = "rig off the bus, interval disputed"
                elif "1" in done.tripped:
                    action = "rig off the bus"
                elif controller.lost.get("1"):
                    action = "rig driven without its " + ", ".join(sorted(controller.lost["1"]))
                elif done.tripped:
                    action = f"rigs {sorted(done.tripped)} off the bus"
            finally:
                await task
        finally:
            failed = await controller.safe_state()
            await controller.close()
            rig1 = emu.plant.rigs["1"]
            on = [name for name, live in (("relay closed", rig1.relay_closed),
                                          ("pv on", rig1.pv.on), ("load on", rig1.load.on),
                                          ("battery on", rig1.battery.enabled)) if live]
        complete = "safe state complete" if not failed else \
            f"safe state incomplete ({len(failed)} unconfirmed)"
        return action, complete + ("; household 1 left " + ", ".join(on) if on else "")


def _rows() -> list[tuple[str, str, str, str]]:
    async def all_cells() -> list[tuple[str, str, str, str]]:
        out = []
        for fault in FAULTS:
            for role in ROLES:
                action, end = await measure(fault, role)
                out.append((fault, role, action, end))
        return out
    return asyncio.run(all_cells())


def table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| fault | role | controller | bench ends in |", "|---|---|---|---|"]
    lines += [f"| {f} | {r} | {a} | {e} |" for f, r, a, e in rows]
    return "\n".join(lines)


def documented() -> list[tuple[str, str, str, str]]:
    """The rows of the fault-matrix table in the operator guide."""
    text = GUIDE.read_text("utf-8")
    start = text.index("| fault | role | controller | bench ends in |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append((cells[0], cells[1], cells[2], cells[3]))
    return rows


@pytest.mark.serial
def test_the_fault_matrix_in_the_guide_is_what_the_bench_does() -> None:
    rows = documented()
    assert [(f, r) for f, r, _, _ in rows] == [(f, r) for f in FAULTS for r in ROLES]
    measured = _rows()
    mismatches = [(d, m) for d, m in zip(rows, measured, strict=True) if d != m]
    assert not mismatches, "\n".join(f"guide: {d}\nbench: {m}" for d, m in mismatches)


def test_the_guide_has_the_fault_matrix() -> None:
    rows = documented()
    assert len(rows) == len(FAULTS) * len(ROLES)
    assert all(re.fullmatch(r"[\w ,()/\[\]';0-9-]+", cell) for row in rows for cell in row)


if __name__ == "__main__":
    print(table(_rows()))
