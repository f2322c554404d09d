"""Modbus RTU meters (evproto.hw.modbus_meter) over real ptys: against our simulator (pymodbus's
server behind our fault injection), against a pymodbus server this test configures itself,
through the supervisor, evcp-meter read and scan, and an engine billing from the register."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import struct
import subprocess
import sys
import tty

import pytest

from evproto.hw import MeterGone, MeterProtocolError, MeterTimeout, make_driver
from evproto.hw.modbus_map import (
    MODELS,
    MeterMapError,
    Quantity,
    RegisterType,
    decode,
    encode,
    load_map,
    parse_map,
    read_plan,
)
from evproto.hw.supervisor import MeterSupervisor
from evproto.messages import FaultCode

BIN = os.path.dirname(sys.executable)


def meter_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.path.join(BIN, "evcp-meter"), *args], capture_output=True, text=True, timeout=timeout)


async def _until(predicate) -> None:
    """Poll ``predicate`` (the supervisor's state, no event to wait on); callers bound it."""
    while not predicate():
        await asyncio.sleep(0.05)


# -- register maps -------------------------------------------------------------------------------


def test_built_in_maps_load_and_read_the_energy_register_first() -> None:
    assert set(MODELS) == {"sdm630", "sdm72", "abb-b23"}
    for model in MODELS:
        meter_map = load_map(model)
        plan = read_plan(meter_map)
        assert Quantity.ENERGY_IMPORT_WH in {s.quantity for s in plan[0].specs}  # fail fast on a dead meter
        assert all(b.count <= 125 for b in plan)
        covered = {s.quantity for b in plan for s in b.specs}
        assert covered == set(meter_map.registers)
    sdm630 = load_map("sdm630")
    energy = sdm630.registers[Quantity.ENERGY_IMPORT_WH]
    assert (energy.address, energy.function, energy.type) == (0x0048, "input", RegisterType.FLOAT32)
    abb = load_map("abb-b23").registers[Quantity.ENERGY_IMPORT_WH]
    assert (abb.address, abb.function, abb.type, abb.scale) == (0x5000, "holding", RegisterType.UINT64, 10.0)


def test_values_encode_and_decode_high_word_first() -> None:
    sdm = load_map("sdm630").registers[Quantity.ENERGY_IMPORT_WH]
    regs = encode(sdm, 1234.5 * 1000)  # kWh on the wire
    assert regs == [int.from_bytes(struct.pack(">f", 1234.5)[i : i + 2], "big") for i in (0, 2)]
    assert decode(sdm, regs) == pytest.approx(1234500.0)
    abb = load_map("abb-b23")
    energy = abb.registers[Quantity.ENERGY_IMPORT_WH]
    assert encode(energy, 1234567890.0) == [0, 0, 0x075B, 0xCD15]  # 123456789 x 0.01 kWh
    power = abb.registers[Quantity.POWER_W]
    assert decode(power, encode(power, -1500.25)) == pytest.approx(-1500.25)  # int32, 0.01 W


_ENERGY = '{"model": "x", "quantities": {"energy_import_wh": '


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not JSON"),
        (
            '{"model": "x", "quantities": {"power_w": {"address": 1, "function": "input", "type": "float32"}}}',
            "required",
        ),
        ('{"model": "x", "quantities": {"energy_wh": {}}}', "unknown quantity 'energy_wh'"),
        (
            _ENERGY + '{"address": "0x48", "function": "coil", "type": "float32"}}}',
            "function must be",
        ),
        (
            _ENERGY + '{"address": 72, "function": "input", "type": "double"}}}',
            "type must be one of",
        ),
        (
            '{"model": "x", "quantities": {"energy_import_wh": {"address": 72, "function": "input", "type": "float32"},'
            ' "power_w": {"address": 73, "function": "input", "type": "float32"}}}',
            "overlaps",
        ),
        (
            _ENERGY + '{"address": "x48", "function": "input", "type": "float32"}}}',
            "address must be a number",
        ),
    ],
)
def test_a_wrong_map_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(MeterMapError, match=message):
        parse_map(text, source="my.json")


def test_a_wrong_map_file_stops_the_tools_with_one_line(tmp_path) -> None:
    bad = tmp_path / "mymeter.json"
    bad.write_text('{"model": "mine", "quantities": {"energy_import_wh": {"address": 72, "function": "input"}}}')
    r = meter_cli("read", "--port", "/dev/null", "--protocol", "modbus", "--meter-map", str(bad))
    assert r.returncode == 64 and "Traceback" not in r.stderr
    assert str(bad) in r.stderr and "energy_import_wh" in r.stderr and "type must be" in r.stderr
    with pytest.raises(MeterMapError, match="unknown meter model 'sdm999'"):
        make_driver("modbus", "/dev/ttyUSB0", model="sdm999")


def test_a_map_file_of_ones_own_is_read(tmp_path, sim_factory) -> None:
    """A user's model: sdm630's energy register alone, through --meter-map."""
    own = tmp_path / "energy-only.json"
    own.write_text(
        json.dumps(
            {
                "model": "energy-only",
                "quantities": {
                    "energy_import_wh": {"address": "0x0048", "function": "input", "type": "float32", "scale": 1000}
                },
            }
        )
    )
    sim = sim_factory("modbus", "--energy-wh", "5000", "--no-load")
    r = meter_cli("read", "--port", sim.path, "--protocol", "modbus", "--meter-map", str(own), "--json")
    assert r.returncode == 0, r.stderr
    reading = json.loads(r.stdout)
    assert reading["energy_wh"] == pytest.approx(5000, abs=0.01) and reading["voltage_v"] is None


# -- the driver against the simulator --------------------------------------------------------------


async def test_driver_reads_the_register_and_maps_every_fault(sim_factory) -> None:
    sim = sim_factory("modbus", "--energy-wh", "123456", "--power-kw", "11", "--time-scale", "60")
    driver = make_driver("modbus", sim.path, model="sdm630", timeout_s=0.5)
    await driver.open()
    try:
        first = await driver.read()
        assert first.energy_wh >= 123456 and first.power_w == pytest.approx(11000)
        assert first.voltage_v == pytest.approx(230) and first.current_a == pytest.approx(11000 / 230, rel=1e-4)
        await asyncio.to_thread(sim.command, "exception 1 2")
        with pytest.raises(MeterProtocolError, match=r"Modbus exception 2 \(illegal data address\)"):
            await driver.read()
        await asyncio.to_thread(sim.command, "corrupt 1")
        with pytest.raises(MeterProtocolError, match="no valid frame"):
            await driver.read()
        await asyncio.to_thread(sim.command, "split on")
        assert (await driver.read()).energy_wh > first.energy_wh  # an answer in 1-3 byte pieces is whole again
        await asyncio.to_thread(sim.command, "split off", "garbage 1")
        try:  # junk before the answer: pymodbus's framer may or may not find the frame behind it
            assert (await driver.read()).energy_wh > first.energy_wh
        except MeterProtocolError as exc:  # bytes came: garbled, never taken for silence
            assert "no valid frame" in str(exc)
        await asyncio.to_thread(sim.command, "garbage 0", "stall 600")
        with pytest.raises(MeterTimeout, match="no answer"):
            await driver.read()
        await asyncio.to_thread(sim.command, "stall 0")
        assert (await driver.read()).energy_wh > first.energy_wh
    finally:
        await driver.close()
    wrong_unit = make_driver("modbus", sim.path, model="sdm630", unit=9, timeout_s=0.5)
    await wrong_unit.open()
    try:
        with pytest.raises(MeterTimeout, match="unit 9"):
            await wrong_unit.read()
    finally:
        await wrong_unit.close()


async def test_meters_on_one_line_share_its_client_and_never_interleave(sim_factory, monkeypatch) -> None:
    from evproto.hw.modbus_meter import ModbusLine

    sent_to: list[int] = []  # the unit id of every request on the wire, in order
    original = ModbusLine.trace

    def trace(self, sending: bool, data: bytes) -> bytes:
        if sending and data:
            sent_to.append(data[0])
        return original(self, sending, data)

    monkeypatch.setattr(ModbusLine, "trace", trace)
    sim = sim_factory("modbus", "--unit", "1")
    present = make_driver("modbus", sim.path, model="sdm630", unit=1, timeout_s=0.5)
    absent = make_driver("modbus", sim.path, model="sdm630", unit=2, timeout_s=0.3)
    await present.open()
    await absent.open()
    try:
        assert present._line is absent._line  # type: ignore[attr-defined]
        results = await asyncio.gather(*(d.read() for _ in range(3) for d in (present, absent)), return_exceptions=True)
        assert [type(r).__name__ for r in results[0::2]] == ["MeterReading"] * 3  # never disturbed by unit 2
        assert all(isinstance(r, MeterTimeout) for r in results[1::2])
        # Each reading of unit 1 is one unbroken run of its requests, however unit 2's went.
        runs = [(unit, len(list(group))) for unit, group in itertools.groupby(sent_to)]
        per_reading = len(present.plan)  # type: ignore[attr-defined]
        assert all(n % per_reading == 0 for unit, n in runs if unit == 1), runs
        assert sum(n for unit, n in runs if unit == 1) == 3 * per_reading
    finally:
        await absent.close()
        assert (await present.read()).energy_wh >= 0  # the line stays open for the meter still on it
        await present.close()


async def test_supervisor_faults_after_two_cycles_and_recovers(sim_factory, tmp_path) -> None:
    link = str(tmp_path / "meter0")
    sim = sim_factory("modbus", "--time-scale", "60", link=link)
    sup = MeterSupervisor(make_driver("modbus", link, model="sdm630", timeout_s=0.3), interval_s=0.2)
    await sup.start()
    try:
        await asyncio.wait_for(_until(lambda: sup.take() is not None), 10)
        sim.send("stall 600")  # until told otherwise: no race with the supervisor's cycles
        await asyncio.wait_for(_until(lambda: sup.health.fault is not None), 10)
        assert sup.health.fault is FaultCode.METER_TIMEOUT and sup.health.failed_cycles >= 2
        sup.take()
        failed = sup.health.failed_cycles
        await asyncio.wait_for(_until(lambda: sup.health.failed_cycles > failed), 10)
        assert sup.take() is None  # stalled: nothing fresh, never the last values again
        sim.send("stall 0")
        await asyncio.wait_for(_until(lambda: sup.health.fault is None), 15)
        await asyncio.wait_for(_until(lambda: sup.take() is not None), 5)
        sim.send("exception 1000")  # exception answers are bad answers, the same fault
        await asyncio.wait_for(_until(lambda: sup.health.fault is FaultCode.METER_TIMEOUT), 10)
        assert sup.health.counters["protocol_errors"] >= 2 and "exception" in sup.health.detail
        sim.send("exception 0")
        await asyncio.wait_for(_until(lambda: sup.health.fault is None), 15)
        sim.send("unplug")
        await asyncio.wait_for(_until(lambda: sup.health.fault is FaultCode.METER_LOST), 10)
        sim.send("plug")
        await asyncio.wait_for(_until(lambda: sup.health.fault is None), 30)
        assert sup.health.counters["gone"] >= 1 and sup.health.counters["reopened"] >= 2
    finally:
        await sup.close()


async def test_a_missing_device_is_gone(tmp_path) -> None:
    driver = make_driver("modbus", str(tmp_path / "ttyUSB9"), model="sdm630")
    with pytest.raises(MeterGone):
        await driver.open()
    await driver.close()


# -- evcp-meter read and scan ---------------------------------------------------------------------


def test_evcp_meter_read_and_scan_find_the_meter(sim_factory) -> None:
    sim = sim_factory("modbus", "--unit", "5", "--baud", "9600", "--energy-wh", "777", "--no-load")
    r = meter_cli("read", "--port", sim.path, "--protocol", "modbus", "--unit", "5", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["energy_wh"] == pytest.approx(777, abs=0.01)
    text = meter_cli("read", "--port", sim.path, "--protocol", "modbus", "--unit", "5")
    assert "energy_import_l1_wh" in text.stdout and "frequency_hz" in text.stdout  # every register of the map
    scan = meter_cli("scan", "--port", sim.path, "--units", "3-6", "--bauds", "4800,9600", "--json")
    assert scan.returncode == 0, scan.stderr
    assert [(e["unit"], e["baudrate"]) for e in json.loads(scan.stdout)] == [(5, 9600)]
    assert "4800 baud: done" in scan.stderr  # progress, per baud rate
    none = meter_cli("scan", "--port", sim.path, "--units", "1-2", "--bauds", "9600", "--probe-timeout-s", "0.1")
    assert none.returncode == 69 and "no unit id answered" in none.stderr


def test_an_abb_meter_with_its_factory_parity_on_a_pty(sim_factory) -> None:
    """ABB B23 ships with even parity, which a pty refuses (and pyserial then keeps the port locked):
    the driver sees a pty and uses none (logging a warning) instead of failing to open."""
    sim = sim_factory("modbus", "--meter-model", "abb-b23", "--baud", "19200", "--energy-wh", "4242", "--no-load")
    r = meter_cli("read", "--port", sim.path, "--protocol", "modbus", "--meter-model", "abb-b23", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["energy_wh"] == pytest.approx(4240, abs=0.01)  # 0.01 kWh resolution


def test_the_simulator_also_serves_rtu_over_tcp() -> None:
    sim = subprocess.Popen(
        [sys.executable, "-m", "evproto.firmware_sim", "--tcp", "127.0.0.1:0", "--protocol", "modbus"]
        + ["--meter-model", "sdm72", "--energy-wh", "4242", "--no-load"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert sim.stdout is not None
        url = sim.stdout.readline().decode().strip()
        assert url.startswith("tcp://127.0.0.1:")
        r = meter_cli("read", "--port", url, "--protocol", "modbus", "--meter-model", "sdm72", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["energy_wh"] == pytest.approx(4242, abs=0.01)
    finally:
        sim.terminate()
        sim.wait(5)


# -- an independent peer: pymodbus's server configured here, not through our simulator ------------


@contextlib.asynccontextmanager
async def _pymodbus_meter(devices, tmp_path):
    """pymodbus's RTU server on one pty, our client on another, the two masters bridged (the cable)."""
    from pymodbus.framer import FramerType
    from pymodbus.server import ModbusSerialServer

    from evproto.aio import open_fd_stream

    fds = []
    pairs = []
    for _ in range(2):
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        fds += [master, slave]
        pairs.append((master, os.ttyname(slave)))
    server = ModbusSerialServer(devices, framer=FramerType.RTU, port=pairs[0][1], baudrate=9600)
    await server.serve_forever(background=True)
    (r1, w1), (r2, w2) = await open_fd_stream(pairs[0][0]), await open_fd_stream(pairs[1][0])

    async def pump(reader, writer) -> None:
        while data := await reader.read(512):
            writer.write(data)

    pumps = [asyncio.ensure_future(pump(r1, w2)), asyncio.ensure_future(pump(r2, w1))]
    try:
        yield pairs[1][1]
    finally:
        for p in pumps:
            p.cancel()
        await server.shutdown()
        for w in (w1, w2):
            w.close()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


async def test_our_client_reads_a_pymodbus_server_configured_by_the_test(tmp_path) -> None:
    from pymodbus.simulator import DataType, SimData, SimDevice

    bits = [SimData(0, values=False, datatype=DataType.BITS)]
    # An SDM630 as its manual lays it out, values written by pymodbus's own float encoder.
    sdm630 = SimDevice(
        id=7,
        simdata=(
            bits,
            list(bits),
            [SimData(0, values=0, datatype=DataType.REGISTERS)],
            [
                SimData(0x0000, values=[231.5, 230.0, 229.5, 16.0, 0.5, 0.25], datatype=DataType.FLOAT32),
                SimData(0x0034, values=3700.0, datatype=DataType.FLOAT32),
                SimData(0x0046, values=[49.98, 12345.678], datatype=DataType.FLOAT32),
                SimData(0x015A, values=[12000.0, 300.0, 45.678], datatype=DataType.FLOAT32),
            ],
        ),
    )
    async with _pymodbus_meter([sdm630], tmp_path) as port:
        driver = make_driver("modbus", port, model="sdm630", unit=7, timeout_s=1.0)
        await driver.open()
        try:
            reading = await driver.read()
            values = driver.last_values  # type: ignore[attr-defined]
            wrong = make_driver("modbus", port, model="sdm630", unit=8, timeout_s=0.3)
            await wrong.open()
            with pytest.raises((MeterTimeout, MeterProtocolError)):  # pymodbus answers another id with an exception
                await wrong.read()
            await wrong.close()
        finally:
            await driver.close()
    assert reading.energy_wh == pytest.approx(12345678.0, rel=1e-6)
    assert reading.power_w == pytest.approx(3700.0) and reading.voltage_v == pytest.approx(231.5)
    assert reading.current_a == pytest.approx(16.0)
    assert values[Quantity.FREQUENCY_HZ] == pytest.approx(49.98, rel=1e-6)
    assert values[Quantity.ENERGY_IMPORT_L3_WH] == pytest.approx(45678.0, rel=1e-6)
    assert values[Quantity.CURRENT_L3_A] == pytest.approx(0.25)


async def test_our_client_reads_abb_integers_from_a_pymodbus_server(tmp_path) -> None:
    from pymodbus.simulator import DataType, SimData, SimDevice

    bits = [SimData(0, values=False, datatype=DataType.BITS)]
    abb = SimDevice(
        id=1,
        simdata=(
            bits,
            list(bits),
            [
                SimData(0x5000, values=123456789, datatype=DataType.UINT64),  # 0.01 kWh
                SimData(0x5460, values=[100, 200, 300], datatype=DataType.UINT64),
                SimData(0x5B00, values=[2315, 2300, 2295], datatype=DataType.UINT32),  # 0.1 V
                SimData(0x5B0C, values=[1600, 0, 0], datatype=DataType.UINT32),  # 0.01 A
                SimData(0x5B14, values=-370000, datatype=DataType.INT32),  # 0.01 W: exporting
                SimData(0x5B2C, values=4998, datatype=DataType.UINT16),  # 0.01 Hz
            ],
            [SimData(0, values=0, datatype=DataType.REGISTERS)],
        ),
    )
    async with _pymodbus_meter([abb], tmp_path) as port:
        driver = make_driver("modbus", port, model="abb-b23", baudrate=9600, parity="N", timeout_s=1.0)
        await driver.open()
        try:
            reading = await driver.read()
        finally:
            await driver.close()
    assert reading.energy_wh == pytest.approx(1234567890.0)
    assert reading.power_w == pytest.approx(-3700.0) and reading.voltage_v == pytest.approx(231.5)
    assert reading.current_a == pytest.approx(16.0)
    assert driver.last_values[Quantity.FREQUENCY_HZ] == pytest.approx(49.98)  # type: ignore[attr-defined]


# -- an engine billing from the Modbus register ----------------------------------------------------


@pytest.mark.slow
def test_engine_bills_the_register_and_breaks_and_recovers_with_the_meter(net, sim_factory) -> None:
    from netharness import KafkaDriver, wait_for

    from evproto.domain.events import DriverTelemetry

    sim = sim_factory("modbus", "--unit", "3", "--no-load", "--power-kw", "11", "--time-scale", "60")
    net.start_central("D001")
    engine = net.start_engine(
        "CP001",
        engine_args=(
            "--port",
            sim.path,
            "--meter-protocol",
            "modbus",
            "--meter-model",
            "sdm630",
            "--meter-unit",
            "3",
            "--meter-interval-s",
            "0.3",
            "--meter-timeout-s",
            "0.5",
        ),
    )
    net.start_monitor("CP001", engine.ready["listen"], price=0.40)
    net.wait_state("CP001", "ACTIVATED", timeout_s=30)
    driver = KafkaDriver(net, "D001")
    rid = driver.request("CP001")
    driver.wait_status(rid, "authorized")
    engine.send("p")
    net.wait_state("CP001", "SUPPLYING")
    sim.send("load on")  # the vehicle draws power only during the supply
    wait_for(
        lambda: any(isinstance(e, DriverTelemetry) and e.energy_kwh > 0.3 for e in driver.events()),
        "telemetry from the meter's register",
    )
    sim.send("load off")
    register_wh = sim.energy_wh()
    state = os.path.join(net.tmp, "state-CP001", "engine-state.json")
    wait_for(
        lambda: (json.load(open(state))["cp"].get("meter_energy_wh") or 0) >= register_wh - 0.05,
        "the engine to read the final register",
    )
    engine.send("u")
    driver.wait_status(rid, "completed")
    (ticket,) = driver.tickets()
    assert ticket.energy_kwh * 1000 == pytest.approx(register_wh, abs=0.05)  # float32 kWh on the wire
    assert ticket.amount_eur == pytest.approx(ticket.energy_kwh * 0.40)
    sim.send("stall 600")  # the meter goes silent: KO after two failed cycles
    net.wait_state("CP001", "BROKEN", timeout_s=15)
    sim.send("stall 0")  # it answers again: the fault clears by itself
    net.wait_state("CP001", "ACTIVATED", timeout_s=30)
    assert engine.alive()
