"""Lab commands: ``testbed emulate`` (a mock rig over real protocols), ``testbed rig check``
(read-only unless ``--write-test``) and ``testbed rig safe`` (every device safe, read back).

``register(app)`` adds them to the main Typer app. The work is done by plain async functions
(:func:`check_rig`, :func:`serve_emulated`) that tests call directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
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
from testbed.rigfile import load_rig

# -- rig check ------------------------------------------------------------------------------


@dataclass
class CheckResult:
    device: str
    resource: str
    ok: bool
    latency_ms: float
    identity: str
    state: dict[str, Any] = field(default_factory=dict)
    error: str = ""


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
    resource = spec.resource or f"in-process ({spec.driver})"
    start = time.perf_counter()
    try:
        identity = await dev.identify()
        state = await STATE_READERS[spec.role](dev)
        if write_test:
            state |= await _write_test(spec, dev)
    except Exception as err:  # any failure is a failed check, reported, not raised
        latency = (time.perf_counter() - start) * 1000
        return CheckResult(spec.name, resource, False, round(latency, 2), "", {}, str(err))
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
        resource = spec.resource or f"in-process ({spec.driver})"
        start = time.perf_counter()
        try:
            await dev.safe_state()
            state = await STATE_READERS[spec.role](dev)
        except Exception as err:  # reported per device, never raised
            return CheckResult(spec.name, resource, False,
                               round((time.perf_counter() - start) * 1000, 2), "", {}, str(err))
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
    from testbed.store import Store

    store = Store(db)
    try:
        return [dict(r) for r in store.db.query(
            "select id, started_at from runs where status = 'running' and rig = ?",
            [rig.name])]
    finally:
        store.close()


def _load(rig: str) -> RigSpec:
    try:
        return load_rig(rig)
    except InputError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


def _show(results: list[CheckResult], as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in results], indent=2))
    else:
        _print_check(results, Console(), title)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def _print_check(results: list[CheckResult], console: Console, title: str = "rig check") -> None:
    table = Table(title=title)
    for column in ("device", "resource", "identity", "latency", "status", "state"):
        table.add_column(column, no_wrap=column in ("device", "latency"), overflow="fold")
    for r in results:
        state = ", ".join(f"{k}={v}" for k, v in r.state.items())
        status = "[green]ok[/green]" if r.ok else f"[red]FAIL[/red] {escape(r.error)}"
        table.add_row(escape(r.device), escape(r.resource), escape(r.identity),
                      f"{r.latency_ms:.1f} ms", status, escape(state))
    console.print(table)


# -- emulate --------------------------------------------------------------------------------


async def serve_emulated(rig: RigSpec, out: Path, *, time_scale: float | None = None,
                         control_period_s: float | None = None, pace_baud: int | None = None,
                         faults: list[str] | None = None, models: dict[str, str] | None = None,
                         quirks: list[str] | None = None,
                         host: str = "127.0.0.1", console: Console | None = None,
                         stop: asyncio.Event | None = None) -> None:
    """Serve every instrument of ``rig``, write ``out``, and run until ``stop`` or a signal."""
    console = console or Console()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    async with EmulatedBench(rig, host=host, models=models, pace_baud=pace_baud) as emu:
        for text in faults or []:
            device, fault = parse_fault(text)
            if device not in emu.endpoints:
                raise InputError("--fault", f"no device {device!r} in rig {rig.name}")
            emu.device(device).faults.inject(fault.kind, fault.count)
        for text in quirks or []:
            device, sep, quirk = text.partition("=")
            if not sep or device.strip() not in emu.endpoints:
                raise InputError("--quirk", f"expected DEVICE=QUIRK:VALUE naming a device of "
                                            f"rig {rig.name}, got {text!r}")
            apply_quirk(emu.device(device.strip()).quirks, quirk)
        data = emu.rig_dict(time_scale=time_scale, control_period_s=control_period_s)
        out.write_text(dumps(data, f"Written by `testbed emulate {rig.name}`: valid while it "
                                   "runs.\nEvery device points at its protocol emulator."),
                       "utf-8")
        table = Table(title=f"emulating {rig.name} -> {out}")
        for column in ("device", "model", "resource"):
            table.add_column(column)
        for end in emu.endpoints.values():
            table.add_row(escape(end.name), escape(end.model), escape(end.resource))
        console.print(table)
        console.print(f"serving {len(emu.endpoints)} instruments; Ctrl-C to stop")
        await stop.wait()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(sig)


def _pairs(items: list[str], option: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected ROLE=MODEL, got {item!r}", param_hint=option)
        out[key.strip()] = value.strip()
    return out


def register(app: typer.Typer) -> None:
    """Add ``emulate`` and the ``rig`` sub-app (``rig check``) to ``app``."""
    rig_app = typer.Typer(help="Check and inspect rigs of real (or emulated) instruments.",
                          no_args_is_help=True)

    @rig_app.command("check")
    def rig_check(
        rig: Annotated[str, typer.Argument(help="A built-in rig name or a rig file path.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")] = False,
        write_test: Annotated[bool, typer.Option(
            "--write-test", help="Also write: zero setpoints, then outputs off and relays "
            "open, each read back (default: read-only, nothing is sent but queries).")
        ] = False,
        db: Annotated[Path, typer.Option(help="Run database to look for a run holding the "
                                              "rig.")] = Path("testbed.db"),
    ) -> None:
        """Reach every instrument, identify it, read it once; exit 1 if any fails."""
        spec = _load(rig)
        for held in runs_holding(spec, db):
            typer.echo(f"warning: run {held['id']} (started {held['started_at']}) is "
                       f"recorded as running on rig {spec.name} in {db}: this check talks "
                       "to the same instruments", err=True)
        results = asyncio.run(check_rig(spec, write_test=write_test))
        _show(results, as_json, "rig check")

    @rig_app.command("safe")
    def rig_safe(
        rig: Annotated[str, typer.Argument(help="A built-in rig name or a rig file path.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")] = False,
    ) -> None:
        """Put every device of RIG in its safe state and read it back, without a run (after
        a crash, or before leaving the lab); exit 1 unless every read-back confirms."""
        results = asyncio.run(make_safe(_load(rig)))
        _show(results, as_json, "rig safe")

    @app.command("emulate")
    def emulate(
        rig: Annotated[str, typer.Argument(help="The mock rig whose instruments to serve.")],
        write_rig: Annotated[Path, typer.Option("--write-rig", help="Rig file to write.")],
        time_scale: Annotated[float | None, typer.Option(
            help="time_scale in the written rig (e.g. 2880: a market day in 30 lab seconds)."
        )] = None,
        control_period: Annotated[float | None, typer.Option(
            help="control_period_s in the written rig (shorten it with --time-scale).")] = None,
        pace: Annotated[int | None, typer.Option(
            help="Pace the RTU line at this baud rate (default: as fast as the pty goes).")
        ] = None,
        fault: Annotated[list[str] | None, typer.Option(
            help="Inject a fault: DEVICE=KIND[:COUNT], e.g. 'household 1 meter=no_reply:3'.")
        ] = None,
        quirk: Annotated[list[str] | None, typer.Option(
            help="Give an instrument a lasting quirk: DEVICE=QUIRK:VALUE, e.g. "
                 "'household 1 meter=busy_every:10', 'household 1 battery=refuse_functions:6'.")
        ] = None,
        model: Annotated[list[str] | None, typer.Option(
            help="Use this instrument file for a role: ROLE=MODEL, e.g. meter=peacefair-pzem017.")
        ] = None,
        host: Annotated[str, typer.Option(help="Address to serve on.")] = "127.0.0.1",
    ) -> None:
        """Serve every instrument of RIG over Modbus TCP/RTU and SCPI until Ctrl-C."""
        try:
            spec = load_rig(rig)
            asyncio.run(serve_emulated(
                spec, write_rig, time_scale=time_scale, control_period_s=control_period,
                pace_baud=pace, faults=fault, models=_pairs(model or [], "--model"),
                quirks=quirk, host=host))
        except (InputError, ValueError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None

    app.add_typer(rig_app, name="rig")
