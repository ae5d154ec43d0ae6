"""A battery of two instruments: a BMS (readings) beside a bidirectional converter (power).

The rig names them in the battery's table (``bms = {...}``, ``converter = {...}``, driver
``split``); each is its own instrument with its own resource and file, Modbus or SCPI. The
controller sees one :class:`~drivers.roles.Battery`: the BMS's state of charge, energy,
voltage, current, temperature and alarms, and the converter's power and enable state.
"""

from __future__ import annotations

from typing import Any

from drivers.roles import BatteryReading


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
