"""Turns a rig spec into live drivers: one table from driver name to factory, no if-chains.

Later drivers (SCPI, Modbus) register here beside ``mock``; every device comes back
wrapped in the limit guard, so no write reaches an instrument unchecked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drivers.clock import Clock
from drivers.limits import GuardedBattery, GuardedLoad, GuardedPV
from drivers.mock.devices import MOCK_ROLES
from drivers.mock.plant import Plant
from drivers.roles import Battery, Device, ElectronicLoad, GridNode, Meter, PVSupply, Relay
from drivers.spec import DeviceSpec, HouseholdSpec, RigSpec


@dataclass
class BuildContext:
    rig: RigSpec
    clock: Clock
    plant: Plant | None = None  # created on first use by a mock device
    extras: dict[str, Any] = field(default_factory=dict)
    read_only: bool = False  # instrument drivers refuse every write (``rig check``)

    def mock_plant(self) -> Plant:
        if self.plant is None:
            self.plant = Plant.from_rig(self.rig, start=self.clock.now())
        return self.plant


Factory = Callable[[DeviceSpec, str | None, BuildContext], Any]


def _mock(spec: DeviceSpec, household: str | None, ctx: BuildContext) -> Any:
    return MOCK_ROLES[spec.role](ctx.mock_plant(), ctx.clock, spec.name, household)


def _scpi(spec: DeviceSpec, household: str | None, ctx: BuildContext) -> Any:
    from drivers.bench.factories import scpi_factory  # pyserial and sockets: only when used

    return scpi_factory(spec, household, ctx)


def _modbus(spec: DeviceSpec, household: str | None, ctx: BuildContext) -> Any:
    from drivers.bench.factories import modbus_factory  # pymodbus: only when used

    return modbus_factory(spec, household, ctx)


def _split(spec: DeviceSpec, household: str | None, ctx: BuildContext) -> Any:
    """A role served by two instruments (:mod:`drivers.bench.split`): a battery (its
    ``bms`` and ``converter``) or the grid node (its ``supply`` and ``load``)."""
    from drivers.bench.split import SPLIT_ROLES

    kind, keys = SPLIT_ROLES[spec.role]
    return kind(spec.name, *(build_device(spec.parts[k], household, ctx) for k in keys))


DRIVERS: dict[str, Factory] = {"mock": _mock, "scpi": _scpi, "modbus": _modbus,
                               "split": _split}


class UnknownDriver(KeyError):
    pass


def build_device(spec: DeviceSpec, household: str | None, ctx: BuildContext) -> Any:
    """The unguarded driver of ``spec`` (a role driver, see :mod:`drivers.roles`).

    Raises :class:`UnknownDriver` for a driver name the registry does not know."""
    try:
        factory = DRIVERS[spec.driver]
    except KeyError:
        raise UnknownDriver(
            f"{spec.name}: unknown driver {spec.driver!r} (known: {', '.join(sorted(DRIVERS))})"
        ) from None
    return factory(spec, household, ctx)


@dataclass
class HouseholdDevices:
    """One household's rig: the power-setting roles behind the limit guard."""

    id: str
    pv: PVSupply  # each of the three behind its limit guard (drivers.limits)
    battery: Battery
    load: ElectronicLoad
    meter: Meter
    relay: Relay

    def all(self) -> list[Device]:
        return [self.pv, self.battery, self.load, self.meter, self.relay]


@dataclass
class Bench:
    """Every live driver of a rig, built from its spec."""

    rig: RigSpec
    households: dict[str, HouseholdDevices]
    grid: GridNode
    ctx: BuildContext

    def devices(self) -> list[Device]:
        return [d for h in self.households.values() for d in h.all()] + [self.grid]

    @property
    def in_process(self) -> bool:
        """Every device is an in-process mock: no call ever waits on a wire."""
        specs = [d for h in self.rig.households for d in h.devices.values()] + [self.rig.grid]
        return all(s.driver == "mock" for s in specs)


def build_household(h: HouseholdSpec, ctx: BuildContext) -> HouseholdDevices:
    """Drivers for one household; every write of power passes the limit guard."""
    d, v = h.devices, ctx.rig.bus_voltage_v
    return HouseholdDevices(
        h.id,
        pv=GuardedPV(build_device(d["pv"], h.id, ctx), d["pv"], voltage_v=v),
        battery=GuardedBattery(build_device(d["battery"], h.id, ctx), d["battery"],
                               voltage_v=v),
        load=GuardedLoad(build_device(d["load"], h.id, ctx), d["load"], voltage_v=v),
        meter=build_device(d["meter"], h.id, ctx),
        relay=build_device(d["relay"], h.id, ctx))


def build_bench(rig: RigSpec, clock: Clock, *, read_only: bool = False) -> Bench:
    """Every driver of ``rig``; ``read_only``: instrument drivers send no set-up and refuse
    every write (:class:`~drivers.bench.base.ReadOnlyDevice`), for looking at a bench."""
    ctx = BuildContext(rig, clock, read_only=read_only)
    households = {h.id: build_household(h, ctx) for h in rig.households}
    return Bench(rig, households, build_device(rig.grid, None, ctx), ctx)
