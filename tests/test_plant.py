"""The one physics model: energy balance on the bus, battery limits and losses, relays."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.clock import VirtualClock
from drivers.limits import LimitError
from drivers.mock.plant import BatteryModel, Plant
from drivers.registry import build_bench
from testbed.config.rig import load_rig

MOCK = load_rig("mock")


def plant(leak: bool = True) -> Plant:
    p = Plant.from_rig(MOCK)
    if not leak:  # self-discharge alone may take an idle battery below SOC_min, physically
        for r in p.rigs.values():
            r.battery.self_discharge_per_h = 0.0
    return p


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 600), st.floats(0, 500), st.floats(-500, 500),
                          st.booleans(), st.floats(0.1, 120)), min_size=1, max_size=30))
def test_bus_balances_through_grid_node(steps: list[tuple[float, float, float, bool, float]]
                                        ) -> None:
    p = plant(leak=False)
    t = 0.0
    for i, (pv, load, bat, relay, dt) in enumerate(steps):
        rig = list(p.rigs.values())[i % len(p.rigs)]
        rig.pv.on = rig.load.on = rig.battery.enabled = True
        rig.pv.setpoint_w, rig.load.setpoint_w, rig.battery.setpoint_w = pv, load, bat
        rig.relay_closed = relay
        t += dt
        p.advance_to(t)
        assert abs(p.bus_imbalance_w()) < 1e-6
        for r in p.rigs.values():
            assert r.battery.soc_min - 1e-9 <= r.battery.soc <= r.battery.soc_max + 1e-9
    rigs_net = sum(r.meter.export_wh - r.meter.import_wh for r in p.rigs.values())
    grid_net = p.grid.meter.export_wh - p.grid.meter.import_wh
    assert rigs_net == pytest.approx(grid_net, abs=1e-6)


def test_battery_losses_follow_eq_7_to_11() -> None:
    b = BatteryModel(capacity_wh=100, energy_wh=50, max_power_w=1000, soc_min=0, soc_max=1,
                     eta_charge=0.9, eta_discharge=0.8, self_discharge_per_h=0.01, enabled=True)
    b.integrate(-100.0, 3600)  # charge 100 W for 1 h: +90 Wh, leak 0.5 Wh
    assert b.energy_wh == pytest.approx(50 + 90 - 0.5)
    e = b.energy_wh
    b.integrate(40.0, 1800)  # discharge 40 W for 0.5 h: -25 Wh, leak
    assert b.energy_wh == pytest.approx(e - 20 / 0.8 - e * 0.01 * 0.5)


def test_battery_stops_at_soc_limits_and_rated_power() -> None:
    b = BatteryModel(capacity_wh=10, energy_wh=2, max_power_w=50, soc_min=0.1, soc_max=0.9,
                     enabled=True, setpoint_w=500)
    p = b.deliverable(3600)
    assert p <= 50
    b.integrate(p, 3600)
    assert b.soc == pytest.approx(0.1) and "soc_low" in b.alarms
    b.setpoint_w = -500
    b.integrate(b.deliverable(3600), 3600)
    assert b.soc == pytest.approx(0.9)


def test_open_relay_islands_the_rig() -> None:
    p = plant()
    rig = p.rigs["1"]
    rig.pv.on, rig.pv.setpoint_w = True, 300
    p.advance_to(60)
    assert rig.meter.export_wh == 0 and p.grid.meter.export_wh == 0


async def test_mock_drivers_integrate_on_the_clock_and_guard_limits() -> None:
    clock = VirtualClock()
    bench = build_bench(load_rig("mock"), clock)
    h = bench.households["3"]
    await h.relay.set_closed(True)
    await h.pv.set_output(True)
    await h.pv.set_power(360.0)
    await clock.sleep_until(3600.0)
    m = await h.meter.read()
    assert m.export_wh == pytest.approx(360.0) and m.at == 3600.0
    g = await bench.grid.read()
    assert g.export_wh == pytest.approx(360.0)  # the grid node took it
    with pytest.raises(LimitError) as e:
        await h.pv.set_power(601.0)
    assert "household 3 pv" in str(e.value) and "power_w" in str(e.value)
    with pytest.raises(LimitError):
        await h.battery.set_power(-501.0)
    for d in bench.devices():
        await d.safe_state()
    assert not bench.ctx.mock_plant().rigs["3"].relay_closed
    assert not bench.ctx.mock_plant().rigs["3"].pv.on
