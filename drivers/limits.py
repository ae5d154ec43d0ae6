"""Every write checked against the device's limits, before it reaches the instrument.

The guard wraps any driver of a role; a write outside the envelope raises
:class:`LimitError` naming device, quantity, requested and allowed values, and is not sent.
"""

from __future__ import annotations

from typing import Any

from drivers.spec import DeviceSpec


class LimitError(ValueError):
    def __init__(self, device: str, quantity: str, requested: float, allowed: str) -> None:
        self.device, self.quantity, self.requested, self.allowed = (
            device, quantity, requested, allowed)
        super().__init__(
            f"{device}: {quantity} {requested:g} outside the allowed {allowed}")


def check_power(spec: DeviceSpec, watts: float, *, bidirectional: bool = False,
                voltage_v: float | None = None) -> None:
    """Raise unless ``watts`` is a safe setpoint for ``spec`` (and its current at ``voltage_v``)."""
    lim = spec.limits
    if watts != watts:  # NaN
        raise LimitError(spec.name, "power_w", watts, "a number")
    low = -(lim.max_power_w or 0.0) if bidirectional else 0.0
    if lim.max_power_w is not None and not low <= watts <= lim.max_power_w:
        raise LimitError(spec.name, "power_w", watts, f"[{low:g}, {lim.max_power_w:g}] W")
    if not bidirectional and watts < 0:
        raise LimitError(spec.name, "power_w", watts, ">= 0 W")
    if lim.max_current_a is not None and voltage_v:
        amps = abs(watts) / voltage_v
        if amps > lim.max_current_a * (1 + 1e-9):
            raise LimitError(spec.name, "current_a", amps, f"<= {lim.max_current_a:g} A")


class Guarded:
    """Wraps a role driver; checks ``set_power`` against the spec, forwards everything else."""

    def __init__(self, inner: Any, spec: DeviceSpec, *, bidirectional: bool = False,
                 voltage_v: float | None = None) -> None:
        self._inner = inner
        self.spec = spec
        self._bidirectional = bidirectional
        self._voltage_v = voltage_v

    @property
    def name(self) -> str:
        return self.spec.name

    async def set_power(self, watts: float) -> None:
        check_power(self.spec, watts, bidirectional=self._bidirectional,
                    voltage_v=self._voltage_v)
        await self._inner.set_power(watts)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)
