"""Every instrument of a mock rig, emulated over real protocols, and a rig file pointing at them.

Layout (per household): the PV supply and the load are SCPI instruments on their own TCP
ports (alternating the generic and the Rigol command sets), the battery a Modbus TCP
instrument, the meters share one Modbus RTU line (a pseudo-terminal, unit id = household
number) as RS-485 meters do, the relays are coils of 8-channel relay boards on Modbus TCP,
and the grid node is a Modbus TCP instrument. All of them serve one plant, advanced on a
real clock, so what the drivers read is what the in-process mock would have read.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.clock import Clock, RealClock
from drivers.emulators.bindings import (
    BatteryBinding,
    Binding,
    GridBinding,
    LoadBinding,
    MeterBinding,
    RelayBoardBinding,
    SupplyBinding,
)
from drivers.emulators.modbus_device import EmulatedModbusDevice
from drivers.emulators.modbus_server import ModbusRtuServer, ModbusTcpServer
from drivers.emulators.pty_port import PtyPort
from drivers.emulators.scpi_server import EmulatedScpiDevice, ScpiTcpServer
from drivers.instruments.model import ModbusMap, ScpiCommandSet, load_instrument
from drivers.mock.plant import Plant
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

    def _model(self, role: str, index: int) -> str:
        if role in self.models:
            return self.models[role]
        choices = ROLE_MODELS[role]
        return choices[index % len(choices)]

    def _identity(self, model: str, name: str) -> str:
        return f"testbed-emulator,{model},{name.replace(' ', '-')},1.0"

    # -- building -------------------------------------------------------------------------
    async def start(self) -> None:
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="testbed-emulate-")
            self.workdir = Path(self._tmp.name)
        households = list(self.rig.households)
        for i, h in enumerate(households):
            for role in ("pv", "load"):
                await self._scpi(h.devices[role], h.id, self._model(role, i))
            await self._modbus_tcp(h.devices["battery"], h.id, self._model("battery", i))
        await self._meters([h.devices["meter"] for h in households],
                           [h.id for h in households])
        await self._relays([h.devices["relay"] for h in households],
                           [h.id for h in households])
        await self._modbus_tcp(self.rig.grid, None, self._model("grid", 0))
        self._watchdog = asyncio.create_task(self._watch(), name="emulator watchdogs")

    def _binding(self, spec: DeviceSpec, household: str | None, model: str,
                 **extra: Any) -> Binding:
        args = (self.plant, self.clock, spec.name, self._identity(model, spec.name))
        role_args = (*args, household) if household is not None else args
        return _BINDINGS[spec.role](*role_args, **extra)

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
        extra = {"alarm_bits": instrument.point("alarms").bits} \
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

    async def close(self) -> None:
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
        end = self.endpoints[spec.name]
        limits = {k: v for k, v in _limits(spec).items() if v is not None}
        table: dict[str, Any] = {"driver": end.emulated.instrument.protocol,
                                 "resource": end.resource, "model": end.model}
        if spec.dut:
            table["dut"] = True
        return table | limits | dict(spec.params) | end.params


def _limits(spec: DeviceSpec) -> dict[str, Any]:
    lim = spec.limits
    return {k: getattr(lim, k) for k in lim.__slots__}  # type: ignore[attr-defined]


_BINDINGS: dict[str, type[Binding]] = {
    "pv": SupplyBinding,
    "load": LoadBinding,
    "battery": BatteryBinding,
    "meter": MeterBinding,
    "grid": GridBinding,
}
