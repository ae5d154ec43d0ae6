"""Operator tools: ``testbed instrument check FILE`` and ``testbed scenario show|copy NAME``.

``register(app)`` adds them to the main Typer app; the instrument model is imported only by
the command that runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from rigs import builtin
from testbed.cli.output import fail

# What a file must state for its roles (the pre-flight checks read these ratings).
RATINGS_FOR_ROLE: dict[str, tuple[str, ...]] = {
    "pv": ("voltage_v", "current_a", "power_w", "directions"),
    "load": ("voltage_v", "current_a", "power_w", "directions"),
    "battery": ("voltage_v", "current_a", "power_w", "directions"),
    "grid": ("voltage_v", "current_a", "power_w", "directions"),
    "converter": ("voltage_v", "current_a", "power_w", "directions"),
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


def register(app: typer.Typer) -> None:
    """Add the ``instrument`` and ``scenario`` sub-apps to ``app``."""
    inst_app = typer.Typer(help="Check instrument files.", no_args_is_help=True,
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

    @sc_app.command("show")
    def scenario_show(
        name: Annotated[str, typer.Argument(help="A built-in scenario name.")],
    ) -> None:
        """Print a built-in scenario's TOML, comments and all."""
        known = builtin("scenarios")
        if name not in known:
            _fail(f"no built-in scenario {name!r} (built-in: {', '.join(known)})", False)
        typer.echo(known[name].read_text("utf-8"), nl=False)

    @sc_app.command("copy")
    def scenario_copy(
        name: Annotated[str, typer.Argument(help="A built-in scenario name.")],
        dest: Annotated[Path, typer.Argument(help="The file to write (not overwritten).")],
    ) -> None:
        """Copy a built-in scenario to DEST to edit it; refuses to overwrite a file."""
        known = builtin("scenarios")
        if name not in known:
            _fail(f"no built-in scenario {name!r} (built-in: {', '.join(known)})", False)
        try:
            with dest.open("x", encoding="utf-8") as f:
                f.write(known[name].read_text("utf-8"))
        except OSError as err:
            _fail(f"{dest}: {err.strerror or 'cannot be written'}", False)
        typer.echo(f"wrote {dest}: run it with `testbed run {dest}`")

    app.add_typer(inst_app, name="instrument")
    app.add_typer(sc_app, name="scenario")
