"""Figure 2: our drivers against the raw clients underneath them, on the same emulator.

* **Modbus TCP**: one read of the battery's 14 input registers (SoC .. alarms) through the
  raw pymodbus client, through our :class:`~drivers.protocol.modbus.ModbusLink`, through the
  battery driver (``read_points``: deadline, retry and health policy around the link), and
  the role call ``battery.read()`` against the raw client making the same requests (our
  planner's grouping of its points: ``role_read_requests``).
* **SCPI**: one query (``MEAS:VOLT?`` or the model's equivalent) of the PV supply through a
  bare asyncio socket, through our :class:`~drivers.protocol.scpi.ScpiLink`, and the role
  call ``pv.read()`` (four queries) against the bare socket asking the same four.
* **Modbus RTU** with the emulator paced at each ``--baud``: reads of N input registers of
  the meter through the raw pymodbus serial client and our link, against the wire limit
  ``(8 + 5 + 2N) * 11 / baud + 2 * 3.5-character gaps`` (1.75 ms each above 19,200 baud).

Variants take turns call by call (the order rotating every round) and each figure is the
median time of one call, so bursts of load on this shared machine hit all variants alike.
``overhead`` is ours / raw - 1; ``wire_efficiency`` is wire time / measured.
"""

from __future__ import annotations

import asyncio
import cProfile
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from bench._common import emit, parser, profile_rows
from bench._emulator import driver_rig, emulated
from drivers.bench.modbus_devices import BATTERY_POINTS, plan_reads
from drivers.clock import RealClock
from drivers.emulators.modbus_server import frame_gap
from drivers.instruments.model import ModbusMap, ScpiCommandSet, load_instrument
from drivers.protocol.modbus import ModbusLink
from drivers.protocol.scpi import ScpiLink
from drivers.registry import build_bench
from drivers.resources import parse_resource
from drivers.transport.factory import open_transport

Call = Callable[[], Awaitable[Any]]
BATTERY_INPUT = ["soc", "voltage_v", "current_a", "power_w", "energy_wh", "capacity_wh",
                 "temperature_c", "alarms"]  # input registers 0x00..0x0D, one request
SCPI_READ = ["measured_voltage", "measured_current", "measured_power", "output"]


async def rounds(variants: dict[str, Call], calls: int, n_rounds: int) -> dict[str, float]:
    """Median seconds per call of each variant, the variants taking turns call by call (the
    order rotating every round), so a burst of load on this shared machine meets them all
    alike and the median leaves it out."""
    names = list(variants)
    per: dict[str, list[float]] = {k: [] for k in names}
    for name in names:  # warm up: connections, setup lines, caches
        for _ in range(max(3, calls // 10)):
            await variants[name]()
    clock = time.perf_counter
    for r in range(n_rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for _ in range(calls):
            for name in order:
                started = clock()
                await variants[name]()
                per[name].append(clock() - started)
    return {k: statistics.median(v) for k, v in per.items()}


def _overheads(t: dict[str, float], pairs: dict[str, tuple[str, str]]) -> dict[str, float]:
    return {name: t[ours] / t[raw] - 1.0 for name, (ours, raw) in pairs.items()}


async def modbus_tcp(data: dict[str, Any], calls: int, n_rounds: int,
                     profile: bool = False) -> dict[str, Any]:
    rig = driver_rig(data, timeout_s=2.0)
    bench = build_bench(rig, RealClock())
    guarded = bench.households[rig.households[0].id].battery
    battery: Any = guarded.inner  # the Modbus device itself, for its read_points
    res = parse_resource(battery.spec.resource)
    raw = AsyncModbusTcpClient(res.host, port=res.port, framer=FramerType.SOCKET, timeout=2,
                               retries=0)
    await raw.connect()
    link = ModbusLink(res)

    async def raw_read() -> list[int]:
        rr = await raw.read_input_registers(0, count=14, device_id=res.unit)
        assert not rr.isError()
        return list(rr.registers)

    # The requests battery.read() makes, as our planner groups its points.
    instrument = load_instrument(battery.spec.model)
    assert isinstance(instrument, ModbusMap)
    blocks = [(b.table, b.address, b.count)
              for b in plan_reads([instrument.point(n) for n in [*BATTERY_POINTS, "alarms"]])]

    async def raw_role() -> None:
        for table, address, count in blocks:
            method = raw.read_input_registers if table == "input" \
                else raw.read_holding_registers
            rr = await method(address, count=count, device_id=res.unit)
            assert not rr.isError()

    try:
        t = await rounds({
            "raw_pymodbus": raw_read,
            "link": lambda: link.read("input", 0, 14, res.unit),
            "device_read_points": lambda: battery.read_points(*BATTERY_INPUT),
            "raw_pymodbus_same_requests": raw_role,
            "role_battery_read": battery.read,
        }, calls, n_rounds)
        prof = None
        if profile:  # where the device layer's time goes, this side of the socket
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(calls):
                await battery.read_points(*BATTERY_INPUT)
            prof.disable()
    finally:
        raw.close()
        await link.close()
        for d in bench.devices():
            await d.close()
    out = {"registers": 14, "role_read_requests": blocks, "seconds_per_read": t,
           "overhead": _overheads(t, {
               "link": ("link", "raw_pymodbus"),
               "device_read_points": ("device_read_points", "raw_pymodbus"),
               "role_battery_read": ("role_battery_read", "raw_pymodbus_same_requests")})}
    if prof is not None:
        out["profile_device_read_points"] = profile_rows(prof, 15)
    return out


async def scpi(data: dict[str, Any], calls: int, n_rounds: int) -> dict[str, Any]:
    rig = driver_rig(data, timeout_s=2.0)
    bench = build_bench(rig, RealClock())
    pv = bench.households[rig.households[0].id].pv
    instrument = load_instrument(pv.spec.model)
    assert isinstance(instrument, ScpiCommandSet)
    channel = int(pv.spec.params.get("channel", instrument.channel))
    lines = [instrument.command(c).query(channel) for c in SCPI_READ]
    res = parse_resource(pv.spec.resource)
    reader, writer = await asyncio.open_connection(res.host, res.port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    link = ScpiLink(lambda: open_transport(res), timeout_s=2.0,
                    terminator=instrument.terminator, error_query=instrument.error_query)

    async def raw_query(line: str = lines[0]) -> bytes:
        writer.write((line + instrument.terminator).encode())
        return await reader.readline()

    async def raw_four() -> None:
        for line in lines:
            await raw_query(line)

    try:
        t = await rounds({
            "raw_socket": raw_query,
            "link_query": lambda: link.query(lines[0]),
            "raw_socket_4_queries": raw_four,
            "role_pv_read": pv.read,
        }, calls, n_rounds)
    finally:
        writer.close()
        await link.close()
        for d in bench.devices():
            await d.close()
    return {"query": lines[0], "model": pv.spec.model, "seconds_per_call": t,
            "overhead": _overheads(t, {"link_query": ("link_query", "raw_socket"),
                                       "role_pv_read": ("role_pv_read",
                                                        "raw_socket_4_queries")})}


def wire_time(registers: int, baud: int) -> float:
    """Seconds on the line for one read: request, reply and two silent intervals."""
    return (8 + 5 + 2 * registers) * 11.0 / baud + 2 * frame_gap(baud)


async def rtu(baud: int, registers: list[int], calls: int, n_rounds: int,
              inline: bool) -> dict[str, Any]:
    """RTU reads on the emulator paced at ``baud`` (0: not paced, the pty's CPU cost)."""
    async with emulated(1, pace_baud=baud or None, inline=inline) as data:
        res = parse_resource(data["households"][0]["meter"]["resource"])
        out: dict[str, Any] = {"baud": baud, "reads": []}
        for n in registers:
            per: dict[str, list[float]] = {"raw_pymodbus": [], "link": []}
            for r in range(n_rounds):  # one client on the line at a time: a block each
                for name in (["raw_pymodbus", "link"] if r % 2 == 0
                             else ["link", "raw_pymodbus"]):
                    per[name].append(await _rtu_block(name, res, n, calls))
            t = {k: statistics.median(v) for k, v in per.items()}
            row: dict[str, Any] = {
                "registers": n, "seconds_per_read": t,
                "reads_per_s": {k: 1.0 / v for k, v in t.items()},
                "overhead": t["link"] / t["raw_pymodbus"] - 1.0}
            if baud:
                wire = wire_time(n, baud)
                row |= {"wire_s": wire, "wire_limit_reads_per_s": 1.0 / wire,
                        "wire_efficiency": {k: wire / v for k, v in t.items()},
                        "beyond_wire_s": {k: v - wire for k, v in t.items()}}
            out["reads"].append(row)
    return out


async def _rtu_block(name: str, res: Any, registers: int, calls: int) -> float:
    if name == "raw_pymodbus":
        client = AsyncModbusSerialClient(res.device, framer=FramerType.RTU, baudrate=res.baud,
                                         bytesize=8, parity="N", stopbits=1, timeout=1,
                                         retries=0)
        await client.connect()

        async def read() -> None:
            rr = await client.read_input_registers(0, count=registers, device_id=res.unit)
            assert not rr.isError()

        close: Callable[[], Awaitable[None]] = _aclose(client.close)
    else:
        link = ModbusLink(res)

        async def read() -> None:
            await link.read("input", 0, registers, res.unit)

        close = link.close
    try:
        await read()  # warm: connect, first frame
        started = time.perf_counter()
        for _ in range(calls):
            await read()
        return (time.perf_counter() - started) / calls
    finally:
        await close()
        await asyncio.sleep(0.05)  # let the line go quiet before the next client opens it


def _aclose(fn: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        fn()
    return close


async def run(calls: int, n_rounds: int, bauds: list[int], registers: list[int],
              rtu_calls: int, inline: bool, profile: bool = False) -> dict[str, Any]:
    async with emulated(1, inline=inline) as data:
        tcp = await modbus_tcp(data, calls, n_rounds, profile)
        sc = await scpi(data, calls, n_rounds)
    serial = [await rtu(b, registers, rtu_calls, max(2, n_rounds // 2), inline) for b in bauds]
    return {
        "emulator": "inline" if inline else "own process",
        "calls_per_round": calls, "rounds": n_rounds,
        "modbus_tcp": tcp, "scpi": sc, "modbus_rtu": serial,
        "modbus_tcp_overhead": tcp["overhead"]["link"],
        "modbus_tcp_device_overhead": tcp["overhead"]["device_read_points"],
        "scpi_query_s": sc["seconds_per_call"]["link_query"],
        "rtu_wire_efficiency": {str(s["baud"]): {str(r["registers"]): r["wire_efficiency"]["link"]
                                                 for r in s["reads"]}
                                for s in serial if s["baud"]},
        "targets": {"modbus_tcp_overhead_max": 0.10, "rtu_wire_efficiency_min": 0.90},
    }


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--calls", type=int, default=200, help="calls per variant per round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--baud", default="0,9600,115200",
                   help="comma-separated RTU baud rates (0: emulator not paced)")
    p.add_argument("--registers", default="2,8", help="comma-separated RTU read sizes")
    p.add_argument("--rtu-calls", type=int, default=20, help="RTU reads per block")
    p.add_argument("--inline", action="store_true",
                   help="run the emulators in this process (default: their own process)")
    p.add_argument("--profile", action="store_true",
                   help="add a profile of the battery driver's read_points")
    a = p.parse_args()
    result = asyncio.run(run(a.calls, a.rounds, [int(x) for x in a.baud.split(",") if x],
                             [int(x) for x in a.registers.split(",") if x], a.rtu_calls,
                             a.inline, a.profile))
    emit({"figure": "drivers", **result}, a.json)


if __name__ == "__main__":
    main()
