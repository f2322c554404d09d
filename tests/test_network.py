"""End to end: real Central, engines, monitors and drivers over the real embedded broker."""

from __future__ import annotations

import collections

import pytest
from netharness import KafkaDriver, Network, wait_for

from evproto.domain.events import DriverTelemetry, RequestUpdate, Ticket

pytestmark = pytest.mark.slow


def _started_supply(net: Network, driver: KafkaDriver, cp_id: str, engine) -> str:
    """Request at ``cp_id``, wait for authorisation, press the engine's plug key."""
    rid = driver.request(cp_id)
    driver.wait_status(rid, "authorized")
    engine.send("p")
    net.wait_state(cp_id, "SUPPLYING")
    return rid


def test_unattended_network_completes_supplies_with_consistent_tickets(net: Network) -> None:
    net.start_central("D001", "D002")
    prices = {"CP001": 0.30, "CP002": 0.42, "CP003": 0.51}
    for cp_id, price in prices.items():
        net.start_cp(cp_id, price=price, auto=True, engine_args=("--plug-delay-s", "0.5", "--time-scale", "60"))
    for cp_id in prices:
        net.wait_state(cp_id, "ACTIVATED")
    net.start_driver(
        "D001", "CP001 3s\nCP002 3s\nCP003 3s\n# a comment\n\nCP001 3s\n", "--pause-s", "0.5", "--exit-when-done"
    )
    net.start_driver("D002", "CP003 3s\nCP002 3s\nCP001 3s\n", "--pause-s", "0.5", "--exit-when-done")

    def tickets() -> list[dict]:
        return [
            s for s in net.get("/api/v1/sessions") if s["status"] in ("completed", "interrupted") and s["started_at"]
        ]

    wait_for(lambda: len(tickets()) >= 5, "at least 5 supplies with tickets", timeout_s=90)
    sessions = tickets()
    for s in sessions:
        assert s["energy_kwh"] > 0
        assert s["amount_eur"] == pytest.approx(s["energy_kwh"] * prices[s["cp_id"]], rel=1e-9)
    # The drivers' own tickets agree with Central, and with the last telemetry they saw.
    for driver_id in ("D001", "D002"):
        reader = KafkaDriver(net, driver_id)
        wait_for(lambda: any(isinstance(e, Ticket) for e in reader.events()), f"{driver_id}'s tickets")
        events = reader.events()
        by_session = {t.session_id: t for t in events if isinstance(t, Ticket)}
        assert len(by_session) == len([t for t in events if isinstance(t, Ticket)]), "duplicate ticket"
        last_telemetry = {e.session_id: e for e in events if isinstance(e, DriverTelemetry)}
        for sid, ticket in by_session.items():
            central = next(s for s in sessions + net.get("/api/v1/sessions") if s["id"] == sid)
            assert ticket.energy_kwh == pytest.approx(central["energy_kwh"])
            assert ticket.amount_eur == pytest.approx(ticket.energy_kwh * ticket.price_eur_kwh, rel=1e-9)
            if sid in last_telemetry:
                assert last_telemetry[sid].energy_kwh <= ticket.energy_kwh + 1e-9
    # Every CP is idle again once the drivers are done.
    for cp_id in prices:
        net.wait_state(cp_id, "ACTIVATED")


def test_denials_for_unknown_driver_and_busy_cp(net: Network) -> None:
    net.start_central("D001", "D002")
    engine, _ = net.start_cp("CP001")
    net.wait_state("CP001", "ACTIVATED")
    stranger = KafkaDriver(net, "NOBODY")
    rid = stranger.request("CP001")
    denial = stranger.wait_status(rid, "denied")
    assert denial.reason == "unknown_driver" and "not registered" in denial.message

    first, second = KafkaDriver(net, "D001"), KafkaDriver(net, "D002")
    first.wait_status(first.request("CP001"), "authorized")
    rid = second.request("CP001")
    denial = second.wait_status(rid, "denied")
    assert denial.reason == "cp_busy"
    unknown_cp = second.wait_status(second.request("CP999"), "denied")
    assert unknown_cp.reason == "unknown_cp"


def test_stop_during_supply_gives_a_ticket_and_resume_reactivates(net: Network) -> None:
    central = net.start_central("D001")
    engine, _ = net.start_cp("CP001", price=0.4)
    net.wait_state("CP001", "ACTIVATED")
    driver = KafkaDriver(net, "D001")
    rid = _started_supply(net, driver, "CP001", engine)
    wait_for(lambda: any(isinstance(e, DriverTelemetry) for e in driver.events()), "telemetry at the driver")
    status, body = net.post("/api/v1/cps/CP001/stop")
    assert (status, body) == (200, {"ok": True, "cps": ["CP001"]})
    end = driver.wait_status(rid, "interrupted")
    assert end.reason == "stopped"
    (ticket,) = driver.tickets()
    assert ticket.end_reason == "stopped" and ticket.status == "interrupted" and ticket.energy_kwh > 0
    net.wait_state("CP001", "STOPPED")
    # A stopped CP refuses new supplies.
    denied = driver.wait_status(driver.request("CP001"), "denied")
    assert denied.reason == "cp_not_available"
    assert net.post("/api/v1/cps/CP001/resume") == (200, {"ok": True, "cps": ["CP001"]})
    net.wait_state("CP001", "ACTIVATED")
    # The panel's commands also work on Central's stdin when it has no terminal.
    central.send("s all")
    net.wait_state("CP001", "STOPPED")
    central.send("r CP001")
    net.wait_state("CP001", "ACTIVATED")


def test_engine_ko_during_supply_breaks_the_cp_and_tells_the_driver(net: Network) -> None:
    net.start_central("D001")
    engine, _ = net.start_cp("CP001")
    net.wait_state("CP001", "ACTIVATED")
    driver = KafkaDriver(net, "D001")
    rid = _started_supply(net, driver, "CP001", engine)
    engine.send("k")
    net.wait_state("CP001", "BROKEN", timeout_s=10)
    end = driver.wait_status(rid, "interrupted")
    assert end.reason == "fault"
    (ticket,) = driver.tickets()
    assert ticket.end_reason == "fault"
    assert any(isinstance(u, RequestUpdate) and u.reason in ("cp_fault", "fault") for u in driver.updates(rid))
    engine.send("r")
    net.wait_state("CP001", "ACTIVATED", timeout_s=10)


def test_central_restart_shows_known_cps_disconnected_until_their_monitor_reconnects(net: Network) -> None:
    central = net.start_central("D001")
    net.start_cp("CP001")
    net.wait_state("CP001", "ACTIVATED")
    central.popen.terminate()
    central.popen.wait(10)
    net.procs.remove(central)
    # Restarted without its monitors being able to connect (the new Central listens on a new port).
    net.start_central()
    states = collections.Counter(c["state"] for c in net.get("/api/v1/cps"))
    assert states == {"DISCONNECTED": 1}
