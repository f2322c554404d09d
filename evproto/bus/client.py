"""Shared pieces of the Kafka adapters: settings, errors, client configuration, topic admin.

librdkafka does the networking in its own threads; the adapters only move
results between its callbacks and the event loop. Blocking calls (admin
requests, consumer polls, flushes) run in threads, never on the loop. Auto topic
creation is disabled in every client: a typo or a missing ``ensure_topics`` must
not create a topic with the wrong settings.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from ..errors import EvprotoError
from ..ratelog import RateLimitedLog as _RateLimitedLog
from . import topics
from .topics import Topic, TopicSpec

__all__ = [
    "BusError",
    "KafkaSettings",
    "OFFSET_BEGINNING",
    "OFFSET_END",
    "ensure_topics",
    "all_partitions",
    "end_offsets",
    "topic_ids",
    "group_settings",
    # For the adapters (producer, consumer, broker check), not for applications:
    "bus_error",
    "client_config",
    "call_soon_threadsafe",
    "run_in_thread",
    "admin_client",
    "topic_ids_blocking",
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


def bus_error(err: KafkaError, context: str) -> BusError:
    """librdkafka's ``err`` as a BusError: ``context``, its text, and its name as ``code``."""
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


def client_config(
    settings: KafkaSettings,
    defaults: dict[str, Any] | None = None,
    *,
    on_error: Callable[[KafkaError], None] | None = None,
) -> dict[str, Any]:
    """A librdkafka configuration for one client of ``settings``: its bootstrap and client id,
    no auto-created topics, then ``defaults``, then ``settings.extra`` (which win), our logger,
    and ``on_error`` as its ``error_cb``."""
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


def call_soon_threadsafe(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> bool:
    """``loop.call_soon_threadsafe(fn, *args)`` from a librdkafka or worker thread; False (and
    nothing done) when the loop is already closed."""
    try:
        loop.call_soon_threadsafe(fn, *args)
        return True
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        return False


def run_in_thread(name: str, fn: Callable[[], Any]) -> asyncio.Future[Any]:
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
            call_soon_threadsafe(loop, settle, None, exc)
        else:
            call_soon_threadsafe(loop, settle, result, None)

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


def admin_client(settings: KafkaSettings) -> AdminClient:
    """An admin client for ``settings`` (configured as :func:`client_config` makes it)."""
    return AdminClient(client_config(settings))


def topic_ids_blocking(admin: AdminClient, names: Iterable[str], timeout_s: float = 3.0) -> dict[str, str]:
    """Each named topic's id, for those the broker describes (blocking; run it in a thread).

    A topic missing, or a broker away, leaves its name out: callers look again later.
    A new id for a name means the topic was deleted and created again.
    """
    wanted = sorted(set(names))
    if not wanted:
        return {}
    try:
        found = admin.describe_topics(TopicCollection(wanted), request_timeout=timeout_s)
    except KafkaException as exc:
        log.debug("topic ids unavailable: %r", exc)
        return {}
    out = {}
    for name, fut in found.items():
        try:
            out[name] = str(fut.result(timeout=timeout_s + 1.0).topic_id)
        except Exception as exc:  # missing topic, broker away, timeout: try again at the next check
            log.debug("topic id of %s unavailable: %r", name, exc)
    return out


def _metadata(admin: AdminClient, settings: KafkaSettings, deadline: float, timeout_s: float) -> Any:
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
                f"Kafka broker {settings.bootstrap} could not be reached within {timeout_s:g} s ({last})",
                code="_TRANSPORT",
            )
        time.sleep(delay_s)
        delay_s = min(delay_s * 2, 1.0)


def _ensure_topics_blocking(
    settings: KafkaSettings, specs: tuple[TopicSpec, ...], timeout_s: float
) -> dict[Topic, int]:
    deadline = time.monotonic() + timeout_s
    wanted = {settings.topic(spec.topic): spec for spec in specs}
    admin = admin_client(settings)  # kept alive until every future resolved: dropping it cancels them
    created: set[str] = set()
    while True:
        md = _metadata(admin, settings, deadline, timeout_s)
        found = {name: md.topics.get(name) for name in wanted}
        ready = {n: t for n, t in found.items() if t is not None and t.error is None and t.partitions}
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
            futures = admin.create_topics(new, operation_timeout=request_s, request_timeout=request_s)
            for name, fut in futures.items():
                try:
                    fut.result(timeout=request_s + 1.0)
                except KafkaException as exc:
                    err = exc.args[0]
                    if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                        created.add(name)  # another process won the race
                    elif err.code() not in _RETRY_CODES and not err.retriable():
                        raise bus_error(err, f"cannot create topic {name}") from None
                except concurrent.futures.TimeoutError:
                    pass
                else:
                    created.add(name)
                    log.info("created topic %s (%d partitions)", name, wanted[name].partitions)
        # Created topics may take a moment to show in metadata (Apache Kafka propagates them).
        if time.monotonic() >= deadline:
            pending = sorted(set(wanted) - set(ready))
            raise BusError(f"topics not ready on {settings.bootstrap} within {timeout_s:g} s: {pending}")
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
    return await run_in_thread("evproto-ensure-topics", lambda: _ensure_topics_blocking(settings, specs, timeout_s))


async def all_partitions(settings: KafkaSettings, topic: Topic, *, timeout_s: float = 10.0) -> list[int]:
    """The partition numbers of ``topic``.

    Raises BusError if the topic does not exist or the broker is unreachable.
    """
    name = settings.topic(topic)

    def query() -> list[int]:
        md = _metadata(admin_client(settings), settings, time.monotonic() + timeout_s, timeout_s)
        meta = md.topics.get(name)
        if meta is None or meta.error is not None or not meta.partitions:
            raise BusError(f"topic {name} does not exist on {settings.bootstrap} (run ensure_topics)")
        return sorted(meta.partitions)

    return await run_in_thread("evproto-metadata", query)


async def end_offsets(
    settings: KafkaSettings, topic: Topic, partitions: Iterable[int], *, timeout_s: float = 10.0
) -> dict[int, int]:
    """The next offset each partition of ``topic`` will get (its high watermark), now.

    A reader with no stored position records these before doing anything else, so
    that a crash before its first record never makes it skip what arrived meanwhile.
    """
    name = settings.topic(topic)
    wanted = list(partitions)

    def query() -> dict[int, int]:
        consumer = confluent_kafka.Consumer(
            client_config(settings, {"group.id": settings.client_id, "enable.auto.commit": False})
        )
        try:
            out = {}
            for p in wanted:
                try:
                    _low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=timeout_s)
                except KafkaException as exc:
                    raise bus_error(exc.args[0], f"end offset of {name}[{p}]") from None
                out[p] = int(high)
            return out
        finally:
            consumer.close()

    return await run_in_thread("evproto-watermarks", query)


async def topic_ids(settings: KafkaSettings, topics: Iterable[Topic], *, timeout_s: float = 5.0) -> dict[Topic, str]:
    """The id of each topic's log now (topics the broker does not describe are left out).

    A reader stores it with its position, so that a restart can tell the same log
    from a new one (a topic created again, a broker that lost its data).
    """
    wanted = {settings.topic(t): t for t in topics}
    found = await run_in_thread(
        "evproto-topic-ids", lambda: topic_ids_blocking(admin_client(settings), wanted, timeout_s)
    )
    return {wanted[name]: topic_id for name, topic_id in found.items()}
