"""Every write checked against the device's limits, before it reaches the instrument.

The guard wraps the driver of each role that sets a power (:class:`GuardedPV`,
:class:`GuardedLoad`, :class:`GuardedBattery`); a write outside the envelope raises
:class:`LimitError` naming device, quantity, requested and allowed values, and is not sent.
"""

from __future__ import annotations

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

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def inner(self) -> PVSupply | ElectronicLoad | Battery:
        """The driver behind the guard: for diagnostics and benchmarks, never for writes."""
        return self._inner

    async def set_power(self, watts: float) -> None:
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

    def __init__(self, inner: PVSupply, spec: DeviceSpec, *,
                 voltage_v: float | None = None) -> None:
        super().__init__(inner, spec, voltage_v=voltage_v)

    async def set_output(self, on: bool) -> None:
        await self._inner.set_output(on)

    async def read(self) -> PowerReading:
        return await self._inner.read()


class GuardedLoad(_Guarded):
    """An electronic load behind the limit guard (:class:`drivers.roles.ElectronicLoad`)."""

    _inner: ElectronicLoad

    def __init__(self, inner: ElectronicLoad, spec: DeviceSpec, *,
                 voltage_v: float | None = None) -> None:
        super().__init__(inner, spec, voltage_v=voltage_v)

    async def set_input(self, on: bool) -> None:
        await self._inner.set_input(on)

    async def read(self) -> PowerReading:
        return await self._inner.read()


class GuardedBattery(_Guarded):
    """A battery converter behind the limit guard: power in both directions
    (:class:`drivers.roles.Battery`)."""

    _inner: Battery

    def __init__(self, inner: Battery, spec: DeviceSpec, *,
                 voltage_v: float | None = None) -> None:
        super().__init__(inner, spec, bidirectional=True, voltage_v=voltage_v)

    async def set_enabled(self, on: bool) -> None:
        await self._inner.set_enabled(on)

    async def read(self) -> BatteryReading:
        return await self._inner.read()
