"""A transport for a parsed resource, chosen by table."""

from __future__ import annotations

from collections.abc import Callable

from drivers.resources import Resource
from drivers.transport.base import Transport
from drivers.transport.serial_port import SerialTransport
from drivers.transport.tcp import TcpTransport

_BUILDERS: dict[str, Callable[[Resource], Transport]] = {
    "tcp": lambda r: TcpTransport(r.host, r.port, connect_timeout=r.timeout_s),
    "serial": lambda r: SerialTransport(r.device, r.baud, r.bytesize, r.parity, r.stopbits),
}


def open_transport(resource: Resource) -> Transport:
    """An unopened transport for ``resource`` (call ``await t.open()``)."""
    return _BUILDERS[resource.link](resource)
