"""Edges of the driver, the engine and the monitor: bad arguments, bad records, silence, crashes.

Command lines run as a user runs them; records are forged with a real producer on the
real embedded broker and read by real daemons; crashes are real signals.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from netharness import KafkaDriver, Network, wait_for

from evproto.bus.events import encode_event
from evproto.bus.kafka import BusProducer, ensure_topics
from evproto.bus.topics import Topic, partition_for
from evproto.daemons.driver import LiveFigures, parse_requests
from evproto.daemons.quarantine import CrashGuard
from evproto.daemons.readers import CENTRAL_SILENCE_S, CentralWatch
from evproto.domain.events import (
    MAX_POWER_KW,
    MAX_TARGET_DURATION_S,
    MAX_TARGET_ENERGY_KWH,
    CpStateRecord,
    DriverTelemetry,
    ResumeCommand,
    StopCommand,
    Ticket,
)

BIN = os.path.dirname(sys.executable)


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# -- a driver's requests: bounds -------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "CP002 " + "9" * 400 + "kWh",  # a float of 400 digits is infinite
        "CP002 100000000000000000000000000kWh",
        f"CP002 {MAX_TARGET_ENERGY_KWH + 0.5}kWh",
        f"CP002 {(MAX_TARGET_ENERGY_KWH + 1) * 1000:g}Wh",
        f"CP002 {MAX_TARGET_DURATION_S + 1:g}s",
        f"CP002 {MAX_TARGET_DURATION_S / 60 + 1:g}min",
        "CP002 0kWh",
        "CP\u200b002 2kWh",  # looks like CP002 on a screen
        "CP" + "0" * 70 + " 2kWh",
    ],
)
def test_a_requests_file_line_out_of_bounds_is_a_usage_error_naming_the_line(tmp_path, line: str, run_daemon) -> None:
    f = tmp_path / "req.txt"
    f.write_text(f"CP001 1kWh\n# fine so far\n{line}\n", encoding="utf-8")
    r = run_daemon(
        "ev-driver",
        "--kafka",
        "127.0.0.1:1",
        "--id",
        "D1",
        "--requests",
        str(f),
        "--state-dir",
        str(tmp_path / "state"),
        timeout=30,
    )
    assert r.returncode == 64, (r.returncode, r.stderr[-2000:])
    assert "req.txt:3:" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr) < 1000, "the error must not echo a huge line whole"


@pytest.mark.parametrize("content", [b"CP001\n" * 300_000, b"CP001 2kWh\n\xff\xfe\n"], ids=["2 MB", "not UTF-8"])
def test_a_requests_file_too_big_or_not_text_is_a_usage_error(tmp_path, content: bytes, run_daemon) -> None:
    f = tmp_path / "req.txt"
    f.write_bytes(content)
    r = run_daemon(
        "ev-driver",
        "--kafka",
        "127.0.0.1:1",
        "--id",
        "D1",
        "--requests",
        str(f),
        "--state-dir",
        str(tmp_path / "state"),
        timeout=30,
    )
    assert r.returncode == 64 and "Traceback" not in r.stderr and len(r.stderr) < 1000, r.stderr[-2000:]


def test_targets_at_the_bounds_are_accepted() -> None:
    (energy, duration, small) = parse_requests(
        f"CP1 {MAX_TARGET_ENERGY_KWH:g}kWh\nCP1 {MAX_TARGET_DURATION_S / 60:g}min\nCP1 1Wh\n"
    )
    assert energy.target_energy_kwh == MAX_TARGET_ENERGY_KWH
    assert duration.target_duration_s == MAX_TARGET_DURATION_S
    assert small.target_energy_kwh == pytest.approx(0.001)
    with pytest.raises(ValueError, match="request:1:"):
        parse_requests(f"CP1 {MAX_TARGET_DURATION_S + 0.5}s", source="request")


@pytest.mark.parametrize("driver_id", ["", "D\u200b1", "D 1", "D" * 65])
def test_a_driver_id_nobody_can_address_is_a_usage_error(tmp_path, driver_id: str, run_daemon) -> None:
    r = run_daemon(
        "ev-driver", "--kafka", "127.0.0.1:1", "--id", driver_id, "--state-dir", str(tmp_path / "state"), timeout=30
    )
    assert r.returncode == 64, (r.returncode, r.stderr[-2000:])
    assert "--id" in r.stderr and "Traceback" not in r.stderr


# -- a monitor's registration: bounds --------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--id", ""),
        ("--id", "CP001\u200b"),
        ("--id", "CP 001"),
        ("--location", "Ali\u202ecante"),  # a bidi override would reverse what the panel shows
        ("--location", "x" * 200),
        ("--location", " Alicante"),
    ],
)
def test_a_monitor_refuses_an_id_or_location_nobody_could_use(option: str, value: str, run_daemon) -> None:
    args = {"--id": "CP001", "--location": "Alicante", option: value}
    r = run_daemon(
        "evcp-monitor",
        "--engine",
        "127.0.0.1:1",
        "--central",
        "127.0.0.1:1",
        *(a for kv in args.items() for a in kv),
        "--price",
        "0.3",
        timeout=30,
    )
    assert r.returncode == 64, (r.returncode, r.stderr[-2000:])
    assert option in r.stderr and "Traceback" not in r.stderr


# -- a simulated meter's speed ---------------------------------------------------------------


def test_the_engine_refuses_a_simulated_meter_faster_than_central_accepts(tmp_path, run_daemon) -> None:
    engine = "evcp-engine"
    power_kw = 100.0
    time_scale = MAX_POWER_KW / power_kw * 1.5
    r = run_daemon(
        engine,
        "--kafka",
        "127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        str(tmp_path),
        "--power-kw",
        str(power_kw),
        "--time-scale",
        str(time_scale),
        timeout=30,
    )
    assert r.returncode == 64, (r.returncode, r.stderr[-2000:])
    assert "--time-scale" in r.stderr and f"{MAX_POWER_KW:g} kW" in r.stderr and "Traceback" not in r.stderr
    helped = " ".join(run_daemon(engine, "--help").stdout.split())
    assert f"{MAX_POWER_KW:g} kW" in helped


# -- hearing Central ------------------------------------------------------------------------


class Clock:
    """Monotonic seconds, moved by the test."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_central_watch_gives_the_first_heartbeat_time_then_says_each_change_once() -> None:
    clock = Clock()
    watch = CentralWatch(clock=clock)
    clock.now += 60  # connecting to the broker: nothing can be heard yet
    assert watch.state() is None and watch.news() is None
    watch.listening()
    clock.now += CENTRAL_SILENCE_S - 0.1
    assert watch.state() is None and watch.news() is None and not watch.reachable  # too early to complain
    watch.heard()
    assert watch.reachable and watch.news() is None  # in time: nothing to say
    clock.now += CENTRAL_SILENCE_S - 0.1
    assert watch.news() is None
    clock.now += 0.2
    assert not watch.reachable and watch.news() is False
    clock.now += 30
    assert watch.news() is None  # said once, not every poll
    watch.heard()
    assert watch.news() is True and watch.news() is None


def test_central_watch_complains_when_central_never_speaks() -> None:
    clock = Clock()
    watch = CentralWatch(clock=clock)
    watch.listening()
    clock.now += CENTRAL_SILENCE_S
    assert watch.news() is False and watch.news() is None
    watch.heard()
    assert watch.news() is True


# -- which live readings a driver is shown ---------------------------------------------------


def reading(session_id: int, produced_s: float, energy_kwh: float) -> DriverTelemetry:
    t = 1_800_000_000_000 + int(produced_s * 1000)
    return DriverTelemetry(
        driver_id="D1",
        session_id=session_id,
        cp_id="CP1",
        energy_kwh=energy_kwh,
        amount_eur=energy_kwh * 0.3,
        power_kw=22.0,
        produced_ts_ms=t,
        ts_ms=t,
    )


def test_a_burst_of_late_readings_shows_its_newest_and_none_once_the_ticket_follows() -> None:
    figures = LiveFigures(every_s=2.0, settle_s=0.5)
    for n in range(10):  # relayed in one go after an outage
        figures.offer(reading(1, n, 0.1 * n), 50.0)
    assert figures.due(50.4) is None  # still settling
    assert figures.due(50.5).energy_kwh == pytest.approx(0.9)
    for n in range(10, 20):
        figures.offer(reading(1, n, 0.1 * n), 60.0)
    figures.ended(1)  # the ticket, right behind them
    assert figures.due(61.0) is None and figures.due(70.0) is None
    figures.offer(reading(1, 25, 2.5), 71.0)  # re-sent after the ticket
    assert figures.due(80.0) is None


def test_a_reading_older_than_one_shown_is_never_shown() -> None:
    figures = LiveFigures(every_s=2.0, settle_s=0.5)
    figures.offer(reading(1, 10, 1.0), 0.0)
    assert figures.due(1.0).energy_kwh == 1.0
    figures.offer(reading(1, 9, 0.9), 5.0)  # out of order, or read again after a restart
    figures.offer(reading(1, 10, 1.0), 5.0)
    assert figures.due(10.0) is None
    figures.offer(reading(2, 3, 0.3), 11.0)  # the next session starts afresh
    assert figures.due(12.0).session_id == 2


def test_live_readings_are_paced() -> None:
    figures = LiveFigures(every_s=2.0, settle_s=0.5)
    shown = []
    for n in range(10):  # one a second
        figures.offer(reading(1, n, 0.1 * n), float(n))
        for tenth in range(10):
            ev = figures.due(n + tenth / 10)
            if ev is not None:
                shown.append((n + tenth / 10, ev.produced_ts_ms))
    times = [t for t, _ in shown]
    assert len(shown) >= 4 and all(b - a >= 2.0 for a, b in zip(times, times[1:]))
    assert [p for _, p in shown] == sorted(p for _, p in shown)


# =============================================================================================
# Real networks on the embedded broker
# =============================================================================================


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
    wait_for(
        lambda: any(isinstance(e, DriverTelemetry) and e.energy_kwh > 0 for e in driver.events()), "energy to flow"
    )

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


# -- records that cannot be applied never stop or loop a reader ------------------------------


def forge(net: Network, topic: Topic, key: str, values: list[bytes]) -> tuple[int, list[int]]:
    """Produce ``values`` (keyed ``key``, on the key's partition) as anyone with access to the
    broker could; returns the partition and each record's offset."""

    async def send() -> tuple[int, list[int]]:
        partition = partition_for(key, (await ensure_topics(net.settings))[topic])
        async with BusProducer(net.settings) as producer:
            return partition, [(await producer.send(topic, key, v, partition=partition))[1] for v in values]

    return asyncio.run(send())


def dead_letters(state_dir: str) -> list[dict]:
    try:
        with open(os.path.join(state_dir, "dead-letters.jsonl"), encoding="ascii") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []


def raw(**fields) -> bytes:
    return json.dumps({"v": 1, **fields}, ensure_ascii=False).encode()


def mark_crashes(state_dir: str, topic: Topic, partition: int, offset: int, deaths: int) -> None:
    """Leave the crash mark that ``deaths`` runs dying while applying this record would leave."""
    for _ in range(deaths):
        guard = CrashGuard(os.path.join(state_dir, "crash-mark"))
        guard.applying([(topic.value, partition, offset, offset)])
        guard.close()


def bad_ticket(**change) -> bytes:
    t = now_ms()
    fields = dict(
        type="ticket",
        driver_id="D001",
        session_id=7,
        request_id="r7",
        cp_id="CP001",
        energy_kwh=1.0,
        amount_eur=0.3,
        price_eur_kwh=0.3,
        started_ts_ms=t - 60_000,
        ended_ts_ms=t,
        status="completed",
        end_reason="completed",
        ts_ms=t,
    )
    return raw(**{**fields, **change})


def good_ticket(session_id: int) -> bytes:
    t = now_ms()
    return encode_event(
        Ticket(
            driver_id="D001",
            session_id=session_id,
            request_id=f"r{session_id}",
            cp_id="CP001",
            energy_kwh=1.0,
            amount_eur=0.3,
            price_eur_kwh=0.3,
            started_ts_ms=t - 60_000,
            ended_ts_ms=t,
            status="completed",
            end_reason="completed",
            ts_ms=t,
        )
    )


@pytest.mark.slow
def test_an_engine_quarantines_commands_it_cannot_apply_and_applies_the_next(net: Network) -> None:
    net.start_central("D001")
    engine, _ = net.start_cp("CP001")
    net.wait_state("CP001", "ACTIVATED")
    state_dir = os.path.join(net.tmp, "state-CP001")
    t = now_ms()
    bad = [
        raw(type="stop", cp_id="CP001\u200b", ts_ms=t),  # a zero-width character: not CP001
        raw(
            type="authorize",
            cp_id="CP001",
            session_id=5,
            driver_id="D001",
            request_id="r5",
            price_eur_kwh=1e6,
            expires_ts_ms=t + 60_000,
            ts_ms=t,
        ),
        b'{"v":1,"type":"stop",',
        b"[" + b" " * 900_000 + b"]",
        raw(type="stop", cp_id="CP001", ts_ms=t + 10 * 86_400_000),  # ten days ahead of every clock
        encode_event(StopCommand(cp_id="CP002", ts_ms=t)),  # another CP's command, keyed to this one
        encode_event(CpStateRecord(cp_id="CP001", location="x", price_eur_kwh=0.3, state="ACTIVATED", ts_ms=t)),
    ]
    _, offsets = forge(net, Topic.CP_COMMANDS, "CP001", [*bad, encode_event(StopCommand(cp_id="CP001", ts_ms=t))])
    wait_for(lambda: net.log_has(engine, "STOP from Central"), "the valid command after the bad ones")
    assert engine.alive()
    letters = dead_letters(state_dir)
    assert [d["offset"] for d in letters] == offsets[:-1]
    reasons = [d["reason"] for d in letters]
    for reason, word in zip(
        reasons, ["cp_id", "price_eur_kwh", "not JSON", "bytes", "ahead", "CP002", "not a command"]
    ):
        assert word in reason, reasons
    assert letters[3]["size"] == 900_002 and len(letters[3]["value_b64"]) < 6000
    assert net.log_has(engine, "quarantined cp-commands")

    # Restarted, it does not read them again: its offset moved past them.
    net.kill(engine)
    engine = net.restart(engine)
    net.wait_state("CP001", "ACTIVATED", timeout_s=20)
    forge(net, Topic.CP_COMMANDS, "CP001", [encode_event(ResumeCommand(cp_id="CP001", ts_ms=now_ms()))])
    wait_for(lambda: net.log_has(engine, "RESUME from Central"), "the next command after a restart")
    assert len(dead_letters(state_dir)) == len(bad)


@pytest.mark.slow
def test_an_engine_sets_aside_a_command_it_died_on_three_times(net: Network) -> None:
    net.start_central("D001")
    engine, _ = net.start_cp("CP001")
    net.wait_state("CP001", "ACTIVATED")
    state_dir = os.path.join(net.tmp, "state-CP001")
    net.kill(engine, signal.SIGTERM)  # its commands offset is stored
    partition, (deadly,) = forge(
        net, Topic.CP_COMMANDS, "CP001", [encode_event(StopCommand(cp_id="CP001", ts_ms=now_ms()))]
    )
    mark_crashes(state_dir, Topic.CP_COMMANDS, partition, deadly, 3)

    engine = net.restart(engine)
    wait_for(lambda: [d["offset"] for d in dead_letters(state_dir)] == [deadly], "the record set aside")
    assert "died 3 times" in dead_letters(state_dir)[0]["reason"]
    forge(
        net,
        Topic.CP_COMMANDS,
        "CP001",
        [
            encode_event(ResumeCommand(cp_id="CP001", ts_ms=now_ms())),
            encode_event(StopCommand(cp_id="CP001", ts_ms=now_ms())),
        ],
    )
    wait_for(lambda: net.log_has(engine, "STOP from Central"), "the next command")
    with open(engine.log, encoding="utf-8") as fh:
        assert fh.read().count("STOP from Central") == 1, "the deadly record was not applied"


def start_app(net: Network, driver_id: str = "D001", *args: str, stdin: bool = False):
    """``ev-driver`` with no requests file: it stays, reads its events and takes commands."""
    return net.spawn(
        f"driver-{driver_id}",
        "driver",
        "--kafka",
        net.bootstrap,
        "--id",
        driver_id,
        "--state-dir",
        os.path.join(net.tmp, f"dstate-{driver_id}"),
        *args,
        stdin=stdin,
    )


@pytest.mark.slow
def test_a_driver_quarantines_events_it_cannot_apply_and_applies_the_next(net: Network) -> None:
    app = start_app(net)
    state_dir = os.path.join(net.tmp, "dstate-D001")
    t = now_ms()
    bad = [
        bad_ticket(energy_kwh=1e9, amount_eur=3e8),  # absurd
        bad_ticket(ended_ts_ms=t + 30 * 86_400_000),  # a month ahead
        bad_ticket(driver_id="D001\u200b"),
        b"\xff\xfe not even UTF-8",
        bad_ticket(driver_id="D002"),  # another driver's ticket, keyed to this one
        encode_event(ResumeCommand(cp_id="CP001", ts_ms=t)),
    ]
    _, offsets = forge(net, Topic.DRIVER_EVENTS, "D001", [*bad, good_ticket(41)])
    wait_for(lambda: net.log_has(app, "TICKET session 41"), "the valid ticket after the bad ones")
    assert app.alive()
    letters = dead_letters(state_dir)
    assert [d["offset"] for d in letters] == offsets[:-1]
    reasons = [d["reason"] for d in letters]
    for reason, word in zip(reasons, ["energy_kwh", "ahead", "driver_id", "not JSON", "D002", "not a driver event"]):
        assert word in reason, reasons
    assert not net.log_has(app, "TICKET session 7")


@pytest.mark.slow
def test_a_driver_sets_aside_an_event_it_died_on_three_times(net: Network) -> None:
    app = start_app(net)
    state_dir = os.path.join(net.tmp, "dstate-D001")
    net.kill(app, signal.SIGTERM)
    partition, (deadly,) = forge(net, Topic.DRIVER_EVENTS, "D001", [good_ticket(51)])
    mark_crashes(state_dir, Topic.DRIVER_EVENTS, partition, deadly, 3)
    app = net.restart(app)
    forge(net, Topic.DRIVER_EVENTS, "D001", [good_ticket(52)])
    wait_for(lambda: net.log_has(app, "TICKET session 52"), "the next ticket")
    assert [d["offset"] for d in dead_letters(state_dir)] == [deadly]
    assert not net.log_has(app, "TICKET session 51")


@pytest.mark.slow
def test_a_typed_request_out_of_bounds_is_a_warning(net: Network) -> None:
    app = start_app(net, stdin=True)
    app.send("r CP002 " + "9" * 400 + "kWh")
    app.send("r CP\u200b002")
    wait_for(lambda: net.log_has(app, "request:1: target") and net.log_has(app, "request:1: CP id"), "both warnings")
    assert app.alive() and not net.log_has(app, "Traceback") and not net.log_has(app, "requesting a supply")


# -- a driver hears Central's silence whatever it is doing -----------------------------------


@pytest.mark.slow
def test_a_driver_says_when_central_falls_silent_and_when_it_is_back_never_at_its_start(net: Network) -> None:
    central = net.start_central("D001")
    app = net.start_driver("D001", "CP404\n", "--stay")  # an unknown CP: a quick denial, then idle
    wait_for(lambda: net.log_has(app, "CP404: DENIED"), "the request's answer")
    assert not net.log_has(app, "cannot reach Central"), "a false alarm before the first heartbeat"

    net.kill(central)  # the app is idle: nothing to send, yet it must say so
    wait_for(lambda: net.log_has(app, "cannot reach Central"), "the app to say Central is silent", timeout_s=20)
    net.start_central(same_ports=True)
    wait_for(lambda: net.log_has(app, "Central reachable again"), "the app to say Central is back", timeout_s=30)
    with open(app.log, encoding="utf-8") as fh:
        assert fh.read().count("cannot reach Central") == 1


# -- live figures after an outage ------------------------------------------------------------


@pytest.mark.slow
def test_after_central_s_outage_a_driver_shows_the_ticket_not_a_stale_reading_of_that_supply(net: Network) -> None:
    central = net.start_central("D001")
    engine, _ = net.start_cp("CP001", engine_args=("--time-scale", "60"))
    net.wait_state("CP001", "ACTIVATED")
    app = net.start_driver("D001", "CP001\n", "--stay")  # no target: it runs until unplugged
    wait_for(lambda: net.log_has(app, "plug in at CP001"), "the authorisation")
    engine.send("p")
    wait_for(lambda: net.log_has(app, "charging at CP001"), "live figures")

    net.kill(central)
    time.sleep(3.0)  # the engine goes on reporting progress into Kafka, which nobody relays
    engine.send("u")
    wait_for(lambda: ledger(net, "CP001"), "the engine to finish the supply while Central is down")
    with open(app.log, encoding="utf-8") as fh:
        before = len(fh.read())
    net.start_central(same_ports=True)  # it relays the backlog: progress reports, then the end
    wait_for(lambda: net.log_has(app, "TICKET session"), "the ticket", timeout_s=30)
    wait_for(lambda: net.log_has(app, "all 1 requests done"), "the final update")
    time.sleep(1.0)  # anything late would show by now
    with open(app.log, encoding="utf-8") as fh:
        after = fh.read()[before:]
    assert "charging at" not in after, after


@pytest.mark.slow
def test_bad_heartbeat_and_cp_state_records_are_skipped_never_applied_never_fatal(net: Network) -> None:
    net.start_central("D001")
    engine, _ = net.start_cp("CP001")
    net.wait_state("CP001", "ACTIVATED")
    app = start_app(net, stdin=True)
    t = now_ms()
    ahead = t + 10 * 86_400_000
    forge(
        net,
        Topic.CENTRAL_HEARTBEAT,
        "central",
        [
            b"\x00garbage",
            raw(type="heartbeat", instance_id="x", started_ts_ms=t, interval_s=1.0, ts_ms=ahead),
            encode_event(ResumeCommand(cp_id="CP001", ts_ms=t)),
        ],
    )
    forge(
        net,
        Topic.CP_STATE,
        "CP001",
        [b"[", raw(type="cp_state", cp_id="CP001", location="x", price_eur_kwh=0.3, state="BROKEN", ts_ms=ahead)],
    )
    forge(
        net,
        Topic.CP_STATE,
        "CP009",
        [  # CP001's state under another key
            encode_event(CpStateRecord(cp_id="CP001", location="x", price_eur_kwh=0.3, state="BROKEN", ts_ms=t))
        ],
    )
    forge(
        net,
        Topic.CP_STATE,
        "CP007",
        [encode_event(CpStateRecord(cp_id="CP007", location="Elche", price_eur_kwh=0.3, state="ACTIVATED", ts_ms=t))],
    )
    wait_for(
        lambda: net.log_has(app, "skipped a record on cp-state") and net.log_has(app, "heartbeat topic"),
        "the app to skip the bad records",
    )

    def listed() -> bool:
        app.send("l")  # again until the app has read the last record
        return net.log_has(app, "available: CP001, CP007")

    wait_for(listed, "the CPs as Central published them", interval_s=0.5)
    assert app.alive() and engine.alive()
    assert not net.log_has(app, "cannot reach Central") and not net.log_has(engine, "cannot reach Central")


@pytest.mark.slow
def test_an_engine_refuses_a_typed_driver_id_nobody_could_be_and_keeps_taking_keys(net: Network) -> None:
    net.start_central("D001")
    engine, _ = net.start_cp("CP001")
    net.wait_state("CP001", "ACTIVATED")
    net.wait_serving(engine, "CP001")
    engine.send("m D\u200b001")
    engine.send("m " + "D" * 100)
    engine.send("s")
    wait_for(lambda: net.log_has(engine, "CP001: idle"), "the status line after the bad ids")
    with open(engine.log, encoding="utf-8") as fh:
        assert fh.read().count("driver id") == 2
    assert engine.alive() and not net.log_has(engine, "Traceback")


@pytest.mark.parametrize(
    ("program", "content"),
    [
        ("engine", '{"cp_id": "CP001", "cp": {"phase": "supplying", "supply": {"bogus": 1}}}'),
        ("engine", '{"cp_id": "CP001", "cp": {"phase": "teleporting"}}'),
        ("engine", "{not json"),
        ("engine", "[1, 2]"),
        ("driver", "{not json"),
        ("driver", '"a string"'),
        ("driver", "\udcff".encode("utf-8", "surrogateescape").decode("latin-1")),
    ],
)
def test_an_unreadable_state_file_is_a_clear_refusal_not_a_traceback(
    net: Network, tmp_path, content: str, program: str
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    name = "engine-state.json" if program == "engine" else "driver-state.json"
    (state_dir / name).write_bytes(content.encode("latin-1") if content.startswith("\xff") else content.encode())
    args = (
        ["evcp-engine", "--kafka", net.bootstrap, "--listen", "127.0.0.1:0"]
        if program == "engine"
        else ["ev-driver", "--kafka", net.bootstrap, "--id", "D001", "--exit-when-done", "--insecure"]
    )
    r = run(os.path.join(BIN, args[0]), *args[1:], "--state-dir", str(state_dir), timeout=60)
    assert r.returncode == 65, (r.returncode, r.stderr[-2000:])
    assert name in r.stderr and "move it aside" in r.stderr and "Traceback" not in r.stderr
    assert (state_dir / name).exists()  # kept as it was, for whoever repairs it
