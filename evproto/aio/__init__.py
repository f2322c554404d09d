"""asyncio adapters: transports (TCP, TLS, serial) and the async link API."""

from .link import HelloPolicy, Link, connect, open_link, reconnecting
from .server import Server, serve, serve_serial, serve_stream
from .transport import (
    StreamPair,
    open_fd_stream,
    open_stream,
    start_tcp_server,
    tls_client_context,
    tls_server_context,
)

__all__ = [
    "Link",
    "Server",
    "HelloPolicy",
    "connect",
    "open_link",
    "reconnecting",
    "serve",
    "serve_stream",
    "serve_serial",
    "open_stream",
    "open_fd_stream",
    "start_tcp_server",
    "StreamPair",
    "tls_client_context",
    "tls_server_context",
]
