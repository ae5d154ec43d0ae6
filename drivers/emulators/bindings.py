"""How an emulated instrument's points and commands couple to the plant, by role.

A binding answers ``get(name, channel)`` and ``set(name, channel, value)`` for the semantic
names of the instrument files (``measured_power``, ``import_wh``, ``closed``...), bringing
the plant up to the clock's now first, exactly as the in-process mock devices do, so both
ways of serving the plant behave alike. Names a role does not couple (an alarm threshold,
a current range) are simply stored, as an instrument's settings would be.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drivers.clock import Clock
from drivers.mock.plant import BatteryModel, GridModel, MeterModel, Plant, RigModel

Getter = Callable[[int], Any]
Setter = Callable[[int, Any], None]


class Binding:
    """One emulated instrument's view of the plant; subclasses fill ``getters``/``setters``."""

    def __init__(self, plant: Plant, clock: Clock, name: str, identity: str) -> None:
        self.plant, self.clock, self.name, self.identity = plant, clock, name, identity
        self.stored: dict[tuple[str, int], Any] = {}
        self.getters: dict[str, Getter] = {"identify": lambda ch: self.identity}
        self.setters: dict[str, Setter] = {}
        self.last_write = clock.now()
        self.watchdog_s = 0.0
        self.watchdog_trips = 0

    def sync(self) -> None:
        self.plant.advance_to(self.clock.now())

    @property
    def v_bus(self) -> float:
        return self.plant.bus_voltage_v

    def get(self, name: str, channel: int = 0) -> Any:
        self.sync()
        getter = self.getters.get(name)
        return getter(channel) if getter else self.stored.get((name, channel), 0.0)

    def set(self, name: str, channel: int, value: Any) -> None:
        self.sync()
        self.last_write = self.clock.now()
        self.stored[(name, channel)] = value
        setter = self.setters.get(name)
        if setter:
            setter(channel, value)

    # A communication watchdog: armed by writing a timeout, fed by every write.
    def arm_watchdog(self, channel: int, seconds: Any) -> None:
        self.watchdog_s = float(seconds)

    def check_watchdog(self) -> bool:
        """Turn the output off if the controller fell silent; True when it tripped now."""
        if self.watchdog_s > 0 and self.clock.now() - self.last_write > self.watchdog_s:
            self.sync()
            self.on_watchdog()
            self.watchdog_s = 0.0  # tripped: a new write of the timeout re-arms it
            self.watchdog_trips += 1
            return True
        return False

    def on_watchdog(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no output to turn off")


class _RigBinding(Binding):
    def __init__(self, plant: Plant, clock: Clock, name: str, identity: str, rig_id: str) -> None:
        super().__init__(plant, clock, name, identity)
        self.rig_id = rig_id

    @property
    def rig(self) -> RigModel:
        return self.plant.rigs[self.rig_id]


class SupplyBinding(_RigBinding):
    """A DC supply as PV: CC into the bus (I x V_bus) once its voltage is above the bus."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.getters |= {
            "voltage": lambda ch: self.stored.get(("voltage", ch), 0.0),
            "current": lambda ch: self.stored.get(("current", ch), 0.0),
            "power": lambda ch: self.rig.pv.setpoint_w,
            "output": lambda ch: self.rig.pv.on,
            "measured_voltage": lambda ch: self.v_bus,
            "measured_current": lambda ch: self._power() / self.v_bus,
            "measured_power": lambda ch: self._power(),
        }
        self.setters |= {
            "voltage": lambda ch, v: self._apply_cc(ch),
            "current": lambda ch, v: self._apply_cc(ch),
            "power": lambda ch, v: setattr(self.rig.pv, "setpoint_w", float(v)),
            "output": lambda ch, v: setattr(self.rig.pv, "on", bool(v)),
            "watchdog": self.arm_watchdog,
        }

    def _apply_cc(self, channel: int) -> None:
        volts = self.stored.get(("voltage", channel), 0.0)
        amps = self.stored.get(("current", channel), 0.0)
        self.rig.pv.setpoint_w = amps * self.v_bus if volts >= self.v_bus - 1e-9 else 0.0

    def _power(self) -> float:
        return self.rig.pv.output() if self.rig.relay_closed else 0.0

    def on_watchdog(self) -> None:
        self.rig.pv.on = False


class LoadBinding(_RigBinding):
    """An electronic load in constant power (or constant current at the bus voltage)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.getters |= {
            "power": lambda ch: self.rig.load.setpoint_w,
            "current": lambda ch: self.rig.load.setpoint_w / self.v_bus,
            "input": lambda ch: self.rig.load.on,
            "measured_voltage": lambda ch: self.v_bus,
            "measured_current": lambda ch: self._power() / self.v_bus,
            "measured_power": lambda ch: self._power(),
        }
        self.setters |= {
            "power": lambda ch, v: setattr(self.rig.load, "setpoint_w", float(v)),
            "current": lambda ch, v: setattr(self.rig.load, "setpoint_w", float(v) * self.v_bus),
            "input": lambda ch, v: setattr(self.rig.load, "on", bool(v)),
        }

    def _power(self) -> float:
        return self.rig.load.draw() if self.rig.relay_closed else 0.0

    def on_watchdog(self) -> None:
        self.rig.load.on = False


class _ConverterBinding(_RigBinding):
    """What every battery converter does, whatever its protocol: disabled, it sets zero;
    its watchdog disables it."""

    def _enable(self, on: bool) -> None:
        self.rig.battery.enabled = on
        if not on:
            self.rig.battery.setpoint_w = 0.0

    def on_watchdog(self) -> None:
        self._enable(False)


class BatteryBinding(_ConverterBinding):
    """BMS values and the converter setpoint of one rig's battery."""

    def __init__(self, *args: Any, alarm_bits: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        def b() -> BatteryModel:  # the model object, looked up each time
            return self.rig.battery

        self.getters |= {
            "soc": lambda ch: b().soc,
            "energy_wh": lambda ch: b().energy_wh,
            "remaining_ah": lambda ch: b().energy_wh / self.v_bus,  # a BMS counting Ah
            "capacity_wh": lambda ch: b().capacity_wh,
            "capacity_ah": lambda ch: b().capacity_wh / self.v_bus,
            "power_w": lambda ch: b().actual_w,
            "voltage_v": lambda ch: self.v_bus,
            "current_a": lambda ch: b().actual_w / self.v_bus,
            "temperature_c": lambda ch: b().temperature_c,
            "alarms": lambda ch: sum((1 << i for i, n in enumerate(alarm_bits)
                                      if n in b().alarms), 0),
            "enabled": lambda ch: b().enabled,
            "power_setpoint_w": lambda ch: b().setpoint_w,
            "watchdog_s": lambda ch: self.watchdog_s,
        }
        self.setters |= {
            "enabled": lambda ch, v: self._enable(bool(v)),
            "power_setpoint_w": lambda ch, v: setattr(b(), "setpoint_w", float(v)),
            "watchdog_s": self.arm_watchdog,
        }


class ConverterScpiBinding(_ConverterBinding):
    """A bidirectional SCPI supply as a battery's converter: ``power`` is the signed
    setpoint (+ into the bus), ``output`` the enable; the BMS is another instrument."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.getters |= {
            "power": lambda ch: self.rig.battery.setpoint_w,
            "output": lambda ch: self.rig.battery.enabled,
            "measured_voltage": lambda ch: self.v_bus,
            "measured_current": lambda ch: self.rig.battery.actual_w / self.v_bus,
            "measured_power": lambda ch: self.rig.battery.actual_w,
        }
        self.setters |= {
            "power": lambda ch, v: setattr(self.rig.battery, "setpoint_w", float(v)),
            "output": lambda ch, v: self._enable(bool(v)),
            "watchdog": self.arm_watchdog,
        }


class MeterBinding(_RigBinding):
    """The rig's bus-connection meter (a DC bus: phase 1 carries everything, 0 Hz)."""

    def __init__(self, *args: Any, unit: int = 1) -> None:
        super().__init__(*args)
        def m() -> MeterModel:
            return self.rig.meter

        self.getters |= {
            "voltage_v": lambda ch: self.v_bus,
            "current_a": lambda ch: m().power_w / self.v_bus,
            "power_w": lambda ch: m().power_w,
            "power_l1_w": lambda ch: m().power_w,
            "import_wh": lambda ch: m().import_wh,
            "export_wh": lambda ch: m().export_wh,
            "total_wh": lambda ch: m().import_wh + m().export_wh,
            "address": lambda ch: unit,
        }


class GridBinding(Binding):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        def g() -> GridModel:
            return self.plant.grid

        self.getters |= {
            "voltage_v": lambda ch: self.v_bus,
            "current_a": lambda ch: g().meter.power_w / self.v_bus,
            "power_w": lambda ch: g().meter.power_w,
            "import_wh": lambda ch: g().meter.import_wh,
            "export_wh": lambda ch: g().meter.export_wh,
            "enabled": lambda ch: g().enabled,
        }
        self.setters |= {"enabled": lambda ch, v: setattr(g(), "enabled", bool(v))}


class GridScpiBinding(Binding):
    """A bidirectional SCPI supply as the grid node: ``output`` switches the node, the
    measured power is the grid's, + into the bus (the grid meter's export negated);
    ``voltage`` is stored (the plant's bus is held at the rig's voltage)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        def g() -> GridModel:
            return self.plant.grid

        self.getters |= {
            "output": lambda ch: g().enabled,
            "measured_voltage": lambda ch: self.v_bus,
            "measured_current": lambda ch: -g().meter.power_w / self.v_bus,
            "measured_power": lambda ch: -g().meter.power_w,
        }
        self.setters |= {"output": lambda ch, v: setattr(g(), "enabled", bool(v))}


class GridSourceScpiBinding(Binding):
    """The supply half of a grid node built from a supply plus a load: in constant voltage
    at the bus it sources what the rigs draw, never sinks. ``output`` switches the node
    (the plant's bus is held while it is on); its measured current and power are the grid
    meter's import part (grid -> bus), 0 while the rigs export."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)

        def g() -> GridModel:
            return self.plant.grid

        self.getters |= {
            "output": lambda ch: g().enabled,
            "measured_voltage": lambda ch: self.v_bus,
            "measured_current": lambda ch: max(0.0, -g().meter.power_w) / self.v_bus,
            "measured_power": lambda ch: max(0.0, -g().meter.power_w),
        }
        self.setters |= {"output": lambda ch, v: setattr(g(), "enabled", bool(v))}


class GridSinkScpiBinding(Binding):
    """The load half of a grid node built from a supply plus a load: in constant voltage a
    little above the bus it sinks what the rigs export (the grid meter's export part, bus ->
    grid) while its ``input`` is on, nothing otherwise."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.on = False

        def sunk() -> float:
            return max(0.0, self.plant.grid.meter.power_w) if self.on else 0.0

        self.getters |= {
            "input": lambda ch: self.on,
            "measured_voltage": lambda ch: self.v_bus,
            "measured_current": lambda ch: sunk() / self.v_bus,
            "measured_power": lambda ch: sunk(),
        }
        self.setters |= {"input": lambda ch, v: setattr(self, "on", bool(v))}


class ChannelsBinding(Binding):
    """A multi-channel instrument whose channels serve different households (a meter or
    load with one register block per channel): each name is answered by the channel's own
    binding; a channel no household uses stores what is written to it."""

    def __init__(self, *args: Any, channels: dict[int, Binding]) -> None:
        super().__init__(*args)
        self.channels = channels

    def get(self, name: str, channel: int = 0) -> Any:
        own = self.channels.get(channel)
        return own.get(name, channel) if own is not None else super().get(name, channel)

    def set(self, name: str, channel: int, value: Any) -> None:
        own = self.channels.get(channel)
        if own is not None:
            own.set(name, channel, value)
        else:
            super().set(name, channel, value)


class RelayBoardBinding(Binding):
    """A relay board: coil ``channel`` is the contactor of rig ``rig_ids[channel]``."""

    def __init__(self, *args: Any, rig_ids: list[str | None]) -> None:
        super().__init__(*args)
        self.rig_ids = rig_ids
        self.getters |= {"closed": self._closed}
        self.setters |= {"closed": self._close}

    def _closed(self, channel: int) -> bool:
        rig = self.rig_ids[channel] if channel < len(self.rig_ids) else None
        return self.plant.rigs[rig].relay_closed if rig else \
            bool(self.stored.get(("closed", channel), False))

    def _close(self, channel: int, value: Any) -> None:
        rig = self.rig_ids[channel] if channel < len(self.rig_ids) else None
        if rig:
            self.plant.rigs[rig].relay_closed = bool(value)
