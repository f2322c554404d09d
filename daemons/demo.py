"""A guided protocol demo on loopback: a monitor and an engine talking evproto.

Runs two real endpoints over TCP on 127.0.0.1, with a small proxy between them
that can damage a byte or swallow everything (a pulled cable), and narrates
what the link does: handshake, health checks, telemetry, NACK and resend, a
fault, dead-peer detection by keepalive, reconnect with backoff, and a clean
goodbye. No external services. ``make demo`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from evproto import (
    FaultCode,
    HealthCheck,
    HealthState,
    HealthStatus,
    Hello,
    LinkConfig,
    LinkDownError,
    MessageReceived,
    RequestReceived,
    Role,
    SupplyTelemetry,
    TransportError,
    aio,
)
from evproto import __version__ as version
from evproto.backoff import Backoff

_T0 = time.monotonic()
_COLOURS = {"monitor": "36", "engine": "33", "proxy": "35", "demo": "1"}
_TTY = sys.stdout.isatty()


def say(who: str, text: str) -> None:
    stamp = f"{time.monotonic() - _T0:6.2f}s"
    tag = f"{who:>7}"
    if _TTY:
        tag = f"\033[{_COLOURS.get(who, '0')}m{tag}\033[0m"
    print(f"{stamp} {tag}  {text}", flush=True)


class Proxy:
    """A TCP relay that can corrupt the next frame or drop everything (cable pulled)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.corrupt_next = False
        self.cable_pulled = False
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _client(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            sreader, swriter = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cwriter.close()
            return
        await asyncio.gather(
            self._pipe(creader, swriter, True), self._pipe(sreader, cwriter, False), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool) -> None:
        try:
            while data := await reader.read(4096):
                if self.cable_pulled:
                    continue  # bytes vanish: no FIN, no RST
                if upstream and self.corrupt_next and data[:1] == b"\x02" and len(data) > 8:
                    self.corrupt_next = False
                    data = data[:6] + bytes([data[6] ^ 0x40]) + data[7:]
                    say("proxy", "damaged one byte of the monitor's next frame")
                writer.write(data)
        finally:
            if not self.cable_pulled:  # a pulled cable carries no FIN either
                writer.close()


class Engine:
    """The server end: answers health checks, reports supply telemetry, can be made KO."""

    def __init__(self) -> None:
        self.ko = False
        self.energy_wh = 0.0

    async def handler(self, link: aio.Link) -> None:
        say("engine", f"monitor {link.peer_id!r} connected (keepalive {link.conn.keepalive_s:g} s)")
        try:
            async for event in link.messages:
                if isinstance(event, RequestReceived) and isinstance(event.message, HealthCheck):
                    state = HealthState.KO if self.ko else HealthState.OK
                    fault = FaultCode.SIMULATED if self.ko else FaultCode.NONE
                    await link.respond(event, HealthStatus(state=state, fault=fault))
                elif isinstance(event, MessageReceived):
                    say("engine", f"received {event.message!r}")
        except LinkDownError as exc:
            say("engine", f"link lost: {exc.reason.value} ({'clean goodbye' if exc.clean else 'no goodbye'})")
            raise
        finally:
            s = link.conn.stats
            say(
                "engine",
                f"stats: {s.frames_received} frames in, {s.nacks_sent} NACK sent, {s.duplicates} duplicate(s) dropped",
            )


async def monitor_session(url: str, proxy: Proxy, engine: Engine, config: LinkConfig, quick: bool) -> None:
    hello = Hello(
        role=Role.MONITOR,
        node_id="CP001",
        keepalive_ms=1000,
        location="Alicante",
        price_eur_kwh=0.35,
        software=f"evproto-demo/{version}",
    )
    pace = 0.3 if quick else 1.0
    async with aio.connect(url, hello=hello, config=config) as link:
        say("monitor", f"connected to {link.peer_id!r}: ENQ/ACK, Hello, Accept done")
        for _ in range(3):
            status = await link.request(HealthCheck(), timeout_s=1.0)
            say("monitor", f"health check -> {status.state.name}")
            await asyncio.sleep(pace)

        say("demo", "the engine supplies a vehicle; the monitor forwards telemetry (acknowledged delivery)")
        for i in range(1, 4):
            engine.energy_wh += 7400 / 3600 * pace
            await link.send(
                SupplyTelemetry(
                    session_id=42,
                    energy_wh=round(engine.energy_wh, 2),
                    power_w=7400.0,
                    amount_eur=round(engine.energy_wh / 1000 * 0.35, 4),
                    elapsed_s=i * pace,
                )
            )
            say("monitor", f"telemetry {i} delivered (ACKed)")
            await asyncio.sleep(pace / 2)

        say("demo", "line noise: one byte of the next frame is damaged on the way")
        proxy.corrupt_next = True
        await link.send(
            SupplyTelemetry(
                session_id=42,
                energy_wh=round(engine.energy_wh, 2),
                power_w=7400.0,
                amount_eur=round(engine.energy_wh / 1000 * 0.35, 4),
                elapsed_s=4 * pace,
            )
        )
        s = link.conn.stats
        say("monitor", f"delivered anyway: {s.nacks_received} NACK received, {s.retransmissions} resend")

        say("demo", "the engine develops a fault (the KO key)")
        engine.ko = True
        status = await link.request(HealthCheck(), timeout_s=1.0)
        say("monitor", f"health check -> {status.state.name} fault={status.fault.name}: would report BROKEN")
        engine.ko = False
        status = await link.request(HealthCheck(), timeout_s=1.0)
        say("monitor", f"health check -> {status.state.name}: fault cleared")

        say("demo", "the cable is pulled: bytes vanish, no FIN, no RST; only keepalive can tell")
        proxy.cable_pulled = True
        t0 = time.monotonic()
        try:
            async for _ in link.messages:
                pass
        except LinkDownError as exc:
            say(
                "monitor",
                f"link down after {time.monotonic() - t0:.1f} s of silence: {exc.reason.value} "
                f"(limit {config.silence_limit_s(link.conn.keepalive_s or 1.0):g} s)",
            )


async def run(quick: bool) -> None:
    say("demo", f"evproto {version} protocol demo on loopback")
    engine = Engine()
    config = LinkConfig()
    server = await aio.serve("tcp://127.0.0.1:0", engine.handler, node_id="engine-CP001", config=config)
    proxy = Proxy(server.port)
    proxy_port = await proxy.start()
    url = f"tcp://127.0.0.1:{proxy_port}"
    say("demo", f"engine listens on {server.url}; monitor reaches it through a proxy at {url}")
    async with server:
        await monitor_session(url, proxy, engine, config, quick)

        say("demo", "the cable is plugged back in; the monitor reconnects with exponential backoff")
        await asyncio.sleep(0.5)
        proxy.cable_pulled = False
        backoff = Backoff(initial_s=0.2, max_s=2.0)
        hello = Hello(role=Role.MONITOR, node_id="CP001", keepalive_ms=1000)
        for attempt in range(1, 10):
            try:
                async with aio.connect(url, hello=hello, config=config) as link:
                    say("monitor", f"reconnected on attempt {attempt}")
                    status = await link.request(HealthCheck(), timeout_s=1.0)
                    say("monitor", f"health check -> {status.state.name}")
                    say("demo", "orderly goodbye: the monitor sends EOT")
                break
            except (LinkDownError, TransportError) as exc:
                delay = backoff.next_delay()
                say("monitor", f"attempt {attempt} failed ({exc}); retrying in {delay:.2f} s")
                await asyncio.sleep(delay)
        await asyncio.sleep(0.3)
    say("demo", "done. The same link runs over serial lines: serial:///dev/ttyUSB0?baudrate=9600")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evproto.daemons.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter pauses (used by the tests)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(run(args.quick))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
