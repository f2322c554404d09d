"""asyncio adapters: transports (TCP, serial) and the async link API."""

from .link import HelloPolicy, Link, Server, connect, open_link, serve, serve_stream
from .transport import StreamPair, open_fd_stream, open_stream, start_tcp_server

__all__ = [
    "Link",
    "Server",
    "HelloPolicy",
    "connect",
    "open_link",
    "serve",
    "serve_stream",
    "open_stream",
    "open_fd_stream",
    "start_tcp_server",
    "StreamPair",
]
