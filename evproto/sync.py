"""A blocking link for scripts and test benches.

The same sans-I/O :class:`~evproto.link.LinkConnection` as :mod:`evproto.aio`, driven
by a plain socket or a pyserial port instead of an event loop: no protocol logic of
its own. ::

    with evproto.sync.connect("tcp://127.0.0.1:7100", hello=Hello(role=Role.TOOL, node_id="bench")) as link:
        print(link.request(HealthCheck(), timeout_s=1.0))

A blocking link is serviced only while the program is inside one of its calls
(``send``, ``request``, ``receive``, ``poll``): keepalives, acknowledgements and
retransmissions happen then. A program that goes quiet for longer than the
keepalive allows should call ``link.poll()`` now and then, or its peer will take
it for dead.
"""

from __future__ import annotations

import collections
import socket
import ssl
import time
from typing import Any, Protocol

from .endpoint import Endpoint, parse_endpoint
from .errors import IncomingOverflowError, LinkDownError, LocalProtocolError, RequestTimeoutError, TransportError
from .link import (
    Connected,
    Delivered,
    HelloReceived,
    LinkConfig,
    LinkConnection,
    LinkDown,
    LinkState,
    LinkStats,
    MessageReceived,
    RequestReceived,
    RequestTimedOut,
    ResponseReceived,
    Side,
    UnknownMessageReceived,
)
from .messages import Hello, Message, Reject

__all__ = ["SyncLink", "SyncServer", "connect", "listen"]

Incoming = MessageReceived | RequestReceived | UnknownMessageReceived
_READ_SIZE = 4096
_IDLE_WAIT_S = 1.0


class _Stream(Protocol):
    def read(self, timeout_s: float) -> bytes | None:
        """Bytes (``b""`` at end of stream) or None when nothing came within ``timeout_s``."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class _SocketStream:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def read(self, timeout_s: float) -> bytes | None:
        self.sock.settimeout(max(timeout_s, 0.0005))
        try:
            return self.sock.recv(_READ_SIZE)
        except (socket.timeout, ssl.SSLWantReadError):
            return None
        except OSError:
            return b""

    def write(self, data: bytes) -> None:
        self.sock.settimeout(None)
        try:
            self.sock.sendall(data)
        except OSError:
            pass  # the next read reports the end

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _SerialStream:
    """A pyserial port: any device or URL pyserial opens (``/dev/ttyUSB0``, ``COM3``,
    ``rfc2217://``, ``socket://``, ``loop://``). A serial line has no end of stream."""

    def __init__(self, port: Any) -> None:
        self.port = port

    def read(self, timeout_s: float) -> bytes | None:
        self.port.timeout = max(timeout_s, 0.0005)
        data: bytes = self.port.read(max(1, min(self.port.in_waiting, _READ_SIZE)))
        if not data:
            return None
        waiting = self.port.in_waiting
        if waiting:
            data += self.port.read(min(waiting, _READ_SIZE))
        return data

    def write(self, data: bytes) -> None:
        self.port.write(data)

    def close(self) -> None:
        self.port.close()


def _open(ep: Endpoint, timeout_s: float, tls: ssl.SSLContext | None) -> _Stream:
    if ep.scheme == "serial":
        import serial

        try:
            options: dict[str, Any] = dict(ep.options)
            return _SerialStream(serial.serial_for_url(ep.path, **options))
        except (serial.SerialException, ValueError) as exc:
            raise TransportError(f"{ep.url}: {exc}") from exc
    try:
        sock = socket.create_connection((ep.host, ep.port), timeout=timeout_s)
    except OSError as exc:
        raise TransportError(f"{ep.address}: {exc.strerror or exc}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ep.scheme == "tls":
        from .aio.transport import tls_client_context

        opt = ep.options.get
        ctx = tls or tls_client_context(ca=_str(opt("ca")), cert=_str(opt("cert")), key=_str(opt("key")))
        try:
            sock = ctx.wrap_socket(sock, server_hostname=_str(opt("server_name")) or ep.host)
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            raise TransportError(f"{ep.address}: TLS: {exc}") from exc
    return _SocketStream(sock)


def _str(value: object) -> str | None:
    return None if value is None else str(value)


class SyncLink:
    """A live link driven by blocking calls. Make one with :func:`connect` or
    :meth:`SyncServer.accept`; use it as a context manager (EOT on exit)."""

    def __init__(self, conn: LinkConnection, stream: _Stream) -> None:
        self.conn = conn
        self._stream = stream
        self._incoming: collections.deque[Incoming] = collections.deque()
        self._delivered: set[int] = set()
        self._responses: dict[int, Message] = {}
        self._timed_out: set[int] = set()
        self._opened = False
        self._failure: LinkDownError | None = None

    # -- properties ------------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        """The peer's node id ("" before the handshake)."""
        if self.conn.peer_hello is not None:
            return self.conn.peer_hello.node_id
        return self.conn.peer_accept.node_id if self.conn.peer_accept is not None else ""

    @property
    def is_open(self) -> bool:
        return self.conn.state is LinkState.OPEN

    @property
    def stats(self) -> LinkStats:
        return self.conn.stats

    @property
    def down_event(self) -> LinkDown | None:
        return self.conn.down

    # -- calls -----------------------------------------------------------------------------

    def send(self, message: Message, *, wait: bool = True, timeout_s: float | None = None) -> int:
        """Send a one-way message; with ``wait``, return once the peer acknowledged it.
        Raises LinkDownError if the link ends first, RequestTimeoutError after ``timeout_s``."""
        seq = self._call(lambda now: self.conn.send(message, now))
        if wait and not self._run_until(lambda: seq in self._delivered, timeout_s):
            raise RequestTimeoutError(f"{type(message).__name__} not acknowledged within {timeout_s} s")
        self._delivered.discard(seq)
        return seq

    def request(self, message: Message, *, timeout_s: float | None = None) -> Message:
        """Send ``message`` and return the peer's answer (RequestTimeoutError if none in time)."""
        limit = timeout_s if timeout_s is not None else self.conn.config.request_timeout_s
        rid = self._call(lambda now: self.conn.request(message, now, timeout_s=limit))
        self._run_until(lambda: rid in self._responses or rid in self._timed_out, None)
        if rid in self._timed_out:
            self._timed_out.discard(rid)
            raise RequestTimeoutError(f"no answer to request {rid} within {limit:g} s")
        return self._responses.pop(rid)

    def respond(self, request: RequestReceived | int, message: Message) -> int:
        """Answer a request received from the peer."""
        request_id = request if isinstance(request, int) else request.request_id
        return self._call(lambda now: self.conn.respond(request_id, message, now))

    def receive(self, timeout_s: float | None = None) -> Incoming | None:
        """The next message from the peer, or None when none came within ``timeout_s``
        (None: wait as long as it takes). Raises LinkDownError when the link ends."""
        if not self._incoming:
            self._run_until(lambda: bool(self._incoming), timeout_s)
        return self._incoming.popleft() if self._incoming else None

    def poll(self) -> None:
        """Service the link (read what arrived, send keepalives and acknowledgements)
        without waiting. Raises LinkDownError when it has ended."""
        self._service(0.0)
        self._run_until(lambda: True, 0.0)
        self._check_open()

    def close(self) -> LinkDown:
        """Say goodbye (EOT) and close the transport. Safe to call more than once."""
        if self.conn.state is not LinkState.CLOSED:
            self.conn.close(time.monotonic())
            self._flush()
            self._drain_events()
        self._stream.close()
        down = self.conn.down
        assert down is not None
        return down

    def __enter__(self) -> SyncLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- machinery -------------------------------------------------------------------------

    def _call(self, action: Any) -> int:
        self._check_open()
        result: int = action(time.monotonic())
        self._flush()
        self._drain_events()
        return result

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self.conn.down is not None:
            raise self.conn.down.error()
        if self.conn.state is not LinkState.OPEN:
            raise LocalProtocolError(f"link is not open (state {self.conn.state.value})")

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self._stream.write(data)

    def _drain_events(self) -> None:
        for ev in self.conn.events():
            if isinstance(ev, Delivered):
                self._delivered.add(ev.seq)
            elif isinstance(ev, ResponseReceived):
                self._responses[ev.request_id] = ev.message
            elif isinstance(ev, RequestTimedOut):
                self._timed_out.add(ev.request_id)
            elif isinstance(ev, (MessageReceived, RequestReceived, UnknownMessageReceived)):
                if len(self._incoming) >= self.conn.config.max_incoming:
                    self._overflow()
                elif self._failure is None:
                    self._incoming.append(ev)
            elif isinstance(ev, (Connected, HelloReceived)):
                self._opened = True

    def _overflow(self) -> None:
        if self._failure is None:
            self._failure = IncomingOverflowError(self.conn.config.max_incoming)
            if self.conn.state is not LinkState.CLOSED:
                self.conn.close(time.monotonic())
                self._flush()

    def _run_until(self, done: Any, timeout_s: float | None) -> bool:
        """Service the link until ``done()`` or ``timeout_s``; raises when the link ends
        (after what it delivered has been taken by ``done``)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        conn = self.conn
        while True:
            self._flush()
            self._drain_events()
            if done():
                return True
            if self._failure is not None:
                raise self._failure
            if conn.down is not None:
                raise conn.down.error()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            waits = [t - now for t in (deadline, conn.get_timer()) if t is not None]
            self._service(max(0.0, min(waits)) if waits else _IDLE_WAIT_S)

    def _service(self, wait_s: float) -> None:
        """Read what arrives within ``wait_s`` and run the timers that are due."""
        conn = self.conn
        if conn.state is LinkState.CLOSED:
            return
        data = self._stream.read(wait_s)
        now = time.monotonic()
        if data is not None:
            conn.receive_data(data, now)
        timer = conn.get_timer()
        if timer is not None and now >= timer:
            conn.handle_timer(now)
        self._flush()


def connect(
    address: str | Endpoint,
    *,
    hello: Hello,
    config: LinkConfig | None = None,
    timeout_s: float = 10.0,
    tls: ssl.SSLContext | None = None,
) -> SyncLink:
    """Open ``tcp://``, ``tls://`` or a serial device / pyserial URL and run the handshake.

    Raises TransportError when the address cannot be opened, LinkRejectedError when
    the server refuses the Hello, LinkDownError when the handshake fails otherwise.
    """
    ep = address if isinstance(address, Endpoint) else parse_endpoint(address)
    stream = _open(ep, timeout_s, tls)
    conn = LinkConnection(Side.CLIENT, hello=hello, config=config)
    link = SyncLink(conn, stream)
    conn.start(time.monotonic())
    try:
        link._run_until(lambda: link._opened, None)
    except BaseException:
        stream.close()
        raise
    return link


class SyncServer:
    """A listening TCP socket handing out one :class:`SyncLink` per accepted client."""

    def __init__(self, sock: socket.socket, *, node_id: str, config: LinkConfig | None, on_hello: Any | None) -> None:
        self.sock = sock
        self._node_id = node_id
        self._config = config
        self._on_hello = on_hello

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def accept(self, timeout_s: float | None = None) -> SyncLink | None:
        """Wait for a client and run the handshake; None when none came in time. A client
        ``on_hello`` refuses (it returns a Reject) is answered and the wait goes on."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self.sock.settimeout(None if deadline is None else max(0.0005, deadline - time.monotonic()))
            try:
                client, _ = self.sock.accept()
            except socket.timeout:
                return None
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = LinkConnection(Side.SERVER, node_id=self._node_id, config=self._config)
            link = SyncLink(conn, _SocketStream(client))
            conn.start(time.monotonic())
            try:
                link._run_until(lambda: link._opened, None)
                assert conn.peer_hello is not None
                decision: Reject | None = self._on_hello(conn.peer_hello) if self._on_hello else None
                if decision is None:
                    conn.accept(time.monotonic())
                    link._flush()
                    link._drain_events()
                    return link
                conn.reject(time.monotonic(), decision.code, decision.detail)
                link._flush()
            except LinkDownError:
                pass
            link._stream.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SyncServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def listen(
    address: str | Endpoint, *, node_id: str, config: LinkConfig | None = None, on_hello: Any | None = None
) -> SyncServer:
    """Listen on ``tcp://host:port`` (port 0: a free one); :meth:`SyncServer.accept` clients."""
    ep = address if isinstance(address, Endpoint) else parse_endpoint(address)
    if ep.scheme != "tcp":
        raise TransportError(f"{ep.address}: the blocking server listens on tcp:// only")
    try:
        sock = socket.create_server((ep.host, ep.port))
    except OSError as exc:
        raise TransportError(f"{ep.address}: {exc.strerror or exc}") from exc
    return SyncServer(sock, node_id=node_id, config=config, on_hello=on_hello)
