"""Built-in rig and scenario files, shipped as package data so they work from any folder."""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable


def builtin(kind: str) -> dict[str, Traversable]:
    """Name -> file for the built-in ``rigs`` or ``scenarios``."""
    folder = files(__name__) / kind
    return {
        f.name.removesuffix(".toml"): f
        for f in sorted(folder.iterdir(), key=lambda f: f.name)
        if f.name.endswith(".toml")
    }
