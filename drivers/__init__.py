"""Everything that talks to a bench: transports, protocols, device roles, the mock plant.

Layers, kept apart: transport (TCP socket, serial port) -> protocol (Modbus, SCPI) ->
device role (what a PV supply, battery, load, meter, relay or grid node can do). The mock
plant implements the same roles in-process, and behind protocol emulators.
"""
