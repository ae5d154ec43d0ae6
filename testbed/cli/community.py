"""``testbed sweep cesdt``: registered on the main app without importing the simulation.

The command's work (:mod:`testbed.community.sweep`, matplotlib for the figures) is imported
when the command runs, so ``testbed --help`` and every other command start fast.
"""


import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from testbed.cli.output import fail
from testbed.errors import InputError

SWEEPS = ("cesdt",)


def register(app: typer.Typer) -> None:
    """Add ``testbed sweep cesdt --generating ... --households ... --out DIR``."""

    @app.command("sweep")
    def sweep(
        what: Annotated[str, typer.Argument(help=f"what to sweep: {', '.join(SWEEPS)}")],
        generating: Annotated[str, typer.Option(
            help="comma-separated shares of generating homes")] = "0.1,0.3,0.5,0.7",
        households: Annotated[str, typer.Option(
            help="comma-separated community sizes")] = "15,50,100",
        out: Annotated[Path, typer.Option(help="folder for the tables and PNGs")] = Path(
            "sweep-cesdt"),
        seed: Annotated[int, typer.Option(help="seed of the first replicate")] = 1,
        replicates: Annotated[int | None, typer.Option(
            help="communities pooled per cell (default: enough for 100 homes)")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    ) -> None:
        """Sweep CE-SDT community days over sizes and generating shares (Fig. 5-10)."""
        from testbed.community import MAX_HOUSEHOLDS

        try:
            if what not in SWEEPS:
                raise InputError(what, f"unknown sweep (known: {', '.join(SWEEPS)})")
            shares = _numbers("--generating", generating, float)
            sizes = _numbers("--households", households, int)
            if any(not 0.0 <= g <= 1.0 for g in shares) or any(
                    not 1 <= n <= MAX_HOUSEHOLDS for n in sizes):
                raise InputError("--generating/--households", "shares must lie in [0, 1], "
                                 f"sizes in [1, {MAX_HOUSEHOLDS}]")
            if replicates is not None and not 1 <= replicates <= 1000:
                raise InputError("--replicates", "must lie in [1, 1000]")
        except InputError as e:
            fail(str(e))
        from testbed.community.day import CLASSES
        from testbed.community.params import CommunityParams
        from testbed.community.sweep import replicate_seeds, run_sweep, write
        from testbed.run.community_day import _bar

        with _bar(not as_json) as bar:
            cells = run_sweep(sizes, shares, seed, replicates,
                              progress=bar.stage("simulating days"))
        meta = {"seed": seed, "households": sizes, "generating": shares,
                "replicate_seeds": {str(c.households): replicate_seeds(seed, len(c.days))
                                    for c in cells},
                "params": CommunityParams().as_dict()}
        files = write(cells, out, meta)
        rows = [r for c in cells for r in c.classes()]
        if as_json:
            print(json.dumps({"out": str(out), "files": [f.name for f in files],
                              "costs": rows}, indent=2))
            return
        from rich.table import Table

        table = Table("homes", "generating", "replicates", *CLASSES, title="cost ratio")
        for c in cells:
            ratio = {r["class"]: r["cost_ratio"] for r in c.classes()}
            table.add_row(str(c.households), f"{c.generating:.0%}", str(len(c.days)),
                          *("-" if ratio[k] is None else f"{ratio[k]:.3f}" for k in CLASSES))
        Console().print(table)
        Console().print(f"wrote {len(files)} files to {out}")


def _numbers(option: str, text: str, kind: Callable[[str], Any]) -> list[Any]:
    if len(text) > 1000:
        raise InputError(option, "a list of at most 1000 characters")
    try:
        values = [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(option, f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise InputError(option, "expected at least one number")
    return values
