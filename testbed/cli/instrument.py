"""Operator tools: ``testbed instrument check FILE``, ``testbed instrument read|set
RESOURCE --model M ...`` (a pyvisa-style session, :mod:`drivers.bench.session`) and
``testbed scenario show|copy NAME`` (``testbed rig show|copy`` share the helpers).

``register(app)`` adds them to the main Typer app; the instrument model and the drivers
are imported only by the command that runs. Exit codes: 2 for what the operator typed or
an instrument that does not answer (one line, JSON under ``--json``), 1 for an instrument
that answers with an error.
"""

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from testbed.cli.output import fail

if TYPE_CHECKING:
    from drivers.bench.session import Reading, Session

T = TypeVar("T")

# What a file must state for its roles (the pre-flight checks read these ratings).
RATINGS_FOR_ROLE: dict[str, tuple[str, ...]] = {
    "pv": ("voltage_v", "current_a", "power_w", "directions"),
    "load": ("voltage_v", "current_a", "power_w", "directions"),
    "battery": ("voltage_v", "current_a", "power_w", "directions"),
    "grid": ("voltage_v", "current_a", "power_w", "directions"),
    "converter": ("voltage_v", "current_a", "power_w", "directions"),
    "grid_source": ("voltage_v", "current_a", "power_w", "directions"),
    "grid_sink": ("voltage_v", "current_a", "power_w", "directions"),
    "meter": (),
    "relay": (),
    "bms": (),
}


def _fail(message: str, as_json: bool, code: int = 2) -> NoReturn:
    fail(message, code, as_json=as_json)


def check_instrument(name_or_path: str) -> dict[str, Any]:
    """Parse ``name_or_path`` with every schema check (keys, types, overlapping registers,
    datasheet numbering, role points or commands) and list the ratings its roles lack.
    Returns ``{model, protocol, roles, ratings, missing_ratings, energy_resolution_wh}``;
    raises ValueError (InstrumentFileError) naming the file and key on a schema error."""
    from drivers.instruments.model import energy_resolution_wh, load_instrument

    inst = load_instrument(name_or_path)
    r = inst.ratings
    missing = sorted({key for role in inst.roles for key in RATINGS_FOR_ROLE.get(role, ())
                      if not getattr(r, key)})
    return {"model": inst.model, "protocol": inst.protocol, "roles": list(inst.roles),
            "follows": inst.follows,
            "ratings": {"voltage_v": r.voltage_v, "current_a": r.current_a,
                        "power_w": r.power_w, "directions": list(r.directions)},
            "missing_ratings": missing,
            "energy_resolution_wh": energy_resolution_wh(inst)}


def show_builtin(kind: str, name: str) -> None:
    """Print the built-in (or example) ``kind`` file ``name``; exit 2 naming the known ones."""
    from rigs import builtin

    known = builtin(kind)
    if name not in known:
        _fail(f"no built-in {kind[:-1]} {name!r} (built-in: {', '.join(known)})", False)
    typer.echo(known[name].read_text("utf-8"), nl=False)


def copy_builtin(kind: str, name: str, dest: Path) -> None:
    """Copy the built-in (or example) ``kind`` file ``name`` to ``dest`` to edit it; never
    overwrites (exit 2)."""
    from rigs import builtin

    known = builtin(kind)
    if name not in known:
        _fail(f"no built-in {kind[:-1]} {name!r} (built-in: {', '.join(known)})", False)
    try:
        with dest.open("x", encoding="utf-8") as f:
            f.write(known[name].read_text("utf-8"))
    except OSError as err:
        _fail(f"{dest}: {err.strerror or 'cannot be written'}", False)
    use = {"scenarios": f"testbed run {dest}", "rigs": f"testbed rig check {dest}"}[kind]
    typer.echo(f"wrote {dest}: edit it, then `{use}`")


def _in_session(resource: str, model: str, channel: int | None, as_json: bool,
                work: "Callable[[Session], Awaitable[T]]") -> T:
    """Open a session, run ``work`` on it, close it; every failure is one line (exit 2 for
    input and an instrument that does not answer, 1 for one that answers with an error)."""
    import asyncio

    from drivers.bench.session import SessionError, Unreachable, open_session
    from drivers.protocol.errors import InstrumentError

    async def main() -> T:
        session = open_session(resource, model, channel)
        try:
            return await work(session)
        finally:
            await session.close()

    try:
        return asyncio.run(main())
    except (SessionError, Unreachable) as err:
        _fail(str(err), as_json)
    except InstrumentError as err:
        _fail(f"{resource}: the instrument refused: {err}", as_json, code=1)


def _show_readings(readings: "list[Reading]", as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([{"name": r.name, "value": r.value, "unit": r.unit,
                                "where": r.where} for r in readings], indent=2))
        return
    for r in readings:
        value = f"{r.value:g}" if isinstance(r.value, float) else str(r.value)
        typer.echo(f"{r.name} = {value}{' ' + r.unit if r.unit else ''}  ({r.where})")


ResourceArg = Annotated[str, typer.Argument(
    help="Where the instrument is: TCPIP::HOST::PORT::SOCKET, ASRL/dev/PATH::INSTR, "
         "modbus+tcp://HOST:PORT?unit=N, modbus+rtu:///dev/PATH?baud=9600&unit=N.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m",
                                       help="A built-in instrument name or a file path.")]
ChannelOpt = Annotated[int | None, typer.Option(
    "--channel", help="The channel of a multi-channel instrument (default: the file's).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (errors too).")]


def register(app: typer.Typer) -> None:
    """Add the ``instrument`` and ``scenario`` sub-apps to ``app``."""
    inst_app = typer.Typer(help="Check instrument files; read and set an instrument.",
                           no_args_is_help=True,
                           rich_markup_mode=None)
    sc_app = typer.Typer(help="Start from a built-in scenario.", no_args_is_help=True,
                         rich_markup_mode=None)

    @inst_app.command("check")
    def instrument_check(
        file: Annotated[str, typer.Argument(help="A built-in instrument name or a file path.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ) -> None:
        """Check an instrument file: schema, overlapping registers, datasheet numbering,
        the points or commands its roles need, and missing ratings (warned). Exit 2 on a
        schema error."""
        try:
            result = check_instrument(file)
        except ValueError as err:
            _fail(str(err), as_json)
        if as_json:
            typer.echo(json.dumps(result, indent=2))
        else:
            typer.echo(f"{file}: ok ({result['protocol']}, roles {', '.join(result['roles'])})")
        for key in result["missing_ratings"]:
            typer.echo(f"warning: {file}: [ratings] {key} is not stated: pre-flight cannot "
                       "check the rig against it", err=True)

    @inst_app.command("read")
    def instrument_read(
        resource: ResourceArg,
        model: ModelOpt,
        point: Annotated[str | None, typer.Argument(
            help="A point (Modbus) or command (SCPI) of the file; all readable ones if "
                 "omitted.")] = None,
        channel: ChannelOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Read POINT (or every readable point or query) of the instrument at RESOURCE, as
        its file MODEL declares it. Nothing is written."""
        readings = _in_session(resource, model, channel, as_json,
                               lambda s: s.read(point))
        _show_readings(readings, as_json)

    # a negative VALUE (-120 W: sink) is a value, not an option
    @inst_app.command("set", context_settings={"ignore_unknown_options": True})
    def instrument_set(
        resource: ResourceArg,
        model: ModelOpt,
        point: Annotated[str, typer.Argument(help="A writable point or setting command.")],
        value: Annotated[str, typer.Argument(help="The value (numbers in the point's "
                                                  "unit; on/off for switches).")],
        channel: ChannelOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Set POINT to VALUE, checked first against the file's [ratings] (V, A, W and
        direction), the point's valid range and its register type, then read back."""
        reading = _in_session(resource, model, channel, as_json,
                              lambda s: s.set(point, value))
        _show_readings([reading], as_json)

    @sc_app.command("show")
    def scenario_show(
        name: Annotated[str, typer.Argument(help="A built-in scenario name.")],
    ) -> None:
        """Print a built-in scenario's TOML, comments and all."""
        show_builtin("scenarios", name)

    @sc_app.command("copy")
    def scenario_copy(
        name: Annotated[str, typer.Argument(help="A built-in scenario name.")],
        dest: Annotated[Path, typer.Argument(help="The file to write (not overwritten).")],
    ) -> None:
        """Copy a built-in scenario to DEST to edit it; refuses to overwrite a file."""
        copy_builtin("scenarios", name, dest)

    app.add_typer(inst_app, name="instrument")
    app.add_typer(sc_app, name="scenario")
