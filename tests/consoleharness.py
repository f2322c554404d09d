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

    def view(self) -> CentralView:
        return CentralView(
            cps=tuple(self.core.cp_views()),
            requests=tuple(self.core.live_session_views()),
            messages=tuple(self.messages),
            central_id="test-central",
            now_ts_ms=now_ms(),
        )

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
