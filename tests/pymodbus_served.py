"""An instrument's register map served by pymodbus's own server classes (``SimDevice`` on
``ModbusTcpServer``): a server this project did not write, with the quirks of real devices
(functions refused, busy answers) played through pymodbus's ``action`` hook."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.instruments.model import ModbusMap
from drivers.spec import HouseholdSpec, RigSpec


@dataclass
class Served:
    """What the served device saw, and the quirks it plays."""

    port: int
    refuse_functions: set[int] = field(default_factory=set)
    busy_every: int = 0
    functions: Counter[int] = field(default_factory=Counter)
    requests: int = 0
    registers: dict[int, int] = field(default_factory=dict)  # last seen, by address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serve_map(instrument: ModbusMap, values: dict[str, float], *,
                    refuse_functions: set[int] | None = None,
                    busy_every: int = 0) -> AsyncIterator[Served]:
    """Serve ``instrument``'s registers (input and holding share one register space, as
    the map's addresses do not overlap) holding ``values`` (by point name; 0 otherwise)."""
    words: dict[int, int] = {}
    for p in instrument.points.values():
        if p.table in ("input", "holding"):
            for k, w in enumerate(p.codec.encode(values.get(p.name, 0.0))):
                words[p.address + k] = w
    served = Served(_free_port(), set(refuse_functions or ()), busy_every)

    async def action(function_code: int, start_address: int, address: int, count: int,
                     current_registers: list[int],
                     set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        served.requests += 1
        served.functions[function_code] += 1
        if served.busy_every and served.requests % served.busy_every == 0:
            return ExcCodes.DEVICE_BUSY
        if function_code in served.refuse_functions:
            return ExcCodes.ILLEGAL_FUNCTION
        if set_values is not None:
            for k, v in enumerate(set_values):
                served.registers[address + k] = int(v)
        return None

    blocks = []
    for address in sorted(words):  # one SimData per run of consecutive registers
        if blocks and blocks[-1][0] + len(blocks[-1][1]) == address:
            blocks[-1][1].append(words[address])
        else:
            blocks.append((address, [words[address]]))
    device = SimDevice(id=1, simdata=[SimData(a, values=v, datatype=DataType.REGISTERS)
                                      for a, v in blocks], action=action)
    server = ModbusTcpServer(device, framer=FramerType.SOCKET,
                             address=("127.0.0.1", served.port))
    task = asyncio.create_task(server.serve_forever())
    for _ in range(100):  # until it listens
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", served.port)
            w.close()
            break
        await asyncio.sleep(0.02)
    try:
        yield served
    finally:
        await server.shutdown()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def rig_with(rig: RigSpec, household: str, role: str, port: int, model: str,
             **params: Any) -> RigSpec:
    """``rig`` with one device (``household``'s ``role``) on a pymodbus server at ``port``."""
    def swap(h: HouseholdSpec) -> HouseholdSpec:
        if h.id != household:
            return h
        spec = dataclasses.replace(h.devices[role], driver="modbus", model=model,
                                   resource=f"modbus+tcp://127.0.0.1:{port}?unit=1",
                                   params={**h.devices[role].params, "timeout_s": 0.5,
                                           **params})
        return dataclasses.replace(h, devices={**h.devices, role: spec})

    return dataclasses.replace(rig, households=tuple(swap(h) for h in rig.households))
