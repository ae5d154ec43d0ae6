"""Every write checked against the device's limits, before it reaches the instrument.

The guard wraps the driver of each role that sets a power (:class:`GuardedPV`,
:class:`GuardedLoad`, :class:`GuardedBattery`); a write outside the envelope raises
:class:`LimitError` naming device, quantity, requested and allowed values, and is not sent.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from drivers.roles import Battery, BatteryReading, ElectronicLoad, PowerReading, PVSupply
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


class _Guarded:
    """Checks ``set_power`` against the spec before the wire; forwards the role's other calls.

    ``voltage_v`` is the bus voltage used to turn a power into the current it draws. Raises
    :class:`LimitError` (and sends nothing) for a setpoint outside the envelope.
    """

    def __init__(self, inner: PVSupply | ElectronicLoad | Battery, spec: DeviceSpec, *,
                 bidirectional: bool = False, voltage_v: float | None = None) -> None:
        self._inner = inner
        self.spec = spec
        self._bidirectional = bidirectional
        self._voltage_v = voltage_v
        # The setpoints clearly inside the envelope, ``[floor, clear]`` W: every limit less
        # a relative margin (1e-9) that float rounding cannot cross, so whatever lies
        # inside passes :func:`check_power` too (a property test checks it), and a write is
        # checked by a comparison; anything else (NaN included) goes to check_power, which
        # refuses it or lets it pass exactly as the rule says.
        lim = spec.limits
        clear = lim.max_power_w if lim.max_power_w is not None else float("inf")
        if lim.max_current_a is not None and voltage_v:
            clear = min(clear, lim.max_current_a * abs(voltage_v))
        self._clear_w = clear * (1.0 - 1e-9) if clear != float("inf") else clear
        self._floor_w = -self._clear_w if bidirectional else 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def inner(self) -> PVSupply | ElectronicLoad | Battery:
        """The driver behind the guard: for diagnostics and benchmarks, never for writes."""
        return self._inner

    async def set_power(self, watts: float) -> None:
        if not self._floor_w <= watts <= self._clear_w:
            check_power(self.spec, watts, bidirectional=self._bidirectional,
                        voltage_v=self._voltage_v)
        await self._inner.set_power(watts)

    async def identify(self) -> str:
        return await self._inner.identify()

    async def safe_state(self) -> None:
        await self._inner.safe_state()

    async def close(self) -> None:
        await self._inner.close()


class GuardedPV(_Guarded):
    """A PV supply behind the limit guard (:class:`drivers.roles.PVSupply`)."""

    _inner: PVSupply
    read: Callable[[], Coroutine[Any, Any, PowerReading]]

    def __init__(self, inner: PVSupply, spec: DeviceSpec, *,
                 voltage_v: float | None = None) -> None:
        super().__init__(inner, spec, voltage_v=voltage_v)
        self.read = inner.read  # a read needs no check: the driver's own, no coroutine more

    async def set_output(self, on: bool) -> None:
        await self._inner.set_output(on)



class GuardedLoad(_Guarded):
    """An electronic load behind the limit guard (:class:`drivers.roles.ElectronicLoad`)."""

    _inner: ElectronicLoad
    read: Callable[[], Coroutine[Any, Any, PowerReading]]

    def __init__(self, inner: ElectronicLoad, spec: DeviceSpec, *,
                 voltage_v: float | None = None) -> None:
        super().__init__(inner, spec, voltage_v=voltage_v)
        self.read = inner.read  # a read needs no check: the driver's own, no coroutine more

    async def set_input(self, on: bool) -> None:
        await self._inner.set_input(on)



class GuardedBattery(_Guarded):
    """A battery converter behind the limit guard: power in both directions
    (:class:`drivers.roles.Battery`)."""

    _inner: Battery
    read: Callable[[], Coroutine[Any, Any, BatteryReading]]

    def __init__(self, inner: Battery, spec: DeviceSpec, *,
                 voltage_v: float | None = None) -> None:
        super().__init__(inner, spec, bidirectional=True, voltage_v=voltage_v)
        self.read = inner.read  # a read needs no check: the driver's own, no coroutine more

    async def set_enabled(self, on: bool) -> None:
        await self._inner.set_enabled(on)

