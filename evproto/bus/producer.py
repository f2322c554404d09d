"""The idempotent Kafka producer: ``produce()`` returns a future of (partition, offset)."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException

from ..ratelog import RateLimitedLog
from .client import (
    BusError,
    KafkaSettings,
    admin_client,
    bus_error,
    call_soon_threadsafe,
    client_config,
    log,
    run_in_thread,
    topic_ids_blocking,
)
from .resets import RESET_CHECK_S
from .topics import Resend, Topic, spec_for

__all__ = ["BusProducer"]

# Delivery errors meaning the broker no longer knows this producer's identity (a broker
# that lost its state, as an in-memory one does on restart): only a new producer helps.
_REBUILD_CODES = frozenset(
    {
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
        KafkaError.PRODUCER_FENCED,
        KafkaError._FENCED,
        KafkaError._FATAL,
    }
)

# Delivery errors that mean the broker did not write the record: a topic it lost and has
# not created again yet, a producer identity it forgot, a record purged from a replaced
# client before it was sent. The record is produced again (in the new client, once the
# topic is back) until its delivery timeout, so a broker restart does not fail callers.
_NOT_WRITTEN_CODES = frozenset(
    {
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError._PURGE_QUEUE,
    }
)
#: Seconds before a record the broker did not write is produced again.
RETRY_DELAY_S = 0.2

#: Sent before the producer first learnt the topic's id: counts as sent to the first id it learns.
_UNKNOWN_ID = ""


@dataclass(slots=True, eq=False)
class _Kept:
    """An acknowledged record kept to be sent again if its topic's log is replaced."""

    topic: Topic
    key: bytes
    value: bytes | None
    partition: int | None
    #: The log it was sent to, as believed when it was handed over (tagged at hand-over:
    #: a record delivered to a newer log than believed is sent again, never missed).
    topic_id: str
    acked_at: float = 0.0
    #: The id it is being sent again to (None: not in flight).
    resending_to: str | None = None

    @property
    def size(self) -> int:
        return len(self.key) + len(self.value or b"") + 64


class _Outgoing(NamedTuple):
    topic: str
    key: bytes
    value: bytes | None
    partition: int | None
    future: asyncio.Future[tuple[int, int]] | None  # None: posted, nobody waits
    queued_at: float
    kept: _Kept | None = None  # to keep once acknowledged, or being sent again
    last_error: BusError | None = None  # why the broker did not write it last time


class BusProducer:
    """An idempotent producer (``acks=all``): no duplicates or reordering on retries.

    ``delivery_timeout_s`` bounds how long a record may wait for the broker
    (librdkafka's ``message.timeout.ms``); after it, its future fails with
    BusError. Counters: ``produced``, ``delivered``, ``failed``.

    **After a log reset.** An acknowledged record is gone if the broker loses its
    log before a reader read it. So records to topics whose spec says
    :class:`~evproto.bus.topics.Resend` RECENT (waited for, not posted) or
    LATEST_PER_KEY are kept after their acknowledgement: RECENT ones at most
    ``keep_s`` seconds, ``keep_max`` records and ``keep_max_bytes`` (the oldest go
    first); the newest record of each key at most ``keep_max`` keys and
    ``keep_max_bytes``, however old.
    Every ``RESET_CHECK_S`` the producer looks up the ids of the topics it keeps
    records for; when one has a new id (the topic was created again), the kept
    records sent to the old log are produced again, in their order, and logged.
    Counters: ``resets`` (topics found replaced), ``resent``; ``kept`` records now.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        delivery_timeout_s: float = 30.0,
        linger_ms: int = 2,
        max_backlog: int = 10_000,
        keep_s: float = 600.0,
        keep_max: int = 20_000,
        keep_max_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.settings = settings
        self.delivery_timeout_s = delivery_timeout_s
        self.linger_ms = linger_ms
        self.max_backlog = max_backlog
        if keep_s < 0 or keep_max < 0 or keep_max_bytes < 0:
            raise ValueError("keep_s, keep_max and keep_max_bytes must be >= 0")
        self.keep_s = keep_s
        self.keep_max = keep_max
        self.keep_max_bytes = keep_max_bytes
        self.produced = 0
        self.delivered = 0
        self.failed = 0
        self.resets = 0
        self.resent = 0
        # Kept records: RECENT ones in acknowledgement order, LATEST_PER_KEY ones by
        # (topic, partition, key), least recently updated first.
        self._recent: deque[_Kept] = deque()
        self._latest: OrderedDict[tuple[Topic, int | None, bytes], _Kept] = OrderedDict()
        self._recent_bytes = 0
        self._latest_bytes = 0
        # Topic ids as last looked up (name -> id), and the first ones learnt.
        self._topic_ids: dict[Topic, str] = {}
        self._first_ids: dict[Topic, str] = {}
        self._retry: set[Topic] = set()  # topics with a re-send that failed
        self._produced_topics: set[Topic] = set()
        self._look_now = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._admin_client: Any = None
        self._producer: confluent_kafka.Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self._closing = False
        self._fatal: BusError | None = None
        self._pending: set[asyncio.Future[tuple[int, int]]] = set()
        # Records librdkafka's full local queue refused, in order; later records wait behind them.
        self._backlog: deque[_Outgoing] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self._warn = RateLimitedLog(log)
        self._rebuilding = False
        self._broker_was_down = False
        #: Times the underlying client was replaced after the broker forgot it.
        self.rebuilds = 0
        # Delivery reports from librdkafka's thread, settled on the loop in batches:
        # one wake-up of the loop per poll, not one per record.
        self._reports: deque[tuple[_Outgoing, Any, BusError | None, bool]] = deque()
        self._wake_pending = False

    @property
    def pending(self) -> int:
        """Records produced but not yet delivered or failed."""
        return len(self._pending)

    @property
    def kept(self) -> int:
        """Acknowledged records kept to be sent again after a log reset."""
        return len(self._recent) + len(self._latest)

    @property
    def resend_pending(self) -> int:
        """Kept records sent to a log that was replaced and not yet acknowledged by the new one."""
        return sum(
            1
            for k in (*self._recent, *self._latest.values())
            if k.topic_id != _UNKNOWN_ID and k.topic_id != self._topic_ids.get(k.topic, k.topic_id)
        )

    async def start(self) -> None:
        """Create the client and its poll thread (it connects in the background: no wait)."""
        if self._producer is not None:
            raise BusError("producer already started")
        self._loop = asyncio.get_running_loop()
        self._new_client()
        self._watcher = self._loop.create_task(self._watch_topics())

    def _new_client(self) -> None:
        config = {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self.linger_ms,
            "message.timeout.ms": max(1, int(self.delivery_timeout_s * 1000)),
        }
        self._producer = confluent_kafka.Producer(client_config(self.settings, config, on_error=self._on_error))
        self._stop = threading.Event()
        self._poller = threading.Thread(
            target=self._poll_loop, args=(self._producer, self._stop), name="evproto-producer-poll", daemon=True
        )
        self._poller.start()

    def rebuild(self, reason: str) -> None:
        """Replace the underlying client now (for callers who see it stuck: records that
        never complete while the broker answers other requests). Call on the loop."""
        self._request_rebuild(reason)

    def _request_rebuild(self, reason: str) -> None:
        # On the loop. Records in the old client fail (callers with durable outboxes
        # send them again); new records go to a client with a fresh producer id.
        if self._rebuilding or self._closing or self._producer is None:
            return
        self._rebuilding = True
        old, old_stop, old_poller = self._producer, self._stop, self._poller
        self._fatal = None
        self._new_client()
        self.rebuilds += 1
        log.warning("Kafka producer recreated: %s", reason)

        def dispose() -> None:
            old_stop.set()
            if old_poller is not None:
                old_poller.join()
            old.purge()
            old.flush(1.0)  # serves the purged records' failure reports
            close = getattr(old, "close", None)
            if close is not None:
                close()

        done = run_in_thread("evproto-producer-dispose", dispose)
        done.add_done_callback(lambda f: setattr(self, "_rebuilding", False))

    async def __aenter__(self) -> BusProducer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def produce(
        self, topic: Topic, key: str, value: bytes | None, *, partition: int | None = None
    ) -> asyncio.Future[tuple[int, int]]:
        """Queue one record; the future gives (partition, offset) once the broker has it.

        It fails with BusError when delivery fails. ``value=None`` is a tombstone
        (deletes ``key`` from a compacted topic). Never blocks: when librdkafka's
        local queue is full, the record waits in a bounded backlog, in order.
        """
        fut = self._enqueue(topic, key, value, partition, waited=True)
        assert fut is not None
        return fut

    def _enqueue(
        self,
        topic: Topic,
        key: str,
        value: bytes | None,
        partition: int | None,
        *,
        waited: bool,
    ) -> asyncio.Future[tuple[int, int]] | None:
        if self._producer is None or self._loop is None:
            raise BusError("producer not started")
        if value is not None and not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"value must be bytes or None, not {type(value).__name__}")
        if partition is not None and not (isinstance(partition, int) and partition >= 0):
            raise ValueError(f"partition must be an int >= 0 or None, got {partition!r}")
        fut: asyncio.Future[tuple[int, int]] | None = self._loop.create_future() if waited else None
        raw_key = key.encode("utf-8")
        if topic not in self._produced_topics:
            self._produced_topics.add(topic)
            self._look_now.set()  # learn its id before the broker can lose it
        resend = spec_for(topic).resend
        kept = None
        if (resend is Resend.RECENT and waited) or resend is Resend.LATEST_PER_KEY:
            kept = _Kept(topic, raw_key, value, partition, self._topic_ids.get(topic, _UNKNOWN_ID))
        item = _Outgoing(self.settings.topic(topic), raw_key, value, partition, fut, time.monotonic(), kept)
        self.produced += 1
        if fut is not None:
            self._pending.add(fut)
        if self._closing:
            self._settle(fut, None, BusError("producer is closing", code="_STATE"))
        elif self._fatal is not None:
            self._settle(fut, None, self._fatal)
        elif self._backlog or not self._hand_over(item):
            if len(self._backlog) >= self.max_backlog:
                self._settle(fut, None, BusError("producer queue full", code="_QUEUE_FULL"))
            else:
                self._backlog.append(item)
                if self._drainer is None or self._drainer.done():
                    self._drainer = self._loop.create_task(self._drain_backlog())
        return fut

    def post(self, topic: Topic, key: str, value: bytes | None, *, partition: int | None = None) -> None:
        """Queue one record and wait for nothing: for telemetry that the next record supersedes.

        Delivery is as reliable as :meth:`produce` (idempotent, ``acks=all``); a
        failure is counted in ``failed`` and logged (rate-limited) instead of failing
        a future. Saves a future and a callback per record on busy paths.
        """
        self._enqueue(topic, key, value, partition, waited=False)

    async def send(
        self, topic: Topic, key: str, value: bytes | None, *, partition: int | None = None
    ) -> tuple[int, int]:
        """Produce one record and wait until the broker acknowledges it: (partition, offset)."""
        return await self.produce(topic, key, value, partition=partition)

    async def close(self, timeout_s: float = 5.0) -> int:
        """Deliver what is queued (up to ``timeout_s``), then stop.

        Returns how many records were not delivered; their futures fail with BusError.
        """
        if self._producer is None or self._closing:
            return 0
        deadline = time.monotonic() + timeout_s
        while self._backlog and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._closing = True
        if self._drainer is not None:
            self._drainer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        for item in self._backlog:
            self._settle(item.future, None, BusError("producer closed before sending", code="_STATE"), item.kept)
        self._backlog.clear()
        self._stop.set()
        producer = self._producer
        poller = self._poller

        def finish() -> int:
            if poller is not None:
                poller.join()
            left = producer.flush(max(deadline - time.monotonic(), 0.0))
            if left:
                producer.purge()  # their delivery reports (errors) are served by the next flush
                producer.flush(1.0)
            # Drop the broker connections now; older confluent-kafka has no close()
            # and leaves that to garbage collection.
            close = getattr(producer, "close", None)
            if close is not None:
                close()
            return int(left)

        try:
            undelivered = await asyncio.wait_for(
                asyncio.shield(run_in_thread("evproto-producer-close", finish)), timeout_s + 3.0
            )
        except asyncio.TimeoutError:
            undelivered = len(self._pending)
            log.warning("Kafka producer did not close within %g s", timeout_s)
        self._settle_reports()  # outcomes the final flush reported
        for fut in list(self._pending):
            self._settle(fut, None, BusError("producer closed before delivery", code="_PURGE_QUEUE"))
        if undelivered:
            log.warning("Kafka producer closed with %d undelivered record(s)", undelivered)
        return undelivered

    # -- internals

    def _hand_over(self, item: _Outgoing) -> bool:
        """Give one record to librdkafka; False when its local queue is full."""
        assert self._producer is not None
        try:
            kwargs: dict[str, Any] = {
                "key": item.key,
                "value": item.value,
                "on_delivery": functools.partial(self._on_delivery, item),
            }
            if item.partition is not None:
                kwargs["partition"] = item.partition
            self._producer.produce(item.topic, **kwargs)
        except BufferError:
            return False
        except KafkaException as exc:
            err = exc.args[0]
            failure = bus_error(err, f"cannot produce to {item.topic}")
            self._reports.append((item, None, failure, err.code() in _NOT_WRITTEN_CODES))
            self._settle_reports()
        return True

    async def _drain_backlog(self) -> None:
        while self._backlog:
            item = self._backlog[0]
            if time.monotonic() - item.queued_at > self.delivery_timeout_s:
                self._backlog.popleft()
                self._settle(
                    item.future,
                    None,
                    item.last_error
                    or BusError(
                        f"local producer queue stayed full for {self.delivery_timeout_s:g} s",
                        code="_QUEUE_FULL",
                    ),
                    item.kept,
                )
            elif self._hand_over(item):
                self._backlog.popleft()
            else:
                await asyncio.sleep(0.005)  # the poll thread frees room as deliveries complete

    def _poll_loop(self, producer: confluent_kafka.Producer, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                producer.poll(0.1)  # runs delivery callbacks and error_cb in this thread
            except Exception as exc:  # a callback bug must not stop deliveries for good
                self._warn.log(logging.ERROR, f"Kafka producer poll failed: {exc!r}")
                time.sleep(0.1)

    def _on_delivery(self, item: _Outgoing, err: KafkaError | None, msg: Any) -> None:
        # librdkafka's thread: only hand the outcome to the loop.
        assert self._loop is not None
        if err is None:
            done = (msg.partition(), msg.offset()) if item.future is not None or item.kept is not None else None
            self._reports.append((item, done, None, False))
        else:
            failure = bus_error(err, f"delivery to {msg.topic()} failed")
            self._reports.append((item, None, failure, err.code() in _NOT_WRITTEN_CODES))
        if not self._wake_pending:
            # Cleared by the loop before it drains: a report appended after that is
            # either drained by this round or schedules the next one.
            self._wake_pending = True
            call_soon_threadsafe(self._loop, self._settle_reports)
        if err is not None and (err.code() in _REBUILD_CODES or err.fatal()):
            call_soon_threadsafe(self._loop, self._request_rebuild, err.str())
        elif err is not None and err.code() == KafkaError._MSG_TIMED_OUT and self._broker_was_down:
            # Records that time out after the broker went away may be stuck in a client
            # whose idempotence state the (restarted) broker no longer knows: start afresh.
            self._broker_was_down = False
            call_soon_threadsafe(self._loop, self._request_rebuild, "records timed out after a broker outage")

    def _settle_reports(self) -> None:
        self._wake_pending = False
        reports = self._reports
        while reports:
            item, result, exc, not_written = reports.popleft()
            if (
                exc is not None
                and not_written
                and not self._closing
                and time.monotonic() - item.queued_at < self.delivery_timeout_s
            ):
                assert self._loop is not None
                self._loop.call_later(RETRY_DELAY_S, self._retry_item, item._replace(last_error=exc))
                continue
            self._settle(item.future, result, exc, item.kept)

    def _retry_item(self, item: _Outgoing) -> None:
        """Produce again a record the broker did not write (behind any backlog)."""
        if self._closing:
            self._settle(item.future, None, BusError("producer closed before delivery", code="_STATE"), item.kept)
            return
        self._backlog.append(item)
        if self._drainer is None or self._drainer.done():
            assert self._loop is not None
            self._drainer = self._loop.create_task(self._drain_backlog())

    def _settle(
        self,
        fut: asyncio.Future[tuple[int, int]] | None,
        result: Any,
        exc: BusError | None,
        kept: _Kept | None = None,
    ) -> None:
        if kept is not None and kept.resending_to is not None:
            self._settle_resend(kept, exc)
            return
        if fut is not None:
            if fut not in self._pending:
                return
            self._pending.discard(fut)
        if exc is None:
            self.delivered += 1
            if kept is not None:
                self._keep(kept, result[0])
            if fut is not None and not fut.done():
                fut.set_result(result)
            return
        self.failed += 1
        self._warn.log(logging.WARNING, f"Kafka producer: {exc}")
        if fut is not None and not fut.done():
            fut.set_exception(exc)
            # Logged above (rate-limited): callers that fire and forget get no
            # "exception was never retrieved" flood while the broker is down.
            fut.exception()

    # -- kept records and log resets (on the loop)

    def _keep(self, kept: _Kept, partition: int) -> None:
        kept.partition = partition  # where it went: sent again to the same partition
        kept.acked_at = time.monotonic()
        if kept.topic_id == _UNKNOWN_ID and kept.topic in self._first_ids:
            kept.topic_id = self._first_ids[kept.topic]
        if spec_for(kept.topic).resend is Resend.LATEST_PER_KEY:
            slot = (kept.topic, partition, kept.key)
            old = self._latest.pop(slot, None)
            if old is not None:
                self._latest_bytes -= old.size
            self._latest[slot] = kept
            self._latest_bytes += kept.size
            while len(self._latest) > self.keep_max or self._latest_bytes > self.keep_max_bytes:
                _, dropped = self._latest.popitem(last=False)
                self._latest_bytes -= dropped.size
        else:
            self._recent.append(kept)
            self._recent_bytes += kept.size
        self._trim()

    def _trim(self) -> None:
        """Drop the oldest RECENT records beyond the bounds (count, bytes, age). The newest
        record of each key stays however old: it is still the compacted topic's content."""
        too_old = time.monotonic() - self.keep_s
        recent = self._recent
        while recent and (
            len(recent) > self.keep_max or self._recent_bytes > self.keep_max_bytes or recent[0].acked_at < too_old
        ):
            self._recent_bytes -= recent.popleft().size

    async def _watch_topics(self) -> None:
        """Look up the ids of the topics: all at start (records are tagged with the log they
        go to), then every RESET_CHECK_S those written to or with records kept. A new
        id means the broker lost its data: it forgot this producer too (a new client is
        made), and kept records that went to the old log are sent again."""
        kept_topics = {t for t in Topic if spec_for(t).resend is not Resend.NOTHING}
        first = True
        while not self._closing:
            self._trim()
            # At start every topic: one may be written to just before the broker loses it.
            watched = set(Topic) if first else (kept_topics if self.kept else set()) | self._produced_topics
            if watched:
                names = {self.settings.topic(t): t for t in watched}
                try:
                    found = await run_in_thread("evproto-producer-topics", lambda: self._lookup_ids(list(names)))
                except Exception as exc:  # the broker is away: look again later
                    log.debug("topic id look-up failed: %r", exc)
                    found = {}
                for name, topic_id in found.items():
                    self._topic_seen(names[name], topic_id)
                first = first and not found
            self._look_now.clear()
            try:
                await asyncio.wait_for(self._look_now.wait(), RESET_CHECK_S)
            except asyncio.TimeoutError:
                pass

    def _lookup_ids(self, names: list[str]) -> dict[str, str]:
        if self._admin_client is None:
            self._admin_client = admin_client(self.settings)
        return topic_ids_blocking(self._admin_client, names)

    def _topic_seen(self, topic: Topic, topic_id: str) -> None:
        before = self._topic_ids.get(topic)
        self._topic_ids[topic] = topic_id
        first = self._first_ids.setdefault(topic, topic_id)
        if before is not None and before != topic_id:
            self.resets += 1
            # Records stuck in a client whose identity the broker forgot move to a new one.
            self._request_rebuild(f"topic {self.settings.topic(topic)} was created again (the broker lost its data?)")
        elif before is not None and topic not in self._retry:
            return  # the same log as at the last look, and no failed re-send to try again
        mine = [k for k in (*self._recent, *self._latest.values()) if k.topic is topic]
        for k in mine:
            if k.topic_id == _UNKNOWN_ID:
                k.topic_id = first
        if any(k.resending_to is not None for k in mine):
            return  # a refill is under way: look again when it has settled
        self._retry.discard(topic)
        # From the first record the new log lacks on: a re-send that failed is sent again
        # with everything after it, so the new log gets them in their order.
        start = next((i for i, k in enumerate(mine) if k.topic_id != topic_id), len(mine))
        stale = mine[start:]
        if not stale:
            return
        ages = time.monotonic() - min(k.acked_at for k in stale)
        self._warn.log(
            logging.WARNING,
            f"topic {self.settings.topic(topic)} was created again (the broker lost its log?): "
            f"sending again {len(stale)} record(s) it had acknowledged in the last {ages:.0f} s",
        )
        for kept in stale:
            self._resend(kept, topic_id)

    def _resend(self, kept: _Kept, topic_id: str) -> None:
        if self._closing or self._producer is None:
            return
        kept.resending_to = topic_id
        self.resent += 1
        item = _Outgoing(
            self.settings.topic(kept.topic), kept.key, kept.value, kept.partition, None, time.monotonic(), kept
        )
        if self._backlog or not self._hand_over(item):
            self._backlog.append(item)
            if self._drainer is None or self._drainer.done():
                assert self._loop is not None
                self._drainer = self._loop.create_task(self._drain_backlog())

    def _settle_resend(self, kept: _Kept, exc: BusError | None) -> None:
        if exc is None:
            self.delivered += 1
            kept.topic_id = kept.resending_to or kept.topic_id
        else:
            self.failed += 1  # still tagged with the old log: the next look sends it again
            self._retry.add(kept.topic)
            self._warn.log(logging.WARNING, f"Kafka producer: sending a kept record again failed: {exc}")
        kept.resending_to = None

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._broker_was_down = True
        if err.fatal():
            self._fatal = bus_error(err, "Kafka producer failed")
            log.error("Kafka producer (%s) fatal error: %s", self.settings.bootstrap, err.str())
            if self._loop is not None:
                call_soon_threadsafe(self._loop, self._request_rebuild, err.str())
        else:
            self._warn.log(logging.WARNING, f"Kafka {self.settings.bootstrap}: {err.str()}")
