"""`testbed emulate` and `testbed rig check`, through Typer as an operator runs them."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from drivers.emulators.bench import EmulatedBench
from testbed.cli.lab import register
from testbed.config.rig import load_rig
from testbed.run.bench import check_rig, serve_emulated
from tests.drivers.conftest import emulated_rig


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """testbed (test stand-in for the main CLI)."""

    register(app)
    return app


def _start(out: Path, faults: list[str], extra: list[str]) -> tuple[threading.Thread,
                                                                  asyncio.AbstractEventLoop,
                                                                  asyncio.Event]:
    faults.extend(extra)
    ready = threading.Event()
    holder: dict[str, object] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        holder["loop"] = loop

        async def main() -> None:
            holder["stop"] = stop = asyncio.Event()
            ready.set()
            await serve_emulated(load_rig("mock"), out, time_scale=2880, control_period_s=0.1,
                                 faults=faults, stop=stop, console=Console(file=io.StringIO()))

        loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(5)
    deadline = time.monotonic() + 10
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return thread, holder["loop"], holder["stop"]  # type: ignore[return-value]


def _stop(thread: threading.Thread, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    assert not thread.is_alive()


def test_emulate_then_rig_check_json_is_all_ok(tmp_path: Path) -> None:
    out = tmp_path / "lab.toml"
    thread, loop, stop = _start(out, [], [])
    try:
        written = load_rig(str(out))
        original = load_rig("mock")
        assert written.time_scale == 2880 and written.control_period_s == 0.1
        assert written.power_scale == original.power_scale
        for h, o in zip(written.households, original.households, strict=True):
            for role in ("pv", "battery", "load", "meter", "relay"):
                assert h.devices[role].limits == o.devices[role].limits
                assert o.devices[role].params.items() <= h.devices[role].params.items()
                assert h.devices[role].driver in ("scpi", "modbus")
        result = CliRunner().invoke(_app(), ["rig", "check", str(out), "--json"])
        assert result.exit_code == 0, result.output
        rows = json.loads(result.output)
        assert len(rows) == 51 and all(r["ok"] for r in rows)
        assert {"device", "resource", "ok", "latency_ms", "identity", "state"} <= set(rows[0])
        by_name = {r["device"]: r for r in rows}
        assert by_name["household 1 pv"]["state"] == {"output": "off"}
        assert by_name["household 4 load"]["state"] == {"output": "off"}
        assert by_name["household 9 battery"]["state"] == {"output": "off"}
        assert by_name["household 10 relay"]["state"] == {"relay": "open"}
        assert by_name["household 2 pv"]["identity"].startswith(
            "testbed-emulator,generic-scpi-supply")  # a DP800 cannot serve 600 W at 48 V

        table = CliRunner().invoke(_app(), ["rig", "check", str(out)])
        assert table.exit_code == 0 and "household 10 relay" in table.output
    finally:
        _stop(thread, loop, stop)


def test_rig_check_exits_1_when_an_instrument_fails(tmp_path: Path) -> None:
    """An instrument that answers, with an error: the check ran and found it, exit 1."""
    out = tmp_path / "lab.toml"
    thread, loop, stop = _start(out, [], ["grid=exception"])
    try:
        result = CliRunner().invoke(_app(), ["rig", "check", str(out), "--json"])
        assert result.exit_code == 1
        rows = {r["device"]: r for r in json.loads(result.output)}
        assert not rows["grid"]["ok"] and not rows["grid"]["unreachable"]
        assert "Modbus exception 4" in rows["grid"]["error"]
        assert sum(not r["ok"] for r in rows.values()) == 1
    finally:
        _stop(thread, loop, stop)


def test_rig_check_exits_2_when_an_instrument_does_not_reply(tmp_path: Path) -> None:
    """No reply at identify (an instrument switched off behind a gateway or on a line):
    a set-up error, one line naming the device, exit 2, and JSON with --json."""
    out = tmp_path / "lab.toml"
    thread, loop, stop = _start(out, [], ["household 3 meter=no_reply", "grid=exception"])
    try:
        result = CliRunner().invoke(_app(), ["rig", "check", str(out), "--json"])
        assert result.exit_code == 2
        report = json.loads(result.stdout)
        assert report["exit"] == 2 and report["error"].startswith("1 of 51 device(s) not "
                                                                 "reachable")
        rows = {r["device"]: r for r in report["results"]}
        assert rows["household 3 meter"]["unreachable"]
        assert not rows["grid"]["ok"] and not rows["grid"]["unreachable"]
        assert sum(not r["ok"] for r in rows.values()) == 2
        errors = result.stderr.splitlines()
        assert len(errors) == 2  # one line per failed device, no traceback
        meter = next(line for line in errors if "household 3 meter" in line)
        assert "not reachable" in meter and "switched on" in meter
        assert any("grid" in line and "Modbus exception 4" in line for line in errors)
        table = CliRunner().invoke(_app(), ["rig", "check", str(out)])
        assert table.exit_code == 2 and "Traceback" not in table.output
    finally:
        _stop(thread, loop, stop)


def test_emulate_refuses_an_unknown_fault_target(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["emulate", "mock", "--write-rig",
                                         str(tmp_path / "x.toml"), "--fault", "nobody=no_reply"])
    assert result.exit_code == 2 and "no device 'nobody'" in result.output


@pytest.mark.asyncio
async def test_check_rig_reports_states_it_reads(small_rig: object) -> None:
    async with EmulatedBench(small_rig) as emu:  # type: ignore[arg-type]
        emu.plant.rigs["2"].relay_closed = True
        emu.plant.rigs["2"].pv.on = True
        results = {r.device: r for r in await check_rig(emulated_rig(emu))}
    assert results["household 2 relay"].state == {"relay": "closed"}
    assert results["household 2 pv"].state == {"output": "on"}
    assert results["household 1 pv"].state == {"output": "off"}
    assert all(r.ok and r.latency_ms > 0 for r in results.values())


def _switched_off_lab3(tmp_path: Path) -> Path:
    """The university-lab3-supply-load bench with every instrument switched off: its TCP
    addresses a loopback port nothing listens on, its RS-485 adapters unplugged."""
    import re
    import socket

    from rigs import builtin

    with socket.socket() as sock:  # a port that was free a moment ago: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    text = builtin("rigs")["university-lab3-supply-load"].read_text()
    text = re.sub(r"192\.168\.1\.\d+::\d+", f"127.0.0.1::{port}", text)
    text = re.sub(r"192\.168\.1\.\d+:502", f"127.0.0.1:{port}", text)
    text = text.replace("/dev/ttyUSB", f"{tmp_path}/ttyUSB")
    path = tmp_path / "off.toml"
    path.write_text(text)
    return path


def test_rig_check_of_a_switched_off_bench_is_a_set_up_error(tmp_path: Path) -> None:
    rig = _switched_off_lab3(tmp_path)
    for command in (["rig", "check", str(rig)], ["rig", "safe", str(rig)]):
        result = CliRunner().invoke(_app(), [*command, "--json"])
        assert result.exit_code == 2, result.output
        report = json.loads(result.stdout)
        assert report["exit"] == 2 and report["error"].startswith("16 of 16 device(s) not "
                                                                 "reachable")
        assert all(r["unreachable"] for r in report["results"])
        lines = result.stderr.splitlines()
        assert len(lines) == 16 and all(line.startswith("error: ") for line in lines)
        # the grid node's part that was asked (check: the supply first; safe: the load)
        assert any(line.startswith(("error: grid supply at TCPIP::127.0.0.1::",
                                    "error: grid load at TCPIP::127.0.0.1::"))
                   and "not reachable" in line for line in lines)
        assert "Traceback" not in result.output
        table = CliRunner().invoke(_app(), command)
        assert table.exit_code == 2 and len(table.stderr.splitlines()) == 16


def test_rig_check_set_up_errors_in_the_rig_file_are_one_line_exit_2(tmp_path: Path) -> None:
    rig = _switched_off_lab3(tmp_path)
    text = rig.read_text()
    cases = {  # what the operator got wrong -> what the one line must name
        "bad resource": (text.replace('resource = "TCPIP::127.0.0.1::', 'resource = "TCPIP::',
                                      1), "key 'resource'"),
        "missing instrument file": (text.replace('model = "rigol-dp800"',
                                                 'model = "./no-such-file.toml"'),
                                    "key 'model'"),
        "instrument that cannot serve the role": (
            text.replace('model = "rigol-dp800"', 'model = "generic-scpi-load"'),
            "grid supply: instrument generic-scpi-load (scpi, roles load) cannot serve role "
            "grid_source"),
    }
    for name, (body, named) in cases.items():
        path = tmp_path / f"{name.replace(' ', '-')}.toml"
        path.write_text(body)
        for extra in (["--json"], []):
            result = CliRunner().invoke(_app(), ["rig", "check", str(path), *extra])
            assert result.exit_code == 2, (name, result.output)
            assert len(result.stderr.splitlines()) == 1 and named in result.stderr, name
            assert "Traceback" not in result.output
            if extra:
                assert json.loads(result.stdout) == {"error": result.stderr[7:].strip(),
                                                     "exit": 2}
