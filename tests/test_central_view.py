"""Central's view and its JSON, both ways: what the HTTP API writes, the launcher's panel reads back."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evproto.domain.central.view import CentralView, CpView, MessageView, SessionView, iso_utc, parse_iso_utc

#: 2026-12-02T04:00:00.001Z, and 2100-01-01T00:00:00.000Z: iso_utc goes through a float of
#: seconds, exact to the millisecond for this century (centuries later its last digit may drift).
T0_MS = 1_796_184_000_001
Y2100_MS = 4_102_444_800_000


def _view() -> CentralView:
    return CentralView(
        cps=(
            CpView(
                id="CP001",
                location="Alicante",
                price_eur_kwh=0.35,
                state="SUPPLYING",
                driver_id="D001",
                power_kw=22.0,
                energy_kwh=1.25,
                amount_eur=0.44,
            ),
            CpView(id="CP002", location="Elche", price_eur_kwh=0.349, state="STOPPED", alerts=("not_authenticated",)),
            CpView(id="CP003", location="", price_eur_kwh=0.0, state="DISCONNECTED"),
        ),
        requests=(
            SessionView(
                id=7,
                cp_id="CP001",
                driver_id="D001",
                status="supplying",
                requested_ts_ms=T0_MS,
                energy_kwh=1.25,
                amount_eur=0.44,
                started_ts_ms=T0_MS + 999,
            ),
            SessionView(id=8, cp_id="CP002", driver_id="D002", status="requested", requested_ts_ms=T0_MS + 1),
        ),
        messages=(
            MessageView(ts_ms=T0_MS, level="info", text="CP001 registered"),
            MessageView(ts_ms=T0_MS + 1234, level="error", text="cannot reach Kafka"),
        ),
        central_id="central",
        listen="127.0.0.1:7000",
        http="127.0.0.1:8000",
        kafka="127.0.0.1:9092",
        kafka_ok=True,
        now_ts_ms=T0_MS + 5000,
        counters={"events_in": 12, "dead_letters": 0},
    )


def test_the_view_survives_its_json_both_ways() -> None:
    """What the API answers (through real JSON text) gives back the very view it was made from."""
    view = _view()
    answers = json.loads(
        json.dumps(
            {
                "cps": [c.to_json() for c in view.cps],
                "requests": [s.to_request_json() for s in view.requests],
                "messages": [m.to_json() for m in view.messages],
                "status": view.status_json(),
            }
        )
    )
    assert CentralView.from_json(**answers, now_ts_ms=view.now_ts_ms) == view


def test_a_finished_session_round_trips_and_the_pinned_shape_has_no_request_time() -> None:
    ended = SessionView(
        id=9,
        cp_id="CP001",
        driver_id="D001",
        status="finished",
        requested_ts_ms=T0_MS,
        energy_kwh=2.0,
        amount_eur=0.7,
        started_ts_ms=T0_MS + 10,
        ended_ts_ms=T0_MS + 60_000,
        end_reason="target_reached",
    )
    assert SessionView.from_json(ended.to_request_json()) == ended
    assert "requested_at" not in ended.to_json()  # pinned: GET /api/v1/sessions items
    assert SessionView.from_json(ended.to_json()).requested_ts_ms == 0


def test_a_cp_json_without_optional_fields_reads_with_their_defaults() -> None:
    cp = CpView.from_json({"id": "CP9", "location": "Teruel", "price_eur_kwh": 0.3, "state": "ACTIVATED"})
    assert cp == CpView(id="CP9", location="Teruel", price_eur_kwh=0.3, state="ACTIVATED")
    with pytest.raises(KeyError):
        CpView.from_json({"id": "CP9"})


@given(st.integers(min_value=0, max_value=Y2100_MS))
def test_iso_utc_and_parse_iso_utc_are_inverses_to_the_millisecond(ts_ms: int) -> None:
    text = iso_utc(ts_ms)
    assert text is not None and parse_iso_utc(text) == ts_ms


def test_parse_iso_utc_edges() -> None:
    assert parse_iso_utc(None) is None and parse_iso_utc("") is None
    assert parse_iso_utc("1970-01-01T00:00:00.000Z") == 0
    with pytest.raises(ValueError):
        parse_iso_utc("yesterday")


# -- the core's views are rebuilt only when their facts change ---------------------------


def _other(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1.5
    if value is None:
        return 2.5
    if isinstance(value, str):
        return value + "x"
    return value


def test_a_cp_view_is_made_of_its_view_facts_only() -> None:
    """Every CpRecord field either is one of CP_VIEW_FACTS or leaves the view alone; so the
    core's cache (a view rebuilt only when those facts change) never shows a stale CP."""
    import dataclasses

    from evproto.domain.central.records import CP_VIEW_FACTS, CpRecord
    from evproto.messages import FaultCode

    facts = set(CP_VIEW_FACTS.__reduce__()[1])
    for field in dataclasses.fields(CpRecord):
        for supplying in (False, True):
            cp = CpRecord(
                id="CP1",
                location="Town",
                price_eur_kwh=0.3,
                connected=True,
                supplying=supplying,
                driver_id="D1",
                power_kw=7.0,
                energy_kwh=1.0,
                amount_eur=0.3,
            )
            before = cp.view()
            value = getattr(cp, field.name)
            changed = FaultCode.METER_LOST if isinstance(value, FaultCode) else _other(value)
            setattr(cp, field.name, changed)
            if field.name == "id":
                continue
            if field.name not in facts:
                assert cp.view() == before, f"{field.name} changes the view but is not in CP_VIEW_FACTS"


def test_the_core_hands_out_the_same_view_until_a_fact_changes() -> None:
    from evproto.domain.central import CentralCore

    core = CentralCore()
    core.add_cp("CP1", "Town", 0.3)
    core.add_cp("CP2", "Town", 0.3)
    first = core.cp_views()
    again = core.cp_views()
    assert [a is b for a, b in zip(first, again)] == [True, True]
    core.cps["CP2"].connected = not core.cps["CP2"].connected
    third = core.cp_views()
    assert third[0] is first[0] and third[1] is not first[1]
    assert third[1] == core.cps["CP2"].view() and third[1].state != first[1].state
    del core.cps["CP1"]
    assert [v.id for v in core.cp_views()] == ["CP2"]


def test_a_session_view_is_made_of_its_view_facts_only() -> None:
    """The same for sessions: every SessionRecord field either is one of SESSION_VIEW_FACTS or
    leaves the view alone."""
    import dataclasses

    from evproto.domain.central.records import SESSION_VIEW_FACTS, SessionRecord
    from evproto.domain.session import SessionStatus

    facts = set(SESSION_VIEW_FACTS.__reduce__()[1])
    for field in dataclasses.fields(SessionRecord):
        s = SessionRecord(
            id=1,
            cp_id="CP1",
            driver_id="D1",
            request_id="r1",
            origin="driver",
            status=SessionStatus.SUPPLYING,
            requested_ts_ms=1,
            price_eur_kwh=0.3,
            deadline_ts_ms=2,
        )
        before = s.view()
        value = getattr(s, field.name)
        changed = SessionStatus.COMPLETED if isinstance(value, SessionStatus) else _other(value)
        setattr(s, field.name, changed)
        if field.name != "id" and field.name not in facts:
            assert s.view() == before, f"{field.name} changes the view but is not in SESSION_VIEW_FACTS"
