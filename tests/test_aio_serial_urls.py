"""Serial transports people expect: pyserial's URL handlers passed through (threads where
there is no descriptor to watch), Windows port names, and a device end that serves
one session after another without closing its line. Real ptys, real sockets."""

from __future__ import annotations

import asyncio
import os
import pty
import tty

import pytest

from evproto import HealthCheck, HealthState, HealthStatus, Hello, RequestReceived, Role, TransportError
from evproto.aio import open_fd_stream, open_link, serve, serve_serial
from evproto.endpoint import parse_endpoint

HELLO = Hello(role=Role.ENGINE, node_id="engine", keepalive_ms=1000)


async def _meter(link) -> None:
    async for event in link.messages:
        if isinstance(event, RequestReceived) and isinstance(event.message, HealthCheck):
            await link.respond(event, HealthStatus(state=HealthState.OK))


@pytest.mark.parametrize(
    ("text", "path", "options"),
    [
        ("COM3", "COM3", {}),
        ("com12?baudrate=19200", "COM12", {"baudrate": 19200}),
        (
            "rfc2217://meter.local:4000?baudrate=115200&logging=debug",
            "rfc2217://meter.local:4000?logging=debug",
            {"baudrate": 115200},
        ),
        ("socket://127.0.0.1:7000", "socket://127.0.0.1:7000", {}),
        ("loop://?logging=info&parity=E", "loop://?logging=info", {"parity": "E"}),
    ],
)
def test_pyserial_urls_and_windows_ports_are_serial_endpoints(text: str, path: str, options: dict) -> None:
    ep = parse_endpoint(text)
    assert ep.scheme == "serial" and ep.path == path
    assert {k: ep.options[k] for k in options} == options
    assert ep.options["bytesize"] == 8  # our line defaults fill in the rest


def test_an_unknown_scheme_names_what_is_accepted() -> None:
    with pytest.raises(TransportError, match="rfc2217://"):
        parse_endpoint("usb://x")


async def test_a_pyserial_url_without_a_descriptor_carries_a_link() -> None:
    # pyserial's socket:// handler, opened through the threaded adapter.
    async with await serve("tcp://127.0.0.1:0", _meter, node_id="meter") as server:
        link = await asyncio.wait_for(open_link(f"socket://127.0.0.1:{server.port}", hello=HELLO), 10)
        for _ in range(3):
            answer = await asyncio.wait_for(link.request(HealthCheck(), timeout_s=2.0), 10)
            assert answer == HealthStatus(state=HealthState.OK)
        assert link.peer_id == "meter"
        down = await asyncio.wait_for(link.close(), 10)
        assert down.clean


async def test_an_unreachable_pyserial_url_is_a_transport_error() -> None:
    with pytest.raises(TransportError):
        await asyncio.wait_for(open_link("socket://127.0.0.1:1", hello=HELLO), 10)


async def test_the_device_end_of_a_serial_line_serves_session_after_session() -> None:
    master, slave = pty.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    ended = []
    device = asyncio.create_task(
        serve_serial(await open_fd_stream(master), _meter, node_id="meter", on_session_end=ended.append)
    )
    try:
        for session in range(3):  # the client restarts: each time a fresh session on the same line
            link = await asyncio.wait_for(open_link(os.ttyname(slave), hello=HELLO), 10)
            assert await asyncio.wait_for(link.request(HealthCheck(), timeout_s=2.0), 10) == HealthStatus(
                state=HealthState.OK
            )
            await link.close()
            for _ in range(100):
                if len(ended) > session:
                    break
                await asyncio.sleep(0.05)
            assert len(ended) == session + 1 and ended[-1].reason.value == "peer_closed"
        assert not device.done()  # still serving, its line still open
    finally:
        device.cancel()
        with pytest.raises(asyncio.CancelledError):
            await device
        os.close(master)
        os.close(slave)
