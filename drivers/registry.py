"""Turns a rig spec into live drivers: one table from driver name to factory, no if-chains.

Later drivers (SCPI, Modbus) register here beside ``mock``; every device comes back
wrapped in the limit guard, so no write reaches an instrument unchecked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drivers.bench.factories import modbus_factory, scpi_factory
from drivers.clock import Clock
from drivers.limits import Guarded
from drivers.mock.devices import MOCK_ROLES
from drivers.mock.plant import Plant
from drivers.spec import DeviceSpec, RigSpec


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


DRIVERS: dict[str, Factory] = {"mock": _mock, "scpi": scpi_factory, "modbus": modbus_factory}


class UnknownDriver(KeyError):
    pass


def build_device(spec: DeviceSpec, household: str | None, ctx: BuildContext) -> Any:
    try:
        factory = DRIVERS[spec.driver]
    except KeyError:
        raise UnknownDriver(
            f"{spec.name}: unknown driver {spec.driver!r} (known: {', '.join(sorted(DRIVERS))})"
        ) from None
    device = factory(spec, household, ctx)
    if spec.role in ("pv", "load", "battery"):
        return Guarded(device, spec, bidirectional=spec.role == "battery",
                       voltage_v=ctx.rig.bus_voltage_v)
    return device


@dataclass
class HouseholdDevices:
    id: str
    pv: Any
    battery: Any
    load: Any
    meter: Any
    relay: Any

    def all(self) -> list[Any]:
        return [self.pv, self.battery, self.load, self.meter, self.relay]


@dataclass
class Bench:
    """Every live driver of a rig, built from its spec."""

    rig: RigSpec
    households: dict[str, HouseholdDevices]
    grid: Any
    ctx: BuildContext

    def devices(self) -> list[Any]:
        return [d for h in self.households.values() for d in h.all()] + [self.grid]


def build_bench(rig: RigSpec, clock: Clock, *, read_only: bool = False) -> Bench:
    """Every driver of ``rig``; ``read_only``: instrument drivers send no set-up and refuse
    every write (:class:`~drivers.bench.base.ReadOnlyDevice`), for looking at a bench."""
    ctx = BuildContext(rig, clock, read_only=read_only)
    households = {
        h.id: HouseholdDevices(h.id, **{role: build_device(h.devices[role], h.id, ctx)
                                        for role in ("pv", "battery", "load", "meter", "relay")})
        for h in rig.households
    }
    return Bench(rig, households, build_device(rig.grid, None, ctx), ctx)
