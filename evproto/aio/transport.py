"""One factory for byte streams: TCP sockets, TLS and serial devices look the same above it."""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Any, Awaitable, Callable

from ..endpoint import Endpoint, parse_endpoint
from ..errors import TransportError

__all__ = [
    "open_stream",
    "start_tcp_server",
    "open_fd_stream",
    "StreamPair",
    "tls_client_context",
    "tls_server_context",
]

StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_stream(
    address: str | Endpoint, *, timeout_s: float = 10.0, tls: ssl.SSLContext | None = None
) -> StreamPair:
    """Open ``tcp://host:port``, ``tls://host:port`` or ``serial:///dev/...?baudrate=...``
    as (reader, writer).

    A ``tls://`` address uses ``tls`` when given, else a context built from the
    address's options (:func:`tls_client_context`): the server's certificate is
    always checked, against ``ca`` or the system's CAs, and its name against the host.
    Raises TransportError (with the OS or TLS reason) when the address is invalid or
    cannot be opened within ``timeout_s``.
    """
    ep = address if isinstance(address, Endpoint) else parse_endpoint(address)
    try:
        if ep.scheme == "tcp":
            return await asyncio.wait_for(asyncio.open_connection(ep.host, ep.port), timeout_s)
        if ep.scheme == "tls":
            ctx = tls or tls_client_context(ca=_opt(ep, "ca"), cert=_opt(ep, "cert"), key=_opt(ep, "key"))
            name = _opt(ep, "server_name") or ep.host
            return await asyncio.wait_for(
                asyncio.open_connection(
                    ep.host, ep.port, ssl=ctx, server_hostname=name, ssl_handshake_timeout=timeout_s
                ),
                timeout_s,
            )
        return await asyncio.wait_for(_open_serial(ep), timeout_s)
    except asyncio.TimeoutError:
        raise TransportError(
            f"{ep.address if ep.scheme == 'tls' else ep.url}: not opened within {timeout_s:g} s"
        ) from None
    except ssl.SSLError as exc:
        raise TransportError(f"{ep.address}: TLS: {_tls_reason(exc)}") from exc
    except OSError as exc:
        raise TransportError(f"{ep.address if ep.scheme == 'tls' else ep.url}: {_reason(exc)}") from exc


def _opt(ep: Endpoint, name: str) -> str | None:
    value = ep.options.get(name)
    return None if value is None else str(value)


def _tls_reason(exc: ssl.SSLError) -> str:
    # "certificate verify failed: self-signed certificate (_ssl.c:1006)" -> the useful part.
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {exc.verify_message}"
    text = exc.reason or str(exc)
    return str(text).split(" (_ssl.c")[0].lower().replace("_", " ")


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise TransportError(f"TLS certificate or key not found: {exc.filename}") from None
    except (ssl.SSLError, OSError) as exc:
        raise TransportError(f"TLS certificate {cert} or key {key} unusable: {exc}") from None


def _load_ca(ctx: ssl.SSLContext, ca: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except FileNotFoundError:
        raise TransportError(f"TLS CA file not found: {ca}") from None
    except (ssl.SSLError, OSError) as exc:
        raise TransportError(f"TLS CA file {ca} unusable: {exc}") from None


#: asyncio's TLS protocol keeps a 256 KiB read buffer per connection (CPython 3.11, 3.12):
#: 1.3 GB for 5,000 charge points' links. Our frames are a few KiB at most, so one TLS
#: record's worth is plenty; a smaller buffer only means more, smaller reads.
TLS_READ_BUFFER = 16 * 1024


def _bound_tls_buffers() -> None:
    protocol = getattr(getattr(asyncio, "sslproto", None), "SSLProtocol", None)
    if protocol is not None and getattr(protocol, "max_size", 0) > TLS_READ_BUFFER:
        protocol.max_size = TLS_READ_BUFFER


def tls_client_context(*, ca: str | None = None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A client context: TLS 1.2 or later, the server's certificate and name checked
    against ``ca`` (a PEM file; the system's CAs when None); ``cert``/``key`` sent
    when the server asks for a client certificate."""
    _bound_tls_buffers()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED are its defaults
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca:
        _load_ca(ctx, ca)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert and key:
        _load_chain(ctx, cert, key)
    return ctx


def tls_server_context(*, cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A server context with this side's ``cert``/``key``; given ``client_ca``, every
    client must present a certificate it signed (mutual TLS)."""
    _bound_tls_buffers()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, cert, key)
    if client_ca:
        _load_ca(ctx, client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _reason(exc: OSError) -> str:
    # asyncio's connect errors carry its own wording in strerror ("Connect call
    # failed ..."); the OS's words ("Connection refused") are what users need.
    return os.strerror(exc.errno) if exc.errno else str(exc)


async def _open_serial(ep: Endpoint) -> StreamPair:
    # pyserial-asyncio-fast opens the device in an executor, so a slow USB
    # adapter cannot block the event loop.
    import termios

    import serial
    import serial_asyncio_fast

    try:
        options: dict[str, Any] = dict(ep.options)
        if "://" in ep.path:
            # pyserial's URL handlers have no descriptor for the loop to watch: threads.
            from .threaded_serial import open_threaded_serial

            return await open_threaded_serial(ep.path, **options)
        pair: StreamPair = await serial_asyncio_fast.open_serial_connection(url=ep.path, **options)
        return pair
    except (serial.SerialException, ValueError) as exc:
        raise TransportError(f"{ep.url}: {exc}") from exc
    except termios.error as exc:  # the port refuses these settings (a pty cannot do 7E1, say)
        raise TransportError(f"{ep.url}: the port refuses {ep.options}: {exc.args[-1]}") from exc


async def start_tcp_server(
    address: str | Endpoint,
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    *,
    tls: ssl.SSLContext | None = None,
) -> asyncio.base_events.Server:
    """Listen on ``tcp://host:port`` or ``tls://host:port?cert=..&key=..[&ca=..]`` (port 0
    picks a free one). A ``tls://`` address uses ``tls`` when given, else a context
    built from its options (:func:`tls_server_context`; ``ca`` there means client
    certificates are required)."""
    ep = address if isinstance(address, Endpoint) else parse_endpoint(address)
    if ep.scheme not in ("tcp", "tls"):
        raise TransportError(f"{ep.address}: only tcp:// and tls:// addresses can listen")
    ctx = None
    if ep.scheme == "tls":
        cert, key = _opt(ep, "cert"), _opt(ep, "key")
        if tls is None and not (cert and key):
            raise TransportError(
                f"{ep.address}: a TLS server needs its certificate: tls://HOST:PORT?cert=FILE&key=FILE"
            )
        ctx = tls or tls_server_context(cert=cert or "", key=key or "", client_ca=_opt(ep, "ca"))
    try:
        return await asyncio.start_server(handler, ep.host, ep.port, ssl=ctx)
    except OSError as exc:
        raise TransportError(f"{ep.address}: {_reason(exc)}") from exc


class _FdStreamWriter(asyncio.StreamWriter):
    """A StreamWriter over a write pipe that also closes its sibling read pipe."""

    def __init__(self, *args: Any, read_transport: asyncio.ReadTransport) -> None:
        super().__init__(*args)
        self._read_transport = read_transport

    def close(self) -> None:
        self._read_transport.close()
        super().close()


async def open_fd_stream(fd: int) -> StreamPair:
    """Wrap an open file descriptor of a character device (a pty master) as (reader, writer).

    Used by the device side of a serial line, for example the simulated meter.
    The descriptor is duplicated; the caller keeps ownership of ``fd``. Closing
    the writer closes both duplicates.
    """
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.dup(fd), os.dup(fd)
    reader = asyncio.StreamReader()
    rproto = asyncio.StreamReaderProtocol(reader)
    rtransport, _ = await loop.connect_read_pipe(lambda: rproto, os.fdopen(read_fd, "rb", buffering=0))
    wtransport, wproto = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(write_fd, "wb", buffering=0)
    )
    writer = _FdStreamWriter(wtransport, wproto, reader, loop, read_transport=rtransport)
    return reader, writer
