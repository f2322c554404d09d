"""The driver's live screen without a terminal: its model, its rendering and its keys.

The model is fed the events the app gets (requests sent, Central's updates, readings,
tickets, CP states) and rendered to text with a recording rich Console of fixed width.
"""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from evproto.daemons.central.panel import STATE_LOOKS
from evproto.daemons.driver.keys import HotKey, KeyLine, Submitted
from evproto.daemons.driver.requests import RequestLine
from evproto.daemons.driver.screen import (
    MAX_CPS_SHOWN,
    MAX_NOTES,
    MAX_TICKETS_SHOWN,
    DriverScreen,
    elapsed_text,
    render,
    ticket_text,
)
from evproto.domain.events import CpStateRecord, DriverTelemetry, RequestUpdate, Ticket
from evproto.domain.session import SessionStatus
from evproto.messages import CpState, EndReason

T0 = 1_700_000_000_000


def text_of(screen: DriverScreen, now_ms: int = T0, width: int = 120) -> str:
    console = Console(record=True, width=width, force_terminal=True, color_system="truecolor", file=io.StringIO())
    console.print(render(screen, now_ms=now_ms))
    return console.export_text()


def update(status: SessionStatus, *, rid: str = "r1", sid: int | None = 7, at: int = T0, **kw: str) -> RequestUpdate:
    return RequestUpdate(
        driver_id="D1", request_id=rid, cp_id="CP001", status=status.value, ts_ms=at, session_id=sid, **kw
    )


def reading(kwh: float, *, sid: int = 7, at: int = T0) -> DriverTelemetry:
    return DriverTelemetry(
        driver_id="D1",
        session_id=sid,
        cp_id="CP001",
        energy_kwh=kwh,
        amount_eur=kwh * 0.30,
        power_kw=7.4,
        produced_ts_ms=at,
        ts_ms=at,
    )


def ticket(sid: int = 7, *, end: EndReason = EndReason.COMPLETED, kwh: float = 1.5) -> Ticket:
    return Ticket(
        driver_id="D1",
        session_id=sid,
        request_id=f"r{sid}",
        cp_id="CP001",
        energy_kwh=kwh,
        amount_eur=round(kwh * 0.30, 6),
        price_eur_kwh=0.30,
        started_ts_ms=T0,
        ended_ts_ms=T0 + 150_000,
        status=(SessionStatus.COMPLETED if end.normal else SessionStatus.INTERRUPTED).value,
        end_reason=end.token,
        ts_ms=T0 + 150_000,
    )


def cp(cp_id: str, state: CpState, price: float = 0.30, location: str = "Alicante") -> CpStateRecord:
    return CpStateRecord(cp_id=cp_id, location=location, price_eur_kwh=price, state=state.name, ts_ms=T0)


# -- the steps of a request ------------------------------------------------------------------


def test_every_step_of_a_request_shows_as_it_happens() -> None:
    screen = DriverScreen("D1")
    assert "no request yet" in text_of(screen)
    screen.request_sent(request_id="r1" + "0" * 30, line=RequestLine("CP001", 2.5), ts_ms=T0)
    shown = text_of(screen)
    assert "CP001 (2.5 kWh)" in shown and "SENT" in shown and "REQUESTED" not in shown
    steps = [
        (SessionStatus.REQUESTED, "request received; asking CP001 to authorise"),
        (SessionStatus.AUTHORIZED, "authorised: plug in at CP001"),
        (SessionStatus.SUPPLYING, "supply started at CP001"),
        (SessionStatus.COMPLETED, "supply at CP001 ended (completed): 1.500 kWh, 0.45 EUR"),
    ]
    for n, (status, words) in enumerate(steps, 1):
        screen.request_update(update(status, rid="r1" + "0" * 30, at=T0 + n * 1000, message=words))
        shown = text_of(screen, T0 + n * 1000)
        for earlier, earlier_words in steps[:n]:
            assert earlier.name in shown and earlier_words in shown
        for later, _ in steps[n:]:
            assert later.name not in shown
    assert len(screen.requests) == 1 and screen.requests[0].status is SessionStatus.COMPLETED


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("unknown_driver", "driver D1 is not registered"),
        ("unknown_cp", "charge point CP404 does not exist"),
        ("cp_busy", "CP001 is busy with another driver"),
        ("cp_not_available", "CP001 is STOPPED, not ACTIVATED"),
        ("cp_no_answer", "CP001 did not answer the authorisation"),
    ],
)
def test_a_denial_shows_centrals_reason(reason: str, message: str) -> None:
    screen = DriverScreen("D1")
    screen.request_sent(request_id="r1", line=RequestLine("CP001"), ts_ms=T0)
    screen.request_update(update(SessionStatus.DENIED, sid=None, reason=reason, message=message))
    assert f"DENIED: {message}" in text_of(screen)
    assert screen.supply is None


def test_a_denial_without_words_shows_its_reason_token() -> None:
    screen = DriverScreen("D1")
    screen.request_update(update(SessionStatus.DENIED, sid=None, reason="cp_refused"))
    assert "DENIED: cp_refused" in text_of(screen)


def test_an_update_for_a_request_sent_before_a_restart_still_shows() -> None:
    screen = DriverScreen("D1")
    screen.request_update(update(SessionStatus.SUPPLYING, rid="old", message="supply started at CP001"))
    assert "supply started at CP001" in text_of(screen)
    assert screen.supply is not None and screen.supply.session_id == 7


def test_only_the_newest_requests_stay_on_the_screen() -> None:
    screen = DriverScreen("D1")
    for n in range(10):
        screen.request_sent(request_id=f"req{n:05d}", line=RequestLine(f"CP{n:03d}"), ts_ms=T0)
    shown = text_of(screen)
    assert "CP009" in shown and "CP000" not in shown


# -- the supply ------------------------------------------------------------------------------


def test_the_supply_shows_cp_kw_kwh_eur_and_elapsed_until_its_ticket() -> None:
    screen = DriverScreen("D1")
    assert "no supply in progress" in text_of(screen)
    screen.request_update(update(SessionStatus.SUPPLYING, at=T0))
    screen.reading(reading(1.2345, at=T0 + 60_000))
    shown = text_of(screen, now_ms=T0 + 75_000)
    assert "CP001" in shown and "7.4" in shown and "1.234" in shown and "0.37" in shown and "01:15" in shown
    screen.reading(reading(2.0, at=T0 + 120_000))
    shown = text_of(screen, now_ms=T0 + 3_723_000)
    assert "2.000" in shown and "0.60" in shown and "1:02:03" in shown
    screen.ticket(ticket(7, kwh=2.0))
    assert screen.supply is None and "no supply in progress" in text_of(screen)


def test_a_final_update_ends_the_supply_even_without_a_ticket() -> None:
    screen = DriverScreen("D1")
    screen.request_update(update(SessionStatus.SUPPLYING))
    screen.request_update(update(SessionStatus.INTERRUPTED, reason="fault"))
    assert screen.supply is None


def test_a_reading_without_the_start_shows_no_made_up_elapsed_time() -> None:
    screen = DriverScreen("D1")
    screen.reading(reading(0.5))
    shown = text_of(screen, now_ms=T0 + 10_000)
    assert "0.500" in shown and "–" in shown


def test_elapsed_text() -> None:
    assert [elapsed_text(s) for s in (-5, 0, 59.9, 75, 3600, 3723)] == [
        "00:00",
        "00:00",
        "00:59",
        "01:15",
        "1:00:00",
        "1:02:03",
    ]


# -- tickets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("end", list(EndReason), ids=lambda r: r.token)
def test_a_ticket_shows_its_figures_and_its_end_reasons_label(end: EndReason) -> None:
    screen = DriverScreen("D1")
    screen.ticket(ticket(7, end=end, kwh=1.5))
    shown = text_of(screen)
    assert "Tickets (1)" in shown and "1.500" in shown and "0.45" in shown and "2.5" in shown
    status = SessionStatus.COMPLETED if end.normal else SessionStatus.INTERRUPTED
    assert (end.label if end.label == status.value else f"{status.value} ({end.label})") in shown
    assert f"({end.label})" in ticket_text(ticket(7, end=end)), "the log line and the screen say it alike"


def test_tickets_so_far_are_counted_and_the_newest_listed() -> None:
    screen = DriverScreen("D1")
    for sid in range(1, MAX_TICKETS_SHOWN + 3):
        screen.ticket(ticket(sid, kwh=sid / 10))
    shown = text_of(screen)
    assert f"Tickets ({MAX_TICKETS_SHOWN + 2})" in shown
    assert f"{(MAX_TICKETS_SHOWN + 2) / 10:.3f}" in shown and "0.100" not in shown


# -- the charge points -----------------------------------------------------------------------


def test_l_shows_the_charge_points_with_prices_and_states_available_first() -> None:
    screen = DriverScreen("D1")
    for record in (
        cp("CP003", CpState.STOPPED, 0.42),
        cp("CP001", CpState.ACTIVATED, 0.30, "Elche"),
        cp("CP002", CpState.BROKEN, 0.35),
        cp("CP004", CpState.ACTIVATED, 0.349),
    ):
        screen.cp_state(record)
    assert "CP003" not in text_of(screen)
    screen.toggle_cps()
    shown = text_of(screen)
    assert "Charge points (2 available of 4)" in shown
    rows = [line for line in shown.splitlines() if "CP00" in line]
    assert [re.search(r"CP00\d", r).group() for r in rows] == ["CP001", "CP004", "CP002", "CP003"]  # type: ignore[union-attr]
    assert "Elche" in rows[0] and "0.3" in rows[0] and "0.349" in rows[1]
    assert STATE_LOOKS[CpState.STOPPED].detail in rows[3] and STATE_LOOKS[CpState.ACTIVATED].detail in rows[0]
    screen.cp_removed("CP002")
    assert "CP002" not in text_of(screen)
    screen.toggle_cps()
    assert "Charge points" not in text_of(screen)


def test_a_big_networks_list_is_cut_with_the_available_ones_first() -> None:
    screen = DriverScreen("D1", show_cps=True)
    for n in range(5000):
        screen.cp_state(cp(f"CP{n:04d}", CpState.ACTIVATED if n % 1000 == 999 else CpState.BROKEN))
    shown = text_of(screen)
    assert "Charge points (5 available of 5000)" in shown
    listed = re.findall(r"CP\d{4}", shown)
    assert len(listed) == MAX_CPS_SHOWN
    assert listed[:5] == ["CP0999", "CP1999", "CP2999", "CP3999", "CP4999"] and listed[5] == "CP0000"
    assert f"and {5000 - MAX_CPS_SHOWN} more" in shown


@pytest.mark.parametrize("state", list(CpState), ids=lambda s: s.name)
def test_every_cp_state_has_its_look_on_the_drivers_list(state: CpState) -> None:
    screen = DriverScreen("D1", show_cps=True)
    screen.cp_state(cp("CP001", state))
    assert state.name in text_of(screen)


# -- the frame around --------------------------------------------------------------------------


def test_central_reachability_notes_and_the_line_being_typed() -> None:
    screen = DriverScreen("D1")
    assert "waiting for its heartbeat" in text_of(screen)
    screen.central_reachable = False
    assert "Central NOT reachable" in text_of(screen)
    screen.central_reachable = True
    assert "Central reachable" in text_of(screen)
    for n in range(MAX_NOTES + 2):
        screen.note(f"warning number {n}")
    shown = text_of(screen)
    assert f"warning number {MAX_NOTES + 1}" in shown and "warning number 0" not in shown
    assert "q quit" in shown
    screen.typed = "r CP00"
    assert "> r CP00" in text_of(screen)


def test_text_from_the_network_cannot_move_the_cursor() -> None:
    screen = DriverScreen("D1", show_cps=True)
    screen.cp_state(cp("CP001", CpState.ACTIVATED, location="Plaza\x1b[2J\x1b[H"))
    screen.request_update(update(SessionStatus.DENIED, sid=None, message="no\x1b]0;owned\x07"))
    console = Console(width=120, force_terminal=True, file=io.StringIO())
    console.print(render(screen, now_ms=T0))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b[2J" not in out and "\x1b]0;" not in out


# -- keys ------------------------------------------------------------------------------------


def test_hot_keys_act_on_an_empty_line_and_other_keys_make_a_command_line() -> None:
    keys = KeyLine()
    assert keys.feed("l") == [HotKey(key="l")]
    assert keys.feed("r CP001 2kWh") == [] and keys.buffer == "r CP001 2kWh"  # its l is text
    assert keys.feed("\r") == [Submitted(line="r CP001 2kWh")] and keys.buffer == ""
    assert keys.feed("Q") == [HotKey(key="q")]


def test_keys_whole_or_one_by_one_mean_the_same() -> None:
    typed = "lr CP0011\x7f\rx\x15q\x1b[Dl\x1bOq"
    whole = KeyLine().feed(typed)
    one_by_one = KeyLine()
    singly = [a for ch in typed for a in one_by_one.feed(ch)]
    assert whole == singly == [HotKey(key="l"), Submitted(line="r CP001"), HotKey(key="q"), HotKey(key="l")]


def test_the_final_byte_of_an_escape_sequence_is_not_a_hot_key() -> None:
    keys = KeyLine()
    assert keys.feed("\x1b[?25l") == [] and keys.feed("\x1b[1;5q") == []
    assert keys.feed("\x1bx") == [] and keys.buffer == "x"  # a lone Esc cleared, then x typed


def test_a_command_line_is_bounded() -> None:
    keys = KeyLine(max_chars=10)
    keys.feed("r " + "9" * 50)
    assert len(keys.buffer) == 10
