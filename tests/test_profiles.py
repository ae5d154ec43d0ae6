"""The shipped clear-sky shapes are pvlib's, and a built-in scenario's run needs no pvlib."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from testbed.config.profiles import SHIPPED_SHAPES, compute_clear_sky_shape


def test_every_shipped_shape_is_what_pvlib_computes() -> None:
    table = json.loads(SHIPPED_SHAPES.read_text())
    assert table, "no shape shipped"
    for key, shipped in table.items():
        lat, lon, date, steps, tz = key.split(" ")
        fresh = compute_clear_sky_shape(float(lat), float(lon), date, int(steps), tz)
        assert len(fresh) == len(shipped) == int(steps)
        assert max(abs(a - b) for a, b in zip(fresh, shipped, strict=True)) < 1e-12, key
        assert sum(shipped) == pytest.approx(1.0)


def test_the_built_in_scenarios_take_their_pv_shape_from_the_table() -> None:
    code = ("import sys\n"
            "from rigs import builtin\n"
            "from testbed.run.runner import plans_for\n"
            "from testbed.config.scenario import load_scenario\n"
            "for name in builtin('scenarios'):\n"
            "    plans_for(load_scenario(name))\n"
            "print(sorted(m for m in ('pvlib', 'pandas') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
