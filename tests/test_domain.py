"""The pure domain rules: CP state truth table, session lifecycle, the engine's ChargePoint.

Every table is walked pair by pair (STYLE.md convention 5) against an expected table
written here from the spec ("CP states", "Mechanics", "Resilience"), not copied from
the module. ChargePoints are driven into each phase through their public methods only;
time is passed in as epoch milliseconds.
"""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

from evproto.bus.events import encode_event
from evproto.domain.chargepoint import (
    CP_TABLE,
    AutoMode,
    ChargePoint,
    CpInput,
    Emit,
    Persist,
    Phase,
    Say,
)
from evproto.domain.cp import TRUTH_TABLE, CpFacts, cp_state
from evproto.domain.events import (
    AuthorizationAnswer,
    AuthorizeCommand,
    SupplyFinished,
    SupplyProgress,
    SupplyRequest,
    SupplyStarted,
)
from evproto.domain.session import (
    COMPLETED_REASONS,
    SESSION_TABLE,
    SessionInput,
    SessionStatus,
    finish_input,
    step,
)
from evproto.messages import CpState

# =============================================================================================
# CP state truth table
# =============================================================================================


def _spec_state(connected: bool, ok: bool, stopped: bool, supplying: bool) -> CpState:
    """The spec's table, written out independently of the module."""
    if not connected:
        return CpState.DISCONNECTED  # monitor down: whatever else
    if not ok:
        return CpState.BROKEN  # monitor up, engine KO or silent
    if stopped:
        return CpState.STOPPED
    if supplying:
        return CpState.SUPPLYING
    return CpState.ACTIVATED


ALL_FACTS = list(itertools.product((False, True), repeat=4))


@pytest.mark.parametrize(("connected", "ok", "stopped", "supplying"), ALL_FACTS)
def test_cp_state_truth_table(connected: bool, ok: bool, stopped: bool, supplying: bool) -> None:
    facts = CpFacts(monitor_connected=connected, engine_ok=ok, stopped=stopped, supplying=supplying)
    assert cp_state(facts) is _spec_state(connected, ok, stopped, supplying)


def test_cp_truth_table_has_all_sixteen_combinations() -> None:
    assert set(TRUTH_TABLE) == set(ALL_FACTS)
    assert len(TRUTH_TABLE) == 16


def test_monitor_down_is_disconnected_whatever_else() -> None:
    for ok, stopped, supplying in itertools.product((False, True), repeat=3):
        facts = CpFacts(monitor_connected=False, engine_ok=ok, stopped=stopped, supplying=supplying)
        assert cp_state(facts) is CpState.DISCONNECTED


def test_cp_facts_are_frozen_keyword_only() -> None:
    with pytest.raises(TypeError):
        CpFacts(True, True, False, False)  # type: ignore[misc]
    facts = CpFacts(monitor_connected=True, engine_ok=True, stopped=False, supplying=False)
    with pytest.raises(AttributeError):
        facts.stopped = True  # type: ignore[misc]


# =============================================================================================
# Session lifecycle table
# =============================================================================================

S = SessionStatus
SI = SessionInput
LIVE = (S.REQUESTED, S.AUTHORIZED, S.SUPPLYING)
TERMINAL = (S.COMPLETED, S.INTERRUPTED, S.DENIED)

#: (status, input) -> (next status or None for "ignored", ticket?), from the module docstring's diagram.
EXPECTED_SESSION: dict[tuple[SessionStatus, SessionInput], tuple[SessionStatus | None, bool]] = {
    (S.REQUESTED, SI.CP_ACCEPTED): (S.AUTHORIZED, False),
    (S.REQUESTED, SI.CP_REFUSED): (S.DENIED, False),
    (S.REQUESTED, SI.STARTED): (S.SUPPLYING, False),
    (S.REQUESTED, SI.PROGRESS): (S.SUPPLYING, False),
    (S.REQUESTED, SI.FINISHED_OK): (S.COMPLETED, True),
    (S.REQUESTED, SI.FINISHED_EARLY): (S.INTERRUPTED, True),
    (S.REQUESTED, SI.EXPIRED): (S.DENIED, False),
    (S.AUTHORIZED, SI.CP_ACCEPTED): (None, False),
    (S.AUTHORIZED, SI.CP_REFUSED): (S.INTERRUPTED, False),
    (S.AUTHORIZED, SI.STARTED): (S.SUPPLYING, False),
    (S.AUTHORIZED, SI.PROGRESS): (S.SUPPLYING, False),
    (S.AUTHORIZED, SI.FINISHED_OK): (S.COMPLETED, True),
    (S.AUTHORIZED, SI.FINISHED_EARLY): (S.INTERRUPTED, True),
    (S.AUTHORIZED, SI.EXPIRED): (S.INTERRUPTED, False),
    (S.SUPPLYING, SI.CP_ACCEPTED): (None, False),
    (S.SUPPLYING, SI.CP_REFUSED): (None, False),
    (S.SUPPLYING, SI.STARTED): (None, False),
    (S.SUPPLYING, SI.PROGRESS): (None, False),
    (S.SUPPLYING, SI.FINISHED_OK): (S.COMPLETED, True),
    (S.SUPPLYING, SI.FINISHED_EARLY): (S.INTERRUPTED, True),
    (S.SUPPLYING, SI.EXPIRED): (None, False),  # only the CP knows the energy: never expired
}
for _st in TERMINAL:
    for _inp in SessionInput:
        EXPECTED_SESSION[(_st, _inp)] = (None, False)


def test_session_table_is_complete() -> None:
    assert set(SESSION_TABLE) == set(itertools.product(SessionStatus, SessionInput))


@pytest.mark.parametrize(("status", "inp"), list(itertools.product(SessionStatus, SessionInput)), ids=str)
def test_session_table_pair(status: SessionStatus, inp: SessionInput) -> None:
    result = step(status, inp)
    assert (result.next, result.ticket) == EXPECTED_SESSION[(status, inp)]


@pytest.mark.parametrize("status", TERMINAL)
def test_terminal_states_ignore_everything(status: SessionStatus) -> None:
    assert not status.live
    for inp in SessionInput:
        result = step(status, inp)
        assert result.next is None and not result.ticket


def test_ticket_exactly_on_finish_transitions() -> None:
    for (status, inp), result in SESSION_TABLE.items():
        caused_by_finish = inp in (SI.FINISHED_OK, SI.FINISHED_EARLY)
        into_final = result.next in (S.COMPLETED, S.INTERRUPTED)
        assert result.ticket == (caused_by_finish and into_final and status.live), (status, inp)
        if result.ticket:
            assert result.next is (S.COMPLETED if inp is SI.FINISHED_OK else S.INTERRUPTED)


def test_live_property() -> None:
    assert {s for s in SessionStatus if s.live} == set(LIVE)


@pytest.mark.parametrize("reason", ["completed", "unplugged"])
def test_finish_input_ok_reasons(reason: str) -> None:
    assert finish_input(reason) is SI.FINISHED_OK


@pytest.mark.parametrize("reason", ["stopped", "fault", "monitor_lost", "power_loss", "", "Completed", "unknown"])
def test_finish_input_early_reasons(reason: str) -> None:
    assert finish_input(reason) is SI.FINISHED_EARLY


def test_completed_reasons_constant() -> None:
    assert COMPLETED_REASONS == {"completed", "unplugged"}


@settings(max_examples=examples(300), deadline=None)
@given(start=st.sampled_from(list(SessionStatus)), inputs=st.lists(st.sampled_from(list(SessionInput)), max_size=30))
def test_any_input_sequence_gives_at_most_one_ticket(start: SessionStatus, inputs: list[SessionInput]) -> None:
    status, tickets = start, 0
    for inp in inputs:
        result = step(status, inp)
        tickets += result.ticket
        if result.next is not None:
            status = result.next
    assert tickets <= 1
    if tickets:
        assert status in (S.COMPLETED, S.INTERRUPTED)


# =============================================================================================
# ChargePoint: helpers
# =============================================================================================

CP_ID = "CP1"
PRICE = 0.25
T0 = 1_000_000  # epoch ms of the first input in every scenario
EXPIRY_MS = 70_000  # AuthorizeCommand lifetime used here


def cmd(
    session_id: int = 1,
    *,
    now: int = T0,
    driver: str = "D1",
    price: float = PRICE,
    expires: int | None = None,
    energy: float | None = None,
    duration: float | None = None,
) -> AuthorizeCommand:
    return AuthorizeCommand(
        cp_id=CP_ID,
        session_id=session_id,
        driver_id=driver,
        request_id=f"r{session_id}",
        price_eur_kwh=price,
        expires_ts_ms=now + EXPIRY_MS if expires is None else expires,
        target_energy_kwh=energy,
        target_duration_s=duration,
        ts_ms=now,
    )


def emitted(fx: list, cls: type | None = None) -> list:
    return [e.event for e in fx if isinstance(e, Emit) and (cls is None or isinstance(e.event, cls))]


def kinds(fx: list) -> list[str]:
    """Effects as short names: Say, Persist, or the event type with its salient field."""
    out = []
    for e in fx:
        if isinstance(e, Say):
            out.append("Say")
        elif isinstance(e, Persist):
            out.append("Persist")
        else:
            assert isinstance(e, Emit), e
            ev = e.event
            if isinstance(ev, AuthorizationAnswer):
                out.append("Answer:ok" if ev.accepted else f"Answer:{ev.reason}")
            elif isinstance(ev, SupplyFinished):
                out.append(f"Finished:{ev.reason}")
            else:
                out.append(type(ev).__name__)
    return out


def idle_cp(**kw) -> ChargePoint:
    """Monitor up, Central reachable, healthy, idle."""
    cp = ChargePoint(cp_id=CP_ID, **kw)
    cp.monitor_connected(T0)
    cp.central_reachable(True, T0)
    return cp


def authorized_cp(**kw) -> ChargePoint:
    cp = idle_cp(**kw)
    fx = cp.authorize(cmd(1, now=T0 + 100), T0 + 100)
    assert kinds(fx)[0] == "Answer:ok"
    assert cp.phase is Phase.AUTHORIZED
    return cp


def supplying_cp(**kw) -> ChargePoint:
    cp = authorized_cp(**kw)
    cp.meter(1000.0, 0.0, T0 + 150)
    fx = cp.plug(T0 + 200)
    assert emitted(fx, SupplyStarted)
    cp.meter(1010.0, 7000.0, T0 + 300)
    assert cp.phase is Phase.SUPPLYING
    return cp


MAKE = {Phase.IDLE: idle_cp, Phase.AUTHORIZED: authorized_cp, Phase.SUPPLYING: supplying_cp}

NOW = T0 + 10_000  # when the walked input is applied (well before the authorisation expires)


def apply(cp: ChargePoint, inp: CpInput, now: int = NOW) -> list:
    """Apply ``inp`` through the public method, with plausible arguments."""
    if inp is CpInput.MONITOR_UP:
        return cp.monitor_connected(now)
    if inp is CpInput.MONITOR_DOWN:
        return cp.monitor_lost(now)
    if inp is CpInput.CENTRAL_UP:
        return cp.central_reachable(True, now)
    if inp is CpInput.CENTRAL_DOWN:
        return cp.central_reachable(False, now)
    if inp is CpInput.AUTHORIZE:
        # A new session: when one is already held, this is another driver's.
        return cp.authorize(cmd(2, now=now, driver="D2"), now)
    if inp is CpInput.CANCEL:
        return cp.cancel(1, now)
    if inp is CpInput.STOP:
        return cp.stop(now)
    if inp is CpInput.RESUME:
        return cp.resume(now)
    if inp is CpInput.KO:
        return cp.set_ko(now)
    if inp is CpInput.RECOVER:
        return cp.recover(now)
    if inp is CpInput.PLUG:
        return cp.plug(now)
    if inp is CpInput.UNPLUG:
        return cp.unplug(now)
    if inp is CpInput.METER:
        return cp.meter(1020.0, 7000.0, now)
    if inp is CpInput.TICK:
        return cp.tick(now)
    if inp is CpInput.MANUAL_REQUEST:
        return cp.manual_request("D9", "manual-1", now)
    raise AssertionError(inp)


#: Preparation so that a flag input actually changes something (the flag is off first).
PREPARE = {
    (Phase.IDLE, CpInput.MONITOR_UP): lambda cp: cp.monitor_lost(T0 + 500),
    (Phase.IDLE, CpInput.CENTRAL_UP): lambda cp: cp.central_reachable(False, T0 + 500),
    (Phase.IDLE, CpInput.RESUME): lambda cp: cp.stop(T0 + 500),
    (Phase.IDLE, CpInput.RECOVER): lambda cp: cp.set_ko(T0 + 500),
    (Phase.AUTHORIZED, CpInput.CENTRAL_UP): lambda cp: cp.central_reachable(False, T0 + 500),
    (Phase.SUPPLYING, CpInput.CENTRAL_UP): lambda cp: cp.central_reachable(False, T0 + 500),
}

I = CpInput  # noqa: E741
P = Phase
#: (phase, input) -> (phase after, effect kinds). Written from the spec and the module's docs.
EXPECTED_CP: dict[tuple[Phase, CpInput], tuple[Phase, list[str]]] = {
    (P.IDLE, I.MONITOR_UP): (P.IDLE, ["Say"]),
    (P.IDLE, I.MONITOR_DOWN): (P.IDLE, ["Say"]),
    (P.IDLE, I.CENTRAL_UP): (P.IDLE, ["Say"]),
    (P.IDLE, I.CENTRAL_DOWN): (P.IDLE, ["Say"]),
    (P.IDLE, I.AUTHORIZE): (P.AUTHORIZED, ["Answer:ok", "Say", "Persist"]),
    (P.IDLE, I.CANCEL): (P.IDLE, []),
    (P.IDLE, I.STOP): (P.IDLE, ["Say", "Persist"]),
    (P.IDLE, I.RESUME): (P.IDLE, ["Say", "Persist"]),
    (P.IDLE, I.KO): (P.IDLE, ["Say"]),
    (P.IDLE, I.RECOVER): (P.IDLE, ["Say"]),
    (P.IDLE, I.PLUG): (P.IDLE, ["Say"]),
    (P.IDLE, I.UNPLUG): (P.IDLE, []),
    (P.IDLE, I.METER): (P.IDLE, []),
    (P.IDLE, I.TICK): (P.IDLE, []),
    (P.IDLE, I.MANUAL_REQUEST): (P.IDLE, ["SupplyRequest", "Say"]),
    (P.AUTHORIZED, I.MONITOR_UP): (P.AUTHORIZED, []),
    (P.AUTHORIZED, I.MONITOR_DOWN): (P.IDLE, ["Say", "Answer:monitor_lost", "Say", "Persist"]),
    (P.AUTHORIZED, I.CENTRAL_UP): (P.AUTHORIZED, ["Say"]),
    (P.AUTHORIZED, I.CENTRAL_DOWN): (P.AUTHORIZED, ["Say"]),
    (P.AUTHORIZED, I.AUTHORIZE): (P.AUTHORIZED, ["Answer:busy"]),
    (P.AUTHORIZED, I.CANCEL): (P.IDLE, ["Say", "Persist"]),
    (P.AUTHORIZED, I.STOP): (P.IDLE, ["Say", "Persist", "Answer:stopped", "Say", "Persist"]),
    (P.AUTHORIZED, I.RESUME): (P.AUTHORIZED, []),
    (P.AUTHORIZED, I.KO): (P.IDLE, ["Say", "Answer:fault", "Say", "Persist"]),
    (P.AUTHORIZED, I.RECOVER): (P.AUTHORIZED, []),
    (P.AUTHORIZED, I.PLUG): (P.SUPPLYING, ["SupplyStarted", "Say", "Persist"]),
    (P.AUTHORIZED, I.UNPLUG): (P.AUTHORIZED, []),
    (P.AUTHORIZED, I.METER): (P.AUTHORIZED, []),
    (P.AUTHORIZED, I.TICK): (P.AUTHORIZED, []),
    (P.AUTHORIZED, I.MANUAL_REQUEST): (P.AUTHORIZED, ["Say"]),
    (P.SUPPLYING, I.MONITOR_UP): (P.SUPPLYING, []),
    (P.SUPPLYING, I.MONITOR_DOWN): (P.IDLE, ["Say", "Finished:monitor_lost", "Say", "Persist"]),
    (P.SUPPLYING, I.CENTRAL_UP): (P.SUPPLYING, ["Say"]),
    (P.SUPPLYING, I.CENTRAL_DOWN): (P.SUPPLYING, ["Say"]),
    (P.SUPPLYING, I.AUTHORIZE): (P.SUPPLYING, ["Answer:busy"]),
    (P.SUPPLYING, I.CANCEL): (P.SUPPLYING, []),
    (P.SUPPLYING, I.STOP): (P.IDLE, ["Say", "Persist", "Finished:stopped", "Say", "Persist"]),
    (P.SUPPLYING, I.RESUME): (P.SUPPLYING, []),
    (P.SUPPLYING, I.KO): (P.IDLE, ["Say", "Finished:fault", "Say", "Persist"]),
    (P.SUPPLYING, I.RECOVER): (P.SUPPLYING, []),
    (P.SUPPLYING, I.PLUG): (P.SUPPLYING, []),
    (P.SUPPLYING, I.UNPLUG): (P.IDLE, ["Finished:unplugged", "Say", "Persist"]),
    (P.SUPPLYING, I.METER): (P.SUPPLYING, []),
    (P.SUPPLYING, I.TICK): (P.SUPPLYING, ["SupplyProgress", "Persist"]),
    (P.SUPPLYING, I.MANUAL_REQUEST): (P.SUPPLYING, ["Say"]),
}


# =============================================================================================
# ChargePoint: the table walk
# =============================================================================================


def test_cp_table_is_complete_and_names_existing_actions() -> None:
    assert set(CP_TABLE) == set(itertools.product(Phase, CpInput))
    for (phase, inp), action in CP_TABLE.items():
        method = getattr(ChargePoint, "_a_" + action, None)
        assert callable(method), f"{phase}/{inp} names missing action _a_{action}"


def test_expected_table_covers_every_pair() -> None:
    assert set(EXPECTED_CP) == set(CP_TABLE)


@pytest.mark.parametrize(("phase", "inp"), list(itertools.product(Phase, CpInput)), ids=str)
def test_cp_table_pair(phase: Phase, inp: CpInput) -> None:
    cp = MAKE[phase]()
    assert cp.phase is phase
    prepare = PREPARE.get((phase, inp))
    if prepare is not None:
        prepare(cp)
    fx = apply(cp, inp)
    want_phase, want_kinds = EXPECTED_CP[(phase, inp)]
    assert cp.phase is want_phase
    assert kinds(fx) == want_kinds
    # Everything emitted is about this CP.
    for ev in emitted(fx):
        assert ev.cp_id == CP_ID
    # No supply is held in IDLE; one is held otherwise.
    assert (cp.supply is None) == (cp.phase is Phase.IDLE)


# =============================================================================================
# ChargePoint: scenarios
# =============================================================================================


def test_full_supply() -> None:
    cp = idle_cp()
    assert cp.available and cp.refusal() == ""
    fx = cp.authorize(cmd(7, now=T0 + 100, price=0.30), T0 + 100)
    assert emitted(fx) == [AuthorizationAnswer(cp_id=CP_ID, session_id=7, accepted=True, ts_ms=T0 + 100)]
    assert not cp.available and cp.refusal() == "busy"

    cp.meter(5000.0, 0.0, T0 + 150)  # the register before the vehicle is plugged in
    plug_at = T0 + 1000
    fx = cp.plug(plug_at)
    assert emitted(fx) == [
        SupplyStarted(cp_id=CP_ID, session_id=7, driver_id="D1", started_ts_ms=plug_at, ts_ms=plug_at)
    ]

    register = 5000.0
    increments = []
    progress: list[SupplyProgress] = []
    for i in range(1, 51):  # 5 s of 100 ms ticks, a meter reading before each tick
        now = plug_at + 100 * i
        inc = 7.5 + (i % 3)  # Wh per 100 ms
        register += inc
        increments.append(inc)
        assert cp.meter(register, 300_000.0, now) == []
        fx = cp.tick(now)
        progress += emitted(fx, SupplyProgress)
        if emitted(fx, SupplyProgress):
            assert any(isinstance(e, Persist) for e in fx)
    # Once per second: at plug + 1 s, 2 s, ... 5 s.
    assert [p.ts_ms for p in progress] == [plug_at + 1000 * k for k in range(1, 6)]
    assert [p.elapsed_s for p in progress] == [1.0, 2.0, 3.0, 4.0, 5.0]
    for k, p in enumerate(progress, start=1):
        energy_kwh = sum(increments[: 10 * k]) / 1000
        assert p.energy_kwh == pytest.approx(energy_kwh)
        assert p.amount_eur == pytest.approx(energy_kwh * 0.30)
        assert p.power_kw == pytest.approx(300.0)
        assert (p.session_id, p.driver_id, p.cp_id) == (7, "D1", CP_ID)

    end = plug_at + 5050
    fx = cp.unplug(end)
    (fin,) = emitted(fx, SupplyFinished)
    assert fin.reason == "unplugged"
    assert fin.energy_kwh == pytest.approx(sum(increments) / 1000)
    assert fin.amount_eur == pytest.approx(fin.energy_kwh * 0.30)
    assert fin.price_eur_kwh == 0.30
    assert (fin.session_id, fin.driver_id, fin.started_ts_ms, fin.ended_ts_ms) == (7, "D1", plug_at, end)
    assert Persist() in fx
    assert cp.phase is Phase.IDLE and cp.supply is None and cp.available


def test_authorize_refused_without_monitor() -> None:
    cp = ChargePoint(cp_id=CP_ID)  # never connected
    cp.central_reachable(True, T0)
    fx = cp.authorize(cmd(1), T0)
    assert emitted(fx) == [
        AuthorizationAnswer(cp_id=CP_ID, session_id=1, accepted=False, reason="no_monitor", ts_ms=T0)
    ]
    assert cp.phase is Phase.IDLE and cp.supply is None
    assert Persist() not in fx


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda cp: cp.monitor_lost(T0 + 1), "no_monitor"),
        (lambda cp: cp.set_ko(T0 + 1), "fault"),
        (lambda cp: cp.stop(T0 + 1), "stopped"),
        (lambda cp: cp.authorize(cmd(1, now=T0 + 1), T0 + 1), "busy"),
        (lambda cp: (cp.authorize(cmd(1, now=T0 + 1), T0 + 1), cp.plug(T0 + 2)), "busy"),
    ],
    ids=["monitor_down", "ko", "stopped", "busy_authorized", "busy_supplying"],
)
def test_authorize_refused(setup, reason: str) -> None:
    cp = idle_cp()
    setup(cp)
    phase_before, supply_before = cp.phase, cp.snapshot()
    fx = cp.authorize(cmd(2, now=T0 + 10, driver="D2"), T0 + 10)
    assert emitted(fx) == [AuthorizationAnswer(cp_id=CP_ID, session_id=2, accepted=False, reason=reason, ts_ms=T0 + 10)]
    assert cp.phase is phase_before and cp.snapshot() == supply_before
    assert Persist() not in fx


def test_refusal_order_monitor_first() -> None:
    cp = idle_cp()
    cp.stop(T0)
    cp.set_ko(T0)
    assert cp.refusal() == "fault"
    cp.monitor_lost(T0)
    assert cp.refusal() == "no_monitor"


def test_authorize_already_expired_command() -> None:
    cp = idle_cp()
    fx = cp.authorize(cmd(3, now=T0, expires=T0 + 5), T0 + 5)
    assert emitted(fx) == [
        AuthorizationAnswer(cp_id=CP_ID, session_id=3, accepted=False, reason="expired", ts_ms=T0 + 5)
    ]
    assert cp.phase is Phase.IDLE


@pytest.mark.parametrize("phase", [Phase.AUTHORIZED, Phase.SUPPLYING])
def test_repeated_authorize_same_session_answered_again(phase: Phase) -> None:
    cp = MAKE[phase]()
    before = cp.snapshot()
    fx = cp.authorize(cmd(1, now=T0 + 100), T0 + 5000)
    assert emitted(fx) == [AuthorizationAnswer(cp_id=CP_ID, session_id=1, accepted=True, ts_ms=T0 + 5000)]
    assert kinds(fx) == ["Answer:ok"]  # no Persist: nothing changed
    assert cp.phase is phase and cp.snapshot() == before


def test_authorization_expires_when_not_plugged() -> None:
    cp = idle_cp()
    cp.authorize(cmd(4, now=T0, expires=T0 + 60_000), T0)
    assert cp.tick(T0 + 59_999) == []
    assert cp.phase is Phase.AUTHORIZED
    fx = cp.tick(T0 + 60_000)
    assert emitted(fx) == [
        AuthorizationAnswer(cp_id=CP_ID, session_id=4, accepted=False, reason="not_plugged", ts_ms=T0 + 60_000)
    ]
    assert Persist() in fx
    assert cp.phase is Phase.IDLE and cp.supply is None and cp.available
    assert kinds(cp.plug(T0 + 60_001)) == ["Say"]  # too late: no supply to start


def test_cancel_other_session_is_ignored() -> None:
    cp = authorized_cp()
    assert cp.cancel(99, NOW) == []
    assert cp.phase is Phase.AUTHORIZED and cp.supply is not None and cp.supply.session_id == 1


def test_stop_during_supply() -> None:
    cp = supplying_cp()
    fx = cp.stop(NOW)
    (fin,) = emitted(fx, SupplyFinished)
    assert fin.reason == "stopped" and fin.energy_kwh == pytest.approx(0.010)
    assert cp.stopped and cp.phase is Phase.IDLE and not cp.available
    # Stays stopped until RESUME, whatever else happens.
    for later in (cp.monitor_lost, cp.monitor_connected, cp.set_ko, cp.recover, cp.tick, cp.plug, cp.unplug):
        later(NOW + 1)
        assert cp.stopped
    cp.central_reachable(False, NOW + 2)
    cp.central_reachable(True, NOW + 3)
    assert cp.stopped
    assert emitted(cp.authorize(cmd(5, now=NOW + 4), NOW + 4))[0].reason == "stopped"
    fx = cp.manual_request("D1", "m1", NOW + 5)
    assert emitted(fx) == [] and "stopped" in fx[0].text
    fx = cp.resume(NOW + 6)
    assert not cp.stopped and cp.available and Persist() in fx
    assert emitted(cp.authorize(cmd(6, now=NOW + 7), NOW + 7))[0].accepted


def test_ko_during_supply() -> None:
    cp = supplying_cp()
    fx = cp.set_ko(NOW)
    (fin,) = emitted(fx, SupplyFinished)
    assert fin.reason == "fault" and fin.energy_kwh == pytest.approx(0.010)
    assert cp.ko and cp.phase is Phase.IDLE
    assert emitted(cp.authorize(cmd(5, now=NOW + 1), NOW + 1))[0].reason == "fault"
    cp.recover(NOW + 2)
    assert cp.available


def test_monitor_lost_during_supply_refuses_everything_until_back() -> None:
    cp = supplying_cp()
    fx = cp.monitor_lost(NOW)
    (fin,) = emitted(fx, SupplyFinished)
    assert fin.reason == "monitor_lost" and fin.energy_kwh == pytest.approx(0.010)
    assert cp.phase is Phase.IDLE and not cp.monitor_up
    for k in range(3):
        now = NOW + 100 * (k + 1)
        ans = emitted(cp.authorize(cmd(10 + k, now=now), now))
        assert [(a.accepted, a.reason) for a in ans] == [(False, "no_monitor")]
        fx = cp.manual_request("D1", f"m{k}", now)
        assert emitted(fx) == []  # not even a manual supply (spec, Resilience)
        cp.resume(now)
        cp.recover(now)
        cp.central_reachable(True, now)
    assert cp.phase is Phase.IDLE
    cp.monitor_connected(NOW + 1000)
    assert emitted(cp.authorize(cmd(20, now=NOW + 1000), NOW + 1000))[0].accepted


def test_unplug_and_plug_outside_a_supply_start_nothing() -> None:
    cp = idle_cp()
    assert emitted(cp.plug(NOW)) == [] and cp.phase is Phase.IDLE
    assert cp.unplug(NOW) == []


# -- metering --------------------------------------------------------------------------------


def test_meter_reset_is_counted_once() -> None:
    cp = authorized_cp()
    cp.meter(100.0, 0.0, T0 + 150)
    cp.plug(T0 + 200)
    cp.meter(200.0, 1.0, T0 + 300)  # +100
    fx = cp.meter(50.0, 1.0, T0 + 400)  # the meter reset: adds nothing
    assert [e.level for e in fx if isinstance(e, Say)] == ["warning"]
    assert cp.meter_resets == 1
    cp.meter(80.0, 1.0, T0 + 500)  # +30 from the new base
    cp.meter(80.0, 1.0, T0 + 600)  # +0
    (fin,) = emitted(cp.unplug(T0 + 700), SupplyFinished)
    assert fin.energy_kwh == pytest.approx(0.130)


def test_meter_readings_outside_a_supply_add_nothing() -> None:
    cp = idle_cp()
    cp.meter(100.0, 0.0, T0)
    cp.meter(500.0, 0.0, T0 + 1)
    cp.authorize(cmd(1, now=T0 + 2), T0 + 2)
    cp.meter(900.0, 0.0, T0 + 3)  # authorised, not plugged: not this supply's energy
    cp.plug(T0 + 4)
    cp.meter(950.0, 0.0, T0 + 1004)  # a second later
    (fin,) = emitted(cp.unplug(T0 + 1005), SupplyFinished)
    assert fin.energy_kwh == pytest.approx(0.050)


#: A time the event schemas accept (T0 is not an epoch time), for tests that encode what is emitted.
EPOCH_T0 = 1_800_000_000_000


def supplying_at(t0: int, **kw) -> ChargePoint:
    """A supply started at ``t0`` + 200 that has metered 10 Wh by ``t0`` + 300."""
    cp = ChargePoint(cp_id=CP_ID, **kw)
    cp.monitor_connected(t0)
    cp.central_reachable(True, t0)
    cp.authorize(cmd(1, now=t0 + 100), t0 + 100)
    cp.meter(1000.0, 0.0, t0 + 150)
    cp.plug(t0 + 200)
    cp.meter(1010.0, 7000.0, t0 + 300)
    return cp


def test_a_register_jump_beyond_what_any_charger_delivers_adds_nothing() -> None:
    t0 = EPOCH_T0
    cp = supplying_at(t0)
    fx = cp.meter(5_000_000.0, 7000.0, t0 + 1300)  # 5 MWh in a second: a glitch or a swapped meter
    assert [e.level for e in fx if isinstance(e, Say)] == ["warning"] and cp.meter_jumps == 1
    assert cp.supply.energy_wh == pytest.approx(10.0)
    cp.meter(5_000_002.0, 7000.0, t0 + 2300)  # counting on from the new register
    assert cp.supply.energy_wh == pytest.approx(12.0)
    # What the CP reports stays within the schemas: its own writer never refuses it.
    for ev in emitted(cp.tick(t0 + 2400)) + emitted(ChargePoint(cp_id=CP_ID).restore(cp.snapshot(), t0 + 9000)):
        encode_event(ev)


def test_a_jump_after_a_quiet_hour_is_a_jump_too() -> None:
    cp = supplying_cp()
    cp.meter(1010.0, 0.0, T0 + 3_600_000)  # an hour plugged in, nothing drawn
    cp.meter(3_000_000.0, 0.0, T0 + 3_601_000)  # 3 MWh in the next second
    assert cp.supply.energy_wh == pytest.approx(10.0) and cp.meter_jumps == 1


@settings(max_examples=examples(200), deadline=None)
@given(
    readings=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=1e9, allow_nan=False), st.integers(min_value=0, max_value=2000)),
        max_size=40,
    )
)
def test_whatever_the_meter_reads_every_event_encodes(readings: list[tuple[float, int]]) -> None:
    cp = supplying_at(EPOCH_T0)
    t = EPOCH_T0 + 300
    for value, dt in readings:
        t += dt
        for ev in emitted(cp.meter(value, 7000.0, t)) + emitted(cp.tick(t)):
            encode_event(ev)
    for ev in emitted(ChargePoint(cp_id=CP_ID).restore(_through_json(cp.snapshot()), t + 5000)) + emitted(
        cp.unplug(t + 1)
    ):
        encode_event(ev)


def test_an_offline_supply_reports_only_its_end_and_every_event_encodes() -> None:
    t0 = EPOCH_T0
    cp = supplying_at(t0, offline_supply=True)
    cp.unplug(t0 + 1000)  # Central taught the CP its price
    cp.central_reachable(False, t0 + 2000)
    fx = cp.manual_request("D7", "m1", t0 + 3000)
    fx += cp.meter(2000.0, 0.0, t0 + 3100)
    fx += cp.plug(t0 + 3200)
    for i in range(1, 6):
        fx += cp.meter(2000.0 + 5 * i, 7000.0, t0 + 3200 + 1000 * i) + cp.tick(t0 + 3250 + 1000 * i)
    assert cp.snapshot()["supply"]["energy_wh"] == pytest.approx(25.0)  # persisted as it goes
    fx += cp.unplug(t0 + 9000)
    (fin,) = emitted(fx)  # no start or progress for a session Central has not numbered
    assert isinstance(fin, SupplyFinished) and fin.offline and fin.session_id == 0
    assert fin.energy_kwh == pytest.approx(0.025)
    encode_event(fin)


register_values = st.floats(min_value=0.0, max_value=1e7, allow_nan=False, allow_infinity=False)


@settings(max_examples=examples(300), deadline=None)
@given(
    before=st.lists(register_values, max_size=4),
    during=st.lists(register_values, max_size=40),
    price=st.floats(min_value=0.0, max_value=5.0),
)
def test_meter_energy_is_sum_of_positive_increments(before: list[float], during: list[float], price: float) -> None:
    cp = idle_cp()
    t = T0
    for value in before:
        t += 10
        cp.meter(value, 0.0, t)
    t += 10
    cp.authorize(cmd(1, now=t, price=price, expires=t + 10**9), t)
    t += 10
    cp.plug(t)
    last = before[-1] if before else None
    expected = 0.0
    for value in during:
        t += 3 * 3_600_000  # three hours: MAX_POWER_KW delivers more than any increment drawn here
        cp.meter(value, 0.0, t)
        if last is not None and value > last:
            expected += value - last
        last = value
        assert cp.supply is not None
        assert cp.supply.energy_wh >= 0.0
        assert cp.supply.energy_wh == pytest.approx(expected, rel=1e-9, abs=1e-6)
    (fin,) = emitted(cp.unplug(t + 10), SupplyFinished)
    assert fin.energy_kwh >= 0.0
    assert fin.energy_kwh == pytest.approx(expected / 1000, rel=1e-9, abs=1e-9)
    assert fin.amount_eur == pytest.approx(fin.energy_kwh * price, rel=1e-9, abs=1e-9)


# -- auto mode -------------------------------------------------------------------------------


def _tick_until(cp: ChargePoint, start: int, stop: int, step_ms: int = 100) -> list[tuple[int, list]]:
    out = []
    for now in range(start, stop + 1, step_ms):
        fx = cp.tick(now)
        if fx:
            out.append((now, fx))
    return out


def test_auto_mode_plugs_after_delay_and_ends_after_default_duration() -> None:
    cp = idle_cp(auto=AutoMode(plug_delay_s=1.5, default_duration_s=10.0))
    cp.authorize(cmd(1, now=T0), T0)
    assert cp.tick(T0 + 1499) == [] and cp.phase is Phase.AUTHORIZED
    fx = cp.tick(T0 + 1500)
    assert emitted(fx) == [
        SupplyStarted(cp_id=CP_ID, session_id=1, driver_id="D1", started_ts_ms=T0 + 1500, ts_ms=T0 + 1500)
    ]
    assert cp.phase is Phase.SUPPLYING and Persist() in fx
    fx = cp.tick(T0 + 1500 + 9_999)
    assert emitted(fx, SupplyFinished) == []
    fx = cp.tick(T0 + 1500 + 10_000)
    (fin,) = emitted(fx, SupplyFinished)
    assert fin.reason == "completed" and fin.started_ts_ms == T0 + 1500
    assert cp.phase is Phase.IDLE


def test_auto_mode_request_duration_wins_over_default() -> None:
    cp = idle_cp(auto=AutoMode(plug_delay_s=1.0, default_duration_s=10.0))
    cp.authorize(cmd(1, now=T0, duration=3.0), T0)
    events = _tick_until(cp, T0 + 100, T0 + 20_000)
    finished = [(now, ev) for now, fx in events for ev in emitted(fx, SupplyFinished)]
    assert [(now, ev.reason) for now, ev in finished] == [(T0 + 1000 + 3000, "completed")]


def test_auto_mode_request_energy_target() -> None:
    cp = idle_cp(auto=AutoMode(plug_delay_s=1.0, default_duration_s=10.0))
    cp.authorize(cmd(1, now=T0, energy=0.05), T0)  # 50 Wh
    cp.meter(0.0, 0.0, T0)
    cp.tick(T0 + 1000)
    assert cp.phase is Phase.SUPPLYING
    register = 0.0
    end = None
    for i in range(1, 200):  # +2 Wh each 100 ms: 50 Wh after 2.5 s; the default 10 s must not apply
        now = T0 + 1000 + 100 * i
        register += 2.0
        cp.meter(register, 72_000.0, now)
        fin = emitted(cp.tick(now), SupplyFinished)
        if fin:
            end = (now, fin[0])
            break
    assert end is not None
    now, fin = end
    assert now == T0 + 1000 + 2500
    assert fin.reason == "completed" and fin.energy_kwh == pytest.approx(0.05)


def test_without_auto_mode_nothing_plugs_or_ends_by_itself() -> None:
    cp = idle_cp()
    cp.authorize(cmd(1, now=T0), T0)
    for now in range(T0 + 100, T0 + EXPIRY_MS, 1000):
        assert cp.tick(now) == []
    cp.authorize(cmd(1, now=T0), T0)  # already held: same answer, no state change
    cp.plug(T0 + 1000)
    for now in range(T0 + 1100, T0 + 100_000, 700):
        assert emitted(cp.tick(now), SupplyFinished) == []
    assert cp.phase is Phase.SUPPLYING


# -- manual requests -------------------------------------------------------------------------


def test_manual_request_when_available_and_central_reachable() -> None:
    cp = idle_cp()
    fx = cp.manual_request("D7", "req-7", NOW)
    assert emitted(fx) == [SupplyRequest(request_id="req-7", driver_id="D7", cp_id=CP_ID, ts_ms=NOW, origin="cp")]
    assert cp.phase is Phase.IDLE  # Central decides; the CP waits for an AuthorizeCommand


@pytest.mark.parametrize(
    "setup",
    [
        lambda cp: cp.central_reachable(False, T0 + 1),
        lambda cp: cp.monitor_lost(T0 + 1),
        lambda cp: cp.set_ko(T0 + 1),
        lambda cp: cp.stop(T0 + 1),
        lambda cp: cp.authorize(cmd(1, now=T0 + 1), T0 + 1),
        lambda cp: (cp.authorize(cmd(1, now=T0 + 1), T0 + 1), cp.plug(T0 + 2)),
    ],
    ids=["central_down", "monitor_down", "ko", "stopped", "authorized", "supplying"],
)
def test_manual_request_refused(setup) -> None:
    cp = idle_cp()
    setup(cp)
    fx = cp.manual_request("D7", "req-7", NOW)
    assert emitted(fx) == []
    assert [type(e) for e in fx] == [Say] and fx[0].level == "warning"


def test_manual_request_refused_when_central_never_reached() -> None:
    cp = ChargePoint(cp_id=CP_ID)
    cp.monitor_connected(T0)
    assert emitted(cp.manual_request("D7", "r", NOW)) == []


def test_central_never_heard_after_the_start_is_said_once() -> None:
    cp = ChargePoint(cp_id=CP_ID)
    assert cp.central_up is None  # too early to say
    fx = cp.central_reachable(False, T0)
    assert [e.text for e in fx if isinstance(e, Say)] == ["cannot reach Central: no new supplies until it is back"]
    assert cp.central_reachable(False, T0 + 1000) == []
    assert [e.text for e in cp.central_reachable(True, T0 + 2000) if isinstance(e, Say)] == ["Central reachable"]


# -- snapshot / restore ----------------------------------------------------------------------


def _through_json(snap: dict) -> dict:
    return json.loads(json.dumps(snap))


@pytest.mark.parametrize("stopped", [False, True])
def test_snapshot_restore_round_trip_idle(stopped: bool) -> None:
    cp = idle_cp()
    cp.meter(1234.5, 0.0, T0)
    if stopped:
        cp.stop(T0)
    snap = _through_json(cp.snapshot())
    fresh = ChargePoint(cp_id=CP_ID)
    assert fresh.restore(snap, T0 + 5000) == []
    assert fresh.snapshot() == cp.snapshot()
    assert fresh.stopped is stopped and fresh.meter_energy_wh == 1234.5


def test_snapshot_is_json_able_in_every_phase() -> None:
    for make in MAKE.values():
        cp = make()
        assert _through_json(cp.snapshot()) == cp.snapshot()


def test_restore_supplying_reports_power_loss_with_persisted_energy() -> None:
    cp = authorized_cp()
    cp.meter(0.0, 0.0, T0 + 150)
    cp.plug(T0 + 200)
    cp.meter(40.0, 1.0, T0 + 1100)
    fx = cp.tick(T0 + 1200)  # progress: persisted with 40 Wh
    assert Persist() in fx
    snap = _through_json(cp.snapshot())
    cp.meter(90.0, 1.0, T0 + 1300)  # not persisted before the crash
    fresh = ChargePoint(cp_id=CP_ID)
    fx = fresh.restore(snap, T0 + 60_000)
    (fin,) = emitted(fx)
    assert isinstance(fin, SupplyFinished)
    assert fin.reason == "power_loss"
    assert fin.energy_kwh == pytest.approx(0.040)
    assert fin.amount_eur == pytest.approx(0.040 * PRICE)
    # It ended when its energy was last read, not when the engine came back a minute later.
    assert (fin.session_id, fin.driver_id, fin.started_ts_ms, fin.ended_ts_ms) == (1, "D1", T0 + 200, T0 + 1100)
    assert fin.ts_ms == T0 + 60_000  # reported now
    assert Persist() in fx
    assert fresh.phase is Phase.IDLE and fresh.supply is None
    assert fresh.snapshot()["supply"] is None


def test_restore_of_a_snapshot_without_reading_times_ends_at_the_last_progress() -> None:
    """State files written before readings were timed: the last progress report is the best known end."""
    cp = supplying_cp()
    cp.tick(T0 + 1400)
    snap = _through_json(cp.snapshot())
    del snap["supply"]["last_reading_ts_ms"]
    (fin,) = emitted(ChargePoint(cp_id=CP_ID).restore(snap, T0 + 60_000), SupplyFinished)
    assert fin.ended_ts_ms == T0 + 1400


def test_restore_right_after_the_plug_in_ends_when_it_started() -> None:
    cp = authorized_cp()
    cp.plug(T0 + 200)
    (fin,) = emitted(ChargePoint(cp_id=CP_ID).restore(_through_json(cp.snapshot()), T0 + 60_000), SupplyFinished)
    assert fin.ended_ts_ms == fin.started_ts_ms == T0 + 200 and fin.energy_kwh == 0


def test_restore_authorized_withdraws_with_power_loss() -> None:
    cp = authorized_cp()
    snap = _through_json(cp.snapshot())
    fresh = ChargePoint(cp_id=CP_ID)
    fx = fresh.restore(snap, T0 + 30_000)
    assert emitted(fx) == [
        AuthorizationAnswer(cp_id=CP_ID, session_id=1, accepted=False, reason="power_loss", ts_ms=T0 + 30_000)
    ]
    assert Persist() in fx
    assert fresh.phase is Phase.IDLE and fresh.supply is None


def test_restore_keeps_stopped_flag_of_a_supplying_snapshot() -> None:
    cp = supplying_cp()
    snap = cp.snapshot()
    snap = dict(snap, stopped=True)  # written just as STOP arrived
    fresh = ChargePoint(cp_id=CP_ID)
    fresh.restore(_through_json(snap), NOW)
    assert fresh.stopped


# -- Persist when durable state changes ------------------------------------------------------


def _durable(cp: ChargePoint) -> tuple:
    """The snapshot minus the meter figures, which are persisted with each progress report."""
    s = cp.snapshot()
    sup = s["supply"]
    key = None
    if sup is not None:
        key = tuple(
            sorted(
                (k, v)
                for k, v in sup.items()
                if k not in ("energy_wh", "power_w", "last_progress_ts_ms", "last_reading_ts_ms")
            )
        )
    return (s["stopped"], s["phase"], key)


ops = st.sampled_from(
    [
        "monitor_up",
        "monitor_down",
        "central_up",
        "central_down",
        "authorize",
        "authorize_other",
        "cancel",
        "stop",
        "resume",
        "ko",
        "recover",
        "plug",
        "unplug",
        "meter",
        "tick",
        "manual",
    ]
)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(st.tuples(ops, st.integers(min_value=0, max_value=5000)), max_size=40), auto=st.booleans())
def test_persist_whenever_durable_state_changes(script: list[tuple[str, int]], auto: bool) -> None:
    cp = ChargePoint(cp_id=CP_ID, auto=AutoMode(plug_delay_s=1.0, default_duration_s=5.0) if auto else None)
    t = T0
    register = 0.0
    session = 0
    finished_sessions: set[int] = set()
    for op, dt in script:
        t += dt
        before = _durable(cp)
        if op == "monitor_up":
            fx = cp.monitor_connected(t)
        elif op == "monitor_down":
            fx = cp.monitor_lost(t)
        elif op == "central_up":
            fx = cp.central_reachable(True, t)
        elif op == "central_down":
            fx = cp.central_reachable(False, t)
        elif op == "authorize":
            session += 1
            fx = cp.authorize(cmd(session, now=t, expires=t + 20_000), t)
        elif op == "authorize_other":
            fx = cp.authorize(cmd(session, now=t, expires=t + 20_000), t)  # a repeat of the last one
        elif op == "cancel":
            fx = cp.cancel(session, t)
        elif op == "stop":
            fx = cp.stop(t)
        elif op == "resume":
            fx = cp.resume(t)
        elif op == "ko":
            fx = cp.set_ko(t)
        elif op == "recover":
            fx = cp.recover(t)
        elif op == "plug":
            fx = cp.plug(t)
        elif op == "unplug":
            fx = cp.unplug(t)
        elif op == "meter":
            register += dt / 100
            fx = cp.meter(register, 1000.0, t)
        elif op == "tick":
            fx = cp.tick(t)
        else:
            fx = cp.manual_request("D1", f"m{t}", t)
        if _durable(cp) != before:
            assert Persist() in fx, (op, before, _durable(cp), fx)
        # Invariants of the phase.
        assert (cp.supply is None) == (cp.phase is Phase.IDLE)
        if cp.phase is not Phase.IDLE:
            assert cp.monitor_up and not cp.ko and not cp.stopped
        for ev in emitted(fx, SupplyFinished):
            assert ev.session_id not in finished_sessions  # one final report per supply
            finished_sessions.add(ev.session_id)
            assert ev.energy_kwh >= 0


def test_the_session_table_in_the_docs_is_the_code_s() -> None:
    from pathlib import Path

    from evproto.domain.session import render_markdown

    docs = (Path(__file__).resolve().parent.parent / "docs" / "central.md").read_text(encoding="utf-8")
    assert render_markdown() in docs, "docs/central.md: paste evproto.domain.session.render_markdown() again"


def test_the_charge_point_table_in_the_docs_is_the_code_s() -> None:
    from pathlib import Path

    from evproto.domain.chargepoint import render_markdown

    docs = (Path(__file__).resolve().parent.parent / "docs" / "resilience.md").read_text(encoding="utf-8")
    assert render_markdown() in docs, "docs/resilience.md: paste evproto.domain.chargepoint.render_markdown() again"
