"""The feed the dashboard watches: the latest state of the run in progress, fanned out.

:class:`LiveHub` is an event-bus observer, called on the server's event loop (runs started
here hand their events over from their own thread, :mod:`testbed.api.runs`). It keeps the
latest state of the current run for a page that connects mid-run, and fans each event out
to every WebSocket client's bounded queue, dropping the oldest message of a slow client
rather than slowing anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from fractions import Fraction
from typing import Any

CLIENT_QUEUE = 2000
HISTORY = 720  # control periods of power kept for a page that connects mid-run


def _compact_order(o: dict[str, Any]) -> dict[str, Any]:
    def num(x: Any) -> float | None:
        return None if x is None else round(float(Fraction(str(x))), 6)

    return {"household": o.get("household"), "side": o.get("side"),
            "energy_kwh": num(o.get("energy_kwh")), "price": num(o.get("price"))}


class LiveHub:
    """Latest state of the run in progress, and a fan-out of its events to WebSockets."""

    def __init__(self) -> None:
        self.clients: set[asyncio.Queue[dict[str, Any]]] = set()
        self.reset(None)

    def reset(self, run_id: str | None) -> None:
        self.run: dict[str, Any] = {"id": run_id, "status": None}
        self.latest: dict[str, dict[str, Any]] = {}
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.orderbook: dict[str, Any] | None = None
        self.clearing: dict[str, Any] | None = None
        self.trades: list[dict[str, Any]] = []
        self.block: dict[str, Any] | None = None
        self.safety: dict[str, Any] = {"state": "idle", "events": []}

    # -- observer -------------------------------------------------------------------------

    def observer(self, topic: str, payload: dict[str, Any]) -> None:
        run_id = payload.get("run")
        if run_id != self.run["id"] and topic == "status":
            self.reset(run_id)
        msg = self._update(topic, payload)
        self.broadcast(msg)

    def _update(self, topic: str, p: dict[str, Any]) -> dict[str, Any]:
        if topic == "status":
            self.run.update({k: v for k, v in p.items() if k != "run"}, id=p.get("run"))
            if p.get("status") in ("running", "resumed"):
                self.safety["state"] = "running"
            return {"topic": topic, "payload": dict(self.run)}
        if topic == "readings":
            rows = p.get("rows", [])
            for r in rows:
                self.latest[str(r.get("household"))] = r
            point = {"t": p.get("t"), "hour": p.get("interval_hour"),
                     "power_w": {str(r.get("household")): r.get("power_w") for r in rows},
                     "grid_w": -sum(float(r.get("power_w") or 0.0) for r in rows),
                     "tripped": p.get("tripped", {})}
            self.history.append(point)
            return {"topic": topic, "payload": {"run": p.get("run"), **point, "rows": rows}}
        if topic == "orderbook":
            self.orderbook = {"interval": p.get("interval"),
                              "orders": [_compact_order(o) for o in p.get("orders", [])],
                              "rejected": p.get("rejected", {})}
            return {"topic": topic, "payload": {"run": p.get("run"), **self.orderbook}}
        if topic == "clearing":
            self.clearing = dict(p)
        elif topic == "trade":
            self.trades.append(dict(p))
        elif topic == "block":
            self.block = dict(p)
        elif topic == "safety":
            event = str(p.get("event", ""))
            self.safety["events"] = [*self.safety["events"][-49:], dict(p)]
            if event in ("estop", "estop_requested"):
                self.safety["state"] = "estop"
            elif event == "safe_state":
                self.safety["state"] = "safe" if p.get("complete", True) else "unsafe"
            elif event == "rig_off_bus":
                self.safety["state"] = "tripped"
            elif event == "rigs_connected":
                self.safety["state"] = "running"
        return {"topic": topic, "payload": dict(p)}

    def broadcast(self, msg: dict[str, Any]) -> None:
        for q in list(self.clients):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()  # a slow page loses its oldest message, not the bench
            q.put_nowait(msg)

    def snapshot(self) -> dict[str, Any]:
        return {"run": dict(self.run), "latest": dict(self.latest),
                "history": list(self.history), "orderbook": self.orderbook,
                "clearing": self.clearing, "trades": list(self.trades), "block": self.block,
                "safety": {"state": self.safety["state"],
                           "events": list(self.safety["events"])}}

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=CLIENT_QUEUE)
        self.clients.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self.clients.discard(q)
