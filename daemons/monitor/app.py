"""The monitor's work: its two links (Central, the engine) and the health it reports.

Two links, each kept up by its own reconnect loop with backoff:

- to Central: Hello(role MONITOR, CP id, location, price) registers or authenticates
  the CP; its keepalive is how Central knows the CP is there at all (DISCONNECTED
  otherwise). In release 2 (the default) the link is TLS and the monitor proves the
  CP's registry credential (evproto.auth); Central answers with the CP's record key,
  which the monitor hands to its engine (CpKey) so it can seal what it reports. The
  monitor reports the engine's health: FaultReport on a fault, RecoveryReport when
  it clears, HealthStatus right after (re)connecting.
- to the engine: Hello names the CP; a HealthCheck every second. A KO answer, no
  answer in time, or the link dropping is a fault.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass

from evproto import (
    AuthChallenge,
    AuthProof,
    AuthResult,
    CpKey,
    DownReason,
    FaultCode,
    FaultReport,
    HealthCheck,
    HealthState,
    HealthStatus,
    Hello,
    LinkConfig,
    LinkDownError,
    LinkRejectedError,
    MessageReceived,
    ReasonCode,
    RecoveryReport,
    RequestReceived,
    RequestTimeoutError,
    Role,
    TransportError,
    __version__,
    auth,
)
from evproto.aio import Link, open_link
from evproto.backoff import Backoff
from evproto.endpoint import parse_endpoint
from evproto.errors import EvprotoError

from ..common import EXIT_USAGE
from ..credentials_file import CpCredentials
from ..files import write_ready_file

#: How long Central has to challenge and answer once the link is open.
AUTH_TIMEOUT_S = 15.0


class CentralRefused(EvprotoError):
    """Central refused the credentials (or could not prove it is Central)."""

    def __init__(self, code: ReasonCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


__all__ = ["Monitor", "Health", "CentralRefused"]

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
        credentials: CpCredentials | None = None,
    ) -> None:
        self.cp_id = cp_id
        #: Release 2: prove these to Central (None: release 1, Central does not ask).
        self.auth = auth.ClientSession(cp_id, credentials.secret) if credentials is not None else None
        #: The record key Central granted (key id, key, Central's verify key), for the engine.
        self.cp_key: CpKey | None = None
        self.central_addr = central
        self.engine_addr = engine
        #: What logs name: the addresses without their certificate options.
        self.central_name, self.engine_name = _address_only(central), _address_only(engine)
        self.interval_s = interval_s
        self.config = config or LinkConfig()
        self.ready_file = ready_file
        software = f"evproto/{__version__}"
        self.hello_central = Hello(
            role=Role.MONITOR,
            node_id=cp_id,
            keepalive_ms=keepalive_ms,
            location=location,
            price_eur_kwh=price,
            software=software,
        )
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
            hello = self.hello_central
            if self.auth is not None:
                hello = dataclasses.replace(hello, credentials=self.auth.start())
            try:
                link = await open_link(self.central_addr, hello=hello, config=self.config)
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
                    log.warning("cannot reach Central at %s (%s); retrying", self.central_name, exc)
                    reported_down = True
                await asyncio.sleep(delay)
                continue
            try:
                if self.auth is not None:
                    await self._authenticate(link)
            except CentralRefused as exc:
                await link.close()
                if exc.code in (ReasonCode.DUPLICATE_ID, ReasonCode.BUSY):
                    log.warning("Central refused %s: %s (retrying)", self.cp_id, exc.detail)
                    await asyncio.sleep(backoff.next_delay())
                    continue
                log.error("Central refused %s: %s", self.cp_id, exc.detail)
                self.rejected = LinkRejectedError(DownReason.REJECTED, exc.detail, code=exc.code)
                return
            except (auth.AuthError, LinkDownError, RequestTimeoutError, asyncio.TimeoutError) as exc:
                # A Central that cannot prove it holds our credential is not ours: never hand
                # our engine a key from it. Try again later (it may be a restart in progress).
                log.error("authentication with Central failed: %s; retrying", exc)
                await link.close()
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            reported_down = False
            self.central = link
            self.confirmed.set()
            log.info(
                "connected to Central %s as %s%s",
                link.peer_id,
                self.cp_id,
                " (authenticated)" if self.auth is not None else "",
            )
            try:
                h = self.health
                if h is not None:
                    await link.send(HealthStatus(state=HealthState.OK if h.ok else HealthState.KO, fault=h.fault))
                async for event in link.messages:
                    msg = event.message if isinstance(event, MessageReceived) else None
                    if isinstance(msg, AuthResult) and msg.code is not ReasonCode.OK:
                        # Central revoked our key: the engine must stop using it at once.
                        log.warning("Central: %s", msg.detail or msg.code.name)
                        await self._hand_key(CpKey())
            except LinkDownError as exc:
                log.warning("lost Central: %s", exc.reason.value if not exc.clean else "Central signed off")
            finally:
                self.central = None
                await link.close()

    async def _authenticate(self, link: Link) -> None:
        """Answer Central's challenge, check its signature and take the record key."""
        assert self.auth is not None
        async with asyncio.timeout(AUTH_TIMEOUT_S):
            async for event in link.messages:
                msg = event.message
                if isinstance(event, RequestReceived) and isinstance(msg, AuthChallenge):
                    challenge = auth.Challenge(
                        salt=msg.salt, log2_n=msg.log2_n, r=msg.r, p=msg.p, server_nonce=msg.server_nonce
                    )
                    proof = await asyncio.to_thread(self.auth.answer, challenge)  # scrypt: off the loop
                    await link.respond(event, AuthProof(proof=proof))
                elif isinstance(msg, AuthResult):
                    if msg.code is not ReasonCode.OK:
                        raise CentralRefused(msg.code, msg.detail or msg.code.name)
                    key = self.auth.finish(
                        msg.signature, key_id=msg.key_id, wrapped_key=msg.wrapped_key, verify_key=msg.verify_key
                    )
                    if key is None:
                        raise auth.AuthError("Central sent no record key")
                    log.info("authenticated; record key %s", msg.key_id)
                    await self._hand_key(CpKey(key_id=msg.key_id, key=key, verify_key=msg.verify_key))
                    return
        raise LinkDownError(DownReason.PEER_CLOSED, "Central closed the link during authentication")

    async def _hand_key(self, key: CpKey) -> None:
        """Keep the key for the engine and give it to the engine now if its link is up."""
        self.cp_key = key
        engine = self.engine
        if engine is not None and engine.is_open:
            try:
                await engine.send(key)
            except Exception as exc:  # the engine loop handles the link's death; it gets the key on reconnect
                log.debug("key not handed to the engine: %s", exc)

    async def _send_status(self, health: Health) -> None:
        link = self.central
        if link is None or not link.is_open:
            return
        try:
            await link.send(
                HealthStatus(state=HealthState.OK if health.ok else HealthState.KO, fault=health.fault), wait=False
            )
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
            log.info("connected to engine at %s", self.engine_name)
            if self.cp_key is not None:
                try:
                    await link.send(self.cp_key)
                except LinkDownError:
                    pass  # the wait below ends at once and the loop reconnects
            try:
                await link.wait_closed()
            finally:
                self.engine = None
                await link.close()
                down = link.down_event
                await self._set_health(
                    Health(
                        False, FaultCode.ENGINE_SILENT, f"engine link lost ({down.reason.value if down else 'closed'})"
                    )
                )

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
                    await self._set_health(
                        Health(False, FaultCode.ENGINE_SILENT, "engine did not answer the health check")
                    )
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


def _address_only(address: str) -> str:
    try:
        return parse_endpoint(address).address
    except TransportError:
        return address
