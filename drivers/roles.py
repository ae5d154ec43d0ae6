"""Device roles: what the controller may ask of each kind of instrument on a rig.

Every driver (a real instrument over Modbus or SCPI, or the in-process mock) implements
one of these. Powers are lab watts at the rig's bus connection, signed so that positive
means *into the bus* (export) for sources and the battery, and drawn for loads. Every
reading carries the lab time it was taken, so the controller can tell fresh from stale.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable


# Readings are named tuples: immutable, typed, and built in a third of a frozen
# dataclass's time (a mock day builds 30,000 of them; a frozen dataclass sets each field
# through ``object.__setattr__``). ``reading._replace(field=value)`` gives a changed copy.
class PowerReading(NamedTuple):
    at: float
    voltage_v: float
    current_a: float
    power_w: float
    on: bool


class BatteryReading(NamedTuple):
    at: float
    soc: float  # 0..1
    energy_wh: float
    power_w: float  # + discharging into the bus, - charging
    voltage_v: float
    current_a: float
    temperature_c: float
    enabled: bool
    alarms: tuple[str, ...] = ()


class MeterReading(NamedTuple):
    at: float
    import_wh: float  # energy drawn from the bus by the rig (or from the grid, at the grid node)
    export_wh: float  # energy delivered onto the bus
    power_w: float  # + export
    voltage_v: float
    current_a: float
    resolution_wh: float = 0.0  # one count of the energy registers (0: a float counter)

    @property
    def net_wh(self) -> float:
        return self.export_wh - self.import_wh


@runtime_checkable
class Device(Protocol):
    @property
    def name(self) -> str: ...

    async def identify(self) -> str: ...

    async def safe_state(self) -> None:
        """Outputs off, relay open: what any failure must leave behind."""
        ...

    async def close(self) -> None: ...


class PVSupply(Device, Protocol):
    """A programmable DC supply emulating the household's PV array."""

    async def set_power(self, watts: float) -> None: ...

    async def set_output(self, on: bool) -> None: ...

    async def read(self) -> PowerReading: ...


class ElectronicLoad(Device, Protocol):
    """An electronic load in constant-power mode drawing the household's consumption."""

    async def set_power(self, watts: float) -> None: ...

    async def set_input(self, on: bool) -> None: ...

    async def read(self) -> PowerReading: ...


class Battery(Device, Protocol):
    """A battery module: BMS readings and a bidirectional converter's power setpoint."""

    async def set_power(self, watts: float) -> None:
        """+ discharge into the bus, - charge from it."""
        ...

    async def set_enabled(self, on: bool) -> None: ...

    async def read(self) -> BatteryReading: ...


class Meter(Device, Protocol):
    async def read(self) -> MeterReading: ...


class Relay(Device, Protocol):
    async def set_closed(self, closed: bool) -> None: ...

    async def read_closed(self) -> bool: ...


class GridNode(Device, Protocol):
    """The voltage-forming node that balances the bus; reads its own meter."""

    async def set_enabled(self, on: bool) -> None: ...

    async def read(self) -> MeterReading: ...


ROLES = ("pv", "battery", "load", "meter", "relay")
