"""Resource strings as lab people write them, and the errors a typo gets."""

from __future__ import annotations

import pytest

from drivers.resources import ResourceError, parse_resource


@pytest.mark.parametrize(("text", "expected"), [
    ("TCPIP::10.0.0.5::5025::SOCKET",
     {"protocol": "scpi", "link": "tcp", "host": "10.0.0.5", "port": 5025}),
    ("tcpip0::lab-psu.local::5025::socket",
     {"protocol": "scpi", "link": "tcp", "host": "lab-psu.local", "port": 5025}),
    ("ASRL/dev/ttyUSB0::INSTR", {"protocol": "scpi", "link": "serial", "device": "/dev/ttyUSB0"}),
    ("ASRL3::INSTR", {"protocol": "scpi", "link": "serial", "device": "/dev/ttyS2"}),
    ("modbus+tcp://192.168.1.20:1502?unit=7",
     {"protocol": "modbus", "link": "tcp", "host": "192.168.1.20", "port": 1502, "unit": 7}),
    ("modbus+tcp://meter.lab", {"protocol": "modbus", "port": 502, "unit": 1}),
    ("modbus+rtu:///dev/ttyUSB0?baud=9600&unit=3",
     {"protocol": "modbus", "link": "serial", "device": "/dev/ttyUSB0", "baud": 9600, "unit": 3}),
    ("modbus+rtu:///dev/ttyS1?baud=19200&parity=E&stopbits=1&timeout=0.5",
     {"baud": 19200, "parity": "E", "timeout_s": 0.5}),
])
def test_accepted_forms(text: str, expected: dict[str, object]) -> None:
    r = parse_resource(text)
    assert {k: getattr(r, k) for k in expected} == expected


def test_devices_on_one_line_share_a_link_key() -> None:
    a = parse_resource("modbus+rtu:///dev/ttyUSB0?unit=1")
    b = parse_resource("modbus+rtu:///dev/ttyUSB0?unit=2&baud=9600")
    assert a.link_key == b.link_key != parse_resource("modbus+tcp://h:502?unit=1").link_key


@pytest.mark.parametrize(("text", "message"), [
    ("TCPIP::10.0.0.5::INSTR", "raw socket form"),
    ("TCPIP::10.0.0.5::99999::SOCKET", "1..65535"),
    ("ASRLCOM3::INSTR", "absolute path"),
    ("modbus+tcp://:502", "missing host"),
    ("modbus+tcp://h:502?unit=300", "0..247"),
    ("modbus+tcp://h:502?unit=x", "unit must be an integer"),
    ("modbus+tcp://h:502?speed=9600", "unknown option 'speed'"),
    ("modbus+rtu://dev/ttyUSB0", "three slashes"),
    ("modbus+rtu:///dev/ttyUSB0?parity=X", "parity"),
    ("modbus+ascii:///dev/ttyUSB0", "unknown scheme"),
    ("GPIB0::5::INSTR", "unknown form"),
])
def test_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ResourceError, match=message) as info:
        parse_resource(text)
    assert text in str(info.value)
