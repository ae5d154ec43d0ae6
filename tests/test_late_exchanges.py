"""A late exchange's own failure is the answer, not a fresh call (issue 15, isolation).

On real instruments each rig's exchanges run under a deadline; one still running then is
*late* and goes on alone. When it then fails (the device silent), the next period must
report that failure, so the device is named and held or lost. Starting a fresh call instead
dropped the failure; a fresh call straddling the end of the fault then answered, and a meter
silent for seconds was never named (seen once in the fault matrix, a silent meter on an RTU
line whose timeout takes 2 s)."""

from __future__ import annotations

import asyncio
from typing import Any

from drivers.transport.base import LinkTimeout
from testbed.run.controller import Controller, Late


class _Clock:
    def now(self) -> float:
        return asyncio.get_running_loop().time()


def _controller() -> Controller:
    """A controller of real instruments as far as :meth:`Controller._exchanges` needs."""
    c = object.__new__(Controller)
    c._concurrent = True
    c._inflight = {}
    c._seen = {}
    c.clock = _Clock()  # type: ignore[assignment]
    return c


async def test_a_late_exchange_that_fails_is_the_next_periods_answer() -> None:
    c = _controller()
    calls: list[str] = []

    async def silent_meter() -> Any:
        calls.append("silent")
        await asyncio.sleep(0.05)
        raise LinkTimeout("meter: no reply")

    async def meter_back() -> Any:  # the fault has ended by the next period
        calls.append("back")
        return "reading"

    first = await c._exchanges("1", 0.01, [("meter", silent_meter)])
    assert isinstance(first[0], Late)
    await asyncio.sleep(0.3)  # the late exchange has failed meanwhile
    second = await c._exchanges("1", 0.01, [("meter", meter_back)])
    assert isinstance(second[0], LinkTimeout), second  # its failure, not the fresh call's
    assert calls == ["silent"]
    third = await c._exchanges("1", 0.01, [("meter", meter_back)])
    assert third == ["reading"] and calls == ["silent", "back"]


async def test_a_late_exchange_still_running_is_not_asked_again() -> None:
    c = _controller()
    calls: list[str] = []

    async def slow() -> Any:
        calls.append("slow")
        await asyncio.sleep(0.2)
        return "late reading"

    first = await c._exchanges("1", 0.01, [("pv", slow)])
    second = await c._exchanges("1", 0.01, [("pv", slow)])
    assert isinstance(first[0], Late) and isinstance(second[0], Late)
    assert calls == ["slow"]
    await asyncio.sleep(0.4)
    third = await c._exchanges("1", 0.01, [("pv", slow)])  # answered late: asked afresh
    assert calls == ["slow", "slow"] and isinstance(third[0], Late)
