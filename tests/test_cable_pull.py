"""Pulled cables: real processes on separate simulated hosts (network namespaces, tests/netns.py).

Layout: the broker and Central on host "central", the monitor on host "monitors",
the engine on host "engines"; each host has one cable to a bridge. The test
process itself stays in the root namespace, which has an address on the same
bridge: it plays the driver (KafkaDriver) and reads Central's HTTP API, like a
drivers' host that is never unplugged.

A pulled cable sends no RST and no FIN: only the evproto keepalive (dead peer
after 2.5 s of silence) and the monitor's health checks notice it. Each test
prints the detection time (pull -> state change on Central's API, polled every
20 ms) without asserting it; ``benchmarks/detection.py`` measures it properly.
Logs are in the test's tmp dir (central.log, engine-CP001.log, monitor-CP001.log,
broker.log).
"""

from __future__ import annotations

import time

import pytest
from netharness import KafkaDriver, Network, Proc, wait_for
from netns import Broker, Hosts, require_netns

from evproto.domain.events import RequestUpdate, Ticket

pytestmark = pytest.mark.slow

#: Hang guards only (the machine is shared and noisy): never a timing assertion.
DETECT_GUARD_S = 10.0
RECONNECT_GUARD_S = 30.0
CP = "CP001"


@pytest.fixture(scope="module")
def hosts():
    require_netns()
    with Hosts(["central", "monitors", "engines"]) as h:
        yield h


@pytest.fixture(scope="module")
def broker(hosts, tmp_path_factory):
    """Overrides conftest's: the broker runs inside host "central"'s namespace."""
    log = str(tmp_path_factory.mktemp("broker") / "broker.log")
    with Broker(hosts.addr("central"), wrap=hosts.wrap("central"), log_path=log) as b:
        yield b


@pytest.fixture
def net(make_net, hosts, broker):
    for name in hosts.names:  # a failed test must not leave the next one unplugged
        if not hosts.plugged(name):
            hosts.plug(name)
    # Release 2, as a real deployment runs: TLS to Central on its own host, authenticated
    # monitor, sealed records between the engine and Central.
    return make_net(broker.bootstrap, secure=True, hosts=(hosts.addr("central"),))


def _start(net: Network, hosts: Hosts, *drivers: str) -> tuple[Proc, Proc, Proc]:
    """Central on "central", the engine on "engines", the monitor on "monitors"; ACTIVATED."""
    central = net.start_central(*drivers, host=hosts.addr("central"), wrap=hosts.wrap("central"))
    engine = net.start_engine(CP, listen=f"{hosts.addr('engines')}:0", wrap=hosts.wrap("engines"))
    monitor = net.start_monitor(CP, engine.ready["listen"], wrap=hosts.wrap("monitors"))
    net.wait_state(CP, "ACTIVATED")
    net.wait_serving(engine, CP)  # ACTIVATED comes first: the monitor reaches its engine after registering
    return central, engine, monitor


def _detect(net: Network, state: str, t0: float, what: str) -> float:
    """Poll Central's API every 20 ms until the CP shows ``state``; print and return the delay."""
    wait_for(lambda: net.cp_state(CP) == state, f"{CP} to be {state} after {what}", DETECT_GUARD_S, interval_s=0.02)
    elapsed = time.monotonic() - t0
    print(f"\n[detection] {what} -> {state} on Central's API after {elapsed:.3f} s")
    return elapsed


def _log_has(proc: Proc, text: str, count: int = 1) -> bool:
    with open(proc.log, encoding="utf-8", errors="replace") as fh:
        return fh.read().count(text) >= count


def _pids(net: Network) -> dict[str, int]:
    return {p.name: p.popen.pid for p in net.procs}


def _assert_no_restart(net: Network, before: dict[str, int]) -> None:
    assert _pids(net) == before, "a process was restarted"
    dead = [p.name for p in net.procs if not p.alive()]
    assert not dead, f"processes died: {dead}"


def test_engine_cable_pulled_breaks_the_cp_and_plugging_it_back_reactivates(net: Network, hosts: Hosts) -> None:
    _, engine, monitor = _start(net, hosts)
    pids = _pids(net)
    with hosts.pulled("engines"):
        t0 = time.monotonic()
        hosts.pull("engines")
        _detect(net, "BROKEN", t0, "engine cable pulled")
        # Leave it out until both ends of the monitor<->engine link gave up on each other.
        wait_for(
            lambda: _log_has(engine, "monitor link lost"), "the engine to notice its monitor is gone", RECONNECT_GUARD_S
        )
        # The monitor still talks to Central: BROKEN, not DISCONNECTED.
        assert net.cp_state(CP) == "BROKEN"
    net.wait_state(CP, "ACTIVATED", timeout_s=RECONNECT_GUARD_S)
    assert _log_has(monitor, "connected to engine at", 2), "the monitor did not reconnect to its engine"
    _assert_no_restart(net, pids)


def test_monitor_cable_pulled_disconnects_the_cp_and_the_monitor_comes_back_by_itself(
    net: Network, hosts: Hosts
) -> None:
    _, engine, monitor = _start(net, hosts)
    pids = _pids(net)
    with hosts.pulled("monitors"):
        t0 = time.monotonic()
        hosts.pull("monitors")
        _detect(net, "DISCONNECTED", t0, "monitor cable pulled")
        wait_for(
            lambda: _log_has(monitor, "lost Central") and _log_has(engine, "monitor link lost"),
            "the monitor and the engine to notice the silence",
            RECONNECT_GUARD_S,
        )
    t_plug = time.monotonic()
    net.wait_state(CP, "ACTIVATED", timeout_s=RECONNECT_GUARD_S)
    print(f"[recovery] monitor cable plugged back -> ACTIVATED after {time.monotonic() - t_plug:.3f} s")
    assert _log_has(monitor, "connected to Central", 2), "the monitor did not reconnect to Central"
    _assert_no_restart(net, pids)


def test_monitor_cable_pulled_during_a_supply_ends_it_with_exactly_one_ticket(net: Network, hosts: Hosts) -> None:
    _, engine, _ = _start(net, hosts, "D001")
    pids = _pids(net)
    driver = KafkaDriver(net, "D001")
    rid = driver.request(CP)
    driver.wait_status(rid, "authorized")
    engine.send("p")
    net.wait_state(CP, "SUPPLYING")
    wait_for(lambda: net.get("/api/v1/cps")[0]["energy_kwh"], "some energy delivered")
    with hosts.pulled("monitors"):
        t0 = time.monotonic()
        hosts.pull("monitors")
        _detect(net, "DISCONNECTED", t0, "monitor cable pulled during a supply")
        # The engine still reaches Kafka: once it notices its monitor is gone it ends the
        # supply (monitor_lost) and Central bills it, while the cable is still out.
        end = driver.wait_status(rid, "interrupted", timeout_s=RECONNECT_GUARD_S)
        print(f"[supply] driver told 'interrupted' ({end.reason}) {time.monotonic() - t0:.3f} s after the pull")
        wait_for(driver.tickets, "the driver's ticket", RECONNECT_GUARD_S)
        assert net.cp_state(CP) == "DISCONNECTED"
    net.wait_state(CP, "ACTIVATED", timeout_s=RECONNECT_GUARD_S)
    # Settle: the outboxes (engine and Central) resend every 2 s; give a duplicate the chance to show.
    time.sleep(4.5)
    tickets = driver.tickets()
    assert len(tickets) == 1, f"expected exactly one ticket, got {tickets}"
    (ticket,) = tickets
    print(
        f"[supply] ticket: status={ticket.status} end_reason={ticket.end_reason} "
        f"energy={ticket.energy_kwh:.4f} kWh amount={ticket.amount_eur:.4f} EUR"
    )
    print(
        "[supply] driver's updates: "
        + ", ".join(f"{u.status}({u.reason})" if u.reason else u.status for u in driver.updates(rid))
    )
    assert ticket.status == "interrupted" and ticket.end_reason == "monitor_lost"
    assert ticket.energy_kwh > 0
    assert ticket.amount_eur == pytest.approx(ticket.energy_kwh * ticket.price_eur_kwh, rel=1e-9)
    sessions = [s for s in net.get("/api/v1/sessions") if s["started_at"]]
    assert len(sessions) == 1
    (session,) = sessions
    assert session["status"] == "interrupted" and session["end_reason"] == "monitor_lost"
    assert session["energy_kwh"] == pytest.approx(ticket.energy_kwh)
    assert not [e for e in driver.events() if isinstance(e, RequestUpdate) and e.request_id != rid]
    assert all(
        isinstance(e, (RequestUpdate, Ticket)) or e.__class__.__name__ == "DriverTelemetry" for e in driver.events()
    )
    _assert_no_restart(net, pids)
