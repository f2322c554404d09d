"""The HTTP API's view of a running Central (the backend http_api.py serves)."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from evproto.domain.central.view import CentralView, SessionView

from ..auditlog import read_entries

if TYPE_CHECKING:
    from .app import Central
    from .events_api import EventsSource

__all__ = ["HttpBackend"]

log = logging.getLogger("evproto.central")


class HttpBackend:
    """The HTTP API's view of Central."""

    def __init__(self, central: Central) -> None:
        self.central = central
        self._events_source: EventsSource | None = None

    def view(self) -> CentralView:
        return self.central.view()

    def live_view(self) -> CentralView:
        return self.central.view(counters=False)

    def sessions(
        self, *, status: str | None = None, cp_id: str | None = None, driver_id: str | None = None, limit: int = 500
    ) -> list[SessionView]:
        return self.central.sessions(status=status, cp_id=cp_id, driver_id=driver_id, limit=limit)

    def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        return self.central.store.dead_letters(limit)

    def drivers(self) -> list[str]:
        return sorted(self.central.core.drivers)

    async def remove_cp(self, cp_id: str) -> None:
        self.central.remove_cp(cp_id)

    async def remove_driver(self, driver_id: str) -> None:
        self.central.remove_driver(driver_id)

    async def stop(self, cp_id: str | None, *, actor: str = "anonymous", source: str = "") -> list[str]:
        return self._admin(True, cp_id, actor, source)

    async def resume(self, cp_id: str | None, *, actor: str = "anonymous", source: str = "") -> list[str]:
        return self._admin(False, cp_id, actor, source)

    async def revoke(self, cp_id: str, *, actor: str, source: str) -> None:
        self.central.revoke(cp_id, actor=actor, source=source)

    def audit_entries(self, limit: int) -> list[dict[str, Any]]:
        if self.central.sec is None:
            return []
        return read_entries(self.central.sec.audit.path, limit=limit)

    @property
    def events_source(self) -> EventsSource:
        """For the event inspector (events_api.py): Central's Kafka and, when it seals, its keys
        read from its database on their own connection (the reader runs in a thread)."""
        from ..centraldb import StoredKeys
        from ..gate import PLAIN_POLICY, SECURE_POLICY
        from .events_api import EventsSource

        central = self.central
        if self._events_source is None:
            secure = central.sec is not None
            keys = None
            if secure:
                try:
                    keys = StoredKeys(central.opts.db)
                except OSError as exc:  # the inspector then shows sealed records sealed; Central runs on
                    log.warning("the event inspector cannot read the keys: %s", exc)
            self._events_source = EventsSource(
                settings=dataclasses.replace(central.opts.kafka, client_id="central-inspector"),
                keys=keys,
                policy=SECURE_POLICY if secure else PLAIN_POLICY,
            )
        return self._events_source

    async def weather(self, location: str, celsius: float | None, *, actor: str, source: str) -> list[str]:
        return self.central.report_weather(location, celsius, actor=actor, source=source)

    def weather_view(self) -> list[dict[str, Any]]:
        return self.central.weather_view()

    def _admin(self, stop: bool, cp_id: str | None, actor: str, source: str) -> list[str]:
        return self.central.admin(stop, cp_id, actor=actor, source=source)
