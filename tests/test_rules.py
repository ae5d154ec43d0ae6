"""The rules that guard money and the bench, each tested so that breaking it fails a test.

Every test here was checked by breaking its rule on purpose once (the break is named in
each docstring) and seeing the test fail, then restoring the rule.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import ledger as rules
from contracts.mechanism import Fill
from contracts.numbers import aud_to_micro
from contracts.settlement import GRID, Tariff, settle
from drivers.clock import VirtualClock
from drivers.limits import GuardedBattery, GuardedPV, LimitError, check_power
from drivers.registry import build_bench
from drivers.spec import DeviceSpec, Limits
from testbed.config.rig import load_rig
from testbed.config.scenario import load_scenario
from testbed.ledger.chain import OPERATOR, Ledger
from testbed.ledger.store import Store
from testbed.run.controller import Controller
from testbed.run.events import EventBus
from testbed.run.runner import run_scenario

# -- the limit guard -------------------------------------------------------------------------


class SpyDriver:
    """Records every write that reaches it: the instrument's side of the wire."""

    def __init__(self) -> None:
        self.writes: list[float] = []

    async def set_power(self, watts: float) -> None:
        self.writes.append(watts)

    async def read(self) -> Any:  # the guard binds the driver's read; never called here
        raise NotImplementedError


def battery_spec(max_power_w: float = 1000.0, max_current_a: float | None = 10.0) -> DeviceSpec:
    return DeviceSpec("household 1 battery", "battery", "mock",
                      Limits(max_power_w=max_power_w, max_current_a=max_current_a))


@pytest.mark.parametrize("watts", [1200.0, -1200.0, float("nan"), 600.0, -600.0])
async def test_limit_guard_withholds_a_write_outside_the_envelope(watts: float) -> None:
    """Nothing outside the limits reaches the device: the guard refuses *before* the write.
    Break: call ``inner.set_power`` before ``check_power`` in ``_Guarded.set_power``."""
    spy = SpyDriver()
    guarded = GuardedBattery(spy, battery_spec(), voltage_v=48.0)  # type: ignore[arg-type]
    with pytest.raises(LimitError):
        await guarded.set_power(watts)  # 1200 W > 1000 W; 600 W at 48 V = 12.5 A > 10 A
    assert spy.writes == []
    await guarded.set_power(-400.0)  # inside every limit: it does reach the device
    assert spy.writes == [-400.0]


@pytest.mark.parametrize("watts", [600.0, -600.0])
def test_max_current_is_enforced_in_both_directions(watts: float) -> None:
    """Charging at -600 W on a 48 V bus draws 12.5 A, above a 10 A limit, like discharging.
    Break: ``amps = watts / voltage_v`` (no ``abs``) in ``check_power``."""
    with pytest.raises(LimitError, match=r"current_a 12\.5"):
        check_power(battery_spec(), watts, bidirectional=True, voltage_v=48.0)
    check_power(battery_spec(), watts * 0.8, bidirectional=True, voltage_v=48.0)  # 10 A: ok


def _drive(coroutine: Any) -> None:
    """Run a coroutine that never suspends (the guard in front of a spy) to its end."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise AssertionError("the guard suspended")


_limits = st.one_of(st.none(), st.floats(min_value=1e-3, max_value=1e6))
_watts = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([1000.0, -1000.0, 480.0, -480.0, 0.0, -0.0]))


@settings(max_examples=400, deadline=None)
@given(max_power=_limits, max_current=_limits, watts=_watts, bidirectional=st.booleans(),
       voltage=st.one_of(st.none(), st.just(0.0), st.floats(min_value=1.0, max_value=1e3),
                         st.just(48.0)))
def test_the_guard_passes_exactly_what_check_power_passes(
        max_power: float | None, max_current: float | None, watts: float,
        bidirectional: bool, voltage: float | None) -> None:
    """The guard's comparison against the clear envelope is a shortcut, not a second rule:
    a setpoint reaches the device iff :func:`check_power` accepts it, at every limit,
    voltage and value (NaN, infinities, both signs, the limits themselves).
    Breaks: a clear envelope 1e-8 wider than the limits (``clear * (1.0 + 1e-8)``: a
    setpoint 2e-9 above the current limit reached the device); the clear envelope the power
    limit alone (a setpoint over the current limit reached the device)."""
    spec = DeviceSpec("household 1 battery", "battery", "mock",
                      Limits(max_power_w=max_power, max_current_a=max_current))
    for w in (watts, *(x for x in (max_power, max_current and voltage and
                                   max_current * voltage) if x)):
        for sign in (1.0, -1.0):
            for nudge in (1.0, 1 + 1e-12, 1 - 1e-12, 1 + 2e-9, 1 - 2e-9, 0.5, 1.5):
                value = sign * w * nudge
                spy = SpyDriver()
                guard = GuardedBattery if bidirectional else GuardedPV
                guarded = guard(spy, spec, voltage_v=voltage)  # type: ignore[arg-type]
                try:
                    check_power(spec, value, bidirectional=bidirectional, voltage_v=voltage)
                    allowed = True
                except LimitError:
                    allowed = False
                try:
                    _drive(guarded.set_power(value))
                except LimitError:
                    assert not allowed, f"refused {value!r} that check_power accepts"
                    assert spy.writes == []
                else:
                    assert allowed, f"{value!r} reached the device; check_power refuses it"
                    assert spy.writes == [value]


# -- the supervisor: a rig off the bus has its relay open, read back -------------------------


async def test_a_rig_taken_off_the_bus_ends_with_its_relay_open_read_back() -> None:
    """Break: leave ``h.relay`` out of the safe-state writes in ``Controller.trip``."""
    clock = VirtualClock()
    bench = build_bench(load_rig("mock"), clock)
    events: list[tuple[str, dict[str, Any]]] = []
    controller = Controller(bench, clock, EventBus([lambda t, p: events.append((t, p))]))
    await controller.connect_rigs()
    assert all([await h.relay.read_closed() for h in bench.households.values()])

    await controller.trip("3", "test: meter lost")

    # read back from the relay itself, not from what the controller believes
    assert await bench.households["3"].relay.read_closed() is False
    assert all([await h.relay.read_closed() for hid, h in bench.households.items()
                if hid != "3"])
    off = [p for t, p in events if t == "safety" and p.get("event") == "rig_off_bus"]
    assert len(off) == 1 and off[0]["household"] == "3" and off[0]["relay_open"] is True
    await controller.safe_state()


async def test_a_relay_that_stays_closed_is_reported_not_assumed_open(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A contactor welded shut: the read-back says closed, and so must the safety event.
    Break: emit ``relay_open: True`` without reading the relay back."""
    from drivers.mock import devices

    async def stuck(self: devices.MockRelay, closed: bool) -> None:
        self._sync()
        self.rig.relay_closed = self.rig.relay_closed or closed  # opens are ignored

    monkeypatch.setattr(devices.MockRelay, "set_closed", stuck)
    clock = VirtualClock()
    bench = build_bench(load_rig("mock"), clock)
    events: list[tuple[str, dict[str, Any]]] = []
    controller = Controller(bench, clock, EventBus([lambda t, p: events.append((t, p))]))
    await controller.connect_rigs()
    await controller.trip("5", "test")
    off = next(p for t, p in events if t == "safety" and p.get("event") == "rig_off_bus")
    assert off["relay_open"] is False and "relay" in off["errors"][0]


# -- settlement ----------------------------------------------------------------------------

TARIFF = Tariff(Fraction("0.40"), Fraction("0.05"))
AUD_PER_TOKEN = Fraction(370)


def test_a_buyers_untaken_energy_is_not_credited_as_feed_in() -> None:
    """Bought 2 kWh, took 0.5: the 1.5 left is not fed in. Break: drop ``- bought[h]``."""
    fills = [Fill("s", "b", Fraction(2), Fraction("0.16"))]
    out = settle(fills, {"s": Fraction(2), "b": Fraction("-0.5")}, TARIFF, AUD_PER_TOKEN)
    b = next(h for h in out.households if h.id == "b")
    assert b.grid_export_kwh == 0 and b.grid_aud == 0
    assert not [t for t in out.transfers if t.source == GRID and t.target == "b"]
    # a buyer that truly exported beyond what it bought is paid for that export only
    out = settle(fills, {"s": Fraction(2), "b": Fraction("0.3")}, TARIFF, AUD_PER_TOKEN)
    b = next(h for h in out.households if h.id == "b")
    assert b.grid_export_kwh == Fraction("0.3")


@settings(max_examples=200, deadline=None)
@given(bought=st.integers(1, 5000), taken=st.integers(-5000, 5000))
def test_feed_in_never_exceeds_physical_export(bought: int, taken: int) -> None:
    """Whatever a buyer takes, it is paid feed-in for at most what its meter exported."""
    fills = [Fill("s", "b", Fraction(bought, 1000), Fraction("0.16"))]
    metered = {"s": Fraction(bought, 1000), "b": Fraction(taken, 1000)}
    b = next(h for h in settle(fills, metered, TARIFF, AUD_PER_TOKEN).households
             if h.id == "b")
    assert b.grid_export_kwh <= max(metered["b"], Fraction(0))


def _independent_micro(aud: str, aud_per_token: str) -> int:
    """AUD -> micro-units with the decimal module's half-even rounding: not our code."""
    exact = Decimal(aud) / Decimal(aud_per_token) * Decimal(10**6)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


@pytest.mark.parametrize(("energy", "price", "micro"), [
    ("0.005", "0.185", 2),   # 0.000925 AUD = 2.5 µ: the tie goes to the even 2
    ("0.007", "0.185", 4),   # 0.001295 AUD = 3.5 µ: to the even 4
    ("0.0185", "0.05", 2),   # 0.000925 AUD again, from a feed-in sized amount
    ("0.001", "0.37", 1),    # exactly 1 µ: no rounding at all
])
def test_money_rounds_half_even_at_an_exact_tie(energy: str, price: str, micro: int) -> None:
    """Break: round half up (``floor(x + 1/2)``) in ``contracts.numbers.round_half_even``."""
    aud = str(Decimal(energy) * Decimal(price))
    assert _independent_micro(aud, "370") == micro
    fills = [Fill("s", "b", Fraction(energy), Fraction(price))]
    out = settle(fills, {"s": Fraction(energy), "b": -Fraction(energy)}, TARIFF,
                 AUD_PER_TOKEN)
    paid = [t.amount for t in out.transfers if t.source == "b" and t.target == "s"]
    assert paid == [micro]


@settings(max_examples=300, deadline=None)
@given(micro2=st.integers(0, 10**9))
def test_every_half_micro_tie_rounds_to_even(micro2: int) -> None:
    """Amounts of k/2 micro-units, ties included, against the decimal module."""
    aud = Decimal(micro2) / 2 / Decimal(10**6) * 370
    assert aud_to_micro(Fraction(aud), AUD_PER_TOKEN) == _independent_micro(str(aud), "370")


# -- the store: an interval is written whole or not at all -----------------------------------

INTERVAL_TABLES = ("intervals", "trades", "results", "readings")


async def test_an_interval_that_fails_half_way_leaves_no_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last write of the interval fails after the block, trades and results went in.
    Break: make ``Store.transaction`` a plain ``yield`` (no ``_atomic()``)."""
    store = Store(tmp_path / "half.db")
    real_insert = Store.insert

    def failing_insert(self: Store, table: str, rows: Any, fixed: Any = None) -> None:
        if table == "readings":
            raise OSError("disk full")
        real_insert(self, table, rows, fixed)

    monkeypatch.setattr(Store, "insert", failing_insert)
    with pytest.raises(OSError, match="disk full"):
        await run_scenario(load_scenario("scenario2"), load_rig("mock"), store,
                           run_id="half")
    db = store.db
    for table in INTERVAL_TABLES:
        assert db.execute(f"select count(*) from {table} where run_id = 'half'"
                          ).fetchone()[0] == 0, table
    # only genesis is on the chain: the interval's block and its transactions rolled back
    assert [r[0] for r in db.execute(
        "select height from blocks where run_id = 'half'").fetchall()] == [0]
    assert db.execute("select count(*) from txs where run_id = 'half' and height > 0"
                      ).fetchone()[0] == 0
    assert store.run("half")["status"] == "failed"


# -- the ledger's trust anchor ---------------------------------------------------------------


def _genesis(store: Store, declared: Ed25519PrivateKey, signer: Ed25519PrivateKey,
             ) -> list[dict[str, Any]]:
    """A genesis block that declares ``declared``'s key, sealed and signed by ``signer``."""
    pub = declared.public_key().public_bytes_raw().hex()
    txs: list[dict[str, Any]] = [{"type": "operator", "public_key": pub,
                                  "aud_per_token": "370"},
                                 {"type": "open", "account": GRID}]
    root = rules.merkle_root([rules.tx_hash(tx) for tx in txs])
    head = rules.header(0, rules.GENESIS_PREV, None, root)
    digest = rules.block_hash(head)
    return [{**head, "hash": digest, "signature": rules.sign(signer, bytes.fromhex(digest)),
             "txs": txs}]


def test_verify_rejects_a_genesis_that_names_another_operator(tmp_path: Path) -> None:
    """Signed by the real operator, but declaring another key as the root of trust.
    Break: delete the ``h == 0 and draft.operator != operator_public`` check."""
    real, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    real_pub = real.public_key().public_bytes_raw().hex()
    store = Store(tmp_path / "g.db")
    assert rules.verify_chain(_genesis(store, real, real), real_pub) is None
    err = rules.verify_chain(_genesis(store, other, real), real_pub)
    assert err is not None and err.height == 0 and "another operator" in err.reason


def test_a_real_runs_genesis_is_checked_against_the_anchor_given(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.db")
    store.insert("runs", {"id": "r", "scenario": "t", "status": "running"})
    with store.transaction():
        led = Ledger.create(store, "r", ["a"], {"a": 1000})
    assert rules.verify_chain(store.blocks("r"), led.public(OPERATOR)) is None
    stranger = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
    assert rules.verify_chain(store.blocks("r"), stranger) is not None
