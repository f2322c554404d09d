"""Central's pure decision core: registry, CP states, request flow, sessions, tickets.

CentralCore is driven through its public methods with the time passed in (epoch ms);
its effects (Publish / SaveCp / SaveSession / Note) are inspected directly. No Kafka,
no database, no sockets. Expectations come from the spec ("CP states", "Mechanics",
"Resilience") and the module's documented behaviour.
"""

from __future__ import annotations

import copy
from collections import Counter

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from hypothesis_budget import examples

from evproto.bus.topics import Topic
from evproto.domain.central import (
    CentralCore,
    CpRecord,
    HealthReport,
    Note,
    Publish,
    RecordRefused,
    Rules,
    SaveCp,
    SaveSession,
    SessionRecord,
    UnknownCpError,
)
from evproto.domain.central.view import CP_STATES
from evproto.domain.chargepoint import ChargePoint, Emit
from evproto.domain.events import (
    AuthorizationAnswer,
    AuthorizeCommand,
    CancelAuthorization,
    CpStateRecord,
    DriverTelemetry,
    RequestUpdate,
    ResumeCommand,
    StopCommand,
    SupplyFinished,
    SupplyProgress,
    SupplyRequest,
    SupplyStarted,
    Ticket,
)
from evproto.domain.session import SessionStatus
from evproto.messages import FaultCode, ReasonCode

T0 = 1_700_000_000_000
RULES = Rules(answer_timeout_s=10.0, plug_timeout_s=60.0)
CPS = {"CP1": ("Plaza Mayor", 0.30), "CP2": ("Calle Sol 4", 0.25), "CP3": ("Parking B", 0.40)}
DRIVERS = {"D1", "D2", "D3"}

# =============================================================================================
# helpers
# =============================================================================================


def pubs(fx: list, cls: type | None = None, topic: Topic | None = None) -> list[Publish]:
    """The Publish effects (of event type ``cls`` / on ``topic``), in order."""
    return [
        p
        for p in fx
        if isinstance(p, Publish) and (cls is None or isinstance(p.event, cls)) and (topic is None or p.topic is topic)
    ]


def events(fx: list, cls: type) -> list:
    return [p.event for p in pubs(fx, cls)]


def saved_sessions(fx: list) -> list[SessionRecord]:
    return [e.record for e in fx if isinstance(e, SaveSession)]


def saved_cps(fx: list) -> list[CpRecord]:
    return [e.record for e in fx if isinstance(e, SaveCp)]


def states(fx: list) -> list[str]:
    """The CP states published on cp-state, in order."""
    return [e.state for e in events(fx, CpStateRecord)]


def view(core: CentralCore, cp_id: str):
    (v,) = [v for v in core.cp_views() if v.id == cp_id]
    return v


def state_of(core: CentralCore, cp_id: str) -> str:
    return view(core, cp_id).state


def connect(core: CentralCore, cp_id: str, now: int = T0) -> list:
    location, price = CPS.get(cp_id, ("Somewhere", 0.35))
    reject, fx = core.hello(cp_id, location, price, now)
    assert reject is None, reject
    return fx + core.monitor_connected(cp_id, now)


def make_core(rules: Rules = RULES, **kw) -> CentralCore:
    core = CentralCore(drivers=set(DRIVERS), rules=rules, **kw)
    for cp_id in CPS:
        connect(core, cp_id)
    return core


@pytest.fixture
def core() -> CentralCore:
    return make_core()


def request(core: CentralCore, driver: str, cp_id: str, now: int = T0, *, rid: str | None = None, **kw) -> list:
    rid = rid or f"{driver}-{cp_id}-{now}"
    return core.on_event(SupplyRequest(request_id=rid, driver_id=driver, cp_id=cp_id, ts_ms=now, **kw), now)


def the_authorize(fx: list) -> AuthorizeCommand:
    (cmd,) = events(fx, AuthorizeCommand)
    return cmd


def answer(core: CentralCore, cp_id: str, sid: int, now: int, accepted: bool = True, reason: str = "") -> list:
    return core.on_event(
        AuthorizationAnswer(cp_id=cp_id, session_id=sid, accepted=accepted, reason=reason, ts_ms=now), now
    )


def started(core: CentralCore, cp_id: str, sid: int, driver: str, now: int) -> list:
    return core.on_event(
        SupplyStarted(cp_id=cp_id, session_id=sid, driver_id=driver, started_ts_ms=now, ts_ms=now), now
    )


def progress(
    core: CentralCore, cp_id: str, sid: int, driver: str, now: int, energy: float, price: float, power: float = 7.4
) -> list:
    return core.on_event(
        SupplyProgress(
            cp_id=cp_id,
            session_id=sid,
            driver_id=driver,
            energy_kwh=energy,
            amount_eur=energy * price,
            power_kw=power,
            elapsed_s=1.0,
            ts_ms=now,
        ),
        now,
    )


def finished(
    core: CentralCore,
    cp_id: str,
    sid: int,
    driver: str,
    now: int,
    *,
    energy: float,
    price: float,
    reason: str = "unplugged",
    started_at: int | None = None,
    amount: float | None = None,
) -> list:
    return core.on_event(
        SupplyFinished(
            cp_id=cp_id,
            session_id=sid,
            driver_id=driver,
            energy_kwh=energy,
            amount_eur=energy * price if amount is None else amount,
            price_eur_kwh=price,
            started_ts_ms=started_at or now - 1000,
            ended_ts_ms=now,
            reason=reason,
            ts_ms=now,
        ),
        now,
    )


def authorized(core: CentralCore, driver: str, cp_id: str, now: int = T0) -> int:
    """Request and CP acceptance; returns the session id."""
    sid = the_authorize(request(core, driver, cp_id, now)).session_id
    answer(core, cp_id, sid, now + 100)
    return sid


def supplying(core: CentralCore, driver: str, cp_id: str, now: int = T0) -> int:
    sid = authorized(core, driver, cp_id, now)
    started(core, cp_id, sid, driver, now + 200)
    return sid


def the_update(fx: list) -> RequestUpdate:
    (u,) = events(fx, RequestUpdate)
    return u


# =============================================================================================
# hello / registration
# =============================================================================================


def test_hello_registers_new_cp() -> None:
    core = CentralCore(drivers=set(DRIVERS), rules=RULES)
    reject, fx = core.hello("CP9", "Av. Libertad 3", 0.33, T0)
    assert reject is None
    (rec,) = saved_cps(fx)
    assert (rec.id, rec.location, rec.price_eur_kwh, rec.stopped) == ("CP9", "Av. Libertad 3", 0.33, False)
    assert any(isinstance(e, Note) for e in fx)
    # Registered but not connected yet: DISCONNECTED until the monitor's link is open.
    assert state_of(core, "CP9") == "DISCONNECTED"
    fx = core.monitor_connected("CP9", T0 + 1)
    assert state_of(core, "CP9") == "ACTIVATED"
    assert states(fx) == ["ACTIVATED"]


@pytest.mark.parametrize(("location", "price"), [("", 0.3), ("Somewhere", None), ("", None)])
def test_hello_new_cp_without_location_or_price_is_unknown(location: str, price: float | None) -> None:
    core = CentralCore(drivers=set(DRIVERS), rules=RULES)
    reject, fx = core.hello("CP9", location, price, T0)
    assert reject is not None and reject.code is ReasonCode.UNKNOWN_ID
    assert "CP9" in reject.detail and "location" in reject.detail and "price" in reject.detail
    assert fx == [] and core.cp_views() == []


def test_hello_without_auto_registration_is_unknown() -> None:
    core = CentralCore(drivers=set(DRIVERS), rules=Rules(auto_register_cps=False))
    reject, fx = core.hello("CP9", "Somewhere", 0.3, T0)
    assert reject is not None and reject.code is ReasonCode.UNKNOWN_ID and "CP9" in reject.detail
    assert fx == [] and core.cp_views() == []


def test_hello_known_cp_without_auto_registration_is_accepted() -> None:
    core = CentralCore(cps=[CpRecord(id="CP9", location="X", price_eur_kwh=0.3)], rules=Rules(auto_register_cps=False))
    reject, fx = core.hello("CP9", "", None, T0)
    assert reject is None and fx == []


def test_hello_duplicate_while_connected(core: CentralCore) -> None:
    reject, fx = core.hello("CP1", *CPS["CP1"], T0 + 10)
    assert reject is not None and reject.code is ReasonCode.DUPLICATE_ID
    assert fx == []
    assert state_of(core, "CP1") == "ACTIVATED"  # the live link is not disturbed


def test_hello_after_monitor_lost_is_accepted(core: CentralCore) -> None:
    core.monitor_lost("CP1", False, "reset", T0 + 10)
    reject, fx = core.hello("CP1", *CPS["CP1"], T0 + 20)
    assert reject is None and fx == []  # nothing changed: nothing saved


def test_hello_known_cp_with_changed_price_updates_it(core: CentralCore) -> None:
    core.monitor_lost("CP1", True, "", T0 + 10)
    reject, fx = core.hello("CP1", "Plaza Mayor", 0.35, T0 + 20)
    assert reject is None
    (rec,) = saved_cps(fx)
    assert rec.price_eur_kwh == 0.35 and rec.location == "Plaza Mayor"
    assert view(core, "CP1").price_eur_kwh == 0.35
    core.monitor_connected("CP1", T0 + 21)
    assert the_authorize(request(core, "D1", "CP1", T0 + 30)).price_eur_kwh == 0.35


def test_hello_known_cp_with_changed_location_updates_it(core: CentralCore) -> None:
    core.monitor_lost("CP1", True, "", T0 + 10)
    reject, fx = core.hello("CP1", "Plaza Menor", None, T0 + 20)
    assert reject is None
    (rec,) = saved_cps(fx)
    assert (rec.location, rec.price_eur_kwh) == ("Plaza Menor", 0.30)


@pytest.mark.parametrize("price", [-0.01, 100.01, 1e9, float("nan"), float("inf")])
def test_hello_implausible_price_new_cp(price: float) -> None:
    core = CentralCore(drivers=set(DRIVERS), rules=RULES)
    reject, fx = core.hello("CP9", "Somewhere", price, T0)
    assert reject is not None and reject.code is ReasonCode.INVALID
    assert fx == [] and core.cp_views() == []


@pytest.mark.parametrize("price", [-1.0, 250.0, float("nan")])
def test_hello_implausible_price_known_cp(core: CentralCore, price: float) -> None:
    core.monitor_lost("CP1", True, "", T0 + 10)
    reject, fx = core.hello("CP1", "Plaza Mayor", price, T0 + 20)
    assert reject is not None and reject.code is ReasonCode.INVALID
    assert fx == [] and view(core, "CP1").price_eur_kwh == 0.30


@pytest.mark.parametrize(
    ("cp_id", "location", "says"),
    [
        ("", "Elche", "charge point id is empty"),
        ("CP001\u200b", "Elche", "charge point id 'CP001\\u200b' holds"),
        ("CP 9", "Elche", "charge point id 'CP 9' holds"),
        ("C" * 65, "Elche", "is 65 characters long"),
        ("CP9", "Elche\u202e", "location 'Elche\\u202e' holds"),
        ("CP9", "x" * 129, "location is 129 characters long"),
    ],
)
def test_hello_with_an_id_or_location_nobody_could_address_is_invalid(cp_id: str, location: str, says: str) -> None:
    core = CentralCore(drivers=set(DRIVERS), rules=RULES)
    reject, fx = core.hello(cp_id, location, 0.3, T0)
    assert reject is not None and reject.code is ReasonCode.INVALID and says in reject.detail
    assert fx == [] and core.cp_views() == []


def test_registrations_are_limited_per_source_and_in_total_but_known_cps_always_come_back() -> None:
    core = CentralCore(drivers=set(DRIVERS), rules=Rules(registrations_per_min=10))
    accepted = [core.hello(f"J{n}", "Junk", 0.01, T0, source="10.0.0.66")[0] is None for n in range(300)]
    assert sum(accepted) == 10  # a burst of a minute's worth, then refused
    reject, _ = core.hello("J999", "Junk", 0.01, T0, source="10.0.0.66")
    assert reject is not None and reject.code is ReasonCode.BUSY and "try again in 6 s" in reject.detail
    assert core.hello("J999", "Junk", 0.01, T0 + 6000, source="10.0.0.66")[0] is None  # refilled
    # Other sources have their own allowance, until the total (5 x 10 a minute) is spent.
    others = [core.hello(f"K{n}", "Elsewhere", 0.3, T0 + 6000, source=f"10.0.1.{n}")[0] is None for n in range(100)]
    assert sum(others) == 50 - 10 + 5 - 1  # the total refilled 5 in those 6 s; J999 took one
    assert core.ignored["registration_refused"] == (300 - 10) + 1 + (100 - 44)
    # A registered CP reconnecting is never limited.
    core.monitor_connected("J0", T0 + 6000)
    core.monitor_lost("J0", True, "", T0 + 6000)
    assert core.hello("J0", "", None, T0 + 6000, source="10.0.0.66")[0] is None


def test_rejected_hello_changes_nothing(core: CentralCore) -> None:
    """A hello that is refused must leave the registry as it was (nothing saved either)."""
    core.monitor_lost("CP1", True, "", T0 + 10)
    reject, fx = core.hello("CP1", "Elsewhere", 500.0, T0 + 20)
    assert reject is not None and reject.code is ReasonCode.INVALID
    assert fx == []
    assert view(core, "CP1").location == "Plaza Mayor"


def test_free_charging_price_zero_is_plausible() -> None:
    core = CentralCore(drivers=set(DRIVERS), rules=RULES)
    reject, _ = core.hello("CP9", "Somewhere", 0.0, T0)
    assert reject is None


# =============================================================================================
# monitor link and engine health -> CP state
# =============================================================================================


def test_monitor_connected_resends_resume_and_publishes_state() -> None:
    core = CentralCore(drivers=set(DRIVERS), rules=RULES)
    core.hello("CP1", "Plaza Mayor", 0.30, T0)
    fx = core.monitor_connected("CP1", T0 + 1)
    (cmd,) = pubs(fx, ResumeCommand)
    assert (cmd.topic, cmd.key, cmd.event) == (Topic.CP_COMMANDS, "CP1", ResumeCommand(cp_id="CP1", ts_ms=T0 + 1))
    assert pubs(fx, StopCommand) == []
    (rec,) = pubs(fx, CpStateRecord)
    assert rec.topic is Topic.CP_STATE and rec.key == "CP1"
    assert rec.event == CpStateRecord(
        cp_id="CP1", location="Plaza Mayor", price_eur_kwh=0.30, state="ACTIVATED", driver_id="", ts_ms=T0 + 1
    )


def test_monitor_connected_resends_stop_for_a_stopped_cp(core: CentralCore) -> None:
    core.stop("CP1", T0 + 1)
    core.monitor_lost("CP1", False, "", T0 + 2)
    assert state_of(core, "CP1") == "DISCONNECTED"
    fx = core.monitor_connected("CP1", T0 + 3)
    assert events(fx, StopCommand) == [StopCommand(cp_id="CP1", ts_ms=T0 + 3)]
    assert events(fx, ResumeCommand) == []
    assert states(fx) == ["STOPPED"]


def test_monitor_lost_disconnects(core: CentralCore) -> None:
    fx = core.monitor_lost("CP1", False, "connection reset", T0 + 1)
    assert states(fx) == ["DISCONNECTED"]
    assert state_of(core, "CP1") == "DISCONNECTED"
    assert [n.level for n in fx if isinstance(n, Note)] == ["warning"]
    assert core.monitor_lost("CP1", False, "again", T0 + 2) == []  # already down: nothing new
    assert core.monitor_lost("NOPE", True, "", T0 + 2) == []


def test_engine_ko_broken_and_recovery(core: CentralCore) -> None:
    fx = core.engine_health("CP1", HealthReport(False, FaultCode.ENGINE_KO), T0 + 1)
    assert states(fx) == ["BROKEN"] and state_of(core, "CP1") == "BROKEN"
    assert (
        states(core.engine_health("CP1", HealthReport(False, FaultCode.ENGINE_KO), T0 + 2)) == []
    )  # a repeated report: no change
    fx = core.engine_health("CP1", HealthReport(True), T0 + 3)
    assert states(fx) == ["ACTIVATED"] and state_of(core, "CP1") == "ACTIVATED"
    assert core.engine_health("NOPE", HealthReport(False, FaultCode.ENGINE_KO), T0 + 4) == []


def test_monitor_down_wins_over_broken(core: CentralCore) -> None:
    core.engine_health("CP1", HealthReport(False, FaultCode.ENGINE_SILENT), T0 + 1)
    fx = core.monitor_lost("CP1", False, "", T0 + 2)
    assert states(fx) == ["DISCONNECTED"]
    fx = core.monitor_connected("CP1", T0 + 3)
    # Connected again: ACTIVATED until the monitor's first report says otherwise (documented).
    assert states(fx) == ["ACTIVATED"]
    assert states(core.engine_health("CP1", HealthReport(False, FaultCode.ENGINE_SILENT), T0 + 4)) == ["BROKEN"]


def _last_saved_cps(fxs: list[list]) -> dict[str, CpRecord]:
    out: dict[str, CpRecord] = {}
    for fx in fxs:
        for rec in saved_cps(fx):
            out[rec.id] = rec
    return out


def _last_saved_sessions(fxs: list[list]) -> dict[int, SessionRecord]:
    out: dict[int, SessionRecord] = {}
    for fx in fxs:
        for rec in saved_sessions(fx):
            out[rec.id] = rec
    return out


def _run_then_crash() -> tuple[list[list], dict]:
    """A Central that registered 3 CPs, stopped CP2, and had a supply running at CP1."""
    core = CentralCore(drivers=set(DRIVERS), rules=RULES)
    fxs = []
    for cp_id in CPS:
        fxs.append(connect(core, cp_id))
    fxs.append(core.stop("CP2", T0 + 5)[1])
    fx = request(core, "D1", "CP1", T0 + 10)
    fxs.append(fx)
    sid = the_authorize(fx).session_id
    fxs.append(answer(core, "CP1", sid, T0 + 20))
    fxs.append(started(core, "CP1", sid, "D1", T0 + 30))
    fxs.append(progress(core, "CP1", sid, "D1", T0 + 1030, 0.5, 0.30))
    return fxs, {"sid": sid, "next": core.next_session_id}


def test_restart_shows_every_cp_disconnected_until_monitor_connects() -> None:
    """Mechanics 1, with the records as the database keeps them (id, location, price, stopped)."""
    fxs, info = _run_then_crash()
    cps = [
        CpRecord(id=r.id, location=r.location, price_eur_kwh=r.price_eur_kwh, stopped=r.stopped)
        for r in _last_saved_cps(fxs).values()
    ]
    sessions = [copy.copy(s) for s in _last_saved_sessions(fxs).values()]
    core = CentralCore(cps=cps, drivers=set(DRIVERS), sessions=sessions, next_session_id=info["next"], rules=RULES)
    assert {v.id: v.state for v in core.cp_views()} == dict.fromkeys(CPS, "DISCONNECTED")
    assert {s.state for e in core.state_records(T0 + 99) for s in [e.event]} == {"DISCONNECTED"}
    # A request now is refused: the CP is not ACTIVATED.
    assert the_update(request(core, "D2", "CP3", T0 + 100)).reason == "cp_not_available"

    assert states(core.monitor_connected("CP3", T0 + 200)) == ["ACTIVATED"]
    assert states(core.monitor_connected("CP2", T0 + 200)) == ["STOPPED"]
    # The supply that was running goes on; its end still produces the ticket.
    assert states(core.monitor_connected("CP1", T0 + 200)) == ["SUPPLYING"]
    fx = finished(core, "CP1", info["sid"], "D1", T0 + 5000, energy=1.2, price=0.30, reason="unplugged")
    (ticket,) = events(fx, Ticket)
    assert (ticket.session_id, ticket.energy_kwh, ticket.status) == (info["sid"], 1.2, "completed")
    assert state_of(core, "CP1") == "ACTIVATED"


# =============================================================================================
# request flow
# =============================================================================================


def test_full_request_flow(core: CentralCore) -> None:
    fx = request(core, "D1", "CP1", T0, rid="req-1", target_duration_s=30.0)
    (saved,) = saved_sessions(fx)
    assert saved.status is SessionStatus.REQUESTED and (saved.cp_id, saved.driver_id) == ("CP1", "D1")
    (auth,) = pubs(fx, AuthorizeCommand)
    assert auth.topic is Topic.CP_COMMANDS and auth.key == "CP1" and auth.durable
    cmd = auth.event
    assert (cmd.cp_id, cmd.driver_id, cmd.request_id, cmd.price_eur_kwh) == ("CP1", "D1", "req-1", 0.30)
    assert cmd.session_id == saved.id and cmd.target_duration_s == 30.0
    assert cmd.expires_ts_ms > T0
    (upd,) = pubs(fx, RequestUpdate)
    assert upd.topic is Topic.DRIVER_EVENTS and upd.key == "D1"
    assert (upd.event.status, upd.event.request_id, upd.event.session_id) == ("requested", "req-1", cmd.session_id)
    sid = cmd.session_id
    assert [s.status for s in core.live_session_views()] == ["requested"]

    fx = answer(core, "CP1", sid, T0 + 100)
    assert the_update(fx).status == "authorized"
    assert [s.status for s in saved_sessions(fx)] == [SessionStatus.AUTHORIZED]
    assert state_of(core, "CP1") == "ACTIVATED"  # authorised, not supplying yet

    fx = started(core, "CP1", sid, "D1", T0 + 2000)
    assert the_update(fx).status == "supplying"
    assert states(fx) == ["SUPPLYING"]
    v = view(core, "CP1")
    assert v.state == "SUPPLYING" and v.driver_id == "D1"

    for k in range(1, 4):
        fx = progress(core, "CP1", sid, "D1", T0 + 2000 + 1000 * k, 0.002 * k, 0.30, power=7.2)
        (tel,) = pubs(fx, DriverTelemetry)
        assert tel.topic is Topic.DRIVER_EVENTS and tel.key == "D1" and tel.durable is False
        assert (tel.event.energy_kwh, tel.event.power_kw, tel.event.session_id) == (0.002 * k, 7.2, sid)
        assert tel.event.amount_eur == pytest.approx(0.0006 * k)
        assert pubs(fx, Ticket) == [] and pubs(fx, RequestUpdate) == []
        v = view(core, "CP1")
        assert (v.energy_kwh, v.power_kw) == (0.002 * k, 7.2)
        assert v.amount_eur == pytest.approx(0.0006 * k)

    fx = finished(
        core,
        "CP1",
        sid,
        "D1",
        T0 + 9000,
        energy=0.0071,
        price=0.30,
        amount=0.00213,
        reason="unplugged",
        started_at=T0 + 2000,
    )
    (tp,) = pubs(fx, Ticket)
    assert tp.topic is Topic.DRIVER_EVENTS and tp.key == "D1" and tp.durable
    t = tp.event
    assert (t.session_id, t.request_id, t.cp_id, t.driver_id) == (sid, "req-1", "CP1", "D1")
    assert (t.energy_kwh, t.amount_eur, t.price_eur_kwh) == (0.0071, 0.00213, 0.30)
    assert (t.status, t.end_reason, t.started_ts_ms, t.ended_ts_ms) == ("completed", "unplugged", T0 + 2000, T0 + 9000)
    assert the_update(fx).status == "completed"
    (rec,) = saved_sessions(fx)
    assert rec.status is SessionStatus.COMPLETED and rec.energy_kwh == 0.0071
    assert states(fx) == ["ACTIVATED"]
    v = view(core, "CP1")
    assert v.state == "ACTIVATED" and v.driver_id is None and v.energy_kwh is None
    assert core.live_session_views() == []

    # A duplicate final report produces nothing at all.
    again = finished(core, "CP1", sid, "D1", T0 + 9500, energy=0.0071, price=0.30, amount=0.00213)
    assert again == []
    # And the CP takes the next driver.
    assert the_update(request(core, "D2", "CP1", T0 + 10_000)).status == "requested"


@pytest.mark.parametrize("reason", ["completed", "unplugged"])
def test_normal_end_reasons_complete(core: CentralCore, reason: str) -> None:
    sid = supplying(core, "D1", "CP1")
    (t,) = events(finished(core, "CP1", sid, "D1", T0 + 5000, energy=2.0, price=0.30, reason=reason), Ticket)
    assert (t.status, t.end_reason) == ("completed", reason)


def test_finished_without_start_still_tickets(core: CentralCore) -> None:
    """Central may have missed the start (it was down): the final report still ends the session."""
    sid = authorized(core, "D1", "CP1")
    (t,) = events(finished(core, "CP1", sid, "D1", T0 + 5000, energy=1.0, price=0.30), Ticket)
    assert t.status == "completed" and t.energy_kwh == 1.0


def test_events_for_another_cp_are_refused_and_change_nothing(core: CentralCore) -> None:
    sid = supplying(core, "D1", "CP1")
    with pytest.raises(RecordRefused, match=f"session {sid} belongs to CP1, not CP2"):
        finished(core, "CP2", sid, "D1", T0 + 5000, energy=1.0, price=0.30)
    with pytest.raises(RecordRefused, match="belongs to CP1"):
        answer(core, "CP2", sid, T0 + 5000, accepted=False, reason="busy")
    with pytest.raises(RecordRefused, match=f"session {sid} is D1's, not D2's"):
        progress(core, "CP1", sid, "D2", T0 + 5000, 1.0, 0.3)
    with pytest.raises(RecordRefused, match="session 99 does not exist"):
        progress(core, "CP1", 99, "D1", T0 + 5000, 1.0, 0.3)
    with pytest.raises(RecordRefused, match="CP7 is not a registered charge point"):
        progress(core, "CP7", sid, "D1", T0 + 5000, 1.0, 0.3)
    assert state_of(core, "CP1") == "SUPPLYING" and core.sessions[sid].energy_kwh == 0


def test_progress_before_start_counts_as_start(core: CentralCore) -> None:
    sid = authorized(core, "D1", "CP1")
    fx = progress(core, "CP1", sid, "D1", T0 + 3000, 0.1, 0.30)
    assert the_update(fx).status == "supplying"
    assert states(fx) == ["SUPPLYING"] and len(pubs(fx, DriverTelemetry)) == 1


# =============================================================================================
# denials
# =============================================================================================


def _denial(fx: list) -> RequestUpdate:
    u = the_update(fx)
    assert u.status == "denied"
    assert u.message  # a clear, human-readable reason too
    assert events(fx, AuthorizeCommand) == [] and saved_sessions(fx) == []
    return u


def test_deny_unknown_driver(core: CentralCore) -> None:
    fx = request(core, "DX", "CP1", T0)
    assert _denial(fx).reason == "unknown_driver"
    assert pubs(fx, RequestUpdate)[0].key == "DX"


def test_deny_unknown_cp(core: CentralCore) -> None:
    assert _denial(request(core, "D1", "CP9", T0)).reason == "unknown_cp"


@pytest.mark.parametrize(
    "make_unavailable",
    [
        lambda c: c.engine_health("CP1", HealthReport(False, FaultCode.ENGINE_KO), T0 + 1),
        lambda c: c.stop("CP1", T0 + 1),
        lambda c: c.monitor_lost("CP1", False, "", T0 + 1),
    ],
    ids=["BROKEN", "STOPPED", "DISCONNECTED"],
)
def test_deny_cp_not_activated(core: CentralCore, make_unavailable) -> None:
    make_unavailable(core)
    assert _denial(request(core, "D1", "CP1", T0 + 10)).reason == "cp_not_available"
    assert core.live_session_views() == []


@pytest.mark.parametrize("phase", ["requested", "authorized", "supplying"])
def test_deny_cp_busy_with_another_driver(core: CentralCore, phase: str) -> None:
    if phase == "requested":
        request(core, "D1", "CP1", T0)
    elif phase == "authorized":
        authorized(core, "D1", "CP1")
    else:
        supplying(core, "D1", "CP1")
    assert _denial(request(core, "D2", "CP1", T0 + 500)).reason == "cp_busy"


@pytest.mark.parametrize("phase", ["requested", "authorized", "supplying"])
def test_deny_driver_already_charging_elsewhere(core: CentralCore, phase: str) -> None:
    if phase == "requested":
        request(core, "D1", "CP1", T0)
    elif phase == "authorized":
        authorized(core, "D1", "CP1")
    else:
        supplying(core, "D1", "CP1")
    assert _denial(request(core, "D1", "CP2", T0 + 500)).reason == "driver_busy"
    assert len(core.live_session_views()) == 1


def test_two_drivers_racing_for_one_cp(core: CentralCore) -> None:
    a = request(core, "D1", "CP1", T0)
    b = request(core, "D2", "CP1", T0)
    assert len(events(a + b, AuthorizeCommand)) == 1
    assert the_update(a).status == "requested"
    assert _denial(b).reason == "cp_busy"


def test_same_request_id_twice_creates_one_session(core: CentralCore) -> None:
    first = request(core, "D1", "CP1", T0, rid="dup-1")
    second = request(core, "D1", "CP1", T0 + 50, rid="dup-1")
    assert len(events(first, AuthorizeCommand)) == 1
    assert second == []  # the retry is already being handled
    assert len(core.live_session_views()) == 1


def test_same_request_id_after_its_session_ended_creates_no_new_session(core: CentralCore) -> None:
    """A redelivered request (at-least-once Kafka, or a producer retry that arrives late) must not
    start a second supply the driver never asked for."""
    sid = the_authorize(request(core, "D1", "CP1", T0, rid="dup-2")).session_id
    answer(core, "CP1", sid, T0 + 100)
    started(core, "CP1", sid, "D1", T0 + 200)
    finished(core, "CP1", sid, "D1", T0 + 5000, energy=1.0, price=0.30)
    again = request(core, "D1", "CP1", T0 + 6000, rid="dup-2")
    assert events(again, AuthorizeCommand) == []
    assert core.live_session_views() == []


def test_cp_refuses_authorisation(core: CentralCore) -> None:
    sid = the_authorize(request(core, "D1", "CP1", T0)).session_id
    fx = answer(core, "CP1", sid, T0 + 100, accepted=False, reason="busy")
    u = the_update(fx)
    assert (u.status, u.reason) == ("denied", "busy")
    assert [s.status for s in saved_sessions(fx)] == [SessionStatus.DENIED]
    assert events(fx, Ticket) == []
    assert core.live_session_views() == []
    assert the_update(request(core, "D2", "CP1", T0 + 200)).status == "requested"  # CP free again


def test_cp_refusal_without_reason_still_has_one(core: CentralCore) -> None:
    sid = the_authorize(request(core, "D1", "CP1", T0)).session_id
    assert the_update(answer(core, "CP1", sid, T0 + 100, accepted=False)).reason == "cp_refused"


def test_no_answer_within_timeout(core: CentralCore) -> None:
    sid = the_authorize(request(core, "D1", "CP1", T0)).session_id
    assert core.tick(T0 + 9_999) == []
    fx = core.tick(T0 + 10_000)
    (cancel,) = pubs(fx, CancelAuthorization)
    assert cancel.topic is Topic.CP_COMMANDS and cancel.key == "CP1"
    assert (cancel.event.session_id, cancel.event.reason) == (sid, "cp_no_answer")
    u = the_update(fx)
    assert (u.status, u.reason) == ("denied", "cp_no_answer")
    assert events(fx, Ticket) == []
    assert core.live_session_views() == [] and core.tick(T0 + 20_000) == []
    # A late answer for the expired session changes nothing.
    assert answer(core, "CP1", sid, T0 + 10_500) == []


def test_authorised_but_not_plugged(core: CentralCore) -> None:
    """The CP gives up first (at the expiry Central gave it: request + answer + plug timeouts);
    Central's own expiry, expiry_grace_s later, only covers a CP that never reports."""
    sid = authorized(core, "D1", "CP1", T0)  # accepted at T0 + 100
    cp_expiry = T0 + 10_000 + 60_000
    assert core.tick(cp_expiry + 15_000 - 1) == []
    fx = core.tick(cp_expiry + 15_000)
    (cancel,) = events(fx, CancelAuthorization)
    assert (cancel.session_id, cancel.reason) == (sid, "not_plugged")
    u = the_update(fx)
    assert (u.status, u.reason) == ("interrupted", "not_plugged")
    assert events(fx, Ticket) == []
    assert core.live_session_views() == []


def test_supplying_sessions_never_expire(core: CentralCore) -> None:
    supplying(core, "D1", "CP1")
    for now in (T0 + 60_000, T0 + 3_600_000, T0 + 10**10):
        assert core.tick(now) == []
    assert state_of(core, "CP1") == "SUPPLYING" and len(core.live_session_views()) == 1


def test_cp_withdraws_authorisation(core: CentralCore) -> None:
    sid = authorized(core, "D1", "CP1")
    fx = answer(core, "CP1", sid, T0 + 5000, accepted=False, reason="not_plugged")
    u = the_update(fx)
    assert (u.status, u.reason) == ("interrupted", "not_plugged")
    assert events(fx, Ticket) == []


# =============================================================================================
# operator STOP / RESUME
# =============================================================================================


def test_stop_during_supply(core: CentralCore) -> None:
    sid = supplying(core, "D1", "CP1")
    ids, fx = core.stop("CP1", T0 + 1000)
    assert ids == ["CP1"]
    (cmd,) = pubs(fx, StopCommand)
    assert (cmd.topic, cmd.key, cmd.event) == (Topic.CP_COMMANDS, "CP1", StopCommand(cp_id="CP1", ts_ms=T0 + 1000))
    assert [r.stopped for r in saved_cps(fx)] == [True]
    assert states(fx) == ["STOPPED"] and state_of(core, "CP1") == "STOPPED"

    fx = finished(core, "CP1", sid, "D1", T0 + 1100, energy=0.8, price=0.30, reason="stopped")
    (t,) = events(fx, Ticket)
    assert (t.status, t.end_reason, t.energy_kwh) == ("interrupted", "stopped", 0.8)
    assert t.amount_eur == pytest.approx(0.24)
    assert state_of(core, "CP1") == "STOPPED"
    assert _denial(request(core, "D2", "CP1", T0 + 1200)).reason == "cp_not_available"

    ids, fx = core.resume("CP1", T0 + 2000)
    assert ids == ["CP1"]
    assert events(fx, ResumeCommand) == [ResumeCommand(cp_id="CP1", ts_ms=T0 + 2000)]
    assert [r.stopped for r in saved_cps(fx)] == [False]
    assert states(fx) == ["ACTIVATED"]


def test_stop_and_resume_all(core: CentralCore) -> None:
    ids, fx = core.stop(None, T0 + 1)
    assert sorted(ids) == sorted(CPS)
    assert sorted(e.cp_id for e in events(fx, StopCommand)) == sorted(CPS)
    assert {v.state for v in core.cp_views()} == {"STOPPED"}
    ids, fx = core.resume(None, T0 + 2)
    assert sorted(e.cp_id for e in events(fx, ResumeCommand)) == sorted(CPS)
    assert {v.state for v in core.cp_views()} == {"ACTIVATED"}


def test_stop_unknown_cp_raises(core: CentralCore) -> None:
    with pytest.raises(UnknownCpError):
        core.stop("CP9", T0)
    with pytest.raises(UnknownCpError):
        core.resume("CP9", T0)
    assert {v.state for v in core.cp_views()} == {"ACTIVATED"}


def test_stop_a_disconnected_cp_is_remembered(core: CentralCore) -> None:
    core.monitor_lost("CP1", False, "", T0)
    _, fx = core.stop("CP1", T0 + 1)
    assert states(fx) == []  # still DISCONNECTED
    assert state_of(core, "CP1") == "DISCONNECTED"


# =============================================================================================
# engine fault during a supply
# =============================================================================================


def test_engine_ko_during_supply(core: CentralCore) -> None:
    sid = supplying(core, "D1", "CP1")
    fx = core.engine_health("CP1", HealthReport(False, FaultCode.ENGINE_KO), T0 + 1000)
    assert states(fx) == ["BROKEN"]
    (u,) = pubs(fx, RequestUpdate)
    assert u.key == "D1" and u.event.reason == "cp_fault" and u.event.session_id == sid
    fx = finished(core, "CP1", sid, "D1", T0 + 1100, energy=0.4, price=0.30, reason="fault")
    (t,) = events(fx, Ticket)
    assert (t.status, t.end_reason, t.energy_kwh) == ("interrupted", "fault", 0.4)
    assert state_of(core, "CP1") == "BROKEN"
    assert states(core.engine_health("CP1", HealthReport(True), T0 + 2000)) == ["ACTIVATED"]


def test_monitor_lost_during_supply(core: CentralCore) -> None:
    sid = supplying(core, "D1", "CP1")
    fx = core.monitor_lost("CP1", False, "timeout", T0 + 1000)
    assert states(fx) == ["DISCONNECTED"]
    fx = finished(core, "CP1", sid, "D1", T0 + 1100, energy=0.3, price=0.30, reason="monitor_lost")
    (t,) = events(fx, Ticket)
    assert (t.status, t.end_reason) == ("interrupted", "monitor_lost")
    assert state_of(core, "CP1") == "DISCONNECTED"


# =============================================================================================
# with a real engine on the other side (both cores pure; messages passed by hand)
# =============================================================================================


def _deliver_to_cp(cp: ChargePoint, fx: list, now: int) -> list:
    """Hand every cp-commands record to the engine; return what the engine emitted."""
    out = []
    for p in pubs(fx, topic=Topic.CP_COMMANDS):
        ev = p.event
        if isinstance(ev, AuthorizeCommand):
            out += cp.authorize(ev, now)
        elif isinstance(ev, CancelAuthorization):
            out += cp.cancel(ev.session_id, now)
        elif isinstance(ev, StopCommand):
            out += cp.stop(now)
        elif isinstance(ev, ResumeCommand):
            out += cp.resume(now)
    return [e.event for e in out if isinstance(e, Emit)]


def _deliver_to_central(core: CentralCore, emitted: list, now: int) -> list:
    fx = []
    for ev in emitted:
        fx += core.on_event(ev, now)
    return fx


def test_engine_and_central_full_supply() -> None:
    core = make_core()
    engine = ChargePoint(cp_id="CP1")
    engine.monitor_connected(T0)
    engine.central_reachable(True, T0)
    out = engine.manual_request("D1", "manual-1", T0)
    (req,) = [e.event for e in out if isinstance(e, Emit)]
    fx = core.on_event(req, T0 + 10)
    fx = _deliver_to_central(core, _deliver_to_cp(engine, fx, T0 + 20), T0 + 30)
    assert the_update(fx).status == "authorized"
    engine.meter(100.0, 0.0, T0 + 40)
    _deliver_to_central(core, [e.event for e in engine.plug(T0 + 50) if isinstance(e, Emit)], T0 + 60)
    assert state_of(core, "CP1") == "SUPPLYING"
    engine.meter(350.0, 7400.0, T0 + 1000)
    fx = _deliver_to_central(core, [e.event for e in engine.tick(T0 + 1050) if isinstance(e, Emit)], T0 + 1060)
    assert len(events(fx, DriverTelemetry)) == 1
    fx = _deliver_to_central(core, [e.event for e in engine.unplug(T0 + 2000) if isinstance(e, Emit)], T0 + 2010)
    (t,) = events(fx, Ticket)
    assert t.energy_kwh == pytest.approx(0.25) and t.amount_eur == pytest.approx(0.25 * 0.30)
    assert t.status == "completed"


def test_plug_just_before_central_expires_the_authorisation_still_gives_a_ticket() -> None:
    """Central's plug deadline (answer time + plug_timeout) ends before the expiry it gave the
    CP (request time + answer_timeout + plug_timeout). A driver who plugs in after Central's
    tick but before the CancelAuthorization reaches the engine gets a supply the engine meters
    and reports, yet Central drops the SupplyStarted and the SupplyFinished: no ticket, and
    Central offers a CP that is physically supplying to the next driver."""
    core = make_core()
    engine = ChargePoint(cp_id="CP1")
    engine.monitor_connected(T0)
    engine.central_reachable(True, T0)
    fx = request(core, "D1", "CP1", T0)
    cmd = the_authorize(fx)
    emitted = _deliver_to_cp(engine, fx, T0 + 2000)  # the command took 2 s to arrive
    _deliver_to_central(core, emitted, T0 + 2000)
    assert cmd.expires_ts_ms == T0 + 70_000  # the engine may plug until then
    # Central gives up expiry_grace_s after the CP's own expiry; an engine whose clock runs
    # more than that behind (or that missed its ticks) may still plug in afterwards.
    central_deadline = cmd.expires_ts_ms + 15_000
    assert core.tick(central_deadline - 1) == []
    expire_fx = core.tick(central_deadline)
    assert the_update(expire_fx).status == "interrupted"
    # The driver plugs in 300 ms later, before the cancel record reaches the engine.
    engine.meter(0.0, 0.0, central_deadline + 100)
    started_ev = [e.event for e in engine.plug(central_deadline + 300) if isinstance(e, Emit)]
    assert _deliver_to_cp(engine, expire_fx, central_deadline + 500) == []  # the engine ignores the late cancel
    _deliver_to_central(core, started_ev, central_deadline + 600)
    engine.meter(2000.0, 7400.0, central_deadline + 60_000)
    end_ev = [e.event for e in engine.unplug(central_deadline + 61_000) if isinstance(e, Emit)]
    (fin,) = end_ev
    assert isinstance(fin, SupplyFinished) and fin.energy_kwh == pytest.approx(2.0)
    fx = _deliver_to_central(core, end_ev, central_deadline + 61_100)
    # The SupplyFinished docstring: "Central turns it into exactly one ticket".
    assert len(events(fx, Ticket)) == 1


# =============================================================================================
# property: random interleavings over many CPs, drivers and events
# =============================================================================================

CP_IDS = ["CP1", "CP2", "CP3", "CP4"]
DRIVER_IDS = ["D1", "D2", "D3", "D4"]
END_REASONS = ["unplugged", "completed", "stopped", "fault", "monitor_lost", "power_loss"]


class CentralMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = CentralCore(drivers=set(DRIVER_IDS[:3]), rules=Rules(answer_timeout_s=5.0, plug_timeout_s=20.0))
        self.now = T0
        self.connected: set[str] = set()
        for cp_id in CP_IDS:
            reject, _ = self.core.hello(cp_id, f"loc {cp_id}", 0.1 * (1 + CP_IDS.index(cp_id)), self.now)
            assert reject is None
        for cp_id in CP_IDS[:3]:  # CP4 starts disconnected
            self.core.monitor_connected(cp_id, self.now)
            self.connected.add(cp_id)
        #: session id -> (cp, driver, price) from the AuthorizeCommands seen
        self.known: dict[int, tuple[str, str, float]] = {}
        self.tickets: Counter[int] = Counter()
        self.request_n = 0
        self.request_owner: dict[str, tuple[str, str]] = {}

    # -- bookkeeping of every step's effects

    def _absorb(self, fx: list, finish: SupplyFinished | None = None) -> None:
        for cmd in events(fx, AuthorizeCommand):
            assert cmd.session_id not in self.known
            self.known[cmd.session_id] = (cmd.cp_id, cmd.driver_id, cmd.price_eur_kwh)
            self.request_owner[cmd.request_id] = (cmd.driver_id, cmd.cp_id)
        for t in events(fx, Ticket):
            self.tickets[t.session_id] += 1
            event(f"ticket {t.status}")
            assert self.tickets[t.session_id] == 1, f"second ticket for session {t.session_id}"
            assert finish is not None, "a ticket without a final report"
            assert t.session_id == finish.session_id
            assert t.amount_eur == finish.amount_eur and t.energy_kwh == finish.energy_kwh
            assert t.status in ("completed", "interrupted")
        for p in pubs(fx):
            assert p.key == getattr(p.event, "driver_id", None) or p.key == getattr(p.event, "cp_id", None)

    def _pick(self, data) -> int:
        """A session the core knows: mostly a live one, sometimes any (duplicates, late events)."""
        live = sorted(self.core.sessions)
        if live and data.draw(st.integers(0, 3)):
            return data.draw(st.sampled_from(live))
        return data.draw(st.sampled_from(sorted(self.known)))

    def _advance(self, dt: int) -> int:
        self.now += dt
        return self.now

    # -- rules

    @rule(
        driver=st.sampled_from(DRIVER_IDS),
        cp=st.sampled_from(CP_IDS + ["CP9"]),
        dt=st.integers(0, 3000),
        reuse=st.booleans(),
    )
    def request(self, driver: str, cp: str, dt: int, reuse: bool) -> None:
        if not reuse or self.request_n == 0:
            self.request_n += 1
        now = self._advance(dt)
        rid = f"r{self.request_n}"
        try:
            self._absorb(request(self.core, driver, cp, now, rid=rid))
        except RecordRefused:
            # Refused only when the id already made a session for another driver or CP.
            owner = self.request_owner.get(rid)
            assert owner is not None and owner != (driver, cp)

    @precondition(lambda self: self.known)
    @rule(data=st.data(), accepted=st.booleans(), dt=st.integers(0, 3000))
    def answer(self, data, accepted: bool, dt: int) -> None:
        sid = self._pick(data)
        cp, _, _ = self.known[sid]
        self._absorb(answer(self.core, cp, sid, self._advance(dt), accepted, "" if accepted else "busy"))

    @precondition(lambda self: self.known)
    @rule(data=st.data(), dt=st.integers(0, 3000))
    def start(self, data, dt: int) -> None:
        sid = self._pick(data)
        cp, driver, _ = self.known[sid]
        self._absorb(started(self.core, cp, sid, driver, self._advance(dt)))

    @precondition(lambda self: self.known)
    @rule(data=st.data(), energy=st.floats(0, 80), dt=st.integers(0, 3000))
    def progress(self, data, energy: float, dt: int) -> None:
        sid = self._pick(data)
        cp, driver, price = self.known[sid]
        self._absorb(progress(self.core, cp, sid, driver, self._advance(dt), energy, price))

    @precondition(lambda self: self.known)
    @rule(data=st.data(), energy=st.floats(0, 80), reason=st.sampled_from(END_REASONS), dt=st.integers(0, 3000))
    def finish(self, data, energy: float, reason: str, dt: int) -> None:
        sid = self._pick(data)
        cp, driver, price = self.known[sid]
        now = self._advance(dt)
        ev = SupplyFinished(
            cp_id=cp,
            session_id=sid,
            driver_id=driver,
            energy_kwh=energy,
            amount_eur=energy * price,
            price_eur_kwh=price,
            started_ts_ms=now - 1000,
            ended_ts_ms=now,
            reason=reason,
            ts_ms=now,
        )
        self._absorb(self.core.on_event(ev, now), ev)

    @rule(dt=st.integers(0, 8_000))
    def tick(self, dt: int) -> None:
        self._absorb(self.core.tick(self._advance(dt)))

    @rule(cp=st.sampled_from(CP_IDS + [None]), stop=st.booleans())
    def operator(self, cp: str | None, stop: bool) -> None:
        _, fx = (self.core.stop if stop else self.core.resume)(cp, self.now)
        self._absorb(fx)

    @rule(cp=st.sampled_from(CP_IDS))
    def monitor_up(self, cp: str) -> None:
        reject, fx = self.core.hello(cp, "", None, self.now)
        if cp in self.connected:
            assert reject is not None and reject.code is ReasonCode.DUPLICATE_ID
            return
        assert reject is None
        self.connected.add(cp)
        self._absorb(fx + self.core.monitor_connected(cp, self.now))

    @rule(cp=st.sampled_from(CP_IDS), clean=st.booleans())
    def monitor_down(self, cp: str, clean: bool) -> None:
        self.connected.discard(cp)
        self._absorb(self.core.monitor_lost(cp, clean, "", self.now))

    @rule(cp=st.sampled_from(CP_IDS), ok=st.booleans())
    def health(self, cp: str, ok: bool) -> None:
        self._absorb(
            self.core.engine_health(cp, HealthReport(ok, FaultCode.NONE if ok else FaultCode.ENGINE_KO), self.now)
        )

    # -- invariants

    @invariant()
    def one_live_session_per_cp_and_per_driver(self) -> None:
        live = list(self.core.sessions.values())
        assert all(s.status.live for s in live)
        per_cp = Counter(s.cp_id for s in live)
        per_driver = Counter(s.driver_id for s in live)
        assert max(per_cp.values(), default=0) <= 1, per_cp
        assert max(per_driver.values(), default=0) <= 1, per_driver
        for cp in self.core.cps.values():
            if cp.session_id is not None:
                assert cp.session_id in self.core.sessions
                assert self.core.sessions[cp.session_id].cp_id == cp.id
        for s in live:
            assert self.core.cps[s.cp_id].session_id == s.id

    @invariant()
    def views_are_consistent(self) -> None:
        for v in self.core.cp_views():
            assert v.state in CP_STATES
            expect_connected = v.id in self.connected
            assert (v.state != "DISCONNECTED") == expect_connected
            if v.state != "SUPPLYING":
                assert v.driver_id is None and v.energy_kwh is None


CentralMachine.TestCase.settings = settings(
    max_examples=examples(250), stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestCentralMachine = CentralMachine.TestCase


# =============================================================================================
# history beyond memory (Central's database)
# =============================================================================================


def test_a_request_id_older_than_memory_is_still_a_repeat(tmp_path) -> None:
    # Only the last ended session stays in memory; the database remembers the rest, so a
    # request re-sent long after is recognised instead of breaking the request_id constraint.
    from evproto.daemons.central.store import Store

    store = Store(str(tmp_path / "central.db"))
    core = CentralCore(drivers={"D1", "D2"}, rules=Rules(remember_ended=1), history=store)
    for cp_id, (location, price) in CPS.items():
        store.apply(core.hello(cp_id, location, price, T0)[1])
        store.apply(core.monitor_connected(cp_id, T0))
    for n, driver in enumerate(["D1", "D2", "D1"]):
        fx = request(core, driver, "CP1", T0 + n * 10, rid=f"r{n}")
        sid = events(fx, AuthorizeCommand)[0].session_id
        store.apply(fx)
        store.apply(answer(core, "CP1", sid, T0 + n * 10 + 1, accepted=False, reason="busy"))
    assert "r0" not in core.request_ids  # forgotten by memory
    assert request(core, "D1", "CP1", T0 + 100, rid="r0") == []
    assert core.ignored["duplicate_request"] == 1
    with pytest.raises(RecordRefused, match="request id r0 already belongs to session 1 of D1 at CP1"):
        request(core, "D2", "CP2", T0 + 100, rid="r0")
    # A late report about a session memory forgot is known too: ignored, not refused.
    assert progress(core, "CP1", 1, "D1", T0 + 200, 0.1, 0.3) == []
    with pytest.raises(RecordRefused, match="session 1 is D1's, not D2's"):
        progress(core, "CP1", 1, "D2", T0 + 200, 0.1, 0.3)
    store.close()


# =============================================================================================
# restart grace
# =============================================================================================


def _restarted(rules: Rules = RULES) -> CentralCore:
    """A Central that has just started with CP1-CP3 known from its database, none connected yet."""
    core = CentralCore(
        cps=[CpRecord(id=c, location=loc, price_eur_kwh=p) for c, (loc, p) in CPS.items()],
        drivers=set(DRIVERS),
        rules=rules,
    )
    core.start(T0)
    return core


def test_a_request_for_a_known_cp_waits_for_its_monitor_after_a_restart() -> None:
    core = _restarted()
    fx = request(core, "D1", "CP1", T0 + 500)
    assert events(fx, AuthorizeCommand) == []  # the CP is not asked while it is away
    assert the_update(fx).status == "requested" and "waiting up to 15 s for CP1" in the_update(fx).message
    fx = core.monitor_connected("CP1", T0 + 3000)
    (cmd,) = events(fx, AuthorizeCommand)
    assert cmd.session_id == 1 and cmd.expires_ts_ms == T0 + 3000 + 70_000  # counted from when it was asked
    assert the_update(answer(core, "CP1", 1, T0 + 3100, accepted=True)).status == "authorized"


def test_a_held_request_is_denied_when_the_cp_does_not_come_back_in_time() -> None:
    core = _restarted()
    request(core, "D1", "CP2", T0 + 500)
    assert core.tick(T0 + 14_000) == []
    update = the_update(core.tick(T0 + 15_000))
    assert update.status == "denied" and update.reason == "cp_not_available"
    assert "did not reconnect within 15 s of Central's restart" in update.message
    # After the grace a disconnected CP is denied at once, as always.
    assert _denial(request(core, "D2", "CP3", T0 + 16_000)).reason == "cp_not_available"


def test_a_held_request_is_denied_if_the_cp_comes_back_out_of_service() -> None:
    core = _restarted()
    request(core, "D1", "CP1", T0 + 500)
    core.cps["CP1"].stopped = True  # stopped by an operator meanwhile
    fx = core.monitor_connected("CP1", T0 + 2000)
    assert events(fx, AuthorizeCommand) == []
    assert [u.status for u in events(fx, RequestUpdate)] == ["denied"]


def test_requests_waiting_for_an_answer_before_a_crash_are_asked_again_when_the_cp_is_back() -> None:
    session = SessionRecord(
        id=7,
        cp_id="CP1",
        driver_id="D1",
        request_id="r7",
        origin="driver",
        status=SessionStatus.REQUESTED,
        requested_ts_ms=T0 - 2000,
        price_eur_kwh=0.3,
        deadline_ts_ms=T0 + 8000,
    )
    core = CentralCore(
        cps=[CpRecord(id="CP1", location="x", price_eur_kwh=0.3)], drivers={"D1"}, sessions=[session], rules=RULES
    )
    core.start(T0)
    assert core.tick(T0 + 9000) == []  # not expired: its CP could not answer while Central was down
    (cmd,) = events(core.monitor_connected("CP1", T0 + 9500), AuthorizeCommand)
    assert cmd.session_id == 7


def test_a_late_start_for_a_refused_session_never_gives_a_driver_two_live_sessions(core: CentralCore) -> None:
    """Found by the state machine: D1 was refused at CP2 and asked at CP1; CP2 then reported
    a start for the refused session. Reopening it would have given D1 two live supplies."""
    fx = request(core, "D1", "CP2", T0)
    first = the_authorize(fx).session_id
    answer(core, "CP2", first, T0 + 1, accepted=False, reason="busy")
    second = the_authorize(request(core, "D1", "CP1", T0 + 2)).session_id
    started(core, "CP2", first, "D1", T0 + 3)
    live = [s for s in core.sessions.values() if s.driver_id == "D1"]
    assert [s.id for s in live] == [second]
    assert core.ignored["late_report"] >= 1


def test_revoking_a_cp_ends_its_supply_with_what_it_reported_and_shows_it_not_authenticated(core: CentralCore) -> None:
    sid = supplying(core, "D1", "CP1", T0)
    progress(core, "CP1", sid, "D1", T0 + 2000, 1.5, 0.30)
    fx = core.revoked("CP1", T0 + 3000)
    (ticket,) = events(fx, Ticket)
    assert (ticket.session_id, ticket.energy_kwh, ticket.end_reason) == (sid, 1.5, "key_revoked")
    assert view(core, "CP1").alerts == ("not_authenticated",)
    core.monitor_lost("CP1", False, "closed", T0 + 3001)
    connect(core, "CP1", T0 + 5000)
    assert view(core, "CP1").alerts == ()
