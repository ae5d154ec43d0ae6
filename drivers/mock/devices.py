"""In-process mock drivers: the device roles, served straight from the shared plant.

Each call first brings the plant up to the clock's now, so readings are exact integrals of
the setpoints written so far, under a virtual clock as under a real one.
"""

from __future__ import annotations

from drivers.clock import Clock
from drivers.mock.plant import Plant, RigModel
from drivers.roles import BatteryReading, MeterReading, PowerReading


class _MockDevice:
    #: The rig model the device belongs to (the grid node has none): the plant's rigs are
    #: made once, with the plant, so each device looks its own up once, not per call.
    rig: RigModel

    def __init__(self, plant: Plant, clock: Clock, name: str, rig_id: str | None = None) -> None:
        self.plant = plant
        self.clock = clock
        self.name = name
        self._rig_id = rig_id
        if rig_id is not None:
            self.rig = plant.rigs[rig_id]

    def _sync(self) -> float:
        now = self.clock.now()
        plant = self.plant
        if now > plant.t:  # most calls of a control period share one instant
            plant.advance_to(now)
        return now

    async def identify(self) -> str:
        return f"testbed,mock-{type(self).__name__.removeprefix('Mock').lower()},{self.name},1.0"

    async def close(self) -> None:
        return None

    def _v(self) -> float:
        return self.plant.bus_voltage_v


class MockPV(_MockDevice):
    async def set_power(self, watts: float) -> None:
        self._sync()
        self.rig.pv.setpoint_w = watts

    async def set_output(self, on: bool) -> None:
        self._sync()
        self.rig.pv.on = on

    async def read(self) -> PowerReading:
        at = self._sync()
        p = self.rig.pv.output() if self.rig.relay_closed else 0.0
        return PowerReading(at, self._v(), p / self._v(), p, self.rig.pv.on)

    async def safe_state(self) -> None:
        await self.set_output(False)


class MockLoad(_MockDevice):
    async def set_power(self, watts: float) -> None:
        self._sync()
        self.rig.load.setpoint_w = watts

    async def set_input(self, on: bool) -> None:
        self._sync()
        self.rig.load.on = on

    async def read(self) -> PowerReading:
        at = self._sync()
        p = self.rig.load.draw() if self.rig.relay_closed else 0.0
        return PowerReading(at, self._v(), p / self._v(), p, self.rig.load.on)

    async def safe_state(self) -> None:
        await self.set_input(False)


class MockBattery(_MockDevice):
    async def set_power(self, watts: float) -> None:
        self._sync()
        self.rig.battery.setpoint_w = watts

    async def set_enabled(self, on: bool) -> None:
        self._sync()
        self.rig.battery.enabled = on
        if not on:
            self.rig.battery.setpoint_w = 0.0

    async def read(self) -> BatteryReading:
        at = self._sync()
        b = self.rig.battery
        v = self.plant.bus_voltage_v
        # ``firmware_energy_gain`` (a rig param) lets a test play a miscalibrated BMS.
        energy = b.energy_wh * self.plant.firmware_gain.get(self.name, 1.0)
        return BatteryReading(at, energy / b.capacity_wh, energy, b.actual_w, v,
                              b.actual_w / v, b.temperature_c, b.enabled,
                              tuple(sorted(b.alarms)) if b.alarms else ())

    async def safe_state(self) -> None:
        await self.set_enabled(False)


class MockMeter(_MockDevice):
    async def read(self) -> MeterReading:
        at = self._sync()
        m = self.rig.meter
        v = self.plant.bus_voltage_v
        return MeterReading(at, m.import_wh, m.export_wh, m.power_w, v, m.power_w / v)

    async def safe_state(self) -> None:
        return None


class MockRelay(_MockDevice):
    async def set_closed(self, closed: bool) -> None:
        self._sync()
        self.rig.relay_closed = closed

    async def read_closed(self) -> bool:
        self._sync()
        return self.rig.relay_closed

    async def safe_state(self) -> None:
        await self.set_closed(False)


class MockGrid(_MockDevice):
    async def set_enabled(self, on: bool) -> None:
        self._sync()
        self.plant.grid.enabled = on

    async def read(self) -> MeterReading:
        at = self._sync()
        m = self.plant.grid.meter
        return MeterReading(at, m.import_wh, m.export_wh, m.power_w, self._v(),
                            m.power_w / self._v())

    async def safe_state(self) -> None:
        return None  # the grid node stays up to hold the bus while rigs disconnect


MOCK_ROLES: dict[str, type[_MockDevice]] = {
    "pv": MockPV,
    "load": MockLoad,
    "battery": MockBattery,
    "meter": MockMeter,
    "relay": MockRelay,
    "grid": MockGrid,
}
