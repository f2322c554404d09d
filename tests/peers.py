"""A real evproto peer process for the integration tests (killed, stopped, restarted by them).

Run as ``python tests/peers.py MODE ...``. Each mode prints exactly one line to
stdout once it is ready (then stays quiet, so an unread pipe never fills):

``server --listen tcp://127.0.0.1:0 [--node-id central]``
    Listens, prints its ``tcp://host:port`` URL, answers HealthCheck requests
    with HealthStatus OK and ignores everything else.

``client --connect URL --id CP1 [--keepalive-ms 200]``
    Connects, prints ``connected`` and then health-checks every 0.2 s until the
    link goes down (exit status 3) or it is killed.

``pty-server [--node-id device]``
    Creates a pseudo-terminal pair with ``os.openpty()``, puts it in raw mode,
    prints the slave's path and serves link sessions on the master, one after
    the other, answering HealthCheck. It keeps the slave open itself, so a client
    closing its end does not hang up the line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tty
from pathlib import Path

# Runnable straight from a checkout: make the repository's evproto importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import evproto  # noqa: E402
from evproto import aio  # noqa: E402


def _ready(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def answer_health_checks(link: aio.Link) -> None:
    """Server handler: answer HealthCheck with OK, ignore everything else."""
    async for event in link.messages:
        if isinstance(event, evproto.RequestReceived) and isinstance(event.message, evproto.HealthCheck):
            await link.respond(event, evproto.HealthStatus(state=evproto.HealthState.OK))


async def run_server(args: argparse.Namespace) -> None:
    server = await aio.serve(args.listen, answer_health_checks, node_id=args.node_id)
    async with server:
        _ready(server.url)
        await server.serve_forever()


async def run_client(args: argparse.Namespace) -> int:
    hello = evproto.Hello(role=evproto.Role.MONITOR, node_id=args.id, keepalive_ms=args.keepalive_ms)
    async with aio.connect(args.connect, hello=hello) as link:
        _ready("connected")
        try:
            while True:
                await link.request(evproto.HealthCheck(), timeout_s=2.0)
                await asyncio.sleep(0.2)  # a monitor's pace of health checks, faster
        except evproto.LinkDownError as exc:
            print(f"link down: {exc}", file=sys.stderr)
            return 3
    return 0


async def run_pty_server(args: argparse.Namespace) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)  # no line discipline: every byte passes untouched
    _ready(os.ttyname(slave))
    config = evproto.LinkConfig(min_keepalive_s=0.05)
    while True:
        reader, writer = await aio.open_fd_stream(master)
        down = await aio.serve_stream(reader, writer, answer_health_checks, node_id=args.node_id, config=config)
        print(f"session ended: {down.reason.value}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("server")
    p.add_argument("--listen", default="tcp://127.0.0.1:0")
    p.add_argument("--node-id", default="central")
    p = sub.add_parser("client")
    p.add_argument("--connect", required=True)
    p.add_argument("--id", default="CP1")
    p.add_argument("--keepalive-ms", type=int, default=200)
    p = sub.add_parser("pty-server")
    p.add_argument("--node-id", default="device")
    args = parser.parse_args(argv)
    try:
        if args.mode == "server":
            asyncio.run(run_server(args))
        elif args.mode == "client":
            return asyncio.run(run_client(args))
        else:
            asyncio.run(run_pty_server(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
