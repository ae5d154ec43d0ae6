"""Clients we did not write read our emulators: Debian's mbpoll over Modbus TCP, minimalmodbus
over the RTU pseudo-terminal (it paces RTU silent intervals itself), pyvisa-py over SCPI."""

from __future__ import annotations

import asyncio
import re
import shutil
from typing import Any

import pytest

from drivers.emulators.bench import EmulatedBench
from drivers.spec import RigSpec

MBPOLL = shutil.which("mbpoll")


@pytest.mark.asyncio
@pytest.mark.skipif(MBPOLL is None, reason="mbpoll not installed (apt-get install -y mbpoll)")
async def test_mbpoll_reads_the_grid_meter_voltage_over_tcp(emulator: EmulatedBench) -> None:
    port = emulator.endpoints["grid"].resource.split(":")[-1].split("?")[0]
    proc = await asyncio.create_subprocess_exec(
        MBPOLL or "mbpoll", "-m", "tcp", "-a", "1", "-t", "3:float", "-B", "-r", "1", "-c", "1",
        "-p", port, "-1", "127.0.0.1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    # "[1]: 	48" : input register 30001, SDM630 layout, float32 high word first
    assert re.search(r"\[1\]:\s+48(\.0+)?\s*$", out.decode(), re.MULTILINE), out.decode()


@pytest.mark.asyncio
async def test_minimalmodbus_reads_a_meter_over_the_pty(emulator: EmulatedBench) -> None:
    minimalmodbus = pytest.importorskip("minimalmodbus", reason="minimalmodbus not installed")
    resource = emulator.endpoints["household 2 meter"].resource
    path = resource.removeprefix("modbus+rtu://").split("?")[0]
    emulator.plant.rigs["2"].meter.import_wh = 1234.5

    def read() -> tuple[float, float]:
        inst = minimalmodbus.Instrument(path, 2)  # unit 2 on the shared RS-485 line
        inst.serial.baudrate = 9600
        inst.serial.timeout = 1.0
        try:
            volts = inst.read_float(0x0000, functioncode=4)
            import_kwh = inst.read_float(0x0048, functioncode=4)
        finally:
            inst.serial.close()
        return volts, import_kwh

    volts, import_kwh = await asyncio.to_thread(read)
    assert volts == 48.0
    assert import_kwh == pytest.approx(1.2345, rel=1e-6)


@pytest.mark.asyncio
async def test_pyvisa_queries_idn_of_a_supply(small_rig: RigSpec) -> None:
    pyvisa = pytest.importorskip("pyvisa", reason="pyvisa not installed (pip install pyvisa)")
    pytest.importorskip("pyvisa_py", reason="pyvisa-py not installed (pip install pyvisa-py)")
    async with EmulatedBench(small_rig, models={"pv": "rigol-dp800"}) as emulator:
        resource = emulator.endpoints["household 2 pv"].resource
        idn, volts = await asyncio.to_thread(_pyvisa_query, pyvisa, resource)
    assert idn == "testbed-emulator,rigol-dp800,household-2-pv,1.0"
    assert float(volts) == 48.0


def _pyvisa_query(pyvisa: Any, resource: str) -> tuple[str, str]:
    rm = pyvisa.ResourceManager("@py")
    inst = rm.open_resource(resource, read_termination="\n", write_termination="\n",
                            timeout=2000)
    try:
        return str(inst.query("*IDN?")), str(inst.query(":MEAS:VOLT? CH1"))
    finally:
        inst.close()
        rm.close()
