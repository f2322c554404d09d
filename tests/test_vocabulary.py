"""One definition per concept, walked from the wire to the screen.

Every end reason, fault kind, CP state and session status is defined once (an enum)
and everything else is derived from it. These tests take every value of each enum
through the framed link's codec, the Kafka event codec, Central's rules and the
panel, so adding a value that one of them does not handle fails here.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from evproto.bus.events import decode_event, encode_event
from evproto.daemons.central.http_api import SESSION_STATUSES as API_SESSION_STATUSES
from evproto.daemons.central.panel import STATE_LOOKS, render
from evproto.domain.central import CentralCore, HealthReport, Note, Publish, Rules
from evproto.domain.central.view import CP_STATES, CentralView, CpView, MessageView
from evproto.domain.events import (
    CP_STATE_NAMES,
    END_REASONS,
    SESSION_STATUSES,
    AuthorizationAnswer,
    AuthorizeCommand,
    CpStateRecord,
    RequestUpdate,
    SupplyFinished,
    SupplyProgress,
    SupplyRequest,
    SupplyStarted,
    Ticket,
)
from evproto.domain.session import COMPLETED_REASONS, SessionInput, SessionStatus, finish_input
from evproto.messages import (
    CpState,
    EndReason,
    FaultCode,
    FaultReport,
    HealthState,
    HealthStatus,
    SupplyEnd,
    decode_body,
    encode_body,
)

T0 = 1_700_000_000_000


def _wire(message):
    """The message after a trip through the framed link's codec."""
    return decode_body(encode_body(message, seq=1)).message


def _kafka(event):
    """The event after a trip through the Kafka codec (checked against its bounds)."""
    return decode_event(encode_event(event))


def _core() -> CentralCore:
    core = CentralCore(drivers={"D1"}, rules=Rules(answer_timeout_s=10.0, plug_timeout_s=60.0))
    reject, _ = core.hello("CP1", "Plaza Mayor", 0.30, T0)
    assert reject is None
    core.monitor_connected("CP1", T0)
    return core


def _panel_text(view: CentralView, width: int = 120) -> str:
    console = Console(
        record=True, width=width, height=30, force_terminal=True, color_system="truecolor", file=io.StringIO()
    )
    console.print(render(view, width=width))
    return console.export_text()


def _published(fx: list, cls: type) -> list:
    return [p.event for p in fx if isinstance(p, Publish) and isinstance(p.event, cls)]


# -- end reasons -----------------------------------------------------------------------------


@pytest.mark.parametrize("reason", list(EndReason), ids=lambda r: r.token)
def test_every_end_reason_travels_from_the_engine_to_the_drivers_ticket_and_the_panel(reason: EndReason) -> None:
    # The framed link carries it as its number.
    end = SupplyEnd(
        session_id=1,
        driver_id="D1",
        energy_wh=1000.0,
        amount_eur=0.3,
        started_at_ms=T0,
        ended_at_ms=T0 + 60_000,
        reason=reason,
    )
    assert _wire(end).reason is reason
    # Kafka carries its token, accepted by the schema.
    assert reason.token in END_REASONS and EndReason.from_token(reason.token) is reason
    # Central applies it: a ticket for the driver, completed only for a normal end.
    core = _core()
    fx = core.on_event(SupplyRequest(request_id="r1", driver_id="D1", cp_id="CP1", ts_ms=T0), T0)
    (cmd,) = _published(fx, AuthorizeCommand)
    core.on_event(AuthorizationAnswer(cp_id="CP1", session_id=cmd.session_id, accepted=True, ts_ms=T0 + 1), T0 + 1)
    core.on_event(
        SupplyStarted(cp_id="CP1", session_id=cmd.session_id, driver_id="D1", started_ts_ms=T0 + 2, ts_ms=T0 + 2),
        T0 + 2,
    )
    core.on_event(
        SupplyProgress(
            cp_id="CP1",
            session_id=cmd.session_id,
            driver_id="D1",
            energy_kwh=1.0,
            amount_eur=0.3,
            power_kw=7.0,
            elapsed_s=60.0,
            ts_ms=T0 + 60_000,
        ),
        T0 + 60_000,
    )
    finished = _kafka(
        SupplyFinished(
            cp_id="CP1",
            session_id=cmd.session_id,
            driver_id="D1",
            energy_kwh=1.0,
            amount_eur=0.3,
            price_eur_kwh=0.3,
            started_ts_ms=T0 + 2,
            ended_ts_ms=T0 + 61_000,
            reason=reason.token,
            ts_ms=T0 + 61_000,
        )
    )
    fx = core.on_event(finished, T0 + 61_000)
    (ticket,) = _published(fx, Ticket)
    ticket = _kafka(ticket)
    assert ticket.end_reason == reason.token
    assert ticket.status == (SessionStatus.COMPLETED if reason.normal else SessionStatus.INTERRUPTED).value
    assert (reason.token in COMPLETED_REASONS) is reason.normal
    assert finish_input(reason.token) is (SessionInput.FINISHED_OK if reason.normal else SessionInput.FINISHED_EARLY)
    # The driver's screen shows its label; Central's panel shows the note naming it.
    assert reason.label and EndReason.from_token(ticket.end_reason).label == reason.label
    notes = [n.text for n in fx if isinstance(n, Note) and reason.token in n.text]
    assert notes, "Central said nothing about how the supply ended"
    view = CentralView(
        cps=tuple(core.cp_views()),
        messages=(MessageView(ts_ms=T0, level="info", text=notes[0]),),
        now_ts_ms=T0 + 61_000,
    )
    assert f"({reason.token})" in _panel_text(view)


def test_an_end_reason_nobody_defined_is_refused_at_the_boundary() -> None:
    with pytest.raises(ValueError, match="not an end reason"):
        EndReason.from_token("overheated")
    with pytest.raises(ValueError):
        EndReason.from_token("COMPLETED")  # the token is the lower-case spelling only


# -- fault kinds -----------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [f for f in FaultCode if f is not FaultCode.NONE], ids=lambda f: f.name)
def test_every_fault_kind_travels_from_the_engine_to_centrals_panel(fault: FaultCode) -> None:
    assert fault.label
    for message in (HealthStatus(state=HealthState.KO, fault=fault), FaultReport(fault=fault, detail="from the meter")):
        received = _wire(message)
        report = HealthReport.of(received)
        assert report is not None and not report.ok and report.fault is fault
        core = _core()
        fx = core.engine_health("CP1", report, T0 + 1)
        assert core.cps["CP1"].fault is fault
        assert [e.state for e in _published(fx, CpStateRecord)] == ["BROKEN"]
        assert any(isinstance(n, Note) and fault.name in n.text for n in fx)
        text = _panel_text(CentralView(cps=tuple(core.cp_views()), now_ts_ms=T0 + 1))
        assert "BROKEN" in text and STATE_LOOKS[CpState.BROKEN].detail in text
        # And back: the recovery clears it.
        core.engine_health("CP1", HealthReport(True), T0 + 2)
        assert core.cps["CP1"].fault is FaultCode.NONE and core.cp_views()[0].state == "ACTIVATED"


# -- CP states -------------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(CpState), ids=lambda s: s.name)
def test_every_cp_state_travels_from_central_to_the_panel(state: CpState) -> None:
    assert state.name in CP_STATES and state.name in CP_STATE_NAMES
    record = _kafka(CpStateRecord(cp_id="CP1", location="Plaza Mayor", price_eur_kwh=0.3, state=state.name, ts_ms=T0))
    assert CpState[record.state] is state
    look = STATE_LOOKS[state]
    figures = dict(driver_id="D1", power_kw=7.2, energy_kwh=1.5, amount_eur=0.45) if state is CpState.SUPPLYING else {}
    text = _panel_text(
        CentralView(
            cps=(CpView(id="CP1", location="Plaza Mayor", price_eur_kwh=0.3, state=state.name, **figures),),
            now_ts_ms=T0,
        )
    )
    assert look.detail in text and look.mini
    assert (state.name in text) if state is not CpState.SUPPLYING else ("D1" in text)


# -- session statuses ------------------------------------------------------------------------


@pytest.mark.parametrize("status", list(SessionStatus), ids=lambda s: s.value)
def test_every_session_status_travels_to_the_driver_and_the_api(status: SessionStatus) -> None:
    assert status.value in SESSION_STATUSES and status.value in API_SESSION_STATUSES
    update = _kafka(RequestUpdate(driver_id="D1", request_id="r1", cp_id="CP1", status=status.value, ts_ms=T0))
    assert SessionStatus(update.status) is status
    assert status.final is not status.live


def test_a_monitors_fault_detail_cannot_forge_log_lines_or_escape_the_terminal() -> None:
    report = HealthReport.of(
        _wire(FaultReport(fault=FaultCode.METER_LOST, detail="gone\n12:00:00 CENTRAL \x1b[2Jfake"))
    )
    assert report is not None and report.detail == "gone?12:00:00 CENTRAL ?[2Jfake"
    core = _core()
    fx = core.engine_health("CP1", report, T0 + 1)
    assert all(n.text.isprintable() for n in fx if isinstance(n, Note))
