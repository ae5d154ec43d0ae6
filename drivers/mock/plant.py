"""The simulated plant: every mock, in-process or behind a protocol server, is this model.

Per household rig: a PV supply that delivers its setpoint (within its limits), an
electronic load that draws its setpoint, a battery converter whose state of energy follows
market.md Eq. 7-11 (charge/discharge efficiencies, self-discharge, power and SOC limits),
a meter integrating import/export energy at the rig's bus connection, and a relay onto the
bus. The grid node holds the bus and takes or gives whatever the rigs do not balance, so
``sum(rig power) == power into the grid`` at every instant.

Time is explicit (ophyd-async style): the plant integrates piecewise-constant powers from
its last update to the time it is told, so the same model runs under a virtual clock or a
real one. Units are lab units: W, Wh, s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.spec import DeviceSpec, RigSpec

H = 3600.0  # seconds per hour


@dataclass
class PVModel:
    max_power_w: float
    setpoint_w: float = 0.0
    on: bool = False

    def output(self) -> float:
        return min(max(self.setpoint_w, 0.0), self.max_power_w) if self.on else 0.0


@dataclass
class LoadModel:
    max_power_w: float
    setpoint_w: float = 0.0
    on: bool = False

    def draw(self) -> float:
        return min(max(self.setpoint_w, 0.0), self.max_power_w) if self.on else 0.0


@dataclass
class BatteryModel:
    """Eq. 7-11: ``E += dt*eta_c*P_c - E*eta_l*dt`` charging, ``E -= dt*P_d/eta_d + E*eta_l*dt``."""

    capacity_wh: float
    energy_wh: float
    max_power_w: float
    soc_min: float = 0.1
    soc_max: float = 0.95
    eta_charge: float = 0.95
    eta_discharge: float = 0.95
    self_discharge_per_h: float = 0.0
    temperature_c: float = 25.0
    setpoint_w: float = 0.0  # + discharge into the bus, - charge
    enabled: bool = False
    actual_w: float = 0.0
    alarms: set[str] = field(default_factory=set)

    @property
    def soc(self) -> float:
        return self.energy_wh / self.capacity_wh

    def deliverable(self, dt_s: float) -> float:
        """The bus power the converter can hold for ``dt_s`` given setpoint and limits."""
        if not self.enabled or dt_s <= 0:
            return 0.0
        p = max(-self.max_power_w, min(self.max_power_w, self.setpoint_w))
        dt_h = dt_s / H
        leak = self.energy_wh * self.self_discharge_per_h * dt_h
        if p > 0:  # discharging: stop at SOC_min
            room = self.energy_wh - leak - self.soc_min * self.capacity_wh
            p = min(p, max(room, 0.0) * self.eta_discharge / dt_h)
        elif p < 0:  # charging: stop at SOC_max
            room = self.soc_max * self.capacity_wh - self.energy_wh + leak
            p = -min(-p, max(room, 0.0) / (self.eta_charge * dt_h))
        return p

    def integrate(self, power_w: float, dt_s: float) -> None:
        dt_h = dt_s / H
        energy = self.energy_wh
        leak = energy * self.self_discharge_per_h * dt_h
        if power_w >= 0:
            energy -= dt_h * power_w / self.eta_discharge + leak
        else:
            energy += dt_h * self.eta_charge * (-power_w) - leak
        self.energy_wh = energy = max(energy, 0.0)
        self.actual_w = power_w
        soc, alarms = energy / self.capacity_wh, self.alarms
        if soc <= self.soc_min + 1e-9:
            alarms.add("soc_low")
        else:
            alarms.discard("soc_low")
        if soc >= self.soc_max - 1e-9:
            alarms.add("soc_high")
        else:
            alarms.discard("soc_high")


@dataclass
class MeterModel:
    import_wh: float = 0.0
    export_wh: float = 0.0
    power_w: float = 0.0

    def integrate(self, power_w: float, dt_s: float) -> None:
        e = power_w * dt_s / H
        if e >= 0:
            self.export_wh += e
        else:
            self.import_wh -= e
        self.power_w = power_w


@dataclass
class RigModel:
    id: str
    pv: PVModel
    load: LoadModel
    battery: BatteryModel
    meter: MeterModel = field(default_factory=MeterModel)
    relay_closed: bool = False

    def bus_power(self, battery_w: float) -> float:
        """Net power onto the bus; an open relay islands the rig and nothing flows."""
        if not self.relay_closed:
            return 0.0
        return self.pv.output() + battery_w - self.load.draw()


@dataclass
class GridModel:
    max_power_w: float
    enabled: bool = True
    meter: MeterModel = field(default_factory=MeterModel)  # import = grid -> bus -> rigs


class Plant:
    """The whole bench in one object; advance it to a time, then read or write it."""

    def __init__(self, rigs: dict[str, RigModel], grid: GridModel, bus_voltage_v: float,
                 start: float = 0.0) -> None:
        self.rigs = rigs
        self.grid = grid
        self.bus_voltage_v = bus_voltage_v
        self.t = start
        self.firmware_gain: dict[str, float] = {}  # device name -> BMS energy report gain

    @classmethod
    def from_rig(cls, rig: RigSpec, start: float = 0.0) -> Plant:
        rigs = {h.id: _rig_model(h.id, h.devices) for h in rig.households}
        gmax = rig.grid.limits.max_power_w or float("inf")
        plant = cls(rigs, GridModel(max_power_w=gmax), rig.bus_voltage_v, start)
        for h in rig.households:
            bat = h.devices["battery"]
            if "firmware_energy_gain" in bat.params:
                plant.firmware_gain[bat.name] = float(bat.params["firmware_energy_gain"])
        return plant

    def advance_to(self, t: float) -> None:
        """Integrate every model from the last update to ``t`` at constant setpoints."""
        dt = t - self.t
        if dt <= 0:
            return
        total = 0.0
        for rig in self.rigs.values():
            bw = rig.battery.deliverable(dt) if rig.relay_closed else 0.0
            p = rig.bus_power(bw)
            rig.battery.integrate(bw, dt)
            rig.meter.integrate(p, dt)
            total += p
        # The grid node balances the bus: it takes what the rigs export net, and gives what
        # they import. Its meter counts from the community's side: export = bus -> grid.
        self.grid.meter.integrate(total if self.grid.enabled else 0.0, dt)
        self.t = t

    def bus_imbalance_w(self) -> float:
        """Zero when the grid node balances the bus (a check for tests and the supervisor)."""
        rigs = sum(r.meter.power_w for r in self.rigs.values())
        return rigs - self.grid.meter.power_w if self.grid.enabled else rigs

    def safe_state(self) -> None:
        for rig in self.rigs.values():
            rig.pv.on = False
            rig.load.on = False
            rig.battery.enabled = False
            rig.battery.setpoint_w = 0.0
            rig.relay_closed = False


def _rig_model(hid: str, devices: dict[str, DeviceSpec]) -> RigModel:
    pv, load, bat = devices["pv"], devices["load"], devices["battery"]
    p = bat.params
    capacity = float(p.get("capacity_wh", 100.0))
    return RigModel(
        id=hid,
        pv=PVModel(max_power_w=pv.limits.max_power_w or float("inf")),
        load=LoadModel(max_power_w=load.limits.max_power_w or float("inf")),
        battery=BatteryModel(
            capacity_wh=capacity,
            energy_wh=capacity * float(p.get("soc_initial", 0.5)),
            max_power_w=bat.limits.max_power_w or float("inf"),
            soc_min=bat.limits.soc_min if bat.limits.soc_min is not None else 0.0,
            soc_max=bat.limits.soc_max if bat.limits.soc_max is not None else 1.0,
            eta_charge=float(p.get("eta_charge", 0.95)),
            eta_discharge=float(p.get("eta_discharge", 0.95)),
            self_discharge_per_h=float(p.get("self_discharge_per_h", 0.0)),
            temperature_c=float(p.get("temperature_c", 25.0)),
        ),
    )
