"""What every real driver shares: its link, its setup, and the failure policy around each call.

Each exchange runs under a deadline. A broken link (timeout, disconnect, garbled frame) gets
one retry on a fresh connection; a second failure, or an instrument that answers with an
error, marks the device defective and raises :class:`DeviceUnavailable`. (A *busy* answer
never gets here while the link may still ask again: ``Link.while_busy``, half a control
period.) While defective, calls fail at once until the back-off (which scales with the
control period) has passed.

The safe state never waits behind set-up: ``always`` exchanges (safe state, read-backs)
skip the per-connection set-up writes, so a device whose watchdog write fails can still
be switched off. A failed set-up raises :class:`SetupFailed`, naming the device and the
request that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from drivers.bench.health import DefectiveDevices, DeviceUnavailable
from drivers.bench.links import LinkPool
from drivers.clock import Clock
from drivers.protocol.errors import InstrumentError
from drivers.resources import Resource
from drivers.spec import DeviceSpec
from drivers.transport.base import LinkError

T = TypeVar("T")

WATCHDOG_MIN_S = 5.0  # a watchdog armed by default waits this long, or 10 control periods


def watchdog_seconds(spec: DeviceSpec, period_s: float) -> float:
    """The communication watchdog timeout the controller arms: the rig file's
    ``watchdog_s`` for the device, else the larger of 5 s and 10 control periods."""
    given = spec.params.get("watchdog_s")
    return float(given) if given is not None else max(WATCHDOG_MIN_S, 10.0 * period_s)


class SetupFailed(DeviceUnavailable):
    """A set-up write (init line, watchdog) failed: names the device and that request."""


class ReadbackMismatch(DeviceUnavailable):
    """A state read back after a command is not the state commanded."""


class ReadOnlyDevice(DeviceUnavailable):
    """A write asked of a driver built read-only (``rig check`` without ``--write-test``)."""


class InstrumentDevice:
    """A device behind a (possibly shared) link; subclasses add the role methods.

    ``period_s`` is the rig's control period (watchdog defaults).
    """

    def __init__(self, spec: DeviceSpec, resource: Resource, clock: Clock, pool: LinkPool,
                 make_link: Callable[[], Any], defects: DefectiveDevices,
                 period_s: float = 1.0, *, read_only: bool = False) -> None:
        self.spec = spec
        self.name = spec.name
        self.resource = resource
        self.clock = clock
        self.period_s = period_s
        self.read_only = read_only
        self._pool = pool
        self._link_key = resource.link_key
        self.link = pool.acquire(self._link_key, make_link)
        self.defects = defects
        self._setup_generation = -1
        self._closed = False

    async def _setup(self) -> None:
        """Sent once per connection before the first exchange (init lines, watchdog...).
        Raise :class:`SetupFailed` (see :meth:`_setup_step`) naming what failed."""

    async def _setup_step(self, request: str, exchange: Callable[[], Awaitable[Any]]) -> None:
        """One set-up request; its failure names this device and ``request``."""
        try:
            await exchange()
        except (InstrumentError, ValueError) as err:
            raise SetupFailed(self.name, str(self.resource),
                              f"set-up request {request} failed: {err}") from err

    async def _ready(self, *, setup: bool = True) -> None:
        await self.link.ensure_open()
        if setup and not self.read_only and self._setup_generation != self.link.generation:
            await self._setup()
            self._setup_generation = self.link.generation

    def _writing(self, what: str) -> None:
        """Called before any write: a read-only driver refuses it, naming it."""
        if self.read_only:
            raise ReadOnlyDevice(self.name, str(self.resource),
                                 f"{what}: refused, this driver is read-only")

    def _unavailable(self, problem: str) -> DeviceUnavailable:
        return DeviceUnavailable(self.name, str(self.resource), problem)

    async def _run(self, what: str, exchange: Callable[[], Awaitable[T]],
                   *, always: bool = False) -> T:
        """``exchange`` under the failure policy; ``always`` (safe state, read-backs) runs
        even while defective and without the set-up writes."""
        if not always and not self.defects.is_due_for_retry(self.name):
            raise self._unavailable(
                f"defective ({self.defects.reason(self.name)}); next try in "
                f"{self.defects.seconds_to_retry(self.name):.1f} s")
        deadline = self.resource.timeout_s * 4 + 1.0
        last: Exception | None = None
        for attempt in range(2):
            try:
                if attempt:
                    await self.link.reset()
                async with asyncio.timeout(deadline):
                    await self._ready(setup=not always)
                    result = await exchange()
            except (LinkError, TimeoutError) as err:
                last = err
                continue
            except SetupFailed as err:
                self.defects.add(self.name, err.problem)
                raise
            except (InstrumentError, ValueError) as err:
                self.defects.add(self.name, f"{what}: {err}")
                raise self._unavailable(f"{what}: {err}") from err
            self.defects.remove(self.name)
            return result
        with contextlib.suppress(Exception):  # start clean when the back-off lets a probe in
            await self.link.close()
        reason = f"{what}: {last or 'timeout'} (also on a fresh connection)"
        self.defects.add(self.name, reason)
        raise self._unavailable(reason) from last

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._pool.release(self._link_key)
