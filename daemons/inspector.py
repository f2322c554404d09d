"""The event inspector: the network's Kafka records read back, decoded, and opened when allowed.

What Kafka UI gave the students, for our topics: each record with its topic, partition,
offset, key, time and event type, the event as JSON, filters by topic, CP and driver,
and a live tail. Used by ``evcharging events`` (:mod:`.launcher.events_cmd`) and by
Central's ``/api/v1/events`` (:mod:`.central.events_api`).

- :func:`inspect_value` turns one record's bytes into an :class:`InspectedRecord` (pure
  but for the keys it is given): plain JSON is decoded with the events' schemas, a
  signed record's payload is decoded (and its signature checked when the verify key is
  known), a sealed record is opened only with a :class:`~.gate.KeyBook` (Central's keys);
  without one it is shown sealed, with its envelope's metadata. Whatever the bytes, the
  answer is a record with ``error`` saying what is wrong, never an exception.
- :class:`EventReader` reads assigned partitions from a start position (the last N of
  each, the beginning, an offset, a time) without joining or committing to any consumer
  group, so the daemons' positions are never disturbed; it yields records up to the end
  each partition had (then :data:`CAUGHT_UP`) and, when following, what arrives later.
- :class:`StoredKeys`: Central's keys read (read-only) from its database, for the
  network's owner on Central's host.

Bounded: values over ``MAX_EVENT_BYTES`` are not decoded, keys are cut, librdkafka's
read-ahead is capped, and callers keep at most the newest records they show.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from evproto.bus import seal
from evproto.bus.client import BusError, KafkaSettings, bus_error, client_config
from evproto.bus.events import MAX_EVENT_BYTES, EventDecodeError, decode_event
from evproto.bus.seal import SealError, Why
from evproto.bus.topics import Topic
from evproto.domain.central.view import iso_utc
from evproto.domain.events import Event

from .gate import KeyBook, Owner, OwnerKind, Policy, verify_key_id

__all__ = [
    "CAUGHT_UP",
    "MAX_KEY_CHARS",
    "RAW_PREVIEW_BYTES",
    "InspectedRecord",
    "EventFilter",
    "StartAt",
    "StartKind",
    "EventReader",
    "StoredKeys",
    "inspect_value",
    "summary",
    "newest",
    "PartitionInfo",
    "partition_infos",
    "central_offsets",
]

log = logging.getLogger("evproto.inspector")

#: Characters of a record's key that are kept (ours are ids of at most 64).
MAX_KEY_CHARS = 256
#: Bytes of an undecodable value shown (escaped) to say what it was.
RAW_PREVIEW_BYTES = 200
#: librdkafka's read-ahead per consumer, in kB (its default is 64 MiB).
_PREFETCH_KBYTES = 2048
#: A history read that hears nothing from the broker this long gives up (not a follow).
_IDLE_LIMIT_S = 15.0


class _CaughtUp:
    """Marker yielded once every partition's history up to the start has been read."""

    def __repr__(self) -> str:
        return "CAUGHT_UP"


CAUGHT_UP = _CaughtUp()


@dataclass(frozen=True, slots=True, kw_only=True)
class InspectedRecord:
    """One Kafka record as the inspector shows it.

    ``sealed``: the value is in a sealed (encrypted) envelope; ``opened``: it was opened
    with the key that sealed it (``sealed_by`` names the key's owner). ``signed``: the
    value is signed by Central (readable by all); ``verified``: the signature was
    checked. ``event`` is the decoded event (``type`` and every field), None when it is
    sealed and not opened or cannot be decoded; ``error`` says why it could not be
    decoded, opened or trusted (None: nothing wrong). ``envelope``: the key id, counter
    and event type a sealed or signed record's header carries.
    """

    topic: str
    partition: int
    offset: int
    key: str | None
    timestamp_ms: int
    time: str | None
    event_type: str | None
    event: dict[str, Any] | None
    sealed: bool
    opened: bool
    signed: bool = False
    verified: bool = False
    sealed_by: str | None = None
    envelope: dict[str, Any] | None = None
    size: int = 0
    error: str | None = None
    #: The start of an undecodable plain value, escaped (never of a sealed one).
    raw: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Every field, JSON-able."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def closed(self) -> InspectedRecord:
        """The same record as someone without the keys sees it: a sealed record's content
        (event, who sealed it) left out; plain and signed records are unchanged."""
        if not self.sealed or not self.opened:
            return self
        # Whatever was learnt by opening it (its fields, what is wrong with them) stays out.
        return dataclasses.replace(self, event=None, opened=False, sealed_by=None, error=None, raw=None)


def _event_json(event: Event) -> dict[str, Any]:
    out: dict[str, Any] = {"type": event.TYPE}
    for f in dataclasses.fields(event):  # type: ignore[arg-type]
        out[f.name] = getattr(event, f.name)
    return out


def _preview(value: bytes) -> str:
    return value[:RAW_PREVIEW_BYTES].decode("utf-8", "backslashreplace")


def inspect_value(
    *,
    topic: Topic,
    partition: int,
    offset: int,
    key: str | None,
    value: bytes | None,
    timestamp_ms: int,
    size: int | None = None,
    keys: KeyBook | None = None,
    open_sealed: bool = True,
    policy: dict[Topic, Policy] | None = None,
    now_ms: int | None = None,
) -> InspectedRecord:
    """One record, decoded and (with ``keys``) opened; every problem is in ``error``.

    ``size``: the value's full size when only its start was kept. ``open_sealed=False``:
    ``keys`` only check signatures; sealed records stay closed. ``policy``: what the
    network requires of each topic (a plain record where a sealed one is required is
    shown, with the error the network's readers would give it).
    """
    if key is not None and len(key) > MAX_KEY_CHARS:
        key = key[:MAX_KEY_CHARS]
    full = size if size is not None else len(value or b"")
    base: dict[str, Any] = dict(
        topic=topic.value,
        partition=partition,
        offset=offset,
        key=key,
        timestamp_ms=timestamp_ms,
        time=iso_utc(timestamp_ms) if timestamp_ms >= 0 else None,
        size=full,
    )
    if value is None:
        return InspectedRecord(**base, event_type=None, event=None, sealed=False, opened=False, error="no value")
    if full > MAX_EVENT_BYTES:
        return InspectedRecord(
            **base,
            event_type=None,
            event=None,
            sealed=value[:4] == seal.SEALED_MAGIC,
            opened=False,
            error=f"{full} bytes, more than an event may have ({MAX_EVENT_BYTES}): not decoded",
        )
    try:
        envelope = seal.peek(value)
    except SealError as exc:
        return InspectedRecord(
            **base,
            event_type=None,
            event=None,
            sealed=value[:4] == seal.SEALED_MAGIC,
            signed=value[:4] == seal.SIGNED_MAGIC,
            opened=False,
            error=str(exc),
        )
    required = (policy or {}).get(topic, Policy.PLAIN)
    if envelope is None:
        return _plain(base, value, required, now_ms)
    meta = {"key_id": envelope.key_id, "counter": envelope.counter, "event_type": envelope.event_type}
    if envelope.signed:
        return _signed(base, envelope, meta, topic, key, keys, required, now_ms)
    return _sealed(base, envelope, meta, topic, key, keys if open_sealed else None, required, now_ms)


def _plain(base: dict[str, Any], value: bytes, required: Policy, now_ms: int | None) -> InspectedRecord:
    problem = None
    if required is not Policy.PLAIN:
        why = Why.NOT_SEALED if required is Policy.SEALED else Why.NOT_SIGNED
        problem = f"{why.value}: the network's readers refuse it"
    try:
        event = decode_event(value, now_ms=now_ms)
    except EventDecodeError as exc:
        return InspectedRecord(
            **base,
            event_type=None,
            event=None,
            sealed=False,
            opened=False,
            error=str(exc) if problem is None else f"{problem}; {exc}",
            raw=_preview(value),
        )
    return InspectedRecord(
        **base, event_type=event.TYPE, event=_event_json(event), sealed=False, opened=False, error=problem
    )


def _decode_inner(plaintext: bytes, envelope: seal.Envelope, now_ms: int | None) -> tuple[Event | None, str | None]:
    try:
        event = decode_event(plaintext, now_ms=now_ms)
    except EventDecodeError as exc:
        return None, str(exc)
    if event.TYPE != envelope.event_type:
        return event, f"{Why.WRONG_TYPE.value}: {event.TYPE} in an envelope for {envelope.event_type}"
    return event, None


def _signed(
    base: dict[str, Any],
    envelope: seal.Envelope,
    meta: dict[str, Any],
    topic: Topic,
    key: str | None,
    keys: KeyBook | None,
    required: Policy,
    now_ms: int | None,
) -> InspectedRecord:
    problems = []
    if required is Policy.SEALED:
        problems.append(f"{Why.NOT_SEALED.value}: signed where it must be sealed")
    verified = False
    if keys is not None:
        try:
            seal.verify_signed(keys.verify_key(envelope.key_id), envelope, topic=topic.value, record_key=key or "")
            verified = True
        except SealError as exc:
            problems.append(f"signature: {exc}")
    event, problem = _decode_inner(envelope.body, envelope, now_ms)
    if problem is not None:
        problems.append(problem)
    return InspectedRecord(
        **base,
        event_type=event.TYPE if event is not None else envelope.event_type,
        event=_event_json(event) if event is not None else None,
        sealed=False,
        opened=False,
        signed=True,
        verified=verified,
        sealed_by="central" if verified else None,
        envelope={"kind": "signed", **meta},
        error="; ".join(problems) or None,
        raw=_preview(envelope.body) if event is None else None,
    )


def _sealed(
    base: dict[str, Any],
    envelope: seal.Envelope,
    meta: dict[str, Any],
    topic: Topic,
    key: str | None,
    keys: KeyBook | None,
    required: Policy,
    now_ms: int | None,
) -> InspectedRecord:
    closed: dict[str, Any] = dict(
        **base,
        event_type=envelope.event_type,
        event=None,
        sealed=True,
        opened=False,
        envelope={"kind": "sealed", **meta},
    )
    mismatch = f"{Why.NOT_SIGNED.value}: sealed where it must be signed" if required is Policy.SIGNED else None
    if keys is None:
        return InspectedRecord(**closed, error=mismatch)
    try:
        owner, secret = keys.record_key(envelope.key_id)
        plaintext = seal.open_sealed(secret, envelope, topic=topic.value, record_key=key or "")
    except SealError as exc:
        return InspectedRecord(**closed, error=str(exc))
    event, problem = _decode_inner(plaintext, envelope, now_ms)
    problems = [p for p in (mismatch, problem) if p is not None]
    closed.update(
        event_type=event.TYPE if event is not None else envelope.event_type,
        event=_event_json(event) if event is not None else None,
        opened=True,
        sealed_by=str(owner),
        error="; ".join(problems) or None,
    )
    return InspectedRecord(**closed)


# -- filters and start positions -------------------------------------------------------------

#: The event field naming each kind of party, and the topics whose record key is that party's id.
_KEY_IS_CP = frozenset({Topic.CP_COMMANDS, Topic.CP_EVENTS, Topic.CP_STATE})
_KEY_IS_DRIVER = frozenset({Topic.DRIVER_REQUESTS, Topic.DRIVER_EVENTS})


@dataclass(frozen=True, slots=True, kw_only=True)
class EventFilter:
    """Which records to show: some topics, some partitions (empty: all), about one CP,
    about one driver (every given condition must hold). A record is about a CP or driver when its key is that id on a
    topic keyed by it, or when its decoded event names it (``cp_id``, ``driver_id``); a
    sealed record that is not opened is matched by its key only."""

    topics: tuple[Topic, ...] = tuple(Topic)
    partitions: tuple[int, ...] = ()
    cp_id: str | None = None
    driver_id: str | None = None

    def matches(self, record: InspectedRecord) -> bool:
        topic = Topic(record.topic)
        if topic not in self.topics or (self.partitions and record.partition not in self.partitions):
            return False
        if self.cp_id is not None and not _names(record, topic, _KEY_IS_CP, "cp_id", self.cp_id):
            return False
        if self.driver_id is not None and not _names(record, topic, _KEY_IS_DRIVER, "driver_id", self.driver_id):
            return False
        return True


def _names(record: InspectedRecord, topic: Topic, keyed: frozenset[Topic], field: str, wanted: str) -> bool:
    if topic in keyed and record.key == wanted:
        return True
    return record.event is not None and record.event.get(field) == wanted


class StartKind(enum.Enum):
    LAST = "last"  # the last ``value`` records of each partition (0: only new ones)
    BEGINNING = "beginning"
    OFFSET = "offset"  # from offset ``value`` in each partition
    TIME = "time"  # from the first record at or after epoch ms ``value``


@dataclass(frozen=True, slots=True)
class StartAt:
    """Where reading starts in each partition."""

    kind: StartKind
    value: int = 0

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError("a start position is >= 0")

    @classmethod
    def last(cls, n: int) -> StartAt:
        return cls(StartKind.LAST, n)

    @classmethod
    def beginning(cls) -> StartAt:
        return cls(StartKind.BEGINNING)

    @classmethod
    def offset(cls, offset: int) -> StartAt:
        return cls(StartKind.OFFSET, offset)

    @classmethod
    def time(cls, ts_ms: int) -> StartAt:
        return cls(StartKind.TIME, ts_ms)


# -- reading ---------------------------------------------------------------------------------


class EventReader:
    """Reads the filter's topics, every partition, from ``start``; no consumer group.

    ``records()`` (blocking; run it in a thread under asyncio) yields each matching
    :class:`InspectedRecord`, then :data:`CAUGHT_UP` once every partition has been read
    up to the end it had when reading began; without ``follow`` it ends there, with it it
    goes on yielding what arrives until :meth:`stop` (thread-safe) is called. Within a
    partition records come in offset order; partitions are interleaved as they arrive.
    With ``StartAt.last(n)`` a partition's history is yielded once its end is reached
    (the filter applies to its last n records, of which the newest ``keep`` are kept).
    Raises BusError when the broker cannot be reached or refuses for good.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        filter: EventFilter = EventFilter(),
        start: StartAt = StartAt.last(20),
        follow: bool = False,
        keys: KeyBook | None = None,
        open_sealed: bool = True,
        policy: dict[Topic, Policy] | None = None,
        keep: int | None = None,
        poll_timeout_s: float = 0.2,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.filter = filter
        self.start = start
        self.follow = follow
        self.keys = keys
        #: False: ``keys`` only check Central's signatures; sealed records stay closed.
        self.open_sealed = open_sealed
        self.policy = policy
        #: With StartAt.last(n): of each partition's last n records, at most this many
        #: matching ones are kept (and yielded), the newest (None: all n).
        self.keep = keep
        self.poll_timeout_s = poll_timeout_s
        self.connect_timeout_s = connect_timeout_s
        #: Records read (matching or not) and records shown.
        self.read = 0
        self.matched = 0
        self._stop = threading.Event()
        self._fatal: BusError | None = None

    def stop(self) -> None:
        """End ``records()`` within one poll timeout (from any thread)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal() and self._fatal is None:
            self._fatal = bus_error(err, f"Kafka {self.settings.bootstrap}")

    def _consumer(self) -> confluent_kafka.Consumer:
        config = {
            # librdkafka wants a group id; a fresh one that never subscribes nor commits joins nothing.
            "group.id": f"evproto-inspector-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            # A position the broker refuses (past the end, or removed by retention): the end.
            "auto.offset.reset": "latest",
            "queued.max.messages.kbytes": _PREFETCH_KBYTES,
            "fetch.wait.max.ms": 100,
        }
        return confluent_kafka.Consumer(client_config(self.settings, config, on_error=self._on_error))

    def _positions(self, consumer: confluent_kafka.Consumer) -> tuple[list[TopicPartition], set[tuple[str, int]]]:
        """Where each partition starts, and the partitions with history to read."""
        names = {self.settings.topic(t): t for t in self.filter.topics}
        try:
            md = consumer.list_topics(timeout=self.connect_timeout_s)
        except KafkaException as exc:
            raise BusError(f"Kafka {self.settings.bootstrap} cannot be reached: {exc.args[0].str()}") from None
        assign: list[TopicPartition] = []
        pending: set[tuple[str, int]] = set()
        for name in sorted(names):
            meta = md.topics.get(name)
            if meta is None or meta.error is not None:
                continue
            for p in sorted(meta.partitions):
                if self.filter.partitions and p not in self.filter.partitions:
                    continue  # not even read
                tp = TopicPartition(name, p)
                try:
                    low, high = consumer.get_watermark_offsets(tp, timeout=self.connect_timeout_s)
                except KafkaException as exc:
                    raise BusError(f"offsets of {name}[{p}]: {exc.args[0].str()}") from None
                start = self._start_offset(consumer, tp, int(low), int(high))
                assign.append(TopicPartition(name, p, start))
                # Read until librdkafka says the partition's end is reached, even when the
                # broker's end offset says there is nothing: that offset may lag (Tansu).
                if self.start != StartAt.last(0):
                    pending.add((name, p))
        if not assign:
            wanted = ", ".join(sorted(names))
            which = " exists"
            if self.filter.partitions:
                which = f" has partition {', '.join(map(str, self.filter.partitions))}"
            raise BusError(f"none of the topics {wanted}{which} on {self.settings.bootstrap}")
        return assign, pending

    def _start_offset(self, consumer: confluent_kafka.Consumer, tp: TopicPartition, low: int, high: int) -> int:
        kind, value = self.start.kind, self.start.value
        if kind is StartKind.LAST:
            return max(low, high - value)
        if kind is StartKind.BEGINNING:
            return low
        if kind is StartKind.OFFSET:
            # Never past the end the broker gives (a refused position is not always reported):
            # from there the records before ``value`` are skipped, in case that end lags.
            return min(max(low, value), high)
        try:
            found = consumer.offsets_for_times(
                [TopicPartition(tp.topic, tp.partition, value)], timeout=self.connect_timeout_s
            )
        except KafkaException as exc:
            raise BusError(f"offsets by time of {tp.topic}[{tp.partition}]: {exc.args[0].str()}") from None
        offset = found[0].offset if found else -1
        return high if offset < 0 else max(low, int(offset))

    def records(self) -> Iterator[InspectedRecord | _CaughtUp]:
        consumer = self._consumer()
        topics = {self.settings.topic(t): t for t in Topic}
        try:
            assign, pending = self._positions(consumer)
            if not pending:
                yield CAUGHT_UP
                if not self.follow:
                    return
            consumer.assign(assign)
            caught_up = not pending
            heard = time.monotonic()
            # The last N of a partition are kept until its end is reached: a broker's end
            # offset may lag its true end (Tansu gives the last batch's base + 1), so the
            # window is counted back from the records really read. At most N per partition.
            last_n = self.start.value if self.start.kind is StartKind.LAST else 0
            keep = min(last_n, self.keep) if self.keep is not None else last_n
            windows: dict[tuple[str, int], collections.deque[InspectedRecord]] = {}
            since_ms = self.start.value if self.start.kind is StartKind.TIME else -1
            from_offset = self.start.value if self.start.kind is StartKind.OFFSET else -1
            while not self._stop.is_set():
                if self._fatal is not None:
                    raise self._fatal
                msg = consumer.poll(self.poll_timeout_s)
                if msg is None:
                    if not caught_up and time.monotonic() - heard > _IDLE_LIMIT_S:
                        raise BusError(f"Kafka {self.settings.bootstrap} sent nothing for {_IDLE_LIMIT_S:g} s")
                    continue
                heard = time.monotonic()
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        where = (msg.topic(), msg.partition())
                        pending.discard(where)
                        for record in windows.pop(where, ()):
                            self.matched += 1
                            yield record
                    elif err.fatal():
                        raise bus_error(err, f"Kafka {self.settings.bootstrap}")
                    else:
                        log.debug("Kafka: %s", err.str())
                else:
                    record = self._inspect(msg, topics)
                    where = (msg.topic(), msg.partition())
                    if record is None or record.timestamp_ms < since_ms or record.offset < from_offset:
                        pass  # not ours; or before the time or offset asked for (a broker may start earlier)
                    elif not self.filter.matches(record):
                        pass
                    elif last_n and where in pending:
                        windows.setdefault(where, collections.deque(maxlen=keep)).append(record)
                    else:
                        self.matched += 1
                        yield record
                if not caught_up and not pending:
                    caught_up = True
                    yield CAUGHT_UP
                    if not self.follow:
                        return
        finally:
            try:
                consumer.close()
            except Exception as exc:  # closing a broken client must not mask what broke it
                log.debug("closing the inspector's consumer: %r", exc)

    def _inspect(self, msg: Any, topics: dict[str, Topic]) -> InspectedRecord | None:
        topic = topics.get(msg.topic())
        if topic is None:
            return None
        self.read += 1
        raw_key = msg.key()
        key = None if raw_key is None else raw_key[: MAX_KEY_CHARS * 4].decode("utf-8", "replace")
        ts_type, ts = msg.timestamp()
        value = msg.value()
        return inspect_value(
            topic=topic,
            partition=msg.partition(),
            offset=msg.offset(),
            key=key,
            value=value,
            timestamp_ms=ts if ts_type != confluent_kafka.TIMESTAMP_NOT_AVAILABLE else -1,
            keys=self.keys,
            open_sealed=self.open_sealed,
            policy=self.policy,
            now_ms=int(time.time() * 1000),
        )


def newest(records: Iterator[InspectedRecord | _CaughtUp], limit: int) -> list[InspectedRecord]:
    """The newest ``limit`` records of a history read (up to CAUGHT_UP), oldest first by time."""
    kept: collections.deque[InspectedRecord] = collections.deque(maxlen=max(limit, 0))
    for item in records:
        if item is CAUGHT_UP:
            break
        assert isinstance(item, InspectedRecord)
        if limit > 0:
            kept.append(item)
    # Each partition's records arrive in order but partitions interleave as fetched: the
    # deque may have dropped a later record of one partition and kept an earlier one of
    # another. Good enough for a view; sorted by time for reading.
    return sorted(kept, key=lambda r: (r.timestamp_ms, r.topic, r.partition, r.offset))


def summary(record: InspectedRecord, *, width: int = 100) -> str:
    """The event's fields in one short line (what the tables show next to the type)."""
    if record.event is None:
        if record.sealed and not record.opened and record.error is None:
            return f"(sealed, key {record.envelope['key_id'] if record.envelope else '?'})"
        return f"! {record.error}" if record.error else ""
    parts = []
    for name, value in record.event.items():
        if name in ("type",) or value in (None, "") or name.endswith("ts_ms"):
            continue
        if isinstance(value, float):
            value = f"{value:.3f}".rstrip("0").rstrip(".")
        parts.append(f"{name}={value}")
    text = " ".join(parts)
    if record.error:
        text = f"! {record.error} | {text}"
    return text if len(text) <= width else text[: width - 1] + "…"


# -- topics at a glance ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionInfo:
    """One partition at a glance: the offsets it holds and, when Central's database is at
    hand, where Central reads it (``central_offset``: the next offset it will take) and
    how far behind that is (``lag``)."""

    topic: str
    partition: int
    first_offset: int
    end_offset: int
    central_offset: int | None = None

    @property
    def records(self) -> int:
        return max(self.end_offset - self.first_offset, 0)

    @property
    def lag(self) -> int | None:
        return None if self.central_offset is None else max(self.end_offset - self.central_offset, 0)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**out, "records": self.records, "lag": self.lag}


def central_offsets(db_path: str) -> dict[tuple[str, int], int]:
    """Where Central reads each partition it reads (its ``offsets`` table), read-only."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return {(t, int(p)): int(o) for t, p, o in db.execute("SELECT topic, partition, next_offset FROM offsets")}
    except sqlite3.Error as exc:
        raise OSError(f"cannot read Central's offsets in {db_path}: {exc}") from None
    finally:
        db.close()


def partition_infos(
    settings: KafkaSettings,
    topics: tuple[Topic, ...] = tuple(Topic),
    *,
    central: dict[tuple[str, int], int] | None = None,
    timeout_s: float = 10.0,
) -> list[PartitionInfo]:
    """Every partition of ``topics`` with its offsets now (blocking); ``central``: Central's
    positions (:func:`central_offsets`). Raises BusError when the broker cannot be reached."""
    config = {"group.id": f"evproto-inspector-{uuid.uuid4().hex[:12]}", "enable.auto.commit": False}
    consumer = confluent_kafka.Consumer(client_config(settings, config))
    try:
        try:
            md = consumer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise BusError(f"Kafka {settings.bootstrap} cannot be reached: {exc.args[0].str()}") from None
        out = []
        for topic in topics:
            meta = md.topics.get(settings.topic(topic))
            if meta is None or meta.error is not None:
                continue
            for p in sorted(meta.partitions):
                try:
                    low, high = consumer.get_watermark_offsets(TopicPartition(meta.topic, p), timeout=timeout_s)
                except KafkaException as exc:
                    raise BusError(f"offsets of {meta.topic}[{p}]: {exc.args[0].str()}") from None
                out.append(
                    PartitionInfo(
                        topic=topic.value,
                        partition=p,
                        first_offset=int(low),
                        end_offset=int(high),
                        central_offset=(central or {}).get((topic.value, p)),
                    )
                )
        return out
    finally:
        consumer.close()


# -- Central's keys, read-only ---------------------------------------------------------------


class StoredKeys:
    """Central's record keys and verify key, read from its database without writing to it
    (a :class:`~.gate.KeyBook`). Keys issued after loading (a monitor that authenticated
    again) are found by reading again, at most every ``reload_interval_s``. Retired and
    revoked keys still open what they sealed: this is for looking, not for accepting."""

    def __init__(self, db_path: str, *, reload_interval_s: float = 2.0) -> None:
        self.db_path = db_path
        self.reload_interval_s = reload_interval_s
        self._keys: dict[str, tuple[Owner, bytes]] = {}
        self._loaded_at = 0.0
        pub_path = db_path + ".signing.pub"
        with open(pub_path, encoding="ascii") as f:
            raw = bytes.fromhex(f.read().strip())
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        self._verify_id = verify_key_id(raw)
        self._verify = Ed25519PublicKey.from_public_bytes(raw)
        self.reload()

    def reload(self) -> None:
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        try:
            keys: dict[str, tuple[Owner, bytes]] = {}
            for key_id, cp_id, key in db.execute("SELECT key_id, cp_id, key FROM cp_keys"):
                keys[key_id] = (Owner(OwnerKind.CP, cp_id), bytes(key))
            for key_id, driver_id, key in db.execute("SELECT key_id, driver_id, key FROM driver_keys"):
                keys[key_id] = (Owner(OwnerKind.DRIVER, driver_id), bytes(key))
        except sqlite3.Error as exc:
            raise OSError(f"cannot read the keys in {self.db_path}: {exc}") from None
        finally:
            db.close()
        self._keys = keys
        self._loaded_at = time.monotonic()

    def record_key(self, key_id: str) -> tuple[Owner, bytes]:
        found = self._keys.get(key_id)
        if found is None and time.monotonic() - self._loaded_at >= self.reload_interval_s:
            try:
                self.reload()
            except OSError as exc:
                log.warning("%s", exc)
            found = self._keys.get(key_id)
        if found is None:
            raise SealError(Why.UNKNOWN_KEY, key_id[:64])
        return found

    def verify_key(self, key_id: str) -> Any:
        if key_id != self._verify_id:
            raise SealError(Why.UNKNOWN_KEY, key_id[:64])
        return self._verify
