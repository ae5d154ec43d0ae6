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
    out = tmp_path / "lab.toml"
    thread, loop, stop = _start(out, [], ["household 3 meter=no_reply", "grid=exception"])
    try:
        result = CliRunner().invoke(_app(), ["rig", "check", str(out), "--json"])
        assert result.exit_code == 1
        rows = {r["device"]: r for r in json.loads(result.output)}
        assert not rows["household 3 meter"]["ok"] and not rows["grid"]["ok"]
        assert "Modbus exception 4" in rows["grid"]["error"]
        assert sum(not r["ok"] for r in rows.values()) == 2
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
