"""The idempotent Kafka producer: ``produce()`` returns a future of (partition, offset)."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from types import TracebackType
from typing import Any, NamedTuple

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException

from .topics import Topic

from .client import BusError, KafkaSettings, _bus_error, _call_soon_threadsafe, _client_config, _RateLimitedLog, _run_in_thread, log

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


class _Outgoing(NamedTuple):
    topic: str
    key: bytes
    value: bytes | None
    partition: int | None
    future: asyncio.Future[tuple[int, int]] | None  # None: posted, nobody waits
    queued_at: float


class BusProducer:
    """An idempotent producer (``acks=all``): no duplicates or reordering on retries.

    ``delivery_timeout_s`` bounds how long a record may wait for the broker
    (librdkafka's ``message.timeout.ms``); after it, its future fails with
    BusError. Counters: ``produced``, ``delivered``, ``failed``.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        delivery_timeout_s: float = 30.0,
        linger_ms: int = 2,
        max_backlog: int = 10_000,
    ) -> None:
        self.settings = settings
        self.delivery_timeout_s = delivery_timeout_s
        self.linger_ms = linger_ms
        self.max_backlog = max_backlog
        self.produced = 0
        self.delivered = 0
        self.failed = 0
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
        self._warn = _RateLimitedLog(log)
        self._rebuilding = False
        self._broker_was_down = False
        #: Times the underlying client was replaced after the broker forgot it.
        self.rebuilds = 0
        # Delivery reports from librdkafka's thread, settled on the loop in batches:
        # one wake-up of the loop per poll, not one per record.
        self._reports: deque[tuple[asyncio.Future[tuple[int, int]] | None, Any, BusError | None]] = deque()
        self._wake_pending = False

    @property
    def pending(self) -> int:
        """Records produced but not yet delivered or failed."""
        return len(self._pending)

    async def start(self) -> None:
        """Create the client and its poll thread (it connects in the background: no wait)."""
        if self._producer is not None:
            raise BusError("producer already started")
        self._loop = asyncio.get_running_loop()
        self._new_client()

    def _new_client(self) -> None:
        config = {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self.linger_ms,
            "message.timeout.ms": max(1, int(self.delivery_timeout_s * 1000)),
        }
        self._producer = confluent_kafka.Producer(
            _client_config(self.settings, config, on_error=self._on_error)
        )
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

        done = _run_in_thread("evproto-producer-dispose", dispose)
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
        item = _Outgoing(
            self.settings.topic(topic), key.encode("utf-8"), value, partition, fut, time.monotonic()
        )
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
        for item in self._backlog:
            self._settle(
                item.future, None, BusError("producer closed before sending", code="_STATE")
            )
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
                asyncio.shield(_run_in_thread("evproto-producer-close", finish)), timeout_s + 3.0
            )
        except asyncio.TimeoutError:
            undelivered = len(self._pending)
            log.warning("Kafka producer did not close within %g s", timeout_s)
        self._settle_reports()  # outcomes the final flush reported
        for fut in list(self._pending):
            self._settle(
                fut, None, BusError("producer closed before delivery", code="_PURGE_QUEUE")
            )
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
                "on_delivery": functools.partial(self._on_delivery, item.future),
            }
            if item.partition is not None:
                kwargs["partition"] = item.partition
            self._producer.produce(item.topic, **kwargs)
        except BufferError:
            return False
        except KafkaException as exc:
            self._settle(
                item.future, None, _bus_error(exc.args[0], f"cannot produce to {item.topic}")
            )
        return True

    async def _drain_backlog(self) -> None:
        while self._backlog:
            item = self._backlog[0]
            if time.monotonic() - item.queued_at > self.delivery_timeout_s:
                self._backlog.popleft()
                self._settle(
                    item.future,
                    None,
                    BusError(
                        f"local producer queue stayed full for {self.delivery_timeout_s:g} s",
                        code="_QUEUE_FULL",
                    ),
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

    def _on_delivery(
        self, fut: asyncio.Future[tuple[int, int]] | None, err: KafkaError | None, msg: Any
    ) -> None:
        # librdkafka's thread: only hand the outcome to the loop.
        assert self._loop is not None
        if err is None:
            self._reports.append((fut, (msg.partition(), msg.offset()) if fut is not None else None, None))
        else:
            self._reports.append((fut, None, _bus_error(err, f"delivery to {msg.topic()} failed")))
        if not self._wake_pending:
            # Cleared by the loop before it drains: a report appended after that is
            # either drained by this round or schedules the next one.
            self._wake_pending = True
            _call_soon_threadsafe(self._loop, self._settle_reports)
        if err is not None and (err.code() in _REBUILD_CODES or err.fatal()):
            _call_soon_threadsafe(self._loop, self._request_rebuild, err.str())
        elif err is not None and err.code() == KafkaError._MSG_TIMED_OUT and self._broker_was_down:
            # Records that time out after the broker went away may be stuck in a client
            # whose idempotence state the (restarted) broker no longer knows: start afresh.
            self._broker_was_down = False
            _call_soon_threadsafe(self._loop, self._request_rebuild, "records timed out after a broker outage")

    def _settle_reports(self) -> None:
        self._wake_pending = False
        reports = self._reports
        while reports:
            self._settle(*reports.popleft())

    def _settle(
        self, fut: asyncio.Future[tuple[int, int]] | None, result: Any, exc: BusError | None
    ) -> None:
        if fut is not None:
            if fut not in self._pending:
                return
            self._pending.discard(fut)
        if exc is None:
            self.delivered += 1
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

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._broker_was_down = True
        if err.fatal():
            self._fatal = _bus_error(err, "Kafka producer failed")
            log.error("Kafka producer (%s) fatal error: %s", self.settings.bootstrap, err.str())
            if self._loop is not None:
                _call_soon_threadsafe(self._loop, self._request_rebuild, err.str())
        else:
            self._warn.log(logging.WARNING, f"Kafka {self.settings.bootstrap}: {err.str()}")
