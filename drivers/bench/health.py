"""Failure policy, after OpenEMS Edge's DefectiveComponents: small, and on an injected clock.

A device whose exchange failed (after one retry on a fresh connection) is *defective*: every
call fails at once with :class:`DeviceUnavailable` until its back-off has passed (one control
period, doubling to 60 periods: :meth:`DefectiveDevices.for_period`), then one call is let
through to probe it; success clears it. The first back-off never outlasts the staleness
limit of a few periods, so one bad answer cannot take a rig off the bus. A defective
device's readings are unknown, never the last good value passed off as fresh.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.clock import Clock


class DeviceUnavailable(RuntimeError):
    """A device gave no valid answer: its state is unknown. Names the device and resource."""

    def __init__(self, device: str, resource: str, problem: str) -> None:
        self.device, self.resource, self.problem = device, resource, problem
        super().__init__(f"{device} at {resource}: unavailable: {problem}")


@dataclass
class _Defect:
    reason: str
    since: float
    retry_at: float
    backoff_s: float


class DefectiveDevices:
    def __init__(self, clock: Clock, first_backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0) -> None:
        self.clock = clock
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self._defects: dict[str, _Defect] = {}

    @classmethod
    def for_period(cls, clock: Clock, period_s: float) -> DefectiveDevices:
        """Back-off that scales with the control period: 1 period, doubling to 60."""
        return cls(clock, first_backoff_s=period_s, max_backoff_s=60.0 * period_s)

    def is_defective(self, device: str) -> bool:
        return device in self._defects

    def reason(self, device: str) -> str | None:
        defect = self._defects.get(device)
        return defect.reason if defect else None

    def is_due_for_retry(self, device: str) -> bool:
        defect = self._defects.get(device)
        return defect is None or self.clock.now() >= defect.retry_at

    def add(self, device: str, reason: str) -> None:
        now = self.clock.now()
        old = self._defects.get(device)
        backoff = min(old.backoff_s * 2, self.max_backoff_s) if old else self.first_backoff_s
        self._defects[device] = _Defect(reason, old.since if old else now, now + backoff, backoff)

    def remove(self, device: str) -> None:
        self._defects.pop(device, None)

    def seconds_to_retry(self, device: str) -> float:
        defect = self._defects.get(device)
        return max(defect.retry_at - self.clock.now(), 0.0) if defect else 0.0
