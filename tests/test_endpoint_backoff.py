"""Transport addresses and the reconnect backoff (both pure)."""

from __future__ import annotations

import pytest

from evproto import TransportError
from evproto.backoff import Backoff
from evproto.endpoint import SERIAL_DEFAULTS, Endpoint, parse_endpoint


@pytest.mark.parametrize(
    "text,host,port",
    [
        ("tcp://127.0.0.1:7000", "127.0.0.1", 7000),
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("central.local:7000", "central.local", 7000),
        ("tcp://[::1]:7001", "::1", 7001),
        ("  TCP://h:1  ", "h", 1),
    ],
)
def test_tcp_addresses(text: str, host: str, port: int) -> None:
    ep = parse_endpoint(text)
    assert (ep.scheme, ep.host, ep.port) == ("tcp", host, port)
    assert parse_endpoint(ep.url) == ep


def test_serial_addresses_with_defaults_and_options() -> None:
    ep = parse_endpoint("serial:///dev/ttyUSB0")
    assert ep.scheme == "serial" and ep.path == "/dev/ttyUSB0" and ep.options == SERIAL_DEFAULTS
    ep = parse_endpoint("/dev/ttyS1?baudrate=300&bytesize=7&parity=e&stopbits=1&rtscts=1")
    assert ep.path == "/dev/ttyS1"
    assert ep.options == {"baudrate": 300, "bytesize": 7, "parity": "E", "stopbits": 1, "rtscts": True}
    assert parse_endpoint(ep.url) == ep


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("", "empty"),
        ("tcp://host", "missing port"),
        ("tcp://:7000", "missing host"),
        ("tcp://h:99999", "0..65535"),
        ("tcp://h:port", "not a number"),
        ("ftp://h:1", "unsupported scheme"),
        ("serial://", "missing device path"),
        ("/dev/ttyUSB0?baudrate=fast", "bad value 'fast'"),
        ("/dev/ttyUSB0?parity=Q", "bad value 'Q'"),
        ("/dev/ttyUSB0?bytesize=9", "bad value '9'"),
        ("/dev/ttyUSB0?speed=9600", "unknown serial option 'speed'"),
    ],
)
def test_bad_addresses_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(TransportError, match=fragment):
        parse_endpoint(text)


def test_endpoint_url_brackets_ipv6() -> None:
    assert Endpoint(scheme="tcp", host="::1", port=5).url == "tcp://[::1]:5"


def test_backoff_grows_caps_jitters_and_resets() -> None:
    b = Backoff(initial_s=0.5, factor=2.0, max_s=4.0, jitter=0.0)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 0.5
    lo = Backoff(initial_s=1.0, jitter=0.2, rng=lambda: 0.0)
    hi = Backoff(initial_s=1.0, jitter=0.2, rng=lambda: 0.999999)
    assert lo.next_delay() == pytest.approx(0.8) and hi.next_delay() == pytest.approx(1.2, abs=1e-5)


def test_backoff_never_overflows() -> None:
    b = Backoff(initial_s=1.0, max_s=30.0, jitter=0.0)
    for _ in range(10_000):
        d = b.next_delay()
    assert d == 30.0


@pytest.mark.parametrize("kw", [{"initial_s": 0}, {"factor": 0.5}, {"max_s": 0.1}, {"jitter": 1.0}])
def test_backoff_rejects_nonsense(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kw)
