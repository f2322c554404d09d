"""Central's side of the monitors' links: hello, authentication, health reports, revocation.

A part of :class:`~.app.Central` (its state is set up there).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from evproto import (
    Hello,
    LinkDownError,
    MessageReceived,
    ReasonCode,
    Reject,
    Role,
)
from evproto.aio import Link
from evproto.bus.seal import SealError
from evproto.domain.central import (
    HealthReport,
    RevokeUnavailable,
    UnknownCpError,
)

from ..common import now_ms

__all__ = ["MonitorLinks"]

log = logging.getLogger("evproto.central")


class MonitorLinks:
    """Accepts monitors, authenticates them and applies what they report."""

    def _on_hello(self, hello: Hello, link: Link) -> Reject | None:
        source = link.peer_address
        if hello.role is not Role.MONITOR:
            return Reject(code=ReasonCode.ROLE_NOT_ALLOWED, detail="only monitors connect to Central's socket")
        if hello.node_id in self.links:
            if self.sec is not None:
                self.sec.audit.record(
                    actor=f"cp:{hello.node_id[:64]}",
                    source=source or "local",
                    action="auth",
                    obj=f"cp:{hello.node_id[:64]}",
                    outcome="refused",
                    coalesce=f"dup:{source}",
                    reason="already connected",
                )
            return Reject(code=ReasonCode.DUPLICATE_ID, detail=f"{hello.node_id} is already connected")
        if self.sec is not None:
            # Nothing is registered, changed or reserved before the monitor proves who it is.
            reject = self.sec.check_hello(hello, source)
            if reject is not None:
                self.counters["hellos_refused"] += 1
            return reject
        return self._register_hello(hello, source)

    def _register_hello(self, hello: Hello, source: str) -> Reject | None:
        reject, fx = self.core.hello(hello.node_id, hello.location, hello.price_eur_kwh, now_ms(), source=source)
        self._apply(fx)
        if reject is not None:
            self.counters["hellos_refused"] += 1
            self._note(
                f"refused monitor {ascii(hello.node_id[:64])} from {source or 'a local link'}: {reject.detail}",
                "warning",
                key=f"refused:{source}:{reject.code.name}",
            )
        return reject

    async def _authenticate(self, link: Link) -> bool:
        """Release 2: the monitor proves its CP's credential; then (and only then) the CP
        is registered or updated from its Hello and gets a fresh record key."""
        assert self.sec is not None and link.peer_hello is not None
        proved = await self.sec.authenticate(link)
        if proved is None:
            self.counters["auth_refused"] += 1
            return False
        hello = link.peer_hello
        if hello.node_id in self.links:  # another link proved the same CP first
            await self.sec.refuse(link, ReasonCode.DUPLICATE_ID, f"{hello.node_id} is already connected")
            return False
        reject = self._register_hello(hello, link.peer_address)
        if reject is not None:
            await self.sec.refuse(link, reject.code, reject.detail)
            return False
        self.links[hello.node_id] = link  # before the next await: a second link for this id is refused
        try:
            await self.sec.grant(link, proved)
        except LinkDownError:
            del self.links[hello.node_id]
            return False
        self.counters["auth_ok"] += 1
        return True

    async def _session(self, link: Link) -> None:
        assert link.peer_hello is not None
        cp_id = link.peer_hello.node_id
        if self.sec is not None:
            if not await self._authenticate(link):
                return
        else:
            self.links[cp_id] = link  # before any await: a second hello for this id is refused
        self._apply(self.core.monitor_connected(cp_id, now_ms()))
        clean, detail = False, ""
        try:
            async for event in link.messages:
                if not isinstance(event, MessageReceived):
                    continue
                msg = event.message
                now = now_ms()
                report = HealthReport.of(msg)
                if report is not None:
                    self._apply(self.core.engine_health(cp_id, report, now))
        except LinkDownError as exc:
            clean, detail = exc.clean, exc.reason.value
        finally:
            if self.links.get(cp_id) is link:
                del self.links[cp_id]
            if not self._closing:  # on our own shutdown the CPs are not "lost"
                self._apply(self.core.monitor_lost(cp_id, clean, detail, now_ms()))

    def _refused(self, record: Any, exc: SealError) -> None:
        """A record refused for its envelope: audited (a line per topic, reason and second)."""
        if self.sec is None:
            return
        self.sec.audit.record(
            actor=f"key:{exc.detail[:64]}" if exc.detail else "unknown",
            source=f"kafka:{record.topic.value}",
            action="record",
            obj=f"key:{record.key}"[:80],
            outcome="refused",
            coalesce=f"record:{record.topic.value}:{exc.why.name}",
            reason=str(exc)[:200],
            partition=record.partition,
            offset=record.offset,
        )

    def revoke(self, cp_id: str, *, actor: str, source: str) -> None:
        """Revoke ``cp_id``'s keys: its records are refused from now on, its supply in
        progress ends ("key_revoked"), its monitor's link is closed and it shows as not
        authenticated until the monitor authenticates again. UnknownCpError."""
        if cp_id not in self.core.cps:
            raise UnknownCpError(cp_id)
        if self.sec is None:
            raise RevokeUnavailable("this Central runs --insecure: there are no keys to revoke")
        self.sec.revoke(cp_id, actor=actor, source=source)
        self._apply(self.core.revoked(cp_id, now_ms()))
        link = self.links.pop(cp_id, None)
        if link is not None:

            async def tell_and_close(link: Link = link) -> None:
                await self.sec.refuse(link, ReasonCode.BAD_CREDENTIALS, "key revoked: authenticate again")  # type: ignore[union-attr]
                await link.close()

            asyncio.ensure_future(tell_and_close())
