"""The ``testbed`` command line (typer + rich)."""
# ruff: noqa: E402  (signal handlers are installed before the imports, see testbed.cli.early)


import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

from testbed.cli import early

if Path(sys.argv[0]).name == "testbed":  # the installed script, not an import by a test
    early.install()

import typer  # the handlers above cover this import and those that follow
from rich.markup import escape

from testbed import json_input
from testbed.cli.output import JSON_ERRORS, console, err, fail
from testbed.errors import InputError

# Plain help and usage errors (rich_markup_mode=None): rich's help renderer loads markdown-it,
# a third of `testbed --help` (docs/performance.md, start-up).
app = typer.Typer(help="Hardware-in-the-loop testbed for community P2P energy trading.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode=None)



@app.callback()
def _loaded(ctx: typer.Context) -> None:
    # The garbage collector, off while the program loads (early.install), is on again for
    # every command now; for `run`, once it has imported the run's own modules.
    if ctx.invoked_subcommand != "run":
        early.started()


DB_DEFAULT = Path("testbed.db")
COMMUNITY = "cesdt"  # `testbed run cesdt`: the CE-SDT community day, not a scenario file


CANCEL_REPEAT_S = 0.25  # a stop the run did not act on is repeated this often


def _run_until_signal(coro_factory: Any, closing: Any = None) -> Any:
    """Run the coroutine made by ``coro_factory(controller_hook)`` with signals wired.

    SIGINT/SIGTERM cancel the run, so its ``finally`` puts the bench in its safe state; a
    second signal while that happens, or after it, is reported and otherwise absorbed, so
    the safe-state writes are never cut short (exit 130). A signal that comes before the
    event loop runs (or while pre-flight work holds it) is kept and acted on at once.
    SIGUSR1 is the emergency stop from the shell (``kill -USR1 PID``). The closing line
    says what the safe state's read-back confirmed, and a run whose safe state is
    incomplete exits 4, naming the devices possibly still live. ``closing()``, when given,
    is the text that follows it: what is on disk and how to resume. The signal's name is
    the cancellation's message, so the run records it as the reason.
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
            insist(sig)

        def insist(sig: signal.Signals) -> None:
            # Python 3.11's asyncio.wait_for (pymodbus awaits every reply with it) returns a
            # reply that lands with the cancellation and drops the cancellation: the run
            # would go on. So cancel again until the run has taken the stop (its safe state
            # then runs shielded, lifecycle.until_done) or is over.
            from testbed.run.lifecycle import STOP_SEEN

            assert task is not None
            if not task.done() and task not in STOP_SEEN:
                task.cancel(sig.name)
                loop.call_later(CANCEL_REPEAT_S, insist, sig)

        pending: list[str] = []  # a stop before the controller exists is kept for it

        def estop() -> None:
            pending.append("SIGUSR1 from the shell")
            for c in controllers:
                c.emergency_stop(pending[0])

        def register(controller: Any) -> None:
            controllers.append(controller)
            if pending:
                controller.emergency_stop(pending[0])

        def relay(signum: int, _frame: Any) -> None:
            loop.call_soon_threadsafe(stop, signal.Signals(signum))

        # Python-level handlers, not loop.add_signal_handler: closing the loop would put the
        # default handlers back (a SIGTERM then kills with 143) before the absorbing ones
        # below are in place. The SIGUSR1 handler's wakeup fd wakes the loop for these too.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, relay)
        loop.add_signal_handler(signal.SIGUSR1, estop)
        try:
            if received:  # a signal before the loop ran: stop at once, nothing started
                raise asyncio.CancelledError(received[0].name)
            return await coro_factory(register)
        finally:  # from here to the process's end, a signal is reported and absorbed
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, absorb)
    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        unconfirmed = [d for c in controllers for d in (c.unconfirmed or [])]
        confirmed = controllers and all(c.unconfirmed is not None for c in controllers)
        after = f"; {closing()}" if closing is not None else ""
        if unconfirmed:
            err.print("[red]stopped by signal; safe state INCOMPLETE, possibly still live: "
                      f"{escape('; '.join(unconfirmed))}{escape(after)}[/red]")
            raise typer.Exit(4) from None
        what = "every output off, every relay open (read back)" if confirmed else \
            "nothing had been switched on"
        err.print(f"[yellow]stopped by {received[0].name if received else 'signal'}: "
                  f"{what}{escape(after)}[/yellow]")
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
    scenario: Annotated[str | None, typer.Argument(
        help="built-in scenario name or a TOML file (with --resume: taken from the run)")
    ] = None,
    rig: Annotated[str | None, typer.Option(
        help="built-in rig name or a rig TOML file [default: mock]")] = None,
    db: Annotated[Path, typer.Option(help="SQLite database for runs and the ledger")] = DB_DEFAULT,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    speed: Annotated[str | None, typer.Option(
        help="time scale override: a number (1440 = a day in a minute, real time) or 'max' "
             "(virtual time, mock rigs only)")] = None,
    junit: Annotated[Path | None, typer.Option(
        help="write JUnit XML: one testcase per trade and per household check")] = None,
    resume: Annotated[str | None, typer.Option(
        help="continue the run with this id from its last committed interval; its "
             "scenario, rig, speed, ledger and agents (a community day: its households, "
             "generating share and seed) come from the run")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", help="no progress display or progress lines while the run goes")] = False,
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
    ha_discovery: Annotated[bool, typer.Option(
        "--ha-discovery", help="with --mqtt: announce the rig's per-device topics to Home "
                               "Assistant (MQTT discovery under homeassistant/)")] = False,
    households: Annotated[int | None, typer.Option(
        help="cesdt: homes in the community (beyond the rig's racks they are simulated) "
             "[default: 100]")] = None,
    generating: Annotated[float | None, typer.Option(
        help="cesdt: share of homes with PV and a battery, in [0, 1] [default: 0.5]")] = None,
    seed: Annotated[int | None, typer.Option(
        help="cesdt: seed of the homes' load and PV types [default: 1]")] = None,
    ledger: Annotated[str | None, typer.Option(
        help="sqlite (the signed ledger), or also the contract on an EVM: 'evm' (embedded "
             "py-evm, needs the evm extra) or 'evm+http://HOST:PORT' (a JSON-RPC node) "
             "[default: sqlite]")] = None,
    agents: Annotated[str | None, typer.Option(
        help="broker of the household agents (households with orders = 'agent'), "
             "mqtt://host[:port], or http://host:port to listen on for agents without MQTT "
             "(docs/agents.md)")] = None,
    gate_s: Annotated[float | None, typer.Option(
        help="seconds each interval's order gate stays open for agents [default: 10]")
    ] = None,
) -> None:
    """Run a market scenario on a rig: clear, route, meter, settle, and record the ledger.

    SCENARIO ``cesdt`` runs a CE-SDT community day (request/offer trading, 1-minute to
    hourly settlement per home) instead of a dual-bidding scenario file.

    At the start it prints the run id, the resume command and the e-stop; while it runs, a
    progress display (a terminal) or one line per market hour (--quiet: neither). Readings
    and events are on disk as they happen; a stop records the interval cut short and why.

    Exits 1 when a validation check fails, 2 on bad input, 3 after an emergency stop or
    the grid node's loss, 4 when the safe state could not be confirmed on every device,
    130 when stopped by a signal.
    """
    # Until the run wires its own handlers (_run_until_signal) nothing touches the bench:
    # a signal ends the process at once, exit 130, one line.
    early.install()
    JSON_ERRORS.set(as_json)
    import uuid

    from contracts.ledger import TxError
    from drivers.bench.health import DeviceUnavailable
    from drivers.spec import DriverConfigError
    from testbed.cli.progress import Launch, RunDisplay, resume_command
    from testbed.config.rig import load_rig
    from testbed.config.scenario import load_scenario
    from testbed.ledger.store import Store
    from testbed.report.terminal import render, summarise
    from testbed.run.controller import EmergencyStop, SafeStateIncomplete
    from testbed.run.lifecycle import EXIT
    from testbed.run.runner import apply_speed, run_scenario
    from testbed.run.validation import write_junit

    # What is loaded by now lives as long as the process: the collector on again, with
    # all of it out of sight for good (early.started; docs/performance.md).
    early.started()
    # MQTT (aiomqtt, paho) is loaded only for a run that publishes.
    telemetry_errors: tuple[type[Exception], ...] = ()
    given: dict[str, Any] = {"scenario": scenario, "rig": rig, "speed": speed, "ledger": ledger,
             "agents": agents, "gate_s": gate_s, "households": households,
             "generating": generating, "seed": seed}
    try:
        if resume is not None:
            given = _resumed_launch(db, resume, given)
        elif scenario is None:
            raise InputError("SCENARIO", "missing: name a scenario (testbed scenarios) or "
                             "give --resume RUN_ID")
        launch: dict[str, Any] = {
            "scenario": given["scenario"], "rig": _argument(given["rig"] or "mock"),
            "speed": given["speed"], "ledger": given["ledger"] or "sqlite",
            "agents": given["agents"],
            "gate_s": 10.0 if given["gate_s"] is None else given["gate_s"]}
        launch["scenario"] = _argument(str(launch["scenario"]))
        community = launch["scenario"] == COMMUNITY
        if community:  # the day's own arguments, kept for --resume
            launch.update({k: COMMUNITY_DEFAULTS[k] if given.get(k) is None else given[k]
                           for k in COMMUNITY_DEFAULTS})
        else:
            _refuse_community_options(given, launch["scenario"])
        if community and junit:
            raise InputError("cesdt", "--junit applies to scenario files; a community day "
                             "reports metered against routed in its summary")
        sc = None if community else load_scenario(launch["scenario"])
        rg, clock = apply_speed(load_rig(launch["rig"]), launch["speed"])
        if mqtt is not None:
            from testbed.telemetry import TelemetryError, parse_broker_url

            telemetry_errors = (TelemetryError,)
            parse_broker_url(mqtt)
        elif ha_discovery:
            raise InputError("--ha-discovery", "announces the MQTT topics: it needs --mqtt URL")
        ledger_kind = launch["ledger"]
        known = ledger_kind in ("sqlite", "evm") or ledger_kind.startswith(
            ("evm+http://", "evm+https://"))
        if not known or (community and ledger_kind != "sqlite"):
            raise InputError(f"--ledger {ledger_kind}", "expected 'sqlite', 'evm' or "
                             "'evm+http://HOST:PORT' (scenario files only)")
    except InputError as e:
        fail(str(e))
    run_id = resume or uuid.uuid4().hex[:12]  # known before the run: it names the topics
    display = RunDisplay(err, Launch(launch["scenario"], launch["rig"], launch["speed"],
                                     str(db)), quiet=quiet)

    def launch_run(observers: list[Any], on_controller: Any) -> Any:
        if sc is None:
            from testbed.run.community_day import run_cesdt_async

            return run_cesdt_async(households=launch["households"],
                                   generating=launch["generating"], seed=launch["seed"],
                                   rig=rg, store=store, progress=False,
                                   observers=observers, clock=clock,
                                   on_controller=on_controller, run_id=run_id,
                                   launch={"launch": launch}, resume=resume)
        if launch["agents"] is not None:
            return _with_agents(launch["agents"], launch["gate_s"], sc, rg, store, clock,
                                resume, run_id, observers, on_controller, ledger_kind,
                                {"launch": launch})
        return run_scenario(sc, rg, store, clock=clock, resume=resume, run_id=run_id,
                            observers=observers, on_controller=on_controller,
                            ledger=ledger_kind, launch={"launch": launch})

    async def start(hook: Any) -> Any:
        if mqtt is None:
            return await launch_run([_safety_printer, display], hook)
        from testbed.telemetry import MqttTelemetry, StopSwitch

        switch = StopSwitch()  # an MQTT stop that comes before the controller still counts

        def attach(controller: Any) -> None:
            hook(controller)
            switch.attach(controller)

        async with MqttTelemetry(mqtt, run_id=run_id, username=mqtt_user,
                                 password=mqtt_password, ca=None if mqtt_ca is None
                                 else str(mqtt_ca), on_estop=switch.trip, rig=rg.name,
                                 ha_discovery=ha_discovery) as tm:
            display.launch.estop_topics = tuple(tm.estop_topics)
            return await launch_run([_safety_printer, display, tm.observer], attach)

    try:
        store = Store(db)
    except InputError as e:
        fail(str(e))

    def closing() -> str:
        """What is on disk, read back, and how to go on."""
        if store.find_run(run_id) is None:  # stopped before the run was recorded
            return f"run {run_id} had not started: nothing was recorded in {store.path}"
        return f"{on_disk(store, run_id)}; resume: {resume_command(run_id, str(db))}"

    try:
        with display:
            outcome = _run_until_signal(start, closing)
    except (InputError, DriverConfigError) as e:  # set-up: a file, resource or model
        fail(str(e))
    except telemetry_errors as e:
        fail(f"--mqtt: {e}")
    except TxError as e:  # no credit: a community day whose bills outgrow its deposits
        fail(f"the ledger refused a block (run {run_id}): {e}; {closing()}", EXIT["fault"])
    except DeviceUnavailable as e:  # a device failed where the run cannot go on without it
        fail(f"{e} (the bench was put in its safe state); {closing()}", EXIT["fault"])
    except SafeStateIncomplete as e:
        fail(f"{e}; {closing()}", code=EXIT["unsafe"])
    except EmergencyStop as e:
        err.print(f"[red]emergency stop ({escape(str(e))}): every output off, every relay "
                  f"open, read back; {escape(closing())}[/red]")
        raise typer.Exit(EXIT["estop"]) from None
    else:
        disk = on_disk(store, run_id)
    finally:
        store.close()
    if sc is None:
        _print_community(outcome, as_json, disk)
        return
    summary = summarise(outcome)
    if junit is not None:
        write_junit(junit, outcome.checks, f"testbed.{sc.name}")
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        render(summary, console)
    err.print(disk, highlight=False, soft_wrap=True)
    failed = summary["validation"]["failed_checks"]
    if failed:
        err.print(f"[red]{len(failed)} validation check(s) failed:[/red]")
        for c in failed:
            err.print(f"  [red]FAIL[/red] {escape(c['suite'])}: {escape(c['name'])}: "
                      f"{escape(c['message'])}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT["checks_failed"])


def on_disk(store: Any, run_id: str) -> str:
    """One sentence naming the run and what the database holds for it, counted there."""
    n = store.on_disk(run_id)
    row = store.run(run_id)
    aborted = (f", {n['aborted_intervals']} aborted interval(s) with "
               f"{n['aborted_readings']} readings" if n["aborted_intervals"] else "")
    return (f"run {run_id} ({row['status']}) on disk in {store.path}: {n['intervals']} "
            f"interval(s), {n['readings']} readings, {n['trades']} trades, {n['blocks']} "
            f"ledger blocks, {n['safety_events']} safety and {n['events']} other events"
            f"{aborted}")


def _argument(name_or_path: str) -> str:
    """A built-in name as it is; a file as its absolute path (a resume may run elsewhere)."""
    path = Path(name_or_path)
    return str(path.resolve()) if path.is_file() else name_or_path


# What --resume takes from the run, and how a given argument is compared with it.
RESUMED: dict[str, Any] = {
    "scenario": _argument, "rig": _argument, "ledger": str, "agents": str,
    "speed": lambda v: format(float(v), "g") if v != "max" else v,
    "gate_s": float, "households": int, "generating": float, "seed": int,
}
# A community day's own options (testbed run cesdt), and their defaults.
COMMUNITY_DEFAULTS: dict[str, Any] = {"households": 100, "generating": 0.5, "seed": 1}


def _refuse_community_options(given: dict[str, Any], scenario: str) -> None:
    """InputError for a community day's option given to a scenario file: it would be
    ignored."""
    for key in COMMUNITY_DEFAULTS:
        if given.get(key) is not None:
            raise InputError(f"--{key} {given[key]}", "applies to a community day (cesdt) "
                             f"only, not to scenario {scenario}")


def _resumed_launch(db: Path, run_id: str, given: dict[str, Any]) -> dict[str, Any]:
    """The scenario, rig, speed, ledger, agents and gate of run ``run_id`` in ``db``, as it
    was started. InputError when the run cannot be resumed, or an argument given differs
    from the run's (``--speed 2 conflicts with the run's speed 1440``)."""
    from testbed.ledger.store import Store
    from testbed.run.lifecycle import resumable

    if not db.is_file():
        raise InputError(f"--db {db}", "no such database: --resume needs the run's database")
    store = Store(db, readonly=True)
    try:
        r = resumable(store, run_id)
    finally:
        store.close()
    stored = r.params.get("launch")
    if stored is None:  # a run started before the launch was kept: built-in names only
        stored = {"scenario": r.row["scenario"], "rig": r.row["rig"], "speed": None,
                  "ledger": "sqlite", "agents": None, "gate_s": None}
        missing = [k for k in ("scenario", "rig") if given[k] is None]
        if missing:
            raise InputError(f"--resume {run_id}", "that run predates resume by id: give "
                             f"its {' and '.join(missing)} as when it started")
    if stored.get("scenario") == COMMUNITY:  # a day started before its options were kept
        stored = {**{k: r.params.get(k) for k in COMMUNITY_DEFAULTS}, **stored}
    out = dict(stored)
    for key, value in given.items():
        if value is None:
            continue
        norm = RESUMED[key]
        theirs = stored.get(key)
        try:
            same = theirs is not None and norm(value) == norm(theirs)
        except ValueError:
            same = False
        if theirs is None and key in ("scenario", "rig"):
            same = True
        if not same:
            flag = "SCENARIO" if key == "scenario" else f"--{key.replace('_', '-')}"
            raise InputError(f"{flag} {value}", f"conflicts with run {run_id}, which was "
                             f"started with {key} {theirs if theirs is not None else 'unset'}: "
                             "--resume takes it from the run (leave it out)")
        out[key] = value
    return out


async def _with_agents(url: str, gate_s: float, sc: Any, rg: Any, store: Any, clock: Any,
                       resume: str | None, run_id: str, observers: list[Any],
                       on_controller: Any, ledger: str, launch: dict[str, Any]) -> Any:
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
                                      orders=source, gate_s=gate_s, launch=launch)
    except (OSError, aiomqtt.MqttError) as e:
        raise InputError("--agents", f"broker {url}: {e}") from None


def _print_community(summary: dict[str, Any], as_json: bool, disk: str) -> None:
    from testbed.run.community_day import render_cesdt

    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        render_cesdt(summary, console)
    err.print(disk, highlight=False, soft_wrap=True)
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
    from rich.table import Table

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
    from rich.table import Table

    from contracts.dual_bidding import clear as clear_book
    from contracts.numbers import exact
    from contracts.orders import OrderError, parse_book
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
    from rich.table import Table

    from rigs import builtin
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
    from rich.table import Table

    from rigs import builtin
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
from testbed.cli import web as web_cli  # (serve and report, issue 6)

web_cli.register(app)


def _stop_early(_signum: int, _frame: Any) -> None:
    """SIGTERM before a command installs its own handling (start-up, imports, reading the
    files) ends the process as Ctrl-C does, exit 130, never with the default 143: nothing
    has touched the bench yet."""
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_early)
    try:
        app()
    except KeyboardInterrupt:  # a signal while typer builds the command, before it runs
        os.write(2, b"stopped by a signal while starting: nothing had been switched on\n")
        os._exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except SystemExit as stop:
        if stop.code != 130:
            raise
        # Stopped by a signal, the bench safe and the data on disk: leave now. The
        # interpreter's shutdown would put the default handlers back first, so one more
        # SIGTERM in that window would end the process with 143 instead of 130.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


if __name__ == "__main__":
    main()
