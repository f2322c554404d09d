"""What a third party's program meets at the edges of a link: a reject reason too long for
its field, a server handler that crashes, a peer that pushes faster than the
application reads. Real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

from evproto import (
    CpState,
    CpStatus,
    HealthCheck,
    HealthState,
    HealthStatus,
    Hello,
    IncomingOverflowError,
    LinkConfig,
    LinkDownError,
    LinkRejectedError,
    MessageReceived,
    ReasonCode,
    Reject,
    RequestReceived,
    Role,
    clip_text,
)
from evproto.aio import open_link, serve
from evproto.link import DownReason

GUARD_S = 30.0
HELLO = Hello(role=Role.MONITOR, node_id="CP001", keepalive_ms=1000)


async def guard(aw):
    return await asyncio.wait_for(aw, GUARD_S)


def test_clip_text_cuts_utf8_at_a_character_boundary() -> None:
    assert clip_text("é" * 200).encode() == "é".encode() * 127  # 254 bytes: half an "é" dropped
    assert clip_text("a" * 300) == "a" * 255
    assert clip_text("short") == "short"
    assert len(clip_text("€" * 100).encode()) == 255  # 3-byte characters: 85 of them


async def test_a_long_non_ascii_reject_reason_reaches_the_client_as_a_reject() -> None:
    detail = "é" * 200  # 400 bytes of UTF-8 for a 255-byte field
    async with await serve(
        "tcp://127.0.0.1:0",
        lambda link: asyncio.sleep(0),
        node_id="srv",
        on_hello=lambda hello: Reject(code=ReasonCode.INVALID, detail=detail),
    ) as server:
        with pytest.raises(LinkRejectedError) as info:
            await guard(open_link(f"tcp://127.0.0.1:{server.port}", hello=HELLO))
    assert info.value.code is ReasonCode.INVALID
    assert detail.startswith(info.value.detail) and len(info.value.detail.encode()) == 254


async def test_a_crashing_server_handler_is_never_a_clean_goodbye() -> None:
    async def handler(link) -> None:
        await link.send(CpStatus(state=CpState.ACTIVATED))
        raise RuntimeError("bug in the application")

    async with await serve("tcp://127.0.0.1:0", handler, node_id="srv") as server:
        link = await guard(open_link(f"tcp://127.0.0.1:{server.port}", hello=HELLO))
        got = []
        with pytest.raises(LinkDownError) as info:
            async for event in link.messages:
                got.append(event.message)
        await link.close()
    assert got == [CpStatus(state=CpState.ACTIVATED)]
    assert info.value.reason is DownReason.CONNECTION_LOST and not info.value.reason.clean
    assert link.down_event is not None and not link.down_event.clean


async def _pushing_server(pushes: int):
    """A server that answers health checks while it pushes ``pushes`` messages."""

    async def handler(link) -> None:
        async def push() -> None:
            for n in range(pushes):
                await link.send(CpStatus(state=CpState.SUPPLYING, session_id=n + 1))

        pusher = asyncio.create_task(push())
        try:
            async for event in link.messages:
                if isinstance(event, RequestReceived) and isinstance(event.message, HealthCheck):
                    await link.respond(event, HealthStatus(state=HealthState.OK))
        finally:
            pusher.cancel()

    return await serve("tcp://127.0.0.1:0", handler, node_id="srv")


async def test_answers_never_wait_behind_pushes_the_application_has_not_read() -> None:
    # The client only makes requests while the server pushes 400 messages: every answer
    # arrives, and the pushes are all there to read afterwards, in order.
    async with await _pushing_server(400) as server:
        link = await guard(
            open_link(f"tcp://127.0.0.1:{server.port}", hello=HELLO, config=LinkConfig(max_incoming=1000))
        )
        answers = [await guard(link.request(HealthCheck(), timeout_s=5.0)) for _ in range(40)]
        assert all(a == HealthStatus(state=HealthState.OK) for a in answers)
        sessions = []
        async for event in link.messages:
            assert isinstance(event, MessageReceived)
            sessions.append(event.message.session_id)
            if len(sessions) == 400:
                break
        assert sessions == list(range(1, 401))
        assert link.is_open
        await link.close()


async def test_more_unread_messages_than_allowed_fail_loudly_not_as_a_silent_peer() -> None:
    async with await _pushing_server(400) as server:
        link = await guard(open_link(f"tcp://127.0.0.1:{server.port}", hello=HELLO, config=LinkConfig(max_incoming=50)))
        with pytest.raises(IncomingOverflowError) as info:
            for _ in range(1000):
                await guard(link.request(HealthCheck(), timeout_s=5.0))
        assert "max_incoming" in str(info.value)
        # Nothing received is lost: the 50 unread messages are there, then the same error.
        read = 0
        with pytest.raises(IncomingOverflowError):
            async for _event in link.messages:
                read += 1
        assert read == 50
        await link.close()


async def test_a_reconnecting_client_comes_back_after_its_server_does() -> None:
    import socket

    from evproto import Backoff
    from evproto.aio import reconnecting

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here yet
    box: dict = {"server": None, "accepted": 0}

    async def handler(link) -> None:  # one message, then hang up
        box["accepted"] += 1
        await link.send(CpStatus(state=CpState.ACTIVATED, session_id=box["accepted"]))

    retries: list[str] = []
    retried = asyncio.Event()

    def on_retry(exc: BaseException, delay: float) -> None:
        retries.append(type(exc).__name__)
        retried.set()

    async def start_later() -> None:
        """Listen again once the client has found nobody listening and is retrying."""
        retried.clear()
        await retried.wait()
        box["server"] = await serve(f"tcp://127.0.0.1:{port}", handler, node_id="srv")

    sessions: list[list[int]] = []
    starter = asyncio.create_task(start_later())
    async for link in reconnecting(
        f"tcp://127.0.0.1:{port}", hello=HELLO, backoff=Backoff(initial_s=0.02, max_s=0.1), on_retry=on_retry
    ):
        got = []
        try:
            async for event in link.messages:
                got.append(event.message.session_id)
        except LinkDownError as exc:
            assert exc.clean  # the server said goodbye
        sessions.append(got)
        if len(sessions) == 2:
            break
        await starter
        await box["server"].close()  # down, and back after the client's next retry
        starter = asyncio.create_task(start_later())
    await starter
    await box["server"].close()
    assert sessions == [[1], [2]]  # the first server's one session, then the second's
    assert retries and set(retries) <= {"TransportError", "LinkDownError"}
