"""Central's decisions, pure: who may charge where, session bookkeeping, tickets.

Every input is a method call with the time passed in (epoch ms); each returns
effects for the daemon to carry out, in order: :class:`Publish` a Kafka event,
:class:`SaveCp` / :class:`SaveSession` to the database, :class:`Note` a line for
the messages pane. Durable publishes go through the database outbox in the same
transaction as the saves, so a crash can neither lose nor invent a ticket.
"""

from __future__ import annotations

import collections
import copy
import math
from dataclasses import dataclass
from typing import Protocol

from evproto.bus.events import (
    AuthorizationAnswer,
    AuthorizeCommand,
    CancelAuthorization,
    CpStateRecord,
    Event,
    RequestUpdate,
    ResumeCommand,
    StopCommand,
    SupplyFinished,
    SupplyProgress,
    SupplyRequest,
    SupplyStarted,
    DriverTelemetry,
    Ticket,
)
from evproto.bus.topics import Topic
from evproto.domain.cp import CpFacts, cp_state
from evproto.domain.session import SessionInput, SessionStatus, finish_input, step
from evproto.bus.events import MAX_PRICE_EUR_KWH
from evproto.errors import EvprotoError
from evproto.idents import id_problem, text_problem
from evproto.messages import CpState, FaultCode, FaultReport, HealthState, HealthStatus, Message, ReasonCode, RecoveryReport, Reject

from .limits import KeyedLimiter
from .view import CpView, SessionView

__all__ = [
    "Rules",
    "CpRecord",
    "SessionRecord",
    "Publish",
    "SaveCp",
    "SaveSession",
    "Note",
    "Forget",
    "Effect",
    "CentralCore",
    "UnknownCpError",
    "HealthReport",
    "UnknownDriverError",
    "RegistryBusyError",
    "RecordRefused",
    "SessionHistory",
]


class UnknownCpError(EvprotoError, LookupError):
    """An operator named a charge point Central does not know (the HTTP API answers 404)."""

    http_status = 404

    def __init__(self, cp_id: str) -> None:
        super().__init__(f"unknown charge point '{cp_id}'")
        self.cp_id = cp_id


class UnknownDriverError(EvprotoError, LookupError):
    """An operator named a driver Central does not know (the HTTP API answers 404)."""

    http_status = 404

    def __init__(self, driver_id: str) -> None:
        super().__init__(f"unknown driver '{driver_id}'")
        self.driver_id = driver_id


class RegistryBusyError(EvprotoError):
    """A CP or driver cannot be removed now: a supply of theirs is in progress (HTTP 409)."""

    http_status = 409


class RecordRefused(EvprotoError):
    """An event Central cannot apply: it refers to nothing Central knows, or contradicts
    what it knows (another CP's session, another driver's request id).

    Raised by :meth:`CentralCore.on_event` before any state changed; the daemon
    quarantines the record and moves on.
    """


class SessionHistory(Protocol):
    """Sessions older than what the core keeps in memory (Central's database)."""

    def session(self, session_id: int) -> SessionRecord | None:
        """The session with this id, or None."""
        ...

    def session_by_request(self, request_id: str) -> SessionRecord | None:
        """The session a request id created, or None."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Rules:
    """Central's policy knobs."""

    #: Register a CP the first time its monitor says hello with a location and price.
    auto_register_cps: bool = True
    #: Time the CP has to answer an authorisation before the request is denied.
    answer_timeout_s: float = 10.0
    #: Time the driver has to plug in once authorised.
    plug_timeout_s: float = 60.0
    #: Central waits this much longer than the CP before it gives up on an authorisation,
    #: so the CP (which knows whether a vehicle plugged in) decides first, clock skew included.
    expiry_grace_s: float = 15.0
    #: Ended sessions remembered in memory, for duplicate requests and late CP reports.
    remember_ended: int = 5000
    #: New CPs one source address may register per minute (and at once); all sources
    #: together may register five times that. Known CPs reconnecting are never limited.
    registrations_per_min: float = 60.0
    #: Registered CPs at most (each costs memory and a tile): a registration beyond is refused.
    max_cps: int = 100_000
    #: After Central (re)starts, a request for a CP it knew, whose monitor has not
    #: reconnected yet, waits this long for it instead of being denied at once.
    restart_grace_s: float = 15.0


@dataclass(frozen=True, slots=True)
class HealthReport:
    """A monitor's report on its engine, whichever of the three messages carried it."""

    ok: bool
    fault: FaultCode = FaultCode.NONE
    detail: str = ""

    @classmethod
    def of(cls, msg: Message) -> HealthReport | None:
        """The report ``msg`` makes (HealthStatus, FaultReport, RecoveryReport), else None."""
        if isinstance(msg, HealthStatus):
            ok = msg.state is HealthState.OK
            return cls(ok, FaultCode.NONE if ok else msg.fault)
        if isinstance(msg, FaultReport):
            return cls(False, msg.fault, msg.detail)
        if isinstance(msg, RecoveryReport):
            return cls(True)
        return None


@dataclass(slots=True, kw_only=True)
class CpRecord:
    """What Central knows about a CP (persisted: id, location, price, stopped)."""

    id: str
    location: str
    price_eur_kwh: float
    stopped: bool = False
    connected: bool = False
    engine_ok: bool = True
    #: The engine's fault while it is not OK (NONE otherwise).
    fault: FaultCode = FaultCode.NONE
    session_id: int | None = None
    supplying: bool = False
    driver_id: str | None = None
    power_kw: float | None = None
    energy_kwh: float | None = None
    amount_eur: float | None = None
    #: Its keys were revoked and its monitor has not authenticated since.
    revoked: bool = False

    @property
    def state(self) -> CpState:
        return cp_state(
            CpFacts(
                monitor_connected=self.connected,
                engine_ok=self.engine_ok,
                stopped=self.stopped,
                supplying=self.supplying,
            )
        )


@dataclass(slots=True, kw_only=True)
class SessionRecord:
    """A supply session (persisted)."""

    id: int
    cp_id: str
    driver_id: str
    request_id: str
    origin: str
    status: SessionStatus
    requested_ts_ms: int
    price_eur_kwh: float
    deadline_ts_ms: int
    target_energy_kwh: float | None = None
    target_duration_s: float | None = None
    authorized_ts_ms: int | None = None
    started_ts_ms: int | None = None
    ended_ts_ms: int | None = None
    energy_kwh: float = 0.0
    amount_eur: float = 0.0
    end_reason: str | None = None
    #: A ticket was issued (kept in the tickets table, not in the sessions row).
    ticketed: bool = False

    def view(self) -> SessionView:
        return SessionView(
            id=self.id,
            cp_id=self.cp_id,
            driver_id=self.driver_id,
            status=self.status.value,
            requested_ts_ms=self.requested_ts_ms,
            energy_kwh=self.energy_kwh,
            amount_eur=self.amount_eur,
            started_ts_ms=self.started_ts_ms,
            ended_ts_ms=self.ended_ts_ms,
            end_reason=self.end_reason,
        )


# -- effects ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    """Send ``event`` to ``topic`` under ``key``; durable ones go through the outbox."""

    topic: Topic
    key: str
    event: Event
    durable: bool = True


@dataclass(frozen=True, slots=True)
class SaveCp:
    record: CpRecord


@dataclass(frozen=True, slots=True)
class SaveSession:
    record: SessionRecord


@dataclass(frozen=True, slots=True)
class Note:
    """A line for the application-messages pane and the log; lines with the same ``key``
    are rate-limited together (what a flapping CP says)."""

    text: str
    level: str = "info"
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Forget:
    """Delete a CP (``cp_id``) or a driver (``driver_id``) from the registry; a CP's
    ``cp_state`` is deleted too (a tombstone on the compacted topic)."""

    cp_id: str | None = None
    driver_id: str | None = None


Effect = Publish | SaveCp | SaveSession | Note | Forget


class CentralCore:
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
        self._registrations = KeyedLimiter(capacity=max(1.0, rules.registrations_per_min), rate_per_s=per_s,
                                           total_capacity=max(1.0, 5 * rules.registrations_per_min),
                                           total_rate_per_s=5 * per_s)
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

    # -- registry --------------------------------------------------------------------------

    def register_driver(self, driver_id: str) -> bool:
        """Add a driver; False if it was known already."""
        if driver_id in self.drivers:
            return False
        self.drivers.add(driver_id)
        return True

    def carry_over(self, old: CentralCore) -> None:
        """Take from ``old`` what only memory knows, after this core was rebuilt from the
        database: which monitors are connected and their engines' health, live figures,
        the restart grace and held requests, the registration allowance, counters."""
        for cp in self.cps.values():
            prev = old.cps.get(cp.id)
            if prev is None:
                continue
            cp.connected, cp.engine_ok, cp.fault = prev.connected, prev.engine_ok, prev.fault
            if cp.supplying and prev.supplying:
                cp.power_kw, cp.energy_kwh, cp.amount_eur = prev.power_kw, prev.energy_kwh, prev.amount_eur
        self.ignored = old.ignored
        self._registrations = old._registrations
        self._known_at_start = old._known_at_start
        self._removed = old._removed
        self._grace_until_ms = old._grace_until_ms
        self._held = {c: sid for c, sid in old._held.items() if sid in self.sessions}
        self._asked_ms = {sid: t for sid, t in old._asked_ms.items() if sid in self.sessions}
        self._fault_told = {sid for sid in old._fault_told if sid in self.sessions}

    def start(self, now_ms: int) -> list[Effect]:
        """Central is up: open the restart grace. Requests still waiting for a CP's answer
        are held too, and asked again once their CP's monitor is back (an engine answers
        the same authorisation again the same way)."""
        self._fx = []
        self._grace_until_ms = now_ms + int(self.rules.restart_grace_s * 1000)
        for s in self.sessions.values():
            if s.status is SessionStatus.REQUESTED and s.cp_id in self.cps:
                self._held[s.cp_id] = s.id
                s.deadline_ts_ms = max(s.deadline_ts_ms, self._grace_until_ms + int(self.rules.answer_timeout_s * 1000))
        return self._take()

    def remove_driver(self, driver_id: str) -> list[Effect]:
        """Unregister a driver (its past sessions stay). UnknownDriverError when unknown;
        RegistryBusyError while it has a supply in progress."""
        self._fx = []
        if driver_id not in self.drivers:
            raise UnknownDriverError(driver_id)
        live = next((s for s in self.sessions.values() if s.driver_id == driver_id), None)
        if live is not None:
            raise RegistryBusyError(f"driver {driver_id} has a supply {live.status.value} at {live.cp_id}; "
                                    "wait for it to end")
        self.drivers.discard(driver_id)
        self._note(f"driver {driver_id} removed")
        self._fx.append(Forget(driver_id=driver_id))
        return self._take()

    def remove_cp(self, cp_id: str) -> list[Effect]:
        """Unregister a CP (its past sessions stay). UnknownCpError when unknown;
        RegistryBusyError while a supply is in progress there (stop it first)."""
        self._fx = []
        cp = self.cps.get(cp_id)
        if cp is None:
            raise UnknownCpError(cp_id)
        if cp.session_id is not None:
            raise RegistryBusyError(f"{cp_id} has a supply in progress; stop it first")
        del self.cps[cp_id]
        # Its monitor, if still running, must not simply register it again.
        self._removed[cp_id] = None
        while len(self._removed) > 10_000:
            self._removed.popitem(last=False)
        self._note(f"charge point {cp_id} removed")
        self._fx.append(Forget(cp_id=cp_id))
        return self._take()

    def add_cp(self, cp_id: str, location: str, price: float, stopped: bool = False) -> None:
        """A CP registered from outside (the command line, while Central runs)."""
        if cp_id not in self.cps:
            self.cps[cp_id] = CpRecord(id=cp_id, location=location, price_eur_kwh=price, stopped=stopped)
            self._removed.pop(cp_id, None)

    # -- monitors (socket) -----------------------------------------------------------------

    def hello(self, cp_id: str, location: str, price: float | None, now_ms: int,
              source: str = "") -> tuple[Reject | None, list[Effect]]:
        """Decide on a monitor's Hello: registration of a new CP, or authentication.

        The id, location and price follow the rules every event follows (evproto.idents,
        MAX_PRICE_EUR_KWH). New registrations are rate-limited per ``source`` (the
        monitor's address) and in total; a refused one is answered BUSY (try later).
        """
        self._fx = []
        problem = (id_problem(cp_id) and f"charge point id {id_problem(cp_id)}") or (
            text_problem(location) and f"location {text_problem(location)}")
        if problem is None and price is not None and not (math.isfinite(price) and 0 <= price <= MAX_PRICE_EUR_KWH):
            problem = f"price {price} EUR/kWh is not plausible (0 to {MAX_PRICE_EUR_KWH:g})"
        if problem is not None:
            return Reject(code=ReasonCode.INVALID, detail=problem), []
        cp = self.cps.get(cp_id)
        if cp is None:
            if not self.rules.auto_register_cps:
                return Reject(code=ReasonCode.UNKNOWN_ID, detail=f"unknown charge point {cp_id}; register it first"), []
            if not location or price is None:
                return (
                    Reject(
                        code=ReasonCode.UNKNOWN_ID,
                        detail=f"unknown charge point {cp_id}: give its location and price to register it",
                    ),
                    [],
                )
            if cp_id in self._removed:
                return Reject(code=ReasonCode.UNKNOWN_ID,
                              detail=f"{cp_id} was removed by an operator; register it again with `ev-central cps add`"), []
            if len(self.cps) >= self.rules.max_cps:
                return Reject(code=ReasonCode.NOT_AVAILABLE,
                              detail=f"this Central holds its maximum of {self.rules.max_cps} charge points"), []
            wait_s = self._registrations.allow(source, now_ms / 1000)
            if wait_s:
                self.ignored["registration_refused"] += 1
                return Reject(code=ReasonCode.BUSY,
                              detail=f"too many new charge points; try again in {math.ceil(wait_s)} s"), []
            cp = CpRecord(id=cp_id, location=location, price_eur_kwh=price)
            self.cps[cp_id] = cp
            self._note(f"registered new charge point {cp_id} at {location}, {price:.2f} EUR/kWh")
            self._fx.append(SaveCp(copy.copy(cp)))
            return None, self._take()
        if cp.connected:
            return Reject(code=ReasonCode.DUPLICATE_ID, detail=f"{cp_id} is already connected"), []
        changed = False
        if location and location != cp.location:
            cp.location, changed = location, True
        if price is not None and price != cp.price_eur_kwh:
            cp.price_eur_kwh, changed = price, True
        if changed:
            self._note(f"{cp_id} updated: {cp.location}, {cp.price_eur_kwh:.2f} EUR/kWh")
            self._fx.append(SaveCp(copy.copy(cp)))
        return None, self._take()

    def monitor_connected(self, cp_id: str, now_ms: int) -> list[Effect]:
        """The monitor's link is open: the CP is visible again. Re-send the operator's state."""
        self._fx = []
        cp = self.cps[cp_id]
        before = cp.state
        cp.connected = True
        cp.revoked = False  # connected again means authenticated again (when Central authenticates)
        cp.engine_ok = True  # until the monitor's first report says otherwise
        cp.fault = FaultCode.NONE
        self._note(f"{cp_id} connected")
        command = StopCommand(cp_id=cp_id, ts_ms=now_ms) if cp.stopped else ResumeCommand(cp_id=cp_id, ts_ms=now_ms)
        self._fx.append(Publish(Topic.CP_COMMANDS, cp_id, command))
        self._state_changed(cp, before, now_ms)
        held = self.sessions.get(self._held.pop(cp_id, -1))
        if held is not None and held.status is SessionStatus.REQUESTED:
            if cp.state is CpState.ACTIVATED:
                self._ask(held, cp, now_ms)
            else:
                self._transition(held, SessionInput.CP_REFUSED, now_ms, reason="cp_not_available",
                                 text=f"{cp_id} is back but {cp.state.name}, not ACTIVATED")
        return self._take()

    def revoked(self, cp_id: str, now_ms: int) -> list[Effect]:
        """``cp_id``'s keys were revoked: what it reports from now on is refused, so its
        supply in progress ends here with what it had reported ("key_revoked")."""
        self._fx = []
        cp = self.cps[cp_id]
        cp.revoked = True
        s = self.sessions.get(cp.session_id) if cp.session_id is not None else None
        if s is not None:
            self._transition(s, SessionInput.FINISHED_EARLY, now_ms, reason="key_revoked",
                             text=f"{cp_id}'s key was revoked: {s.energy_kwh:.3f} kWh, {s.amount_eur:.2f} EUR")
        self._note(f"{cp_id}: keys revoked; it must authenticate again", "warning")
        return self._take()

    def monitor_lost(self, cp_id: str, clean: bool, detail: str, now_ms: int) -> list[Effect]:
        """The monitor's link ended; ``clean`` when it said goodbye."""
        self._fx = []
        cp = self.cps.get(cp_id)
        if cp is None or not cp.connected:
            return []
        before = cp.state
        cp.connected = False
        how = "signed off" if clean else f"lost ({detail or 'no goodbye'})"
        self._note(f"{cp_id} monitor {how}", "info" if clean else "warning")
        self._state_changed(cp, before, now_ms)
        return self._take()

    def engine_health(self, cp_id: str, report: HealthReport, now_ms: int) -> list[Effect]:
        """The monitor's report on its engine: OK, or KO/silent with a fault."""
        self._fx = []
        cp = self.cps.get(cp_id)
        if cp is None:
            return []
        before = cp.state
        ok = report.ok
        fault = report.fault.name + (f": {report.detail}" if report.detail else "")
        if ok != cp.engine_ok:
            cp.engine_ok = ok
            cp.fault = FaultCode.NONE if ok else report.fault
            if ok:
                self._note(f"{cp_id} engine recovered", key=f"health:{cp_id}")
            else:
                self._note(f"{cp_id} engine fault: {fault}", "error", key=f"health:{cp_id}")
                s = self.sessions.get(cp.session_id) if cp.session_id is not None else None
                if s is not None and s.id not in self._fault_told:
                    # Once per session: a flapping engine must not flood the driver's partition.
                    self._fault_told.add(s.id)
                    self._update(s, s.status.value, "cp_fault", f"{cp_id} reports a fault ({fault})", now_ms)
        self._state_changed(cp, before, now_ms)
        return self._take()

    # -- operator --------------------------------------------------------------------------

    def stop(self, cp_id: str | None, now_ms: int) -> tuple[list[str], list[Effect]]:
        """STOP one CP (or all when None): out of service, any supply ends."""
        return self._admin(cp_id, True, now_ms)

    def resume(self, cp_id: str | None, now_ms: int) -> tuple[list[str], list[Effect]]:
        """RESUME one CP (or all when None)."""
        return self._admin(cp_id, False, now_ms)

    def _admin(self, cp_id: str | None, stop: bool, now_ms: int) -> tuple[list[str], list[Effect]]:
        self._fx = []
        if cp_id is not None and cp_id not in self.cps:
            raise UnknownCpError(cp_id)
        targets = [self.cps[cp_id]] if cp_id is not None else list(self.cps.values())
        for cp in targets:
            before = cp.state
            cp.stopped = stop
            self._fx.append(SaveCp(copy.copy(cp)))
            event = StopCommand(cp_id=cp.id, ts_ms=now_ms) if stop else ResumeCommand(cp_id=cp.id, ts_ms=now_ms)
            self._fx.append(Publish(Topic.CP_COMMANDS, cp.id, event))
            self._state_changed(cp, before, now_ms)
        verb = "STOP" if stop else "RESUME"
        self._note(f"{verb} sent to {cp_id or 'all charge points'}")
        return [c.id for c in targets], self._take()

    # -- Kafka events ----------------------------------------------------------------------

    def on_event(self, event: Event, now_ms: int) -> list[Effect]:
        """Handle one event read from driver-requests or cp-events.

        Raises :class:`RecordRefused`, with nothing changed, for an event that refers
        to nothing Central knows or contradicts it (see :meth:`_check`).
        """
        self._fx = []
        if not self._check(event):
            return []
        if isinstance(event, SupplyRequest):
            self._request(event, now_ms)
        elif isinstance(event, AuthorizationAnswer):
            self._answer(event, now_ms)
        elif isinstance(event, SupplyStarted):
            self._started(event, now_ms)
        elif isinstance(event, SupplyProgress):
            self._progress(event, now_ms)
        elif isinstance(event, SupplyFinished):
            self._finished(event, now_ms)
        return self._take()

    def _check(self, event: Event) -> bool:
        """Refuse, before anything changes, what cannot be applied; False for what changes nothing.

        A CP's report must name a registered CP and a session that exists, is that
        CP's and (where the report names one) that driver's. An offline supply needs
        a registered CP and driver and a request id. A request id belongs to one
        driver and CP for ever: reused by another, it is refused (the same request
        again is a repeat, handled in :meth:`_request`).
        """
        if isinstance(event, SupplyRequest):
            old = self._request_session(event.request_id)
            if old is not None and (old.driver_id, old.cp_id) != (event.driver_id, event.cp_id):
                raise RecordRefused(f"request id {event.request_id} already belongs to session {old.id} "
                                    f"of {old.driver_id} at {old.cp_id}")
            return True
        if not isinstance(event, (AuthorizationAnswer, SupplyStarted, SupplyProgress, SupplyFinished)):
            raise RecordRefused(f"{event.TYPE} is not read from this topic")
        if event.cp_id not in self.cps:
            raise RecordRefused(f"{event.cp_id} is not a registered charge point")
        if isinstance(event, SupplyFinished) and event.session_id == 0:
            if not event.offline:
                raise RecordRefused("session 0 is only for a supply served offline")
            if event.driver_id not in self.drivers:
                raise RecordRefused(f"offline supply for {event.driver_id}, who is not a registered driver")
            if not event.request_id:
                raise RecordRefused("offline supply without a request id")
            old = self._request_session(event.request_id)
            if old is not None and (old.driver_id, old.cp_id) != (event.driver_id, event.cp_id):
                raise RecordRefused(f"request id {event.request_id} already belongs to session {old.id}")
            return True
        if event.session_id == 0 and isinstance(event, (SupplyStarted, SupplyProgress)):
            self.ignored["offline_report"] += 1  # a supply served offline: only its end is billed
            return False
        s = self._known_session(event.session_id)
        if s is None:
            raise RecordRefused(f"session {event.session_id} does not exist")
        if s.cp_id != event.cp_id:
            raise RecordRefused(f"session {s.id} belongs to {s.cp_id}, not {event.cp_id}")
        driver_id = getattr(event, "driver_id", None)
        if driver_id is not None and driver_id != s.driver_id:
            raise RecordRefused(f"session {s.id} is {s.driver_id}'s, not {driver_id}'s")
        return True

    def _known_session(self, session_id: int) -> SessionRecord | None:
        s = self.sessions.get(session_id) or self.ended.get(session_id)
        if s is None and 0 < session_id < self.next_session_id and self.history is not None:
            s = self.history.session(session_id)
        return s

    def _request_session(self, request_id: str) -> SessionRecord | None:
        sid = self.request_ids.get(request_id)
        if sid is not None:
            return self._known_session(sid)
        return self.history.session_by_request(request_id) if self.history is not None else None

    def tick(self, now_ms: int) -> list[Effect]:
        """Expire requests the CP never answered and authorisations never used."""
        self._fx = []
        if self._held and now_ms >= self._grace_until_ms:
            for cp_id, sid in list(self._held.items()):
                del self._held[cp_id]
                s = self.sessions.get(sid)
                if s is not None and s.status is SessionStatus.REQUESTED:
                    self._transition(s, SessionInput.CP_REFUSED, now_ms, reason="cp_not_available",
                                     text=f"{cp_id} did not reconnect within {self.rules.restart_grace_s:g} s "
                                          "of Central's restart")
        for s in list(self.sessions.values()):
            if s.status in (SessionStatus.REQUESTED, SessionStatus.AUTHORIZED) and now_ms >= s.deadline_ts_ms:
                waiting_answer = s.status is SessionStatus.REQUESTED
                reason = "cp_no_answer" if waiting_answer else "not_plugged"
                text = (
                    f"{s.cp_id} did not answer the authorisation"
                    if waiting_answer
                    else f"nobody plugged in at {s.cp_id} within {self.rules.plug_timeout_s:g} s"
                )
                self._fx.append(
                    Publish(Topic.CP_COMMANDS, s.cp_id, CancelAuthorization(cp_id=s.cp_id, session_id=s.id, reason=reason, ts_ms=now_ms))
                )
                self._transition(s, SessionInput.EXPIRED, now_ms, reason=reason, text=text)
        return self._take()

    # -- internals -------------------------------------------------------------------------

    def _take(self) -> list[Effect]:
        fx, self._fx = self._fx, []
        return fx

    def _note(self, text: str, level: str = "info", key: str | None = None) -> None:
        self._fx.append(Note(text, level, key))

    def _state_changed(self, cp: CpRecord, before: CpState, now_ms: int) -> None:
        after = cp.state
        if after is not before:
            self._fx.append(
                Publish(
                    Topic.CP_STATE,
                    cp.id,
                    CpStateRecord(
                        cp_id=cp.id,
                        location=cp.location,
                        price_eur_kwh=cp.price_eur_kwh,
                        state=after.name,
                        driver_id=cp.driver_id or "",
                        ts_ms=now_ms,
                    ),
                    durable=False,
                )
            )

    def state_records(self, now_ms: int) -> list[Effect]:
        """A CpStateRecord for every CP (published at start-up)."""
        return [
            Publish(
                Topic.CP_STATE,
                cp.id,
                CpStateRecord(cp_id=cp.id, location=cp.location, price_eur_kwh=cp.price_eur_kwh, state=cp.state.name,
                              driver_id=cp.driver_id or "", ts_ms=now_ms),
                durable=False,
            )
            for cp in self.cps.values()
        ]

    def _update(self, s: SessionRecord, status: str, reason: str, text: str, now_ms: int) -> None:
        self._fx.append(
            Publish(
                Topic.DRIVER_EVENTS,
                s.driver_id,
                RequestUpdate(
                    driver_id=s.driver_id,
                    request_id=s.request_id,
                    cp_id=s.cp_id,
                    status=status,
                    session_id=s.id,
                    reason=reason,
                    message=text,
                    ts_ms=now_ms,
                ),
            )
        )

    def _deny_request(self, req: SupplyRequest, reason: str, text: str, now_ms: int) -> None:
        self._note(f"denied {req.driver_id} at {req.cp_id}: {text}", "warning")
        self._fx.append(
            Publish(
                Topic.DRIVER_EVENTS,
                req.driver_id,
                RequestUpdate(driver_id=req.driver_id, request_id=req.request_id, cp_id=req.cp_id, status="denied",
                              reason=reason, message=text, ts_ms=now_ms),
            )
        )

    def _request(self, req: SupplyRequest, now_ms: int) -> None:
        if self._request_session(req.request_id) is not None:
            # The same request again (a producer retry, a replay, an old report re-sent),
            # however old: handled already.
            self.ignored["duplicate_request"] += 1
            return
        where = " at the CP" if req.origin == "cp" else ""
        self._note(f"request from {req.driver_id} for {req.cp_id}{where}")
        if req.driver_id not in self.drivers:
            return self._deny_request(req, "unknown_driver", f"driver {req.driver_id} is not registered", now_ms)
        cp = self.cps.get(req.cp_id)
        if cp is None:
            return self._deny_request(req, "unknown_cp", f"charge point {req.cp_id} does not exist", now_ms)
        busy = next((s for s in self.sessions.values() if s.driver_id == req.driver_id), None)
        if busy is not None:
            return self._deny_request(
                req, "driver_busy", f"driver {req.driver_id} already has a supply {busy.status.value} at {busy.cp_id}", now_ms
            )
        state = cp.state
        if cp.session_id is not None:
            return self._deny_request(req, "cp_busy", f"{cp.id} is busy with another driver", now_ms)
        hold = (state is CpState.DISCONNECTED and cp.id in self._known_at_start and not cp.stopped
                and now_ms < self._grace_until_ms)
        if state is not CpState.ACTIVATED and not hold:
            return self._deny_request(req, "cp_not_available", f"{cp.id} is {state.name}, not ACTIVATED", now_ms)
        s = SessionRecord(
            id=self.next_session_id,
            cp_id=cp.id,
            driver_id=req.driver_id,
            request_id=req.request_id,
            origin=req.origin,
            status=SessionStatus.REQUESTED,
            requested_ts_ms=now_ms,
            price_eur_kwh=cp.price_eur_kwh,
            deadline_ts_ms=now_ms + int(self.rules.answer_timeout_s * 1000),
            target_energy_kwh=req.target_energy_kwh,
            target_duration_s=req.target_duration_s,
        )
        self.next_session_id += 1
        self.sessions[s.id] = s
        self.request_ids[s.request_id] = s.id
        cp.session_id = s.id
        cp.driver_id = s.driver_id
        if hold:
            # Central has just restarted and this CP's monitor is not back yet (they
            # reconnect within seconds): wait for it rather than turn our restart into a denial.
            self._held[cp.id] = s.id
            s.deadline_ts_ms = self._grace_until_ms + int(self.rules.answer_timeout_s * 1000)
            self._fx.append(SaveSession(copy.copy(s)))
            wait_s = math.ceil((self._grace_until_ms - now_ms) / 1000)
            self._update(s, "requested", "", f"request received; Central has just restarted: waiting up to {wait_s} s "
                         f"for {cp.id} to reconnect", now_ms)
            return
        self._fx.append(SaveSession(copy.copy(s)))
        self._ask(s, cp, now_ms)
        self._update(s, "requested", "", f"request received; asking {cp.id} to authorise", now_ms)

    def _ask(self, s: SessionRecord, cp: CpRecord, now_ms: int) -> None:
        """Send the CP the authorisation for ``s``."""
        self._asked_ms[s.id] = now_ms
        s.deadline_ts_ms = max(s.deadline_ts_ms, now_ms + int(self.rules.answer_timeout_s * 1000))
        self._fx.append(
            Publish(
                Topic.CP_COMMANDS,
                cp.id,
                AuthorizeCommand(
                    cp_id=cp.id,
                    session_id=s.id,
                    driver_id=s.driver_id,
                    request_id=s.request_id,
                    price_eur_kwh=s.price_eur_kwh,
                    expires_ts_ms=self._cp_expiry(s),
                    target_energy_kwh=s.target_energy_kwh,
                    target_duration_s=s.target_duration_s,
                    ts_ms=now_ms,
                ),
            )
        )

    def _cp_expiry(self, s: SessionRecord) -> int:
        """When the CP itself gives up on an unused authorisation (counted from when it was asked)."""
        asked = self._asked_ms.get(s.id, s.requested_ts_ms)
        return asked + int((self.rules.answer_timeout_s + self.rules.plug_timeout_s) * 1000)

    def _remember(self, s: SessionRecord) -> None:
        self.ended[s.id] = s
        self.ended.move_to_end(s.id)
        while len(self.ended) > self.rules.remember_ended:
            _, old = self.ended.popitem(last=False)
            self.request_ids.pop(old.request_id, None)

    def _session_for(self, cp_id: str, session_id: int) -> SessionRecord | None:
        s = self.sessions.get(session_id)
        if s is None:
            s = self._revive(cp_id, session_id)
        if s is None or s.cp_id != cp_id:
            self.ignored["late_report"] += 1  # about a session that has ended: changes nothing
            return None
        return s

    def _revive(self, cp_id: str, session_id: int) -> SessionRecord | None:
        """A CP reports energy for a session Central had ended without a ticket.

        Energy that flowed must be billed: the CP's report outranks Central's
        expiry (it happens when a driver plugs in just as Central gives up). The
        session goes back to supplying, if its CP is free, and ends normally.
        """
        s = self.ended.get(session_id)
        if s is None or s.cp_id != cp_id or s.ticketed:
            return None
        cp = self.cps.get(cp_id)
        if cp is None or (cp.session_id is not None and cp.session_id != s.id):
            return None
        if any(live.driver_id == s.driver_id for live in self.sessions.values()):
            return None  # the driver has moved on to another supply: one live session per driver
        del self.ended[session_id]
        s.status = SessionStatus.AUTHORIZED
        s.end_reason = None
        s.ended_ts_ms = None
        self.sessions[s.id] = s
        cp.session_id, cp.driver_id = s.id, s.driver_id
        self._note(f"{cp_id} reports a supply for session {s.id}, which had expired: reopening it to bill it", "warning")
        return s

    def _answer(self, ev: AuthorizationAnswer, now_ms: int) -> None:
        s = self.sessions.get(ev.session_id)
        if s is None or s.cp_id != ev.cp_id:
            self.ignored["late_report"] += 1
            return  # an answer about an ended session changes nothing
        if ev.accepted:
            s.authorized_ts_ms = now_ms
            s.deadline_ts_ms = self._cp_expiry(s) + int(self.rules.expiry_grace_s * 1000)
            self._transition(s, SessionInput.CP_ACCEPTED, now_ms, text=f"authorised: plug in at {s.cp_id}")
        else:
            why = ev.reason or "no reason given"
            text = (f"{s.cp_id} withdrew the authorisation: {why}" if s.status is SessionStatus.AUTHORIZED
                    else f"{s.cp_id} refused: {why}")
            self._transition(s, SessionInput.CP_REFUSED, now_ms, reason=ev.reason or "cp_refused", text=text)

    def _started(self, ev: SupplyStarted, now_ms: int) -> None:
        s = self._session_for(ev.cp_id, ev.session_id)
        if s is None:
            return
        s.started_ts_ms = ev.started_ts_ms
        self._transition(s, SessionInput.STARTED, now_ms, text=f"supply started at {s.cp_id}")

    def _progress(self, ev: SupplyProgress, now_ms: int) -> None:
        s = self._session_for(ev.cp_id, ev.session_id)
        if s is None:
            return
        if s.status is not SessionStatus.SUPPLYING:
            s.started_ts_ms = s.started_ts_ms or ev.ts_ms
            self._transition(s, SessionInput.PROGRESS, now_ms, text=f"supply running at {s.cp_id}")
        s.energy_kwh, s.amount_eur = ev.energy_kwh, ev.amount_eur
        cp = self.cps.get(ev.cp_id)
        if cp is not None:
            cp.energy_kwh, cp.amount_eur, cp.power_kw = ev.energy_kwh, ev.amount_eur, ev.power_kw
        self._fx.append(
            Publish(
                Topic.DRIVER_EVENTS,
                s.driver_id,
                DriverTelemetry(
                    driver_id=s.driver_id,
                    session_id=s.id,
                    cp_id=s.cp_id,
                    energy_kwh=ev.energy_kwh,
                    amount_eur=ev.amount_eur,
                    power_kw=ev.power_kw,
                    produced_ts_ms=ev.ts_ms,
                    ts_ms=now_ms,
                ),
                durable=False,  # interim figures: the ticket carries the final ones
            )
        )

    def _finished(self, ev: SupplyFinished, now_ms: int) -> None:
        if ev.offline and ev.session_id == 0:
            return self._offline_supply(ev, now_ms)
        s = self._session_for(ev.cp_id, ev.session_id)
        if s is None:
            return  # finished before (duplicate report) or never known: nothing to add
        s.started_ts_ms = ev.started_ts_ms
        s.ended_ts_ms = ev.ended_ts_ms
        s.energy_kwh = ev.energy_kwh
        s.amount_eur = ev.amount_eur
        s.price_eur_kwh = ev.price_eur_kwh
        self._transition(s, finish_input(ev.reason), now_ms, reason=ev.reason,
                         text=f"supply at {s.cp_id} ended ({ev.reason}): {ev.energy_kwh:.3f} kWh, {ev.amount_eur:.2f} EUR")

    def _offline_supply(self, ev: SupplyFinished, now_ms: int) -> None:
        """A supply a CP served while Central was down: record and bill it, once per request id."""
        if self._request_session(ev.request_id) is not None:
            self.ignored["duplicate_report"] += 1
            return  # reported before (the CP re-sends until the broker acknowledges)
        s = SessionRecord(
            id=self.next_session_id,
            cp_id=ev.cp_id,
            driver_id=ev.driver_id,
            request_id=ev.request_id,
            origin="cp-offline",
            status=SessionStatus.SUPPLYING,
            requested_ts_ms=ev.started_ts_ms,
            price_eur_kwh=ev.price_eur_kwh,
            deadline_ts_ms=now_ms,
            started_ts_ms=ev.started_ts_ms,
            ended_ts_ms=ev.ended_ts_ms,
            energy_kwh=ev.energy_kwh,
            amount_eur=ev.amount_eur,
        )
        self.next_session_id += 1
        self.request_ids[s.request_id] = s.id
        self.sessions[s.id] = s
        self._note(f"{ev.cp_id} reports an offline supply for {ev.driver_id}: {ev.energy_kwh:.3f} kWh")
        self._transition(s, finish_input(ev.reason), now_ms, reason=ev.reason,
                         text=f"offline supply at {s.cp_id} ({ev.reason}): {ev.energy_kwh:.3f} kWh, {ev.amount_eur:.2f} EUR")

    def _transition(self, s: SessionRecord, inp: SessionInput, now_ms: int, *, reason: str = "", text: str = "") -> None:
        st = step(s.status, inp)
        if st.next is None:
            return
        cp = self.cps.get(s.cp_id)
        before = cp.state if cp is not None else None
        s.status = st.next
        if not st.next.live:
            s.end_reason = reason or s.end_reason
            s.ended_ts_ms = s.ended_ts_ms or now_ms
            s.ticketed = s.ticketed or st.ticket
            del self.sessions[s.id]
            self._fault_told.discard(s.id)
            self._asked_ms.pop(s.id, None)
            self._remember(s)
            if cp is not None and cp.session_id == s.id:
                cp.session_id = None
                cp.driver_id = None
                cp.supplying = False
                cp.power_kw = cp.energy_kwh = cp.amount_eur = None
        elif cp is not None:
            cp.supplying = st.next is SessionStatus.SUPPLYING
            if cp.supplying and cp.energy_kwh is None:
                cp.energy_kwh, cp.amount_eur, cp.power_kw = s.energy_kwh, s.amount_eur, 0.0
        self._fx.append(SaveSession(copy.copy(s)))
        # The ticket goes out before the final update: a driver that sees a final
        # status knows it already has the ticket, if the supply earned one.
        if st.ticket:
            self._fx.append(
                Publish(
                    Topic.DRIVER_EVENTS,
                    s.driver_id,
                    Ticket(
                        driver_id=s.driver_id,
                        session_id=s.id,
                        request_id=s.request_id,
                        cp_id=s.cp_id,
                        energy_kwh=s.energy_kwh,
                        amount_eur=s.amount_eur,
                        price_eur_kwh=s.price_eur_kwh,
                        started_ts_ms=s.started_ts_ms or s.requested_ts_ms,
                        ended_ts_ms=s.ended_ts_ms or now_ms,
                        status=s.status.value,
                        end_reason=s.end_reason or "",
                        ts_ms=now_ms,
                    ),
                )
            )
            self._note(f"ticket for {s.driver_id}: {text}")
        elif not st.next.live:
            self._note(f"{s.driver_id} at {s.cp_id}: {s.status.value} ({reason})", "warning" if reason else "info")
        self._update(s, s.status.value, reason, text, now_ms)
        if cp is not None and before is not None:
            self._state_changed(cp, before, now_ms)

    # -- views -----------------------------------------------------------------------------

    def cp_views(self) -> list[CpView]:
        out = []
        for cp in sorted(self.cps.values(), key=lambda c: c.id):
            supplying = cp.state is CpState.SUPPLYING
            out.append(
                CpView(
                    id=cp.id,
                    location=cp.location,
                    price_eur_kwh=cp.price_eur_kwh,
                    state=cp.state.name,
                    driver_id=cp.driver_id if supplying else None,
                    power_kw=cp.power_kw if supplying else None,
                    energy_kwh=cp.energy_kwh if supplying else None,
                    amount_eur=cp.amount_eur if supplying else None,
                    alerts=("not_authenticated",) if cp.revoked else (),
                )
            )
        return out

    def live_session_views(self) -> list[SessionView]:
        return [s.view() for s in sorted(self.sessions.values(), key=lambda s: s.id)]

