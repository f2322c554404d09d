"""What Central shows: plain snapshots shared by the panel, the HTTP API and the launcher.

Pure data, and its JSON both ways: the HTTP API answers with ``to_json`` and the
launcher's panel reads the answers back with ``from_json``, so one module holds
both spellings. The shapes of ``CpView.to_json`` and ``SessionView.to_json`` are
pinned: other tools depend on them (docs/central.md).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from evproto.messages import CpState

__all__ = ["CpView", "SessionView", "MessageView", "CentralView", "iso_utc", "parse_iso_utc", "CP_STATES"]

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


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_MS = _dt.timedelta(milliseconds=1)


def parse_iso_utc(text: str | None) -> int | None:
    """The inverse of :func:`iso_utc`: ISO 8601 UTC text to epoch milliseconds; None or ""
    gives None, and text of another shape ValueError."""
    if not text:
        return None
    t = _dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=_dt.timezone.utc)
    return (t - _EPOCH) // _MS  # integer arithmetic: a float timestamp can lose the last millisecond


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

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CpView:
        """A CP from its :meth:`to_json` form (KeyError when a field without default is missing)."""
        return cls(
            id=obj["id"],
            location=obj["location"],
            price_eur_kwh=obj["price_eur_kwh"],
            state=obj["state"],
            driver_id=obj.get("driver_id"),
            power_kw=obj.get("power_kw"),
            energy_kwh=obj.get("energy_kwh"),
            amount_eur=obj.get("amount_eur"),
            alerts=tuple(obj.get("alerts") or ()),
        )


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
    ocmf_begin: str = ""
    ocmf_end: str = ""
    meter_public_key: str = ""

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
            # The meter's signed readings (docs/hardware.md, OCMF), null for an unsigned supply.
            "signed_meter": (
                {"ocmf_begin": self.ocmf_begin, "ocmf_end": self.ocmf_end, "meter_public_key": self.meter_public_key}
                if self.ocmf_begin or self.ocmf_end
                else None
            ),
        }

    def to_request_json(self) -> dict[str, Any]:
        """A ``GET /api/v1/requests`` item: :meth:`to_json` and when it was asked for (``requested_at``)."""
        return {**self.to_json(), "requested_at": iso_utc(self.requested_ts_ms)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SessionView:
        """A session from its :meth:`to_json` or :meth:`to_request_json` form (``requested_ts_ms``
        0 without ``requested_at``); KeyError for a missing field, ValueError for a bad time."""
        return cls(
            id=obj["id"],
            cp_id=obj["cp_id"],
            driver_id=obj["driver_id"],
            status=obj["status"],
            requested_ts_ms=parse_iso_utc(obj.get("requested_at")) or 0,
            energy_kwh=obj["energy_kwh"],
            amount_eur=obj["amount_eur"],
            started_ts_ms=parse_iso_utc(obj["started_at"]),
            ended_ts_ms=parse_iso_utc(obj["ended_at"]),
            end_reason=obj["end_reason"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageView:
    """A line of the application-messages pane."""

    ts_ms: int
    level: str  # "info", "warning" or "error"
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"ts": iso_utc(self.ts_ms), "level": self.level, "text": self.text}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> MessageView:
        """A message from its :meth:`to_json` form."""
        return cls(ts_ms=parse_iso_utc(obj["ts"]) or 0, level=obj["level"], text=obj["text"])


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

    def status_json(self) -> dict[str, Any]:
        """The ``GET /api/v1/status`` answer: who Central is, where it listens, its counters."""
        return {
            "central_id": self.central_id,
            "listen": self.listen,
            "http": self.http,
            "kafka": self.kafka,
            "kafka_ok": self.kafka_ok,
            "now": iso_utc(self.now_ts_ms),
            "counters": dict(self.counters),
        }

    @classmethod
    def from_json(
        cls,
        *,
        cps: Sequence[Mapping[str, Any]],
        requests: Sequence[Mapping[str, Any]],
        messages: Sequence[Mapping[str, Any]],
        status: Mapping[str, Any],
        now_ts_ms: int,
    ) -> CentralView:
        """The view drawn from the answers of ``/cps``, ``/requests``, ``/messages`` and ``/status``,
        as seen at ``now_ts_ms`` (the reader's clock, not the answer's ``now``)."""
        return cls(
            cps=tuple(CpView.from_json(c) for c in cps),
            requests=tuple(SessionView.from_json(r) for r in requests),
            messages=tuple(MessageView.from_json(m) for m in messages),
            central_id=status.get("central_id", ""),
            listen=status.get("listen", ""),
            http=status.get("http", ""),
            kafka=status.get("kafka", ""),
            kafka_ok=status.get("kafka_ok", False),
            now_ts_ms=now_ts_ms,
            counters=status.get("counters", {}),
        )
