"""Which live readings a driver's screen shows (throttled, never stale, never after the ticket)."""

from __future__ import annotations

from evproto.domain.events import (
    DriverTelemetry,
)

__all__ = ["LiveFigures"]


class LiveFigures:
    """Which live readings a driver is shown: the newest of each burst, at most one every
    ``every_s``, never one older than a reading already shown for its session, and none of
    a session that has ended.

    Telemetry is interim and may come late: after an outage Central relays, in one
    burst, what the CP metered while it was away, and then the ticket. So a reading
    waits ``settle_s`` before it is shown, and newer readings or the session's end
    replace it meanwhile. Times are the caller's monotonic seconds.
    """

    def __init__(self, *, every_s: float = 2.0, settle_s: float = 0.5, remember: int = 200) -> None:
        self.every_s = every_s
        self.settle_s = settle_s
        self._remember = remember
        self._pending: DriverTelemetry | None = None
        self._pending_since = 0.0
        self._shown_at: float | None = None
        #: Session id -> produced_ts_ms of the last reading shown (the last ``remember`` sessions).
        self._shown: dict[int, int] = {}
        self._ended: dict[int, None] = {}

    def offer(self, ev: DriverTelemetry, now: float) -> None:
        """A reading arrived."""
        if ev.session_id in self._ended or ev.produced_ts_ms <= self._shown.get(ev.session_id, -1):
            return
        p = self._pending
        if p is not None and p.session_id == ev.session_id and p.produced_ts_ms >= ev.produced_ts_ms:
            return  # older than the one already waiting
        if p is None:
            self._pending_since = now
        self._pending = ev

    def ended(self, session_id: int) -> None:
        """The session's ticket or final update arrived: none of its readings is shown any more."""
        self._ended[session_id] = None
        self._shown.pop(session_id, None)
        if len(self._ended) > self._remember:
            del self._ended[next(iter(self._ended))]
        if self._pending is not None and self._pending.session_id == session_id:
            self._pending = None

    def due(self, now: float) -> DriverTelemetry | None:
        """The reading to show now, if any."""
        p = self._pending
        if p is None or now - self._pending_since < self.settle_s:
            return None
        if self._shown_at is not None and now - self._shown_at < self.every_s:
            return None
        self._pending = None
        self._shown_at = now
        self._shown[p.session_id] = p.produced_ts_ms
        if len(self._shown) > self._remember:
            del self._shown[next(iter(self._shown))]
        return p
