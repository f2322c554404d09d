"""evproto.aio over a real pseudo-terminal pair, the client side going through pyserial.

The device end owns the pty master: either evproto in this process
(``aio.open_fd_stream`` + ``aio.serve_stream`` in a loop), a ``tests/peers.py
pty-server`` subprocess (to be frozen or killed), or a raw device that writes
bytes by hand to the master. The client connects with
``aio.connect("serial:///dev/pts/N?baudrate=115200")`` (pyserial-asyncio-fast).

No test asserts a wall-clock duration; every wait has a generous hang guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
import termios

import pytest

from evproto import (
    Command,
    CommandAction,
    CpState,
    CpStatus,
    DownReason,
    Flags,
    HealthCheck,
    HealthState,
    HealthStatus,
    Hello,
    LinkDownError,
    MessageReceived,
    RequestReceived,
    Role,
    SupplyTelemetry,
    TransportError,
    aio,
    encode_body,
)
from evproto.frame import Control

GUARD = 10.0  # hang guard for any single wait (not a timing assertion)
OK = HealthStatus(state=HealthState.OK)
ACK, NACK = Control.ACK, Control.NACK

#: Bytes a cooked line discipline or a naive framing would mangle:
#: STX ETX EOT ENQ ACK NACK, CR LF (ICRNL/ONLCR), XON XOFF (IXON).
SPECIAL = bytes([0x02, 0x03, 0x04, 0x05, 0x06, 0x15, 0x0D, 0x0A, 0x11, 0x13])

#: A telemetry message whose BODY holds every byte of SPECIAL.
TRANSPARENT = SupplyTelemetry(
    session_id=0x02030405,  # 02 03 04 05
    energy_wh=1500.0,
    power_w=struct.unpack(">f", bytes([0x06, 0x15, 0x0D, 0x0A]))[0],  # 06 15 0d 0a
    amount_eur=struct.unpack(">d", bytes([0x3F, 0xE0, 0x11, 0x13, 0x0D, 0x0A, 0x15, 0x06]))[0],
    elapsed_s=struct.unpack(">f", bytes([0x44, 0x11, 0x13, 0x05]))[0],  # .. 11 13 ..
)


def hello(node_id: str = "CLI", keepalive_ms: int = 1000) -> Hello:
    return Hello(role=Role.TOOL, node_id=node_id, keepalive_ms=keepalive_ms)


async def guard(aw, timeout: float = GUARD):
    return await asyncio.wait_for(aw, timeout)


async def iterate_until_down(link: aio.Link) -> LinkDownError:
    async def drain() -> None:
        async for _ in link.messages:
            pass

    with pytest.raises(LinkDownError) as info:
        await guard(drain())
    return info.value


def master_fds(slave_path: str) -> int:
    """How many descriptors of this process are the master of the pty ``slave_path``."""
    index = slave_path.rsplit("/", 1)[-1]
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") != "/dev/ptmx":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as f:
                if f"tty-index:\t{index}\n" in f.read():
                    n += 1
    return n


class Device:
    """The evproto device end on a pty master: ``serve_stream`` sessions one after another.

    The handler answers HealthCheck with OK, answers any other request by sending
    the request's message back, and returns on ``Command(action=STOP)``.
    """

    def __init__(self, master: int, config) -> None:
        self.master = master
        self.config = config
        self.links: asyncio.Queue[aio.Link] = asyncio.Queue()
        self.events: asyncio.Queue = asyncio.Queue()
        self.outcomes: asyncio.Queue = asyncio.Queue()
        self.downs: asyncio.Queue = asyncio.Queue()
        self.waiting = 0  # sessions opened (device ready for a client)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        while True:
            reader, writer = await aio.open_fd_stream(self.master)
            self.waiting += 1
            down = await aio.serve_stream(reader, writer, self._handler, node_id="device", config=self.config)
            self.downs.put_nowait(down)

    async def _handler(self, link: aio.Link) -> None:
        self.links.put_nowait(link)
        try:
            async for ev in link.messages:
                self.events.put_nowait(ev)
                msg = ev.message
                if isinstance(msg, Command) and msg.action is CommandAction.STOP:
                    self.outcomes.put_nowait("returned")
                    return
                if isinstance(ev, RequestReceived):
                    await link.respond(ev, OK if isinstance(msg, HealthCheck) else msg)
        except LinkDownError as exc:
            self.outcomes.put_nowait(exc)
            raise
        self.outcomes.put_nowait("ended")

    async def ready(self, sessions: int) -> None:
        """Wait until the device has opened its ``sessions``-th session."""

        async def poll() -> None:
            while self.waiting < sessions:
                await asyncio.sleep(0.01)

        await guard(poll())


@pytest.fixture
async def device(pty_pair, link_config):
    dev = Device(pty_pair.master, link_config)
    dev.start()
    try:
        yield dev
    finally:
        await dev.stop()


class FdWriter:
    """Writes straight to the pty master; close() ends the matching read transport."""

    def __init__(self, fd: int, read_transport: asyncio.BaseTransport) -> None:
        self.fd = fd
        self.read_transport = read_transport

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def close(self) -> None:
        self.read_transport.close()


@pytest.fixture
async def raw_device(pty_pair, raw_peer):
    """A RawPeer on the pty master: the device end played by hand."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(pty_pair.master), "rb", buffering=0)
    )
    raw = raw_peer(reader, FdWriter(pty_pair.master, transport))
    try:
        yield raw
    finally:
        transport.close()


async def connect_to_raw_device(raw, pty_pair, config):
    """An evproto client on the slave, handshake answered by the raw device."""
    task = asyncio.create_task(aio.open_link(pty_pair.url(), hello=hello(), config=config))
    try:
        await raw.serve_handshake(keepalive_ms=10_000, node_id="raw-device")
        link = await guard(task)
    except BaseException:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    return link


# -- handshake, request/response, byte transparency -----------------------------------------


async def _exchange_transparent(link: aio.Link, dev: Device) -> None:
    body = encode_body(TRANSPARENT, seq=1)
    assert set(SPECIAL) <= set(body)  # the BODY really holds every special byte
    # request: travels client -> device; the device answers with the same message
    assert await guard(link.request(TRANSPARENT)) == TRANSPARENT
    ev = await guard(dev.events.get())
    assert isinstance(ev, RequestReceived) and ev.message == TRANSPARENT
    # one-way, ACK-confirmed
    seq = await guard(link.send(TRANSPARENT))
    assert await guard(dev.events.get()) == MessageReceived(message=TRANSPARENT, seq=seq)
    srv = await guard(dev.links.get())
    for side in (link, srv):
        stats = side.conn.stats
        assert stats.bad_frames == stats.nacks_sent == stats.nacks_received == stats.retransmissions == 0
        assert side.conn.decoder.stats.garbage_bytes == 0


async def test_handshake_request_and_transparent_bytes(device, pty_pair, link_config):
    async with aio.connect(pty_pair.url(), hello=hello(), config=link_config) as link:
        assert link.is_open and link.peer_id == "device"
        assert await guard(link.request(HealthCheck())) == OK
        assert isinstance(await guard(device.events.get()), RequestReceived)
        await _exchange_transparent(link, device)


async def test_pyserial_puts_a_cooked_line_in_raw_mode(cooked_pty_pair, link_config):
    """Without tty.setraw(): pyserial's own termios setup must make the line transparent."""
    pty = cooked_pty_pair
    lflag_cooked = termios.tcgetattr(pty.slave)[3]
    assert lflag_cooked & termios.ICANON and lflag_cooked & termios.ECHO  # really cooked
    dev = Device(pty.master, link_config)
    dev.start()
    try:
        async with aio.connect(pty.url(), hello=hello(), config=link_config) as link:
            iflag, oflag, cflag, lflag, *_ = termios.tcgetattr(pty.slave)
            assert not lflag & (termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
            assert not iflag & (termios.IXON | termios.IXOFF | termios.ICRNL | termios.INLCR | termios.IGNCR)
            assert not iflag & (termios.ISTRIP | termios.PARMRK)
            assert not oflag & termios.OPOST
            assert cflag & termios.CSIZE == termios.CS8
            await _exchange_transparent(link, dev)
    finally:
        await dev.stop()


# -- clean close, both directions -----------------------------------------------------------


async def test_client_close_gives_device_peer_closed(device, pty_pair, link_config):
    async with aio.connect(pty_pair.url(), hello=hello(), config=link_config) as link:
        assert await guard(link.request(HealthCheck())) == OK
    assert link.down_event.reason is DownReason.CLOSED
    outcome = await guard(device.outcomes.get())
    assert isinstance(outcome, LinkDownError), outcome
    assert outcome.reason is DownReason.PEER_CLOSED and outcome.clean is True
    assert (await guard(device.downs.get())).reason is DownReason.PEER_CLOSED


async def test_device_handler_return_gives_client_peer_closed(device, pty_pair, link_config):
    async with aio.connect(pty_pair.url(), hello=hello(), config=link_config) as link:
        await guard(link.send(Command(action=CommandAction.STOP)))
        assert await guard(device.outcomes.get()) == "returned"
        exc = await iterate_until_down(link)
        assert exc.reason is DownReason.PEER_CLOSED and exc.clean is True
    assert (await guard(device.downs.get())).reason is DownReason.CLOSED


# -- the device process frozen or killed ----------------------------------------------------


async def test_stopped_device_process_gives_peer_silent(spawn_peer, link_config):
    peer = await spawn_peer("pty-server")
    assert peer.line.startswith("/dev/")
    url = f"serial://{peer.line}?baudrate=115200"
    async with aio.connect(url, hello=hello(keepalive_ms=200), config=link_config) as link:
        assert link.conn.keepalive_s == 0.2
        assert await guard(link.request(HealthCheck())) == OK
        peer.signal(signal.SIGSTOP)
        exc = await iterate_until_down(link)
        assert exc.reason is DownReason.PEER_SILENT, exc
        assert exc.clean is False


async def test_killed_device_process_gives_unclean_down(spawn_peer, link_config):
    """The master closes with the process: the slave hangs up. Observed: CONNECTION_LOST
    (pyserial raises SerialException, an OSError, on the hung-up line)."""
    peer = await spawn_peer("pty-server")
    url = f"serial://{peer.line}?baudrate=115200"
    async with aio.connect(url, hello=hello(keepalive_ms=1000), config=link_config) as link:
        assert await guard(link.request(HealthCheck())) == OK
        peer.signal(signal.SIGKILL)
        exc = await iterate_until_down(link)
        assert exc.clean is False
        assert exc.reason is DownReason.CONNECTION_LOST, exc


# -- NACK, retransmission, damaged and repeated frames (raw device) ---------------------------


async def test_nack_retransmit_and_corrupted_frame_over_serial(raw_device, pty_pair, make_config, corrupt):
    raw = raw_device
    link = await connect_to_raw_device(raw, pty_pair, make_config(ack_timeout_s=5.0))
    try:
        # our frame NACKed once -> the same frame again, DUP set, LRC valid
        send = asyncio.create_task(link.send(TRANSPARENT))
        body1, env1 = await raw.expect_frame()
        assert env1.message == TRANSPARENT and not env1.flags & Flags.DUP
        assert not send.done()
        raw.send_control(NACK)
        body2, env2 = await raw.expect_frame()
        assert env2.seq == env1.seq and env2.flags == env1.flags | Flags.DUP
        assert body2 == body1[:1] + bytes([body1[1] | Flags.DUP]) + body1[2:]
        raw.send_control(ACK)
        assert await guard(send) == env1.seq
        assert link.conn.stats.retransmissions == 1 and link.conn.stats.nacks_received == 1

        # a frame with a broken LRC from the device -> NACK; the good copy is delivered once
        first = CpStatus(state=CpState.SUPPLYING, session_id=0x02030405, driver_id="D7")
        second = CpStatus(state=CpState.STOPPED, session_id=0x02030405, driver_id="D7")
        raw.write(corrupt(raw.frame(first, 2)))
        await raw.expect_control(NACK)
        raw.send(first, 2, flags=Flags.DUP)
        await raw.expect_control(ACK)
        raw.send(second, 3)
        await raw.expect_control(ACK)
        assert await guard(anext(link.messages)) == MessageReceived(message=first, seq=2)
        assert await guard(anext(link.messages)) == MessageReceived(message=second, seq=3)
        assert link.conn.stats.nacks_sent == 1 and link.conn.stats.bad_frames == 1
        assert link.is_open
    finally:
        await link.close()


async def test_duplicate_frame_over_serial_is_delivered_once(raw_device, pty_pair, link_config):
    raw = raw_device
    link = await connect_to_raw_device(raw, pty_pair, link_config)
    try:
        wire = raw.send(TRANSPARENT, 2)
        await raw.expect_control(ACK)
        raw.write(wire)
        await raw.expect_control(ACK)
        raw.send(CpStatus(state=CpState.STOPPED), 3)
        await raw.expect_control(ACK)
        assert await guard(anext(link.messages)) == MessageReceived(message=TRANSPARENT, seq=2)
        assert await guard(anext(link.messages)) == MessageReceived(message=CpStatus(state=CpState.STOPPED), seq=3)
        assert link.conn.stats.duplicates == 1
    finally:
        await link.close()


# -- sessions one after another on the same line ---------------------------------------------


async def test_client_restart_on_the_same_line(device, pty_pair, link_config):
    for n in range(1, 4):
        await device.ready(n)
        async with aio.connect(pty_pair.url(), hello=hello(f"CLI{n}"), config=link_config) as link:
            assert await guard(link.request(HealthCheck())) == OK
            srv = await guard(device.links.get())
            assert srv.peer_id == f"CLI{n}"
        assert (await guard(device.downs.get())).reason is DownReason.PEER_CLOSED


async def test_client_vanishing_without_eot_is_a_peer_reset(device, pty_pair, link_config, raw_peer):
    """On a serial line there is no EOF: a new client's ENQ tells the device (PEER_RESET)."""
    reader, writer = await guard(aio.open_stream(pty_pair.url()))
    ghost = raw_peer(reader, writer)
    await ghost.client_handshake(Hello(role=Role.TOOL, node_id="GHOST", keepalive_ms=10_000))
    ghost.close()  # pyserial closes the port; no EOT, and the line gives the device no EOF
    await guard(writer.wait_closed())
    async with aio.connect(pty_pair.url(), hello=hello("NEW"), config=link_config) as link:
        assert await guard(link.request(HealthCheck())) == OK
    downs = [await guard(device.downs.get()) for _ in range(2)]
    assert [d.reason for d in downs] == [DownReason.PEER_RESET, DownReason.PEER_CLOSED]


async def test_device_sessions_do_not_leak_descriptors(device, pty_pair, link_config):
    """Each serve_stream session on open_fd_stream(master) must release its descriptors.

    open_fd_stream() dups the master twice (a read pipe transport and a write pipe
    transport); Link.close() closes only the writer, so the read transport and its
    descriptor stay registered with the loop after the session ends.
    """
    await device.ready(1)
    baseline = master_fds(pty_pair.path)  # the fixture's master + the waiting session's two dups
    for n in range(1, 4):
        async with aio.connect(pty_pair.url(), hello=hello(f"CLI{n}"), config=link_config) as link:
            assert await guard(link.request(HealthCheck())) == OK
        assert (await guard(device.downs.get())).reason is DownReason.PEER_CLOSED
        await device.ready(n + 1)

        async def closed() -> None:  # the transports close a few loop turns after the session ends
            while master_fds(pty_pair.path) != baseline:
                await asyncio.sleep(0.01)

        await guard(closed())
    assert master_fds(pty_pair.path) == baseline


# -- transport errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, words",
    [
        ("serial:///dev/evproto-no-such-device?baudrate=9600", "evproto-no-such-device"),
        ("/dev/evproto-no-such-device", "evproto-no-such-device"),
        ("serial:///dev/ttyS0?baudrate=fast", "baudrate"),
        ("serial:///dev/ttyS0?speed=9600", "unknown serial option"),
    ],
)
async def test_bad_serial_addresses_raise_transport_error(address, words):
    with pytest.raises(TransportError) as info:
        async with aio.connect(address, hello=hello()):
            pytest.fail("opened a bad serial address")
    assert words in str(info.value)
