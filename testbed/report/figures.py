"""A run as the database holds it: the one reading of the run tables for the API and reports.

Everything here is recomputed from the SQLite rows (runs, intervals, results, trades,
readings, blocks, txs), never from a run's in-memory outcome, so a dashboard, the HTTP API
and a report written a year later show the same figures the ledger can be audited against.
Exact values are stored as fraction strings (``"21/10"``); they are read with
:class:`~fractions.Fraction` and handed out as floats, rounded to the micro-unit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from contracts.numbers import exact
from testbed import json_input
from testbed.ledger.store import DamagedDatabase, Store

_SOURCE = re.compile(r"^built-in (rig|scenario) '(.+)'$")
READING_FIELDS = ("power_w", "pv_w", "load_w", "battery_w", "soc", "meter_net_wh")


class NotFound(LookupError):
    """No such run (or block) in this database."""


_FRACTION = re.compile(r"(-?\d{1,40})/(\d{1,40})")


def frac(value: Any, where: str = "a stored number") -> Fraction | None:
    """A stored exact value (``"21/10"``, ``"2.1"``, an int) or None for NULL/empty.
    Bounded like every number read from outside (``contracts.numbers.exact``); anything
    else raises :class:`~testbed.ledger.store.DamagedDatabase` naming ``where``: no figure is
    ever computed from a row that does not parse."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    m = _FRACTION.fullmatch(text)
    try:
        if m:
            return Fraction(int(m[1]), int(m[2]))
        return exact(value if isinstance(value, int | float) else text)
    except (ValueError, ZeroDivisionError):
        raise DamagedDatabase(where, f"not a number: {text[:40]!r}") from None


def f6(value: Fraction | float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def _loads(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json_input.loads(text)
    except ValueError:
        return None


def _natural(key: str) -> tuple[int, Any]:
    """Household ids sort as numbers where they are numbers ("2" before "10")."""
    return (0, int(key)) if key.isdigit() else (1, key)


# -- runs -----------------------------------------------------------------------------------


def _run_public(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "params": _loads(row.get("params")) or {},
            "summary": _loads(row.get("summary"))}


def list_runs(store: Store) -> list[dict[str, Any]]:
    """Every run, newest first."""
    return [_run_public(r) for r in store.runs(newest_first=True)]


def get_run(store: Store, run_id: str) -> dict[str, Any]:
    row = store.find_run(run_id)
    if row is None:
        raise NotFound(f"no run {run_id!r}")
    return _run_public(row)


def source_name(label: str | None, kind: str) -> str | None:
    """The name or path a run's ``params`` source label refers to, for reloading."""
    if not label:
        return None
    m = _SOURCE.match(label)
    if m:
        return m.group(2) if m.group(1) == kind else None
    return label


def load_scenario_of(run: dict[str, Any]) -> Any:
    """The run's scenario if it can still be loaded (built-in, or its file still exists)."""
    from testbed.config.scenario import load_scenario

    name = source_name(run["params"].get("scenario_source"), "scenario") or run.get("scenario")
    try:
        return load_scenario(name) if name else None
    except Exception:
        return None


def load_rig_of(run: dict[str, Any]) -> Any:
    from testbed.config.rig import load_rig

    name = source_name(run["params"].get("rig_source"), "rig") or run.get("rig")
    try:
        return load_rig(name) if name else None
    except Exception:
        return None


@dataclass(frozen=True)
class Scales:
    """Lab -> market conversion: ``hours = lab_s * time_scale / 3600``, ``kW = W / (1000 *
    power_scale)``. ``None`` where the run does not say and its rig cannot be reloaded."""

    time_scale: float | None
    power_scale: float | None


def scales_of(run: dict[str, Any]) -> Scales:
    p = run["params"]
    ts, ps = p.get("time_scale"), p.get("power_scale")
    if ts is None or ps is None:
        rig = load_rig_of(run)
        if rig is not None:
            ts = rig.time_scale if ts is None else ts
            ps = rig.power_scale if ps is None else ps
    return Scales(None if ts is None else float(ts), None if ps is None else float(ps))


# -- intervals, results, trades -------------------------------------------------------------


def intervals(store: Store, run_id: str) -> list[dict[str, Any]]:
    out = []
    for r in store.rows("intervals", run_id):
        where = f"{store.path} table intervals, run {run_id}, interval {r['idx']}"
        details = _loads(r["details"]) or {}
        if not isinstance(details, dict):
            raise DamagedDatabase(f"{where}, key 'details'", "not a JSON object")
        details.pop("checks", None)  # served by validation()
        out.append({"index": r["idx"],
                    "clearing_price": f6(frac(r["clearing_price"], f"{where}, key "
                                                                   "'clearing_price'")),
                    "clearing_price_exact": r["clearing_price"], "method": r["method"],
                    "volume_kwh": f6(frac(r["volume_kwh"], f"{where}, key 'volume_kwh'")),
                    "lab_start_s": r["lab_start_s"],
                    "lab_end_s": r["lab_end_s"], "details": details})
    return out


RESULT_KEYS = ("cleared_kwh", "metered_kwh", "grid_import_kwh", "grid_export_kwh",
               "market_aud", "grid_aud")


def _results(store: Store, run_id: str) -> list[tuple[int, str, dict[str, Fraction]]]:
    out = []
    for r in store.rows("results", run_id):
        where = (f"{store.path} table results, run {run_id}, interval {r['interval']}, "
                 f"household {r['household']}")
        body = _loads(r["body"])
        if not isinstance(body, dict):
            raise DamagedDatabase(where, "the row's body is not a JSON object")
        values = {}
        for k in RESULT_KEYS:
            x = frac(body.get(k), f"{where}, key {k!r}")
            if x is None:
                raise DamagedDatabase(f"{where}, key {k!r}", "missing")
            values[k] = x
        out.append((r["interval"], r["household"], values))
    return out


def households(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Per interval and household: cleared, metered, grid and money, market units."""
    rows = []
    for interval, hid, v in _results(store, run_id):
        rows.append({"interval": interval, "household": hid,
                     **{k: f6(x) for k, x in v.items()},
                     "net_aud": f6(v["market_aud"] + v["grid_aud"])})
    rows.sort(key=lambda r: (r["interval"], _natural(str(r["household"]))))
    return rows


def trades(store: Store, run_id: str) -> list[dict[str, Any]]:
    return [{"interval": r["interval"], "seq": r["seq"], "seller": r["seller"],
             "buyer": r["buyer"],
             "energy_kwh": f6(frac(r["energy_kwh"], f"{store.path} table trades, run "
                                   f"{run_id}, interval {r['interval']}, seq {r['seq']}")),
             "price": f6(frac(r["price"], f"{store.path} table trades, run {run_id}, "
                              f"interval {r['interval']}, seq {r['seq']}"))}
            for r in store.rows("trades", run_id)]


# -- ledger ---------------------------------------------------------------------------------


def blocks(store: Store, run_id: str) -> list[dict[str, Any]]:
    out = []
    for row in store.block_summaries(run_id):
        row.pop("run_id", None)
        out.append(row)
    return out


def block(store: Store, run_id: str, height: int) -> dict[str, Any]:
    rows = [b for b in store.blocks(run_id) if b["height"] == height]
    if not rows:
        raise NotFound(f"run {run_id!r} has no block {height}")
    row = dict(rows[0])
    row.pop("run_id", None)
    return row


def orderbook(store: Store, run_id: str, interval: int | None = None) -> dict[str, Any]:
    """The signed orders of an interval as sealed in its ledger block (last one if None)."""
    chain = [b for b in store.blocks(run_id) if b["interval"] is not None]
    if interval is not None:
        chain = [b for b in chain if b["interval"] == interval]
        if not chain:
            raise NotFound(f"run {run_id!r} has no interval {interval}")
    if not chain:
        return {"interval": interval, "orders": []}
    b = chain[-1]
    orders = []
    where = f"{store.path} table txs, run {run_id}, block {b['height']}"
    for tx in b["txs"]:
        if isinstance(tx, dict) and tx.get("type") == "order":
            try:
                orders.append({"household": str(tx["household"]), "side": str(tx["side"]),
                               "energy_kwh": f6(frac(tx["energy_kwh"], where)),
                               "price": f6(frac(tx["price"], where)),
                               "signature": tx.get("signature")})
            except KeyError as missing:
                raise DamagedDatabase(where, f"an order lacks {missing}") from None
    return {"interval": b["interval"], "block": b["height"], "orders": orders}


def verification(store: Store, run_id: str) -> dict[str, Any]:
    """Everything ``testbed ledger verify`` checks: every hash, root, link, signature,
    escrow and balance from genesis, the rows' form, the keys and the recorded head."""
    from testbed.ledger.chain import verify_run

    chain = store.blocks(run_id)
    err = verify_run(store, run_id)
    return {"ok": err is None, "blocks": len(chain),
            "head": chain[-1]["hash"] if chain else None,
            "height": None if err is None else err.height,
            "reason": None if err is None else err.reason}


def safety(store: Store, run_id: str) -> list[dict[str, Any]]:
    """The run's safety events as recorded when they happened (trips, stops, safe state)."""
    return store.safety_events(run_id)


def validation(store: Store, run_id: str) -> dict[str, Any]:
    """Cleared versus metered checks, as the run recorded them interval by interval."""
    checks = []
    for r in store.rows("intervals", run_id):
        for c in (_loads(r["details"]) or {}).get("checks", []):
            checks.append({"interval": r["idx"], **c})
    failed = [c for c in checks if not c.get("passed")]
    return {"checks": checks, "total": len(checks), "passed": len(checks) - len(failed),
            "failed": len(failed), "ok": not failed}


# -- readings -------------------------------------------------------------------------------


def readings(store: Store, run_id: str, field: str = "power_w", max_points: int = 1500,
             household: str | None = None) -> dict[str, Any]:
    """One field's series per household, and the grid's, downsampled to ``max_points``.

    The k-th reading of every rig belongs to control period k; the grid series is what the
    grid node must supply to balance the bus, ``-sum(power_w)`` over the rigs read in that
    period (converter and cable losses on the bus are not in it). Hours are market hours
    from the first reading when the run's time scale is known.
    """
    if field not in READING_FIELDS:
        raise ValueError(f"field must be one of {', '.join(READING_FIELDS)}")
    run = get_run(store, run_id)
    per: dict[str, list[tuple[float, Any, Any]]] = {}
    for hid, at, value, power in store.series(run_id, field, household):
        per.setdefault(hid, []).append((at, value, power))
    n = max((len(v) for v in per.values()), default=0)
    step = max(1, -(-n // max(1, max_points)))
    idx = list(range(0, n, step))
    ids = sorted(per, key=_natural)
    t = [next(per[h][k][0] for h in ids if k < len(per[h])) for k in idx]
    t0 = t[0] if t else 0.0
    sc = scales_of(run)
    hours = None if sc.time_scale is None else [
        round((x - t0) * sc.time_scale / 3600.0, 6) for x in t]
    series = {h: [per[h][k][1] if k < len(per[h]) else None for k in idx] for h in ids}
    grid = [-sum(per[h][k][2] for h in ids if k < len(per[h])) for k in idx]
    return {"run_id": run_id, "field": field, "step": step, "points": len(idx), "t": t,
            "hours": hours, "households": series, "grid_w": grid,
            "time_scale": sc.time_scale, "power_scale": sc.power_scale}


# -- figures beside the paper ---------------------------------------------------------------


def _difference(ours: object, paper: object) -> float | None:
    """``ours - paper`` to 6 places, or None where either is not a number."""
    if isinstance(ours, int | float) and isinstance(paper, int | float) \
            and not isinstance(ours, bool) and not isinstance(paper, bool):
        return round(float(ours) - float(paper), 6)
    return None


def paper_balance(before_eth: float | None, after_eth: float | None,
                  paper: tuple[Fraction, Fraction] | None) -> dict[str, float | None]:
    """The paper's balance before and after beside ours, and ours minus the paper's (None
    where the paper gives no balance for the account): the paper's Tables 3, 5, 6."""
    if paper is None:
        return {"paper_before_eth": None, "paper_after_eth": None,
                "paper_difference_before_eth": None, "paper_difference_after_eth": None}
    pb, pa = f6(paper[0]), f6(paper[1])
    return {"paper_before_eth": pb, "paper_after_eth": pa,
            "paper_difference_before_eth": _difference(before_eth, pb),
            "paper_difference_after_eth": _difference(after_eth, pa)}


_ROLE = {"sell": "seller", "buy": "buyer", None: "none"}


def figures(store: Store, run_id: str) -> dict[str, Any]:
    """The run's figures, computed once, from its rows: what the terminal prints, ``--json``,
    the API's ``/figures``, the dashboard and the HTML report all show.

    Self-sufficiency is community energy actually delivered (cleared volume less sellers'
    shortfall) over the buyers' metered demand; the community's net is every household's
    market plus grid money; money in AUD, energy in market kWh (lab Wh where named), token
    balances in tokens (``*_eth``) from the ledger's genesis and head. The paper's published
    figures (its one home: the scenario file's ``[paper]`` table, ``Scenario.paper`` and
    ``paper_balances``) are shown beside ours with the difference. Figures a run did not
    record (older releases) are None. Raises :class:`NotFound` for an unknown run and
    :class:`~testbed.ledger.store.DamagedDatabase` naming the table and row of a value that
    does not parse.
    """
    from contracts import ledger as rules
    from contracts.numbers import MICRO

    run = get_run(store, run_id)
    params = run["params"]
    ivs = intervals(store, run_id)
    res = _results(store, run_id)
    bodies = {(r["interval"], r["household"]): _loads(r["body"]) or {}
              for r in store.rows("results", run_id)}
    volume = sum((frac(r["volume_kwh"], f"{store.path} table intervals, run {run_id}, "
                                        f"interval {r['idx']}, key 'volume_kwh'")
                  or Fraction(0) for r in store.rows("intervals", run_id)), Fraction(0))
    shortfall = demand = community = gi = ge = Fraction(0)
    per: dict[str, dict[str, Fraction]] = {}
    for _, hid, v in res:
        if v["cleared_kwh"] > 0:
            shortfall += max(v["cleared_kwh"] - v["metered_kwh"], Fraction(0))
        demand += max(-v["metered_kwh"], Fraction(0))
        community += v["market_aud"] + v["grid_aud"]
        gi += v["grid_import_kwh"]
        ge += v["grid_export_kwh"]
        acc = per.setdefault(hid, dict.fromkeys(RESULT_KEYS, Fraction(0)))
        for k in RESULT_KEYS:
            acc[k] += v[k]
    first = ivs[0] if ivs else None
    ours: dict[str, Any] = {
        "clearing_price": first["clearing_price"] if first else None,
        "method": first["method"] if first else None,
        "volume_kwh": f6(volume),
        "self_sufficiency": f6((volume - shortfall) / demand if demand else Fraction(0)),
        "community_net_aud": f6(community),
    }
    scenario = load_scenario_of(run)
    rig = load_rig_of(run)
    paper_src: dict[str, Any] = dict(getattr(scenario, "paper", {}) or {})
    paper_bal: dict[str, tuple[Fraction, Fraction]] = dict(
        getattr(scenario, "paper_balances", {}) or {})
    paper = {k: {"ours": ours.get(k), "paper": v, "difference": _difference(ours.get(k), v)}
             for k, v in paper_src.items() if k in ours}
    paper_net = paper_src.get("households_net_aud", {}) or {}

    chain = store.blocks(run_id)
    opening = rules.balances_from(chain[:1]) if chain else {}
    after = store.balances(run_id)
    operator_tx = chain[0]["txs"][0] if chain and chain[0]["txs"] else {}
    rate = frac(operator_tx.get("aud_per_token"), f"{store.path} table txs, run {run_id}, "
                "block 0, key 'aud_per_token'") if isinstance(operator_tx, dict) else None
    rate = rate if rate is not None else frac(getattr(scenario, "aud_per_token", None))

    def detail(key: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for iv in ivs:
            value = iv["details"].get(key)
            if isinstance(value, dict):
                merged.update(value)
        return merged

    targets = {h: frac(x, f"{store.path} table intervals, run {run_id}, key 'targets_kwh'")
               for h, x in detail("targets_kwh").items()}
    lab_wh = detail("metered_wh_lab")
    funding, rejected = detail("funding"), detail("rejected_orders")
    tol_pct = params.get("tolerance_pct", getattr(rig, "tolerance_pct", None))
    specs = {h.id: h for h in getattr(scenario, "households", ())}
    unfunded: dict[str, int] = {}
    disputed_h: dict[str, str] = {}
    for (_, hid), body in bodies.items():
        unfunded[hid] = unfunded.get(hid, 0) + int(body.get("unfunded_micro") or 0)
        if body.get("disputed"):
            disputed_h[hid] = str(body["disputed"])
    rows = []
    for hid in sorted(per, key=_natural):
        v = per[hid]
        net = v["market_aud"] + v["grid_aud"]
        spec = specs.get(hid)
        target = targets.get(hid)
        dev = None
        if target is not None:
            dev = (v["metered_kwh"] - target) / abs(target) if target else v["metered_kwh"]
        before = opening.get(hid)
        row: dict[str, Any] = {
            "id": hid,
            "role": _ROLE.get(spec.side, "none") if spec else None,
            "net_kwh": f6(spec.net_kwh) if spec else None,
            "price": f6(spec.price) if spec else None,
            "offered_kwh": (f6(spec.order_kwh) if spec.side else 0.0) if spec else None,
            **{k: f6(x) for k, x in v.items()},
            "target_kwh": f6(target),
            "deviation_pct": None if dev is None else round(float(dev * 100), 4),
            "within_tolerance": None if dev is None or tol_pct is None
            else abs(dev) <= Fraction(str(tol_pct)) / 100,
            "lab_metered_wh": None if hid not in lab_wh else round(float(lab_wh[hid]), 4),
            "net_aud": f6(net),
            "disputed": disputed_h.get(hid),
            "balance_before_eth": None if before is None else before / MICRO,
            "balance_after_eth": None if hid not in after else after[hid] / MICRO,
            "balance_change_aud": None if before is None or hid not in after or rate is None
            else f6(Fraction(after[hid] - before, MICRO) * rate),
            "funding": funding.get(hid),
            "order_rejected": rejected.get(hid),
            "unfunded_micro": unfunded.get(hid, 0),
        }
        if paper_net:
            pv = paper_net.get(hid)
            row["paper_net_aud"] = pv
            row["paper_difference_aud"] = None if pv is None else round(float(net) - pv, 6)
        if paper_bal:
            row.update(paper_balance(row["balance_before_eth"], row["balance_after_eth"],
                                     paper_bal.get(hid)))
        rows.append(row)
    trade_rows = store.rows("trades", run_id)
    heights = {b["interval"]: b["hash"] for b in chain if b["interval"] is not None}
    checks = validation(store, run_id)
    sc_ts = params.get("time_scale", getattr(rig, "time_scale", None))
    sc_ps = params.get("power_scale", getattr(rig, "power_scale", None))
    return {
        "run_id": run_id, "scenario": run["scenario"], "title": getattr(scenario, "title", None),
        "rig": run["rig"], "status": run["status"],
        "mechanism": None if first is None else run["mechanism"],
        "intervals": [{"index": iv["index"], "clearing_price": iv["clearing_price"],
                       "method": iv["method"], "volume_kwh": iv["volume_kwh"],
                       "fills": sum(1 for t in trade_rows if t["interval"] == iv["index"]),
                       "rejected": list(iv["details"].get("rejected") or []),
                       "block": heights.get(iv["index"]),
                       "grid_import_wh_lab": _lab(iv["details"].get("grid_import_wh_lab")),
                       "grid_export_wh_lab": _lab(iv["details"].get("grid_export_wh_lab"))}
                      for iv in ivs],
        **ours, "oversell_shortfall_kwh": f6(shortfall), "total_demand_kwh": f6(demand),
        "grid_import_kwh": f6(gi), "grid_export_kwh": f6(ge), "households": rows,
        "paper": paper, "trades": len(trade_rows),
        "scales": {"time_scale": sc_ts, "power_scale": sc_ps,
                   "lab_wh_per_kwh": None if sc_ts is None or sc_ps is None
                   else round(1000.0 * float(sc_ps) / float(sc_ts), 6),
                   "control_period_s": params.get("control_period_s",
                                                  getattr(rig, "control_period_s", None))},
        "token": {"symbol": getattr(scenario, "token_symbol", None),
                  "aud_per_token": None if rate is None else float(rate)},
        "validation": {"checks": checks["total"],
                       "failed": [c.get("name") for c in checks["checks"]
                                  if not c.get("passed")],
                       "failed_checks": [{k: c.get(k) for k in ("suite", "name", "message")}
                                         for c in checks["checks"] if not c.get("passed")],
                       "dut": [{k: c.get(k) for k in ("suite", "name", "passed", "expected",
                                                      "measured", "message")}
                               for c in checks["checks"]
                               if str(c.get("suite", "")).endswith(" DUT")],
                       "tolerance_pct": tol_pct},
        "tripped": detail("tripped"), "funding": funding, "orders_rejected": rejected,
        # rigs that left the bus and came back: interval, why, seconds off, target Wh missed
        "readmitted": [{"interval": iv["index"], "household": h, **back} for iv in ivs
                       for h, back in (iv["details"].get("readmitted") or {}).items()],
        "disputed": {f"interval {iv['index']} household {h}": why for iv in ivs
                     for h, why in (iv["details"].get("disputed") or {}).items()},
        "ledger": {"blocks": len(chain), "head": run.get("ledger_head"),
                   "total_micro": sum(after.values()),
                   "grid_balance_eth": after.get("grid", 0) / MICRO},
    }


def _lab(value: Any) -> float | None:
    return None if not isinstance(value, int | float) else round(float(value), 4)
