"""Shared fixtures and the test sets (``make test`` runs every test, ``make test-fast`` a subset).

- ``network`` marker: given here, in one place, to every test that starts the broker or real
  daemons (it uses one of :data:`NETWORK_FIXTURES`, or lives in one of :data:`NETWORK_MODULES`).
  ``make test-fast`` runs ``-m "not slow and not network and not browser"`` with the "fast" Hypothesis profile
  (tests/hypothesis_budget.py): the pure and in-process tests, loopback links and ptys included.
- ``link_config`` / ``make_config``: LinkConfigs with short timeouts.
- ``spawn_peer``: start ``tests/peers.py`` as a real subprocess; every process is
  continued (if stopped) and SIGKILLed at teardown, whatever the test outcome.
- ``pty_pair``: a raw-mode pseudo-terminal pair, closed at teardown.
- ``raw_peer``: builds a :class:`RawPeer`, one end of a link played by hand.
- ``broker`` (one per module), ``brokers`` (a test's own, to kill or restart), ``make_net`` /
  ``net`` / ``secure_net`` (real processes on a broker), ``run_daemon`` (a daemon program run to
  its end): the one definition of each, used by every test file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import tty
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest
from hypothesis import settings

from evproto import (
    Accept,
    Control,
    ControlReceived,
    Envelope,
    FrameDecoder,
    FrameError,
    FrameReceived,
    Garbage,
    Hello,
    LinkConfig,
    Message,
    decode_body,
    encode_body,
    encode_frame,
)

if TYPE_CHECKING:
    from netharness import Network

    from evproto.bus.broker import EmbeddedBroker

REPO = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).resolve().parent / "peers.py"

# -- the test sets -------------------------------------------------------------------------

#: ``--hypothesis-profile fast`` (make test-fast): a tenth of each property test's examples.
settings.register_profile("fast", max_examples=10)

#: A test using any of these fixtures, directly or through another fixture, runs real daemons
#: or the broker: a "network" test. (The few tests of the broker program itself carry the
#: marker in test_bus.py.)
NETWORK_FIXTURES = frozenset(
    {"broker", "brokers", "make_net", "net", "secure_net", "hosts", "start_registry", "run_daemon"}
)
#: Modules whose tests start daemons or a broker of their own, through a program (evcharging,
#: a benchmark, a built wheel) rather than a fixture.
NETWORK_MODULES = frozenset({"test_capacity", "test_chaos", "test_launcher", "test_package"})


@pytest.fixture
def run_daemon() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_daemon(program, *args, timeout=60, env=None)``: an installed daemon program (ev-driver,
    evcp-engine, evcp-monitor, ...) run to its end as a real process (stdin empty, output as text)."""
    bin_dir = os.path.dirname(sys.executable)

    def run(
        program: str, *args: str, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [os.path.join(bin_dir, program), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=env,
        )

    return run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        if NETWORK_FIXTURES & set(getattr(item, "fixturenames", ())) or (
            module is not None and module.__name__ in NETWORK_MODULES
        ):
            item.add_marker(pytest.mark.network)


#: Upper bound for any single wait in these tests. It only stops a hang; it is
#: not a timing assertion (the machine is shared and noisy).
HANG_GUARD_S = 10.0


# -- link configuration ----------------------------------------------------------------------

#: Short timeouts so the real-time tests run fast; tests override what they need.
_SHORT = dict(
    ack_timeout_s=0.5,
    max_retries=3,
    handshake_timeout_s=5.0,
    interbyte_timeout_s=0.3,
    request_timeout_s=5.0,
    min_keepalive_s=0.05,
)


@pytest.fixture
def link_config() -> LinkConfig:
    """A fresh LinkConfig with short timeouts."""
    return LinkConfig(**_SHORT)


@pytest.fixture
def make_config() -> Callable[..., LinkConfig]:
    """``make_config(**overrides)``: the short-timeout LinkConfig with some fields changed."""

    def make(**overrides: Any) -> LinkConfig:
        return dataclasses.replace(LinkConfig(**_SHORT), **overrides)

    return make


# -- peer subprocesses -----------------------------------------------------------------------


@dataclass
class Peer:
    """A running ``tests/peers.py`` process and the line it printed when ready."""

    proc: asyncio.subprocess.Process
    line: str
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stderr(self) -> str:
        with contextlib.suppress(OSError):
            return self.stderr_path.read_text(errors="replace")
        return ""


@pytest.fixture
async def spawn_peer(tmp_path: Path):
    """``await spawn_peer(mode, *args)`` -> :class:`Peer`, once it printed its ready line."""
    procs: list[asyncio.subprocess.Process] = []

    async def spawn(mode: str, *args: str) -> Peer:
        err_path = tmp_path / f"peer-{len(procs)}-{mode}.stderr"
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(err_path, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(PEERS),
                mode,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                cwd=str(REPO),
                env=env,
            )
        procs.append(proc)
        assert proc.stdout is not None
        try:
            raw = await asyncio.wait_for(proc.stdout.readline(), HANG_GUARD_S)
        except asyncio.TimeoutError:
            raw = b""
        line = raw.decode(errors="replace").strip()
        if not line:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise RuntimeError(
                f"peers.py {mode} {' '.join(args)} printed no ready line "
                f"(exit {proc.returncode}); stderr:\n{err_path.read_text(errors='replace')}"
            )
        return Peer(proc, line, err_path)

    try:
        yield spawn
    finally:
        for proc in procs:
            if proc.returncode is None:
                # A stopped process must be continued for SIGKILL to be reaped promptly.
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, sig)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), HANG_GUARD_S)


# -- pseudo-terminals ------------------------------------------------------------------------


@dataclass
class PtyPair:
    master: int
    slave: int
    path: str

    def url(self, baudrate: int = 115200) -> str:
        return f"serial://{self.path}?baudrate={baudrate}"


@pytest.fixture
def pty_pair():
    """A pseudo-terminal in raw mode (no byte translation, no echo). The test keeps the
    slave open for its whole life, so a client closing its own descriptor never hangs
    up the master."""
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        yield PtyPair(master, slave, os.ttyname(slave))
    finally:
        for fd in (slave, master):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def cooked_pty_pair():
    """A pseudo-terminal left in its default (cooked) line discipline."""
    master, slave = os.openpty()
    try:
        yield PtyPair(master, slave, os.ttyname(slave))
    finally:
        for fd in (slave, master):
            with contextlib.suppress(OSError):
                os.close(fd)


# -- a hand-played link end ------------------------------------------------------------------

ENQ, ACK, NACK, EOT = Control.ENQ, Control.ACK, Control.NACK, Control.EOT
assert (ENQ, ACK, NACK, EOT) == (0x05, 0x06, 0x15, 0x04)


class RawPeer:
    """One end of a link played by hand over a (reader, writer) pair: no LinkConnection.

    Incoming bytes go through a FrameDecoder only (garbage is skipped); outgoing
    bytes are written exactly as built, so a test can corrupt, repeat or withhold them.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: Any, *, guard_s: float = HANG_GUARD_S) -> None:
        self.reader = reader
        self.writer = writer
        self.guard_s = guard_s
        self.decoder = FrameDecoder()
        self._pending: deque[ControlReceived | FrameReceived | FrameError] = deque()
        #: every event read so far, in order
        self.log: list[ControlReceived | FrameReceived | FrameError] = []

    # -- reading

    async def event(self) -> ControlReceived | FrameReceived | FrameError:
        """The next control byte, frame or frame error; EOFError at end of stream."""
        while not self._pending:
            data = await asyncio.wait_for(self.reader.read(4096), self.guard_s)
            if not data:
                raise EOFError("peer closed the stream")
            for ev in self.decoder.feed(data):
                if not isinstance(ev, Garbage):
                    self._pending.append(ev)
        ev = self._pending.popleft()
        self.log.append(ev)
        return ev

    async def expect_control(self, control: Control) -> None:
        ev = await self.event()
        assert ev == ControlReceived(control), f"expected {control.name}, got {ev!r}"

    async def expect_frame(self) -> tuple[bytes, Envelope]:
        """The next event must be a valid frame; returns its BODY and decoded envelope."""
        ev = await self.event()
        assert isinstance(ev, FrameReceived), f"expected a frame, got {ev!r}"
        return ev.body, decode_body(ev.body)

    async def until_eof(self) -> list[ControlReceived | FrameReceived | FrameError]:
        """Every event until the stream ends."""
        out = []
        with contextlib.suppress(EOFError, ConnectionError):
            while True:
                out.append(await self.event())
        return out

    # -- writing

    @staticmethod
    def frame(message: Message, seq: int, *, ref: int = 0, flags: int = 0) -> bytes:
        return encode_frame(encode_body(message, seq=seq, ref=ref, flags=flags))

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def send_control(self, control: Control) -> None:
        self.write(bytes([control]))

    def send(self, message: Message, seq: int, *, ref: int = 0, flags: int = 0) -> bytes:
        wire = self.frame(message, seq, ref=ref, flags=flags)
        self.write(wire)
        return wire

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    async def aclose(self) -> None:
        """close() and wait until the transport is really gone."""
        self.close()
        wait_closed = getattr(self.writer, "wait_closed", None)
        if wait_closed is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(wait_closed(), HANG_GUARD_S)

    # -- handshakes

    async def serve_handshake(self, *, keepalive_ms: int = 10_000, node_id: str = "raw") -> Hello:
        """Play the server: ACK the ENQ, ACK the Hello, send Accept (seq 1) and take its ACK.

        The long default keepalive keeps the evproto side from sending Pings, so the
        test controls every frame on the wire.
        """
        await self.expect_control(ENQ)
        self.send_control(ACK)
        _, env = await self.expect_frame()
        assert isinstance(env.message, Hello), env
        self.send_control(ACK)
        self.send(Accept(node_id=node_id, keepalive_ms=keepalive_ms), 1)
        await self.expect_control(ACK)
        return env.message

    async def client_handshake(self, hello: Hello) -> Accept:
        """Play the client: ENQ, Hello (seq 1), take ACK and Accept, ACK the Accept."""
        self.send_control(ENQ)
        await self.expect_control(ACK)
        self.send(hello, 1)
        await self.expect_control(ACK)
        _, env = await self.expect_frame()
        assert isinstance(env.message, Accept), env
        self.send_control(ACK)
        return env.message


@pytest.fixture
async def raw_peer():
    """``raw_peer(reader, writer)`` -> :class:`RawPeer`; closed at teardown."""
    peers: list[RawPeer] = []

    def make(reader: asyncio.StreamReader, writer: Any) -> RawPeer:
        peer = RawPeer(reader, writer)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        await peer.aclose()


def corrupt_lrc(wire: bytes) -> bytes:
    """The same frame with a wrong LRC (last byte flipped)."""
    return wire[:-1] + bytes([wire[-1] ^ 0xFF])


@pytest.fixture
def corrupt():
    """``corrupt(wire)``: the frame with its LRC broken."""
    return corrupt_lrc


# -- the simulated meter (tests/meterharness.py) ----------------------------------------------


@pytest.fixture
def sim_factory():
    """``sim_factory(protocol, *args, link=None) -> Sim``: evmeter-sim processes, stopped afterwards."""
    from meterharness import Sim

    sims: list[Sim] = []

    def make(protocol: str, *args: str, link: str | None = None) -> Sim:
        sims.append(Sim(protocol, *args, link=link))
        return sims[-1]

    yield make
    for s in sims:
        s.close()


# -- the real embedded broker and real networks on it (tests/netharness.py) --------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The embedded Kafka-compatible broker, one per test module (tests use their own topic
    prefixes); its output goes to tansu.log in a tmp dir of the module's."""
    from evproto.bus.broker import EmbeddedBroker

    with EmbeddedBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log") as b:
        yield b


class Brokers:
    """Brokers a test starts itself, to kill, stop or restart them; :meth:`close` stops them all."""

    def __init__(self) -> None:
        self.started: list[EmbeddedBroker] = []

    def start(self, port: int = 0) -> EmbeddedBroker:
        """A new in-memory broker on ``port`` (0: a free one), started."""
        from evproto.bus.broker import EmbeddedBroker

        self.started.append(EmbeddedBroker(port=port))
        return self.started[-1].start()

    def restart(self, old: EmbeddedBroker) -> EmbeddedBroker:
        """Stop ``old`` and start a new one on its port: the same address, empty logs."""
        port = old.port
        old.stop()
        return self.start(port)

    def close(self) -> None:
        for b in self.started:
            b.stop()


@pytest.fixture
def brokers() -> Iterator[Brokers]:
    """:class:`Brokers` of the test's own; every one is stopped afterwards."""
    started = Brokers()
    yield started
    started.close()


@pytest.fixture
def make_net(tmp_path: Path) -> Iterator[Callable[..., Network]]:
    """``make_net(bootstrap, secure=False, hosts=())``: a :class:`netharness.Network` of real processes
    in the test's tmp dir; every process of every one is stopped afterwards."""
    from netharness import Network

    made: list[Network] = []

    def make(bootstrap: str, **options: Any) -> Network:
        made.append(Network(str(tmp_path), bootstrap, **options))
        return made[-1]

    yield make
    for n in made:
        n.close()


@pytest.fixture
def net(make_net: Callable[..., Network], broker: EmbeddedBroker) -> Network:
    """A :class:`netharness.Network` of real processes on ``broker``."""
    return make_net(broker.bootstrap)


@pytest.fixture
def secure_net(make_net: Callable[..., Network], broker: EmbeddedBroker) -> Network:
    """A release-2 :class:`netharness.Network`: TLS, authenticated CPs, sealed and signed records."""
    return make_net(broker.bootstrap, secure=True)
