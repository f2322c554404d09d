"""The Kafka consumer: reads assigned partitions from given offsets, no consumer group."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, Iterable, Sequence

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from ..ratelog import RateLimitedLog
from .client import (
    OFFSET_BEGINNING,
    OFFSET_END,
    BusError,
    KafkaSettings,
    admin_client,
    bus_error,
    client_config,
    log,
    run_in_thread,
    topic_ids_blocking,
)
from .resets import CONFIRM_S, RESET_CHECK_S, LogReset, ResetCause
from .topics import Topic, spec_for

#: Keys longer than this are cut (ours are ids of at most 64 characters).
_MAX_KEY_BYTES = 1024

__all__ = ["Record", "BusConsumer", "Assignment"]

#: (topic, partition, start offset) or (topic, partition, start offset, topic id of that offset's log).
Assignment = tuple[Topic, int, int] | tuple[Topic, int, int, "str | None"]
#: LogResets kept in ``BusConsumer.log_resets`` (the newest).
LOG_RESETS_KEPT = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One record read from Kafka. ``timestamp_ms`` is -1 when the broker gave none.

    ``topic_id`` names the log the record came from (None when the broker did not
    tell): a reader stores it with its offset, so that on its next start the
    consumer can tell the same log from a new one that grew past that offset.
    """

    topic: Topic
    partition: int
    offset: int
    key: str | None
    value: bytes | None
    timestamp_ms: int
    topic_id: str | None = None
    #: The value's size on the broker when the consumer kept only its first
    #: ``max_value_bytes`` (None: ``value`` is whole).
    size: int | None = None


@dataclass(slots=True)
class _Assigned:
    """One assigned partition, as the poll thread follows it."""

    topic: Topic
    name: str
    partition: int
    start: int
    #: The log we believe we read (None: not known yet).
    topic_id: str | None
    #: The next offset to read (< 0 while only a logical start is known).
    next_offset: int
    #: Consecutive looks that found the log ending before ``next_offset``.
    suspect: int = 0
    #: The broker refused our position (Apache Kafka's OFFSET_OUT_OF_RANGE): seek pending.
    refused: bool = False


_END = object()

# Errors that retrying cannot fix; all others are logged, counted and left to librdkafka.
_FATAL_CODES = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
    }
)


class BusConsumer:
    """Reads the given (topic, partition, start offset[, topic id]) assignments, with no consumer group.

    ``async for record in consumer`` yields :class:`Record` in offset order per
    partition; it raises BusError on a fatal error and ends after ``close()``.
    A thread polls librdkafka and waits when ``queue_size`` records are waiting,
    so a slow reader slows fetching and nothing is dropped. Broker outages are
    not errors: they are counted in ``transient_errors`` and librdkafka reconnects.
    To read from other offsets, make a new consumer.

    **Log resets.** A reader stores each record's offset *and* ``topic_id``, and passes
    both back as its start position. When the log is not the one the position came
    from, the partition is read from its beginning: the topic has another id (checked
    at start and every ``RESET_CHECK_S``), the log ends before the position (seen
    twice, ``CONFIRM_S`` apart), or the broker refuses the position (out of range,
    including records removed by retention). Each reset is a :class:`LogReset`, kept
    in ``log_resets`` (the newest 100), counted in ``resets``, logged, and handed to
    ``on_reset`` on the event loop *in stream order*: after every record read from
    the old log, before any record from the new one. Without a stored topic id only
    the end check can tell, and a new log already longer than the position cannot be
    told from the old one.

    ``start()`` turns OFFSET_END into the partition's current end offset before it
    returns, so every record produced after ``start()`` is seen; it waits at most
    ``start_timeout_s`` for the broker (if unreachable, librdkafka resolves the
    offset once it connects).

    ``fetch_wait_s`` is how long the broker may hold a fetch while it has no new
    data. Apache Kafka answers as soon as data arrives; Tansu always waits this
    long, so there it is the delivery latency (librdkafka's 0.5 s default would
    make ~250 ms typical). Lower means more idle requests.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        assignments: Iterable[Assignment],
        *,
        queue_size: int = 1000,
        poll_timeout_s: float = 0.1,
        fetch_wait_s: float = 0.05,
        start_timeout_s: float = 5.0,
        on_reset: Callable[[LogReset], None] | None = None,
        max_value_bytes: int | None = None,
        prefetch_kbytes: int = 8192,
    ) -> None:
        self.settings = settings
        if max_value_bytes is not None and max_value_bytes < 0:
            raise ValueError("max_value_bytes must be >= 0 or None")
        if prefetch_kbytes < 1:
            raise ValueError("prefetch_kbytes must be >= 1")
        #: Values larger than this are cut to it (``Record.size`` tells the full size): the
        #: queue then holds at most queue_size x max_value_bytes, whatever a peer writes.
        self.max_value_bytes = max_value_bytes
        self.prefetch_kbytes = prefetch_kbytes
        given = tuple(assignments)
        if not given:
            raise ValueError("a consumer needs at least one (topic, partition, offset) assignment")
        self._assigned: dict[tuple[str, int], _Assigned] = {}
        for item in given:
            if not isinstance(item, tuple) or len(item) not in (3, 4):
                raise ValueError(f"bad assignment {item!r}: (topic, partition, offset[, topic id])")
            topic, partition, offset = item[:3]
            topic_id = item[3] if len(item) == 4 else None
            if not isinstance(topic, Topic) or partition < 0:
                raise ValueError(f"bad assignment {item!r}")
            if offset < 0 and offset not in (OFFSET_BEGINNING, OFFSET_END):
                raise ValueError(f"start offset must be >= 0, OFFSET_BEGINNING or OFFSET_END, got {offset}")
            if topic_id is not None and not (isinstance(topic_id, str) and topic_id):
                raise ValueError(f"topic id must be a non-empty string or None, got {topic_id!r}")
            name = settings.topic(topic)
            if (name, partition) in self._assigned:
                raise ValueError(f"{topic.value} partition {partition} assigned twice")
            self._assigned[(name, partition)] = _Assigned(
                topic=topic,
                name=name,
                partition=partition,
                start=offset,
                topic_id=topic_id,
                next_offset=offset,
            )
        #: The (topic, partition, start offset) assignments, as given.
        self.assignments = tuple((a.topic, a.partition, a.start) for a in self._assigned.values())
        self.on_reset = on_reset
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self.queue_size = queue_size
        self._batch = min(queue_size, 500)
        self.poll_timeout_s = poll_timeout_s
        self.fetch_wait_s = fetch_wait_s
        self.start_timeout_s = start_timeout_s
        #: Records handed to the reader, partition ends reached, transient errors seen.
        self.received = 0
        self.eof_count = 0
        self.transient_errors = 0
        #: Partitions found reading a replaced log (then read again from the beginning).
        self.resets = 0
        #: The newest LogResets, oldest first (handed over in stream order).
        self.log_resets: deque[LogReset] = deque(maxlen=LOG_RESETS_KEPT)
        # Resets to hand to the reader before its next record (found at start, or held
        # back by next_batch so that a batch never mixes the old log and the new one).
        self._held: deque[LogReset] = deque()
        # Partitions the poll thread was told the broker refused (error path, any thread).
        self._refused: deque[tuple[str, int]] = deque()
        self._admin: Any = None
        self._topics = {settings.topic(t): t for t in Topic}
        self._consumer: confluent_kafka.Consumer | None = None
        self._queue: asyncio.Queue[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._done: asyncio.Future[None] | None = None
        self._fatal: BusError | None = None
        self._error: BusError | None = None
        self._closed = False
        self._ended = False
        self._warn = RateLimitedLog(log)

    async def start(self) -> None:
        """Create the client, resolve OFFSET_END, assign the partitions, start the poll thread."""
        if self._consumer is not None:
            raise BusError("consumer already started")
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(self.queue_size)
        config = {
            # librdkafka insists on a group id; without subscribe() or commits it joins nothing.
            "group.id": self.settings.client_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            # A refused position comes to us (and is read from the beginning, reported)
            # instead of being reset silently inside librdkafka.
            "auto.offset.reset": "error",
            "fetch.wait.max.ms": max(1, int(self.fetch_wait_s * 1000)),
            # librdkafka's own read-ahead, bounded in bytes (its default is 64 MiB).
            "queued.max.messages.kbytes": self.prefetch_kbytes,
        }
        consumer = confluent_kafka.Consumer(client_config(self.settings, config, on_error=self._on_error))
        self._consumer = consumer
        positions, resets = await run_in_thread("evproto-consumer-start", self._start_positions)
        consumer.assign(positions)
        self._announce(resets)
        self._done = run_in_thread("evproto-consumer-poll", self._poll_loop)

    async def __aenter__(self) -> BusConsumer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> BusConsumer:
        return self

    async def __anext__(self) -> Record:
        if self._queue is None:
            raise BusError("consumer not started")
        while True:
            while self._held:
                self._hand_over_reset(self._held.popleft())
            if self._error is not None:
                raise self._error
            if self._ended:
                raise StopAsyncIteration
            item = await self._queue.get()
            if item is _END:
                self._ended = True
                raise StopAsyncIteration
            if isinstance(item, BusError):
                self._error = item
                raise item
            if isinstance(item, LogReset):
                self._hand_over_reset(item)
                continue
            return item

    async def next_batch(self, max_records: int = 500) -> list[Record]:
        """Wait for the next record, then take whatever else is already here (up to ``max_records``).

        Lets a reader amortise per-batch work (one database transaction for many
        records). Raises like ``__anext__``; an empty list never comes back: at the
        end of iteration StopAsyncIteration is raised.
        """
        first = await self.__anext__()
        batch = [first]
        assert self._queue is not None
        while len(batch) < max_records and not self._queue.empty():
            item = self._queue.get_nowait()
            if item is _END:  # the next call ends iteration, after this batch
                self._ended = True
                break
            if isinstance(item, BusError):  # the next call raises it, after this batch
                self._error = item
                break
            if isinstance(item, LogReset):  # handed over by the next call, after this batch
                self._held.append(item)
                break
            batch.append(item)
        return batch

    @property
    def topic_ids(self) -> dict[Topic, str]:
        """The id of each assigned topic's log as the consumer knows it now (missing: not known yet)."""
        return {a.topic: a.topic_id for a in self._assigned.values() if a.topic_id is not None}

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop polling and close the client; iteration ends. Bounded even without a broker."""
        if self._closed or self._done is None or self._queue is None:
            return
        self._closed = True
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._done), timeout_s)
        except asyncio.TimeoutError:
            log.warning("Kafka consumer did not close within %g s; abandoning it", timeout_s)
        except Exception as exc:  # the poll thread's failure was already handed over
            log.debug("consumer thread ended with %r", exc)
        while not self._queue.empty():  # unread records are dropped: the reader asked to stop
            self._queue.get_nowait()
        self._queue.put_nowait(_END)

    def _start_positions(self) -> tuple[list[TopicPartition], list[LogReset]]:
        """The assignment for librdkafka (OFFSET_END replaced by the current end offset), and
        the resets found: a stored position from a log that is not the current one."""
        consumer = self._consumer
        assert consumer is not None
        deadline = time.monotonic() + self.start_timeout_s
        reachable = True
        # Knowing the partition leaders before assign() saves librdkafka's 0.5 s
        # "no leader yet" retry before the first fetch.
        for name in sorted({a.name for a in self._assigned.values()}):
            try:
                consumer.list_topics(name, timeout=max(deadline - time.monotonic(), 0.1))
            except KafkaException:
                reachable = False
                break
        ids = self._current_topic_ids() if reachable else {}
        out, resets = [], []
        for a in self._assigned.values():
            offset = a.start
            current = ids.get(a.name)
            if current is not None and a.topic_id is not None and current != a.topic_id:
                resets.append(self._reset_to_beginning(a, ResetCause.TOPIC_RECREATED, current))
                offset = OFFSET_BEGINNING
            elif offset >= 0 or offset == OFFSET_END:
                end = self._end_offset(a, deadline) if reachable and time.monotonic() < deadline else None
                if offset == OFFSET_END:
                    # Note: Tansu answers with the last batch's base offset + 1, so there
                    # the tail of a multi-record last batch is read again; Kafka is exact.
                    offset = end if end is not None else OFFSET_END
                    a.next_offset = offset
                elif end is not None and end < offset:
                    a.suspect = 1  # looked at again soon: a second look decides
            if current is not None and a.topic_id is None:
                a.topic_id = current
            out.append(TopicPartition(a.name, a.partition, offset))
        return out, resets

    def _end_offset(self, a: _Assigned, deadline: float | None = None) -> int | None:
        """The partition's end offset from the broker now (None when it does not answer)."""
        assert self._consumer is not None
        timeout = max((deadline or time.monotonic() + 2.0) - time.monotonic(), 0.1)
        try:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(a.name, a.partition), timeout=timeout)
        except KafkaException:
            return None
        return int(high)

    # -- log resets (poll thread)

    def _current_topic_ids(self) -> dict[str, str]:
        """Each assigned topic's id, for those the broker describes now."""
        if self._admin is None:
            self._admin = admin_client(self.settings)
        return topic_ids_blocking(self._admin, {a.name for a in self._assigned.values()}, timeout_s=2.0)

    def _reset_to_beginning(
        self, a: _Assigned, cause: ResetCause, topic_id: str | None, end_offset: int = -1
    ) -> LogReset:
        reset = LogReset(
            topic=a.topic,
            partition=a.partition,
            cause=cause,
            old_topic_id=a.topic_id,
            topic_id=topic_id,
            position=a.next_offset,
            end_offset=end_offset,
        )
        a.topic_id = topic_id if topic_id is not None else a.topic_id
        a.next_offset = OFFSET_BEGINNING
        a.suspect = 0
        a.refused = False
        self.resets += 1
        return reset

    def _seek_beginning(self, consumer: confluent_kafka.Consumer, a: _Assigned) -> bool:
        try:
            consumer.seek(TopicPartition(a.name, a.partition, OFFSET_BEGINNING))
            return True
        except KafkaException as exc:
            log.debug("seek to the beginning of %s[%d] failed (will retry): %r", a.name, a.partition, exc)
            return False

    def _check_resets(self, consumer: confluent_kafka.Consumer) -> bool:
        """Find partitions whose log was replaced, read them from the beginning, report them.

        Returns True when a partition is still suspect (look again in CONFIRM_S).
        """
        found: list[LogReset] = []
        ids = self._current_topic_ids()
        for a in self._assigned.values():
            current = ids.get(a.name)
            if current is not None and a.topic_id is None:
                a.topic_id = current
            if current is not None and current != a.topic_id:
                if self._seek_beginning(consumer, a):
                    found.append(self._reset_to_beginning(a, ResetCause.TOPIC_RECREATED, current))
                continue
            if a.refused:
                if self._seek_beginning(consumer, a):
                    found.append(self._reset_to_beginning(a, ResetCause.OFFSET_OUT_OF_RANGE, current))
                continue
            if a.next_offset < 0:
                continue
            # The end offset librdkafka learnt from its last fetch costs nothing to read;
            # the broker is asked only when that one is below our position.
            try:
                _low, high = consumer.get_watermark_offsets(TopicPartition(a.name, a.partition), cached=True)
            except KafkaException:
                high = -1
            if a.suspect == 0 and (high < 0 or high >= a.next_offset):
                continue
            end = self._end_offset(a)
            if end is None or end >= a.next_offset:
                a.suspect = 0
                continue
            a.suspect += 1
            if a.suspect >= 2 and self._seek_beginning(consumer, a):
                found.append(self._reset_to_beginning(a, ResetCause.LOG_ENDS_BEFORE_POSITION, current, end))
        if found:
            self._put(found)
        return any(a.suspect for a in self._assigned.values())

    def _on_refused(self, name: str, partition: int) -> None:
        """The broker refused a partition's position (librdkafka's _AUTO_OFFSET_RESET); any thread."""
        self._refused.append((name, partition))

    def _announce(self, resets: Sequence[LogReset]) -> None:
        """Hold resets found at start for the reader (on the loop, before any record)."""
        self._held.extend(resets)

    def _hand_over_reset(self, reset: LogReset) -> None:
        """On the loop, in stream order: keep, log and pass on one reset."""
        self.log_resets.append(reset)
        self._warn.log(
            logging.WARNING,
            f"{self.settings.topic(reset.topic)}[{reset.partition}]: {reset.cause.text} "
            f"(the broker lost its log?): reading the new log from its beginning "
            f"instead of offset {reset.position}; {spec_for(reset.topic).resend.recovery}",
        )
        if self.on_reset is not None:
            self.on_reset(reset)

    # -- the poll thread

    def _poll_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            suspect = any(a.suspect for a in self._assigned.values())
            next_check = time.monotonic() + (CONFIRM_S if suspect else RESET_CHECK_S)
            while not self._stop.is_set():
                while self._refused:
                    name, partition = self._refused.popleft()
                    a = self._assigned.get((name, partition))
                    if a is not None and not a.refused:
                        a.refused = True
                        next_check = time.monotonic()
                if time.monotonic() >= next_check:
                    suspect = self._check_resets(consumer)
                    next_check = time.monotonic() + (CONFIRM_S if suspect else RESET_CHECK_S)
                # poll() returns on the first record; consume() would wait for a full
                # batch or the timeout. Whatever else is already fetched comes along.
                first = consumer.poll(self.poll_timeout_s)  # may call _on_error too
                batch = [] if first is None else [first, *consumer.consume(self._batch, 0)]
                items: list[Any] = []
                for msg in batch:
                    err = msg.error()
                    if err is None:
                        items.append(self._record(msg))
                    elif err.code() == KafkaError._PARTITION_EOF:
                        self.eof_count += 1  # normal: caught up with this partition
                    elif err.code() == KafkaError._AUTO_OFFSET_RESET:
                        self._on_refused(msg.topic(), msg.partition())
                    else:
                        self._on_error(err)
                if self._fatal is not None:
                    items.append(self._fatal)
                if items and not self._put(items):
                    return
                if self._fatal is not None:
                    return
        except Exception as exc:
            self._put([BusError(f"Kafka consumer failed: {exc!r}")])
        finally:
            try:
                consumer.close()
            except Exception as exc:  # closing a broken client must not mask what broke it
                log.debug("closing the Kafka consumer: %r", exc)

    def _record(self, msg: Any) -> Record:
        key = msg.key()
        ts_type, ts = msg.timestamp()
        self.received += 1
        name, partition, offset = msg.topic(), msg.partition(), msg.offset()
        a = self._assigned.get((name, partition))
        if a is not None:
            a.next_offset = offset + 1
        value, size = msg.value(), None
        if value is not None and self.max_value_bytes is not None and len(value) > self.max_value_bytes:
            value, size = value[: self.max_value_bytes], len(value)
        if key is not None and len(key) > _MAX_KEY_BYTES:
            key = key[:_MAX_KEY_BYTES]
        return Record(
            topic=self._topics[name],
            partition=partition,
            offset=offset,
            key=key.decode("utf-8", "replace") if key is not None else None,
            value=value,
            timestamp_ms=ts if ts_type != confluent_kafka.TIMESTAMP_NOT_AVAILABLE else -1,
            topic_id=a.topic_id if a is not None else None,
            size=size,
        )

    def _put(self, items: list[Any]) -> bool:
        """Hand items to the loop, waiting while its queue is full; False once stopping."""
        assert self._loop is not None and self._queue is not None
        queue = self._queue

        async def put_all() -> None:
            for item in items:
                await queue.put(item)

        try:
            fut = asyncio.run_coroutine_threadsafe(put_all(), self._loop)
        except RuntimeError:  # loop closed
            return False
        while True:
            try:
                fut.result(0.1)
                return True
            except concurrent.futures.TimeoutError:
                if self._stop.is_set() or self._loop.is_closed():
                    fut.cancel()
                    return False
            except concurrent.futures.CancelledError:
                return False

    def _on_error(self, err: KafkaError) -> None:
        # Called in the poll thread (error_cb and per-partition errors alike).
        if err.fatal() or err.code() in _FATAL_CODES:
            if self._fatal is None:
                self._fatal = bus_error(err, f"Kafka consumer ({self.settings.bootstrap}) failed")
            return
        self.transient_errors += 1
        self._warn.log(logging.WARNING, f"Kafka {self.settings.bootstrap}: {err.str()}")
