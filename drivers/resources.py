"""Where an instrument is, written the way lab people write it, parsed into one value.

Two families of names: VISA-style strings for SCPI instruments (``TCPIP::10.0.0.5::5025::SOCKET``,
``ASRL/dev/ttyUSB0::INSTR``) and URLs for Modbus ones (``modbus+tcp://host:502?unit=3``,
``modbus+rtu:///dev/ttyUSB0?baud=9600&unit=3``). Every malformed name fails with a message
that shows the accepted forms, so a typo in a rig file is found before a run, not during it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

VISA_FORMS = "TCPIP[n]::HOST::PORT::SOCKET or ASRL<device path or number>::INSTR"
MODBUS_FORMS = "modbus+tcp://HOST:PORT?unit=N or modbus+rtu:///dev/PATH?baud=9600&unit=N"


class ResourceError(ValueError):
    def __init__(self, resource: str, problem: str) -> None:
        self.resource = resource
        super().__init__(f"resource {resource!r}: {problem}")


@dataclass(frozen=True, slots=True)
class Resource:
    """A parsed resource. ``link`` is ``tcp`` or ``serial``; ``protocol`` ``scpi`` or ``modbus``."""

    text: str
    protocol: str
    link: str
    host: str = ""
    port: int = 0
    device: str = ""  # serial device path
    baud: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1
    unit: int = 1  # Modbus device (slave) id
    timeout_s: float = 1.0

    @property
    def link_key(self) -> str:
        """Devices that share this key share one connection (a serial bus, a Modbus gateway)."""
        where = f"{self.host}:{self.port}" if self.link == "tcp" else self.device
        return f"{self.protocol}+{self.link}://{where}"

    def __str__(self) -> str:
        return self.text


def parse_resource(text: str) -> Resource:
    """Parse any accepted resource string; dispatch on its prefix."""
    stripped = text.strip()
    for prefix, parser in _PARSERS:
        if stripped.upper().startswith(prefix):
            return parser(stripped)
    raise ResourceError(text, f"unknown form; expected {VISA_FORMS}, or {MODBUS_FORMS}")


def _visa_tcp(text: str) -> Resource:
    m = re.fullmatch(r"TCPIP\d*::([^:]+)::(\d+)::SOCKET", text, re.IGNORECASE)
    if not m:
        if re.fullmatch(r"TCPIP\d*::[^:]+(::INST\w*)?(::INSTR)?", text, re.IGNORECASE):
            raise ResourceError(text, "VXI-11/HiSLIP is not supported; use the raw socket form "
                                      "TCPIP::HOST::PORT::SOCKET (port 5025 on most instruments)")
        raise ResourceError(text, f"expected {VISA_FORMS}")
    return Resource(text, "scpi", "tcp", host=m[1], port=_port(text, m[2]), timeout_s=2.0)


def _visa_serial(text: str) -> Resource:
    m = re.fullmatch(r"ASRL(.+?)::INSTR", text, re.IGNORECASE)
    if not m:
        raise ResourceError(text, f"expected {VISA_FORMS}")
    where = m[1]
    device = f"/dev/ttyS{int(where) - 1}" if where.isdigit() else where
    if not device.startswith("/"):
        raise ResourceError(text, "the serial device must be a number or an absolute path")
    return Resource(text, "scpi", "serial", device=device, timeout_s=2.0)


def _modbus(text: str) -> Resource:
    url = urlsplit(text)
    scheme = url.scheme.lower()
    try:
        query = {k: v[-1] for k, v in parse_qs(url.query, strict_parsing=bool(url.query)).items()}
    except ValueError:
        raise ResourceError(text, f"bad query string {url.query!r}") from None
    unknown = set(query) - set(_QUERY)
    if unknown:
        raise ResourceError(text, f"unknown option {sorted(unknown)[0]!r} "
                                  f"(known: {', '.join(sorted(_QUERY))})")
    opts: dict[str, Any] = {field: conv(text, key, query[key])
                            for key, (field, conv) in _QUERY.items() if key in query}
    if not 0 <= opts.get("unit", 1) <= 247:
        raise ResourceError(text, "unit must lie in 0..247")
    if scheme == "modbus+tcp":
        if not url.hostname:
            raise ResourceError(text, f"missing host; expected {MODBUS_FORMS}")
        try:
            port = url.port or 502
        except ValueError:
            raise ResourceError(text, "port must be a number in 1..65535") from None
        return Resource(text, "modbus", "tcp", host=url.hostname, port=port, **opts)
    if scheme == "modbus+rtu":
        if url.netloc or not url.path.startswith("/"):
            raise ResourceError(text, "an RTU device is an absolute path after three slashes, "
                                      "e.g. modbus+rtu:///dev/ttyUSB0?unit=1")
        return Resource(text, "modbus", "serial", device=url.path, **opts)
    raise ResourceError(text, f"unknown scheme {url.scheme!r}; expected {MODBUS_FORMS}")


def _port(text: str, value: str) -> int:
    port = int(value)
    if not 0 < port < 65536:
        raise ResourceError(text, "port must lie in 1..65535")
    return port


def _int(text: str, key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ResourceError(text, f"{key} must be an integer, got {value!r}") from None


def _float(text: str, key: str, value: str) -> float:
    try:
        result = float(value)
    except ValueError:
        result = -1.0
    if not result > 0:
        raise ResourceError(text, f"{key} must be a positive number, got {value!r}")
    return result


def _parity(text: str, key: str, value: str) -> str:
    if value.upper() not in ("N", "E", "O"):
        raise ResourceError(text, f"{key} must be N, E or O, got {value!r}")
    return value.upper()


_QUERY: dict[str, tuple[str, Callable[[str, str, str], object]]] = {
    "unit": ("unit", _int),
    "baud": ("baud", _int),
    "bytesize": ("bytesize", _int),
    "parity": ("parity", _parity),
    "stopbits": ("stopbits", _int),
    "timeout": ("timeout_s", _float),
}

_PARSERS: tuple[tuple[str, Callable[[str], Resource]], ...] = (
    ("TCPIP", _visa_tcp),
    ("ASRL", _visa_serial),
    ("MODBUS+", _modbus),
)
