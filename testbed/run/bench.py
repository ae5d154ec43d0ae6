"""The bench-facing work of the lab commands, as plain async functions that tests call
directly: :func:`check_rig` (``testbed rig check``: read-only unless ``write_test``),
:func:`make_safe` (``testbed rig safe``: every device safe, read back) and
:func:`serve_emulated` (``testbed emulate``: a rig's instruments over real protocols).

The commands themselves are in :mod:`testbed.cli.lab`, which imports this module (and with
it the drivers, pymodbus and pyserial) only when one of them runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from drivers.clock import RealClock
from drivers.emulators.bench import EmulatedBench
from drivers.emulators.faults import apply_quirk, parse_fault
from drivers.emulators.toml_out import dumps
from drivers.registry import build_bench
from drivers.roles import ROLES
from drivers.spec import DeviceSpec, RigSpec
from testbed.errors import InputError

# -- rig check ------------------------------------------------------------------------------


@dataclass
class CheckResult:
    """One device's check. ``unreachable``: it failed because it could not be reached at
    all (connection refused or reset, no reply, a port that does not open: switched off,
    unplugged, at the wrong address), a set-up error; a failure with ``unreachable`` false
    is one the check found (an error reply, a read-back that does not match)."""

    device: str
    resource: str
    ok: bool
    latency_ms: float
    identity: str
    state: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    unreachable: bool = False


def unreachable(err: BaseException) -> bool:
    """The failure is the link's (a :class:`~drivers.transport.base.LinkError` or a
    timeout, also after the driver's retry on a fresh connection, found in the chain of
    causes): nothing answered, so the check could not be made."""
    from drivers.transport.base import LinkError

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, LinkError | TimeoutError):
            return True
        seen = seen.__cause__
    return False


def _resource_of(spec: DeviceSpec) -> str:
    """Where the device is: its resource, a role of two instruments' parts' resources."""
    if spec.parts:
        return " + ".join(str(p.resource) for p in spec.parts.values())
    return spec.resource or f"in-process ({spec.driver})"


def _on_off(on: bool) -> str:
    return "on" if on else "off"


async def _power_state(dev: Any) -> dict[str, Any]:
    return {"output": _on_off((await dev.read()).on)}


async def _battery_state(dev: Any) -> dict[str, Any]:
    return {"output": _on_off((await dev.read()).enabled)}


async def _relay_state(dev: Any) -> dict[str, Any]:
    return {"relay": "closed" if await dev.read_closed() else "open"}


async def _meter_state(dev: Any) -> dict[str, Any]:
    return {"power_w": round((await dev.read()).power_w, 3)}


# What "read it once" means per role, and the state it reports.
STATE_READERS: dict[str, Callable[[Any], Awaitable[dict[str, Any]]]] = {
    "pv": _power_state,
    "load": _power_state,
    "battery": _battery_state,
    "relay": _relay_state,
    "meter": _meter_state,
    "grid": _meter_state,
}


async def _write_test(spec: DeviceSpec, dev: Any) -> dict[str, Any]:
    """``--write-test``: a zero setpoint where the role takes one, then the safe state (off,
    open), each read back by the driver."""
    if spec.role in ("pv", "load", "battery"):
        await dev.set_power(0.0)
    await dev.safe_state()
    return {"write_test": "ok"}


async def _check_one(spec: DeviceSpec, dev: Any, write_test: bool = False) -> CheckResult:
    resource = _resource_of(spec)
    start = time.perf_counter()
    try:
        identity = await dev.identify()
        state = await STATE_READERS[spec.role](dev)
        if write_test:
            state |= await _write_test(spec, dev)
    except Exception as err:  # any failure is a failed check, reported, not raised
        latency = (time.perf_counter() - start) * 1000
        return CheckResult(spec.name, resource, False, round(latency, 2), "", {}, str(err),
                           unreachable=unreachable(err))
    latency = (time.perf_counter() - start) * 1000
    return CheckResult(spec.name, resource, True, round(latency, 2), identity, state)


def _pairs_of(rig: RigSpec, bench: Any) -> list[tuple[DeviceSpec, Any]]:
    pairs = [(h.devices[role], getattr(bench.households[h.id], role))
             for h in rig.households for role in ROLES]
    pairs.append((rig.grid, bench.grid))
    return pairs


async def check_rig(rig: RigSpec, *, write_test: bool = False) -> list[CheckResult]:
    """Reach every instrument of ``rig``, identify it and read it once, all concurrently.
    Read-only (no set-up line, no setpoint is sent) unless ``write_test``."""
    bench = build_bench(rig, RealClock(), read_only=not write_test)
    pairs = _pairs_of(rig, bench)
    try:
        return list(await asyncio.gather(*(_check_one(spec, dev, write_test)
                                           for spec, dev in pairs)))
    finally:
        for _, dev in pairs:
            with contextlib.suppress(Exception):
                await dev.close()


async def make_safe(rig: RigSpec) -> list[CheckResult]:
    """``testbed rig safe``: every device of ``rig`` in its safe state (outputs off, relays
    open; the grid node stays up, meters have nothing to switch), each read back."""
    bench = build_bench(rig, RealClock())
    pairs = _pairs_of(rig, bench)

    async def one(spec: DeviceSpec, dev: Any) -> CheckResult:
        resource = _resource_of(spec)
        start = time.perf_counter()
        try:
            await dev.safe_state()
            state = await STATE_READERS[spec.role](dev)
        except Exception as err:  # reported per device, never raised
            return CheckResult(spec.name, resource, False,
                               round((time.perf_counter() - start) * 1000, 2), "", {}, str(err),
                               unreachable=unreachable(err))
        return CheckResult(spec.name, resource, True,
                           round((time.perf_counter() - start) * 1000, 2), "safe", state)

    try:
        # relays first: they isolate a rig even if a supply or converter does not answer
        relays = [p for p in pairs if p[0].role == "relay"]
        rest = [p for p in pairs if p[0].role != "relay"]
        first = await asyncio.gather(*(one(s, d) for s, d in relays))
        return [*first, *await asyncio.gather(*(one(s, d) for s, d in rest))]
    finally:
        for _, dev in pairs:
            with contextlib.suppress(Exception):
                await dev.close()


def runs_holding(rig: RigSpec, db: Path) -> list[dict[str, Any]]:
    """Runs recorded in ``db`` as running on ``rig`` (a live run, or one that crashed)."""
    if not db.is_file():
        return []
    from testbed.ledger.store import Store

    store = Store(db)
    try:
        return store.running_on(rig.name)
    finally:
        store.close()


# -- emulate --------------------------------------------------------------------------------


async def serve_emulated(rig: RigSpec, out: Path, *, time_scale: float | None = None,
                         control_period_s: float | None = None, pace_baud: int | None = None,
                         faults: list[str] | None = None, models: dict[str, str] | None = None,
                         quirks: list[str] | None = None,
                         host: str = "127.0.0.1", console: Console | None = None,
                         stop: asyncio.Event | None = None, control_port: int | None = None,
                         ) -> None:
    """Serve every instrument of ``rig``, write ``out``, and run until ``stop`` or a signal.

    ``faults`` are ``--fault`` texts (grammar in :mod:`drivers.emulators.faults`), their
    windows counted from when the rig file is written; ``control_port`` opens the control
    socket (:mod:`drivers.emulators.control`) on ``host``. A malformed fault or quirk raises
    ValueError or InputError before anything is written."""
    console = console or Console()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    schedule = [parse_fault(text) for text in faults or []]
    async with EmulatedBench(rig, host=host, models=models, pace_baud=pace_baud) as emu:
        for item, text in zip(schedule, faults or [], strict=True):
            try:
                emu.check_fault(item)
            except ValueError as err:
                raise InputError("--fault", f"{text!r}: {err}") from None
        for text in quirks or []:
            device, sep, quirk = text.partition("=")
            if not sep or device.strip() not in emu.endpoints:
                raise InputError("--quirk", f"expected DEVICE=QUIRK:VALUE naming a device of "
                                            f"rig {rig.name}, got {text!r}")
            apply_quirk(emu.device(device.strip()).quirks, quirk)
        data = emu.rig_dict(time_scale=time_scale, control_period_s=control_period_s)
        # Written whole or not at all: whoever waits for the file never reads half of it.
        partial = out.with_name(out.name + ".partial")
        partial.write_text(dumps(data, f"Written by `testbed emulate {rig.name}`: valid while "
                                       "it runs.\nEvery device points at its protocol emulator."),
                           "utf-8")
        control = None
        if control_port is not None:
            from drivers.emulators.control import ControlServer

            control = ControlServer(emu)
            control_port = await control.start(host, control_port)
        emu.schedule(schedule)
        partial.replace(out)
        table = Table(title=f"emulating {rig.name} -> {out}")
        for column in ("device", "model", "resource"):
            table.add_column(column)
        for end in emu.endpoints.values():
            table.add_row(escape(end.name), escape(end.model), escape(end.resource))
        console.print(table)
        for item in schedule:
            console.print(f"fault scheduled: {escape(item.describe())}")
        if control is not None:
            console.print(f"control socket on {host}:{control_port} (testbed fault ... "
                          f"--control {control_port})")
        console.print(f"serving {len(emu.endpoints)} instruments; Ctrl-C to stop")
        try:
            await stop.wait()
        finally:
            if control is not None:
                await control.close()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(sig)
