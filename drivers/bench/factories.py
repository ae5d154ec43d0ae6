"""The ``scpi`` and ``modbus`` entries of the driver registry.

A factory checks everything a rig file can get wrong before a run starts (resource form,
instrument model, protocol and role), then returns an unconnected driver: it connects on
its first call and releases its link in ``close()``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from drivers.bench.base import InstrumentDevice
from drivers.bench.health import DefectiveDevices
from drivers.bench.links import LinkPool
from drivers.bench.modbus_devices import MODBUS_ROLES
from drivers.bench.scpi_devices import SCPI_ROLES
from drivers.instruments.model import ModbusMap, ScpiCommandSet, load_instrument
from drivers.protocol.modbus import ModbusLink, silent_interval
from drivers.protocol.scpi import ScpiLink, ScpiQuirks
from drivers.resources import Resource, parse_resource
from drivers.spec import DeviceSpec, DriverConfigError
from drivers.transport.factory import open_transport

if TYPE_CHECKING:
    from drivers.registry import BuildContext

# Rig-file params that tune the link (a VISA serial string has no place for the baud rate).
LINK_PARAMS = {"baud": ("baud", int), "timeout_s": ("timeout_s", float)}


def _shared(ctx: BuildContext) -> tuple[LinkPool, DefectiveDevices]:
    pool = ctx.extras.setdefault("links", LinkPool())
    defects = ctx.extras.setdefault(
        "defects", DefectiveDevices.for_period(ctx.clock, ctx.rig.control_period_s))
    return pool, defects


def _resource(spec: DeviceSpec, protocol: str, timeout_s: float | None = None) -> Resource:
    """The device's resource, tuned by its rig-file params (which win) and the instrument
    file's own timeout."""
    if not spec.resource:
        raise DriverConfigError(f"{spec.name}: driver {spec.driver} needs a resource")
    try:
        resource = parse_resource(spec.resource)
    except ValueError as err:
        raise DriverConfigError(f"{spec.name}: {err}") from None
    if resource.protocol != protocol:
        raise DriverConfigError(f"{spec.name}: resource {spec.resource!r} is not a "
                                f"{protocol} resource (driver {spec.driver})")
    tuned: dict[str, Any] = {} if timeout_s is None else {"timeout_s": timeout_s}
    tuned |= {field: conv(spec.params[key]) for key, (field, conv) in LINK_PARAMS.items()
              if key in spec.params}
    return replace(resource, **tuned)


def _instrument(spec: DeviceSpec, kind: type[Any]) -> Any:
    if not spec.model:
        raise DriverConfigError(f"{spec.name}: driver {spec.driver} needs a model "
                                "(an instrument file name)")
    try:
        instrument = load_instrument(spec.model)
    except ValueError as err:
        raise DriverConfigError(f"{spec.name}: {err}") from None
    if not isinstance(instrument, kind) or spec.role not in instrument.roles:
        raise DriverConfigError(
            f"{spec.name}: instrument {spec.model} ({instrument.protocol}, roles "
            f"{', '.join(instrument.roles)}) cannot serve role {spec.role} on driver "
            f"{spec.driver}")
    return instrument


def scpi_factory(spec: DeviceSpec, household: str | None, ctx: BuildContext) -> InstrumentDevice:
    instrument: ScpiCommandSet = _instrument(spec, ScpiCommandSet)
    resource = _resource(spec, "scpi", instrument.timeout_s)
    pool, defects = _shared(ctx)
    device = SCPI_ROLES[spec.role](spec, resource, ctx.clock, pool,
                                   lambda: scpi_link_for(instrument, resource), defects,
                                   ctx.rig.control_period_s, instrument=instrument,
                                   bus_voltage_v=ctx.rig.bus_voltage_v,
                                   read_only=ctx.read_only)
    device.link.allow_busy(ctx.rig.control_period_s / 2)
    return device


def modbus_factory(spec: DeviceSpec, household: str | None,
                   ctx: BuildContext) -> InstrumentDevice:
    instrument: ModbusMap = _instrument(spec, ModbusMap)
    resource = _resource(spec, "modbus", instrument.timeout_s)
    pool, defects = _shared(ctx)
    device = MODBUS_ROLES[spec.role](spec, resource, ctx.clock, pool,
                                     lambda: ModbusLink(resource), defects,
                                     ctx.rig.control_period_s, instrument=instrument,
                                     read_only=ctx.read_only)
    device.link.allow_busy(ctx.rig.control_period_s / 2)
    _quiet_for(device.link, instrument, resource)
    return device


def _quiet_for(link: ModbusLink, instrument: ModbusMap, resource: Resource) -> None:
    """On an RTU line, the silence this device needs before a request (its own silent
    interval, else 3.5 characters at the baud, plus its turnaround)."""
    if resource.link == "serial":
        silent = instrument.rtu_silent_s
        link.need_quiet((silent_interval(resource.baud) if silent is None else silent)
                        + instrument.turnaround_s)


def scpi_link_for(instrument: ScpiCommandSet, resource: Resource) -> ScpiLink:
    """An unopened SCPI link to ``resource`` speaking as ``instrument``'s file says
    (terminator, error query, remote lines and the other quirks)."""
    quirks = ScpiQuirks(instrument.remote, instrument.settle_s, instrument.opc,
                        instrument.echo, instrument.read_terminator, instrument.busy_errors)
    return ScpiLink(lambda: open_transport(resource), timeout_s=resource.timeout_s,
                    terminator=instrument.terminator, error_query=instrument.error_query,
                    quirks=quirks)


def modbus_link_for(instrument: ModbusMap, resource: Resource) -> ModbusLink:
    """An unopened Modbus link of its own to ``resource`` (an operator's session; a rig's
    devices share theirs through the link pool), quiet as the instrument needs."""
    link = ModbusLink(resource)
    _quiet_for(link, instrument, resource)
    return link


FACTORIES = {"scpi": scpi_factory, "modbus": modbus_factory}
