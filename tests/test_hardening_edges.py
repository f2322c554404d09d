"""Edges of the driver, the engine and the monitor: bad arguments, bad records, silence, crashes.

Command lines run as a user runs them; records are forged with a real producer on the
real embedded broker and read by real daemons; crashes are real signals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from evproto.bus.broker import EmbeddedBroker
from evproto.bus.events import MAX_POWER_KW, MAX_TARGET_DURATION_S, MAX_TARGET_ENERGY_KWH, DriverTelemetry
from evproto.daemons.driver import parse_requests
from netharness import KafkaDriver, Network, wait_for

BIN = os.path.dirname(sys.executable)


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# -- a driver's requests: bounds -------------------------------------------------------------

@pytest.mark.parametrize("line", [
    "CP002 " + "9" * 400 + "kWh",  # a float of 400 digits is infinite
    "CP002 100000000000000000000000000kWh",
    f"CP002 {MAX_TARGET_ENERGY_KWH + 0.5}kWh",
    f"CP002 {(MAX_TARGET_ENERGY_KWH + 1) * 1000:g}Wh",
    f"CP002 {MAX_TARGET_DURATION_S + 1:g}s",
    f"CP002 {MAX_TARGET_DURATION_S / 60 + 1:g}min",
    "CP002 0kWh",
    "CP\u200b002 2kWh",  # looks like CP002 on a screen
    "CP" + "0" * 70 + " 2kWh",
])
def test_a_requests_file_line_out_of_bounds_is_a_usage_error_naming_the_line(tmp_path, line: str) -> None:
    f = tmp_path / "req.txt"
    f.write_text(f"CP001 1kWh\n# fine so far\n{line}\n", encoding="utf-8")
    r = run(os.path.join(BIN, "ev-driver"), "--kafka", "127.0.0.1:1", "--id", "D1", "--requests", str(f),
            "--state-dir", str(tmp_path / "state"), timeout=30)
    assert r.returncode == 64, (r.returncode, r.stderr[-2000:])
    assert "req.txt:3:" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr) < 1000, "the error must not echo a huge line whole"


def test_targets_at_the_bounds_are_accepted() -> None:
    (energy, duration, small) = parse_requests(
        f"CP1 {MAX_TARGET_ENERGY_KWH:g}kWh\nCP1 {MAX_TARGET_DURATION_S / 60:g}min\nCP1 1Wh\n")
    assert energy.target_energy_kwh == MAX_TARGET_ENERGY_KWH
    assert duration.target_duration_s == MAX_TARGET_DURATION_S
    assert small.target_energy_kwh == pytest.approx(0.001)
    with pytest.raises(ValueError, match="request:1:"):
        parse_requests(f"CP1 {MAX_TARGET_DURATION_S + 0.5}s", source="request")


@pytest.mark.parametrize("driver_id", ["", "D\u200b1", "D 1", "D" * 65])
def test_a_driver_id_nobody_can_address_is_a_usage_error(tmp_path, driver_id: str) -> None:
    r = run(os.path.join(BIN, "ev-driver"), "--kafka", "127.0.0.1:1", "--id", driver_id,
            "--state-dir", str(tmp_path / "state"), timeout=30)
    assert r.returncode == 64, (r.returncode, r.stderr[-2000:])
    assert "--id" in r.stderr and "Traceback" not in r.stderr


# -- a monitor's registration: bounds --------------------------------------------------------

@pytest.mark.parametrize(("option", "value"), [
    ("--id", ""),
    ("--id", "CP001\u200b"),
    ("--id", "CP 001"),
    ("--location", "Ali\u202ecante"),  # a bidi override would reverse what the panel shows
    ("--location", "x" * 200),
    ("--location", " Alicante"),
])
def test_a_monitor_refuses_an_id_or_location_nobody_could_use(option: str, value: str) -> None:
    args = {"--id": "CP001", "--location": "Alicante", option: value}
    r = run(os.path.join(BIN, "evcp-monitor"), "--engine", "127.0.0.1:1", "--central", "127.0.0.1:1",
            *(a for kv in args.items() for a in kv), "--price", "0.3", timeout=30)
    assert r.returncode == 64, (r.returncode, r.stderr[-2000:])
    assert option in r.stderr and "Traceback" not in r.stderr


# -- a simulated meter's speed ---------------------------------------------------------------

def test_the_engine_refuses_a_simulated_meter_faster_than_central_accepts(tmp_path) -> None:
    engine = os.path.join(BIN, "evcp-engine")
    power_kw = 100.0
    time_scale = MAX_POWER_KW / power_kw * 1.5
    r = run(engine, "--kafka", "127.0.0.1:1", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path),
            "--power-kw", str(power_kw), "--time-scale", str(time_scale), timeout=30)
    assert r.returncode == 64, (r.returncode, r.stderr[-2000:])
    assert "--time-scale" in r.stderr and f"{MAX_POWER_KW:g} kW" in r.stderr and "Traceback" not in r.stderr
    helped = " ".join(run(engine, "--help").stdout.split())
    assert f"{MAX_POWER_KW:g} kW" in helped


# =============================================================================================
# Real networks on the embedded broker
# =============================================================================================


@pytest.fixture(scope="module")
def broker():
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def net(tmp_path, broker):
    n = Network(str(tmp_path), broker.bootstrap)
    yield n
    n.close()


def now_ms() -> int:
    return int(time.time() * 1000)


def ledger(net: Network, cp_id: str) -> list[dict]:
    with open(os.path.join(net.tmp, f"state-{cp_id}", "engine-state.json"), encoding="utf-8") as fh:
        return json.load(fh).get("finished", [])


# -- an engine's crash: when the supply ended ------------------------------------------------

@pytest.mark.slow
def test_an_engine_killed_mid_supply_ends_it_at_its_last_reading_not_at_its_restart(net: Network) -> None:
    net.start_central("D001")
    engine, _ = net.start_cp("CP001", engine_args=("--time-scale", "60"))
    net.wait_state("CP001", "ACTIVATED")
    driver = KafkaDriver(net, "D001")
    rid = driver.request("CP001")
    driver.wait_status(rid, "authorized")
    engine.send("p")
    wait_for(lambda: any(isinstance(e, DriverTelemetry) and e.energy_kwh > 0 for e in driver.events()), "energy to flow")

    net.kill(engine)
    killed_ms = now_ms()
    time.sleep(2.0)  # the engine comes back visibly later than the supply's end
    restarted_ms = now_ms()
    net.restart(engine)
    driver.wait_status(rid, "interrupted")
    (ticket,) = driver.tickets()
    assert ticket.end_reason == "power_loss"
    assert ticket.started_ts_ms < ticket.ended_ts_ms <= killed_ms < restarted_ms
    (metered,) = ledger(net, "CP001")
    assert metered["ended_ts_ms"] == ticket.ended_ts_ms
