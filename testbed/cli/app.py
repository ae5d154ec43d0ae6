"""The ``testbed`` command line (typer + rich)."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from contracts.dual_bidding import clear as clear_book
from contracts.numbers import exact
from contracts.orders import OrderError, parse_book
from rigs import builtin
from testbed import json_input
from testbed.cli.output import JSON_ERRORS, console, err, fail
from testbed.errors import InputError

# Plain help and usage errors (rich_markup_mode=None): rich's help renderer loads markdown-it,
# a third of `testbed --help` (docs/performance.md, start-up).
app = typer.Typer(help="Hardware-in-the-loop testbed for community P2P energy trading.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode=None)

DB_DEFAULT = Path("testbed.db")
COMMUNITY = "cesdt"  # `testbed run cesdt`: the CE-SDT community day, not a scenario file


def _run_until_signal(coro_factory: Any) -> Any:
    """Run the coroutine made by ``coro_factory(controller_hook)`` with signals wired.

    SIGINT/SIGTERM cancel the run, so its ``finally`` puts the bench in its safe state; a
    second signal while that happens, or after it, is reported and otherwise absorbed, so
    the safe-state writes are never cut short (exit 130). A signal that comes before the
    event loop runs (or while pre-flight work holds it) is kept and acted on at once.
    SIGUSR1 is the emergency stop from the shell (``kill -USR1 PID``). The closing line
    says what the safe state's read-back confirmed, and a run whose safe state is
    incomplete exits 4, naming the devices possibly still live.
    """
    import asyncio

    received: list[signal.Signals] = []
    controllers: list[Any] = []

    def absorb(signum: int, _frame: Any) -> None:  # before and after the loop runs
        sig = signal.Signals(signum)
        if received:
            err.print(f"[yellow]{sig.name}: already stopping, putting the bench safe[/]")
        received.append(sig)

    before = {sig: signal.signal(sig, absorb) for sig in (signal.SIGINT, signal.SIGTERM)}

    async def main() -> Any:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def stop(sig: signal.Signals) -> None:
            if received:
                err.print(f"[yellow]{sig.name}: already stopping, putting the bench safe[/]")
                received.append(sig)
                return
            received.append(sig)
            task.cancel()  # type: ignore[union-attr]

        pending: list[str] = []  # a stop before the controller exists is kept for it

        def estop() -> None:
            pending.append("SIGUSR1 from the shell")
            for c in controllers:
                c.emergency_stop(pending[0])

        def register(controller: Any) -> None:
            controllers.append(controller)
            if pending:
                controller.emergency_stop(pending[0])

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop, sig)
        loop.add_signal_handler(signal.SIGUSR1, estop)
        if received:  # a signal before the loop ran: stop at once, nothing started
            raise asyncio.CancelledError
        return await coro_factory(register)
    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        unconfirmed = [d for c in controllers for d in (c.unconfirmed or [])]
        confirmed = controllers and all(c.unconfirmed is not None for c in controllers)
        if unconfirmed:
            err.print("[red]stopped by signal; safe state INCOMPLETE, possibly still live: "
                      f"{escape('; '.join(unconfirmed))}; the run's data is on disk[/red]")
            raise typer.Exit(4) from None
        what = "every output off, every relay open (read back)" if confirmed else \
            "nothing had been switched on"
        err.print(f"[yellow]stopped by signal: {what}; the run's data is on disk[/yellow]")
        raise typer.Exit(130) from None
    finally:
        # asyncio.run restored the default handlers: after a stop, keep absorbing until
        # the process ends (a second SIGTERM is not a kill); otherwise put back the old.
        for sig, old in before.items():
            signal.signal(sig, absorb if received else old)


def _safety_printer(topic: str, payload: dict[str, Any]) -> None:
    """Safety events go to stderr as they happen, whatever the output format."""
    if topic != "safety" or payload.get("event") == "rigs_connected":
        return
    if payload.get("event") == "safe_state" and payload.get("complete"):
        err.print("[green]safe state: every output off, every relay open[/green]")
        return
    if payload.get("event") == "lab_plan":  # before a real-time run: lab energy and power
        err.print("pre-flight: lab energy and mean power per household this interval:\n  "
                  + "\n  ".join(escape(line) for line in payload["households"]), highlight=False)
        return
    if payload.get("event") == "preflight":
        err.print("[yellow]pre-flight: no communication watchdog, so these would stay live "
                  f"if the controller died: {escape(', '.join(payload['live_if_controller_dies']))}"
                  "[/yellow]", highlight=False)
        return
    err.print(f"[red]safety:[/red] {json.dumps(payload)}")


@app.command()
def run(
    scenario: Annotated[str, typer.Argument(help="built-in scenario name or a TOML file")],
    rig: Annotated[str, typer.Option(help="built-in rig name or a rig TOML file")] = "mock",
    db: Annotated[Path, typer.Option(help="SQLite database for runs and the ledger")] = DB_DEFAULT,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    speed: Annotated[str | None, typer.Option(
        help="time scale override: a number (1440 = a day in a minute, real time) or 'max' "
             "(virtual time, mock rigs only)")] = None,
    junit: Annotated[Path | None, typer.Option(
        help="write JUnit XML: one testcase per trade and per household check")] = None,
    resume: Annotated[str | None, typer.Option(
        help="continue the run with this id from its last committed interval")] = None,
    mqtt: Annotated[str | None, typer.Option(
        help="publish telemetry to this broker, mqtt://[user:pass@]host[:port] or mqtts://; "
             "an emergency stop comes back on testbed/RUN/estop (docs/telemetry.md)")] = None,
    mqtt_user: Annotated[str | None, typer.Option(help="MQTT user name")] = None,
    mqtt_password: Annotated[str | None, typer.Option(
        envvar="TESTBED_MQTT_PASSWORD", show_envvar=True,
        help="MQTT password (prefer the variable: a command line is visible to all)")] = None,
    mqtt_ca: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="CA certificate (PEM) of the broker; implies TLS")] = None,
    households: Annotated[int, typer.Option(
        help="cesdt: homes in the community (beyond the rig's racks they are simulated)")
    ] = 100,
    generating: Annotated[float, typer.Option(
        help="cesdt: share of homes with PV and a battery, in [0, 1]")] = 0.5,
    seed: Annotated[int, typer.Option(help="cesdt: seed of the homes' load and PV types")] = 1,
    ledger: Annotated[str, typer.Option(
        help="sqlite (the signed ledger), or also the contract on an EVM: 'evm' (embedded "
             "py-evm, needs the evm extra) or 'evm+http://HOST:PORT' (a JSON-RPC node)")
    ] = "sqlite",
    agents: Annotated[str | None, typer.Option(
        help="broker of the household agents (households with orders = 'agent'), "
             "mqtt://host[:port], or http://host:port to listen on for agents without MQTT "
             "(docs/agents.md)")] = None,
    gate_s: Annotated[float, typer.Option(
        help="seconds each interval's order gate stays open for agents")] = 10.0,
) -> None:
    """Run a market scenario on a rig: clear, route, meter, settle, and record the ledger.

    SCENARIO ``cesdt`` runs a CE-SDT community day (request/offer trading, 1-minute to
    hourly settlement per home) instead of a dual-bidding scenario file.

    Exits 1 when a validation check fails, 2 on bad input, 3 after an emergency stop or
    the grid node's loss, 4 when the safe state could not be confirmed on every device,
    130 when stopped by a signal.
    """
    JSON_ERRORS.set(as_json)
    import uuid

    from contracts.ledger import TxError
    from drivers.bench.health import DeviceUnavailable
    from drivers.spec import DriverConfigError
    from testbed.config.rig import load_rig
    from testbed.config.scenario import load_scenario
    from testbed.ledger.store import Store
    from testbed.report.terminal import render, summarise
    from testbed.run.controller import EmergencyStop, SafeStateIncomplete
    from testbed.run.runner import apply_speed, run_scenario
    from testbed.run.validation import write_junit

    # MQTT (aiomqtt, paho) is loaded only for a run that publishes.
    telemetry_errors: tuple[type[Exception], ...] = ()

    community = scenario == COMMUNITY
    try:
        if community and (resume or junit):
            raise InputError("cesdt", "--resume and --junit apply to scenario files; a "
                             "community day reports metered against routed in its summary")
        sc = None if community else load_scenario(scenario)
        rg, clock = apply_speed(load_rig(rig), speed)
        if mqtt is not None:
            from testbed.telemetry import TelemetryError, parse_broker_url

            telemetry_errors = (TelemetryError,)
            parse_broker_url(mqtt)
        known = ledger in ("sqlite", "evm") or ledger.startswith(("evm+http://", "evm+https://"))
        if not known or (community and ledger != "sqlite"):
            raise InputError(f"--ledger {ledger}", "expected 'sqlite', 'evm' or "
                             "'evm+http://HOST:PORT' (scenario files only)")
    except InputError as e:
        fail(str(e))
    run_id = resume or uuid.uuid4().hex[:12]  # known before the run: it names the topics

    def launch(observers: list[Any], on_controller: Any) -> Any:
        if sc is None:
            from testbed.run.community_day import run_cesdt_async

            return run_cesdt_async(households=households, generating=generating, seed=seed,
                                   rig=rg, store=store, progress=not as_json,
                                   observers=observers, clock=clock,
                                   on_controller=on_controller, run_id=run_id)
        if agents is not None:
            return _with_agents(agents, gate_s, sc, rg, store, clock, resume, run_id,
                                observers, on_controller, ledger)
        return run_scenario(sc, rg, store, clock=clock, resume=resume, run_id=run_id,
                            observers=observers, on_controller=on_controller, ledger=ledger)

    async def start(hook: Any) -> Any:
        if mqtt is None:
            return await launch([_safety_printer], hook)
        from testbed.telemetry import MqttTelemetry, StopSwitch

        switch = StopSwitch()  # an MQTT stop that comes before the controller still counts

        def attach(controller: Any) -> None:
            hook(controller)
            switch.attach(controller)

        async with MqttTelemetry(mqtt, run_id=run_id, username=mqtt_user,
                                 password=mqtt_password, ca=None if mqtt_ca is None
                                 else str(mqtt_ca), on_estop=switch.trip) as tm:
            return await launch([_safety_printer, tm.observer], attach)

    try:
        store = Store(db)
    except InputError as e:
        fail(str(e))
    try:
        outcome = _run_until_signal(start)
    except (InputError, DriverConfigError) as e:  # set-up: a file, resource or model
        fail(str(e))
    except telemetry_errors as e:
        fail(f"--mqtt: {e}")
    except TxError as e:  # no credit: a community day whose bills outgrow its deposits
        fail(f"the ledger refused a block (run {run_id}, data up to it on disk): {e}", 1)
    except DeviceUnavailable as e:  # a device failed where the run cannot go on without it
        fail(f"{e} (the bench was put in its safe state; run {run_id})", code=1)
    except SafeStateIncomplete as e:
        fail(f"{e} (run {run_id}, its data on disk)", code=4)
    except EmergencyStop as e:
        err.print(f"[red]emergency stop ({escape(str(e))}): every output off, every relay "
                  f"open, read back; the run's data is on disk (run {run_id})[/red]")
        raise typer.Exit(3) from None
    finally:
        store.close()
    if sc is None:
        _print_community(outcome, as_json)
        return
    summary = summarise(outcome)
    if junit is not None:
        write_junit(junit, outcome.checks, f"testbed.{sc.name}")
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        render(summary, console)
    if summary["validation"]["failed"]:
        err.print(f"[red]{len(summary['validation']['failed'])} validation check(s) failed[/red]")
        raise typer.Exit(1)


async def _with_agents(url: str, gate_s: float, sc: Any, rg: Any, store: Any, clock: Any,
                       resume: str | None, run_id: str, observers: list[Any],
                       on_controller: Any, ledger: str) -> Any:
    """A scenario run whose agent households bid over MQTT at ``url``."""
    import aiomqtt

    from testbed.agents import order_source
    from testbed.run.runner import run_scenario

    if not 0.1 <= gate_s <= 3600:
        raise InputError("--gate-s", f"expected seconds in [0.1, 3600], got {gate_s}")
    try:
        async with order_source(url, run_id, gate_s) as source:
            return await run_scenario(sc, rg, store, clock=clock, resume=resume,
                                      run_id=run_id, observers=observers,
                                      on_controller=on_controller, ledger=ledger,
                                      orders=source, gate_s=gate_s)
    except (OSError, aiomqtt.MqttError) as e:
        raise InputError("--agents", f"broker {url}: {e}") from None


def _print_community(summary: dict[str, Any], as_json: bool) -> None:
    from testbed.run.community_day import render_cesdt

    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        render_cesdt(summary, console)
    if not summary["bench"]["within_tolerance"]:
        err.print("[red]a rig's metered energy left the tolerance of its routed energy[/red]")
        raise typer.Exit(1)


@app.command()
def runs(
    db: Annotated[Path, typer.Option(help="SQLite database for runs and the ledger")] = DB_DEFAULT,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list")] = False,
) -> None:
    """List the runs in a database (running, finished, aborted or failed)."""
    JSON_ERRORS.set(as_json)
    from testbed.ledger.store import Store

    try:
        store = Store(db, readonly=True, check="full")
    except InputError as e:
        fail(str(e))
    try:
        rows = [{"id": r["id"], "scenario": r["scenario"], "rig": r["rig"],
                 "status": r["status"], "started_at": r["started_at"],
                 "finished_at": r["finished_at"]} for r in store.runs()]
    finally:
        store.close()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table("id", "scenario", "rig", "status", "started", "finished")
    for r in rows:
        t.add_row(*(str(r[k] or "") for k in ("id", "scenario", "rig", "status", "started_at",
                                               "finished_at")))
    console.print(t)


@app.command()
def clear(
    orders: Annotated[Path, typer.Argument(help="JSON list of {id, side, energy_kwh, price}")],
    alpha: Annotated[str, typer.Option(help="method-1 weight of U against L, in [0, 1]")] = "0.2",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Clear one order book with the dual-bidding contract."""
    JSON_ERRORS.set(as_json)
    from testbed.config.tomlfile import read_text

    try:
        raw = json_input.loads(read_text(orders))
    except InputError as e:
        fail(str(e))
    except json.JSONDecodeError as e:
        fail(f"{orders}: not valid JSON: {e}")
    except ValueError as e:  # an integer of thousands of digits
        fail(f"{orders}: not valid JSON: {e}")
    try:
        a = exact(alpha)
        if not 0 <= a <= 1:
            raise ValueError
    except ValueError:
        fail(f"--alpha: expected a number in [0, 1], got {alpha!r}")
    try:
        book = parse_book(raw)
    except OrderError as e:
        fail(f"{orders}: {e}")
    c = clear_book(book, a)
    out: dict[str, Any] = {
        "method": c.method, "price": None if c.price is None else float(c.price),
        "volume_kwh": float(c.volume),
        "fills": [{"seller": f.seller, "buyer": f.buyer, "energy_kwh": float(f.energy)}
                  for f in c.fills],
        "rejected": list(c.rejected)}
    if as_json:
        print(json.dumps(out, indent=2))
        return
    console.print(f"method {out['method']}, price {out['price']}, volume {out['volume_kwh']} kWh")
    t = Table("seller", "buyer", "kWh")
    for f in out["fills"]:
        t.add_row(f["seller"], f["buyer"], f"{f['energy_kwh']:g}")
    console.print(t)
    console.print(f"rejected: {', '.join(out['rejected']) or 'none'}")


@app.command()
def rigs() -> None:
    """List the built-in rigs."""
    from testbed.config.rig import load_rig
    t = Table("name", "households", "time scale", "power scale", "description")
    for name in builtin("rigs"):
        r = load_rig(name)
        t.add_row(name, str(len(r.households)), f"{r.time_scale:g}", f"{r.power_scale:g}",
                  r.description)
    console.print(t)


@app.command()
def scenarios() -> None:
    """List the built-in scenarios."""
    from testbed.config.scenario import load_scenario
    t = Table("name", "mechanism", "households", "title")
    for name in builtin("scenarios"):
        s = load_scenario(name)
        t.add_row(name, s.mechanism, str(len(s.households)), s.title)
    t.add_row(COMMUNITY, "cesdt", "--households (100)",
              "CE-SDT community day, Sydney in November (docs/community.md)")
    console.print(t)


def _register_subcommands() -> None:
    from testbed.cli import agents as agents_cli
    from testbed.cli import community as community_commands
    from testbed.cli import instrument as instrument_cli
    from testbed.cli import lab as lab_cli
    from testbed.cli import ledger as ledger_cli

    instrument_cli.register(app)
    lab_cli.register(app)
    agents_cli.register(app)
    ledger_cli.register(app)
    community_commands.register(app)


_register_subcommands()
from testbed.cli import web as web_cli  # noqa: E402  (serve and report, issue 6)

web_cli.register(app)


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.exit(1)


if __name__ == "__main__":
    main()
