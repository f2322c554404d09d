"""Thin asyncio adapters over confluent-kafka: settings, topic creation, a producer, a consumer.

librdkafka does the networking in its own threads; these adapters only move
results between its callbacks and the event loop. Blocking calls (admin
requests, consumer polls, flushes) run in threads, never on the loop.

- :class:`KafkaSettings`: bootstrap, client id, topic prefix, extra librdkafka options.
- :func:`ensure_topics`: create missing topics; returns every topic's real partition count.
- :class:`BusProducer`: idempotent producer; ``produce()`` returns a future of (partition, offset).
- :class:`BusConsumer`: reads assigned partitions from given offsets (no consumer group):
  ``async for record in consumer``.

Offsets belong to the caller (stored with its own state), so consumers never
join groups or commit. Auto topic creation is disabled in every client: a typo
or a missing ``ensure_topics`` must not create a topic with the wrong settings.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Callable, Iterable, NamedTuple

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from ..errors import EvprotoError
from . import topics
from .topics import Topic, TopicSpec

__all__ = [
    "BusError",
    "KafkaSettings",
    "OFFSET_BEGINNING",
    "OFFSET_END",
    "Record",
    "BusProducer",
    "BusConsumer",
    "ensure_topics",
    "all_partitions",
    "group_settings",
]

log = logging.getLogger("evproto.bus")
_librdkafka_log = logging.getLogger("evproto.bus.librdkafka")

#: Start offsets for :class:`BusConsumer`: the oldest record kept, or only records produced later.
OFFSET_BEGINNING: int = confluent_kafka.OFFSET_BEGINNING
OFFSET_END: int = confluent_kafka.OFFSET_END

#: At most one identical warning per this many seconds (per client).
WARNING_INTERVAL_S = 10.0


class BusError(EvprotoError):
    """A Kafka operation failed: broker unreachable, delivery failed, fatal client error.

    ``code`` is librdkafka's error name (``"_MSG_TIMED_OUT"``, ``"_TRANSPORT"``...) when known.
    """

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def _bus_error(err: KafkaError, context: str) -> BusError:
    return BusError(f"{context}: {err.str()}", code=err.name())


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaSettings:
    """Where the broker is and how clients present themselves.

    ``extra`` goes to librdkafka unchanged for every client (security settings,
    timeouts); it overrides the adapters' defaults.
    """

    bootstrap: str
    client_id: str = "evproto"
    prefix: str = topics.DEFAULT_PREFIX
    extra: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.bootstrap:
            raise ValueError("bootstrap must name at least one host:port")

    def topic(self, topic: Topic) -> str:
        """The full name of ``topic`` under this prefix."""
        return topic.name_with(self.prefix)


def group_settings() -> dict[str, str]:
    """librdkafka settings for tools that DO use consumer groups (our adapters do not).

    Joins take ~3 s on Tansu with these instead of ~23 s with the defaults, and
    they are ordinary values for Apache Kafka.
    """
    return {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}


# -- logging ---------------------------------------------------------------------------------

_NUMBERS = re.compile(r"\d+")


class _RateLimitedLog:
    """Logs each distinct message (numbers ignored) at most once per interval, counting the rest."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = WARNING_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._seen: dict[tuple[int, str], list[float]] = {}
        self._lock = threading.Lock()

    def log(self, level: int, message: str) -> None:
        if not self.logger.isEnabledFor(level):
            return
        key = (level, _NUMBERS.sub("#", message))
        now = self._clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.interval_s:
                entry[1] += 1
                return
            held_back = int(entry[1]) if entry is not None else 0
            if len(self._seen) >= 256:  # bounded: forget old keys
                self._seen.clear()
            self._seen[key] = [now, 0]
        if held_back:
            message += f" ({held_back} similar in the last {self.interval_s:g} s not shown)"
        self.logger.log(level, "%s", message)


class _LibrdkafkaLogger:
    """librdkafka's log lines (passed as the ``logger`` option) into Python logging.

    Connection failures (facility FAIL) are also reported through ``error_cb``,
    which logs them as warnings; here they drop to INFO so they are not doubled.
    """

    def __init__(self) -> None:
        self._out = _RateLimitedLog(_librdkafka_log)

    def log(self, level: int, fmt: str, *args: Any) -> None:
        # confluent-kafka calls log(level, "%s [%s] %s", facility, client name, text).
        if len(args) == 3:
            facility, name, text = (str(a) for a in args)
        else:
            facility, name, text = "", "", (fmt % args if args else fmt)
        if facility == "FAIL":
            level = min(level, logging.INFO)
        elif level > logging.WARNING:
            level = logging.WARNING  # our callers decide what is an error
        self._out.log(level, f"{name} {facility}: {text}")


def _client_config(
    settings: KafkaSettings,
    defaults: dict[str, Any] | None = None,
    *,
    on_error: Callable[[KafkaError], None] | None = None,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap,
        "client.id": settings.client_id,
        # Producers and the admin client would otherwise ask the broker to create
        # any topic they look up (Tansu and a default Apache Kafka both obey).
        "allow.auto.create.topics": False,
    }
    config.update(defaults or {})
    config.update(settings.extra)
    config["logger"] = _LibrdkafkaLogger()
    if on_error is not None:
        config["error_cb"] = on_error
    return config


def _call_soon_threadsafe(
    loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any
) -> bool:
    try:
        loop.call_soon_threadsafe(fn, *args)
        return True
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        return False


def _run_in_thread(name: str, fn: Callable[[], Any]) -> asyncio.Future[Any]:
    """Run a blocking ``fn`` in a fresh daemon thread; a thread that never returns
    (a broker that never answers) cannot then stall the interpreter's exit."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:
        if not fut.done():
            fut.set_exception(exc) if exc is not None else fut.set_result(result)

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task
            _call_soon_threadsafe(loop, settle, None, exc)
        else:
            _call_soon_threadsafe(loop, settle, result, None)

    threading.Thread(target=run, name=name, daemon=True).start()
    return fut


# -- topics ----------------------------------------------------------------------------------

# Errors worth another try: the broker is starting, restarting or electing a controller.
_RETRY_CODES = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_CONTROLLER,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.BROKER_NOT_AVAILABLE,
    }
)


def _admin(settings: KafkaSettings) -> AdminClient:
    return AdminClient(_client_config(settings))


def _metadata(
    admin: AdminClient, settings: KafkaSettings, deadline: float, timeout_s: float
) -> Any:
    """Cluster metadata, retrying while the broker is unreachable, until ``deadline``."""
    delay_s = 0.05
    while True:
        remaining = deadline - time.monotonic()
        try:
            return admin.list_topics(timeout=max(0.1, min(remaining, 5.0)))
        except KafkaException as exc:
            last = exc.args[0].str() if exc.args else str(exc)
        finally:
            admin.poll(0)  # serve queued log lines
        if deadline - time.monotonic() <= delay_s:
            raise BusError(
                f"Kafka broker {settings.bootstrap} could not be reached "
                f"within {timeout_s:g} s ({last})",
                code="_TRANSPORT",
            )
        time.sleep(delay_s)
        delay_s = min(delay_s * 2, 1.0)


def _ensure_topics_blocking(
    settings: KafkaSettings, specs: tuple[TopicSpec, ...], timeout_s: float
) -> dict[Topic, int]:
    deadline = time.monotonic() + timeout_s
    wanted = {settings.topic(spec.topic): spec for spec in specs}
    admin = _admin(settings)  # kept alive until every future resolved: dropping it cancels them
    created: set[str] = set()
    while True:
        md = _metadata(admin, settings, deadline, timeout_s)
        found = {name: md.topics.get(name) for name in wanted}
        ready = {
            n: t for n, t in found.items() if t is not None and t.error is None and t.partitions
        }
        if len(ready) == len(wanted):
            return {wanted[n].topic: len(t.partitions) for n, t in ready.items()}
        missing = [n for n in wanted if n not in ready and n not in created]
        if missing:
            new = [
                NewTopic(
                    n,
                    num_partitions=wanted[n].partitions,
                    replication_factor=-1,
                    config=dict(wanted[n].config),
                )
                for n in missing
            ]
            remaining = max(deadline - time.monotonic(), 0.1)
            request_s = min(remaining, 15.0)
            futures = admin.create_topics(
                new, operation_timeout=request_s, request_timeout=request_s
            )
            for name, fut in futures.items():
                try:
                    fut.result(timeout=request_s + 1.0)
                except KafkaException as exc:
                    err = exc.args[0]
                    if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                        created.add(name)  # another process won the race
                    elif err.code() not in _RETRY_CODES and not err.retriable():
                        raise _bus_error(err, f"cannot create topic {name}") from None
                except concurrent.futures.TimeoutError:
                    pass
                else:
                    created.add(name)
                    log.info("created topic %s (%d partitions)", name, wanted[name].partitions)
        # Created topics may take a moment to show in metadata (Apache Kafka propagates them).
        if time.monotonic() >= deadline:
            pending = sorted(set(wanted) - set(ready))
            raise BusError(
                f"topics not ready on {settings.bootstrap} within {timeout_s:g} s: {pending}"
            )
        time.sleep(0.05)


async def ensure_topics(
    settings: KafkaSettings,
    specs: Iterable[TopicSpec] = topics.topic_specs(),
    *,
    timeout_s: float = 30.0,
) -> dict[Topic, int]:
    """Create the topics of ``specs`` that do not exist; return every topic's partition count.

    Existing topics are left alone, so their partition count may differ from the
    spec: use the returned count with :func:`~evproto.bus.topics.partition_for`.
    Retries while the broker is unreachable; raises BusError after ``timeout_s``.
    """
    specs = tuple(specs)
    return await _run_in_thread(
        "evproto-ensure-topics", lambda: _ensure_topics_blocking(settings, specs, timeout_s)
    )


async def all_partitions(
    settings: KafkaSettings, topic: Topic, *, timeout_s: float = 10.0
) -> list[int]:
    """The partition numbers of ``topic``.

    Raises BusError if the topic does not exist or the broker is unreachable.
    """
    name = settings.topic(topic)

    def query() -> list[int]:
        md = _metadata(_admin(settings), settings, time.monotonic() + timeout_s, timeout_s)
        meta = md.topics.get(name)
        if meta is None or meta.error is not None or not meta.partitions:
            raise BusError(
                f"topic {name} does not exist on {settings.bootstrap} (run ensure_topics)"
            )
        return sorted(meta.partitions)

    return await _run_in_thread("evproto-metadata", query)


# -- producer --------------------------------------------------------------------------------


class _Outgoing(NamedTuple):
    topic: str
    key: bytes
    value: bytes | None
    partition: int | None
    future: asyncio.Future[tuple[int, int]]
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

    @property
    def pending(self) -> int:
        """Records produced but not yet delivered or failed."""
        return len(self._pending)

    async def start(self) -> None:
        """Create the client and its poll thread (it connects in the background: no wait)."""
        if self._producer is not None:
            raise BusError("producer already started")
        self._loop = asyncio.get_running_loop()
        config = {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self.linger_ms,
            "message.timeout.ms": max(1, int(self.delivery_timeout_s * 1000)),
        }
        self._producer = confluent_kafka.Producer(
            _client_config(self.settings, config, on_error=self._on_error)
        )
        self._poller = threading.Thread(
            target=self._poll_loop, name="evproto-producer-poll", daemon=True
        )
        self._poller.start()

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
        if self._producer is None or self._loop is None:
            raise BusError("producer not started")
        if value is not None and not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"value must be bytes or None, not {type(value).__name__}")
        if partition is not None and not (isinstance(partition, int) and partition >= 0):
            raise ValueError(f"partition must be an int >= 0 or None, got {partition!r}")
        fut: asyncio.Future[tuple[int, int]] = self._loop.create_future()
        item = _Outgoing(
            self.settings.topic(topic), key.encode("utf-8"), value, partition, fut, time.monotonic()
        )
        self.produced += 1
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

    def _poll_loop(self) -> None:
        assert self._producer is not None
        while not self._stop.is_set():
            try:
                self._producer.poll(0.1)  # runs delivery callbacks and error_cb in this thread
            except Exception as exc:  # a callback bug must not stop deliveries for good
                self._warn.log(logging.ERROR, f"Kafka producer poll failed: {exc!r}")
                time.sleep(0.1)

    def _on_delivery(
        self, fut: asyncio.Future[tuple[int, int]], err: KafkaError | None, msg: Any
    ) -> None:
        # librdkafka's thread: only hand the outcome to the loop.
        if err is None:
            args: tuple[Any, Any] = ((msg.partition(), msg.offset()), None)
        else:
            args = (None, _bus_error(err, f"delivery to {msg.topic()} failed"))
        assert self._loop is not None
        _call_soon_threadsafe(self._loop, self._settle, fut, *args)

    def _settle(
        self, fut: asyncio.Future[tuple[int, int]], result: Any, exc: BusError | None
    ) -> None:
        if fut not in self._pending:
            return
        self._pending.discard(fut)
        if exc is None:
            self.delivered += 1
            if not fut.done():
                fut.set_result(result)
            return
        self.failed += 1
        self._warn.log(logging.WARNING, f"Kafka producer: {exc}")
        if not fut.done():
            fut.set_exception(exc)
            # Logged above (rate-limited): callers that fire and forget get no
            # "exception was never retrieved" flood while the broker is down.
            fut.exception()

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = _bus_error(err, "Kafka producer failed")
            log.error("Kafka producer (%s) fatal error: %s", self.settings.bootstrap, err.str())
        else:
            self._warn.log(logging.WARNING, f"Kafka {self.settings.bootstrap}: {err.str()}")


# -- consumer --------------------------------------------------------------------------------


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
        return out

    # -- the poll thread

    def _poll_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            while not self._stop.is_set():
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
