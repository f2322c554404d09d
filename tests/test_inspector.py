"""The event inspector (issue 14): records read back decoded, opened when allowed, filtered,
hostile ones shown with an error; ``evcharging events`` as a real process; Central's
``/api/v1/events`` and its live stream.

Everything runs on the real embedded broker; records are sealed and signed by the same
code the daemons use (Central's KeyRing and RecordSealer, an engine's sealer with its CP key).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from browsers import CHROMIUM, CHROMIUM_ARGS, need_chromium

from evproto.bus.events import MAX_EVENT_BYTES, encode_event
from evproto.bus.kafka import BusProducer, KafkaSettings, ensure_topics
from evproto.bus.topics import Topic, partition_for
from evproto.daemons.central.keyring import KeyRing
from evproto.daemons.centraldb import StoredKeys
from evproto.daemons.eventreader import EventReader
from evproto.daemons.gate import SECURE_POLICY, RecordSealer
from evproto.daemons.inspector import (
    CAUGHT_UP,
    EventFilter,
    InspectedRecord,
    StartAt,
    inspect_value,
    newest,
)
from evproto.domain.events import (
    CpStateRecord,
    Heartbeat,
    StopCommand,
    SupplyProgress,
    SupplyRequest,
    Ticket,
)

HANG_GUARD_S = 30.0
NOW_MS = int(time.time() * 1000)


def _progress(cp_id: str, driver_id: str, energy_kwh: float = 1.5) -> SupplyProgress:
    return SupplyProgress(
        cp_id=cp_id,
        session_id=7,
        driver_id=driver_id,
        energy_kwh=energy_kwh,
        amount_eur=round(energy_kwh * 0.4, 4),
        power_kw=22.0,
        elapsed_s=600.0,
        ts_ms=NOW_MS,
    )


def _state(cp_id: str) -> CpStateRecord:
    return CpStateRecord(cp_id=cp_id, location="Madrid", price_eur_kwh=0.4, state="ACTIVATED", ts_ms=NOW_MS)


class Keys:
    """Central's keys in a database of the test's own, and sealers as the daemons make them."""

    def __init__(self, db: str) -> None:
        self.db = db
        self.ring = KeyRing(db)
        self.cp_grant = self.ring.issue_cp_key("CP001")
        self.driver_grant = self.ring.issue_driver_key("D001")
        # Central: commands and drivers' news sealed with the CP's / driver's key; state signed.
        self.central = RecordSealer(
            policy=SECURE_POLICY,
            sealing_key=self.ring.sealing_key,
            signing=(self.ring.signing_key_id, self.ring.signer),
        )
        # The engine of CP001: its events sealed with its own key.
        self.engine = RecordSealer(
            policy=SECURE_POLICY, sealing_key=lambda _t, _k: (self.cp_grant.key_id, self.cp_grant.key)
        )

    def close(self) -> None:
        self.ring.close()


@pytest.fixture
def keys(tmp_path: Path) -> Any:
    k = Keys(str(tmp_path / "run" / "central" / "central.db"))  # where `evcharging up` puts it
    yield k
    k.close()


@pytest.fixture
def settings(broker: Any) -> KafkaSettings:
    s = KafkaSettings(bootstrap=broker.bootstrap, client_id="inspector-test", prefix=f"t{uuid.uuid4().hex[:8]}.")
    asyncio.run(ensure_topics(s))
    return s


async def _produce(settings: KafkaSettings, records: list[tuple[Topic, str, bytes | None]]) -> list[tuple[int, int]]:
    producer = BusProducer(settings)
    await producer.start()
    try:
        futs = [producer.produce(t, k, v, partition=partition_for(k, _PARTITIONS[t])) for t, k, v in records]
        return list(await asyncio.wait_for(asyncio.gather(*futs), HANG_GUARD_S))
    finally:
        await producer.close()


_PARTITIONS = {Topic.CP_COMMANDS: 8, Topic.CP_EVENTS: 8, Topic.DRIVER_EVENTS: 8, Topic.DRIVER_REQUESTS: 4}
_PARTITIONS.update({Topic.CP_STATE: 1, Topic.CENTRAL_HEARTBEAT: 1})


def produce(settings: KafkaSettings, records: list[tuple[Topic, str, bytes | None]]) -> list[tuple[int, int]]:
    return asyncio.run(_produce(settings, records))


def history(settings: KafkaSettings, **options: Any) -> list[InspectedRecord]:
    """Every matching record up to CAUGHT_UP (a history read must end by itself)."""
    reader = EventReader(settings, **options)
    out = []
    for item in reader.records():
        if item is CAUGHT_UP:
            break
        out.append(item)
    return out


def _sealed_cp_event(keys: Keys, event: Any) -> bytes:
    return keys.engine.wrap(Topic.CP_EVENTS, event.cp_id, encode_event(event))


# -- decoding one value (no broker) ----------------------------------------------------------


def test_plain_value_is_decoded_with_every_field() -> None:
    ev = _progress("CP001", "D001")
    rec = inspect_value(
        topic=Topic.CP_EVENTS, partition=3, offset=9, key="CP001", value=encode_event(ev), timestamp_ms=NOW_MS
    )
    assert rec.error is None and not rec.sealed and not rec.opened
    assert rec.event_type == "supply_progress"
    assert rec.event == {"type": "supply_progress", **{k: getattr(ev, k) for k in rec.event if k != "type"}}
    assert rec.event["energy_kwh"] == 1.5 and rec.time is not None and rec.time.endswith("Z")
    json.dumps(rec.to_json())  # JSON-able as it is


def test_sealed_value_opens_only_with_keys(keys: Keys) -> None:
    value = _sealed_cp_event(keys, _progress("CP001", "D001"))
    common = dict(topic=Topic.CP_EVENTS, partition=0, offset=0, key="CP001", value=value, timestamp_ms=NOW_MS)
    closed = inspect_value(**common)  # type: ignore[arg-type]
    assert closed.sealed and not closed.opened and closed.event is None and closed.error is None
    assert closed.event_type == "supply_progress"
    assert closed.envelope is not None and closed.envelope["key_id"] == keys.cp_grant.key_id
    opened = inspect_value(**common, keys=StoredKeys(keys.db))  # type: ignore[arg-type]
    assert opened.sealed and opened.opened and opened.error is None
    assert opened.event is not None and opened.event["driver_id"] == "D001" and opened.sealed_by == "cp:CP001"
    assert opened.closed() == closed
    # Keys that may only check signatures (a viewer's read) leave it closed, with no error.
    assert inspect_value(**common, keys=StoredKeys(keys.db), open_sealed=False) == closed  # type: ignore[arg-type]


def test_signed_value_is_readable_and_checked(keys: Keys) -> None:
    value = keys.central.wrap(Topic.CP_STATE, "CP001", encode_event(_state("CP001")))
    common = dict(topic=Topic.CP_STATE, partition=0, offset=0, key="CP001", timestamp_ms=NOW_MS)
    rec = inspect_value(**common, value=value, keys=StoredKeys(keys.db))  # type: ignore[arg-type]
    assert rec.signed and rec.verified and rec.error is None and rec.event["state"] == "ACTIVATED"  # type: ignore[index]
    # The payload changed after signing: still a valid event, but not what Central wrote.
    forged = value.replace(b"ACTIVATED", b"SUPPLYING")
    bad = inspect_value(**common, value=forged, keys=StoredKeys(keys.db))  # type: ignore[arg-type]
    assert bad.signed and not bad.verified and "does not authenticate" in (bad.error or "")
    assert bad.event is not None and bad.event["state"] == "SUPPLYING"  # shown, flagged
    unchecked = inspect_value(**common, value=forged)  # type: ignore[arg-type]
    assert unchecked.signed and not unchecked.verified and unchecked.error is None


@pytest.mark.parametrize(
    "value, expected",
    [
        (b"\x00\xff\xfe garbage", "not JSON"),
        (b'{"v": 1, "type": "supply_progress", "cp_id": ', "not JSON"),
        (b'{"v": 1, "type": "supply_progress", "cp_id": "CP001"}', "supply_progress"),
        (b'{"v": 9, "type": "stop"}', "unsupported event version"),
        (b"[1, 2, 3]", "expected a JSON object"),
        (b"x" * (MAX_EVENT_BYTES + 1), "more than an event may have"),
        (b"EVS1\x05", "malformed envelope"),
        (None, "no value"),
    ],
)
def test_hostile_values_are_shown_with_an_error(value: bytes | None, expected: str) -> None:
    rec = inspect_value(topic=Topic.CP_EVENTS, partition=0, offset=1, key="\x1b[2JCP", value=value, timestamp_ms=-1)
    assert rec.error is not None and expected in rec.error and rec.event is None
    assert rec.time is None
    if value is not None and len(value) <= MAX_EVENT_BYTES and not value.startswith(b"EVS1"):
        assert rec.raw is not None and len(rec.raw.encode()) <= 4 * 200


def test_a_forged_seal_and_a_plain_record_where_sealed_are_flagged(keys: Keys) -> None:
    value = _sealed_cp_event(keys, _progress("CP001", "D001"))
    book = StoredKeys(keys.db)
    flipped = value[:-1] + bytes([value[-1] ^ 1])  # a tag that does not authenticate
    at = dict(topic=Topic.CP_EVENTS, partition=0, offset=1, timestamp_ms=0, keys=book)
    rec = inspect_value(**at, key="CP001", value=flipped)  # type: ignore[arg-type]
    assert rec.sealed and not rec.opened and rec.event is None and "does not authenticate" in (rec.error or "")
    moved = inspect_value(**at, key="CP002", value=value)  # type: ignore[arg-type]
    assert not moved.opened and "does not authenticate" in (moved.error or "")  # sealed for another key
    plain = inspect_value(
        topic=Topic.CP_EVENTS,
        partition=0,
        offset=1,
        key="CP001",
        value=encode_event(_progress("CP001", "D001")),
        timestamp_ms=0,
        keys=book,
        policy=SECURE_POLICY,
    )
    assert plain.event is not None and "not sealed" in (plain.error or "")


def test_filters_use_the_key_and_the_decoded_fields() -> None:
    def rec(topic: Topic, key: str, event: Any) -> InspectedRecord:
        return inspect_value(topic=topic, partition=0, offset=0, key=key, value=encode_event(event), timestamp_ms=0)

    progress = rec(Topic.CP_EVENTS, "CP001", _progress("CP001", "D001"))
    other = rec(Topic.CP_EVENTS, "CP002", _progress("CP002", "D002"))
    request = rec(
        Topic.DRIVER_REQUESTS,
        "D001",
        SupplyRequest(request_id="r1", driver_id="D001", cp_id="CP002", ts_ms=NOW_MS),
    )
    assert EventFilter(cp_id="CP001").matches(progress) and not EventFilter(cp_id="CP001").matches(other)
    assert EventFilter(driver_id="D001").matches(progress)  # named in the event, not the key
    assert EventFilter(cp_id="CP002").matches(request) and EventFilter(driver_id="D001").matches(request)
    assert not EventFilter(cp_id="CP002", driver_id="D002").matches(request)
    assert not EventFilter(topics=(Topic.CP_STATE,)).matches(progress)
    assert EventFilter(partitions=(0,)).matches(progress) and not EventFilter(partitions=(1, 2)).matches(progress)


# -- reading from the broker -----------------------------------------------------------------


def _network_records(keys: Keys) -> list[tuple[Topic, str, bytes | None]]:
    """What a secure network writes: sealed CP events and commands, a sealed ticket, signed state."""
    ticket = Ticket(
        driver_id="D001",
        session_id=7,
        request_id="r1",
        cp_id="CP001",
        energy_kwh=2.0,
        amount_eur=0.8,
        price_eur_kwh=0.4,
        started_ts_ms=NOW_MS - 600_000,
        ended_ts_ms=NOW_MS,
        status="completed",
        end_reason="completed",
        ts_ms=NOW_MS,
    )
    stop = StopCommand(cp_id="CP001", ts_ms=NOW_MS)
    beat = Heartbeat(instance_id="c1", started_ts_ms=NOW_MS, interval_s=1.0, ts_ms=NOW_MS)
    return [
        (Topic.CP_EVENTS, "CP001", _sealed_cp_event(keys, _progress("CP001", "D001", 1.0))),
        (Topic.CP_EVENTS, "CP001", _sealed_cp_event(keys, _progress("CP001", "D001", 2.0))),
        (Topic.CP_COMMANDS, "CP001", keys.central.wrap(Topic.CP_COMMANDS, "CP001", encode_event(stop))),
        (Topic.DRIVER_EVENTS, "D001", keys.central.wrap(Topic.DRIVER_EVENTS, "D001", encode_event(ticket))),
        (Topic.CP_STATE, "CP001", keys.central.wrap(Topic.CP_STATE, "CP001", encode_event(_state("CP001")))),
        (Topic.CP_STATE, "CP002", keys.central.wrap(Topic.CP_STATE, "CP002", encode_event(_state("CP002")))),
        (Topic.CENTRAL_HEARTBEAT, "central", keys.central.wrap(Topic.CENTRAL_HEARTBEAT, "central", encode_event(beat))),
        # Hostile: garbage, an oversized value, bad JSON, and a forged seal, on CP002's key.
        (Topic.CP_EVENTS, "CP002", b"\xff\x00garbage"),
        (Topic.CP_EVENTS, "CP002", b"{" * (MAX_EVENT_BYTES + 10)),
        (Topic.CP_EVENTS, "CP002", b'{"v": 1, "type": "supply_progress", '),
        (Topic.CP_EVENTS, "CP002", _forged(keys)),
    ]


def _forged(keys: Keys) -> bytes:
    # CP001's envelope re-pointed at CP002: the header is authenticated with the record key.
    return _sealed_cp_event(keys, _progress("CP001", "D001"))


def test_reads_back_every_record_decoded_and_opened(settings: KafkaSettings, keys: Keys) -> None:
    produce(settings, _network_records(keys))
    opened = history(settings, start=StartAt.beginning(), keys=StoredKeys(keys.db), policy=SECURE_POLICY)
    assert len(opened) == 11
    by_type: dict[str | None, list[InspectedRecord]] = {}
    for r in opened:
        by_type.setdefault(r.event_type, []).append(r)
    progress = by_type["supply_progress"]
    good = [r for r in progress if r.opened]
    assert sorted(r.event["energy_kwh"] for r in good) == [1.0, 2.0]  # type: ignore[index]
    assert all(r.key == "CP001" and r.topic == "cp-events" and r.offset >= 0 for r in good)
    assert by_type["stop"][0].opened and by_type["ticket"][0].event["amount_eur"] == 0.8  # type: ignore[index]
    assert all(r.verified for r in by_type["cp_state"] + by_type["heartbeat"])
    hostile = [r for r in opened if r.key == "CP002" and r.topic == "cp-events"]
    assert len(hostile) == 4 and not any(r.opened or r.event for r in hostile)
    errors = sorted(r.error or "" for r in hostile)
    for why in ("not JSON", "not JSON", "more than an event may have", "does not authenticate"):
        assert any(why in e for e in errors), (why, errors)
        errors.remove(next(e for e in errors if why in e))

    closed = history(settings, start=StartAt.beginning())  # no keys: sealed stay sealed
    assert len(closed) == 11
    assert not any(r.opened for r in closed)
    sealed = [r for r in closed if r.sealed and r.error is None]
    assert {r.event_type for r in sealed} == {"supply_progress", "stop", "ticket"}
    assert all(r.event is None for r in sealed)


def test_filters_and_start_positions(settings: KafkaSettings, keys: Keys) -> None:
    produce(settings, _network_records(keys))
    book = StoredKeys(keys.db)
    cp1 = history(settings, start=StartAt.beginning(), keys=book, filter=EventFilter(cp_id="CP001"))
    assert {r.event_type for r in cp1} == {"supply_progress", "stop", "ticket", "cp_state"}  # ticket: by its field
    drv = history(settings, start=StartAt.beginning(), filter=EventFilter(driver_id="D001"))  # closed: by key only
    assert [r.event_type for r in drv] == ["ticket"]
    state = history(settings, start=StartAt.beginning(), filter=EventFilter(topics=(Topic.CP_STATE,)))
    assert [r.key for r in state] == ["CP001", "CP002"]
    only_state = EventFilter(topics=(Topic.CP_STATE,))
    assert [r.key for r in history(settings, start=StartAt.last(1), filter=only_state)] == ["CP002"]
    assert [r.key for r in history(settings, start=StartAt.offset(1), filter=only_state)] == ["CP002"]
    assert history(settings, start=StartAt.offset(1000), filter=only_state) == []  # past the end: nothing, promptly
    cp1_partition = partition_for("CP001", 8)
    in_partition = history(settings, start=StartAt.beginning(), filter=EventFilter(partitions=(cp1_partition,)))
    assert in_partition and all(r.partition == cp1_partition for r in in_partition)
    assert {r.key for r in in_partition if r.topic == "cp-events"} == {"CP001"}
    assert history(settings, start=StartAt.time(NOW_MS + 3_600_000)) == []
    assert len(history(settings, start=StartAt.time(0))) == 11
    reader = EventReader(settings, start=StartAt.beginning())
    assert len(newest(reader.records(), 3)) == 3


def test_follow_sees_new_records_and_stops(settings: KafkaSettings) -> None:
    import threading

    reader = EventReader(settings, start=StartAt.last(0), follow=True, filter=EventFilter(topics=(Topic.CP_STATE,)))
    seen: list[Any] = []
    done = threading.Event()

    def run() -> None:
        for item in reader.records():
            seen.append(item)
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + HANG_GUARD_S
    while CAUGHT_UP not in seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen == [CAUGHT_UP]
    produce(settings, [(Topic.CP_STATE, "CP009", encode_event(_state("CP009")))])
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert isinstance(seen[1], InspectedRecord) and seen[1].key == "CP009" and seen[1].event_type == "cp_state"
    reader.stop()
    assert done.wait(HANG_GUARD_S)


# -- evcharging events (a real process) ------------------------------------------------------

EVCHARGING = os.path.join(os.path.dirname(sys.executable), "evcharging")


def _run_dir(tmp_path: Path, settings: KafkaSettings, keys: Keys) -> str:
    """A run directory as `evcharging up` leaves it, as far as `events` reads it: the registry's
    meta (broker, secure) and Central's database with its keys."""
    run = tmp_path / "run"
    assert keys.db == str(run / "central" / "central.db")
    meta = {"kafka": settings.bootstrap, "central": "127.0.0.1:1", "http": "127.0.0.1:2", "secure": True}
    (run / "instances.json").write_text(json.dumps({"meta": meta, "instances": {}}))
    return str(run)


def _events(settings: KafkaSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EVPROTO_TOPIC_PREFIX": settings.prefix}
    return subprocess.run(
        [EVCHARGING, "events", *args], capture_output=True, text=True, timeout=HANG_GUARD_S * 2, env=env
    )


def test_cli_json_lines_opened_from_the_run_directory(settings: KafkaSettings, keys: Keys, tmp_path: Path) -> None:
    produce(settings, _network_records(keys))
    run_dir = _run_dir(tmp_path, settings, keys)
    out = _events(settings, "--run-dir", run_dir, "--from-beginning", "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 11
    assert {"topic", "partition", "offset", "key", "timestamp_ms", "time", "event_type", "event", "sealed"} <= set(
        rows[0]
    )
    opened = [r for r in rows if r["sealed"] and r["opened"]]
    assert {r["event_type"] for r in opened} == {"supply_progress", "stop", "ticket"}
    assert all(r["event"]["cp_id"] == "CP001" for r in opened)
    assert sum(1 for r in rows if r["error"]) == 4  # the hostile four, shown, not fatal

    state = _events(settings, "--run-dir", run_dir, "--topic", "cp-state", "--offset", "1", "--json")
    assert [json.loads(line)["key"] for line in state.stdout.splitlines()] == ["CP002"], state.stderr
    both = _events(settings, "--run-dir", run_dir, "--offset", "1", "--from-beginning")
    assert both.returncode == 2 and "give one" in both.stderr

    closed = _events(settings, "--run-dir", run_dir, "--from-beginning", "--json", "--no-open", "--cp", "CP001")
    assert closed.returncode == 0, closed.stderr
    rows = [json.loads(line) for line in closed.stdout.splitlines()]
    assert rows and not any(r["opened"] for r in rows)
    assert {r["event_type"] for r in rows} == {"supply_progress", "stop", "cp_state"}  # the ticket: key D001


def test_cli_lines_are_one_per_record_and_escape_hostile_text(settings: KafkaSettings, keys: Keys) -> None:
    produce(settings, [(Topic.CP_EVENTS, "CP\x1b[2J01", b"\x1b]0;pwned\x07")])
    produce(settings, [(Topic.CP_EVENTS, "CP001", _sealed_cp_event(keys, _progress("CP001", "D001", 3.0)))])
    out = _events(settings, "--bootstrap", settings.bootstrap, "--db", keys.db, "--topic", "cp-events")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and "\x1b" not in out.stdout
    hostile, good = sorted(lines, key=lambda line: "CP001" in line)
    assert "cp-events[" in hostile and "\\x1b" in hostile and "error" in hostile
    assert "supply_progress" in good and "opened" in good and "energy_kwh=3" in good

    missing = _events(settings, "--bootstrap", "127.0.0.1:1", "--topic", "cp-events", "--connect-timeout", "1")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


def _readline(proc: subprocess.Popen[str]) -> str:
    """The process's next line of output; fails (instead of hanging) after the hang guard."""
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], HANG_GUARD_S)
    assert ready, "no line within the hang guard"
    return proc.stdout.readline()


def test_cli_follow_sees_a_later_record_and_stops_on_sigint(settings: KafkaSettings, keys: Keys) -> None:
    env = {**os.environ, "EVPROTO_TOPIC_PREFIX": settings.prefix, "PYTHONUNBUFFERED": "1"}
    args = ["events", "--bootstrap", settings.bootstrap, "--topic", "cp-state", "--follow", "--json"]
    proc = subprocess.Popen([EVCHARGING, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        # The first record is shown as history or live, whichever it turns out to be; once it
        # is on screen the reader is past its history, so the second can only come live.
        produce(settings, [(Topic.CP_STATE, "CP001", encode_event(_state("CP001")))])
        first = json.loads(_readline(proc))
        assert first["key"] == "CP001"
        produce(settings, [(Topic.CP_STATE, "CP002", encode_event(_state("CP002")))])
        second = json.loads(_readline(proc))
        assert second["key"] == "CP002" and second["event"]["state"] == "ACTIVATED"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(HANG_GUARD_S) == 0
        assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- Central's /api/v1/events and its stream -------------------------------------------------


class _Backend:
    """Central's HTTP backend as far as the events endpoints need it."""

    def __init__(self, source: Any) -> None:
        self.events_source = source


async def _serve(settings: KafkaSettings, keys: Keys) -> tuple[Any, str, dict[str, str], Any]:
    from evproto.daemons.central.events_api import EventsSource
    from evproto.daemons.central.http_api import make_app
    from evproto.daemons.tokens import TokenRole, TokenStore
    from evproto.daemons.webjson import start_http

    store = TokenStore(keys.db)
    tokens = {role.value: store.create(role, f"t-{role.value}")[0] for role in TokenRole}
    source = EventsSource(settings=settings, keys=StoredKeys(keys.db), policy=SECURE_POLICY)
    app = make_app(_Backend(source), tokens=store)  # type: ignore[arg-type]
    runner, port = await start_http(app, "127.0.0.1", 0, log=__import__("logging").getLogger("test"))
    return runner, f"http://127.0.0.1:{port}/api/v1", tokens, store


async def _get(session: Any, url: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(url, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_http_events_viewer_sees_sealed_closed_operator_opened(settings: KafkaSettings, keys: Keys) -> None:
    import aiohttp

    await _produce(settings, _network_records(keys))
    runner, base, tokens, store = await _serve(settings, keys)
    try:
        async with aiohttp.ClientSession() as session:
            assert (await _get(session, f"{base}/events", None))[0] == 401
            query = "topic=cp-events,cp-commands&cp=CP001"
            status, viewer = await _get(session, f"{base}/events?{query}", tokens["viewer"])
            assert status == 200
            assert len(viewer) == 3 and all(r["sealed"] and not r["opened"] and r["event"] is None for r in viewer)
            assert {r["event_type"] for r in viewer} == {"supply_progress", "stop"}
            query = "topic=cp-events&topic=cp-commands&cp=CP001"  # repeated, not comma-separated: the same
            status, operator = await _get(session, f"{base}/events?{query}", tokens["operator"])
            assert status == 200 and len(operator) == 3 and all(r["opened"] for r in operator)
            assert sorted(r["event"]["type"] for r in operator) == ["stop", "supply_progress", "supply_progress"]
            times = [r["timestamp_ms"] for r in operator]
            assert times == sorted(times)  # newest last
            status, admin = await _get(session, f"{base}/events?driver=D001", tokens["admin"])
            assert status == 200  # D001's: named in CP001's sealed reports and its own ticket
            assert [(r["event_type"], r["event"]["amount_eur"]) for r in admin] == [
                ("supply_progress", 0.4),
                ("supply_progress", 0.8),
                ("ticket", 0.8),
            ]
            status, one = await _get(session, f"{base}/events?topic=cp-state&partition=0", tokens["viewer"])
            assert status == 200 and [r["key"] for r in one] == ["CP001", "CP002"]
            assert (await _get(session, f"{base}/events?partition=x", tokens["viewer"]))[0] == 400
            status, limited = await _get(session, f"{base}/events?limit=2", tokens["admin"])
            assert status == 200 and len(limited) == 2
            assert (await _get(session, f"{base}/events?topic=nope", tokens["viewer"]))[0] == 400
            assert (await _get(session, f"{base}/events?limit=-1", tokens["viewer"]))[0] == 400
            assert (await _get(session, f"{base}/events", tokens["installer"]))[0] == 403
    finally:
        await runner.cleanup()
        store.close()


async def _sse(resp: Any) -> Any:
    """The next Server-Sent Event of ``resp`` as (event name, data), comments skipped."""
    name, data = "message", None
    while True:
        line = (await asyncio.wait_for(resp.content.readline(), HANG_GUARD_S)).decode()
        assert line, "the stream ended"
        line = line.rstrip("\n")
        if line == "":
            if data is not None:
                return name, json.loads(data)
            continue
        if line.startswith(":") or line.startswith("retry:"):
            continue
        field_name, _, value = line.partition(": ")
        if field_name == "event":
            name = value
        elif field_name == "data":
            data = value


async def test_http_stream_is_live_and_per_role(settings: KafkaSettings, keys: Keys) -> None:
    import aiohttp

    runner, base, tokens, store = await _serve(settings, keys)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"{base}/events/stream?topic=cp-events&cp=CP001"
            streams = []
            for role in ("viewer", "operator"):
                resp = await session.get(url, headers={"Authorization": f"Bearer {tokens[role]}"})
                assert resp.status == 200 and resp.content_type == "text/event-stream"
                assert await _sse(resp) == ("live", {})  # from here on, what is produced is new
                streams.append(resp)
            await _produce(
                settings,
                [
                    (Topic.CP_EVENTS, "CP002", _sealed_cp_event(keys, _progress("CP001", "D001"))),  # filtered out
                    (Topic.CP_EVENTS, "CP001", _sealed_cp_event(keys, _progress("CP001", "D001", 4.0))),
                ],
            )
            viewer, operator = [await _sse(s) for s in streams]
            assert viewer[0] == operator[0] == "message"
            assert viewer[1]["key"] == "CP001" and viewer[1]["sealed"] and viewer[1]["event"] is None
            assert operator[1]["opened"] and operator[1]["event"]["energy_kwh"] == 4.0
            assert operator[1]["offset"] == viewer[1]["offset"]
            for s in streams:
                s.close()
    finally:
        await runner.cleanup()
        store.close()


async def test_stream_drops_a_slow_client_and_bounds_subscribers() -> None:
    from evproto.daemons.central.events_api import SUBSCRIBER_QUEUE, EventsSource, EventTail, HttpError

    tail = EventTail(EventsSource(settings=KafkaSettings(bootstrap="127.0.0.1:1")), max_subscribers=2)
    tail._reader = object()  # type: ignore[assignment]  # as if running: no Kafka needed here
    slow = tail.subscribe(EventFilter(), opened=False)
    picky = tail.subscribe(EventFilter(cp_id="CP999"), opened=False)
    with pytest.raises(HttpError) as refused:
        tail.subscribe(EventFilter(), opened=False)
    assert refused.value.http_status == 503
    record = inspect_value(
        topic=Topic.CP_STATE, partition=0, offset=0, key="CP001", value=encode_event(_state("CP001")), timestamp_ms=0
    )
    for _ in range(SUBSCRIBER_QUEUE + 1):
        tail._slots.acquire()
        tail._deliver(record)
    assert slow.ended is not None and "behind" in slow.ended and tail.dropped == 1
    assert slow.queue.get_nowait() is None  # what it had not taken is gone; the end is next
    assert picky.ended is None and picky.queue.empty()  # nothing for CP999: not slowed by the other
    tail.unsubscribe(slow)
    tail._reader = None
    tail.unsubscribe(picky)


# -- the events page in a real browser -------------------------------------------------------


@pytest.mark.browser
async def test_events_page_in_chromium(settings: KafkaSettings, keys: Keys) -> None:
    pytest.importorskip("playwright")
    need_chromium()
    from aiohttp import web
    from playwright.async_api import async_playwright, expect

    from evproto.daemons.central.events_api import EventsSource
    from evproto.daemons.central.http_api import make_app
    from evproto.daemons.tokens import Principal, TokenRole
    from evproto.daemons.webauth import PRINCIPAL
    from evproto.daemons.webjson import start_http

    @web.middleware
    async def operator_session(request: web.Request, handler: Any) -> Any:
        # Stands in for the console's login (tested with the console): this browser is an operator's.
        request[PRINCIPAL] = Principal("t0", "browser", TokenRole.OPERATOR)
        return await handler(request)

    await _produce(settings, _network_records(keys))
    source = EventsSource(settings=settings, keys=StoredKeys(keys.db), policy=SECURE_POLICY)
    app = make_app(_Backend(source))  # type: ignore[arg-type]  # the console serves web/ with its CSP
    app.middlewares.append(operator_session)
    runner, port = await start_http(app, "127.0.0.1", 0, log=__import__("logging").getLogger("test"))
    errors: list[str] = []
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                # A style or script the page's Content-Security-Policy refuses shows up here.
                page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
                await page.goto(f"http://127.0.0.1:{port}/events.html")
                rows = page.locator("tr.record")
                await expect(rows).to_have_count(11)
                assert await rows.first.get_attribute("data-topic") in {t.value for t in Topic}
                assert (await rows.first.get_attribute("data-offset") or "").isdigit()
                assert await page.locator("tr.record[data-key='CP002'] .flag-error").count() == 4
                assert await page.locator("tr.record[data-topic='cp-events'] .flag-opened").count() == 2
                # The page's own style sheet applies (not refused, not missing).
                assert await page.locator(".flag-error").first.evaluate("e => getComputedStyle(e).display") == (
                    "inline-block"
                )

                # Filter by CP with the keyboard: type, Enter submits.
                await page.get_by_label("Charge point").fill("CP001")
                await page.get_by_label("Charge point").press("Enter")
                await expect(rows).to_have_count(5)
                assert await page.locator("tr.record[data-key='CP002']").count() == 0

                # Enter on a focused row shows its record as JSON.
                await rows.first.focus()
                await page.keyboard.press("Enter")
                detail = json.loads(await page.locator("tr.detail pre").first.text_content() or "")
                assert detail["topic"] and "offset" in detail

                # Live: a record produced now appears at the top.
                await page.get_by_label("Live").check()
                await expect(page.locator("#status")).to_contain_text("Live: new records")
                ((partition, offset),) = await _produce(
                    settings, [(Topic.CP_EVENTS, "CP001", _sealed_cp_event(keys, _progress("CP001", "D001", 5.0)))]
                )
                await expect(rows.first).to_have_attribute("data-offset", str(offset))
                await expect(rows.first).to_have_attribute("data-topic", "cp-events")
                await expect(rows.first.locator("td.summary")).to_contain_text("energy_kwh=5")
                assert partition == partition_for("CP001", 8)
            finally:
                await browser.close()
    finally:
        await runner.cleanup()
    assert errors == []


# -- a real secure network: Central's own API and the CLI on its database --------------------


def test_a_real_central_serves_its_records_opened_for_operators_only(secure_net: Any) -> None:
    from netharness import wait_for

    net = secure_net
    central = net.start_central("D001")
    engine, _monitor = net.start_cp("CP001")
    net.wait_serving(engine, "CP001")
    status, _ = net.post("/api/v1/cps/CP001/stop", data=b"{}", headers={"Content-Type": "application/json"})
    assert status == 200

    def stop_records(token: str) -> list[dict[str, Any]]:
        status, body = net._request("GET", "/api/v1/events?cp=CP001&topic=cp-commands", token=token)
        assert status == 200, body
        return [r for r in body if r["event_type"] == "stop"]

    viewer = net.make_token("viewer")
    closed = wait_for(lambda: stop_records(viewer), "Central's sealed STOP on cp-commands")
    assert all(r["sealed"] and not r["opened"] and r["event"] is None for r in closed)
    opened = stop_records(net.token)  # the admin's
    assert opened and all(r["opened"] and r["sealed_by"] == "cp:CP001" for r in opened)
    assert opened[-1]["event"]["cp_id"] == "CP001"
    status, states = net._request("GET", "/api/v1/events?cp=CP001&topic=cp-state", token=viewer)
    assert status == 200 and states and all(r["signed"] and r["verified"] for r in states)

    # The owner's CLI on the same machine opens them from Central's database, read-only.
    out = _events(net.settings, "--bootstrap", net.bootstrap, "--db", net.db, "--cp", "CP001", "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert any(r["event_type"] == "stop" and r["opened"] for r in rows)
    assert not any(r["error"] for r in rows)

    # Central stops in order with a stream open: the stream is told, Central exits 0.
    async def stream_then_stop() -> tuple[str, Any]:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            resp = await session.get(
                f"{net.http}/api/v1/events/stream", headers={"Authorization": f"Bearer {viewer}"}, ssl=net.ssl
            )
            assert resp.status == 200
            assert await _sse(resp) == ("live", {})
            central.popen.send_signal(signal.SIGTERM)
            while True:
                name, data = await _sse(resp)
                if name == "end":
                    return name, data

    assert asyncio.run(stream_then_stop()) == ("end", {"reason": "Central is stopping"})
    assert central.popen.wait(HANG_GUARD_S) == 0, central.tail()
    assert "Traceback" not in central.tail(500)


def test_since_takes_relative_iso_and_epoch_times() -> None:
    import click

    from evproto.daemons.launcher.events_cmd import parse_since

    now = 1_800_000_000_000
    assert parse_since("10m", now) == now - 600_000
    assert parse_since("2h", now) == now - 7_200_000
    assert parse_since("1700000000000", now) == 1_700_000_000_000
    assert parse_since("2023-11-14T22:13:20Z", now) == 1_700_000_000_000
    assert parse_since("2023-11-14T23:13:20+01:00", now) == 1_700_000_000_000
    assert parse_since("2023-11-14T22:13:20", now) == 1_700_000_000_000  # UTC unless it says
    with pytest.raises(click.BadParameter):
        parse_since("yesterday", now)


@pytest.mark.network
@pytest.mark.slow
def test_events_of_a_network_started_by_evcharging_up(tmp_path: Path) -> None:
    from netharness import wait_for

    run_dir = str(tmp_path / "run")

    def evcharging(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([EVCHARGING, *args], capture_output=True, text=True, timeout=timeout)

    options = ("--cps", "1", "--drivers", "1", "--requests", "2", "--http-port", "0", "--detach")
    up = evcharging("up", *options, "--run-dir", run_dir)
    assert up.returncode == 0, up.stderr
    try:

        def opened_supply() -> list[dict[str, Any]]:
            out = evcharging("events", "--run-dir", run_dir, "--json", "--limit", "500", "--topic", "cp-events")
            assert out.returncode == 0, out.stderr
            rows = [json.loads(line) for line in out.stdout.splitlines()]
            return [r for r in rows if r["sealed"] and r["opened"] and r["event"]["cp_id"] == "CP001"]

        rows = wait_for(opened_supply, "the engine's sealed reports, opened from the run directory")
        assert all(r["sealed_by"] == "cp:CP001" and r["error"] is None for r in rows)
        text = evcharging("events", "--run-dir", run_dir, "--topic", "cp-state", "--cp", "CP001")
        assert text.returncode == 0 and "cp_state" in text.stdout and "signed" in text.stdout, text.stderr

        # The topic list: every partition's offsets, and where Central reads the ones it reads.
        out = evcharging("events", "--run-dir", run_dir, "--topics", "--json")
        assert out.returncode == 0, out.stderr
        parts = [json.loads(line) for line in out.stdout.splitlines()]
        assert len(parts) == sum(_PARTITIONS.values())
        cp1 = next(p for p in parts if p["topic"] == "cp-events" and p["partition"] == partition_for("CP001", 8))
        assert cp1["records"] >= len(rows) and cp1["central_offset"] is not None and cp1["lag"] >= 0
        assert all(p["central_offset"] is None for p in parts if p["topic"] == "cp-commands")  # Central writes it
        table = evcharging("events", "--run-dir", run_dir, "--topics", "--topic", "cp-state")
        assert table.stdout.splitlines()[0].split()[:3] == ["TOPIC", "PART", "FIRST"]
        assert table.stdout.splitlines()[1].split()[:2] == ["cp-state", "0"]
    finally:
        evcharging("down", "--run-dir", run_dir, timeout=60)


def test_lines_escape_what_a_terminal_would_obey() -> None:
    from evproto.daemons.launcher.events_cmd import record_line

    value = b'{"v": 1, "type": "stop", "cp_id": "\\u202eCP\\u0007"}'  # a bidi override and a bell: refused
    key = "K\u2028\x1b[31m"
    rec = inspect_value(topic=Topic.CP_COMMANDS, partition=0, offset=0, key=key, value=value, timestamp_ms=0)
    line = record_line(rec, colour=False)
    assert line.isprintable() and "\\u2028" in line and "\\x1b" in line
    assert record_line(rec, colour=True).count("\x1b[") >= 2  # colours are ours, the key's escape is not


@pytest.mark.browser
def test_the_events_page_of_a_real_central_opens_sealed_records_for_operators_only(secure_net: Any) -> None:
    """The whole way: ev-central over HTTPS with its console's login; the events page of a
    viewer's session shows Central's sealed STOP sealed, an operator's opened, and goes live."""
    pytest.importorskip("playwright")
    need_chromium()
    from netharness import wait_for
    from playwright.sync_api import expect, sync_playwright

    net = secure_net
    net.start_central()
    engine, _monitor = net.start_cp("CP001")
    net.wait_serving(engine, "CP001")
    status, _ = net.post("/api/v1/cps/CP001/stop", data=b"{}", headers={"Content-Type": "application/json"})
    assert status == 200
    wait_for(
        lambda: net._request("GET", "/api/v1/events?topic=cp-commands&cp=CP001")[1], "Central's STOP on cp-commands"
    )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for role, flag in (("viewer", "sealed"), ("operator", "opened")):
                # The network's own CA signed Central's certificate; the browser does not know it.
                page = browser.new_context(ignore_https_errors=True).new_page()
                errors: list[str] = []
                page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
                page.goto(f"{net.http}/login")
                page.get_by_label("API token").fill(net.make_token(role, f"{role}-e"))
                page.get_by_role("button", name="Log in").click()
                page.wait_for_url(f"{net.http}/")
                page.goto(f"{net.http}/events.html?topic=cp-commands&cp=CP001&live=1")
                stop = page.locator("tr.record[data-topic='cp-commands'][data-key='CP001']").first
                expect(stop.locator(f".flag-{flag}")).to_have_count(1)
                expect(page.locator("#status")).to_contain_text("Live: new records")  # the stream takes the session too
                if flag == "opened":
                    expect(stop.locator("td.summary")).to_contain_text("cp_id=CP001")
                else:
                    expect(stop.locator("td.summary")).to_contain_text("sealed with cp.CP001.")
                assert errors == [], (role, errors)
        finally:
            browser.close()


def test_a_key_issued_after_the_keys_were_read_opens_its_records_at_once(keys: Keys) -> None:
    """A monitor that authenticates again gets a new key: the first record sealed with it
    opens at once, and again right after (no timed reload of every key in between)."""
    book = StoredKeys(keys.db)
    keys.cp_grant = keys.ring.issue_cp_key("CP001")  # issued after the book read the keys
    value = _sealed_cp_event(keys, _progress("CP001", "D001"))
    at = dict(topic=Topic.CP_EVENTS, partition=0, offset=1, timestamp_ms=0, key="CP001", value=value, keys=book)
    for _ in range(2):
        rec = inspect_value(**at)  # type: ignore[arg-type]
        assert rec.opened and rec.sealed_by == "cp:CP001" and rec.error is None


async def test_one_owner_cannot_take_every_event_stream() -> None:
    from evproto.daemons.central.events_api import EventsSource, EventTail, HttpError

    tail = EventTail(EventsSource(settings=KafkaSettings(bootstrap="127.0.0.1:1")), max_subscribers=10, max_per_owner=2)
    tail._reader = object()  # type: ignore[assignment]  # as if running: no Kafka needed here
    subs = [tail.subscribe(EventFilter(), opened=False, owner="address:10.0.0.9") for _ in range(2)]
    with pytest.raises(HttpError) as refused:
        tail.subscribe(EventFilter(), opened=False, owner="address:10.0.0.9")
    assert refused.value.http_status == 503
    subs.append(tail.subscribe(EventFilter(), opened=False, owner="token:1a2b3c4d"))
    for sub in subs[:-1]:
        tail.unsubscribe(sub)
    tail._reader = None
    tail.unsubscribe(subs[-1])
