"""SCPI supplies and loads by role: the PV supply, the electronic load, a battery's
converter and the grid node (bidirectional supplies).

Which lines to send comes from the instrument's command set; how a power setpoint becomes
a setting (constant current into the bus, or native constant power) is its ``setpoint``.
"""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial
from typing import Any

from drivers.bench.base import InstrumentDevice, ReadbackMismatch, watchdog_seconds
from drivers.instruments.model import ScpiCommandSet
from drivers.protocol.scpi import ScpiLink
from drivers.roles import MeterReading, PowerReading
from drivers.transport.base import LinkError


class ScpiPowerDevice(InstrumentDevice):
    """A supply or load whose power, switch and measurements are SCPI commands."""

    switch = "output"  # the command that turns it on: output (supply) or input (load)
    link: ScpiLink

    def __init__(self, *args: Any, instrument: ScpiCommandSet, bus_voltage_v: float,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instrument = instrument
        self.bus_voltage_v = bus_voltage_v
        self.channel = int(self.spec.params.get("channel", instrument.channel))

    def _setting(self, command: str, value: Any) -> str:
        return self.instrument.command(command).setting(value, self.channel)

    async def _query(self, command: str) -> Any:
        cmd = self.instrument.command(command)
        reply = await self.link.query(cmd.query(self.channel))
        try:
            return cmd.parse(reply)
        except ValueError:  # garbled on the line: a link fault, worth a fresh connection
            raise LinkError(f"{self.link.description}: unreadable reply {reply!r} "
                            f"to {cmd.query(self.channel)!r}") from None

    async def _setup(self) -> None:
        for init in self.instrument.init:
            await self._setup_step(repr(init), partial(self.link.write, init))
        if self.instrument.setpoint == "current":
            ceiling = self.spec.limits.max_voltage_v or float("inf")
            volts = min(self.bus_voltage_v * self.instrument.voltage_headroom, ceiling)
            line = self._setting("voltage", volts)
            await self._setup_step(repr(line), lambda: self.link.write(line))
        if self.instrument.watchdog is not None:  # armed last: fed by every later setting
            arm = self._setting(self.instrument.watchdog,
                                watchdog_seconds(self.spec, self.period_s))
            await self._setup_step(repr(arm), lambda: self.link.write(arm))

    async def identify(self) -> str:
        return str(await self._run("identify", lambda: self._query("identify")))

    async def set_power(self, watts: float) -> None:
        if self.instrument.setpoint == "current":
            line = self._setting("current", watts / self.bus_voltage_v)
        else:
            line = self._setting("power", watts)
        self._writing(line)
        await self._run(f"set power {watts:g} W", lambda: self.link.write(line))

    async def _switch(self, on: bool, *, always: bool = False) -> None:
        """Turn the output (input) on or off, then read its state back: a mismatch is
        :class:`ReadbackMismatch`."""
        line = self._setting(self.switch, on)
        self._writing(line)
        what = f"{self.switch} {'on' if on else 'off'}"
        await self._run(what, lambda: self.link.write(line), always=always)
        state = await self._run(f"read back {self.switch}", lambda: self._query(self.switch),
                                always=True)
        if bool(state) != on:
            raise ReadbackMismatch(self.name, str(self.resource),
                                   f"{self.switch} reads back {_on_off(bool(state))} after "
                                   f"{_on_off(on)} was sent")

    async def read(self) -> PowerReading:
        async def exchange() -> tuple[float, float, float, bool]:
            return (await self._query("measured_voltage"), await self._query("measured_current"),
                    await self._query("measured_power"), await self._query(self.switch))

        v, i, p, on = await self._run("read", exchange)
        return PowerReading(self.clock.now(), v, i, p, on)

    async def safe_state(self) -> None:
        await self._switch(False, always=True)


class ScpiSupply(ScpiPowerDevice):
    """A DC supply emulating the household's PV array."""

    switch = "output"

    async def set_output(self, on: bool) -> None:
        await self._switch(on)


class ScpiLoad(ScpiPowerDevice):
    """An electronic load drawing the household's consumption."""

    switch = "input"

    async def set_input(self, on: bool) -> None:
        await self._switch(on)


class ScpiConverter(ScpiPowerDevice):
    """A bidirectional supply as a battery's converter: the power setpoint's sign is the
    direction (+ source into the bus, - sink from it), ``output`` enables it."""

    switch = "output"

    async def set_enabled(self, on: bool) -> None:
        await self._switch(on)


class ScpiGrid(ScpiPowerDevice):
    """A bidirectional supply as the grid node: in constant voltage at the rig's
    ``bus_voltage_v`` (set on every connection) it sources what the rigs draw and sinks
    what they export. Readings follow the grid meter's convention: ``power_w`` + bus ->
    grid, that is -V x I with the supply's measured current signed + sourcing (many
    supplies report power unsigned; the current's sign is the direction), ``import_wh``
    grid -> bus.

    A supply has no energy counter: the energies are the trapezoid of its power over the
    clock, sampled once per control period while it is on (a background task started by
    ``set_enabled(True)``, a failed sample skipped) and at every read (``resolution_wh``
    0). They are reported beside the households' metered energies; settlement never uses
    them. Its safe state leaves it on, holding the bus while the rigs disconnect.
    """

    switch = "output"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.import_wh = 0.0
        self.export_wh = 0.0
        self._last: tuple[float, float] | None = None  # (at, bus -> grid W)
        self._sampler: asyncio.Task[None] | None = None

    # + sourcing into the bus (a supply's measured current): the power to the grid is
    # -V x I. A load's measured current is + sinking: +V x I (ScpiGridSink).
    to_grid_sign = -1.0

    def _held_voltage(self) -> float:
        """The constant voltage it holds: the rig's bus voltage."""
        return self.bus_voltage_v

    async def _setup(self) -> None:
        await super()._setup()
        volts = min(self._held_voltage(), self.spec.limits.max_voltage_v or float("inf"))
        line = self._setting("voltage", volts)
        await self._setup_step(repr(line), lambda: self.link.write(line))

    def _integrate(self, at: float, to_grid: float) -> None:
        if self._last is not None:
            before_at, before = self._last
            wh = (before + to_grid) / 2 * max(at - before_at, 0.0) / 3600.0
            if wh >= 0:
                self.export_wh += wh
            else:
                self.import_wh -= wh
        self._last = (at, to_grid)

    async def set_enabled(self, on: bool) -> None:
        await self._switch(on)
        if on and self._sampler is None:
            self._sampler = asyncio.create_task(self._sample(), name=f"{self.name} energy")

    async def _sample(self) -> None:
        """Integrate the node's power once per control period (outside the failure policy:
        a sample that fails is skipped, the next one spans the gap)."""
        while True:
            await self.clock.sleep_until(self.clock.now() + self.period_s)
            with contextlib.suppress(Exception):
                volts = float(await self._query("measured_voltage"))
                amps = float(await self._query("measured_current"))
                self._integrate(self.clock.now(), self.to_grid_sign * volts * amps)

    async def read(self) -> MeterReading:  # type: ignore[override]
        async def exchange() -> tuple[float, float, bool]:
            return (await self._query("measured_voltage"),
                    await self._query("measured_current"), await self._query(self.switch))

        v, i, on = await self._run("read", exchange)
        at = self.clock.now()
        to_grid = self.to_grid_sign * v * i if on else 0.0  # + bus -> grid
        self._integrate(at, to_grid)
        return MeterReading(at, self.import_wh, self.export_wh, to_grid, v,
                            self.to_grid_sign * i if on else 0.0)

    async def safe_state(self) -> None:
        return None  # the grid node stays up to hold the bus while rigs disconnect

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        await super().close()


class ScpiGridSink(ScpiGrid):
    """The load half of a grid node built from a supply plus a load (a rig's
    ``[grid.load]``; the supply half is a :class:`ScpiGrid` of role ``grid_source``, see
    :class:`drivers.bench.split.SplitGrid`). An electronic load in constant voltage (its
    file's ``init`` selects the mode) at ``bus_voltage_v x voltage_headroom``: it draws
    nothing while the supply holds the bus and sinks what the rigs export. Its measured
    current is + sinking, so its power to the grid is +V x I, integrated into
    ``export_wh`` as :class:`ScpiGrid` integrates. Its safe state is its input off, read
    back (no sink left on the bus while the rigs disconnect)."""

    switch = "input"
    to_grid_sign = 1.0

    def _held_voltage(self) -> float:
        return self.bus_voltage_v * self.instrument.voltage_headroom

    async def safe_state(self) -> None:
        await self._switch(False, always=True)


def _on_off(on: bool) -> str:
    return "on" if on else "off"


SCPI_ROLES: dict[str, type[ScpiPowerDevice]] = {"pv": ScpiSupply, "load": ScpiLoad,
                                                "converter": ScpiConverter, "grid": ScpiGrid,
                                                "grid_source": ScpiGrid,
                                                "grid_sink": ScpiGridSink}
