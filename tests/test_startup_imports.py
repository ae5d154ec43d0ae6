"""What a start pays for (docs/performance.md, section 7): ``testbed run scenario2`` on the
mock rig and ``testbed --help`` import only what they use. Each module named here was once
imported by them for nothing (sqlite-utils with click and dateutil, the instrument-file
model, the agents, the DUT tracker, an XML writer, asyncio and the tables for ``--help``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Modules a mock run has no use for: the rig has no instrument files, agents, devices
# under test, JUnit output, plots, web server, MQTT or Modbus; sqlite-utils only serves
# Store.db.
MOCK_RUN_NEVER = ("sqlite_utils", "click", "dateutil", "drivers.instruments.model",
                  "testbed.agents", "testbed.run.dut", "xml.etree.ElementTree",
                  "testbed.community", "pvlib", "pandas", "numpy", "matplotlib", "fastapi",
                  "aiomqtt", "pymodbus", "pydantic")
# ``--help`` reads the commands' declarations only.
HELP_NEVER = ("asyncio", "sqlite3", "contracts", "drivers", "rigs", "rich.table",
              "testbed.config", "testbed.run", "testbed.ledger", "cryptography")


def _imported(args: list[str], names: tuple[str, ...], cwd: Path) -> list[str]:
    code = ("import runpy, sys\n"
            f"sys.argv = ['testbed', *{args!r}]\n"
            "try:\n"
            "    runpy.run_module('testbed.cli', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            f"print(sorted(m for m in {names!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=cwd)
    return out.stdout.strip().splitlines()[-1:]


@pytest.mark.parametrize(("args", "never"), [
    (["run", "scenario2", "--db", "r.db", "--quiet"], MOCK_RUN_NEVER),
    (["--help"], HELP_NEVER)], ids=["mock run", "help"])
def test_a_start_imports_only_what_it_uses(tmp_path: Path, args: list[str],
                                           never: tuple[str, ...]) -> None:
    assert _imported(args, never, tmp_path) == ["[]"]
