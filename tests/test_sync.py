"""evproto.sync, the blocking link: against the asyncio server, against itself in another
thread, over a real pty and through pyserial URL handlers. Real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import pty
import threading
import tty
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from evproto import (
    CpState,
    CpStatus,
    DownReason,
    HealthCheck,
    HealthState,
    HealthStatus,
    Hello,
    LinkConfig,
    LinkDownError,
    LinkRejectedError,
    MessageReceived,
    ReasonCode,
    Reject,
    RequestReceived,
    Role,
    TransportError,
    sync,
)
from evproto.aio import open_fd_stream, serve, serve_stream

HELLO = Hello(role=Role.TOOL, node_id="bench", keepalive_ms=1000)


async def _engine(link) -> None:
    async for event in link.messages:
        if isinstance(event, RequestReceived) and isinstance(event.message, HealthCheck):
            await link.respond(event, HealthStatus(state=HealthState.OK))
        elif isinstance(event, MessageReceived) and isinstance(event.message, CpStatus):
            await link.send(CpStatus(state=event.message.state, session_id=event.message.session_id + 1))


@contextmanager
def aio_server(**kw) -> Iterator[int]:
    """An evproto.aio server in a thread of its own; yields its port."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict = {}

    async def run() -> None:
        box["stop"] = asyncio.Event()
        async with await serve("tcp://127.0.0.1:0", _engine, node_id="engine", **kw) as server:
            box["port"] = server.port
            ready.set()
            await box["stop"].wait()

    thread = threading.Thread(target=lambda: loop.run_until_complete(run()), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield box["port"]
    finally:
        loop.call_soon_threadsafe(box["stop"].set)
        thread.join(15)
        loop.close()


def test_a_script_talks_to_an_asyncio_server_without_an_event_loop() -> None:
    with aio_server() as port, sync.connect(f"tcp://127.0.0.1:{port}", hello=HELLO) as link:
        assert link.peer_id == "engine" and link.is_open
        assert link.request(HealthCheck(), timeout_s=2.0) == HealthStatus(state=HealthState.OK)
        link.send(CpStatus(state=CpState.SUPPLYING, session_id=1))
        event = link.receive(timeout_s=5.0)
        assert isinstance(event, MessageReceived) and event.message == CpStatus(state=CpState.SUPPLYING, session_id=2)
        assert link.receive(timeout_s=0.05) is None
    assert link.down_event is not None and link.down_event.reason is DownReason.CLOSED


def test_a_quiet_script_that_polls_keeps_its_link_and_one_that_does_not_is_dropped() -> None:
    with aio_server() as port:
        link = sync.connect(f"tcp://127.0.0.1:{port}", hello=Hello(role=Role.TOOL, node_id="b", keepalive_ms=200))
        for _ in range(10):  # 1 s, five keepalive periods, serviced every 0.1 s
            link.poll()
            threading.Event().wait(0.1)
        assert link.request(HealthCheck(), timeout_s=2.0) == HealthStatus(state=HealthState.OK)
        threading.Event().wait(1.5)  # silent for 7 keepalive periods: the server gave up on us
        with pytest.raises(LinkDownError):
            for _ in range(50):
                link.request(HealthCheck(), timeout_s=0.5)
        link.close()


def test_blocking_server_and_client_in_two_threads() -> None:
    refused = []

    def policy(hello: Hello) -> Reject | None:
        if hello.node_id == "stranger":
            refused.append(hello.node_id)
            return Reject(code=ReasonCode.UNKNOWN_ID, detail="who are you")
        return None

    with sync.listen("tcp://127.0.0.1:0", node_id="bench-server", on_hello=policy) as server:

        def serve_one() -> None:
            link = server.accept(timeout_s=10)
            assert link is not None
            event = link.receive(timeout_s=10)
            assert isinstance(event, RequestReceived)
            link.respond(event, HealthStatus(state=HealthState.KO))
            try:
                link.receive(timeout_s=10)  # until the client says goodbye
            except LinkDownError as exc:
                assert exc.clean

        thread = threading.Thread(target=serve_one)
        thread.start()
        with pytest.raises(LinkRejectedError) as info:
            sync.connect(f"tcp://127.0.0.1:{server.port}", hello=Hello(role=Role.TOOL, node_id="stranger"))
        assert info.value.code is ReasonCode.UNKNOWN_ID and refused == ["stranger"]
        with sync.connect(f"tcp://127.0.0.1:{server.port}", hello=HELLO) as link:
            assert link.request(HealthCheck(), timeout_s=5) == HealthStatus(state=HealthState.KO)
        thread.join(15)
        assert not thread.is_alive()


def test_over_a_real_pty_and_through_pyserial_url_handlers() -> None:
    # The device end: the asyncio server on the pty master, in a thread.
    master, slave = pty.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    path = os.ttyname(slave)
    loop = asyncio.new_event_loop()
    done = threading.Event()

    async def device() -> None:
        reader, writer = await open_fd_stream(master)
        await serve_stream(reader, writer, _engine, node_id="meter")
        done.set()

    thread = threading.Thread(target=lambda: loop.run_until_complete(device()), daemon=True)
    thread.start()
    try:
        with sync.connect(f"serial://{path}?baudrate=115200", hello=HELLO) as link:
            assert link.request(HealthCheck(), timeout_s=2.0) == HealthStatus(state=HealthState.OK)
        assert done.wait(10)
    finally:
        thread.join(10)
        loop.close()
        os.close(master)
        os.close(slave)
    # pyserial's socket:// handler, a URL the blocking API passes to pyserial as it is.
    with aio_server() as port, sync.connect(f"socket://127.0.0.1:{port}", hello=HELLO) as link:
        assert link.request(HealthCheck(), timeout_s=2.0) == HealthStatus(state=HealthState.OK)


def test_unreachable_or_unknown_addresses_are_transport_errors() -> None:
    with pytest.raises(TransportError):
        sync.connect("tcp://127.0.0.1:1", hello=HELLO, timeout_s=2)
    with pytest.raises(TransportError):
        sync.connect("/dev/evproto-no-such-device", hello=HELLO)


def test_more_unread_messages_than_allowed_close_the_blocking_link_loudly() -> None:
    from evproto import IncomingOverflowError

    with aio_server() as port:
        link = sync.connect(f"tcp://127.0.0.1:{port}", hello=HELLO, config=LinkConfig(max_incoming=3))
        with pytest.raises(IncomingOverflowError):  # raised by whichever call meets the 4th echo
            for n in range(5):
                link.send(CpStatus(state=CpState.SUPPLYING, session_id=n * 10))
            for _ in range(40):
                link.poll()
                threading.Event().wait(0.05)
        got = []
        with pytest.raises(IncomingOverflowError):
            while True:
                event = link.receive(timeout_s=1.0)
                got.append(event)
        assert len(got) == 3
        link.close()
