"""Crashes, one per case of the spec's Resilience section: real processes, real signals."""

from __future__ import annotations

import json
import os
import signal

import pytest
from netharness import KafkaDriver, Network, wait_for

from evproto.domain.events import DriverTelemetry, RequestUpdate, Ticket


@pytest.fixture
def net(secure_net: Network) -> Network:
    """The crash cases run on release 2's network: authenticated monitors, sealed records
    (a killed engine or monitor must come back to the keys it had, or get new ones)."""
    return secure_net


pytestmark = pytest.mark.slow


def engine_state(net: Network, cp_id: str) -> dict:
    with open(os.path.join(net.tmp, f"state-{cp_id}", "engine-state.json"), encoding="utf-8") as fh:
        return json.load(fh)


def ledger(net: Network, cp_id: str) -> list[dict]:
    """What the engine itself recorded as finished (its state file's ledger)."""
    return engine_state(net, cp_id).get("finished", [])


def supplying(net: Network, driver: KafkaDriver, cp_id: str, engine) -> str:
    rid = driver.request(cp_id)
    driver.wait_status(rid, "authorized")
    engine.send("p")
    net.wait_state(cp_id, "SUPPLYING")
    wait_for(lambda: any(u.status == "supplying" for u in driver.updates(rid)), "the driver to see the supply")
    wait_for(
        lambda: any(isinstance(e, DriverTelemetry) and e.energy_kwh > 0 for e in driver.events()), "energy to flow"
    )
    return rid


def test_monitor_killed_ends_the_supply_and_the_cp_refuses_everything_until_it_is_back(net: Network) -> None:
    net.start_central("D001", "D002")
    engine, monitor = net.start_cp("CP001")
    net.wait_state("CP001", "ACTIVATED")
    driver = KafkaDriver(net, "D001")
    rid = supplying(net, driver, "CP001", engine)

    net.kill(monitor)
    net.wait_state("CP001", "DISCONNECTED", timeout_s=10)
    end = driver.wait_status(rid, "interrupted")
    assert end.reason == "monitor_lost"
    (ticket,) = driver.tickets()
    assert ticket.end_reason == "monitor_lost" and ticket.energy_kwh > 0
    # No supply at all while the monitor is away: not from Central, not from the CP's own menu.
    assert (
        KafkaDriver(net, "D002").wait_status(KafkaDriver(net, "D002").request("CP001"), "denied").reason
        == "cp_not_available"
    )
    engine.send("m D002")
    wait_for(lambda: net.log_has(engine, "manual supply for D002 refused: no_monitor"), "the engine to refuse")

    net.restart(monitor)
    net.wait_state("CP001", "ACTIVATED", timeout_s=15)


def test_engine_killed_breaks_the_cp_and_its_restart_bills_the_energy_delivered_once(net: Network) -> None:
    net.start_central("D001")
    engine, _ = net.start_cp("CP001", engine_args=("--time-scale", "60"))
    net.wait_state("CP001", "ACTIVATED")
    driver = KafkaDriver(net, "D001")
    rid = supplying(net, driver, "CP001", engine)
    wait_for(lambda: any(getattr(e, "energy_kwh", 0) > 0.3 for e in driver.events()), "some energy delivered")

    net.kill(engine)
    net.wait_state("CP001", "BROKEN", timeout_s=10)
    told = wait_for(
        lambda: next((u for u in driver.updates(rid) if u.reason == "cp_fault"), None), "the driver to be told"
    )
    assert told.status == "supplying" and "fault" in told.message

    engine = net.restart(engine)
    end = driver.wait_status(rid, "interrupted")
    assert end.reason == "power_loss"
    (ticket,) = driver.tickets()
    (metered,) = ledger(net, "CP001")
    assert ticket.energy_kwh == pytest.approx(metered["energy_kwh"], abs=1e-9) and ticket.energy_kwh > 0.3
    assert ticket.amount_eur == pytest.approx(ticket.energy_kwh * ticket.price_eur_kwh)
    net.wait_state("CP001", "ACTIVATED", timeout_s=15)
    # Killed and restarted again: nothing is billed twice.
    net.kill(engine)
    net.restart(engine)
    net.wait_state("CP001", "ACTIVATED", timeout_s=15)
    sessions = net.get("/api/v1/sessions")
    assert [(s["status"], s["end_reason"]) for s in sessions] == [("interrupted", "power_loss")]
    assert len([t for t in driver.events() if isinstance(t, Ticket)]) == 1


def test_driver_killed_mid_supply_shows_the_outcome_after_restart_and_carries_on(net: Network) -> None:
    net.start_central("D001")
    net.start_cp("CP001", auto=True, engine_args=("--plug-delay-s", "0.3"))
    net.wait_state("CP001", "ACTIVATED")
    app = net.start_driver("D001", "CP001 6s\nCP001 1s\n", "--pause-s", "0.5", "--exit-when-done")
    net.wait_state("CP001", "SUPPLYING")
    net.kill(app)
    # The supply goes on without the driver and ends by itself.
    wait_for(lambda: any(s["status"] == "completed" for s in net.get("/api/v1/sessions")), "the supply to complete")
    first = next(s for s in net.get("/api/v1/sessions") if s["status"] == "completed")
    again = net.restart(app)
    wait_for(
        lambda: net.log_has(again, f"before the restart: TICKET session {first['id']} at CP001"),
        "the ticket on the restarted app",
    )
    assert net.log_has(again, "was in progress: waiting for its outcome")
    wait_for(lambda: again.popen.poll() == 0, "the app to finish its file")
    sessions = net.get("/api/v1/sessions")
    assert sorted(s["status"] for s in sessions) == ["completed", "completed"], (
        "the second line ran once, the first was not repeated"
    )


def test_central_killed_cps_finish_and_wait_then_central_rebuilds_without_losing_a_ticket(net: Network) -> None:
    central = net.start_central("D001", "D002")
    engine, monitor = net.start_cp("CP001", engine_args=("--time-scale", "60"))
    net.wait_state("CP001", "ACTIVATED")
    driver = KafkaDriver(net, "D001")
    rid = supplying(net, driver, "CP001", engine)

    net.kill(central)
    wait_for(lambda: net.log_has(engine, "cannot reach Central"), "the engine to say it cannot reach Central")
    wait_for(lambda: net.log_has(monitor, "cannot reach Central"), "the monitor to say it cannot reach Central")
    engine.send("u")  # the supply in progress finishes normally while Central is down
    wait_for(lambda: ledger(net, "CP001"), "the engine to record the finished supply")
    engine.send("m D002")  # new supplies are refused (no offline mode by default)
    wait_for(lambda: net.log_has(engine, "manual supply for D002 refused: cannot reach Central"), "a refusal")

    net.start_central(same_ports=True)
    net.wait_state("CP001", "ACTIVATED", timeout_s=20)  # the monitor reconnected by itself
    end = driver.wait_status(rid, "completed")
    assert end.reason == "unplugged"
    (ticket,) = driver.tickets()
    (metered,) = ledger(net, "CP001")
    assert ticket.energy_kwh == pytest.approx(metered["energy_kwh"], abs=1e-9)
    (session,) = net.get("/api/v1/sessions")
    assert session["status"] == "completed" and session["energy_kwh"] == pytest.approx(metered["energy_kwh"])


def test_offline_manual_supply_is_reported_once_when_central_is_back(net: Network) -> None:
    central = net.start_central("D001")
    engine, _ = net.start_cp("CP001", price=0.40, engine_args=("--offline-supply", "--time-scale", "60"))
    net.wait_state("CP001", "ACTIVATED")
    driver = KafkaDriver(net, "D001")
    rid = supplying(net, driver, "CP001", engine)  # teaches the CP its price
    engine.send("u")
    driver.wait_status(rid, "completed")

    net.kill(central)
    wait_for(lambda: net.log_has(engine, "cannot reach Central"), "the engine to notice")
    engine.send("m D001")
    wait_for(lambda: net.log_has(engine, "offline supply for D001 authorised locally"), "an offline authorisation")
    engine.send("p")
    wait_for(
        lambda: (engine_state(net, "CP001")["cp"].get("supply") or {}).get("energy_wh", 0) > 0,
        "the offline supply to deliver energy",
    )
    engine.send("u")
    wait_for(lambda: len(ledger(net, "CP001")) == 2, "the engine to record the offline supply")
    offline = ledger(net, "CP001")[1]
    assert offline["offline"] and offline["energy_kwh"] > 0

    net.start_central(same_ports=True)
    wait_for(lambda: len(driver.tickets()) == 2, "the offline supply's ticket")
    ticket = driver.tickets()[1]
    assert ticket.energy_kwh == pytest.approx(offline["energy_kwh"], abs=1e-9)
    assert ticket.amount_eur == pytest.approx(offline["energy_kwh"] * 0.40)
    # The engine re-sends what it is not sure was delivered: a restart must not bill twice.
    net.kill(engine)
    net.restart(engine)
    net.wait_state("CP001", "ACTIVATED", timeout_s=20)
    sessions = net.get("/api/v1/sessions")
    assert len(sessions) == 2 and all(s["status"] == "completed" for s in sessions)
    assert len(driver.tickets()) == 2


def test_broker_restart_daemons_reconnect_and_carry_on(brokers, make_net) -> None:
    """An in-memory broker restarted on the same port comes back empty: the daemons
    reconnect, Central re-creates the topics, and the next supply works end to end."""
    broker = brokers.start()
    port = broker.port
    net = make_net(broker.bootstrap, secure=True)
    net.start_central("D001")
    engine, _ = net.start_cp("CP001")
    net.wait_state("CP001", "ACTIVATED")
    broker.stop()
    central = next(p for p in net.procs if p.name == "central")
    wait_for(lambda: net.log_has(central, "cannot reach Kafka"), "Central to notice the broker is gone")
    broker = brokers.start(port)
    wait_for(lambda: net.log_has(central, "Kafka reachable again"), "Central to reconnect", timeout_s=60)
    driver = KafkaDriver(net, "D001")
    rid = driver.request("CP001")
    driver.wait_status(rid, "authorized", timeout_s=60)
    engine.send("p")
    net.wait_state("CP001", "SUPPLYING")
    engine.send("u")
    driver.wait_status(rid, "completed")
    assert len(driver.tickets()) == 1


def test_sigterm_is_an_orderly_goodbye(net: Network) -> None:
    net.start_central("D001")
    engine, monitor = net.start_cp("CP001")
    net.wait_state("CP001", "ACTIVATED")
    central = next(p for p in net.procs if p.name == "central")
    net.kill(monitor, signal.SIGTERM)
    net.wait_state("CP001", "DISCONNECTED", timeout_s=10)
    assert net.log_has(central, "CP001 monitor signed off")
    assert monitor.popen.returncode == 0
    net.kill(engine, signal.SIGTERM)
    assert engine.popen.returncode == 0
    assert not any(isinstance(e, RequestUpdate) for e in KafkaDriver(net, "D001").events())
