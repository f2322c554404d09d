"""What Central shows: plain snapshots shared by the panel, the HTTP API and the launcher.

Pure data. The HTTP API's JSON shapes (``CpView.to_json``, ``SessionView.to_json``)
are pinned: other tools depend on them (docs/central.md).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from evproto.messages import CpState

__all__ = ["CpView", "SessionView", "MessageView", "CentralView", "iso_utc", "CP_STATES"]

#: The CP states as the API spells them (CpState names), in panel order.
CP_STATES = tuple(s.name for s in CpState)


def iso_utc(ts_ms: int | None) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC (``2026-11-28T02:10:00.123Z``), None stays None."""
    if ts_ms is None:
        return None
    try:
        t = _dt.datetime.fromtimestamp(ts_ms / 1000, tz=_dt.timezone.utc)
    except (ValueError, OverflowError, OSError):  # beyond year 9999 (a row older than our bounds)
        return None
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True, kw_only=True)
class CpView:
    """One charge point. Supply figures are None unless the CP is SUPPLYING."""

    id: str
    location: str
    price_eur_kwh: float
    state: str
    driver_id: str | None = None
    power_kw: float | None = None
    energy_kwh: float | None = None
    amount_eur: float | None = None
    #: Why the CP is not serving besides its state: ``not_authenticated`` (its key was
    #: revoked; until its monitor authenticates again).
    alerts: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The pinned ``GET /api/v1/cps`` item."""
        return {
            "id": self.id,
            "location": self.location,
            "price_eur_kwh": self.price_eur_kwh,
            "state": self.state,
            "driver_id": self.driver_id,
            "power_kw": self.power_kw,
            "energy_kwh": self.energy_kwh,
            "amount_eur": self.amount_eur,
            "alerts": list(self.alerts),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionView:
    """One supply session (a driver request and, if it went that far, its supply and ticket)."""

    id: int
    cp_id: str
    driver_id: str
    status: str
    requested_ts_ms: int
    energy_kwh: float = 0.0
    amount_eur: float = 0.0
    started_ts_ms: int | None = None
    ended_ts_ms: int | None = None
    end_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The pinned ``GET /api/v1/sessions`` item (times as ISO 8601 UTC strings or null)."""
        return {
            "id": self.id,
            "cp_id": self.cp_id,
            "driver_id": self.driver_id,
            "status": self.status,
            "energy_kwh": self.energy_kwh,
            "amount_eur": self.amount_eur,
            "started_at": iso_utc(self.started_ts_ms),
            "ended_at": iso_utc(self.ended_ts_ms),
            "end_reason": self.end_reason,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageView:
    """A line of the application-messages pane."""

    ts_ms: int
    level: str  # "info", "warning" or "error"
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"ts": iso_utc(self.ts_ms), "level": self.level, "text": self.text}


@dataclass(frozen=True, slots=True, kw_only=True)
class CentralView:
    """Everything the panel draws, at one instant."""

    cps: tuple[CpView, ...] = ()
    #: Requests in progress (status requested, authorized or supplying), oldest first.
    requests: tuple[SessionView, ...] = ()
    #: Most recent last; bounded by the producer (Central keeps the last few hundred).
    messages: tuple[MessageView, ...] = ()
    central_id: str = "central"
    listen: str = ""
    http: str = ""
    kafka: str = ""
    kafka_ok: bool = True
    now_ts_ms: int = 0
    counters: dict[str, int] = field(default_factory=dict)
