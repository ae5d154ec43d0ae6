"""Lab commands: ``testbed emulate`` (a mock rig over real protocols), ``testbed rig check``
(read-only unless ``--write-test``) and ``testbed rig safe`` (every device safe, read back).

``register(app)`` adds them to the main Typer app. The work is done in :mod:`testbed.run.bench`,
imported (with asyncio, the drivers and the emulators) only by the command that runs, so
registering these commands costs ``testbed --help`` nothing.
"""


import json
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from testbed.cli import output
from testbed.errors import InputError

# The options every ``testbed fault`` command takes (the emulator's control socket).
ControlPort = Annotated[int, typer.Option("--control", help="The emulator's control port.")]
ControlHost = Annotated[str, typer.Option(help="The emulator's address.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")]

if TYPE_CHECKING:
    from drivers.spec import RigSpec
    from testbed.run.bench import CheckResult


def fail(message: str, as_json: bool, code: int = 2) -> NoReturn:
    """:func:`testbed.cli.output.fail` (the one error printer)."""
    output.fail(message, code, as_json=as_json)


def _load(rig: str, as_json: bool = False) -> "RigSpec":
    from testbed.config.rig import load_rig

    try:
        return load_rig(rig)
    except InputError as err:
        fail(str(err), as_json)


UNREACHABLE_HINT = "is it switched on, connected, and at this address?"


def _show(results: "list[CheckResult]", as_json: bool, title: str) -> None:
    """The results as a table (or a JSON list); exit 1 when a device that answered failed
    the check. A device that could not be reached at all is a set-up error instead: one
    line per failed device on stderr (with --json one object: ``error``, ``exit`` and the
    ``results``), exit 2."""
    lost = [r for r in results if r.unreachable]
    if lost:
        lines = [f"{r.error.replace(': unavailable: ', ': not reachable: ', 1)}; "
                 f"{UNREACHABLE_HINT}" if r.unreachable else r.error
                 for r in results if not r.ok]
        if as_json:
            typer.echo(json.dumps({
                "error": f"{len(lost)} of {len(results)} device(s) not reachable, "
                         "nothing was checked on them", "exit": 2,
                "results": [asdict(r) for r in results]}, indent=2))
        for line in lines:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2)
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in results], indent=2))
    else:
        _print_check(results, Console(), title)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def _bench_results(work: "Callable[[], Coroutine[Any, Any, list[CheckResult]]]",
                   as_json: bool) -> "list[CheckResult]":
    """Run a bench command's work; a device its driver cannot be built for (an instrument
    file that cannot serve the role, a resource of the wrong protocol) is a set-up error:
    one line, exit 2."""
    import asyncio

    from drivers.spec import DriverConfigError

    try:
        return asyncio.run(work())
    except DriverConfigError as err:
        fail(str(err), as_json)


def _print_check(results: "list[CheckResult]", console: "Console",
                 title: str = "rig check") -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("device", "resource", "identity", "latency", "status", "state"):
        table.add_column(column, no_wrap=column in ("device", "latency"), overflow="fold")
    for r in results:
        state = ", ".join(f"{k}={v}" for k, v in r.state.items())
        status = "[green]ok[/green]" if r.ok else f"[red]FAIL[/red] {escape(r.error)}"
        table.add_row(escape(r.device), escape(r.resource), escape(r.identity),
                      f"{r.latency_ms:.1f} ms", status, escape(state))
    console.print(table)



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
                          no_args_is_help=True, rich_markup_mode=None)

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
        """Reach every instrument, identify it, read it once. Exit 1 if a device that
        answered fails the check; exit 2 (a set-up error, one line per device) if a device
        cannot be reached at all or its driver cannot be built."""
        from testbed.run.bench import check_rig, runs_holding

        spec = _load(rig, as_json)
        for held in runs_holding(spec, db):
            typer.echo(f"warning: run {held['id']} (started {held['started_at']}) is "
                       f"recorded as running on rig {spec.name} in {db}: this check talks "
                       "to the same instruments", err=True)
        results = _bench_results(lambda: check_rig(spec, write_test=write_test), as_json)
        _show(results, as_json, "rig check")

    @rig_app.command("safe")
    def rig_safe(
        rig: Annotated[str, typer.Argument(help="A built-in rig name or a rig file path.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")] = False,
    ) -> None:
        """Put every device of RIG in its safe state and read it back, without a run (after
        a crash, or before leaving the lab); exit 1 unless every read-back confirms, exit 2
        when a device cannot be reached at all."""
        from testbed.run.bench import make_safe

        spec = _load(rig, as_json)
        results = _bench_results(lambda: make_safe(spec), as_json)
        _show(results, as_json, "rig safe")

    @app.command("emulate")
    def emulate(
        rig: Annotated[str, typer.Argument(
            help="The rig to serve: mock devices get emulated instruments, a rig of real "
                 "instruments is served as written (only the addresses change).")],
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
            help="Schedule a fault: DEVICE=KIND[:COUNT][,OPTION=VALUE]...[@START[-END]], "
                 "e.g. 'hh7.pv=silent@12s-20s', 'household 1 meter=no_reply:3', "
                 "'hh2.battery=late,delay_s=5@10s' (times from when the rig file is "
                 "written; docs/operator-guide.md).")
        ] = None,
        control: Annotated[int | None, typer.Option(
            help="Listen on this port for `testbed fault inject|clear|list` (0: any free "
                 "port, printed).")] = None,
        quirk: Annotated[list[str] | None, typer.Option(
            help="Give an instrument a lasting quirk: DEVICE=QUIRK:VALUE, e.g. "
                 "'household 1 meter=busy_every:10', 'household 1 battery=refuse_functions:6'.")
        ] = None,
        model: Annotated[list[str] | None, typer.Option(
            help="Use this instrument file for a role: ROLE=MODEL, e.g. meter=peacefair-pzem017.")
        ] = None,
        host: Annotated[str, typer.Option(help="Address to serve on.")] = "127.0.0.1",
    ) -> None:
        """Serve every instrument of RIG over Modbus TCP/RTU and SCPI until Ctrl-C: the
        models, RTU lines, gateways, unit ids and channels the rig names, on loopback."""
        import asyncio

        from testbed.config.rig import load_rig
        from testbed.run.bench import serve_emulated

        try:
            spec = load_rig(rig)
            asyncio.run(serve_emulated(
                spec, write_rig, time_scale=time_scale, control_period_s=control_period,
                pace_baud=pace, faults=fault, models=_pairs(model or [], "--model"),
                quirks=quirk, host=host, control_port=control))
        except (InputError, ValueError) as err:
            output.fail(str(err))

    @rig_app.command("show")
    def rig_show(
        name: Annotated[str, typer.Argument(help="A built-in or example rig name.")],
    ) -> None:
        """Print a built-in or example rig's TOML (university-lab3: a real 3-household
        bench), comments and all."""
        from testbed.cli.instrument import show_builtin

        show_builtin("rigs", name)

    @rig_app.command("copy")
    def rig_copy(
        name: Annotated[str, typer.Argument(help="A built-in or example rig name.")],
        dest: Annotated[Path, typer.Argument(help="The file to write (not overwritten).")],
    ) -> None:
        """Copy a built-in or example rig to DEST to describe your bench from it; refuses
        to overwrite a file."""
        from testbed.cli.instrument import copy_builtin

        copy_builtin("rigs", name, dest)

    app.add_typer(rig_app, name="rig")

    fault_app = typer.Typer(help="Inject and clear faults in a running `testbed emulate "
                                 "--control PORT`.", no_args_is_help=True,
                            rich_markup_mode=None)

    def _control(line: str, port: int, host: str, as_json: bool) -> None:
        import asyncio

        from drivers.emulators.control import send

        try:
            answer = asyncio.run(send(host, port, line))
        except (OSError, TimeoutError) as err:
            fail(f"no emulator control socket at {host}:{port}: {err}", as_json)
        if not answer.get("ok"):
            fail(str(answer.get("error")), as_json)
        typer.echo(json.dumps(answer) if as_json else
                   " ".join(f"{k}: {v}" for k, v in answer.items() if k != "ok"))

    @fault_app.command("inject")
    def fault_inject(
        spec: Annotated[str, typer.Argument(help="DEVICE=KIND[:COUNT][,OPTION=VALUE]..."
                                                 "[@START[-END]], the window from now.")],
        port: ControlPort,
        host: ControlHost = "127.0.0.1",
        as_json: AsJson = False,
    ) -> None:
        """Switch a fault on (now, or in the window given); exit 2 if it is refused."""
        _control(f"inject {spec}", port, host, as_json)

    @fault_app.command("clear")
    def fault_clear(
        device: Annotated[str, typer.Argument(help="The device, e.g. 'household 7 pv' or "
                                                   "hh7.pv.")],
        port: ControlPort,
        host: ControlHost = "127.0.0.1",
        as_json: AsJson = False,
    ) -> None:
        """Clear a device's fault."""
        _control(f"clear {device}", port, host, as_json)

    @fault_app.command("list")
    def fault_list(
        port: ControlPort,
        host: ControlHost = "127.0.0.1",
        as_json: AsJson = False,
    ) -> None:
        """The faults the emulator shows now, per device."""
        _control("list", port, host, as_json)

    app.add_typer(fault_app, name="fault")
