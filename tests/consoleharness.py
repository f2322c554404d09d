"""Central's HTTP application over a real :class:`CentralCore`, in process, for the web console's tests.

No Kafka and no SQLite: the core's decisions are real (a STOP makes the CP STOPPED, a RESUME
ACTIVATED), its notes become the messages pane, and the server is the real ``start_http``
(tokens, sessions, audit log) on 127.0.0.1, port 0.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evproto.daemons.auditlog import AuditLog, read_entries
from evproto.daemons.central.http_api import start_http, stop_http
from evproto.daemons.tokens import TokenRole, TokenStore
from evproto.domain.central import CentralCore, Note
from evproto.domain.central.view import CentralView, MessageView, SessionView
from evproto.domain.events import AuthorizationAnswer, SupplyFinished, SupplyProgress, SupplyRequest, SupplyStarted


def now_ms() -> int:
    return int(time.time() * 1000)


class CoreBackend:
    """The HTTP backend of Central's API over a real core (see the module docstring)."""

    def __init__(self, cps: list[tuple[str, str, float]], *, audit: AuditLog | None = None) -> None:
        self.core = CentralCore()
        self.messages: collections.deque[MessageView] = collections.deque(maxlen=300)
        self.audit = audit
        for cp_id, location, price in cps:
            self.core.add_cp(cp_id, location, price)
            self._take(self.core.monitor_connected(cp_id, now_ms()))

    def _take(self, effects: list[Any]) -> None:
        for fx in effects:
            if isinstance(fx, Note):
                self.messages.append(MessageView(ts_ms=now_ms(), level=fx.level, text=fx.text))

    def supply(self, cp_id: str, driver_id: str, *, energy_kwh: float = 1.5, power_kw: float = 7.2) -> int:
        """A driver's supply at ``cp_id`` taken through the core as Central takes it from Kafka:
        request, the CP's yes, start and one reading. Its session id."""
        t = now_ms()
        self.core.register_driver(driver_id)
        request = SupplyRequest(request_id=f"r-{cp_id}-{t}", driver_id=driver_id, cp_id=cp_id, ts_ms=t)
        self._take(self.core.on_event(request, t))
        session_id = self.core.cps[cp_id].session_id
        assert session_id is not None, f"{cp_id} was not asked to authorise"
        answer = AuthorizationAnswer(cp_id=cp_id, session_id=session_id, accepted=True, ts_ms=t)
        self._take(self.core.on_event(answer, t))
        self._take(
            self.core.on_event(
                SupplyStarted(cp_id=cp_id, session_id=session_id, driver_id=driver_id, started_ts_ms=t, ts_ms=t), t
            )
        )
        self.progress(cp_id, energy_kwh=energy_kwh, power_kw=power_kw)
        return session_id

    def progress(self, cp_id: str, *, energy_kwh: float, power_kw: float = 7.2) -> None:
        """A reading of the supply in progress at ``cp_id``."""
        cp, t = self.core.cps[cp_id], now_ms()
        assert cp.session_id is not None and cp.driver_id is not None
        reading = SupplyProgress(
            cp_id=cp_id,
            session_id=cp.session_id,
            driver_id=cp.driver_id,
            energy_kwh=energy_kwh,
            amount_eur=round(energy_kwh * cp.price_eur_kwh, 2),
            power_kw=power_kw,
            elapsed_s=1,
            ts_ms=t,
        )
        self._take(self.core.on_event(reading, t))

    def finish(self, cp_id: str, *, energy_kwh: float) -> None:
        """The supply at ``cp_id`` ends normally: a ticket."""
        cp, t = self.core.cps[cp_id], now_ms()
        assert cp.session_id is not None and cp.driver_id is not None
        session = self.core.sessions[cp.session_id]
        finished = SupplyFinished(
            cp_id=cp_id,
            session_id=cp.session_id,
            driver_id=cp.driver_id,
            energy_kwh=energy_kwh,
            amount_eur=round(energy_kwh * cp.price_eur_kwh, 2),
            price_eur_kwh=cp.price_eur_kwh,
            started_ts_ms=session.started_ts_ms or t,
            ended_ts_ms=t,
            reason="completed",
            ts_ms=t,
        )
        self._take(self.core.on_event(finished, t))

    def view(self) -> CentralView:
        return CentralView(
            cps=tuple(self.core.cp_views()),
            requests=tuple(self.core.live_session_views()),
            messages=tuple(self.messages),
            central_id="test-central",
            now_ts_ms=now_ms(),
        )

    live_view = view

    def sessions(self, *, limit: int = 500, **query: Any) -> list[SessionView]:
        return [s.view() for s in reversed(self.core.ended.values())][:limit]

    def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        return []

    def drivers(self) -> list[str]:
        return sorted(self.core.drivers)

    async def remove_cp(self, cp_id: str) -> None:
        self._take(self.core.remove_cp(cp_id))

    async def remove_driver(self, driver_id: str) -> None:
        self._take(self.core.remove_driver(driver_id))

    async def stop(self, cp_id: str | None, *, actor: str, source: str) -> list[str]:
        ids, fx = self.core.stop(cp_id, now_ms())
        self._take(fx)
        return ids

    async def resume(self, cp_id: str | None, *, actor: str, source: str) -> list[str]:
        ids, fx = self.core.resume(cp_id, now_ms())
        self._take(fx)
        return ids

    async def revoke(self, cp_id: str, *, actor: str, source: str) -> None:
        self._take(self.core.revoked(cp_id, now_ms()))

    def audit_entries(self, limit: int) -> list[dict[str, Any]]:
        return read_entries(self.audit.path, limit=limit) if self.audit is not None else []


@dataclass
class ConsoleServer:
    """A running Central-shaped HTTP server and what a test needs from it."""

    url: str
    backend: CoreBackend
    tokens: TokenStore | None
    audit: AuditLog | None
    runner: Any

    def token(self, role: TokenRole, name: str | None = None) -> str:
        assert self.tokens is not None, "an --insecure server has no tokens"
        return self.tokens.create(role, name or role.value)[0]

    async def close(self) -> None:
        await stop_http(self.runner)
        if self.tokens is not None:
            self.tokens.close()


async def start_console(
    tmp_path: Path,
    cps: list[tuple[str, str, float]],
    *,
    secure: bool = True,
    tls: Any = None,
    host: str = "127.0.0.1",
) -> ConsoleServer:
    """Serve Central's API and console over a :class:`CoreBackend` holding ``cps``."""
    audit = AuditLog(str(tmp_path / "audit.jsonl")) if secure else None
    tokens = TokenStore(str(tmp_path / "tokens.db")) if secure else None
    backend = CoreBackend(cps, audit=audit)
    runner, port = await start_http(backend, host, 0, tls=tls, tokens=tokens, audit=audit)
    scheme = "https" if tls is not None else "http"
    return ConsoleServer(f"{scheme}://{host}:{port}", backend, tokens, audit, runner)
