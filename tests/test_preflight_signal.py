"""A signal that lands inside pre-flight's synchronous part (issue 15 item 4).

Pre-flight computes, without an await, the rig's ratings and every setpoint of the day
(``preflight.check``), the link budget of the serial lines (``budget.over_budget``), the lab
plan (``preflight.lab_plan``, once every instrument has answered and taken its set-up) and
what a dead controller would leave on (``preflight.unwatched``). A SIGINT or SIGTERM raised
from inside each of them (``signal.raise_signal``: the handler runs there, in the middle of
the computation) is acted on at the run's next await: ``testbed run`` exits 130 with one
closing line and no traceback, and every output is off and every relay open, read back
over the wire from the protocol emulators (run in a thread of this process, the command
in-process through Typer's runner).
"""

from __future__ import annotations

import asyncio
import importlib
import signal
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from typer.testing import CliRunner

from drivers.emulators.bench import EmulatedBench
from drivers.emulators.toml_out import dumps
from testbed.cli.app import app
from testbed.config.rig import load_rig
from testbed.run.bench import check_rig

T = TypeVar("T")
# (module, function, what the closing line says): each a synchronous step of pre-flight, in
# the order a run meets them. Before the instruments are asked nothing is on; the lab plan
# and the unwatched outputs come once the run is recorded and every instrument has taken
# its set-up: the stop then goes through the safe state and its read-back.
NOTHING_ON = "nothing had been switched on"
READ_BACK = "every output off, every relay open (read back)"
STEPS = [("testbed.run.preflight", "check", NOTHING_ON),
         ("drivers.bench.budget", "over_budget", NOTHING_ON),
         ("testbed.run.preflight", "lab_plan", READ_BACK),
         ("testbed.run.preflight", "unwatched", READ_BACK)]


class EmulatorThread:
    """The mock rig's protocol emulators on an event loop of their own, in a thread."""

    def __init__(self, rig_file: Path) -> None:
        self.rig_file = rig_file
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.emu: EmulatedBench | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete,
                                        args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with EmulatedBench(load_rig("mock")) as emu:
            self.emu = emu
            self.rig_file.write_text(dumps(emu.rig_dict(time_scale=2880)), "utf-8")
            self._ready.set()
            await self._stop.wait()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        assert self._ready.wait(60), "the emulators did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self.loop.close()


def _raising_inside(sig: signal.Signals, original: Callable[..., T],
                    landed: list[str]) -> Callable[..., T]:
    def step(*args: Any, **kwargs: Any) -> T:
        if not landed:
            landed.append(original.__name__)
            signal.raise_signal(sig)  # the handler runs here, then the step goes on
        return original(*args, **kwargs)
    return step


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize(("module", "name", "said"), STEPS)
def test_a_signal_inside_synchronous_preflight_ends_safe(
        tmp_path: Path, module: str, name: str, said: str, sig: signal.Signals,
        handlers_kept: None, monkeypatch: pytest.MonkeyPatch) -> None:
    landed: list[str] = []
    target = importlib.import_module(module)
    monkeypatch.setattr(target, name, _raising_inside(sig, getattr(target, name), landed))
    rig = tmp_path / "lab.toml"
    with EmulatorThread(rig) as emulators:
        result = CliRunner().invoke(app, ["run", "scenario2", "--rig", str(rig), "--db",
                                          str(tmp_path / "p.db"), "--quiet"])
        assert landed == [name], f"the signal was never raised inside {name}"
        err = result.stderr
        assert result.exit_code == 130, (result.exit_code, err, result.exception)
        assert "Traceback" not in err + result.stdout
        closing = [line for line in err.splitlines() if line.startswith("stopped by")]
        assert len(closing) == 1 and closing[0].startswith(f"stopped by {sig.name}: {said}"), err
        lab = load_rig(str(rig))
        states = {r.device: (r.ok, r.error, r.state)
                  for r in emulators.call(check_rig(lab))}
        assert all(ok for ok, _, _ in states.values()), states
        outputs = [s["output"] for _, _, s in states.values() if "output" in s]
        relays = [s["relay"] for _, _, s in states.values() if "relay" in s]
        assert len(outputs) == 30 and set(outputs) == {"off"}, states
        assert len(relays) == 10 and set(relays) == {"open"}, states
        assert emulators.emu is not None
        plant = emulators.emu.plant
        assert not any(r.relay_closed or r.pv.on or r.battery.enabled
                       for r in plant.rigs.values())
