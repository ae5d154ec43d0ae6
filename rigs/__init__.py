"""Built-in rig and scenario files, shipped as package data so they work from any folder.

``rigs/rigs`` and ``rigs/scenarios`` hold the built-in ones; ``rigs/examples`` the worked
examples of the operator guide (a real bench and its scenario), reachable by name the same
way (``testbed rig copy university-lab3 rig.toml``, ``testbed run lab3-scenario ...``).
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

# The examples in rigs/examples, by kind (a file's kind is not in its name).
EXAMPLES: dict[str, tuple[str, ...]] = {
    "rigs": ("university-lab3", "university-lab3-supply-load"),
    "scenarios": ("lab3-scenario",),
}


def builtin(kind: str) -> dict[str, Traversable]:
    """Name -> file for the built-in ``rigs`` or ``scenarios``, then the examples of that
    kind."""
    folder = files(__name__) / kind
    known = {
        f.name.removesuffix(".toml"): f
        for f in sorted(folder.iterdir(), key=lambda f: f.name)
        if f.name.endswith(".toml")
    }
    examples = files(__name__) / "examples"
    return known | {name: examples / f"{name}.toml" for name in EXAMPLES.get(kind, ())}
