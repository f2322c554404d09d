"""What Central knows, as records: its rules, a CP, a session, a monitor's health report."""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Protocol

from evproto.domain.central.view import CpView, SessionView
from evproto.domain.cp import CpFacts, cp_state
from evproto.domain.session import SessionStatus
from evproto.messages import (
    CpState,
    FaultCode,
    FaultReport,
    HealthState,
    HealthStatus,
    Message,
    RecoveryReport,
)

__all__ = ["Rules", "HealthReport", "CpRecord", "SessionRecord", "SessionHistory"]


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


#: The longest fault detail Central keeps from a monitor's report.
MAX_DETAIL_CHARS = 200


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
            # The monitor's words reach Central's log and panel: no control characters
            # (a forged log line, a terminal escape), at most a line's worth.
            detail = "".join(c if c.isprintable() else "?" for c in msg.detail[:MAX_DETAIL_CHARS])
            return cls(False, msg.fault, detail)
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
    #: Stopped because it is below 0 °C at its location (the weather service said so).
    weather_stopped: bool = False
    #: The weather service could not tell the temperature at its location lately.
    weather_unknown: bool = False

    @property
    def out_of_order(self) -> bool:
        """Stopped for any reason: the operator's STOP or the weather (both must clear)."""
        return self.stopped or self.weather_stopped

    @property
    def alerts(self) -> tuple[str, ...]:
        """What the console shows beside its state."""
        return (
            (("not_authenticated",) if self.revoked else ())
            + (("weather",) if self.weather_stopped else ())
            + (("weather_unknown",) if self.weather_unknown else ())
        )

    @property
    def state(self) -> CpState:
        return cp_state(
            CpFacts(
                monitor_connected=self.connected,
                engine_ok=self.engine_ok,
                stopped=self.out_of_order,
                supplying=self.supplying,
            )
        )

    def view(self) -> CpView:
        """What the console and the API show of it. Made only of :data:`CP_VIEW_FACTS`."""
        state = self.state
        supplying = state is CpState.SUPPLYING
        return CpView(
            id=self.id,
            location=self.location,
            price_eur_kwh=self.price_eur_kwh,
            state=state.name,
            driver_id=self.driver_id if supplying else None,
            power_kw=self.power_kw if supplying else None,
            energy_kwh=self.energy_kwh if supplying else None,
            amount_eur=self.amount_eur if supplying else None,
            alerts=self.alerts,
        )


#: The fields a CP's view is made of (besides its id): the same facts, the same view, so a
#: view is built again only for a CP whose facts changed (tests/test_central_view.py checks
#: that every other field leaves the view alone).
CP_VIEW_FACTS = attrgetter(
    "location",
    "price_eur_kwh",
    "connected",
    "engine_ok",
    "stopped",
    "weather_stopped",
    "supplying",
    "driver_id",
    "power_kw",
    "energy_kwh",
    "amount_eur",
    "revoked",
    "weather_unknown",
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
    #: The meter's signed begin/end readings (OCMF) and its public key; "" when unsigned.
    ocmf_begin: str = ""
    ocmf_end: str = ""
    meter_public_key: str = ""
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
            ocmf_begin=self.ocmf_begin,
            ocmf_end=self.ocmf_end,
            meter_public_key=self.meter_public_key,
        )


#: The fields a session's view is made of (as :data:`CP_VIEW_FACTS` for CPs).
SESSION_VIEW_FACTS = attrgetter(
    "cp_id",
    "driver_id",
    "status",
    "requested_ts_ms",
    "energy_kwh",
    "amount_eur",
    "started_ts_ms",
    "ended_ts_ms",
    "end_reason",
    "ocmf_begin",
    "ocmf_end",
    "meter_public_key",
)
