"""Run a :class:`~evproto.link.LinkConnection` over an asyncio stream.

Client::

    async with evproto.aio.connect("tcp://central:7000", hello=Hello(...)) as link:
        answer = await link.request(HealthCheck(), timeout_s=1.0)
        async for event in link.messages:          # raises LinkDownError when the link dies
            if isinstance(event, RequestReceived):
                await link.respond(event, CommandResult(code=ReasonCode.OK))

Server (:mod:`evproto.aio.server`)::

    async def handler(link: Link) -> None:
        async for event in link.messages:
            ...

    async with await evproto.aio.serve("tcp://0.0.0.0:7000", handler, node_id="central") as server:
        await server.serve_forever()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..backoff import Backoff
from ..endpoint import Endpoint
from ..errors import (
    IncomingOverflowError,
    LinkDownError,
    LinkRejectedError,
    LocalProtocolError,
    RequestTimeoutError,
    TransportError,
)
from ..link import (
    Connected,
    Delivered,
    DownReason,
    HelloReceived,
    LinkConfig,
    LinkConnection,
    LinkDown,
    LinkState,
    MessageReceived,
    RequestReceived,
    RequestTimedOut,
    ResponseReceived,
    Side,
    UnknownMessageReceived,
)
from ..messages import Hello, Message, ReasonCode, Reject
from .transport import StreamPair, open_stream

__all__ = ["Link", "connect", "open_link", "reconnecting", "HelloPolicy"]

log = logging.getLogger("evproto.aio")

_READ_SIZE = 4096
_DOWN = object()  # sentinel in the incoming queue

#: Decides on a client's Hello: return None to accept it or a Reject to refuse it.
#: Decides on a client's Hello: ``policy(hello)`` or ``policy(hello, link)`` (to see who asks:
#: ``link.peer_address``); returns a Reject to refuse, None to accept (or an awaitable of either).
HelloPolicy = Callable[..., "Reject | None | Awaitable[Reject | None]"]

Incoming = MessageReceived | RequestReceived | UnknownMessageReceived


class _MessageIterator:
    def __init__(self, link: Link) -> None:
        self._link = link

    def __aiter__(self) -> _MessageIterator:
        return self

    async def __anext__(self) -> Incoming:
        return await self._link._next_incoming()


class Link:
    """A live link over a (reader, writer) pair. Create it with :func:`connect` or :func:`serve`."""

    def __init__(
        self,
        conn: LinkConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        keep_transport: bool = False,
    ) -> None:
        self.conn = conn
        #: The stream outlives the link (a serial line serving one session after another).
        self._keep_transport = keep_transport
        self._reader = reader
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._max_incoming = conn.config.max_incoming
        self._incoming: asyncio.Queue[Any] = asyncio.Queue()
        #: Why the link was ended on this side for a reason of its own (overflow).
        self._failure: LinkDownError | None = None
        self._space = asyncio.Event()
        self._space.set()
        self._deliveries: dict[int, asyncio.Future[None]] = {}
        self._response: asyncio.Future[Message] | None = None
        self._request_lock = asyncio.Lock()
        self._handshake: asyncio.Future[Connected | HelloReceived] = self._loop.create_future()
        self._down: asyncio.Future[LinkDown] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._reader_task = asyncio.ensure_future(self._read_loop())

    # -- properties ------------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        """The peer's node id from the handshake ("" before it)."""
        if self.conn.peer_hello is not None:
            return self.conn.peer_hello.node_id
        if self.conn.peer_accept is not None:
            return self.conn.peer_accept.node_id
        return ""

    @property
    def peer_hello(self) -> Hello | None:
        """Server side: the client's Hello."""
        return self.conn.peer_hello

    @property
    def peer_address(self) -> str:
        """Where the peer is: its IP address for TCP, "" for a serial line or a pipe."""
        peer = self._writer.get_extra_info("peername")
        if isinstance(peer, (tuple, list)) and peer:
            return str(peer[0])
        return ""

    @property
    def peer_certificate(self) -> dict[str, Any] | None:
        """The certificate the peer proved it holds over TLS (``ssl.getpeercert()``
        form: ``subject``, ``issuer``, ``serialNumber``...), None without one."""
        ssl_object = self._writer.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        cert = ssl_object.getpeercert()
        return cert or None

    @property
    def peer_common_name(self) -> str | None:
        """The CN of the peer's TLS certificate (the node id under mutual TLS), None without one."""
        cert = self.peer_certificate
        if not cert:
            return None
        for rdn in cert.get("subject", ()):
            for name, value in rdn:
                if name == "commonName":
                    return str(value)
        return None

    @property
    def is_open(self) -> bool:
        """True while the link is OPEN."""
        return self.conn.state is LinkState.OPEN

    @property
    def down_event(self) -> LinkDown | None:
        """Why the link ended, once it has."""
        return self.conn.down

    @property
    def messages(self) -> _MessageIterator:
        """``async for`` over incoming messages and requests.

        Raises :class:`LinkDownError` when the link dies (its ``clean`` tells an
        orderly EOT from a loss); ends quietly only after our own :meth:`close`.
        """
        return _MessageIterator(self)

    # -- operations ------------------------------------------------------------------------

    async def send(self, message: Message, *, wait: bool = True) -> int:
        """Send a one-way message; with ``wait`` return once the peer ACKed it."""
        return await self._queue_frame(message, None, wait=wait)

    async def request(self, message: Message, *, timeout_s: float | None = None) -> Message:
        """Send ``message`` and return the peer's answer.

        Requests are serialised (one outstanding per direction). Raises
        :class:`RequestTimeoutError` when no answer comes in ``timeout_s``
        (default: the link config's) and :class:`LinkDownError` if the link dies.
        """
        async with self._request_lock:
            self._check_open()
            fut: asyncio.Future[Message] = self._loop.create_future()
            self._response = fut
            try:
                self.conn.request(message, self._now(), timeout_s=timeout_s)
                self._pump()
                return await fut
            finally:
                self._response = None
                if fut.cancelled() or not fut.done():  # our caller gave up: free the slot
                    self.conn.cancel_request()

    async def respond(self, request: RequestReceived | int, message: Message, *, wait: bool = False) -> int:
        """Answer a request received from the peer; with ``wait`` return once the peer ACKed it."""
        request_id = request if isinstance(request, int) else request.request_id
        return await self._queue_frame(message, request_id, wait=wait)

    async def close(self) -> LinkDown:
        """Say goodbye (EOT) and close the transport. Safe to call more than once."""
        if self.conn.state is not LinkState.CLOSED:
            self.conn.close(self._now())
            self._pump()
        if self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        if not self._keep_transport:
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        return await self._down

    async def abort(self) -> LinkDown:
        """End the link as a crash would: no EOT, the transport dropped. The peer sees
        the connection lost (``clean`` False, its "last will" case), never a goodbye."""
        if self.conn.state is not LinkState.CLOSED:
            if not self._keep_transport:  # a shared line is not ours to drop: just stop talking
                with contextlib.suppress(Exception):
                    self._writer.transport.abort()
            self.conn.receive_data(b"", self._now())
            self._pump()
        return await self.close()

    async def wait_closed(self) -> LinkDown:
        """Wait until the link ends, for whatever reason, and return why."""
        return await asyncio.shield(self._down)

    # -- internals -------------------------------------------------------------------------

    async def _queue_frame(self, message: Message, request_id: int | None, *, wait: bool) -> int:
        """Queue ``message`` (the answer to ``request_id``, or one-way when None) once the
        send queue has room; with ``wait`` return once the peer ACKed it."""
        self._check_open()
        while self.conn.queued >= self.conn.config.max_queue:
            self._space.clear()
            await self._space.wait()
            self._check_open()
        now = self._now()
        if request_id is None:
            seq = self.conn.send(message, now)
        else:
            seq = self.conn.respond(request_id, message, now)
        fut: asyncio.Future[None] | None = None
        if wait:
            fut = self._loop.create_future()
            self._deliveries[seq] = fut
        self._pump()
        if fut is not None:
            await fut
        return seq

    def _now(self) -> float:
        return self._loop.time()

    def _check_open(self) -> None:
        if self.conn.down is not None:
            raise self.conn.down.error()
        if self.conn.state is not LinkState.OPEN:
            raise LocalProtocolError(f"link is not open (state {self.conn.state.value})")

    async def _next_incoming(self) -> Incoming:
        item = await self._incoming.get()
        if item is _DOWN:
            self._incoming.put_nowait(_DOWN)  # every later reader sees the end too
            down = self.conn.down
            assert down is not None
            if self._failure is not None:
                raise self._failure
            if down.reason is DownReason.CLOSED:
                raise StopAsyncIteration
            raise down.error()
        return item  # type: ignore[no-any-return]

    async def _read_loop(self) -> None:
        conn = self.conn
        try:
            # Reading never stops, whatever the application does with link.messages:
            # ACKs, keepalives and answers to requests must never queue behind unread
            # messages (the incoming queue is bounded by closing the link instead).
            while conn.state is not LinkState.CLOSED:
                data = await self._reader.read(_READ_SIZE)
                conn.receive_data(data, self._now())
                self._pump()
        except asyncio.CancelledError:
            raise
        except (OSError, EOFError) as exc:
            log.debug("transport error on link to %r: %s", self.peer_id, exc)
            conn.receive_data(b"", self._now())
            self._pump()
        except Exception:  # a bug must not leave the peer hanging: drop the link and say so
            log.exception("unexpected error on link to %r", self.peer_id)
            conn.receive_data(b"", self._now())
            self._pump()

    def _pump(self) -> None:
        conn = self.conn
        data = conn.data_to_send()
        if data and not self._writer.is_closing():
            try:
                self._writer.write(data)
            except (OSError, RuntimeError) as exc:
                log.debug("write failed on link to %r: %s", self.peer_id, exc)
        for ev in conn.events():
            self._dispatch(ev)
        self._rearm_timer()

    def _dispatch(self, ev: object) -> None:
        if isinstance(ev, Delivered):
            fut = self._deliveries.pop(ev.seq, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            self._space.set()
        elif isinstance(ev, (MessageReceived, RequestReceived, UnknownMessageReceived)):
            if self._incoming.qsize() >= self._max_incoming:
                self._overflow()
            elif self._failure is None:
                self._incoming.put_nowait(ev)
        elif isinstance(ev, ResponseReceived):
            if self._response is not None and not self._response.done():
                self._response.set_result(ev.message)
        elif isinstance(ev, RequestTimedOut):
            if self._response is not None and not self._response.done():
                self._response.set_exception(RequestTimeoutError(f"no answer to request {ev.request_id}"))
        elif isinstance(ev, (Connected, HelloReceived)):
            if not self._handshake.done():
                self._handshake.set_result(ev)
        elif isinstance(ev, LinkDown):
            self._on_down(ev)

    def _overflow(self) -> None:
        if self._failure is not None:
            return
        self._failure = IncomingOverflowError(self._max_incoming)
        log.error("link to %r: %s; closing it", self.peer_id, self._failure.args[0])
        if self.conn.state is not LinkState.CLOSED:
            self.conn.close(self._now())
            self._pump()

    def _on_down(self, down: LinkDown) -> None:
        log.debug("link to %r down: %s %s", self.peer_id, down.reason.value, down.detail)
        exc = self._failure or down.error()
        for fut in self._deliveries.values():
            if not fut.done():
                fut.set_exception(exc)
        self._deliveries.clear()
        if self._response is not None and not self._response.done():
            self._response.set_exception(exc)
        if not self._handshake.done():
            self._handshake.set_exception(exc)
            self._handshake.exception()  # retrieved here; awaiting it re-raises
        self._incoming.put_nowait(_DOWN)
        self._space.set()
        if not self._down.done():
            self._down.set_result(down)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._keep_transport:
            with contextlib.suppress(Exception):
                self._writer.close()

    def _rearm_timer(self) -> None:
        deadline = self.conn.get_timer()
        if self._timer is not None:
            if deadline is not None and self._timer.when() <= deadline:
                # Most traffic only moves deadlines later (silence, keepalive): keep the
                # armed timer; when it fires early, handle_timer finds nothing due and
                # the timer is armed again at the new deadline. One timer per deadline
                # period instead of a cancel and a new handle per frame.
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer, deadline)

    def _on_timer(self, deadline: float) -> None:
        self._timer = None
        # call_at may fire up to one clock tick early; the loop considers it due.
        self.conn.handle_timer(max(self._now(), deadline))
        self._pump()


# -- client ----------------------------------------------------------------------------------


async def open_link(
    address: str | Endpoint | StreamPair,
    *,
    hello: Hello,
    config: LinkConfig | None = None,
    tls: ssl.SSLContext | None = None,
) -> Link:
    """Open the transport, run the handshake and return an OPEN :class:`Link`.

    ``tls`` overrides the context a ``tls://`` address builds from its options.
    Raises TransportError when the address cannot be opened (or its certificate is
    refused), LinkRejectedError when the server refuses the Hello, LinkDownError otherwise.
    """
    reader, writer = address if isinstance(address, tuple) else await open_stream(address, tls=tls)
    conn = LinkConnection(Side.CLIENT, hello=hello, config=config)
    link = Link(conn, reader, writer)
    conn.start(link._now())
    link._pump()
    try:
        await link._handshake
    except BaseException:
        await link.close()
        raise
    return link


@contextlib.asynccontextmanager
async def connect(
    address: str | Endpoint | StreamPair,
    *,
    hello: Hello,
    config: LinkConfig | None = None,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[Link]:
    """``async with connect(url, hello=...) as link:``; closes with EOT on exit."""
    link = await open_link(address, hello=hello, config=config, tls=tls)
    try:
        yield link
    finally:
        await link.close()


async def reconnecting(
    address: str | Endpoint,
    *,
    hello: Hello,
    config: LinkConfig | None = None,
    tls: ssl.SSLContext | None = None,
    backoff: Backoff | None = None,
    on_retry: Callable[[BaseException, float], object] | None = None,
) -> AsyncIterator[Link]:
    """Yield an OPEN link each time one can be made, for as long as the caller iterates::

        async for link in reconnecting("tcp://central:7000", hello=hello):
            try:
                async for event in link.messages:
                    ...
            except LinkDownError:
                continue  # the next iteration reconnects

    A failed attempt (the transport cannot be opened, the handshake fails, or the
    server answers DUPLICATE_ID or BUSY) waits ``backoff.next_delay()`` (jittered,
    doubling up to a cap; reset once a link is made) and tries again; ``on_retry``
    hears each failure and the delay. Any other refusal is for good: its
    LinkRejectedError is raised. Each link is closed when the caller moves on.
    """
    backoff = backoff or Backoff()
    while True:
        try:
            link = await open_link(address, hello=hello, config=config, tls=tls)
        except LinkRejectedError as exc:
            if exc.code not in (ReasonCode.DUPLICATE_ID, ReasonCode.BUSY):
                raise
            failure: BaseException = exc
        except (TransportError, LinkDownError) as exc:
            failure = exc
        else:
            backoff.reset()
            try:
                yield link
            finally:
                await link.close()
            continue
        delay = backoff.next_delay()
        if on_retry is not None:
            on_retry(failure, delay)
        await asyncio.sleep(delay)


# -- server ----------------------------------------------------------------------------------
