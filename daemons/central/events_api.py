"""Central's event inspector over HTTP: the network's Kafka records for the console's events page.

========  ==============================  ==================================================
``GET``   ``/api/v1/events``              list of records (:meth:`InspectedRecord.to_json`),
                                          newest last; ``topic`` and ``partition``
                                          (repeatable or comma-separated), ``cp``,
                                          ``driver``, ``limit``
``GET``   ``/api/v1/events/stream``       Server-Sent Events: ``data:`` one record per event,
                                          from now on; same filters. ``event: live``
                                          once it reads from the end; ``event: end``
                                          (``data: {"reason": ...}``) before it closes
========  ==============================  ==================================================

Who sees what: any reader of the API (viewer) sees every record's metadata (topic,
partition, offset, key, time, type, envelope) and the plain and signed ones' events;
sealed contents are opened, with Central's keys, only for an operator or an admin. A
viewer's filters see what a viewer sees (a sealed record is matched by its key only).

What it costs Central: ``/events`` reads the last :data:`SCAN_PER_PARTITION` records of
each partition with a short-lived consumer in a thread, at most :data:`MAX_QUERIES` at a
time; ``/events/stream`` shares **one** tail (one consumer, every topic, from the end)
among all open streams: each record is decoded and opened once, serialised at most twice
(opened, closed), and handed to each subscriber's bounded queue. A subscriber whose
queue is full (a slow client) is told and dropped; at most :data:`MAX_SUBSCRIBERS`
streams; the tail stops when the last one closes. Neither joins a consumer group.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from evproto.bus.client import BusError, KafkaSettings, run_in_thread
from evproto.bus.topics import Topic

from ..eventreader import EventReader
from ..gate import KeyBook, Policy
from ..inspector import CAUGHT_UP, EventFilter, InspectedRecord, StartAt, newest
from ..tokens import TokenRole
from ..webauth import PRINCIPAL, stream_owner
from ..webjson import BadRequest, HttpError, json_response

__all__ = [
    "EventsSource",
    "EventsService",
    "EventTail",
    "Subscriber",
    "Unavailable",
    "EVENTS_KEY",
    "LIVE_FRAME",
    "KEEPALIVE_S",
    "add_events_api",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "SCAN_PER_PARTITION",
    "MAX_SUBSCRIBERS",
    "SUBSCRIBER_QUEUE",
]

log = logging.getLogger("evproto.central")

DEFAULT_LIMIT = 200
#: A larger ``limit`` is clamped to this.
MAX_LIMIT = 500
#: ``/events`` searches this many of each partition's last records.
SCAN_PER_PARTITION = 2000
#: ``/events`` queries read at the same time (others wait their turn).
MAX_QUERIES = 2
#: Open streams at most (more: 503).
MAX_SUBSCRIBERS = 50
#: Open streams of one token (or, under --insecure, one address) at most (more: 503).
MAX_PER_OWNER = 10
#: Records waiting for one stream's client; a client this far behind is dropped.
SUBSCRIBER_QUEUE = 1000
#: Records handed from the tail's thread to the event loop and not yet delivered.
_IN_FLIGHT = 2000
#: How long Central's shutdown waits for the inspector's Kafka clients to close.
CLOSE_TIMEOUT_S = 5.0
#: A comment line this often keeps an idle stream (and proxies) alive and finds closed clients.
KEEPALIVE_S = 15.0
_MAX_ID_CHARS = 64
#: Sent once the stream's tail has reached the end of every partition: records from now on are new.
LIVE_FRAME = b"event: live\ndata: {}\n\n"


class Unavailable(HttpError):
    http_status = 503


@dataclass(frozen=True, slots=True)
class EventsSource:
    """Where the records are and what opens them: Central's Kafka, its keys (None under
    --insecure: nothing is sealed) and its topics' policy."""

    settings: KafkaSettings
    keys: KeyBook | None = None
    policy: dict[Topic, Policy] | None = None


@dataclass(eq=False)
class Subscriber:
    """One open stream: its filter, whether it sees sealed contents, its bounded queue."""

    filter: EventFilter
    opened: bool
    #: Whom it counts against (daemons/webauth.py ``stream_owner``).
    owner: str = ""
    #: Server-Sent Events frames to write; None: the stream ends (``ended`` says why).
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE))
    #: Why the stream ends (None while it runs).
    ended: str | None = None

    def end(self, why: str) -> None:
        if self.ended is not None:
            return
        self.ended = why
        while not self.queue.empty():  # what it did not take is dropped: make room for the end
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class EventTail:
    """One reader following every topic from its end, shared by every open stream."""

    def __init__(
        self, source: EventsSource, *, max_subscribers: int = MAX_SUBSCRIBERS, max_per_owner: int = MAX_PER_OWNER
    ) -> None:
        self.source = source
        self.max_subscribers = max_subscribers
        self.max_per_owner = max_per_owner
        self.subscribers: set[Subscriber] = set()
        #: Records delivered, subscribers dropped for being slow.
        self.delivered = 0
        self.dropped = 0
        #: The tail has reached the end of every partition: what comes now is new.
        self.live = False
        self._reader: EventReader | None = None
        self._running: asyncio.Future[Any] | None = None
        self._slots = threading.BoundedSemaphore(_IN_FLIGHT)

    def subscribe(self, filter: EventFilter, *, opened: bool, owner: str = "") -> Subscriber:
        if len(self.subscribers) >= self.max_subscribers:
            raise Unavailable(f"{self.max_subscribers} event streams are open already; try again later")
        if owner and sum(1 for s in self.subscribers if s.owner == owner) >= self.max_per_owner:
            raise Unavailable(f"{self.max_per_owner} event streams of yours are open already")
        sub = Subscriber(filter=filter, opened=opened, owner=owner)
        self.subscribers.add(sub)
        if self._reader is None:
            self._start()
        elif self.live:
            sub.queue.put_nowait(LIVE_FRAME)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if not self.subscribers:
            self.stop()

    @property
    def running(self) -> asyncio.Future[Any] | None:
        """The tail's thread (done once its Kafka client is closed), None before the first stream."""
        return self._running

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        self.live = False

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        reader = EventReader(
            self.source.settings,
            start=StartAt.last(0),
            follow=True,
            keys=self.source.keys,
            policy=self.source.policy,
        )
        self._reader = reader

        def run() -> None:
            records = reader.records()
            try:
                for item in records:
                    if item is CAUGHT_UP:
                        loop.call_soon_threadsafe(self._went_live, reader)
                        continue
                    # Wait while the loop is this far behind: the broker keeps what we do not take.
                    while not self._slots.acquire(timeout=0.2):
                        if reader.stopped:
                            return
                    try:
                        loop.call_soon_threadsafe(self._deliver, item)
                    except RuntimeError:  # the loop is closed
                        return
            except Exception as exc:  # the broker refused for good, or a bug: the streams are told
                why = str(exc) if isinstance(exc, BusError) else f"internal error ({type(exc).__name__})"
                if not isinstance(exc, BusError):
                    log.exception("the event stream's reader failed")
                try:
                    loop.call_soon_threadsafe(self._failed, reader, why)
                except RuntimeError:
                    pass
            finally:
                records.close()  # the consumer is closed here, in this thread

        self._running = run_in_thread("evproto-events-tail", run)

    def _went_live(self, reader: EventReader) -> None:
        if self._reader is not reader:
            return
        self.live = True
        for sub in self.subscribers:
            if sub.ended is None:
                try:
                    sub.queue.put_nowait(LIVE_FRAME)
                except asyncio.QueueFull:  # pragma: no cover - nothing is delivered before this
                    pass

    def _failed(self, reader: EventReader, why: str) -> None:
        log.warning("event stream: %s", why)
        if self._reader is reader:
            self._reader = None
        for sub in list(self.subscribers):
            sub.end(f"the event stream failed: {why}")

    def _deliver(self, record: InspectedRecord) -> None:
        self._slots.release()
        self.delivered += 1
        lines: dict[bool, bytes] = {}
        closed_view: InspectedRecord | None = None
        for sub in list(self.subscribers):
            if sub.ended is not None:
                continue
            if sub.opened:
                view = record
            else:
                closed_view = closed_view or record.closed()
                view = closed_view
            if not sub.filter.matches(view):
                continue
            line = lines.get(sub.opened)
            if line is None:
                line = lines[sub.opened] = b"data: " + orjson.dumps(view.to_json()) + b"\n\n"
            try:
                sub.queue.put_nowait(line)
            except asyncio.QueueFull:
                self.dropped += 1
                sub.end(f"the client fell {SUBSCRIBER_QUEUE} records behind")


class EventsService:
    """What the two endpoints share: the source, the query slots and the tail."""

    def __init__(self, source: EventsSource) -> None:
        self.source = source
        self.tail = EventTail(source)
        self._queries = asyncio.Semaphore(MAX_QUERIES)
        self._readers: set[EventReader] = set()
        self._threads: set[asyncio.Future[Any]] = set()

    async def recent(self, filter: EventFilter, *, limit: int, opened: bool) -> list[InspectedRecord]:
        reader = EventReader(
            self.source.settings,
            filter=filter,
            start=StartAt.last(SCAN_PER_PARTITION),
            keys=self.source.keys,
            open_sealed=opened,  # a viewer's records are read closed (its filters match keys only)
            policy=self.source.policy,
            keep=limit,
        )

        def read() -> list[InspectedRecord]:
            records = reader.records()
            try:
                return newest(records, limit)
            finally:
                records.close()  # the consumer is closed here, in this thread

        async with self._queries:
            thread = run_in_thread("evproto-events-query", read)
            self._threads.add(thread)
            thread.add_done_callback(self._threads.discard)
            self._readers.add(reader)
            try:
                return await asyncio.shield(thread)
            except BusError as exc:
                raise Unavailable(f"cannot read the records: {exc}") from None
            finally:
                reader.stop()
                self._readers.discard(reader)

    async def close(self, _app: web.Application | None = None) -> None:
        """End every stream and query, and wait (a few seconds at most) for their Kafka
        clients to close: one left open at interpreter exit can take the process down."""
        running = self.tail.running
        self.tail.stop()
        for sub in list(self.tail.subscribers):
            sub.end("Central is stopping")
        for reader in list(self._readers):
            reader.stop()
        pending = [t for t in (running, *self._threads) if t is not None and not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT_S)


EVENTS_KEY = web.AppKey("evproto_events", EventsService)


# -- handlers --------------------------------------------------------------------------------


def _may_open(request: web.Request) -> bool:
    principal = request.get(PRINCIPAL)
    return principal is not None and principal.may(TokenRole.OPERATOR)


def _id_param(request: web.Request, name: str) -> str | None:
    value = request.query.get(name) or None
    if value is not None and (len(value) > _MAX_ID_CHARS or not value.isprintable()):
        raise BadRequest(f"{name} must be an id of at most {_MAX_ID_CHARS} printable characters")
    return value


def _filter(request: web.Request) -> EventFilter:
    names = [n for raw in request.query.getall("topic", []) for n in raw.split(",") if n]
    known = {t.value: t for t in Topic}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BadRequest(f"topic must be one of {', '.join(known)}; got {unknown[0][:40]!r}")
    topics = tuple(dict.fromkeys(known[n] for n in names)) or tuple(Topic)
    raw_partitions = [p for raw in request.query.getall("partition", []) for p in raw.split(",") if p]
    if not all(p.isascii() and p.isdigit() and len(p) <= 6 for p in raw_partitions):
        raise BadRequest("partition must be a partition number")
    return EventFilter(
        topics=topics,
        partitions=tuple(sorted({int(p) for p in raw_partitions})),
        cp_id=_id_param(request, "cp"),
        driver_id=_id_param(request, "driver"),
    )


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if not raw:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()):
        raise BadRequest(f"limit must be a non-negative integer, got {raw[:40]!r}")
    return min(int(raw[:12]), MAX_LIMIT)


def _service(request: web.Request) -> EventsService:
    service = request.app.get(EVENTS_KEY)
    if service is None:
        raise Unavailable("the event inspector is not available on this server")
    return service


async def _get_events(request: web.Request) -> web.Response:
    service = _service(request)
    records = await service.recent(_filter(request), limit=_limit(request), opened=_may_open(request))
    return json_response([r.to_json() for r in records])


async def _get_stream(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    sub = service.tail.subscribe(_filter(request), opened=_may_open(request), owner=stream_owner(request))
    try:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        await response.write(b"retry: 3000\n\n")
        while True:
            try:
                line = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_S)
            except asyncio.TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if line is None:
                why = orjson.dumps({"reason": sub.ended})
                await response.write(b"event: end\ndata: " + why + b"\n\n")
                break
            await response.write(line)
    except (ConnectionResetError, ConnectionError):
        pass  # the client left
    finally:
        service.tail.unsubscribe(sub)
    return response


def add_events_api(app: web.Application, backend: Any) -> None:
    """Serve ``/api/v1/events`` and ``/api/v1/events/stream`` on ``app`` from
    ``backend.events_source`` (an :class:`EventsSource`); a backend without one gets the
    routes answering 503."""
    source = backend if isinstance(backend, EventsSource) else getattr(backend, "events_source", None)
    if isinstance(source, EventsSource):
        service = EventsService(source)
        app[EVENTS_KEY] = service
        # On shutdown, before the server waits for its handlers: open streams end at once.
        app.on_shutdown.append(service.close)
    app.router.add_get("/api/v1/events", _get_events)
    app.router.add_get("/api/v1/events/stream", _get_stream)
