"""Protocols: framing and request/reply over a transport (Modbus RTU/TCP, SCPI lines).

A protocol link knows how to ask and how to tell a good answer from a bad one; it does not
know what a register or a command means for a PV supply or a meter (that is the device
layer, driven by the instrument files).
"""
