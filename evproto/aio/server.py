"""Serve :class:`~evproto.aio.link.Link` sessions: on a stream, on a serial line, on a TCP/TLS port.

A Hello policy decides who may stay (:data:`~evproto.aio.link.HelloPolicy`); each
accepted link goes to the handler, and a handler's crash drops the link without a
goodbye (the peer sees a loss, never a clean EOT).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl
from collections.abc import Awaitable, Callable

from ..endpoint import Endpoint, parse_endpoint
from ..errors import (
    LinkDownError,
)
from ..link import (
    LinkConfig,
    LinkConnection,
    LinkDown,
    LinkState,
    Side,
)
from ..messages import PROTOCOL_VERSION, Hello, ReasonCode, Reject
from .link import HelloPolicy, Link
from .transport import StreamPair, open_stream, start_tcp_server

__all__ = ["Server", "serve", "serve_stream", "serve_serial"]

log = logging.getLogger("evproto.aio")


def _wants_link(policy: HelloPolicy) -> bool:
    try:
        params = inspect.signature(policy).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: called with the Hello alone
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


async def _decide(policy: HelloPolicy | None, hello: Hello, link: Link | None = None) -> Reject | None:
    if hello.protocol_version != PROTOCOL_VERSION:
        return Reject(
            code=ReasonCode.UNSUPPORTED_VERSION,
            detail=f"protocol version {hello.protocol_version} not supported (this side speaks {PROTOCOL_VERSION})",
        )
    if policy is None:
        return None
    decision = policy(hello, link) if link is not None and _wants_link(policy) else policy(hello)
    if inspect.isawaitable(decision):
        decision = await decision
    return decision


async def serve_stream(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handler: Callable[[Link], Awaitable[None]],
    *,
    node_id: str,
    on_hello: HelloPolicy | None = None,
    config: LinkConfig | None = None,
    keep_open: bool = False,
) -> LinkDown:
    """Run one server-side session on an open stream and return how it ended.

    The handler runs once the Hello is accepted; when it returns the link is
    closed with EOT. Used by :func:`serve` per TCP connection and by the device end
    of a serial line; with ``keep_open`` the stream stays open for the next session
    (:func:`serve_serial`).
    """
    conn = LinkConnection(Side.SERVER, node_id=node_id, config=config)
    link = Link(conn, reader, writer, keep_transport=keep_open)
    conn.start(link._now())
    link._pump()
    try:
        await link._handshake
        assert conn.peer_hello is not None
        rejection = await _decide(on_hello, conn.peer_hello, link)
        if conn.state is LinkState.HELLO_RECEIVED:
            if rejection is not None:
                conn.reject(link._now(), rejection.code, rejection.detail)
            else:
                conn.accept(link._now())
            link._pump()
        if link.is_open:
            await handler(link)
    except LinkDownError as exc:
        log.debug("session with %r ended: %s", link.peer_id, exc)
    except asyncio.CancelledError:
        await link.close()
        raise
    except Exception:
        # A crash must never look like a clean goodbye to the peer: no EOT.
        log.exception("handler for %r failed", link.peer_id)
        return await link.abort()
    return await link.close()


async def serve_serial(
    address: str | Endpoint | StreamPair,
    handler: Callable[[Link], Awaitable[None]],
    *,
    node_id: str,
    on_hello: HelloPolicy | None = None,
    config: LinkConfig | None = None,
    on_session_end: Callable[[LinkDown], object] | None = None,
) -> None:
    """The device end of a serial line: open it once and serve one session after
    another (a client that restarts, or a new one, starts again with ENQ) until
    cancelled; the line is closed only then. ``on_session_end`` hears how each ended.
    """
    reader, writer = address if isinstance(address, tuple) else await open_stream(address)
    try:
        while True:
            down = await serve_stream(
                reader, writer, handler, node_id=node_id, on_hello=on_hello, config=config, keep_open=True
            )
            if on_session_end is not None:
                on_session_end(down)
            if reader.at_eof():
                return
    finally:
        writer.close()


class Server:
    """A listening TCP link server. Use as ``async with``; :attr:`port` tells the chosen port."""

    def __init__(
        self,
        handler: Callable[[Link], Awaitable[None]],
        *,
        node_id: str,
        on_hello: HelloPolicy | None,
        config: LinkConfig | None,
    ) -> None:
        self._handler = handler
        self._node_id = node_id
        self._on_hello = on_hello
        self._config = config
        self._server: asyncio.base_events.Server | None = None
        self._scheme = "tcp"
        self._sessions: set[asyncio.Future[LinkDown]] = set()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every (host, port) the server listens on."""
        assert self._server is not None
        return [s.getsockname()[:2] for s in self._server.sockets]

    @property
    def port(self) -> int:
        """The listening port (useful after binding port 0)."""
        return self.addresses[0][1]

    @property
    def url(self) -> str:
        """``tcp://host:port`` (or ``tls://``) of the first listening socket."""
        host, port = self.addresses[0]
        return Endpoint(scheme=self._scheme, host=host, port=port).url

    async def _start(self, address: Endpoint, tls: ssl.SSLContext | None) -> None:
        self._scheme = address.scheme
        self._server = await start_tcp_server(address, self._on_connection, tls=tls)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The session runs in a task of our own: close() cancels that one, never the
        # task asyncio's server created (cancelling it makes asyncio log an error).
        session = asyncio.ensure_future(
            serve_stream(
                reader, writer, self._handler, node_id=self._node_id, on_hello=self._on_hello, config=self._config
            )
        )
        self._sessions.add(session)
        try:
            await asyncio.wait({session})
        finally:
            self._sessions.discard(session)
            if not session.cancelled() and session.exception() is not None:  # pragma: no cover - serve_stream catches
                log.error("session ended with %r", session.exception())

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening and end every session (their handlers are cancelled; links send EOT)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()
        for task in list(self._sessions):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve(
    address: str | Endpoint,
    handler: Callable[[Link], Awaitable[None]],
    *,
    node_id: str,
    on_hello: HelloPolicy | None = None,
    config: LinkConfig | None = None,
    tls: ssl.SSLContext | None = None,
) -> Server:
    """Listen on ``tcp://host:port`` or ``tls://host:port?cert=..&key=..`` and run
    ``handler(link)`` for every accepted client (``tls`` overrides the address's
    options; see :func:`evproto.aio.tls_server_context`)."""
    ep = address if isinstance(address, Endpoint) else parse_endpoint(address)
    server = Server(handler, node_id=node_id, on_hello=on_hello, config=config)
    await server._start(ep, tls)
    return server
