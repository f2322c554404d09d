"""Central's decisions, pure: who may charge where, session bookkeeping, tickets.

Every input is a method call with the time passed in (epoch ms); each returns
effects for the daemon to carry out, in order: :class:`Publish` a Kafka event,
:class:`SaveCp` / :class:`SaveSession` to the database, :class:`Note` a line for
the messages pane. Durable publishes go through the database outbox in the same
transaction as the saves, so a crash can neither lose nor invent a ticket.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

from evproto.bus.topics import Topic
from evproto.domain.central.view import CpView, SessionView
from evproto.domain.events import CpStateRecord
from evproto.domain.session import SessionStatus
from evproto.messages import CpState

from .effects import Effect, Note, Publish
from .limits import KeyedLimiter
from .records import CP_VIEW_FACTS, SESSION_VIEW_FACTS, CpRecord, Rules, SessionHistory, SessionRecord
from .registry import RegistryRules
from .sessions import SessionRules

__all__ = ["CentralCore"]


class CentralCore(RegistryRules, SessionRules):
    """Central's state and decisions; see the module docstring."""

    def __init__(
        self,
        *,
        cps: list[CpRecord] = (),  # type: ignore[assignment]
        drivers: set[str] = frozenset(),  # type: ignore[assignment]
        sessions: list[SessionRecord] = (),  # type: ignore[assignment]
        next_session_id: int = 1,
        rules: Rules = Rules(),
        history: SessionHistory | None = None,
    ) -> None:
        self.rules = rules
        self.history = history
        per_s = rules.registrations_per_min / 60
        self._registrations = KeyedLimiter(
            capacity=max(1.0, rules.registrations_per_min),
            rate_per_s=per_s,
            total_capacity=max(1.0, 5 * rules.registrations_per_min),
            total_rate_per_s=5 * per_s,
        )
        #: Records recognised as repeats and changing nothing, by kind (status counters).
        self.ignored: collections.Counter[str] = collections.Counter()
        #: Live sessions whose driver was told of a fault at their CP (told once each).
        self._fault_told: set[int] = set()
        #: Restart grace: CPs known when Central started, until when, and the requests
        #: waiting for their monitors (CP id -> session id; the CP is not asked yet).
        self._known_at_start: set[str] = {c.id for c in cps}
        #: CPs an operator removed while Central runs: their monitors may not re-register them.
        self._removed: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._grace_until_ms = 0
        self._cp_view_cache: dict[str, tuple[tuple[object, ...], CpView]] = {}
        self._session_view_cache: dict[int, tuple[tuple[object, ...], SessionView]] = {}
        self._held: dict[str, int] = {}
        #: When each live session's CP was asked to authorise (later than the request if held).
        self._asked_ms: dict[int, int] = {}
        self.cps: dict[str, CpRecord] = {c.id: c for c in cps}
        self.drivers: set[str] = set(drivers)
        #: Live sessions only (requested, authorized, supplying), by id.
        self.sessions: dict[int, SessionRecord] = {}
        #: Recently ended sessions, oldest first (bounded): a repeated request id or a CP's
        #: late report about one of them must be recognised.
        self.ended: collections.OrderedDict[int, SessionRecord] = collections.OrderedDict()
        self.request_ids: dict[str, int] = {}
        self.next_session_id = max([next_session_id, *(s.id + 1 for s in sessions)])
        self._fx: list[Effect] = []
        for s in sorted(sessions, key=lambda s: s.id):
            self.request_ids[s.request_id] = s.id
            if not s.status.live:
                self._remember(s)
                continue
            self.sessions[s.id] = s
            cp = self.cps.get(s.cp_id)
            if cp is not None:
                cp.session_id = s.id
                cp.driver_id = s.driver_id
                cp.supplying = s.status is SessionStatus.SUPPLYING
                if cp.supplying:
                    cp.energy_kwh, cp.amount_eur, cp.power_kw = s.energy_kwh, s.amount_eur, 0.0

    # -- internals -------------------------------------------------------------------------

    def _take(self) -> list[Effect]:
        fx, self._fx = self._fx, []
        return fx

    def _note(self, text: str, level: str = "info", key: str | None = None) -> None:
        self._fx.append(Note(text, level, key))

    def _state_changed(self, cp: CpRecord, before: CpState, now_ms: int) -> None:
        if cp.state is not before:
            self._fx.append(self._state_record(cp, now_ms))

    def state_records(self, now_ms: int) -> list[Effect]:
        """A CpStateRecord for every CP (published at start-up)."""
        return [self._state_record(cp, now_ms) for cp in self.cps.values()]

    @staticmethod
    def _state_record(cp: CpRecord, now_ms: int) -> Publish:
        """The CP's state for the compacted cp-state topic (best effort: the next one replaces it)."""
        record = CpStateRecord(
            cp_id=cp.id,
            location=cp.location,
            price_eur_kwh=cp.price_eur_kwh,
            state=cp.state.name,
            driver_id=cp.driver_id or "",
            ts_ms=now_ms,
        )
        return Publish(Topic.CP_STATE, cp.id, record, durable=False)

    # -- views -----------------------------------------------------------------------------

    # The console's stream and the API look at every CP several times a second: a view is
    # built again only when its facts changed, and an unchanged one is the same object.

    def cp_views(self) -> list[CpView]:
        return _cached_views(sorted(self.cps.values(), key=lambda c: c.id), self._cp_view_cache, CP_VIEW_FACTS)

    def live_session_views(self) -> list[SessionView]:
        return _cached_views(
            sorted(self.sessions.values(), key=lambda s: s.id), self._session_view_cache, SESSION_VIEW_FACTS
        )


def _cached_views(records: list[Any], cache: dict[Any, tuple[Any, Any]], facts: Callable[[Any], Any]) -> list[Any]:
    """Each record's view, built again only when ``facts(record)`` changed; ``cache`` (by id)
    keeps the facts and view of each and forgets records that are gone."""
    out = []
    for record in records:
        now = facts(record)
        hit = cache.get(record.id)
        if hit is None or hit[0] != now:
            hit = cache[record.id] = (now, record.view())
        out.append(hit[1])
    if len(cache) > len(records):
        for gone in cache.keys() - {r.id for r in records}:
            del cache[gone]
    return out
