"""One faulty instrument does not take the bench down (issue 15): household 7's PV supply,
load or battery silent or late from 12 s (to 28 s) into a 30 s scenario-2 day (``--speed 2880``, 1 s
control period) on the emulated ten-household rig. The other nine rigs stay within
tolerance, self-sufficiency stays within 10 points of the fault-free run, household 7 is
the one named, the bench ends safe (read back over the wire), money is conserved and the
ledger verifies.

Measure every case with ``python -m tests.test_isolation`` (30 s each, wall time).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from drivers.clock import RealClock
from drivers.emulators.bench import EmulatedBench
from testbed.config.rig import load_rig, rig_from_dict
from testbed.config.scenario import load_scenario
from testbed.ledger.chain import verify_run
from testbed.ledger.store import Store
from testbed.report.terminal import summarise
from testbed.run.runner import run_scenario

SPEED = 2880.0  # a day in 30 s
FAULT_AT_S = 12.0
CLEAR_AT_S = 28.0


async def day(tmp: Path, role: str | None, kind: str | None, **options: float,
              ) -> dict[str, Any]:
    """Scenario 2 on the emulated mock rig, ``kind`` injected on household 7's ``role`` at
    12 s (none when ``role`` is None): the run's summary plus what the plant ended in."""
    async with EmulatedBench(load_rig("mock")) as emu:
        lab = rig_from_dict("emulated", emu.rig_dict(time_scale=SPEED, control_period_s=1.0))

        async def inject() -> None:
            await asyncio.sleep(FAULT_AT_S)
            if role is not None and kind is not None:
                faults = emu.device(f"household 7 {role}").faults
                faults.inject(kind, **options)
                # cleared 2 s before the day's end, so that the final safe state can be
                # read back (a device silent to the end fails the run: test_supervision)
                await asyncio.sleep(CLEAR_AT_S - FAULT_AT_S)
                faults.clear()

        store = Store(tmp / f"{role}-{kind}.db")
        task = asyncio.create_task(inject())
        try:
            out = await run_scenario(load_scenario("scenario2"), lab, store, clock=RealClock())
        finally:
            task.cancel()
        summary = summarise(out)
        summary["verify"] = verify_run(store, out.run_id)
        summary["conserved"] = sum(out.balances.values()) == sum(out.opening.values())
        summary["named"] = sorted({e.get("device") or f"household {e.get('household')}"
                                   for e in store.safety_events(out.run_id)
                                   if e["event"] in ("device_lost", "rig_off_bus")})
        summary["live"] = [hid for hid, r in emu.plant.rigs.items()
                           if r.relay_closed or r.pv.on or r.load.on or r.battery.enabled]
        return summary


def offenders(summary: dict[str, Any]) -> list[str]:
    return [h["id"] for h in summary["households"] if not h["within_tolerance"]]


CASES = [("battery", "no_reply", {}), ("pv", "late_reply", {"delay_s": 5.0})]
# measured (python -m tests.test_isolation): every case finished, self-sufficiency 0.9446-0.9447
# against 0.94462 fault-free, no rig but 7 off target


@pytest.mark.serial
@pytest.mark.parametrize(("role", "kind", "options"), CASES)
async def test_household_7_faulty_from_12_s_leaves_the_others_on_target(
        tmp_path: Path, role: str, kind: str, options: dict[str, float]) -> None:
    faulty = await day(tmp_path, role, kind, **options)
    assert faulty["status"] == "finished"
    assert set(offenders(faulty)) <= {"7"}, offenders(faulty)
    # only household 7's device is ever named (a late one may answer within the hold)
    assert set(faulty["named"]) <= {f"household 7 {role}"}, faulty["named"]
    assert kind != "no_reply" or faulty["named"] == [f"household 7 {role}"]
    assert faulty["tripped"] == {}  # driven on without the lost device
    # the fault-free day's self-sufficiency, from its figures (docs/reproduction.md)
    assert faulty["self_sufficiency"] >= FAULT_FREE_SELF_SUFFICIENCY - 0.10
    assert faulty["verify"] is None and faulty["conserved"] and faulty["live"] == []


FAULT_FREE_SELF_SUFFICIENCY = 0.945


if __name__ == "__main__":
    import tempfile

    async def main() -> None:
        tmp = Path(tempfile.mkdtemp())
        wanted = sys.argv[1:]
        cases: list[tuple[str | None, str | None, dict[str, float]]] = [(None, None, {})]
        cases += [(r, k, {}) for r in ("pv", "load", "battery") for k in ("no_reply",)]
        cases += [(r, "late_reply", {"delay_s": 5.0}) for r in ("pv", "load", "battery")]
        for role, kind, opts in cases:
            if wanted and f"{role}:{kind}" not in wanted:
                continue
            s = await day(tmp, role, kind, **opts)
            print(role, kind, s["status"], "self-sufficiency", s["self_sufficiency"],
                  "off target", offenders(s), "tripped", s["tripped"],
                  "live", s["live"], "named", s["named"],
                  "verify", s["verify"], "conserved", s["conserved"],
                  flush=True)
    asyncio.run(main())
