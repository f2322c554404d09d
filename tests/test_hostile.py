"""Hostile and broken input against a real Central and the real broker.

Each case forges records as anyone who reaches the broker could (plain confluent-kafka),
then checks: Central is alive, the record is quarantined and counted, Central's state is
right, a restart does not re-read the poison, and the other CPs are unaffected.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

import pytest
from netharness import KafkaDriver, Network, Proc, full_supply, wait_for

from evproto.bus.topics import Topic

pytestmark = pytest.mark.slow

NOW_MS = int(time.time() * 1000)


def two_cps(net: Network) -> tuple[Proc, dict[str, Proc]]:
    central = net.start_central("D001", "D002")
    engines = {}
    for cp_id in ("CP001", "CP002"):
        engines[cp_id], _ = net.start_cp(cp_id, engine_args=("--time-scale", "60"))
    for cp_id in engines:
        net.wait_state(cp_id, "ACTIVATED")
    return central, engines


def dead_letter(net: Network, says: str) -> dict:
    return wait_for(
        lambda: next((d for d in net.get("/api/v1/dead-letters") if says in d["reason"]), None),
        f"a dead letter saying {says!r}",
    )


def finished(**changes: object) -> bytes:
    ev = {
        "v": 1,
        "type": "supply_finished",
        "cp_id": "CP001",
        "session_id": 1,
        "driver_id": "D001",
        "energy_kwh": 1.0,
        "amount_eur": 0.3,
        "price_eur_kwh": 0.3,
        "started_ts_ms": NOW_MS - 60_000,
        "ended_ts_ms": NOW_MS,
        "reason": "completed",
        "ts_ms": NOW_MS,
        "offline": False,
        "request_id": "",
    }
    return json.dumps({**ev, **changes}).encode()


def request(request_id: str, driver_id: str, cp_id: str) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "type": "supply_request",
            "request_id": request_id,
            "driver_id": driver_id,
            "cp_id": cp_id,
            "ts_ms": int(time.time() * 1000),
            "origin": "driver",
        }
    ).encode()


def test_a_64_bit_start_time_is_quarantined_and_a_restart_does_not_read_it_again(net: Network) -> None:
    central, engines = two_cps(net)
    net.forge(Topic.CP_EVENTS, "CP001", finished(started_ts_ms=18446744073709551615))
    letter = dead_letter(net, "started_ts_ms 18446744073709551615 is out of range")
    assert letter["topic"] == "cp-events" and letter["key"] == "CP001" and letter["size"] > 200
    assert central.alive() and net.status()["quarantined"] == 1

    net.kill(central)
    central = net.start_central("D001", "D002", same_ports=True)
    net.wait_state("CP001", "ACTIVATED")
    ticket = full_supply(net, KafkaDriver(net, "D001"), "CP002", engines["CP002"])
    assert central.alive() and ticket.energy_kwh > 0
    counters = net.status()
    assert counters["dead_letters"] == 1 and counters.get("quarantined", 0) == 0  # not read again


def test_forged_supply_ends_never_make_tickets(net: Network) -> None:
    central, engines = two_cps(net)
    forged = [
        # An unregistered driver at an unknown CP, -50 kWh and -1000 EUR.
        (finished(cp_id="CP666", driver_id="X1", energy_kwh=-50.0, amount_eur=-1000.0), "energy_kwh -50.0"),
        # The same, with figures in range: it refers to nothing Central knows.
        (finished(cp_id="CP666", driver_id="X1", session_id=3), "CP666 is not a registered charge point"),
        (finished(session_id=4242), "session 4242 does not exist"),
        (finished(session_id=0, offline=True, driver_id="X1", request_id="off-1"), "X1, who is not a registered"),
        (finished(session_id=0), "session 0 is only for a supply served offline"),
        (finished(started_ts_ms=10**15), "started_ts_ms 1000000000000000 is out of range"),
        (finished(amount_eur=99.0), "amount_eur 99 is not energy x price"),
    ]
    for value, _ in forged:
        net.forge(Topic.CP_EVENTS, "CP001", value)
    for _, says in forged:
        dead_letter(net, says)
    assert net.get("/api/v1/sessions") == [] and net.status()["quarantined"] == len(forged)
    assert central.alive()
    ticket = full_supply(net, KafkaDriver(net, "D001"), "CP001", engines["CP001"])
    assert [s["id"] for s in net.get("/api/v1/sessions")] == [ticket.session_id]


def test_a_reused_request_id_is_a_repeat_or_quarantined_never_a_crash(net: Network) -> None:
    central, engines = two_cps(net)
    driver = KafkaDriver(net, "D001")
    ticket = full_supply(net, driver, "CP001", engines["CP001"])
    rid = ticket.request_id
    net.forge(Topic.DRIVER_REQUESTS, "D001", request(rid, "D001", "CP001"))  # the same request again
    net.forge(Topic.DRIVER_REQUESTS, "D002", request(rid, "D002", "CP002"))  # someone else's id
    dead_letter(net, f"request id {rid} already belongs to session {ticket.session_id} of D001 at CP001")
    wait_for(lambda: net.status().get("ignored_duplicate_request") == 1, "the repeat to be recognised")
    assert len(net.get("/api/v1/sessions")) == 1 and central.alive()
    # Restarted, Central knows the id from its database, not only from memory.
    net.kill(central)
    central = net.start_central("D001", "D002", same_ports=True)
    net.forge(Topic.DRIVER_REQUESTS, "D001", request(rid, "D001", "CP001"))
    wait_for(lambda: net.status().get("ignored_duplicate_request") == 1, "the repeat to be recognised again")
    assert len(net.get("/api/v1/sessions")) == 1 and central.alive()


def test_garbage_oversized_and_invisible_input_is_quarantined_and_bounded(net: Network) -> None:
    central, engines = two_cps(net)
    rss_before = _rss_kb(central)
    for n in range(20):  # 900 kB request ids
        net.forge(Topic.DRIVER_REQUESTS, "D001", request(f"{n}" + "x" * 900_000, "D001", "CP001"))
    cases = [
        (Topic.DRIVER_REQUESTS, "D001", request("r-zw", "D001", "CP001\u200b"), "cp_id 'CP001\\u200b' holds"),
        (Topic.DRIVER_REQUESTS, "D001", b"\x00\xff{not json", "not JSON"),
        (Topic.DRIVER_REQUESTS, "D001", None, "empty record"),
        (
            Topic.CP_EVENTS,
            "CP001",
            b'{"v":1,"type":"heartbeat","instance_id":"x","started_ts_ms":1,"interval_s":1,"ts_ms":1}',
            "out of range",
        ),
        (
            Topic.CP_EVENTS,
            "CP001",
            json.dumps({"v": 1, "type": "stop", "cp_id": "CP001", "ts_ms": NOW_MS}).encode(),
            "stop is not read from this topic",
        ),
        (Topic.CP_EVENTS, "CP001", finished(ts_ms=NOW_MS + 3 * 86_400_000, ended_ts_ms=NOW_MS), "a day ahead"),
    ]
    for topic, key, value, _ in cases:
        net.forge(topic, key, value)
    dead_letter(net, "record of 900")
    for *_, says in cases:
        dead_letter(net, says)
    wait_for(lambda: net.status()["quarantined"] == 20 + len(cases), "every record to be quarantined")
    letters = net.get("/api/v1/dead-letters?limit=100")
    assert max(d["size"] for d in letters) > 900_000
    with sqlite3.connect(os.path.join(net.tmp, "central.db")) as db:
        kept = db.execute("SELECT MAX(LENGTH(value)) FROM dead_letters").fetchone()[0]
        assert kept <= 4096  # the raw bytes are kept, bounded
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0  # nothing owed to nobody
    assert _rss_kb(central) - rss_before < 60_000
    full_supply(net, KafkaDriver(net, "D002"), "CP002", engines["CP002"])


def test_a_record_that_killed_central_three_times_is_set_aside_at_start_up(net: Network) -> None:
    central, engines = two_cps(net)
    net.kill(central)
    # While Central is down a request arrives; the crash mark says the last three runs
    # died applying exactly that record (as a record that crashes the interpreter would).
    net.forge(Topic.DRIVER_REQUESTS, "D001", request("poison-1", "D001", "CP001"))
    with sqlite3.connect(os.path.join(net.tmp, "central.db")) as db:
        (partition, offset) = db.execute(
            "SELECT partition, next_offset FROM offsets WHERE topic = 'driver-requests' AND partition = ?",
            (_partition(net, Topic.DRIVER_REQUESTS, "D001"),),
        ).fetchone()
    with open(os.path.join(net.tmp, "central.db.applying"), "w", encoding="utf-8") as fh:
        json.dump({"ranges": [["driver-requests", partition, offset, offset]], "crashes": 2}, fh)
    central = net.start_central("D001", "D002", same_ports=True)
    letter = dead_letter(net, "Central died 3 times applying it")
    assert (letter["partition"], letter["offset"]) == (partition, offset)
    assert net.get("/api/v1/sessions") == []  # not applied
    net.wait_state("CP001", "ACTIVATED")
    full_supply(net, KafkaDriver(net, "D001"), "CP001", engines["CP001"])


def test_the_api_answers_with_rows_an_older_version_stored(net: Network) -> None:
    central, _ = two_cps(net)
    net.kill(central)
    with sqlite3.connect(os.path.join(net.tmp, "central.db")) as db:
        db.execute(
            "INSERT INTO sessions (id, cp_id, driver_id, request_id, origin, status, requested_ts_ms, "
            "price_eur_kwh, deadline_ts_ms, started_ts_ms, ended_ts_ms, energy_kwh, amount_eur, end_reason) "
            "VALUES (1, 'CP001', 'D001', 'old', 'driver', 'completed', 1, 0.3, 1, ?, ?, 1.0, 0.3, 'x')",
            (10**15, 10**15 + 1),
        )
        # An owed event the broker can never take (over its size limit) must not block the others.
        db.execute(
            "INSERT INTO outbox (topic, key, value, created_ts_ms) VALUES ('driver-events', 'D001', ?, 1)",
            (b"x" * 2_000_000,),
        )
    central = net.start_central("D001", "D002", same_ports=True)
    (row,) = net.get("/api/v1/sessions")
    assert row["id"] == 1 and row["started_at"] is None
    dead_letter(net, "outbox:")
    with sqlite3.connect(os.path.join(net.tmp, "central.db")) as db:
        wait_for(lambda: db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0, "the outbox to drain")
    assert central.alive() and net.status()["outbox_dead"] == 1


def _partition(net: Network, topic: Topic, key: str) -> int:
    import asyncio

    from evproto.bus.kafka import ensure_topics
    from evproto.bus.topics import partition_for

    return partition_for(key, asyncio.run(ensure_topics(net.settings))[topic])


def _rss_kb(proc: Proc) -> int:
    with open(f"/proc/{proc.popen.pid}/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def test_central_keeps_its_files_private(net: Network) -> None:
    central, engines = two_cps(net)
    full_supply(net, KafkaDriver(net, "D001"), "CP001", engines["CP001"])
    for name in ("central.db", "central.db-wal", "central.db-shm", "central.db.applying"):
        path = os.path.join(net.tmp, name)
        assert os.stat(path).st_mode & 0o077 == 0, f"{name} is readable by others"
    db_dir = os.path.join(net.tmp, "data", "central")
    net.kill(central)
    net.spawn(
        "central2",
        "central",
        "--db",
        os.path.join(db_dir, "c.db"),
        "--kafka",
        net.bootstrap,
        "--port",
        "0",
        "--http-port",
        "-1",
        "--host",
        "127.0.0.1",
        "--no-panel",
    )
    assert os.stat(db_dir).st_mode & 0o077 == 0 and os.stat(os.path.join(db_dir, "c.db")).st_mode & 0o077 == 0


def _monitor_link(net: Network, cp_id: str, *, location: str = "Elche", price: float | None = 0.3):
    from evproto import Hello, Role
    from evproto.aio import open_link

    return open_link(
        "tcp://" + net.central_addr,
        hello=Hello(role=Role.MONITOR, node_id=cp_id, keepalive_ms=1000, location=location, price_eur_kwh=price),
    )


def test_hellos_nobody_could_address_or_floods_of_them_are_refused(net: Network) -> None:
    import asyncio

    from evproto import LinkRejectedError, ReasonCode

    central, engines = two_cps(net)

    async def hello(cp_id: str, **kw: object) -> object:
        try:
            link = await _monitor_link(net, cp_id, **kw)  # type: ignore[arg-type]
        except LinkRejectedError as exc:
            return exc.code
        await link.close()
        return None

    async def attack() -> list[object]:
        out = [await hello(""), await hello("CP001\u200b"), await hello("CP9", location="Hacked\u202e")]
        # 300 junk registrations, as fast as the link allows
        out += await asyncio.gather(*(hello(f"JUNK{n}", price=0.01) for n in range(300)))
        return out

    answers = asyncio.run(attack())
    assert answers[:3] == [ReasonCode.INVALID] * 3
    junk = answers[3:]
    accepted = sum(a is None for a in junk)
    assert 0 < accepted <= 60 and all(a in (None, ReasonCode.BUSY) for a in junk)
    cps = net.get("/api/v1/cps")
    assert len(cps) == 2 + accepted and central.alive()
    messages = net.get("/api/v1/messages")
    assert sum("refused monitor" in m["text"] for m in messages) <= 3  # one line per kind, not 290
    assert net.status()["hellos_refused"] == 3 + 300 - accepted
    # The operator removes the junk (HTTP and command line alike); the real CPs go on.
    status, body = net.delete("/api/v1/cps/JUNK0")
    assert status == 200 and body == {"ok": True, "removed": "JUNK0"}
    assert net.delete("/api/v1/cps/JUNK0")[0] == 404
    assert len(net.get("/api/v1/cps")) == 1 + accepted
    full_supply(net, KafkaDriver(net, "D001"), "CP001", engines["CP001"])


def test_a_cp_that_cannot_be_removed_while_supplying_and_a_driver_likewise(net: Network) -> None:
    central, engines = two_cps(net)
    monitor2 = next(p for p in net.procs if p.name == "monitor-CP002")
    driver = KafkaDriver(net, "D001")
    rid = driver.request("CP001")
    driver.wait_status(rid, "authorized")
    status, body = net.delete("/api/v1/cps/CP001")
    assert status == 409 and "supply in progress" in body["error"]
    assert net.delete("/api/v1/drivers/D001")[0] == 409
    assert net.delete("/api/v1/drivers/D002") == (200, {"ok": True, "removed": "D002"})
    assert net.get("/api/v1/drivers") == ["D001"]
    # The command line's removal reaches a running Central within a second, and its monitor is cut.
    cli = net.run_cli("central", "--db", os.path.join(net.tmp, "central.db"), "cps", "remove", "CP002")
    assert "CP002: removed" in cli
    wait_for(lambda: all(c["id"] != "CP002" for c in net.get("/api/v1/cps")), "CP002 to be gone")
    # Its monitor, still running, may not register it again behind the operator's back.
    wait_for(lambda: net.log_has(monitor2, "CP002 was removed by an operator"), "the monitor to be refused")
    assert all(c["id"] != "CP002" for c in net.get("/api/v1/cps")) and central.alive()


def test_a_flapping_cp_costs_one_state_record_a_second_and_bounded_log(net: Network) -> None:
    import asyncio

    from evproto import FaultCode, FaultReport, RecoveryReport

    central, engines = two_cps(net)
    log_before = os.path.getsize(central.log)
    sent = 0

    async def flap(seconds: float) -> None:
        nonlocal sent
        link = await _monitor_link(net, "CPFLAP")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await link.send(FaultReport(fault=FaultCode.ENGINE_KO, detail="flap"), wait=False)
            await link.send(RecoveryReport(fault=FaultCode.ENGINE_KO), wait=False)
            sent += 2
            await asyncio.sleep(0)
        await link.close()

    asyncio.run(flap(4.0))
    assert sent > 1000 and central.alive()
    states = net.read_topic(Topic.CP_STATE, key="CPFLAP")
    assert len(states) <= 4 * 1 + 4  # a record a second at most, plus connect and sign-off
    assert os.path.getsize(central.log) - log_before < 20_000  # was 32 MB for 10 s
    assert sum("CPFLAP" in m["text"] for m in net.get("/api/v1/messages")) < 20
    full_supply(net, KafkaDriver(net, "D001"), "CP002", engines["CP002"])


@pytest.mark.parametrize("which", ["--port", "--http-port"])
def test_a_taken_port_is_one_line_and_exit_69_not_a_traceback(net: Network, tmp_path, which: str) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        ports = {"--port": "0", "--http-port": "0", which: str(port)}
        from evproto.daemons.pki import CertificateAuthority

        cert = CertificateAuthority.ensure(tmp_path / "pki").issue("central", tmp_path / "pki", hosts=("127.0.0.1",))
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "evproto.daemons.central",
                "--db",
                str(tmp_path / "c.db"),
                "--kafka",
                net.bootstrap,
                "--host",
                "127.0.0.1",
                *(x for kv in ports.items() for x in kv),
                "--tls-cert",
                str(cert.cert),
                "--tls-key",
                str(cert.key),
                "--no-panel",
                "--topic-prefix",
                net.prefix,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 69, run.stderr
    assert "Traceback" not in run.stderr and str(port) in run.stderr and "in use" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_an_engine_whose_listen_port_is_taken_says_so_in_one_line_and_exits_69(net: Network, tmp_path) -> None:
    """The engine has started its Kafka producer when it finds the port taken: it must close it
    on that way out too (left open, its threads can crash the interpreter at exit: -11)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        runs = [
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "evproto.daemons.engine",
                    "--kafka",
                    net.bootstrap,
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--state-dir",
                    str(tmp_path / f"e{i}"),
                    "--topic-prefix",
                    net.prefix,
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            for i in range(3)
        ]
    for run in runs:
        assert run.returncode == 69, run.stderr
        assert "Traceback" not in run.stderr and str(port) in run.stderr and "in use" in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr
