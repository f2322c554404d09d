"""Real meter drivers against the simulated meter on a real pty opened by pyserial."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from evproto.hw import MeterGone, MeterProtocolError, MeterTimeout, make_driver
from evproto.hw.supervisor import MeterSupervisor
from evproto.messages import FaultCode

PROTOCOLS = ["evproto", "iec62056-21"]
BIN = os.path.dirname(sys.executable)


def meter_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [os.path.join(BIN, "evcp-meter"), "read", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_evcp_meter_read_prints_one_reading(protocol: str, sim_factory) -> None:
    sim = sim_factory(protocol, "--power-kw", "11", "--energy-wh", "123456")
    r = meter_cli("--port", sim.path, "--protocol", protocol, "--json")
    assert r.returncode == 0, r.stderr
    reading = json.loads(r.stdout)
    assert {"energy_wh", "power_w", "timestamp"} <= set(reading)
    assert reading["energy_wh"] >= 123456 and reading["power_w"] == pytest.approx(11000)
    text = meter_cli("--port", sim.path, "--protocol", protocol)
    assert text.returncode == 0 and "kWh" in text.stdout and "Traceback" not in text.stderr


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_evcp_meter_read_fails_clearly_when_nothing_answers(protocol: str, sim_factory, tmp_path) -> None:
    sim = sim_factory(protocol)
    sim.send("stall 60")
    r = meter_cli("--port", sim.path, "--protocol", protocol, "--timeout-s", "3")
    assert r.returncode == 69 and "Traceback" not in r.stderr and r.stderr.startswith("evcp-meter:")
    missing = meter_cli("--port", str(tmp_path / "ttyNOTHING"), "--protocol", protocol, "--timeout-s", "2")
    assert missing.returncode == 69 and "no meter at" in missing.stderr


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_faults_give_the_expected_errors_and_the_driver_recovers(protocol: str, sim_factory) -> None:
    sim = sim_factory(protocol, "--time-scale", "60")
    driver = make_driver(protocol, sim.path, timeout_s=2.0)
    await driver.open()
    try:
        first = await driver.read()
        await asyncio.to_thread(sim.command, "split on", "garbage 0.5")
        assert (await driver.read()).energy_wh >= first.energy_wh  # pieces and junk are tolerated
        await asyncio.to_thread(sim.command, "split off", "garbage 0", "corrupt 1")
        if protocol == "iec62056-21":
            with pytest.raises(MeterProtocolError, match="BCC"):
                await driver.read()
        else:  # the link NACKs the damaged frame and the meter resends it
            await driver.read()
            assert driver.link.conn.stats.nacks_sent >= 1  # type: ignore[attr-defined]
        assert (await driver.read()).energy_wh > first.energy_wh
        await asyncio.to_thread(sim.command, "drop 1")  # every write loses a byte
        if protocol == "iec62056-21":  # a readout is one write: it always arrives damaged
            with pytest.raises((MeterTimeout, MeterProtocolError)):
                await driver.read()
        else:  # a lost byte may be a mere ACK in front of an intact frame: fail or succeed, never hang
            try:
                await driver.read()
            except (MeterTimeout, MeterProtocolError):
                pass
        await asyncio.to_thread(sim.command, "drop 0")
        if protocol == "evproto":  # until what was sent meanwhile is acknowledged, or the link gave up
            link = driver.link
            await asyncio.wait_for(_until(lambda: link is None or not link.is_open or link.conn.queued == 0), 10)
        if protocol == "evproto" and not driver.link.is_open:  # type: ignore[attr-defined]
            await driver.open()  # the link gave up meanwhile: a new session, as the supervisor does
        assert (await driver.read()).energy_wh > first.energy_wh
        await asyncio.to_thread(sim.command, "stall 4")
        with pytest.raises(MeterTimeout):
            await driver.read()
    finally:
        await driver.close()


async def test_supervisor_raises_a_fault_after_two_cycles_and_clears_it(sim_factory, tmp_path) -> None:
    link = str(tmp_path / "meter0")
    sim = sim_factory("evproto", "--time-scale", "60", link=link)
    sup = MeterSupervisor(make_driver("evproto", link, timeout_s=0.5), interval_s=0.2)
    await sup.start()
    try:
        await asyncio.wait_for(_until(lambda: sup.take() is not None), 10)
        sim.send("stall 3")
        await asyncio.wait_for(_until(lambda: sup.health.fault is not None), 10)
        assert sup.health.fault is FaultCode.METER_TIMEOUT and sup.health.failed_cycles >= 2
        sup.take()
        failed = sup.health.failed_cycles  # one more read cycle in vain
        await asyncio.wait_for(_until(lambda: sup.health.failed_cycles > failed), 10)
        assert sup.take() is None  # while stalled, nothing fresh: the last values are not handed out again
        await asyncio.wait_for(_until(lambda: sup.health.fault is None), 15)  # the stall ends by itself
        await _eventually(sup)
        sim.send("unplug")
        await asyncio.wait_for(_until(lambda: sup.health.fault is FaultCode.METER_LOST), 10)
        sim.send("plug")
        await asyncio.wait_for(_until(lambda: sup.health.fault is None), 30)
        assert sup.health.counters["gone"] >= 1 and sup.health.counters["reopened"] >= 2
    finally:
        await sup.close()


async def _until(predicate) -> None:
    """Poll ``predicate`` (the supervisor's state, no event to wait on); callers bound it."""
    while not predicate():
        await asyncio.sleep(0.05)


async def _eventually(sup: MeterSupervisor) -> bool:
    await asyncio.wait_for(_until(lambda: sup.take() is not None), 5)
    return True


async def test_a_missing_device_is_gone_not_a_crash(tmp_path) -> None:
    for protocol in PROTOCOLS:
        driver = make_driver(protocol, str(tmp_path / "ttyUSB9"))
        with pytest.raises(MeterGone):
            await driver.open()
        await driver.close()


def test_unknown_protocol_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown meter protocol"):
        make_driver("dlms", "/dev/ttyUSB0")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_simulator_also_serves_over_tcp(protocol: str) -> None:
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "evproto.firmware_sim",
            "--tcp",
            "127.0.0.1:0",
            "--protocol",
            protocol,
            "--energy-wh",
            "777",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert sim.stdout is not None
        url = sim.stdout.readline().decode().strip()
        assert url.startswith("tcp://127.0.0.1:")
        r = meter_cli("--port", url, "--protocol", protocol, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["energy_wh"] >= 777
    finally:
        sim.terminate()
        sim.wait(5)
