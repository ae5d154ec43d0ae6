"""What every real driver shares: its link, its setup, and the failure policy around each call.

Each exchange runs under a deadline. A broken link (timeout, disconnect, garbled frame) gets
one retry on a fresh connection; a second failure, or an instrument that answers with an
error, marks the device defective and raises :class:`DeviceUnavailable`. While defective,
calls fail at once until the back-off has passed; ``safe_state`` always tries.
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


class InstrumentDevice:
    """A device behind a (possibly shared) link; subclasses add the role methods."""

    def __init__(self, spec: DeviceSpec, resource: Resource, clock: Clock, pool: LinkPool,
                 make_link: Callable[[], Any], defects: DefectiveDevices) -> None:
        self.spec = spec
        self.name = spec.name
        self.resource = resource
        self.clock = clock
        self._pool = pool
        self._link_key = resource.link_key
        self.link = pool.acquire(self._link_key, make_link)
        self.defects = defects
        self._setup_generation = -1
        self._closed = False

    async def _setup(self) -> None:
        """Sent once per connection before the first exchange (init lines, watchdog...)."""

    async def _ready(self) -> None:
        await self.link.ensure_open()
        if self._setup_generation != self.link.generation:
            await self._setup()
            self._setup_generation = self.link.generation

    def _unavailable(self, problem: str) -> DeviceUnavailable:
        return DeviceUnavailable(self.name, str(self.resource), problem)

    async def _run(self, what: str, exchange: Callable[[], Awaitable[T]],
                   *, always: bool = False) -> T:
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
                    await self._ready()
                    result = await exchange()
            except (LinkError, TimeoutError) as err:
                last = err
                continue
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
