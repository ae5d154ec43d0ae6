"""Transports: bytes in and out of an instrument, over a TCP socket or a serial port.

They know nothing of framing (that is :mod:`drivers.protocol`) nor of what the bytes mean
(that is the device layer). Both give the same small interface, so a protocol runs over
either unchanged.
"""

from drivers.transport.base import LinkClosed, LinkError, LinkTimeout, Transport
from drivers.transport.factory import open_transport

__all__ = ["LinkClosed", "LinkError", "LinkTimeout", "Transport", "open_transport"]
