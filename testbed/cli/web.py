"""``testbed serve`` (API, live feed, dashboard) and ``testbed report`` (HTML with plots).

``register(app)`` adds both to the main Typer app; heavy imports (FastAPI, uvicorn,
matplotlib) happen inside the commands so the rest of the CLI starts fast.
"""


import sys
from pathlib import Path
from typing import Annotated

import typer

from testbed.cli.output import err
from testbed.cli.output import fail as _fail

DB_DEFAULT = Path("testbed.db")




def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        db: Annotated[Path, typer.Option(help="SQLite database of runs and ledgers")] = DB_DEFAULT,
        host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port")] = 8000,
        token: Annotated[str | None, typer.Option(
            envvar="TESTBED_TOKEN", show_envvar=True,
            help="bearer token for start/stop/estop; without one, control is refused "
                 "(prefer the environment variable: a command line is visible to all)")
        ] = None,
        mqtt: Annotated[str | None, typer.Option(
            help="follow runs of other processes live from this broker (testbed run "
                 "--mqtt) and send the emergency stop there too: mqtt[s]://host[:port]")
        ] = None,
        mqtt_user: Annotated[str | None, typer.Option(help="MQTT user name")] = None,
        mqtt_password: Annotated[str | None, typer.Option(
            envvar="TESTBED_MQTT_PASSWORD", show_envvar=True, help="MQTT password")] = None,
        mqtt_ca: Annotated[Path | None, typer.Option(
            exists=True, dir_okay=False, help="CA certificate (PEM) of the broker")] = None,
        allowed_host: Annotated[list[str] | None, typer.Option(
            help="a Host name the server answers (repeat; default: $TESTBED_ALLOWED_HOSTS "
                 "or the loopback names): others get 400, against DNS rebinding")] = None,
    ) -> None:
        """Serve the HTTP API, the live WebSocket and the dashboard (at /)."""
        import uvicorn

        from testbed.api import create_app
        from testbed.errors import InputError

        if token is not None and len(token) < 8:
            _fail("--token: use at least 8 characters")
        if token is None:
            err.print("[yellow]no --token or TESTBED_TOKEN: control endpoints (start, stop, "
                      "estop) are refused; reading is open[/yellow]")
        err.print(f"dashboard: http://{host}:{port}/   API docs: http://{host}:{port}/docs")
        try:
            app = create_app(db, token=token, mqtt=mqtt, mqtt_user=mqtt_user,
                             mqtt_password=mqtt_password,
                             mqtt_ca=None if mqtt_ca is None else str(mqtt_ca),
                             hosts=allowed_host)
        except InputError as e:
            _fail(str(e))
        uvicorn.run(app, host=host, port=port, log_level="info")

    @app.command()
    def report(
        run: Annotated[str, typer.Argument(help="run id, or 'latest'")],
        out: Annotated[Path, typer.Option("--out", help="directory for report.html and PNGs")],
        db: Annotated[Path, typer.Option(help="SQLite database of runs and ledgers")] = DB_DEFAULT,
    ) -> None:
        """Write a self-contained HTML report of a run, with PNG plots, into --out."""
        from testbed.errors import InputError
        from testbed.ledger.store import Store
        from testbed.report.figures import NotFound, list_runs
        from testbed.report.html import SummaryError, write_report

        try:
            Store(db, readonly=True, check="full").close()
            if run == "latest":
                store = Store(db, readonly=True)
                try:
                    runs = list_runs(store)
                finally:
                    store.close()
                if not runs:
                    _fail(f"{db}: no runs yet")
                run = runs[0]["id"]
            path = write_report(db, run, out)
        except InputError as e:  # a damaged database, or a row that does not parse
            _fail(str(e))
        except (NotFound, SummaryError) as e:
            _fail(f"{db}: {e}")
        except OSError as e:
            _fail(f"--out {out}: {e.strerror or e}")
        print(path, file=sys.stdout)
