"""A late meter on a shared RS-485 line does not disturb its neighbours (issue 15).

Three meters share one RTU line (a pseudo-terminal served by the emulator's RTU server).
Unit 1 answers every request 1 s late, twice its 0.5 s timeout (as the fault matrix's
meter). Wall time: ``serial``. The master asks unit 1 as
a device does (``InstrumentDevice._run``: one try, a fresh connection, a second try), then
units 2 and 3, round after round: every neighbour read succeeds with the neighbour's own
values, and unit 1's late frames are never taken for anyone's answer.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from pymodbus.pdu import DecodePDU

from drivers.emulators.faults import FaultPlan, Quirks
from drivers.emulators.modbus_device import crc16
from drivers.emulators.modbus_server import ModbusRtuServer
from drivers.emulators.pty_port import PtyPort
from drivers.protocol.modbus import LineFramer, ModbusLink
from drivers.resources import parse_resource
from drivers.transport.base import LinkError

TIMEOUT_S, LATE_S = 0.5, 1.0


class Unit:
    """A minimal Modbus unit: holding register ``a`` holds ``100 * unit + a + calls``,
    ``calls`` counting the requests it answered (a stale reply shows an old count)."""

    def __init__(self, unit: int) -> None:
        self.unit = unit
        self.faults = FaultPlan()
        self.quirks = Quirks()
        self.calls = 0

    def handle(self, pdu: bytes) -> bytes:
        function, address, count = struct.unpack(">BHH", pdu[:5])
        assert function == 3, function
        self.calls += 1
        words = [100 * self.unit + address + k + self.calls for k in range(count)]
        return struct.pack(f">BB{count}H", 3, 2 * count, *words)


@pytest.mark.asyncio
@pytest.mark.serial  # real seconds of lateness against real timeouts
async def test_a_late_meter_leaves_its_neighbours_alone(tmp_path: Path) -> None:
    units = {u: Unit(u) for u in (1, 2, 3)}
    units[1].faults.inject("late_reply", delay_s=LATE_S)
    server = ModbusRtuServer(units, PtyPort(tmp_path / "rs485"))  # type: ignore[arg-type]
    path = await server.start()
    link = ModbusLink(parse_resource(f"modbus+rtu://{path}?baud=115200&timeout={TIMEOUT_S}"))
    late_failures = 0
    try:
        for _ in range(3):
            for attempt in range(2):  # as InstrumentDevice._run: a retry on a fresh line
                try:
                    if attempt:
                        await link.reset()
                    await link.read("holding", 0, 2, unit=1)
                except LinkError:
                    late_failures += 1
                else:
                    pytest.fail("a late reply was taken for the answer to the next request")
            for u in (2, 3):
                calls = units[u].calls
                got = await link.read("holding", 0, 2, unit=u)
                assert got == [100 * u + calls + 1, 100 * u + 1 + calls + 1], (u, got)
        assert late_failures == 6 and units[1].faults.served >= 3
        assert link.late_frames >= 2, "unit 1's late frames landed and were recognised"
    finally:
        await link.close()
        await server.close()


def _rtu(unit: int, words: list[int]) -> bytes:
    body = struct.pack(f">BBB{len(words)}H", unit, 3, 2 * len(words), *words)
    return body + crc16(body).to_bytes(2, "little")


def test_a_neighbours_late_frame_in_the_same_read_does_not_swallow_the_reply() -> None:
    """One read from the port holds unit 1's late frame and then unit 2's reply: the frame
    of the wrong unit is dropped and unit 2's reply decoded (pymodbus's own RTU framer
    reports the whole buffer used by the first frame, and the reply was lost)."""
    seen: list[int] = []
    framer = LineFramer(DecodePDU(False), seen.append)
    used, pdu = framer.handleFrame(_rtu(1, [7, 8]) + _rtu(2, [201, 202]), 2, 0)
    assert pdu is not None and (pdu.dev_id, pdu.registers) == (2, [201, 202])
    assert used == 2 * 9 and seen == [1, 2]
    used, pdu = framer.handleFrame(_rtu(2, [5])[:4], 2, 0)  # half a frame: wait for more
    assert (used, pdu) == (0, None)


@pytest.mark.asyncio
async def test_an_exchange_after_the_bench_closed_does_not_reopen_the_line(
        tmp_path: Path) -> None:
    """A late exchange goes on alone after the run's end; when the pool has let its link go
    it fails instead of opening the port again (an open port is locked: the next ``rig
    check`` or run could not open it; the pre-flight signal test met that)."""
    from drivers.bench.links import LinkPool

    server = ModbusRtuServer({2: Unit(2)}, PtyPort(tmp_path / "rs485"))  # type: ignore[dict-item]
    path = await server.start()
    resource = parse_resource(f"modbus+rtu://{path}?baud=115200&timeout={TIMEOUT_S}")
    pool = LinkPool()
    link = pool.acquire(resource.link_key, lambda: ModbusLink(resource))
    try:
        assert len(await link.read("holding", 0, 1, unit=2)) == 1
        await pool.release(resource.link_key)  # the bench closes
        with pytest.raises(LinkError, match="closed with the bench"):
            await link.read("holding", 0, 1, unit=2)
        assert not link.is_open
        fresh = ModbusLink(resource)  # the port is free for the next user
        try:
            assert len(await fresh.read("holding", 0, 1, unit=2)) == 1
        finally:
            await fresh.close()
    finally:
        await link.close()
        await server.close()
