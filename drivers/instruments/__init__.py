"""Instruments as data: one TOML file per instrument model, shipped beside this module.

A Modbus file declares a register map (``[points]``: table, address, type, word order,
scale, unit, access); an SCPI file declares a command set (``[commands]``: query and
setting templates). The device layer looks points and commands up by their semantic name
(``power_w``, ``measured_voltage``...), so a lab adds an instrument by writing a file that
gives those names, never Python. Every file says which published document it follows.
"""

from drivers.instruments.model import (
    Command,
    InstrumentFileError,
    ModbusMap,
    Point,
    ScpiCommandSet,
    available_instruments,
    load_instrument,
)

__all__ = ["Command", "InstrumentFileError", "ModbusMap", "Point", "ScpiCommandSet",
           "available_instruments", "load_instrument"]
