"""Central's views and operator commands: the panel, the console, STOP/RESUME, audit.

A part of :class:`~.app.Central` (its state is set up there).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from evproto.domain.central import (
    RevokeUnavailable,
    UnknownCpError,
)
from evproto.domain.central.view import CentralView, SessionView

from ..common import now_ms, stdin_lines
from ..runtime import GC_PAUSES
from ..stats import nearest_rank

__all__ = ["OperatorConsole"]

log = logging.getLogger("evproto.central")


class OperatorConsole:
    """What Central shows, and the commands an operator gives it."""

    def view(self, *, counters: bool = True) -> CentralView:
        """The snapshot; ``counters=False`` leaves out the counters (the console's stream looks
        twice a second and shows none of them; they cost two percentiles and a database count)."""
        return CentralView(
            cps=tuple(self.core.cp_views()),
            requests=tuple(self.core.live_session_views()),
            messages=tuple(self.messages),
            central_id=self.instance_id,
            listen=self.listen_addr,
            http=self.http_addr,
            kafka=self.opts.kafka.bootstrap,
            kafka_ok=self.kafka_ok,
            now_ts_ms=now_ms(),
            counters=(
                {}
                if not counters
                else {
                    **self.counters,
                    **GC_PAUSES.counters(),
                    **self._freshness(),
                    **{f"ignored_{k}": v for k, v in self.core.ignored.items()},
                    "dead_letters": self.store.dead_letter_count(),
                }
            ),
        )

    def _freshness(self) -> dict[str, int]:
        """How old the readings were when Central took them in, over the latest ones.

        Engine clocks are trusted (NTP): a reading stamped in the future counts as 0 ms.
        """
        if not self._ages:
            return {}
        return {
            "telemetry_age_p50_ms": max(0, int(nearest_rank(self._ages, 50))),
            "telemetry_age_p99_ms": max(0, int(nearest_rank(self._ages, 99))),
        }

    def sessions(self, **query: Any) -> list[SessionView]:
        return self.store.sessions(**query)

    def admin(self, stop: bool, cp_id: str | None, *, actor: str = "console", source: str = "local") -> list[str]:
        """STOP or RESUME one CP (None: all), audited with who asked and from where."""
        fn = self.core.stop if stop else self.core.resume
        try:
            ids, fx = fn(cp_id, now_ms())
        except UnknownCpError:
            self._audit(actor, source, "stop" if stop else "resume", f"cp:{cp_id}", "refused", reason="unknown CP")
            raise
        self._apply(fx)
        self._audit(actor, source, "stop" if stop else "resume", f"cp:{cp_id or 'all'}", "ok")
        return ids

    def _audit(self, actor: str, source: str, action: str, obj: str, outcome: str, **details: Any) -> None:
        if self.sec is not None:
            self.sec.audit.record(actor=actor, source=source, action=action, obj=obj[:80], outcome=outcome, **details)

    def console_command(self, action: str, target: str | None, *, actor: str) -> str:
        """A command typed at Central's own console (panel or stdin); the answer to show."""
        try:
            if action == "revoke":
                assert target is not None
                self.revoke(target, actor=actor, source="local")
                return f"{target}: keys revoked; it must authenticate again"
            ids = self.admin(action == "stop", target, actor=actor)
        except UnknownCpError:
            return f"unknown charge point {target!r}"
        except RevokeUnavailable as exc:
            return str(exc)
        return f"{action.upper()} sent to {', '.join(ids) or 'no charge point'}"

    async def _stdin_commands(self) -> None:
        """Without the panel, the same commands are read one per line from stdin (scriptable)."""
        from .panel import parse_command

        async for line in stdin_lines():
            try:
                cmd = parse_command(line)
            except ValueError as exc:
                log.warning("%s", exc)
                continue
            if cmd is None:
                continue
            if cmd.action == "quit":
                assert self._stop is not None
                self._stop.set()
                return
            if cmd.action == "help":
                log.info("commands: s CP|all stop · r CP|all resume · v CP revoke its key · q quit")
                continue
            log.info("%s", self.console_command(cmd.action, cmd.target, actor="console:stdin"))
        await asyncio.Event().wait()  # stdin closed: keep running

    async def _panel(self) -> None:
        from .panel import Command
        from .terminal import run_panel

        async def on_command(cmd: Command) -> str:
            if cmd.action == "quit":
                assert self._stop is not None
                self._stop.set()
                return "bye"
            if cmd.action == "help":
                return "s CP|all: stop · r CP|all: resume · v CP: revoke its key · q: quit"
            return self.console_command(cmd.action, cmd.target, actor="console:panel")

        await run_panel(self.view, on_command)
        assert self._stop is not None
        self._stop.set()
