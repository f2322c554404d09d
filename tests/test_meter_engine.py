"""The engine reading a (simulated) real meter over a real pty: energy, faults, recovery."""

from __future__ import annotations

import json
import os

import pytest
from netharness import KafkaDriver, Network, wait_for

from evproto.domain.events import DriverTelemetry

pytestmark = pytest.mark.slow


def engine_with_meter(net: Network, sim, protocol: str, price: float = 0.30):
    net.start_central("D001")
    engine = net.start_engine(
        "CP001",
        engine_args=(
            "--port",
            sim.path,
            "--meter-protocol",
            protocol,
            "--meter-interval-s",
            "0.3",
            "--meter-timeout-s",
            "1.0",
        ),
    )
    net.start_monitor("CP001", engine.ready["listen"], price=price)
    net.wait_state("CP001", "ACTIVATED", timeout_s=30)
    return engine


def start_supply(net: Network, engine) -> tuple[KafkaDriver, str]:
    driver = KafkaDriver(net, "D001")
    rid = driver.request("CP001")
    driver.wait_status(rid, "authorized")
    engine.send("p")
    net.wait_state("CP001", "SUPPLYING")
    return driver, rid


@pytest.mark.parametrize("protocol", ["evproto", "iec62056-21"])
def test_ticket_energy_is_what_the_meter_counted(protocol: str, net: Network, sim_factory) -> None:
    sim = sim_factory(protocol, "--no-load", "--power-kw", "11", "--time-scale", "60")
    engine = engine_with_meter(net, sim, protocol, price=0.40)
    driver, rid = start_supply(net, engine)
    sim.send("load on")  # the vehicle draws power only during the supply
    wait_for(
        lambda: any(isinstance(e, DriverTelemetry) and e.energy_kwh > 0.5 for e in driver.events()),
        "telemetry from the meter's readings",
    )
    sim.send("load off")
    register_wh = sim.energy_wh()
    # Let the engine read the final register (several reading intervals) before unplugging.
    wait_for(
        lambda: (
            (
                json.load(open(os.path.join(net.tmp, "state-CP001", "engine-state.json")))["cp"].get("meter_energy_wh")
                or 0
            )
            >= register_wh - 0.2
        ),
        "the engine to read the final register",
    )
    engine.send("u")
    driver.wait_status(rid, "completed")
    (ticket,) = driver.tickets()
    assert ticket.energy_kwh * 1000 == pytest.approx(register_wh, abs=0.2)  # IEC sends 0.1 Wh resolution
    assert ticket.amount_eur == pytest.approx(ticket.energy_kwh * 0.40)
    telemetry = [e.energy_kwh for e in driver.events() if isinstance(e, DriverTelemetry)]
    assert telemetry == sorted(telemetry) and telemetry[-1] <= ticket.energy_kwh + 1e-9


def test_stalled_meter_breaks_the_cp_ends_the_supply_and_recovers_by_itself(net: Network, sim_factory) -> None:
    sim = sim_factory("evproto", "--power-kw", "11", "--time-scale", "60")
    engine = engine_with_meter(net, sim, "evproto")
    driver, rid = start_supply(net, engine)
    wait_for(lambda: any(isinstance(e, DriverTelemetry) and e.energy_kwh > 0 for e in driver.events()), "telemetry")
    sim.send("stall 8")
    net.wait_state("CP001", "BROKEN", timeout_s=15)
    end = driver.wait_status(rid, "interrupted")
    assert end.reason == "fault"
    (ticket,) = driver.tickets()
    assert ticket.energy_kwh > 0
    net.wait_state("CP001", "ACTIVATED", timeout_s=30)  # readings resumed: the fault cleared itself
    assert engine.alive()


def test_unplugged_meter_is_lost_then_found_again_without_a_restart(net: Network, sim_factory, tmp_path) -> None:
    sim = sim_factory("iec62056-21", "--power-kw", "7.4", link=str(tmp_path / "meter0"))
    engine = engine_with_meter(net, sim, "iec62056-21")
    sim.send("unplug")
    net.wait_state("CP001", "BROKEN", timeout_s=15)
    wait_for(lambda: net.log_has(engine, "device gone"), "the engine to say the meter is gone")
    sim.send("plug")
    net.wait_state("CP001", "ACTIVATED", timeout_s=40)
    assert engine.alive()


def test_meter_reset_during_a_supply_never_loses_or_doubles_energy(net: Network, sim_factory) -> None:
    sim = sim_factory("evproto", "--no-load", "--power-kw", "11", "--time-scale", "60", "--energy-wh", "50000")
    engine = engine_with_meter(net, sim, "evproto")
    driver, rid = start_supply(net, engine)
    sim.send("load on")
    wait_for(lambda: any(isinstance(e, DriverTelemetry) and e.energy_kwh > 0.3 for e in driver.events()), "energy")
    before_reset = sim.energy_wh() - 50000
    sim.send("reset")  # the register restarts at 0: must not count as -50 kWh
    wait_for(lambda: net.log_has(engine, "meter reset"), "the engine to notice the reset")
    wait_for(
        lambda: any(
            isinstance(e, DriverTelemetry) and e.energy_kwh > before_reset / 1000 + 0.3 for e in driver.events()
        ),
        "energy after the reset",
    )
    sim.send("load off")
    after_reset = sim.energy_wh()
    wait_for(
        lambda: (
            (
                json.load(open(os.path.join(net.tmp, "state-CP001", "engine-state.json")))["cp"].get("meter_energy_wh")
                or 0
            )
            >= after_reset - 0.2
        ),
        "the final register",
    )
    engine.send("u")
    driver.wait_status(rid, "completed")
    (ticket,) = driver.tickets()
    # Energy before the reset (up to the last reading before it) plus energy after it.
    assert 0 < ticket.energy_kwh * 1000 <= before_reset + after_reset + 0.2
    assert ticket.energy_kwh * 1000 >= after_reset + before_reset * 0.5


@pytest.mark.parametrize("protocol", ["evproto", "iec62056-21"])
def test_a_noisy_line_is_ridden_out_without_a_fault(protocol: str, net: Network, sim_factory) -> None:
    """Damaged checksums, junk and tiny pieces: counted and retried; the supply just goes on."""
    sim = sim_factory(protocol, "--no-load", "--power-kw", "11", "--time-scale", "60", "--seed", "7")
    engine = engine_with_meter(net, sim, protocol)
    driver, rid = start_supply(net, engine)
    sim.send("load on")
    sim.send("split on")
    sim.send("garbage 0.3")
    sim.send("corrupt 2")
    wait_for(
        lambda: any(isinstance(e, DriverTelemetry) and e.energy_kwh > 0.5 for e in driver.events()),
        "telemetry through the noise",
    )
    sim.send("load off")
    register_wh = sim.energy_wh()
    wait_for(
        lambda: (
            (
                json.load(open(os.path.join(net.tmp, "state-CP001", "engine-state.json")))["cp"].get("meter_energy_wh")
                or 0
            )
            >= register_wh - 0.2
        ),
        "the final register",
    )
    engine.send("u")
    driver.wait_status(rid, "completed")
    (ticket,) = driver.tickets()
    assert ticket.energy_kwh * 1000 == pytest.approx(register_wh, abs=0.2)
    states = [u.status for u in driver.updates(rid)]
    assert "interrupted" not in states and not net.log_has(engine, "meter fault")
