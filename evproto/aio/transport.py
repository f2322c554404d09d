"""One factory for byte streams: TCP sockets and serial devices look the same above it."""

from __future__ import annotations

import asyncio
import os
from typing import Any, Awaitable, Callable

from ..endpoint import Endpoint, parse_endpoint
from ..errors import TransportError

__all__ = ["open_stream", "start_tcp_server", "open_fd_stream", "StreamPair"]

StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_stream(address: str | Endpoint, *, timeout_s: float = 10.0) -> StreamPair:
    """Open ``tcp://host:port`` or ``serial:///dev/...?baudrate=...`` as (reader, writer).

    Raises TransportError (with the OS reason) when the address is invalid or
    cannot be opened within ``timeout_s``.
    """
    ep = address if isinstance(address, Endpoint) else parse_endpoint(address)
    try:
        if ep.scheme == "tcp":
            return await asyncio.wait_for(asyncio.open_connection(ep.host, ep.port), timeout_s)
        return await asyncio.wait_for(_open_serial(ep), timeout_s)
    except asyncio.TimeoutError:
        raise TransportError(f"{ep.url}: not opened within {timeout_s:g} s") from None
    except OSError as exc:
        raise TransportError(f"{ep.url}: {_reason(exc)}") from exc


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
        return await serial_asyncio_fast.open_serial_connection(url=ep.path, **ep.options)
    except serial.SerialException as exc:
        raise TransportError(f"{ep.url}: {exc}") from exc
    except termios.error as exc:  # the port refuses these settings (a pty cannot do 7E1, say)
        raise TransportError(f"{ep.url}: the port refuses {ep.options}: {exc.args[-1]}") from exc


async def start_tcp_server(
    address: str | Endpoint,
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> asyncio.base_events.Server:
    """Listen on ``tcp://host:port`` (port 0 picks a free one)."""
    ep = address if isinstance(address, Endpoint) else parse_endpoint(address)
    if ep.scheme != "tcp":
        raise TransportError(f"{ep.url}: only tcp:// addresses can listen")
    try:
        return await asyncio.start_server(handler, ep.host, ep.port)
    except OSError as exc:
        raise TransportError(f"{ep.url}: {_reason(exc)}") from exc


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
