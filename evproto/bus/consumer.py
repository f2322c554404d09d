"""The Kafka consumer: reads assigned partitions from given offsets, no consumer group."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Iterable

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, TopicCollection, TopicPartition

from .topics import Topic

from .client import (
    OFFSET_BEGINNING,
    OFFSET_END,
    BusError,
    KafkaSettings,
    _bus_error,
    _client_config,
    _admin,
    _RateLimitedLog,
    _run_in_thread,
    log,
)

#: Seconds between checks that the broker has not re-created our topics.
RESET_CHECK_S = 5.0

__all__ = ["Record", "BusConsumer"]



@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One record read from Kafka. ``timestamp_ms`` is -1 when the broker gave none."""

    topic: Topic
    partition: int
    offset: int
    key: str | None
    value: bytes | None
    timestamp_ms: int


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
    """Reads the given (topic, partition, start offset) assignments, with no consumer group.

    ``async for record in consumer`` yields :class:`Record` in offset order per
    partition; it raises BusError on a fatal error and ends after ``close()``.
    A thread polls librdkafka and waits when ``queue_size`` records are waiting,
    so a slow reader slows fetching and nothing is dropped. Broker outages are
    not errors: they are counted in ``transient_errors`` and librdkafka reconnects.
    To read from other offsets, make a new consumer.

    A start offset that no longer exists (removed by retention) reads from the
    oldest record kept (``auto.offset.reset=earliest``).

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
        assignments: Iterable[tuple[Topic, int, int]],
        *,
        queue_size: int = 1000,
        poll_timeout_s: float = 0.1,
        fetch_wait_s: float = 0.05,
        start_timeout_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.assignments = tuple(assignments)
        if not self.assignments:
            raise ValueError("a consumer needs at least one (topic, partition, offset) assignment")
        seen = set()
        for topic, partition, offset in self.assignments:
            if not isinstance(topic, Topic) or partition < 0:
                raise ValueError(f"bad assignment {(topic, partition, offset)!r}")
            if offset < 0 and offset not in (OFFSET_BEGINNING, OFFSET_END):
                raise ValueError(
                    f"start offset must be >= 0, OFFSET_BEGINNING or OFFSET_END, got {offset}"
                )
            if (topic, partition) in seen:
                raise ValueError(f"{topic.value} partition {partition} assigned twice")
            seen.add((topic, partition))
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
        #: Topics found re-created by the broker (then read again from the beginning).
        self.resets = 0
        self._topic_ids: dict[str, str] = {}
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
        self._warn = _RateLimitedLog(log)

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
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": max(1, int(self.fetch_wait_s * 1000)),
        }
        consumer = confluent_kafka.Consumer(
            _client_config(self.settings, config, on_error=self._on_error)
        )
        self._consumer = consumer
        consumer.assign(await _run_in_thread("evproto-consumer-start", self._start_positions))
        self._done = _run_in_thread("evproto-consumer-poll", self._poll_loop)

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
            batch.append(item)
        return batch

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

    def _start_positions(self) -> list[TopicPartition]:
        """The assignment for librdkafka, with OFFSET_END replaced by the current end offset."""
        consumer = self._consumer
        assert consumer is not None
        deadline = time.monotonic() + self.start_timeout_s
        reachable = True
        # Knowing the partition leaders before assign() saves librdkafka's 0.5 s
        # "no leader yet" retry before the first fetch.
        for name in {self.settings.topic(t) for t, _, _ in self.assignments}:
            try:
                consumer.list_topics(name, timeout=max(deadline - time.monotonic(), 0.1))
            except KafkaException:
                reachable = False
                break
        out = []
        for topic, partition, offset in self.assignments:
            name = self.settings.topic(topic)
            if offset == OFFSET_END and reachable and time.monotonic() < deadline:
                # Note: Tansu answers with the last batch's base offset + 1, so there
                # the tail of a multi-record last batch is read again; Kafka is exact.
                try:
                    _low, offset = consumer.get_watermark_offsets(
                        TopicPartition(name, partition),
                        timeout=max(deadline - time.monotonic(), 0.1),
                    )
                except KafkaException:
                    offset = OFFSET_END
            out.append(TopicPartition(name, partition, offset))
        self._topic_ids = self._current_topic_ids()
        return out

    # -- broker resets

    def _current_topic_ids(self) -> dict[str, str]:
        """Each assigned topic's id (a new id means the topic was deleted and re-created)."""
        names = sorted({self.settings.topic(t) for t, _, _ in self.assignments})
        try:
            if self._admin is None:
                self._admin = _admin(self.settings)
            found = self._admin.describe_topics(TopicCollection(names), request_timeout=2.0)
            return {name: str(fut.result(timeout=3.0).topic_id) for name, fut in found.items()}
        except Exception as exc:  # the broker is away: try again at the next check
            log.debug("topic ids unavailable: %r", exc)
            return {}

    def _check_resets(self, consumer: confluent_kafka.Consumer) -> None:
        """Re-read from the beginning any topic the broker has re-created (it lost its data).

        A broker with in-memory storage comes back empty: the new logs start at offset
        0 again, below the positions we hold, so without this their first records
        would be skipped. Readers de-duplicate, so reading from 0 costs nothing else.
        """
        now_ids = self._current_topic_ids()
        for name, topic_id in now_ids.items():
            old = self._topic_ids.get(name)
            if old is None or old == topic_id:
                self._topic_ids.setdefault(name, topic_id)
                continue
            try:
                for topic, partition, _ in self.assignments:
                    if self.settings.topic(topic) == name:
                        consumer.seek(TopicPartition(name, partition, OFFSET_BEGINNING))
            except KafkaException as exc:
                log.debug("seek after the reset of %s failed (will retry): %r", name, exc)
                continue
            self._topic_ids[name] = topic_id
            self.resets += 1
            self._warn.log(logging.WARNING, f"topic {name} was re-created (the broker lost its data?): "
                                            "reading it again from the beginning")

    # -- the poll thread

    def _poll_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            next_check = time.monotonic() + RESET_CHECK_S
            while not self._stop.is_set():
                if time.monotonic() >= next_check:
                    self._check_resets(consumer)
                    next_check = time.monotonic() + RESET_CHECK_S
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
        return Record(
            topic=self._topics[msg.topic()],
            partition=msg.partition(),
            offset=msg.offset(),
            key=key.decode("utf-8", "replace") if key is not None else None,
            value=msg.value(),
            timestamp_ms=ts if ts_type != confluent_kafka.TIMESTAMP_NOT_AVAILABLE else -1,
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
                self._fatal = _bus_error(err, f"Kafka consumer ({self.settings.bootstrap}) failed")
            return
        self.transient_errors += 1
        self._warn.log(logging.WARNING, f"Kafka {self.settings.bootstrap}: {err.str()}")
