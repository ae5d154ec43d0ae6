"""Roles served by two instruments (driver ``split``).

A battery: a BMS (readings) beside a bidirectional converter (power). The rig names them in
the battery's table (``bms = {...}``, ``converter = {...}``); each is its own instrument
with its own resource and file, Modbus or SCPI. The controller sees one
:class:`~drivers.roles.Battery`: the BMS's state of charge, energy, voltage, current,
temperature and alarms, and the converter's power and enable state.

A grid node: a unidirectional supply (``[grid.supply]``, role ``grid_source``) that sources
into the bus when the community imports, beside an electronic load (``[grid.load]``, role
``grid_sink``) that sinks when it exports. The controller sees one
:class:`~drivers.roles.GridNode` (:class:`SplitGrid`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from drivers.roles import BatteryReading, MeterReading


class SplitBattery:
    """``bms``: a driver whose ``read()`` gives a BatteryReading; ``converter``: a driver
    with ``set_power(watts)`` (+ discharge into the bus), ``set_enabled(on)`` and a
    ``read()`` giving a PowerReading. Errors of either propagate as their own."""

    def __init__(self, name: str, bms: Any, converter: Any) -> None:
        self._name, self.bms, self.converter = name, bms, converter

    @property
    def name(self) -> str:
        return self._name

    async def identify(self) -> str:
        return f"{await self.bms.identify()} + {await self.converter.identify()}"

    async def set_power(self, watts: float) -> None:
        await self.converter.set_power(watts)

    async def set_enabled(self, on: bool) -> None:
        await self.converter.set_enabled(on)

    async def read(self) -> BatteryReading:
        b = await self.bms.read()
        c = await self.converter.read()
        return BatteryReading(c.at, b.soc, b.energy_wh, c.power_w, b.voltage_v, b.current_a,
                              b.temperature_c, c.on, b.alarms)

    async def safe_state(self) -> None:
        """The converter off (read back): the BMS has no output to turn off."""
        await self.converter.safe_state()

    async def close(self) -> None:
        try:
            await self.converter.close()
        finally:
            await self.bms.close()


class SplitGrid:
    """The grid node as a supply plus a load. ``supply`` and ``load``: drivers whose
    ``read()`` gives a :class:`~drivers.roles.MeterReading` from the bus's side (the
    supply's ``import_wh`` is its integrated output, the load's ``export_wh`` its integrated
    input: :class:`drivers.bench.scpi_devices.ScpiGrid` and ``ScpiGridSink``), each with
    ``set_enabled(on)``.

    Its reading: ``import_wh`` = the supply's, ``export_wh`` = the load's (each part's
    other energy is 0 for a one-direction instrument, and added in), ``power_w`` their sum
    (+ bus -> grid), ``voltage_v`` the supply's (it holds the bus), ``current_a`` their
    sum. Errors of either part propagate as their own. Safe state: each part's own (the
    supply stays on, holding the bus while the rigs disconnect; the load's input off)."""

    def __init__(self, name: str, supply: Any, load: Any) -> None:
        self._name, self.supply, self.load = name, supply, load

    @property
    def name(self) -> str:
        return self._name

    async def identify(self) -> str:
        return f"{await self.supply.identify()} + {await self.load.identify()}"

    async def set_enabled(self, on: bool) -> None:
        await self.supply.set_enabled(on)
        await self.load.set_enabled(on)

    async def read(self) -> MeterReading:
        s, ld = await asyncio.gather(self.supply.read(), self.load.read())
        return MeterReading(max(s.at, ld.at), s.import_wh + ld.import_wh,
                            s.export_wh + ld.export_wh, s.power_w + ld.power_w, s.voltage_v,
                            s.current_a + ld.current_a)

    async def safe_state(self) -> None:
        results = await asyncio.gather(self.supply.safe_state(), self.load.safe_state(),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def close(self) -> None:
        try:
            await self.load.close()
        finally:
            await self.supply.close()


# role -> (the driver, its parts' keys in the order it takes them); the rig file's part
# keys and their instrument roles are testbed.config.rig's SPLIT_PARTS.
SPLIT_ROLES: dict[str, tuple[type[Any], tuple[str, ...]]] = {
    "battery": (SplitBattery, ("bms", "converter")),
    "grid": (SplitGrid, ("supply", "load")),
}
