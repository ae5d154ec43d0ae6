"""The HTTP API of ``testbed serve``: read a run database, watch and control live runs.

Reading (runs, intervals, households, trades, ledger blocks and verification, validation,
readings, figures beside the paper) is open: a lab shares its results. Control (``POST
/api/runs/start``, ``/api/runs/{id}/stop``, ``/api/estop``) moves real hardware, so it takes
a bearer token, and with no token configured it is refused altogether rather than open.

Reads open the database per request in the worker thread that serves it (SQLite
connections are not shared across threads); WAL lets them read while a run writes. A run
started here runs on a thread of its own and writes through its own connection
(:mod:`testbed.api.runs`). With ``--mqtt`` the server also follows, and can stop, runs of
other processes through the broker (:mod:`testbed.api.bridge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from rigs import builtin
from testbed.api.bridge import MqttBridge
from testbed.api.guard import FailedAuthLimiter, allowed_hosts
from testbed.api.live import LiveHub
from testbed.api.runs import Busy, RunManager
from testbed.errors import InputError
from testbed.ledger.store import DamagedDatabase, Store
from testbed.report import figures as data
from testbed.run.runner import SPEED_RANGE

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
SCENARIOS = tuple(builtin("scenarios"))
RIGS = tuple(builtin("rigs"))
BEARER = HTTPBearer(auto_error=False, description="the server's --token")
RunId = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                                 description="run id (``testbed run`` prints it)")]


# -- response and request bodies --------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class RunOut(_Open):
    id: str
    scenario: str | None
    rig: str | None
    mechanism: str | None
    status: str | None
    started_at: str | None
    finished_at: str | None
    params: dict[str, Any]
    summary: Any = None
    live: bool = False


class IntervalOut(_Open):
    index: int
    clearing_price: float | None
    clearing_price_exact: str | None
    method: int | None
    volume_kwh: float | None
    lab_start_s: float | None
    lab_end_s: float | None
    details: dict[str, Any]


class HouseholdOut(_Open):
    interval: int
    household: str
    cleared_kwh: float
    metered_kwh: float
    grid_import_kwh: float
    grid_export_kwh: float
    market_aud: float
    grid_aud: float
    net_aud: float


class TradeOut(_Open):
    interval: int
    seq: int
    seller: str
    buyer: str
    energy_kwh: float | None
    price: float | None


class BlockOut(_Open):
    height: int
    interval: int | None
    prev_hash: str
    merkle_root: str
    hash: str
    signature: str
    txs: Any


class VerifyOut(_Open):
    ok: bool
    blocks: int
    height: int | None
    reason: str | None


class ValidationOut(_Open):
    ok: bool
    total: int
    passed: int
    failed: int
    checks: list[dict[str, Any]]


class StartIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scenario: Literal[SCENARIOS]  # type: ignore[valid-type]
    rig: Literal[RIGS] = "mock"  # type: ignore[valid-type]
    # Real time or faster: slower would stretch a day over days (and a tiny positive
    # float overflows the control timeline).
    speed: Annotated[float, Field(ge=1, le=SPEED_RANGE[1])] | Literal["max"] | None = Field(
        None, description="market seconds per lab second, 1 (real time) to 1e6; 'max' = "
                          "virtual time (mock rigs); omitted: virtual time on an all-mock "
                          "rig, else the rig's own time scale")


class StartOut(BaseModel):
    run_id: str
    status: str


class StopOut(BaseModel):
    run_id: str
    stopping: bool


class EstopIn(BaseModel):
    reason: str = Field("emergency stop (API)", max_length=200)


class EstopOut(BaseModel):
    stopped: list[str] = Field(description="runs told to stop: this server's, and with "
                                           "--mqtt the runs on the broker")
    mqtt: Literal["sent", "not connected"] | None = Field(
        None, description="the stop published on testbed/estop; null without --mqtt")


# -- the app --------------------------------------------------------------------------------


def create_app(db: str | Path, token: str | None = None, *, mqtt: str | None = None,
               mqtt_user: str | None = None, mqtt_password: str | None = None,
               mqtt_ca: str | None = None, hosts: Sequence[str] | None = None,
               limiter: FailedAuthLimiter | None = None) -> FastAPI:
    """The API over database ``db``; control needs ``token`` (or ``TESTBED_TOKEN``); with
    ``mqtt`` (a broker URL) runs of other processes are followed and stopped there too.
    ``hosts``: the Host names answered (:func:`testbed.api.guard.allowed_hosts`, default
    loopback); ``limiter``: wrong tokens allowed per client (default 10 a minute)."""
    db_path = Path(db)
    Store(db_path, check="full").close()  # sound, and the schema made once before reads
    token = token if token is not None else (os.environ.get("TESTBED_TOKEN") or None)
    hub = LiveHub()
    manager = RunManager(db_path, hub)
    bridge = None if mqtt is None else MqttBridge(mqtt, hub, username=mqtt_user,
                                                  password=mqtt_password, ca=mqtt_ca)

    def active() -> list[str]:
        return [*manager.active, *(sorted(bridge.running) if bridge else [])]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = None if bridge is None else asyncio.create_task(bridge.run())
        if bridge is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(bridge.connected.wait(), bridge.connect_timeout)
            if not bridge.connected.is_set():
                log.warning("MQTT broker %s:%d not reachable yet; retrying in the "
                            "background", bridge.addr.host, bridge.addr.port)
        yield
        await manager.shutdown()  # every run stopped, every bench safe
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(title="testbed", version="1", lifespan=lifespan,
                  responses={409: {"description": "the run database is damaged, or a row "
                                                  "does not parse (named in detail)"}},
                  description="Runs, market, ledger and live telemetry of the P2P energy "
                              "trading testbed. Control endpoints need a bearer token.")
    app.state.hub, app.state.manager, app.state.db = hub, manager, db_path
    app.state.bridge = bridge
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(hosts))
    guard = limiter or FailedAuthLimiter()
    app.state.limiter = guard

    def require_token(request: Request,
                      creds: Annotated[HTTPAuthorizationCredentials | None,
                                       Depends(BEARER)]) -> None:
        if token is None:
            raise HTTPException(403, "control is disabled: start the server with --token "
                                     "or TESTBED_TOKEN")
        if creds is None:
            raise HTTPException(401, "a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})
        client = request.client.host if request.client else "?"
        wait = guard.retry_after(client)
        if wait is not None:
            raise HTTPException(429, f"too many wrong tokens from {client}: retry in "
                                     f"{wait} s", headers={"Retry-After": str(wait)})
        if not secrets.compare_digest(creds.credentials.encode(), token.encode()):
            guard.failed(client)
            raise HTTPException(401, "a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming each field at fault; the offending input is echoed only when JSON can
        carry it (``1e999`` parses to infinity, which JSON cannot)."""
        detail = []
        for e in exc.errors():
            item = {k: e[k] for k in ("type", "loc", "msg") if k in e}
            value = e.get("input")
            if value is None or isinstance(value, str | bool | int) or (
                    isinstance(value, float) and math.isfinite(value)):
                item["input"] = value if not isinstance(value, str) else value[:200]
            detail.append(item)
        return JSONResponse({"detail": detail}, status_code=422)

    @contextlib.contextmanager
    def reading() -> Iterator[Store]:
        store = Store(db_path, readonly=True)
        try:
            yield store
        finally:
            store.close()

    @app.exception_handler(data.NotFound)
    async def not_found(request: Request, exc: data.NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(DamagedDatabase)
    async def damaged(request: Request, exc: DamagedDatabase) -> JSONResponse:
        """A database that went bad under the server, or a row that does not parse: one
        message, and no figure computed from it."""
        return JSONResponse({"detail": str(exc)}, status_code=409)

    def _run(store: Store, run_id: str) -> dict[str, Any]:
        row = data.get_run(store, run_id)
        return {**row, "live": run_id in active()}

    # -- control (first: /api/runs/start must not be taken for a run id) -----------------

    @app.post("/api/runs/start", response_model=StartOut, status_code=202, tags=["control"],
              dependencies=[Depends(require_token)],
              responses={400: {"description": "the body cannot be read (not UTF-8)"},
                         401: {"description": "no or wrong token"},
                         429: {"description": "too many wrong tokens from this client"},
                         403: {"description": "control disabled (no token configured)"},
                         409: {"description": "a run is in progress"},
                         422: {"description": "the scenario does not fit the rig"}})
    async def start(body: StartIn) -> dict[str, Any]:
        """Start a run in the server (mock rig by default); watch it on ``/ws/live``."""
        speed = None if body.speed is None else str(body.speed)
        try:
            run_id = await manager.start(body.scenario, body.rig, speed)
        except Busy as e:
            raise HTTPException(409, str(e)) from None
        except InputError as e:
            raise HTTPException(422, str(e)) from None
        return {"run_id": run_id, "status": "running" if run_id in manager.active
                else "finished"}

    @app.post("/api/runs/{run_id}/stop", response_model=StopOut, status_code=202,
              tags=["control"], dependencies=[Depends(require_token)],
              responses={401: {"description": "no or wrong token"},
                         429: {"description": "too many wrong tokens from this client"},
                         403: {"description": "control disabled (no token configured)"},
                         404: {"description": "no such run"},
                         409: {"description": "the run is not in progress in this server"}})
    async def stop(run_id: RunId) -> dict[str, Any]:
        """Stop a run at its next control period; it ends with every rig safe."""
        if manager.stop(run_id, "stopped from the API"):
            return {"run_id": run_id, "stopping": True}
        with reading() as store:
            data.get_run(store, run_id)
        raise HTTPException(409, f"run {run_id} is not in progress in this server")

    @app.post("/api/estop", response_model=EstopOut, tags=["control"],
              dependencies=[Depends(require_token)],
              responses={400: {"description": "the body cannot be read (not UTF-8)"},
                         401: {"description": "no or wrong token"},
                         429: {"description": "too many wrong tokens from this client"},
                         403: {"description": "control disabled (no token configured)"}})
    async def estop(body: EstopIn | None = None) -> dict[str, Any]:
        """Emergency stop: every run in this server, and with ``--mqtt`` every run on the
        broker, stops and goes to safe state."""
        reason = (body or EstopIn()).reason
        remote = sorted(bridge.running) if bridge else []
        stopped = manager.estop(reason)
        if bridge is None:
            return {"stopped": stopped, "mqtt": None}
        sent = await bridge.estop(reason)
        return {"stopped": stopped + (remote if sent else []),
                "mqtt": "sent" if sent else "not connected"}

    # -- reading ------------------------------------------------------------------------

    @app.get("/api/health", tags=["read"])
    def health() -> dict[str, Any]:
        return {"ok": True, "control": token is not None, "active": active(),
                "mqtt": None if bridge is None else bridge.connected.is_set()}

    @app.get("/api/runs", response_model=list[RunOut], tags=["read"])
    def runs(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        with reading() as store:
            return [{**r, "live": r["id"] in active()}
                    for r in data.list_runs(store)[:limit]]

    @app.get("/api/runs/{run_id}", response_model=RunOut, tags=["read"],
             responses={404: {"description": "no such run"}})
    def run(run_id: RunId) -> dict[str, Any]:
        with reading() as store:
            return _run(store, run_id)

    @app.get("/api/runs/{run_id}/intervals", response_model=list[IntervalOut], tags=["read"],
             responses={404: {"description": "no such run"}})
    def intervals(run_id: RunId) -> list[dict[str, Any]]:
        with reading() as store:
            data.get_run(store, run_id)
            return data.intervals(store, run_id)

    @app.get("/api/runs/{run_id}/households", response_model=list[HouseholdOut],
             tags=["read"], responses={404: {"description": "no such run"}})
    def households(run_id: RunId) -> list[dict[str, Any]]:
        with reading() as store:
            data.get_run(store, run_id)
            return data.households(store, run_id)

    @app.get("/api/runs/{run_id}/trades", response_model=list[TradeOut], tags=["read"],
             responses={404: {"description": "no such run"}})
    def trades(run_id: RunId) -> list[dict[str, Any]]:
        with reading() as store:
            data.get_run(store, run_id)
            return data.trades(store, run_id)

    @app.get("/api/runs/{run_id}/orderbook", tags=["read"],
             responses={404: {"description": "no such run"}})
    def orderbook(run_id: RunId, interval: Annotated[int | None, Query(ge=0, le=10**6)] = None
                  ) -> dict[str, Any]:
        """The signed orders of an interval (the last one by default), from its block."""
        with reading() as store:
            data.get_run(store, run_id)
            return data.orderbook(store, run_id, interval)

    @app.get("/api/runs/{run_id}/readings", tags=["read"],
             responses={404: {"description": "no such run"}})
    def readings(run_id: RunId,
                 field: Literal[data.READING_FIELDS] = "power_w",  # type: ignore[valid-type]
                 max_points: Annotated[int, Query(ge=1, le=20000)] = 1500,
                 household: Annotated[str | None, Query(max_length=64)] = None
                 ) -> dict[str, Any]:
        """Per-household series of one reading field and the grid's, downsampled."""
        with reading() as store:
            return data.readings(store, run_id, field, max_points, household)

    @app.get("/api/runs/{run_id}/blocks", response_model=list[BlockOut], tags=["ledger"],
             responses={404: {"description": "no such run"}})
    def blocks(run_id: RunId) -> list[dict[str, Any]]:
        with reading() as store:
            data.get_run(store, run_id)
            return data.blocks(store, run_id)

    @app.get("/api/runs/{run_id}/blocks/{height}", response_model=BlockOut, tags=["ledger"],
             responses={404: {"description": "no such run or block"}})
    def block(run_id: RunId, height: Annotated[int, PathParam(ge=0, le=10**9)]
              ) -> dict[str, Any]:
        with reading() as store:
            return data.block(store, run_id, height)

    @app.get("/api/runs/{run_id}/verify", response_model=VerifyOut, tags=["ledger"],
             responses={404: {"description": "no such run"}})
    def verify(run_id: RunId) -> dict[str, Any]:
        """Recompute every hash, Merkle root, link and signature of the run's chain."""
        with reading() as store:
            data.get_run(store, run_id)
            return data.verification(store, run_id)

    @app.get("/api/runs/{run_id}/validation", response_model=ValidationOut, tags=["read"],
             responses={404: {"description": "no such run"}})
    def validation(run_id: RunId) -> dict[str, Any]:
        """Cleared versus metered energy, trade by trade and rig by rig."""
        with reading() as store:
            data.get_run(store, run_id)
            return data.validation(store, run_id)

    @app.get("/api/runs/{run_id}/safety", response_model=list[dict[str, Any]],
             tags=["read"], responses={404: {"description": "no such run"}})
    def safety(run_id: RunId) -> list[dict[str, Any]]:
        """The run's safety events, as recorded when they happened: rigs taken off the bus,
        emergency stops, the final safe state."""
        with reading() as store:
            data.get_run(store, run_id)
            return data.safety(store, run_id)

    @app.get("/api/runs/{run_id}/figures", tags=["read"],
             responses={404: {"description": "no such run"}})
    def figures(run_id: RunId) -> dict[str, Any]:
        """Headline figures recomputed from the database, beside the paper's."""
        with reading() as store:
            return data.figures(store, run_id)

    @app.get("/api/live", tags=["live"])
    def live() -> dict[str, Any]:
        """The run in progress as the WebSocket ``/ws/live`` would start it."""
        return {**hub.snapshot(), "active": active()}

    # -- live feed and dashboard ----------------------------------------------------------

    @app.websocket("/ws/live")
    async def ws_live(ws: WebSocket) -> None:
        await ws.accept()
        q = hub.subscribe()
        gone = asyncio.ensure_future(_until_closed(ws))
        try:
            await ws.send_json({"topic": "snapshot", "payload": hub.snapshot()})
            while True:
                get = asyncio.ensure_future(q.get())
                done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone in done:
                    get.cancel()
                    break
                await ws.send_json(get.result())
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            hub.unsubscribe(q)
            gone.cancel()

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


async def _until_closed(ws: WebSocket) -> None:
    """Returns when the client goes away (anything it sends is ignored)."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            msg = await ws.receive()
            if msg.get("type") == "websocket.disconnect":
                return
