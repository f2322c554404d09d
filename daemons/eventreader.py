"""The event inspector's Kafka side: records read from a start position, without a consumer group.

:class:`EventReader` reads assigned partitions from a start position (the last N of
each, the beginning, an offset, a time) without joining or committing to any consumer
group, so the daemons' positions are never disturbed, and yields each record as an
:class:`~.inspector.InspectedRecord` up to the end each partition had (then
:data:`~.inspector.CAUGHT_UP`) and, when following, what arrives later.
:func:`partition_infos` gives each partition's offsets (the topic list of Kafka UI).

Bounded: librdkafka's read-ahead is capped at 2 MB, values over 16 KiB are not decoded,
and a history read keeps at most ``keep`` matching records per partition.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from evproto.bus.client import BusError, KafkaSettings, bus_error, client_config
from evproto.bus.topics import Topic

from .gate import KeyBook, Policy
from .inspector import (
    CAUGHT_UP,
    MAX_KEY_CHARS,
    CaughtUp,
    EventFilter,
    InspectedRecord,
    StartAt,
    StartKind,
    inspect_value,
)

__all__ = ["EventReader", "PartitionInfo", "partition_infos"]

log = logging.getLogger("evproto.inspector")

#: librdkafka's read-ahead per consumer, in kB (its default is 64 MiB).
_PREFETCH_KBYTES = 2048
#: A history read that hears nothing from the broker this long gives up (not a follow).
_IDLE_LIMIT_S = 15.0


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

    def records(self) -> Iterator[InspectedRecord | CaughtUp]:
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
