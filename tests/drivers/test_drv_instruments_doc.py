"""docs/instruments.md documents every instrument-file key, and its worked examples load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from drivers.instruments.model import (
    COMMAND_KEYS,
    COMMON_HEAD_KEYS,
    MODBUS_HEAD_KEYS,
    POINT_KEYS,
    SCPI_HEAD_KEYS,
    ModbusMap,
    ScpiCommandSet,
    load_instrument,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "instruments.md"


def _section(title: str) -> str:
    text = DOC.read_text("utf-8")
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


@pytest.mark.parametrize("title, keys", [
    ("## `[instrument]`: every file", COMMON_HEAD_KEYS),
    ("## Modbus files", MODBUS_HEAD_KEYS - COMMON_HEAD_KEYS),
    ("## Modbus files", POINT_KEYS),
    ("## SCPI files", SCPI_HEAD_KEYS - COMMON_HEAD_KEYS),
    ("## SCPI files", COMMAND_KEYS),
])
def test_every_key_is_documented_in_its_section(title: str, keys: frozenset[str]) -> None:
    rows = set(re.findall(r"^\| `([^`]+)`(?:, `([^`]+)`)?", _section(title), re.MULTILINE))
    documented = {k for row in rows for k in row if k}
    assert sorted(keys - documented) == []


def test_the_worked_examples_load(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text("utf-8"), re.DOTALL)
    loaded = []
    for i, block in enumerate(blocks):
        path = tmp_path / f"example{i}.toml"
        path.write_text(block, "utf-8")
        loaded.append(load_instrument(str(path)))
    meter, relays, supply = loaded
    assert isinstance(meter, ModbusMap) and isinstance(relays, ModbusMap)
    assert meter.point("import_wh").address == 4 and meter.point("import_wh").rollover == 1e7
    assert meter.turnaround_s == 0.02 and meter.max_read_registers == 8
    assert relays.point("closed").field_mask(2) == 0b100 and relays.write_function == 16
    assert isinstance(supply, ScpiCommandSet)
    assert supply.remote == ("SYST:REM",) and supply.echo and supply.busy_errors == (-213,)
    assert supply.read_terminator == "\r\n" and supply.settle_s == 0.05
