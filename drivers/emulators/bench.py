"""Every instrument of a mock rig, emulated over real protocols, and a rig file pointing at them.

Layout (per household): the PV supply and the load are SCPI instruments on their own TCP
ports (the generic and the Rigol command sets in turn, where the Rigol's ratings can serve
the device's limits), the battery a Modbus TCP
instrument, the meters share one Modbus RTU line (a pseudo-terminal, unit id = household
number) as RS-485 meters do, the relays are coils of 8-channel relay boards on Modbus TCP,
and the grid node is a Modbus TCP instrument. All of them serve one plant, advanced on a
real clock, so what the drivers read is what the in-process mock would have read.

A rig whose devices already name a real instrument (driver ``scpi`` or ``modbus``, a
``model`` and a ``resource``) is served *as written* instead: the same models, transports
(an RTU line stays a serial line, here a pty), shared lines and gateways (one server per
resource link), unit ids and channels; only the addresses are rewritten to loopback
(:meth:`EmulatedBench._as_written`). ``models`` (``--model ROLE=MODEL``) still overrides.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.clock import Clock, RealClock
from drivers.emulators.bindings import (
    BatteryBinding,
    Binding,
    ChannelsBinding,
    ConverterScpiBinding,
    GridBinding,
    GridScpiBinding,
    GridSinkScpiBinding,
    GridSourceScpiBinding,
    LoadBinding,
    MeterBinding,
    RelayBoardBinding,
    SupplyBinding,
)
from drivers.emulators.faults import FAULT_PROTOCOLS, ScheduledFault
from drivers.emulators.modbus_device import EmulatedModbusDevice
from drivers.emulators.modbus_server import ModbusRtuServer, ModbusTcpServer
from drivers.emulators.pty_port import PtyPort
from drivers.emulators.scpi_server import EmulatedScpiDevice, ScpiPtyServer, ScpiTcpServer
from drivers.instruments.model import (
    ModbusMap,
    ScpiCommandSet,
    load_instrument,
    rating_problems,
)
from drivers.mock.plant import Plant
from drivers.resources import Resource, parse_resource
from drivers.spec import DeviceSpec, RigSpec

# Instrument files per role; households take them in turn, so every file gets exercised.
ROLE_MODELS: dict[str, tuple[str, ...]] = {
    "pv": ("generic-scpi-supply", "rigol-dp800"),
    "load": ("generic-scpi-load", "rigol-dl3000"),
    "battery": ("testbed-bms-converter",),
    "meter": ("eastron-sdm630",),
    "relay": ("waveshare-relay8",),
    "grid": ("testbed-grid-node",),
}
RATED: dict[str, tuple[str, ...]] = {  # SCPI command -> the limit keys that rate it
    "current": ("max_current_a",),
    "voltage": ("max_voltage_v",),
    "power": ("max_power_w",),
}
RTU_BAUD = 115200  # unpaced: the pty moves bytes as fast as it can (--pace sets it)
Emulated = EmulatedModbusDevice | EmulatedScpiDevice


@dataclass
class Endpoint:
    """One device of the rig: where its emulated instrument listens, and what it speaks."""

    spec: DeviceSpec
    household: str | None
    model: str
    resource: str
    emulated: Emulated
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


class EmulatedBench:
    def __init__(self, rig: RigSpec, *, host: str = "127.0.0.1", clock: Clock | None = None,
                 models: dict[str, str] | None = None, pace_baud: int | None = None,
                 workdir: str | Path | None = None) -> None:
        self.rig, self.host = rig, host
        self.clock = clock or RealClock()
        self.plant = Plant.from_rig(rig, start=self.clock.now())
        self.models = models or {}
        self.pace_baud = pace_baud
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.workdir = Path(workdir) if workdir else None
        self.endpoints: dict[str, Endpoint] = {}
        self._servers: list[Any] = []
        self._watchdog: asyncio.Task[None] | None = None
        self._schedule: set[asyncio.Task[None]] = set()

    def _model(self, role: str, index: int, spec: DeviceSpec | None = None) -> str:
        """The model for a mock device: ``--model`` if given, else the role's models in
        turn, skipping one whose ratings cannot serve ``spec``'s limits on this bus (a
        30 V supply is no PV for a 48 V bus: pre-flight would refuse the run)."""
        if role in self.models:
            return self.models[role]
        choices = ROLE_MODELS[role]
        for k in range(len(choices)):
            model = choices[(index + k) % len(choices)]
            if spec is None or not rating_problems(load_instrument(model), role,
                                                   spec.limits, self.rig.bus_voltage_v):
                return model
        return choices[index % len(choices)]

    def _identity(self, model: str, name: str) -> str:
        return f"testbed-emulator,{model},{name.replace(' ', '-')},1.0"

    # -- building -------------------------------------------------------------------------
    async def start(self) -> None:
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="testbed-emulate-")
            self.workdir = Path(self._tmp.name)
        households = list(self.rig.households)
        written: list[tuple[DeviceSpec, str | None]] = [
            (spec, h.id) for h in households for device in h.devices.values()
            for spec in (device.parts.values() if device.parts else (device,))
            if self._written(spec)]
        grid = self.rig.grid
        written += [(spec, None) for spec in (grid.parts.values() if grid.parts else (grid,))
                    if self._written(spec)]
        await self._as_written(written)
        done = {spec.name for spec, _ in written} | {  # a role of two instruments: its parts
            d.name for d in (*(h.devices["battery"] for h in households), grid) if d.parts}
        for i, h in enumerate(households):
            for role in ("pv", "load"):
                if h.devices[role].name not in done:
                    await self._scpi(h.devices[role], h.id,
                                     self._model(role, i, h.devices[role]))
            if h.devices["battery"].name not in done:
                await self._modbus_tcp(h.devices["battery"], h.id, self._model("battery", i))
        for role, serve in (("meter", self._meters), ("relay", self._relays)):
            rest = [h for h in households if h.devices[role].name not in done]
            if rest:
                await serve([h.devices[role] for h in rest], [h.id for h in rest])
        if self.rig.grid.name not in done:
            await self._modbus_tcp(self.rig.grid, None, self._model("grid", 0))
        self._watchdog = asyncio.create_task(self._watch(), name="emulator watchdogs")

    def _written(self, spec: DeviceSpec) -> bool:
        """The device names a real instrument (served as written) and no --model overrides
        its role."""
        return spec.driver in ("scpi", "modbus") and bool(spec.model) \
            and bool(spec.resource) and spec.role not in self.models

    async def _as_written(self, devices: list[tuple[DeviceSpec, str | None]]) -> None:
        """One emulated server per resource link of the rig (a gateway, an RS-485 line, a
        multi-channel supply), each device at its own unit id or channel, with its own
        model; the resources rewritten to where the servers listen."""
        links: dict[str, list[tuple[DeviceSpec, str | None, Resource]]] = {}
        for spec, hid in devices:
            resource = parse_resource(str(spec.resource))
            links.setdefault(resource.link_key, []).append((spec, hid, resource))
        for key, members in links.items():
            first = members[0][2]
            if first.protocol == "scpi":
                await self._scpi_link(key, members)
            else:
                await self._modbus_link(key, members, serial=first.link == "serial")

    async def _scpi_link(self, key: str,
                         members: list[tuple[DeviceSpec, str | None, Resource]]) -> None:
        spec0, _, res0 = members[0]
        model = str(spec0.model)
        instrument = load_instrument(model)
        if not isinstance(instrument, ScpiCommandSet):
            raise ValueError(f"{spec0.name}: {model} is not an SCPI instrument")
        device: EmulatedScpiDevice | None = None
        for spec, hid, _ in members:
            if spec.model != model:
                raise ValueError(f"{spec.name}: shares {key} with {spec0.name} but names "
                                 f"model {spec.model}, not {model}")
            channel = int(spec.params.get("channel", instrument.channel))
            binding = self._binding(spec, hid, model, kinds=_SCPI_BINDINGS)
            if device is None:
                device = EmulatedScpiDevice(instrument, binding, channel=channel)
            elif channel in device.bindings:
                raise ValueError(f"{spec.name}: channel {channel} of {key} is taken")
            else:
                device.add_channel(channel, binding)
        assert device is not None
        if res0.link == "serial":
            assert self.workdir is not None
            pty = ScpiPtyServer(device, PtyPort(self.workdir / _slug(key)))
            path = await pty.start()
            self._servers.append(pty)
            resource = f"ASRL{path}::INSTR"
        else:
            server = ScpiTcpServer(device)
            port = await server.start(self.host)
            self._servers.append(server)
            resource = f"TCPIP::{self.host}::{port}::SOCKET"
        for spec, hid, _ in members:
            self._add(spec, hid, model, resource, device)

    async def _modbus_link(self, key: str,
                           members: list[tuple[DeviceSpec, str | None, Resource]],
                           *, serial: bool) -> None:
        units: dict[int, EmulatedModbusDevice] = {}
        boards: dict[int, list[tuple[DeviceSpec, str | None]]] = {}
        shared: dict[int, list[tuple[DeviceSpec, str | None]]] = {}
        for spec, hid, res in members:
            if spec.role == "relay":  # a board: one unit, a coil per household
                boards.setdefault(res.unit, []).append((spec, hid))
                continue
            model = str(spec.model)
            instrument = load_instrument(model)
            if not isinstance(instrument, ModbusMap):
                raise ValueError(f"{spec.name}: {model} is not a Modbus instrument")
            if instrument.channels > 1:  # one unit, a register block per household
                shared.setdefault(res.unit, []).append((spec, hid))
                continue
            if res.unit in units:
                raise ValueError(f"{spec.name}: unit {res.unit} on {key} is taken")
            units[res.unit] = EmulatedModbusDevice(
                instrument, self._binding(spec, hid, model, **_extra(spec, instrument, res)),
                res.unit)
        for unit, group in shared.items():
            if unit in units:
                raise ValueError(f"{group[0][0].name}: unit {unit} on {key} is taken")
            units[unit] = self._channels(key, unit, group)
        for unit, board in boards.items():
            if unit in units:
                raise ValueError(f"{board[0][0].name}: unit {unit} on {key} is taken")
            model = str(board[0][0].model)
            instrument = load_instrument(model)
            assert isinstance(instrument, ModbusMap)
            rig_ids: list[str | None] = [None] * instrument.channels
            for spec, hid in board:
                channel = int(spec.params.get("channel", 0))
                if not 0 <= channel < instrument.channels or rig_ids[channel] is not None:
                    raise ValueError(f"{spec.name}: channel {channel} of {model} on {key} is "
                                     "out of range or taken")
                rig_ids[channel] = hid
            name = f"relay board {key} unit {unit}"
            units[unit] = EmulatedModbusDevice(instrument, RelayBoardBinding(
                self.plant, self.clock, name, self._identity(model, name), rig_ids=rig_ids),
                unit)
        if serial:
            assert self.workdir is not None
            rtu = ModbusRtuServer(units, PtyPort(self.workdir / _slug(key)),
                                  pace_baud=self.pace_baud)
            where = f"modbus+rtu://{await rtu.start()}"
            self._servers.append(rtu)
        else:
            tcp = ModbusTcpServer(units)
            where = f"modbus+tcp://{self.host}:{await tcp.start(self.host)}"
            self._servers.append(tcp)
        for spec, hid, res in members:
            query = f"?baud={res.baud}&unit={res.unit}" if serial else f"?unit={res.unit}"
            self._add(spec, hid, str(spec.model), where + query, units[res.unit])

    def _channels(self, key: str, unit: int,
                  group: list[tuple[DeviceSpec, str | None]]) -> EmulatedModbusDevice:
        """One multi-channel instrument at ``unit`` serving each device of ``group`` on
        the channel its rig file names (its own register block)."""
        spec0 = group[0][0]
        model = str(spec0.model)
        instrument = load_instrument(model)
        assert isinstance(instrument, ModbusMap)
        res = parse_resource(str(spec0.resource))
        bindings: dict[int, Binding] = {}
        for spec, hid in group:
            channel = int(spec.params.get("channel", 0))
            if spec.model != model:
                raise ValueError(f"{spec.name}: shares unit {unit} of {key} with "
                                 f"{spec0.name} but names model {spec.model}, not {model}")
            if not 0 <= channel < instrument.channels or channel in bindings:
                raise ValueError(f"{spec.name}: channel {channel} of {model} on {key} is "
                                 "out of range or taken")
            bindings[channel] = self._binding(spec, hid, model,
                                              **_extra(spec, instrument, res))
        name = f"{model} {key} unit {unit}"
        return EmulatedModbusDevice(instrument, ChannelsBinding(
            self.plant, self.clock, name, self._identity(model, name), channels=bindings),
            unit)

    def _binding(self, spec: DeviceSpec, household: str | None, model: str,
                 kinds: dict[str, type[Binding]] | None = None, **extra: Any) -> Binding:
        args = (self.plant, self.clock, spec.name, self._identity(model, spec.name))
        role_args = (*args, household) if household is not None else args
        return {**_BINDINGS, **(kinds or {})}[spec.role](*role_args, **extra)

    async def _scpi(self, spec: DeviceSpec, household: str, model: str) -> None:
        instrument = load_instrument(model)
        assert isinstance(instrument, ScpiCommandSet)
        ratings = {cmd: value for cmd, keys in RATED.items() for key in keys
                   if (value := getattr(spec.limits, key)) is not None}
        device = EmulatedScpiDevice(instrument, self._binding(spec, household, model),
                                    ratings=ratings)
        server = ScpiTcpServer(device)
        port = await server.start(self.host)
        self._servers.append(server)
        self._add(spec, household, model, f"TCPIP::{self.host}::{port}::SOCKET", device)

    async def _modbus_tcp(self, spec: DeviceSpec, household: str | None, model: str) -> None:
        instrument = load_instrument(model)
        assert isinstance(instrument, ModbusMap)
        extra: dict[str, Any] = {"alarm_bits": instrument.point("alarms").bits} \
            if spec.role == "battery" and "alarms" in instrument.points else {}
        device = EmulatedModbusDevice(instrument, self._binding(spec, household, model, **extra))
        server = ModbusTcpServer({1: device})
        port = await server.start(self.host)
        self._servers.append(server)
        self._add(spec, household, model, f"modbus+tcp://{self.host}:{port}?unit=1", device)

    async def _meters(self, specs: list[DeviceSpec], households: list[str]) -> None:
        """All household meters on one RTU line, unit id = position + 1 (as on RS-485)."""
        if len(specs) > 247:
            raise ValueError("more than 247 meters cannot share one Modbus RTU line")
        devices: dict[int, EmulatedModbusDevice] = {}
        for i, (spec, hid) in enumerate(zip(specs, households, strict=True)):
            model = self._model("meter", i)
            instrument = load_instrument(model)
            assert isinstance(instrument, ModbusMap)
            unit = i + 1
            devices[unit] = EmulatedModbusDevice(
                instrument, self._binding(spec, hid, model, unit=unit), unit)
        assert self.workdir is not None
        server = ModbusRtuServer(devices, PtyPort(self.workdir / "rs485-meters"),
                                 pace_baud=self.pace_baud)
        path = await server.start()
        self._servers.append(server)
        for unit, device in devices.items():
            spec, hid = specs[unit - 1], households[unit - 1]
            self._add(spec, hid, device.instrument.model,
                      f"modbus+rtu://{path}?baud={self.pace_baud or RTU_BAUD}&unit={unit}",
                      device)

    async def _relays(self, specs: list[DeviceSpec], households: list[str]) -> None:
        """Relays are coils of multi-channel boards: household k -> board k // N, coil k % N."""
        model = self._model("relay", 0)
        instrument = load_instrument(model)
        assert isinstance(instrument, ModbusMap)
        per_board = instrument.channels
        for start in range(0, len(specs), per_board):
            chunk = list(zip(specs[start:start + per_board],
                             households[start:start + per_board], strict=True))
            board = f"relay board {start // per_board + 1}"
            binding = RelayBoardBinding(self.plant, self.clock, board,
                                        self._identity(model, board),
                                        rig_ids=[hid for _, hid in chunk])
            device = EmulatedModbusDevice(instrument, binding)
            server = ModbusTcpServer({1: device})
            port = await server.start(self.host)
            self._servers.append(server)
            for channel, (spec, hid) in enumerate(chunk):
                self._add(spec, hid, model, f"modbus+tcp://{self.host}:{port}?unit=1", device,
                          channel=channel)

    def _add(self, spec: DeviceSpec, household: str | None, model: str, resource: str,
             device: Emulated, **params: Any) -> None:
        self.endpoints[spec.name] = Endpoint(spec, household, model, resource, device, params)

    # -- running ----------------------------------------------------------------------------
    async def _watch(self) -> None:
        """Trip the communication watchdogs of instruments whose controller fell silent."""
        bindings = {id(e.emulated.binding): e.emulated.binding for e in self.endpoints.values()}
        while True:
            await asyncio.sleep(0.05)
            for binding in bindings.values():
                binding.check_watchdog()

    def device(self, name: str) -> Emulated:
        """The emulated instrument serving rig device ``name`` (to inject faults, inspect)."""
        return self.endpoints[name].emulated

    # -- faults while running ---------------------------------------------------------------
    def resolve(self, name: str) -> str:
        """The rig's device ``name``; ValueError listing the rig's devices if there is none."""
        if name not in self.endpoints:
            raise ValueError(f"no device {name!r} in rig {self.rig.name} (devices: "
                             f"{', '.join(self.endpoints)})")
        return name

    def check_fault(self, item: ScheduledFault) -> None:
        """ValueError (naming device, fault and protocol) unless ``item`` can be shown by
        its device: the device exists and speaks the protocol the fault kind belongs to."""
        protocol = self.device(self.resolve(item.device)).instrument.protocol
        needs = FAULT_PROTOCOLS.get(item.fault.kind)
        if needs is not None and needs != protocol:
            other = next(k for k, p in FAULT_PROTOCOLS.items() if p == protocol)
            raise ValueError(f"{item.device} is a {protocol} instrument: {item.fault.kind} "
                             f"is a {needs} fault (its instrument error is {other})")

    def inject(self, item: ScheduledFault) -> None:
        """Switch ``item``'s fault on its device now (its window is the caller's)."""
        self.check_fault(item)
        self.device(item.device).faults.apply(item.fault)

    def clear(self, name: str) -> None:
        """Clear whatever fault device ``name`` shows (ValueError if there is no such device)."""
        self.device(self.resolve(name)).faults.clear()

    def active_faults(self) -> dict[str, str]:
        """Device -> the kind of fault it shows now, for every device that shows one."""
        return {name: fault.kind for name, end in self.endpoints.items()
                if (fault := end.emulated.faults.active) is not None}

    def schedule(self, items: list[ScheduledFault]) -> None:
        """Switch each fault on ``start_s`` and clear it at ``end_s`` (seconds of this bench's
        clock from now), while the emulators serve. Every item is checked first: one bad
        item schedules nothing (ValueError naming it)."""
        for item in items:
            self.check_fault(item)
        t0 = self.clock.now()
        for item in items:
            task = asyncio.create_task(self._window(item, t0), name=f"fault {item.describe()}")
            self._schedule.add(task)
            task.add_done_callback(self._schedule.discard)

    async def _window(self, item: ScheduledFault, t0: float) -> None:
        await self._at(t0 + item.start_s)
        self.inject(item)
        if item.end_s is not None:
            await self._at(t0 + item.end_s)
            self.clear(item.device)

    async def _at(self, t: float) -> None:
        """Until the clock reads ``t``. Virtual time is moved by its one sleeper (the
        controller), never by a schedule: wait for it to get there."""
        if self.clock.waits:
            await self.clock.sleep_until(t)
        while self.clock.now() < t:
            await asyncio.sleep(0.002)

    async def close(self) -> None:
        for task in list(self._schedule):
            task.cancel()
        await asyncio.gather(*self._schedule, return_exceptions=True)
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        for server in reversed(self._servers):
            await server.close()
        self._servers.clear()
        if self._tmp is not None:
            self._tmp.cleanup()

    async def __aenter__(self) -> EmulatedBench:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the rig file -----------------------------------------------------------------------
    def rig_dict(self, *, time_scale: float | None = None,
                 control_period_s: float | None = None) -> dict[str, Any]:
        """The rig, with every device pointing at its emulated instrument."""
        rig = self.rig
        return {
            "name": f"{rig.name}-emulated",
            "description": f"{rig.name} served by protocol emulators (testbed emulate)",
            "time_scale": time_scale or rig.time_scale,
            "power_scale": rig.power_scale,
            "control_period_s": control_period_s or rig.control_period_s,
            "bus_voltage_v": rig.bus_voltage_v,
            "tolerance_pct": rig.tolerance_pct,
            "grid": self._device_table(rig.grid),
            "households": [
                {"id": h.id, **{role: self._device_table(spec)
                                for role, spec in h.devices.items()}}
                for h in rig.households
            ],
        }

    def _device_table(self, spec: DeviceSpec) -> dict[str, Any]:
        if spec.parts:  # a battery of two instruments: each part as served, driver implied
            limits = {k: v for k, v in _limits(spec).items() if v is not None}
            parts = {key: {k: v for k, v in self._device_table(part).items()
                           if k in ("driver", "resource", "model", "channel", "timeout_s",
                                    "baud", "watchdog_s")}
                     for key, part in spec.parts.items()}
            return parts | limits | dict(spec.params)
        end = self.endpoints[spec.name]
        limits = {k: v for k, v in _limits(spec).items() if v is not None}
        table: dict[str, Any] = {"driver": end.emulated.instrument.protocol,
                                 "resource": end.resource, "model": _model_ref(end.model)}
        if spec.dut:
            table["dut"] = True
        return table | limits | dict(spec.params) | end.params


def _extra(spec: DeviceSpec, instrument: ModbusMap, res: Resource) -> dict[str, Any]:
    """What a Modbus role's binding takes beyond the plant: a battery's alarm bits, a
    meter's unit id."""
    extra: dict[str, Any] = {"alarm_bits": instrument.point("alarms").bits} \
        if spec.role == "battery" and "alarms" in instrument.points else {}
    if spec.role == "meter":
        extra["unit"] = res.unit
    return extra


def _slug(key: str) -> str:
    """A file name for the pty of resource link ``key``."""
    return "".join(c if c.isalnum() else "-" for c in key).strip("-")[:80]


def _model_ref(model: str) -> str:
    """A model as a rig file in another folder can name it: a path made absolute."""
    if model.startswith(("./", "../")):
        return str(Path(model).resolve())
    return model


def _limits(spec: DeviceSpec) -> dict[str, Any]:
    lim = spec.limits
    return {f.name: getattr(lim, f.name) for f in dataclasses.fields(lim)}


_BINDINGS: dict[str, type[Binding]] = {
    "pv": SupplyBinding,
    "load": LoadBinding,
    "battery": BatteryBinding,
    "bms": BatteryBinding,
    "converter": BatteryBinding,
    "meter": MeterBinding,
    "grid": GridBinding,
}
# SCPI instruments whose role's binding differs from the Modbus one (command names)
_SCPI_BINDINGS: dict[str, type[Binding]] = {"converter": ConverterScpiBinding,
                                             "grid": GridScpiBinding,
                                             "grid_source": GridSourceScpiBinding,
                                             "grid_sink": GridSinkScpiBinding}
