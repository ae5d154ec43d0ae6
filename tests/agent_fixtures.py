"""What the agent tests share: a key folder per test, and scenario 2 with agent households."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from testbed.config.scenario import scenario_from_dict
from testbed.config.tomlfile import parse, resolve


@pytest.fixture(autouse=True)
def own_key_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test registers its agents in a key folder of its own."""
    monkeypatch.setenv("TESTBED_HOME", str(tmp_path / "home"))


def agent_scenario(agents: set[str], absent: str = "none") -> Any:
    """Scenario 2 whose ``agents`` households order through agents."""
    source, text = resolve("scenarios", "scenario2")
    data = parse(source, text)
    for h in data["households"]:
        if h["id"] in agents:
            h["orders"] = "agent"
    data["agent_absent"] = absent
    return scenario_from_dict(source, data)
