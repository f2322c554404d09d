"""Central's rules for supplies: requests, authorisations, telemetry, tickets, expiry.

A part of :class:`~evproto.domain.central.core.CentralCore` (its state is set up there).
"""

from __future__ import annotations

import copy
import math

from evproto.bus.topics import Topic
from evproto.domain.events import (
    AuthorizationAnswer,
    AuthorizeCommand,
    CancelAuthorization,
    DriverTelemetry,
    Event,
    RequestUpdate,
    SupplyFinished,
    SupplyProgress,
    SupplyRequest,
    SupplyStarted,
    Ticket,
)
from evproto.domain.session import SessionInput, SessionStatus, finish_input, step
from evproto.messages import (
    CpState,
)

from .effects import Effect, Publish, SaveSession
from .errors import RecordRefused
from .records import CpRecord, SessionRecord

__all__ = ["SessionRules"]


class SessionRules:
    """Kafka events in, session bookkeeping, updates and tickets out."""

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
                raise RecordRefused(
                    f"request id {event.request_id} already belongs to session {old.id} "
                    f"of {old.driver_id} at {old.cp_id}"
                )
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
                    self._transition(
                        s,
                        SessionInput.CP_REFUSED,
                        now_ms,
                        reason="cp_not_available",
                        text=f"{cp_id} did not reconnect within {self.rules.restart_grace_s:g} s of Central's restart",
                    )
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
                    Publish(
                        Topic.CP_COMMANDS,
                        s.cp_id,
                        CancelAuthorization(cp_id=s.cp_id, session_id=s.id, reason=reason, ts_ms=now_ms),
                    )
                )
                self._transition(s, SessionInput.EXPIRED, now_ms, reason=reason, text=text)
        return self._take()

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
                RequestUpdate(
                    driver_id=req.driver_id,
                    request_id=req.request_id,
                    cp_id=req.cp_id,
                    status="denied",
                    reason=reason,
                    message=text,
                    ts_ms=now_ms,
                ),
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
                req,
                "driver_busy",
                f"driver {req.driver_id} already has a supply {busy.status.value} at {busy.cp_id}",
                now_ms,
            )
        state = cp.state
        if cp.session_id is not None:
            return self._deny_request(req, "cp_busy", f"{cp.id} is busy with another driver", now_ms)
        hold = (
            state is CpState.DISCONNECTED
            and cp.id in self._known_at_start
            and not cp.stopped
            and now_ms < self._grace_until_ms
        )
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
            self._update(
                s,
                "requested",
                "",
                f"request received; Central has just restarted: waiting up to {wait_s} s for {cp.id} to reconnect",
                now_ms,
            )
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
        self._note(
            f"{cp_id} reports a supply for session {s.id}, which had expired: reopening it to bill it", "warning"
        )
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
            text = (
                f"{s.cp_id} withdrew the authorisation: {why}"
                if s.status is SessionStatus.AUTHORIZED
                else f"{s.cp_id} refused: {why}"
            )
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
        s.ocmf_begin, s.ocmf_end, s.meter_public_key = ev.ocmf_begin, ev.ocmf_end, ev.meter_public_key
        self._transition(
            s,
            finish_input(ev.reason),
            now_ms,
            reason=ev.reason,
            text=f"supply at {s.cp_id} ended ({ev.reason}): {ev.energy_kwh:.3f} kWh, {ev.amount_eur:.2f} EUR",
        )

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
            ocmf_begin=ev.ocmf_begin,
            ocmf_end=ev.ocmf_end,
            meter_public_key=ev.meter_public_key,
        )
        self.next_session_id += 1
        self.request_ids[s.request_id] = s.id
        self.sessions[s.id] = s
        self._note(f"{ev.cp_id} reports an offline supply for {ev.driver_id}: {ev.energy_kwh:.3f} kWh")
        self._transition(
            s,
            finish_input(ev.reason),
            now_ms,
            reason=ev.reason,
            text=f"offline supply at {s.cp_id} ({ev.reason}): {ev.energy_kwh:.3f} kWh, {ev.amount_eur:.2f} EUR",
        )

    def _transition(
        self, s: SessionRecord, inp: SessionInput, now_ms: int, *, reason: str = "", text: str = ""
    ) -> None:
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
                        ocmf_begin=s.ocmf_begin,
                        ocmf_end=s.ocmf_end,
                        meter_public_key=s.meter_public_key,
                    ),
                )
            )
            self._note(f"ticket for {s.driver_id}: {text}")
        elif not st.next.live:
            self._note(f"{s.driver_id} at {s.cp_id}: {s.status.value} ({reason})", "warning" if reason else "info")
        self._update(s, s.status.value, reason, text, now_ms)
        if cp is not None and before is not None:
            self._state_changed(cp, before, now_ms)
