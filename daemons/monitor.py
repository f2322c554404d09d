"""``evcp-monitor`` / ``EV_CP_M``: registers its charge point with Central and watches its engine.

Two links, each kept up by its own reconnect loop with backoff:

- to Central: Hello(role MONITOR, CP id, location, price) registers or authenticates
  the CP; its keepalive is how Central knows the CP is there at all (DISCONNECTED
  otherwise). The monitor reports the engine's health: FaultReport on a fault,
  RecoveryReport when it clears, HealthStatus right after (re)connecting.
- to the engine: Hello names the CP; a HealthCheck every second. A KO answer, no
  answer in time, or the link dropping is a fault.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass

import click

from evproto import (
    FaultCode,
    FaultReport,
    HealthCheck,
    HealthState,
    HealthStatus,
    Hello,
    LinkConfig,
    LinkDownError,
    LinkRejectedError,
    ReasonCode,
    RecoveryReport,
    RequestTimeoutError,
    Role,
    TransportError,
    __version__,
)
from evproto.aio import Link, open_link
from evproto.backoff import Backoff
from evproto.bus.events import MAX_PRICE_EUR_KWH
from evproto.idents import MAX_ID_LEN, MAX_TEXT_LEN, InvalidTextError, check_id, check_text

from .common import keep_files_private, EXIT_UNAVAILABLE, EXIT_USAGE, setup_logging, shutdown_event, write_ready_file

__all__ = ["Monitor", "main"]

log = logging.getLogger("evproto.monitor")


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    fault: FaultCode = FaultCode.NONE
    detail: str = ""


class Monitor:
    """The monitor of one CP; ``await Monitor(...).run(stop)``."""

    def __init__(
        self,
        *,
        cp_id: str,
        central: str,
        engine: str,
        location: str = "",
        price: float | None = None,
        interval_s: float = 1.0,
        keepalive_ms: int = 1000,
        config: LinkConfig | None = None,
        ready_file: str | None = None,
    ) -> None:
        self.cp_id = cp_id
        self.central_addr = central
        self.engine_addr = engine
        self.interval_s = interval_s
        self.config = config or LinkConfig()
        self.ready_file = ready_file
        software = f"evproto/{__version__}"
        self.hello_central = Hello(role=Role.MONITOR, node_id=cp_id, keepalive_ms=keepalive_ms, location=location,
                                   price_eur_kwh=price, software=software)
        self.hello_engine = Hello(role=Role.MONITOR, node_id=cp_id, keepalive_ms=keepalive_ms, software=software)
        self.central: Link | None = None
        self.engine: Link | None = None
        #: The engine's health as last checked; None until the first check (nothing is reported before).
        self.health: Health | None = None
        self.rejected: LinkRejectedError | None = None
        #: Set once Central has accepted the CP id: only then is the id passed to the engine.
        self.confirmed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> int:
        tasks = [
            asyncio.ensure_future(self._central_loop()),
            asyncio.ensure_future(self._engine_loop()),
            asyncio.ensure_future(self._health_loop()),
        ]
        write_ready_file(self.ready_file, role="monitor", cp_id=self.cp_id)
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stopper, tasks[0]], return_when=asyncio.FIRST_COMPLETED)
        for t in tasks + [stopper]:
            t.cancel()
        await asyncio.gather(*tasks, stopper, return_exceptions=True)
        for link in (self.central, self.engine):
            if link is not None:
                await link.close()
        if self.rejected is not None:
            return EXIT_USAGE
        return 0

    # -- Central ---------------------------------------------------------------------------

    async def _central_loop(self) -> None:
        backoff = Backoff(initial_s=0.5, max_s=5.0)
        reported_down = False
        while True:
            try:
                link = await open_link(self.central_addr, hello=self.hello_central, config=self.config)
            except LinkRejectedError as exc:
                if exc.code in (ReasonCode.DUPLICATE_ID, ReasonCode.BUSY):
                    # Not for good: the old link may not have timed out yet, or Central is
                    # pacing new registrations.
                    log.warning("Central refused %s: %s (retrying)", self.cp_id, exc.detail)
                    await asyncio.sleep(backoff.next_delay())
                    continue
                log.error("Central refused %s: %s", self.cp_id, exc.detail)
                self.rejected = exc
                return
            except (LinkDownError, TransportError) as exc:
                delay = backoff.next_delay()
                if not reported_down:
                    log.warning("cannot reach Central at %s (%s); retrying", self.central_addr, exc)
                    reported_down = True
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            reported_down = False
            self.central = link
            self.confirmed.set()
            log.info("connected to Central %s as %s", link.peer_id, self.cp_id)
            try:
                h = self.health
                if h is not None:
                    await link.send(HealthStatus(state=HealthState.OK if h.ok else HealthState.KO, fault=h.fault))
                async for _event in link.messages:
                    pass  # Central sends nothing the monitor must act on yet
            except LinkDownError as exc:
                log.warning("lost Central: %s", exc.reason.value if not exc.clean else "Central signed off")
            finally:
                self.central = None
                await link.close()

    async def _send_status(self, health: Health) -> None:
        link = self.central
        if link is None or not link.is_open:
            return
        try:
            await link.send(HealthStatus(state=HealthState.OK if health.ok else HealthState.KO, fault=health.fault), wait=False)
        except Exception as exc:  # the Central loop handles the link's death
            log.debug("status not sent: %s", exc)

    async def _report(self, health: Health, previous: Health | None) -> None:
        link = self.central
        if link is None or not link.is_open:
            return
        try:
            if health.ok:
                fault = previous.fault if previous is not None else FaultCode.NONE
                await link.send(RecoveryReport(fault=fault), wait=False)
            else:
                await link.send(FaultReport(fault=health.fault, detail=health.detail[:255]), wait=False)
        except (LinkDownError, Exception) as exc:  # the Central loop handles the link's death
            log.debug("report not sent: %s", exc)

    # -- engine ----------------------------------------------------------------------------

    async def _engine_loop(self) -> None:
        if not self.confirmed.is_set():
            log.info("waiting for Central to confirm %s before connecting to the engine", self.cp_id)
            await self.confirmed.wait()
        backoff = Backoff(initial_s=0.3, max_s=3.0)
        while True:
            try:
                link = await open_link(self.engine_addr, hello=self.hello_engine, config=self.config)
            except LinkRejectedError as exc:
                log.error("engine refused %s: %s", self.cp_id, exc.detail)
                await asyncio.sleep(backoff.next_delay())
                continue
            except (LinkDownError, TransportError) as exc:
                await self._set_health(Health(False, FaultCode.ENGINE_SILENT, f"engine unreachable: {exc}"))
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            self.engine = link
            log.info("connected to engine at %s", self.engine_addr)
            try:
                await link.wait_closed()
            finally:
                self.engine = None
                await link.close()
                down = link.down_event
                await self._set_health(Health(False, FaultCode.ENGINE_SILENT,
                                              f"engine link lost ({down.reason.value if down else 'closed'})"))

    async def _health_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.interval_s
            link = self.engine
            if link is not None and link.is_open:
                try:
                    answer = await link.request(HealthCheck(), timeout_s=self.interval_s * 0.8)
                    if isinstance(answer, HealthStatus) and answer.state is HealthState.OK:
                        await self._set_health(Health(True))
                    else:
                        fault = answer.fault if isinstance(answer, HealthStatus) else FaultCode.ENGINE_KO
                        await self._set_health(Health(False, fault, f"engine answers KO ({fault.name})"))
                except RequestTimeoutError:
                    await self._set_health(Health(False, FaultCode.ENGINE_SILENT, "engine did not answer the health check"))
                except LinkDownError:
                    pass  # the engine loop reports it
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def _set_health(self, health: Health) -> None:
        previous = self.health
        if previous is not None and health.ok == previous.ok and health.fault == previous.fault:
            return
        self.health = health
        if health.ok and previous is None:
            log.info("engine OK")
            if self.central is not None and self.central.is_open:
                await self._send_status(health)
            return
        if health.ok:
            log.info("engine OK again (was %s)", previous.fault.name if previous else "unknown")
        else:
            log.warning("engine fault: %s", health.detail)
        await self._report(health, previous)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--engine", "engine", envvar="EVPROTO_ENGINE", required=True, metavar="HOST:PORT",
              help="Where this CP's engine listens. [env EVPROTO_ENGINE]")
@click.option("--central", envvar="EVPROTO_CENTRAL", required=True, metavar="HOST:PORT",
              help="Central's socket for monitors. [env EVPROTO_CENTRAL]")
@click.option("--id", "cp_id", envvar="EVPROTO_CP_ID", required=True, metavar="CP_ID",
              help=f"The charge point's id: 1-{MAX_ID_LEN} printable characters, no spaces. [env EVPROTO_CP_ID]")
@click.option("--location", envvar="EVPROTO_LOCATION", default="", metavar="TEXT",
              help=f"Where the CP is (needed to register a new CP): printable text, at most {MAX_TEXT_LEN} characters. "
              "[env EVPROTO_LOCATION]")
@click.option("--price", envvar="EVPROTO_PRICE", type=click.FloatRange(min=0, max=MAX_PRICE_EUR_KWH), default=None,
              metavar="EUR", help="Price in EUR/kWh (needed to register a new CP). [env EVPROTO_PRICE]")
@click.option("--interval-s", type=click.FloatRange(min=0.1, max=60), default=1.0, show_default=True,
              help="Seconds between health checks of the engine.")
@click.option("--ready-file", default=None, metavar="PATH", help="Write a JSON file once started.")
@click.option("--log-format", type=click.Choice(["auto", "text", "json"]), default="auto", show_default=True)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@click.version_option(__version__, prog_name="evcp-monitor")
def main(engine: str, central: str, cp_id: str, location: str, price: float | None, interval_s: float,
         ready_file: str | None, log_format: str, log_level: str) -> None:
    """The monitor of a charge point (EV_CP_M).

    Registers the CP with Central (a new id needs --location and --price) or
    authenticates a known one, passes the confirmed id to the engine, checks the
    engine's health every second and reports faults and recoveries to Central.
    Exit status 64 when Central refuses the id for good, or when --id or --location
    could not be registered at all.
    """
    # Checked here, once: an id nobody can type or tell apart must not reach Central.
    try:
        check_id(cp_id, what="--id")
        check_text(location, what="--location")
    except InvalidTextError as exc:
        click.echo(f"evcp-monitor: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    keep_files_private()
    setup_logging(cp_id, level=log_level, fmt=log_format)

    async def run() -> int:
        return await Monitor(cp_id=cp_id, central=central, engine=engine, location=location, price=price,
                             interval_s=interval_s, ready_file=ready_file).run(shutdown_event())

    try:
        sys.exit(asyncio.run(run()))
    except TransportError as exc:
        click.echo(f"evcp-monitor: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)


if __name__ == "__main__":
    main()
