"""evproto.aio between real endpoints over TCP on 127.0.0.1 (always port 0).

Peers are evproto links in this process, ``tests/peers.py`` subprocesses (to be
killed with SIGKILL or frozen with SIGSTOP), or a "raw" peer played by hand with
the frame codec (conftest.RawPeer) to NACK, repeat, corrupt or withhold bytes.

No test asserts a wall-clock duration: every wait is wrapped in a generous hang
guard and the assertions are about what happened, not when.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket

import pytest

from evproto import (
    AuthorizeSupply,
    Command,
    CommandAction,
    CommandResult,
    CpState,
    CpStatus,
    DownReason,
    Flags,
    HealthCheck,
    HealthState,
    HealthStatus,
    Hello,
    LinkDownError,
    LinkRejectedError,
    MessageReceived,
    MeterReadRequest,
    MeterValues,
    Ping,
    ReasonCode,
    Reject,
    RequestReceived,
    RequestTimeoutError,
    Role,
    SupplyTelemetry,
    TransportError,
    aio,
    decode_body,
)
from evproto.frame import Control, ControlReceived, FrameReceived

GUARD = 10.0  # hang guard for any single wait (not a timing assertion)
LOCAL = "tcp://127.0.0.1:0"
OK = HealthStatus(state=HealthState.OK)
ENQ, ACK, NACK, EOT = Control.ENQ, Control.ACK, Control.NACK, Control.EOT


def hello(node_id: str = "CP1", keepalive_ms: int = 1000, **kw) -> Hello:
    return Hello(role=Role.MONITOR, node_id=node_id, keepalive_ms=keepalive_ms, **kw)


async def guard(aw, timeout: float = GUARD):
    return await asyncio.wait_for(aw, timeout)


async def iterate_until_down(link: aio.Link) -> LinkDownError:
    """Iterate ``link.messages`` until it raises; return the LinkDownError."""

    async def drain() -> None:
        async for _ in link.messages:
            pass

    with pytest.raises(LinkDownError) as info:
        await guard(drain())
    return info.value


async def collect_until_end(link: aio.Link) -> list:
    """Iterate ``link.messages`` expecting it to end quietly (after our own close())."""

    async def collect() -> list:
        return [ev async for ev in link.messages]

    return await guard(collect())


def answer_for(message):
    if isinstance(message, HealthCheck):
        return OK
    if isinstance(message, MeterReadRequest):
        return MeterValues(energy_wh=1.0, power_w=2.0)
    return CommandResult(code=ReasonCode.OK)


class Recorder:
    """A server handler that records everything its sessions see.

    It answers requests (except the types in ``ignore``), returns when it receives
    ``Command(action=STOP)``, and reports how each session's iteration ended in
    ``outcomes``: the LinkDownError raised, "returned", "ended" or "cancelled".
    """

    def __init__(self, *, ignore: tuple[type, ...] = ()) -> None:
        self.ignore = ignore
        self.links: asyncio.Queue[aio.Link] = asyncio.Queue()
        self.events: asyncio.Queue = asyncio.Queue()
        self.outcomes: asyncio.Queue = asyncio.Queue()

    async def handler(self, link: aio.Link) -> None:
        self.links.put_nowait(link)
        try:
            async for ev in link.messages:
                self.events.put_nowait(ev)
                msg = ev.message
                if isinstance(msg, Command) and msg.action is CommandAction.STOP:
                    self.outcomes.put_nowait("returned")
                    return
                if isinstance(ev, RequestReceived) and not isinstance(msg, self.ignore):
                    await link.respond(ev, answer_for(msg))
        except LinkDownError as exc:
            self.outcomes.put_nowait(exc)
            raise
        except asyncio.CancelledError:
            self.outcomes.put_nowait("cancelled")
            raise
        self.outcomes.put_nowait("ended")


@pytest.fixture
async def central(link_config):
    """``await central(recorder=None, **serve_kwargs)`` -> (Server, Recorder); closed at teardown."""
    servers: list[aio.Server] = []

    async def start(recorder: Recorder | None = None, **kw):
        rec = recorder or Recorder()
        kw.setdefault("config", link_config)
        server = await aio.serve(LOCAL, rec.handler, node_id="central", **kw)
        servers.append(server)
        return server, rec

    yield start
    for server in servers:
        await server.close()


class RawServer:
    def __init__(self, server: asyncio.base_events.Server, make_raw) -> None:
        self._server = server
        self._make_raw = make_raw
        self._conns: asyncio.Queue = asyncio.Queue()
        self.url = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def accept(self):
        reader, writer = await guard(self._conns.get())
        return self._make_raw(reader, writer)


@pytest.fixture
async def raw_server(raw_peer):
    """A plain asyncio TCP listener whose connections are played by hand (RawPeer)."""
    holder: list[RawServer] = []
    server = await asyncio.start_server(lambda r, w: holder[0]._conns.put_nowait((r, w)), "127.0.0.1", 0)
    holder.append(RawServer(server, raw_peer))
    try:
        yield holder[0]
    finally:
        server.close()


async def connect_to_raw(raw_server: RawServer, config, *, keepalive_ms: int = 10_000):
    """An evproto client connected to the raw server; returns (link, raw peer)."""
    task = asyncio.create_task(aio.open_link(raw_server.url, hello=hello(), config=config))
    try:
        raw = await raw_server.accept()
        await raw.serve_handshake(keepalive_ms=keepalive_ms)
        link = await guard(task)
    except BaseException:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    return link, raw


async def raw_client_to(server: aio.Server, make_raw, *, keepalive_ms: int = 10_000):
    """A raw peer that connected to ``server`` and completed the handshake by hand."""
    reader, writer = await guard(asyncio.open_connection("127.0.0.1", server.port))
    raw = make_raw(reader, writer)
    accept = await raw.client_handshake(hello("RAW", keepalive_ms=keepalive_ms))
    assert accept.node_id == "central" and accept.keepalive_ms == keepalive_ms
    return raw


# -- 1. handshake, request/response, confirmed send, message iteration ----------------------


async def test_handshake_request_confirmed_send_and_iteration(central, link_config):
    server, rec = await central()
    assert server.url == f"tcp://127.0.0.1:{server.port}" and server.port != 0
    async with aio.connect(server.url, hello=hello("CP1"), config=link_config) as link:
        assert link.is_open
        assert link.peer_id == "central"
        assert link.conn.keepalive_s == 1.0
        srv = await guard(rec.links.get())
        assert srv.is_open and srv.peer_id == "CP1" and srv.peer_hello == hello("CP1")

        # request -> response; the server handler sees a RequestReceived
        assert await guard(link.request(HealthCheck())) == OK
        ev = await guard(rec.events.get())
        assert isinstance(ev, RequestReceived) and ev.message == HealthCheck()

        # one-way send, returns once ACKed: nothing is left in flight or queued
        status = CpStatus(state=CpState.SUPPLYING, session_id=42, driver_id="D007")
        seq = await guard(link.send(status))
        assert link.conn.queued == 0
        ev = await guard(rec.events.get())
        assert ev == MessageReceived(message=status, seq=seq)

        # the other direction: the server asks, our iterator gets the request
        auth = AuthorizeSupply(session_id=7, driver_id="D001", max_energy_wh=5000.0)
        srv_request = asyncio.create_task(srv.request(auth))
        ev = await guard(anext(link.messages))
        assert isinstance(ev, RequestReceived) and ev.message == auth
        await link.respond(ev, CommandResult(code=ReasonCode.ALREADY_CHARGING, detail="busy"))
        assert await guard(srv_request) == CommandResult(code=ReasonCode.ALREADY_CHARGING, detail="busy")

        # and a confirmed one-way message from the server
        telemetry = SupplyTelemetry(session_id=7, energy_wh=1.5, power_w=7400.0, amount_eur=0.5, elapsed_s=1.0)
        srv_seq = await guard(srv.send(telemetry))
        assert await guard(anext(link.messages)) == MessageReceived(message=telemetry, seq=srv_seq)

        for side in (link, srv):
            assert side.conn.stats.bad_frames == 0
            assert side.conn.stats.nacks_sent == side.conn.stats.nacks_received == 0
    assert rec.events.empty()


# -- 2. clean close -----------------------------------------------------------------------


async def test_client_close_gives_server_peer_closed(central, link_config):
    server, rec = await central()
    link = await guard(aio.open_link(server.url, hello=hello(), config=link_config))
    try:
        await guard(rec.links.get())
        down = await guard(link.close())
        assert down.reason is DownReason.CLOSED and down.clean

        outcome = await guard(rec.outcomes.get())
        assert isinstance(outcome, LinkDownError), outcome
        assert outcome.reason is DownReason.PEER_CLOSED
        assert outcome.clean is True

        # after our own close() the iterator just ends, every time
        assert await collect_until_end(link) == []
        assert await collect_until_end(link) == []
        assert (await guard(link.close())) is down  # closing twice is harmless
        with pytest.raises(LinkDownError) as info:
            await link.send(HealthCheck())
        assert info.value.reason is DownReason.CLOSED
    finally:
        await link.close()


async def test_server_handler_return_gives_client_peer_closed(central, link_config):
    server, rec = await central()
    async with aio.connect(server.url, hello=hello(), config=link_config) as link:
        srv = await guard(rec.links.get())
        await guard(link.send(Command(action=CommandAction.STOP)))  # the handler returns on this
        assert await guard(rec.outcomes.get()) == "returned"

        exc = await iterate_until_down(link)
        assert exc.reason is DownReason.PEER_CLOSED and exc.clean is True
        assert link.down_event.reason is DownReason.PEER_CLOSED
        # a later reader sees the same end
        assert (await iterate_until_down(link)).reason is DownReason.PEER_CLOSED

        # the server side closed itself: its iterator ends quietly
        assert (await guard(srv.wait_closed())).reason is DownReason.CLOSED
        assert await collect_until_end(srv) == []


# -- 3. peer process killed ------------------------------------------------------------------


async def test_killed_server_process_gives_connection_lost(spawn_peer, link_config):
    peer = await spawn_peer("server", "--listen", LOCAL)
    assert peer.line.startswith("tcp://127.0.0.1:")
    async with aio.connect(peer.line, hello=hello(), config=link_config) as link:
        assert await guard(link.request(HealthCheck())) == OK
        peer.signal(signal.SIGKILL)
        exc = await iterate_until_down(link)
        assert exc.reason is DownReason.CONNECTION_LOST, exc
        assert exc.clean is False
        assert link.down_event.reason is DownReason.CONNECTION_LOST
        with pytest.raises(LinkDownError):
            await link.request(HealthCheck())


async def test_killed_client_process_gives_connection_lost(central, spawn_peer):
    server, rec = await central()
    peer = await spawn_peer("client", "--connect", server.url, "--id", "CP1", "--keepalive-ms", "1000")
    assert peer.line == "connected"
    srv = await guard(rec.links.get())
    assert srv.peer_id == "CP1"
    ev = await guard(rec.events.get())  # the peer's health checks arrive and are answered
    assert isinstance(ev, RequestReceived) and ev.message == HealthCheck()

    peer.signal(signal.SIGKILL)
    outcome = await guard(rec.outcomes.get())
    assert isinstance(outcome, LinkDownError), outcome
    assert outcome.reason is DownReason.CONNECTION_LOST
    assert outcome.clean is False


# -- 4. silent peer (SIGSTOP: socket open, nothing said) --------------------------------------


async def test_stopped_server_process_gives_peer_silent(spawn_peer, link_config):
    peer = await spawn_peer("server", "--listen", LOCAL)
    async with aio.connect(peer.line, hello=hello(keepalive_ms=200), config=link_config) as link:
        assert link.conn.keepalive_s == 0.2
        assert await guard(link.request(HealthCheck())) == OK
        peer.signal(signal.SIGSTOP)
        exc = await iterate_until_down(link)
        assert exc.reason is DownReason.PEER_SILENT, exc
        assert exc.clean is False
    # teardown (spawn_peer) sends SIGCONT and SIGKILL


async def test_stopped_client_process_gives_peer_silent(central, spawn_peer):
    server, rec = await central()
    peer = await spawn_peer("client", "--connect", server.url, "--id", "CP1", "--keepalive-ms", "200")
    srv = await guard(rec.links.get())
    assert srv.conn.keepalive_s == 0.2
    await guard(rec.events.get())  # it is talking
    peer.signal(signal.SIGSTOP)  # frozen: its socket stays open, no FIN, no RST, just silence
    outcome = await guard(rec.outcomes.get())
    assert isinstance(outcome, LinkDownError), outcome
    assert outcome.reason is DownReason.PEER_SILENT
    assert outcome.clean is False


# -- 5. NACK and retransmission; damaged frames ----------------------------------------------


async def test_nack_makes_client_resend_the_same_frame_with_dup(raw_server, make_config):
    # A long ACK timeout: only the NACK may cause the resend.
    link, raw = await connect_to_raw(raw_server, make_config(ack_timeout_s=5.0))
    try:
        status = CpStatus(state=CpState.ACTIVATED)
        send = asyncio.create_task(link.send(status))
        body1, env1 = await raw.expect_frame()
        assert env1.message == status and env1.seq == 2  # Hello was seq 1
        assert not env1.flags & Flags.DUP
        assert not send.done()  # send() waits for the ACK

        raw.send_control(NACK)
        body2, env2 = await raw.expect_frame()  # a FrameReceived: LEN, ETX and LRC checked
        assert env2.seq == env1.seq
        assert env2.flags == env1.flags | Flags.DUP
        assert env2.message == status
        assert body2 == body1[:1] + bytes([body1[1] | Flags.DUP]) + body1[2:]
        assert raw.decoder.stats.error_total == 0
        assert not send.done()

        raw.send_control(ACK)
        assert await guard(send) == env1.seq
        stats = link.conn.stats
        assert stats.retransmissions == 1
        assert stats.nacks_received == 1

        # the link goes on normally: next frame, next seq, no DUP
        follow = asyncio.create_task(link.send(CpStatus(state=CpState.STOPPED)))
        _, env3 = await raw.expect_frame()
        assert env3.seq == 3 and env3.flags == Flags.NONE
        raw.send_control(ACK)
        assert await guard(follow) == 3
        assert link.is_open
    finally:
        await link.close()


FIRST = CpStatus(state=CpState.SUPPLYING, session_id=0x1234, driver_id="D7")
SECOND = CpStatus(state=CpState.STOPPED, session_id=0x1234, driver_id="D7")
SEQ_A, SEQ_B = 2, 3  # the raw peer's Hello/Accept was seq 1


async def _raw_to_evproto(side: str, central, raw_server, raw_peer, config):
    """(raw peer, evproto link, source of messages the evproto side received)."""
    if side == "client":
        link, raw = await connect_to_raw(raw_server, config)

        async def received():
            return await guard(anext(link.messages))

        return raw, link, received
    server, rec = await central(config=config)
    raw = await raw_client_to(server, raw_peer)
    link = await guard(rec.links.get())

    async def received():
        return await guard(rec.events.get())

    return raw, link, received


@pytest.mark.parametrize("side", ["client", "server"])
async def test_corrupted_lrc_is_nacked_and_good_copy_delivered_once(
    side, central, raw_server, raw_peer, make_config, corrupt
):
    raw, link, received = await _raw_to_evproto(side, central, raw_server, raw_peer, make_config())
    try:
        raw.write(corrupt(raw.frame(FIRST, SEQ_A)))
        await raw.expect_control(NACK)
        raw.send(FIRST, SEQ_A, flags=Flags.DUP)  # the resend, as a real sender makes it
        await raw.expect_control(ACK)
        raw.send(SECOND, SEQ_B)
        await raw.expect_control(ACK)

        assert await received() == MessageReceived(message=FIRST, seq=SEQ_A)
        assert await received() == MessageReceived(message=SECOND, seq=SEQ_B)
        stats = link.conn.stats
        assert stats.nacks_sent == 1
        assert stats.bad_frames == 1
        assert stats.errors_by_kind == {"bad_lrc": 1}
        assert stats.duplicates == 0
        assert link.is_open
    finally:
        await link.close()


@pytest.mark.parametrize("side", ["client", "server"])
async def test_corrupted_frame_with_stx_in_body_gets_one_nack(
    side, central, raw_server, raw_peer, make_config, corrupt
):
    """A damaged frame is answered with one NACK, even when its BODY holds 0x02 bytes.

    Every 0x02 inside the failed frame is a new STX candidate for the resynchronising
    decoder. docs/protocol.md: "one damage, one error, one NACK" -- the sender counts
    one NACK per copy it sent, so extra NACKs would cause extra copies whose late ACKs
    could be credited to the next frame.
    """
    raw, link, received = await _raw_to_evproto(side, central, raw_server, raw_peer, make_config())
    try:
        # seq 2 (the natural first data frame) puts 0x02 in the header; 0x0202 twice.
        msg = CpStatus(state=CpState.ACTIVATED, session_id=0x02020202, driver_id="D7")
        good = raw.frame(msg, 0x0202)
        raw.write(corrupt(good))
        await raw.expect_control(NACK)
        raw.send(msg, 0x0202, flags=Flags.DUP)
        raw.send(SECOND, SEQ_B)
        # Everything the evproto side answers up to the ACK of SECOND:
        answers = []
        while len([a for a in answers if a == ACK]) < 2:
            ev = await raw.event()
            assert isinstance(ev, ControlReceived), ev
            answers.append(ev.control)
        assert await received() == MessageReceived(message=msg, seq=0x0202)
        assert await received() == MessageReceived(message=SECOND, seq=SEQ_B)
        assert answers == [ACK, ACK], f"extra answers to one damaged frame: {[a.name for a in answers]}"
        assert link.conn.stats.nacks_sent == 1
    finally:
        await link.close()


# -- 6. duplicates ---------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["client", "server"])
async def test_duplicate_frame_is_acked_twice_delivered_once(side, central, raw_server, raw_peer, make_config):
    raw, link, received = await _raw_to_evproto(side, central, raw_server, raw_peer, make_config())
    try:
        wire = raw.send(FIRST, SEQ_A)
        await raw.expect_control(ACK)
        raw.write(wire)  # the very same frame again (same seq)
        await raw.expect_control(ACK)
        raw.send(SECOND, SEQ_B)
        await raw.expect_control(ACK)

        assert await received() == MessageReceived(message=FIRST, seq=SEQ_A)
        # the next thing delivered is SECOND: the copy was not delivered
        assert await received() == MessageReceived(message=SECOND, seq=SEQ_B)
        stats = link.conn.stats
        assert stats.duplicates == 1
        assert stats.nacks_sent == 0
        assert link.is_open
    finally:
        await link.close()


# -- 7. retries exhausted --------------------------------------------------------------------

# ack_timeout 0.1 s x (1 + max_retries 2) copies: the frame is given up after ~0.3 s.
# The raw peer agrees a 10 s keepalive, so the keepalive silence limit (10 s x 2.5 =
# 25 s) cannot fire first. Since commit a79ea60 the reason depends on whether the
# peer said anything while the frame went unacknowledged: heard -> RETRIES_EXHAUSTED,
# not a byte -> PEER_SILENT (docs/protocol.md, "How a link ends").
RETRY_CONFIG = dict(ack_timeout_s=0.1, max_retries=2)


async def _withhold_acks(raw, behaviour: str) -> list:
    """Read until EOF, never ACKing: NACK every copy, answer with own Pings, or stay mute."""
    events = []
    ping_seq = 2
    with contextlib.suppress(EOFError, ConnectionError):
        while True:
            ev = await raw.event()
            events.append(ev)
            if isinstance(ev, FrameReceived):
                if behaviour == "nacks":
                    raw.send_control(NACK)
                elif behaviour == "talks":
                    raw.send(Ping(), ping_seq)
                    ping_seq += 1
    return events


@pytest.mark.parametrize(
    "behaviour, reason",
    [
        ("nacks", DownReason.RETRIES_EXHAUSTED),
        ("talks", DownReason.RETRIES_EXHAUSTED),
        ("mute", DownReason.PEER_SILENT),
    ],
)
@pytest.mark.parametrize("side", ["client", "server"])
async def test_never_acked_send_takes_the_link_down(
    side, behaviour, reason, central, raw_server, raw_peer, make_config
):
    # NACKs drive the resends in the "nacks" case: a long ACK timeout keeps timeouts out of it.
    config = make_config(**RETRY_CONFIG) if behaviour != "nacks" else make_config(ack_timeout_s=5.0, max_retries=2)
    raw, link, _ = await _raw_to_evproto(side, central, raw_server, raw_peer, config)
    try:
        keepalive_limit = config.silence_limit_s(link.conn.keepalive_s)
        assert keepalive_limit > 20 * config.ack_timeout_s * (config.max_retries + 1) or behaviour == "nacks"
        first = CpStatus(state=CpState.SUPPLYING, session_id=1)
        second = CpStatus(state=CpState.STOPPED, session_id=1)
        send = asyncio.create_task(link.send(first))
        await asyncio.sleep(0)  # let the task put ``first`` on the wire
        assert link.conn.queued == 1
        second_seq = await link.send(second, wait=False)  # waits behind the first (stop-and-wait)

        events = await guard(_withhold_acks(raw, behaviour))
        with pytest.raises(LinkDownError) as info:
            await guard(send)
        assert info.value.reason is reason, info.value
        assert info.value.clean is False

        down = await guard(link.wait_closed())
        assert down.reason is reason
        assert down.undelivered == (first, second)  # in order, the unsent one too

        envs = [decode_body(ev.body) for ev in events if isinstance(ev, FrameReceived)]
        assert len(envs) == 1 + config.max_retries  # the original and every retry, nothing else
        assert {e.seq for e in envs} == {second_seq - 1}
        assert [bool(e.flags & Flags.DUP) for e in envs] == [False] + [True] * config.max_retries
        assert all(e.message == first for e in envs)
        assert link.conn.stats.retransmissions == config.max_retries
        if behaviour == "talks":
            assert events.count(ControlReceived(ACK)) == len(envs)  # it ACKed our Pings
    finally:
        await link.close()


# -- 8. reject -------------------------------------------------------------------------------


def _policy(h: Hello) -> Reject | None:
    if h.node_id == "CP1":
        return None
    return Reject(code=ReasonCode.UNKNOWN_ID, detail=f"{h.node_id} is not registered")


async def _async_policy(h: Hello) -> Reject | None:
    await asyncio.sleep(0)
    return _policy(h)


@pytest.mark.parametrize("policy", [_policy, _async_policy], ids=["sync", "async"])
async def test_rejected_hello_raises_link_rejected_error(policy, central, link_config):
    server, rec = await central(on_hello=policy)
    with pytest.raises(LinkRejectedError) as info:
        async with aio.connect(server.url, hello=hello("CP9"), config=link_config):
            pytest.fail("the Hello should have been rejected")
    exc = info.value
    assert exc.code is ReasonCode.UNKNOWN_ID
    assert exc.reason is DownReason.REJECTED
    assert "CP9 is not registered" in exc.detail
    assert exc.clean is False
    assert rec.links.empty()  # the handler never ran

    # the same server still accepts a registered id
    async with aio.connect(server.url, hello=hello("CP1"), config=link_config) as link:
        assert await guard(link.request(HealthCheck())) == OK


async def test_unsupported_protocol_version_is_rejected(central, link_config):
    server, rec = await central()
    with pytest.raises(LinkRejectedError) as info:
        async with aio.connect(server.url, hello=hello(protocol_version=99), config=link_config):
            pytest.fail("protocol version 99 should have been rejected")
    assert info.value.code is ReasonCode.UNSUPPORTED_VERSION
    assert "99" in info.value.detail
    assert rec.links.empty()


# -- 9. request timeout and cancellation ------------------------------------------------------


async def test_request_timeout_frees_the_slot(central, link_config):
    server, rec = await central(Recorder(ignore=(MeterReadRequest,)))
    async with aio.connect(server.url, hello=hello(), config=link_config) as link:
        srv = await guard(rec.links.get())
        with pytest.raises(RequestTimeoutError):
            await guard(link.request(MeterReadRequest(), timeout_s=0.3))
        assert not link.conn.request_pending
        unanswered = await guard(rec.events.get())
        assert isinstance(unanswered, RequestReceived)

        assert await guard(link.request(HealthCheck(), timeout_s=GUARD)) == OK
        await guard(rec.events.get())

        # a late answer to the timed-out request is counted and dropped, not delivered
        await guard(srv.respond(unanswered, MeterValues(energy_wh=9.0, power_w=9.0), wait=True))
        assert await guard(link.request(HealthCheck(), timeout_s=GUARD)) == OK
        assert link.conn.stats.late_responses == 1
        assert link.is_open


async def test_cancelled_request_does_not_block_later_requests(central, link_config):
    server, rec = await central(Recorder(ignore=(MeterReadRequest,)))
    async with aio.connect(server.url, hello=hello(), config=link_config) as link:
        for _ in range(2):
            # the caller gives up long before the request's own 60 s timeout
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(link.request(MeterReadRequest(), timeout_s=60.0), 0.3)
            assert await guard(link.request(HealthCheck())) == OK
            assert not link.conn.request_pending
        assert link.is_open


async def test_an_answer_waits_for_room_in_the_send_queue_as_a_send_does(make_config, link_config):
    # The async API holds at most max_queue unacknowledged frames and waits for room
    # (docs/protocol.md). With room for one, the server's answer comes right behind a
    # one-way message still waiting for its ACK: respond() waits for that ACK first.
    status = CpStatus(state=CpState.SUPPLYING, session_id=1)

    async def handler(link: aio.Link) -> None:
        async for ev in link.messages:
            if isinstance(ev, RequestReceived):
                await link.send(status, wait=False)
                assert link.conn.queued == link.conn.config.max_queue
                await link.respond(ev, OK)
                assert link.conn.queued <= link.conn.config.max_queue

    async with await aio.serve(LOCAL, handler, node_id="central", config=make_config(max_queue=1)) as server:
        async with aio.connect(server.url, hello=hello(), config=link_config) as link:
            assert await guard(link.request(HealthCheck())) == OK
            received = await guard(link.messages.__anext__())
            assert isinstance(received, MessageReceived) and received.message == status
            assert link.is_open


# -- 10. transport errors --------------------------------------------------------------------


async def test_connecting_to_a_closed_port_raises_transport_error(link_config):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # nobody listens on ``port`` now
    with pytest.raises(TransportError) as info:
        async with aio.connect(f"tcp://127.0.0.1:{port}", hello=hello(), config=link_config):
            pytest.fail("connected to a closed port")
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    text = str(info.value)
    assert f"127.0.0.1:{port}" in text
    # the OS reason belongs in the message ("Raises TransportError (with the OS reason)")
    assert "refused" in text.lower(), text


@pytest.mark.parametrize(
    "address, words",
    [
        ("tcp://host", "missing port"),
        ("ftp://x:1", "unsupported scheme"),
        ("serial://", "missing device path"),
        ("tcp://127.0.0.1:99999", "port"),
        ("", "empty"),
    ],
)
async def test_invalid_addresses_raise_transport_error(address, words):
    with pytest.raises(TransportError) as info:
        async with aio.connect(address, hello=hello()):
            pytest.fail("connected to an invalid address")
    assert words in str(info.value)
    with pytest.raises(TransportError):
        await aio.open_stream(address)


async def test_serve_refuses_a_serial_address():
    async def handler(link):  # pragma: no cover - never runs
        pass

    with pytest.raises(TransportError) as info:
        await aio.serve("serial:///dev/ttyS0", handler, node_id="x")
    assert "tcp://" in str(info.value)


# -- 11. keepalive ---------------------------------------------------------------------------


async def test_idle_link_stays_up_on_pings(central, link_config):
    server, rec = await central()
    async with aio.connect(server.url, hello=hello(keepalive_ms=200), config=link_config) as link:
        srv = await guard(rec.links.get())
        assert link.conn.keepalive_s == srv.conn.keepalive_s == 0.2
        before = {
            name: (side.conn.stats.frames_sent, side.conn.stats.frames_received, side.conn.decoder.stats.controls)
            for name, side in (("client", link), ("server", srv))
        }
        # idle for several keepalive periods (and more than twice the 0.5 s silence limit)
        await asyncio.sleep(6 * 0.2)
        assert link.is_open and srv.is_open
        assert link.down_event is None and srv.down_event is None
        assert rec.outcomes.empty() and rec.events.empty()
        after = {
            name: (side.conn.stats.frames_sent, side.conn.stats.frames_received, side.conn.decoder.stats.controls)
            for name, side in (("client", link), ("server", srv))
        }
        # The client pings an idle link and hears the ACKs; the server hears the Pings
        # (it only probes a client silent for 1.5 keepalives, docs/protocol.md section 3).
        c0, c1, s0, s1 = before["client"], after["client"], before["server"], after["server"]
        assert c1[0] > c0[0] and c1[2] > c0[2], (before, after)
        assert s1[1] > s0[1], (before, after)
        total_pings = sum(after[n][0] - before[n][0] for n in after)
        assert total_pings >= 3, (before, after)  # ~6 periods idle: at least half of them probed
        # the link still works
        assert await guard(link.request(HealthCheck())) == OK


# -- 12. server close ------------------------------------------------------------------------


async def test_server_close_gives_clients_peer_closed(central, link_config):
    server, rec = await central()
    url = server.url
    async with (
        aio.connect(url, hello=hello("CP1"), config=link_config) as a,
        aio.connect(url, hello=hello("CP2"), config=link_config) as b,
    ):
        await guard(rec.links.get())
        await guard(rec.links.get())
        await guard(server.close())
        for link in (a, b):
            exc = await iterate_until_down(link)
            assert exc.reason is DownReason.PEER_CLOSED and exc.clean is True
        assert [await guard(rec.outcomes.get()) for _ in range(2)] == ["cancelled", "cancelled"]
    with pytest.raises(TransportError):
        async with aio.connect(url, hello=hello("CP3"), config=link_config):
            pytest.fail("the closed server still accepts connections")


async def test_server_close_makes_asyncio_report_no_errors(central, link_config):
    """Closing a server with live sessions must not leave asyncio reporting exceptions.

    Server.close() cancels the tasks asyncio.start_server created for its connection
    callback; on Python < 3.12 asyncio's done-callback for those tasks calls
    task.exception(), which raises CancelledError for a cancelled task, and the loop
    reports "Exception in callback StreamReaderProtocol.connection_made.<locals>.callback".
    """
    loop_errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: loop_errors.append(ctx))
    server, rec = await central()
    async with aio.connect(server.url, hello=hello("CP1"), config=link_config) as link:
        await guard(rec.links.get())
        await guard(server.close())
        assert (await iterate_until_down(link)).reason is DownReason.PEER_CLOSED
        assert await guard(rec.outcomes.get()) == "cancelled"
        # Once every other task is done, one loop turn runs the done-callbacks they scheduled.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await guard(asyncio.wait(others) if others else asyncio.sleep(0))
        await asyncio.sleep(0)
    assert [ctx.get("message") for ctx in loop_errors] == []
