"""Central's daemon: wires the core to monitors (evproto links), Kafka, SQLite, HTTP and the panel.

Every input (a Kafka record, a monitor's report, an operator's command, the clock)
goes through :class:`~.core.CentralCore`; its effects are applied in one SQLite
transaction together with the Kafka offsets consumed, and the durable events are
sent from the outbox only after that transaction committed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from evproto import (
    LinkConfig,
)
from evproto.aio import Link, Server, serve
from evproto.bus.events import MAX_EVENT_BYTES, EventEncodeError, encode_event
from evproto.bus.kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    BusConsumer,
    BusProducer,
    KafkaSettings,
    LogReset,
    all_partitions,
    end_offsets,
    ensure_topics,
    topic_ids,
)
from evproto.bus.topics import Topic, partition_for, spec_for
from evproto.domain.central import (
    CentralCore,
    Effect,
    Forget,
    Note,
    Publish,
    RegistryBusyError,
    Rules,
    SaveCp,
)
from evproto.domain.central.limits import Coalescer
from evproto.domain.central.view import MessageView
from evproto.domain.events import CpStateRecord, DriverTelemetry, Event, Heartbeat, SupplyProgress
from evproto.ratelog import RateLimitedLog

from ..common import now_ms
from ..files import write_ready_file
from ..gate import NoKey
from ..quarantine import CrashGuard, DeadLetter
from ..tokens import TokenStore
from .backend import HttpBackend
from .intake import RecordIntake
from .monitors import MonitorLinks
from .operator import OperatorConsole
from .security import CentralSecurity, insecure_gate, insecure_sealer
from .store import OutboxRow, Position, Store

__all__ = ["CentralOptions", "Central"]

log = logging.getLogger("evproto.central")

HEARTBEAT_INTERVAL_S = 1.0
#: Readings whose age (engine -> Central) the status API summarises: the latest ones.
TELEMETRY_AGES = 4096
#: Period of the event-loop stall watch (status counters loop_stalls_*).
LOOP_WATCH_S = 0.05
#: Lines about one subject (a CP's health, refused hellos from one address) at most this often.
NOTE_INTERVAL_S = 5.0
#: A CP's cp_state record at most this often (changes in between are coalesced).
STATE_INTERVAL_S = 1.0
#: Kafka records handled per database transaction at most.
BATCH_SIZE = 500
#: Producer errors (librdkafka names) that re-sending can never fix.
_REFUSED_FOR_GOOD = frozenset(
    {
        "MSG_SIZE_TOO_LARGE",
        "_MSG_SIZE_TOO_LARGE",
        "INVALID_MSG_SIZE",
        "INVALID_MSG",
        "CORRUPT_MESSAGE",
        "INVALID_RECORD",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CentralOptions:
    db: str
    kafka: KafkaSettings
    listen: str = "0.0.0.0:7000"
    http: str | None = "0.0.0.0:8000"
    rules: Rules = Rules()
    link_config: LinkConfig = LinkConfig()
    ready_file: str | None = None
    panel: bool = True
    instance_id: str = ""
    #: Authenticate monitors, seal and sign records (release 2); False: release 1's plaintext.
    secure: bool = False
    #: The socket for monitors and the HTTP API over TLS: (certificate chain, key) PEM files.
    tls: tuple[str, str] | None = None
    #: The audit log (default: DB.audit.jsonl).
    audit_log: str | None = None


class Central(MonitorLinks, OperatorConsole):
    """One Central process; ``await Central(opts).run(stop)``."""

    def __init__(self, opts: CentralOptions) -> None:
        self.opts = opts
        self.instance_id = opts.instance_id or uuid.uuid4().hex[:8]
        self.store = Store(opts.db)
        loaded = self.store.load()
        self.core = CentralCore(
            cps=loaded.cps,
            drivers=loaded.drivers,
            sessions=loaded.live_sessions,
            next_session_id=loaded.next_session_id,
            rules=opts.rules,
            history=self.store,
        )
        self.offsets = loaded.offsets
        self.messages: collections.deque[MessageView] = collections.deque(maxlen=300)
        self.links: dict[str, Link] = {}
        self.producer: BusProducer | None = None
        self.partitions: dict[Topic, int] = {}
        self.kafka_ok = False
        self.started_ms = now_ms()
        self.counters: collections.Counter[str] = collections.Counter()
        #: Age of the latest readings when Central took them in (engine's timestamp -> now), ms.
        self._ages: collections.deque[int] = collections.deque(maxlen=TELEMETRY_AGES)
        self._in_flight: set[int] = set()
        #: What is being applied, so that a record that kills Central is not re-read forever.
        self.guard = CrashGuard(opts.db + ".applying")
        self._warn = RateLimitedLog(log)
        self._notes_limit = RateLimitedLog(log, interval_s=NOTE_INTERVAL_S)
        self._states = Coalescer(STATE_INTERVAL_S)
        #: Release 2: who may connect and write what (None under --insecure).
        self.sec = CentralSecurity(opts.db, audit_path=opts.audit_log) if opts.secure else None
        self.gate = self.sec.gate if self.sec is not None else insecure_gate()
        self.gate.window.load(self.store.record_counters())
        self.sealer = self.sec.sealer if self.sec is not None else insecure_sealer()
        #: Who may call the HTTP API (None under --insecure: anyone who reaches it).
        self.tokens = TokenStore(opts.db) if opts.secure else None
        self.intake = RecordIntake(
            guard=self.guard,
            decide=lambda ev, now: self.core.on_event(ev, now),
            commit=self._apply,
            recover=self._rebuild_core,
            seen=self._seen,
            counters=self.counters,
            decode=self.gate.decode,
            refused=self._refused,
        )
        self.server: Server | None = None
        self.listen_addr = ""
        self.http_addr = ""
        self._stop: asyncio.Event | None = None
        self._closing = False
        self._kafka_down_since: float | None = None
        self._resets_told: set[tuple[Topic, str | None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until ``stop``. Whatever was started is closed on every way out, a port
        that is taken included: a Kafka client left open at interpreter exit can take
        the process down with it (its threads outlive the objects they use)."""
        self._stop = stop
        async with contextlib.AsyncExitStack() as started:
            started.callback(self.guard.close)
            started.callback(self.store.close)
            if self.sec is not None:
                started.callback(self.sec.close)
            if self.tokens is not None:
                started.callback(self.tokens.close)
            self.partitions = await ensure_topics(self.opts.kafka)
            self.kafka_ok = True
            self.producer = BusProducer(self.opts.kafka)
            await self.producer.start()
            started.push_async_callback(self.producer.close, 5.0)
            self.server = await serve(
                self._listen_url(),
                self._session,
                node_id="central",
                on_hello=self._on_hello,
                config=self.opts.link_config,
            )
            started.push_async_callback(self.server.close)
            host, port = self.server.addresses[0]
            self.listen_addr = f"{host}:{port}"
            if self.opts.http:
                from .http_api import start_http

                http_host, _, http_port = self.opts.http.rpartition(":")
                runner, actual = await start_http(
                    HttpBackend(self),
                    http_host or "0.0.0.0",
                    int(http_port),
                    tls=self._http_tls(),
                    tokens=self.tokens,
                    audit=self.sec.audit if self.sec is not None else None,
                )
                started.push_async_callback(runner.cleanup)
                self.http_addr = f"{http_host or '0.0.0.0'}:{actual}"
            self._note(
                f"Central {self.instance_id} up: monitors on {self.listen_addr}, HTTP on {self.http_addr or 'off'}, "
                f"Kafka {self.opts.kafka.bootstrap}; "
                f"{len(self.core.cps)} CP(s), {len(self.core.drivers)} driver(s) known"
            )
            self._apply(self.core.start(now_ms()) + self.core.state_records(now_ms()))
            tasks = [
                asyncio.ensure_future(self._consume()),
                *(
                    asyncio.ensure_future(self._keep_running(loop))
                    for loop in (self._ticker, self._heartbeat, self._outbox_loop, self._maintenance, self._loop_watch)
                ),
            ]
            panel = asyncio.ensure_future(self._panel() if self.opts.panel else self._stdin_commands())
            stopped = asyncio.ensure_future(stop.wait())
            started.push_async_callback(self._cancel, [*tasks, panel, stopped])
            write_ready_file(
                self.opts.ready_file,
                role="central",
                listen=self.listen_addr,
                http=self.http_addr,
                instance_id=self.instance_id,
            )
            done, _ = await asyncio.wait([stopped, tasks[0], panel], return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                if fut is tasks[0] and fut.exception() is not None:
                    raise fut.exception()  # type: ignore[misc]
        log.info("Central stopped")
        return 0

    def _listen_url(self) -> str:
        if self.opts.tls is None:
            return self.opts.listen
        cert, key = self.opts.tls
        return f"tls://{self.opts.listen}?cert={cert}&key={key}"

    def _http_tls(self) -> Any:
        if self.opts.tls is None:
            return None
        from evproto.aio import tls_server_context

        return tls_server_context(cert=self.opts.tls[0], key=self.opts.tls[1])

    async def _cancel(self, tasks: list[asyncio.Future[Any]]) -> None:
        self._closing = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- effects ---------------------------------------------------------------------------

    def _note(self, text: str, level: str = "info", key: str | None = None) -> None:
        """A line for the messages pane and the log; with a ``key``, at most one per
        NOTE_INTERVAL_S for that key (a flapping CP or a flood of refused hellos
        cannot fill the pane or the disk)."""
        if key is not None:
            shown = self._notes_limit.admit(text, key=key)
            if shown is None:
                self.counters["notes_held_back"] += 1
                return
            text = shown
        self.messages.append(MessageView(ts_ms=now_ms(), level=level, text=text))
        getattr(log, level if level in ("warning", "error") else "info")(text)

    def _apply(
        self,
        effects: list[Effect],
        offsets: dict[tuple[str, int], Position] | None = None,
        dead: list[DeadLetter] | None = None,
    ) -> None:
        rows = iter(self.store.apply(effects, offsets, dead or (), self.gate.window.take_changes() or None))
        if offsets:
            self.offsets.update(offsets)
        for fx in effects:
            if isinstance(fx, Note):
                self._note(fx.text, fx.level, fx.key)
            elif isinstance(fx, Forget) and fx.cp_id is not None:
                link = self.links.pop(fx.cp_id, None)
                if link is not None:
                    asyncio.ensure_future(link.close())
                if self.producer is not None:  # its cp_state goes too (a tombstone on the compacted topic)
                    with contextlib.suppress(Exception):
                        self.producer.post(
                            Topic.CP_STATE, fx.cp_id, None, partition=self._partition(Topic.CP_STATE, fx.cp_id)
                        )
            elif isinstance(fx, Publish):
                if fx.durable:
                    row = next(rows)
                    self._send_row(row)
                else:
                    if isinstance(fx.event, DriverTelemetry):
                        self.counters["telemetry_out"] += 1
                    try:
                        # A relayed reading is built only from a reading the intake checked.
                        value = encode_event(fx.event, validate=not isinstance(fx.event, DriverTelemetry))
                    except EventEncodeError as exc:  # stored already: never undo a commit for a best-effort record
                        self.counters["produce_errors"] += 1
                        self._warn.log(logging.ERROR, f"not sent: {exc}")
                        continue
                    if fx.topic is Topic.CP_STATE:
                        # A CP's state at most once a second (the latest wins): a flapping
                        # CP must not flood the compacted topic and every driver reading it.
                        if self._states.offer(fx.key, value, time.monotonic()) is None:
                            continue
                    self._produce(fx.topic, fx.key, value, wait=False, event_type=fx.event.TYPE)

    def _partition(self, topic: Topic, key: str) -> int:
        return partition_for(key, self.partitions.get(topic, 1))

    def _produce(
        self, topic: Topic, key: str, value: bytes, *, wait: bool = True, event_type: str | None = None
    ) -> asyncio.Future[Any] | None:
        """Queue one record. ``wait=False`` for records nobody waits for (telemetry, state):
        no future; the producer counts and logs their failures."""
        if self.producer is None:
            return None
        send = self.producer.produce if wait else self.producer.post
        try:
            # Sealed or signed at send time: a fresh counter each time, even for an owed
            # record sent again, so a reader never takes a re-send for a replay.
            value = self.sealer.wrap(topic, key, value, event_type=event_type)  # (None: read from the value)
        except NoKey:
            self.counters["held_no_key"] += 1  # the CP has not authenticated yet: owed records wait
            return None
        try:
            fut = send(topic, key, value, partition=self._partition(topic, key))
        except Exception as exc:
            self.counters["produce_errors"] += 1
            log.warning("cannot queue a %s event: %s", topic.value, exc)
            return None
        self.counters["produced"] += 1
        if fut is not None:
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        return fut

    def _send_row(self, row: OutboxRow) -> None:
        fut = self._produce(Topic(row.topic), row.key, row.value)
        if fut is None:
            return
        self._in_flight.add(row.id)

        def done(f: asyncio.Future[Any], row: OutboxRow = row) -> None:
            self._in_flight.discard(row.id)
            if f.cancelled():
                return
            exc = f.exception()
            if exc is None:
                self.store.outbox_done([row.id])
            elif getattr(exc, "code", None) in _REFUSED_FOR_GOOD:
                # The broker will never take it: set it aside instead of re-sending it every 2 s.
                self.counters["outbox_dead"] += 1
                log.error("the broker refuses an owed %s event for good (%s): kept as a dead letter", row.topic, exc)
                self.store.outbox_dead(row, str(exc))

        fut.add_done_callback(done)

    async def _outbox_loop(self) -> None:
        while True:
            pending = [r for r in self.store.outbox() if r.id not in self._in_flight]
            if pending:
                log.info("sending %d event(s) still owed from the outbox", len(pending))
                for row in pending:
                    self._send_row(row)
            await asyncio.sleep(2.0)

    # -- Kafka -----------------------------------------------------------------------------

    async def _consume(self) -> None:
        assignments = []
        fresh: dict[tuple[str, int], Position] = {}
        inputs = (Topic.DRIVER_REQUESTS, Topic.CP_EVENTS)
        ids = await topic_ids(self.opts.kafka, inputs)
        for topic in inputs:
            parts = await all_partitions(self.opts.kafka, topic)
            missing = [p for p in parts if (topic.value, p) not in self.offsets]
            if missing:
                # No stored position: a new database starts from now (never replays an old
                # network's history), and "now" is written down at once, with the log it
                # belongs to, so that a crash before the first record cannot make the next
                # start skip what came meanwhile.
                for p, end in (await end_offsets(self.opts.kafka, topic, missing)).items():
                    fresh[(topic.value, p)] = Position(end, ids.get(topic))
            for p in parts:
                # The stored position names its log: a broker that lost its data since
                # is found out by the consumer, which reads the new log from its beginning.
                pos = self.offsets.get((topic.value, p)) or fresh.get((topic.value, p)) or Position(OFFSET_END)
                assignments.append((topic, p, pos.offset, pos.topic_id))
        if fresh:
            self._apply([], fresh)
        async with BusConsumer(
            self.opts.kafka, assignments=assignments, on_reset=self._log_reset, max_value_bytes=MAX_EVENT_BYTES
        ) as consumer:
            while True:
                try:
                    batch = await consumer.next_batch(BATCH_SIZE)
                except StopAsyncIteration:
                    return
                # One transaction per batch: decisions, owed events, dead letters and offsets together.
                self.intake.apply(batch, now_ms())
                self.counters["consumed"] += len(batch)
                self.counters["batches"] += 1

    async def _keep_running(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run one of Central's background loops for ever: an error in it is logged
        (rate-limited), Central's memory rebuilt from its database, and the loop started
        again a second later; it never silently stops expiring requests or sending owed events."""
        while True:
            try:
                await loop()
                return
            except Exception as exc:
                self.counters["loop_errors"] += 1
                self._warn.log(logging.ERROR, f"{loop.__name__} failed ({type(exc).__name__}: {exc}); restarting it")
                log.debug("%s failed", loop.__name__, exc_info=True)
                with contextlib.suppress(Exception):
                    self._rebuild_core()
                await asyncio.sleep(1.0)

    def _seen(self, event: Event, now: int) -> None:
        if isinstance(event, SupplyProgress):
            self.counters["telemetry_in"] += 1
            # Freshness is about the live stream: readings produced before Central started
            # (the backlog it catches up on after a restart) are late by definition.
            if event.ts_ms >= self.started_ms:
                self._ages.append(now - event.ts_ms)

    def _rebuild_core(self) -> None:
        """Rebuild the core from the database, after a failure that may have left it half-changed.

        The database holds everything decided; what only memory knows is carried over
        (:meth:`CentralCore.carry_over`).
        """
        old = self.core
        loaded = self.store.load()
        core = CentralCore(
            cps=loaded.cps,
            drivers=loaded.drivers,
            sessions=loaded.live_sessions,
            next_session_id=loaded.next_session_id,
            rules=self.opts.rules,
            history=self.store,
        )
        core.carry_over(old)
        self.core = core
        self.gate.window.load(self.store.record_counters())  # counters of a rolled-back batch are not kept
        self.counters["core_rebuilds"] += 1
        log.warning("Central's state was rebuilt from its database")

    def _log_reset(self, reset: LogReset) -> None:
        """The consumer found one of our input logs replaced (the broker lost its data): it
        now reads the new log from its beginning. Say so once per log, and store the new
        position, so a restart does not take the old one for a third log."""
        self.counters["log_resets"] += 1
        self._apply([], {(reset.topic.value, reset.partition): Position(OFFSET_BEGINNING, reset.topic_id)})
        told = (reset.topic, reset.topic_id)
        if told not in self._resets_told:
            self._resets_told.add(told)
            self._note(
                f"Kafka lost its log of {reset.topic.value} ({reset.cause.text}): reading the new log from "
                f"its beginning; {spec_for(reset.topic).resend.recovery}",
                "warning",
            )

    async def _ticker(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(0.25)
            for key, value in self._states.due(time.monotonic()):
                self._produce(
                    Topic.CP_STATE,
                    key,
                    value,
                    wait=False,  # type: ignore[arg-type]
                    event_type=CpStateRecord.TYPE,
                )
            self.counters["states_coalesced"] = self._states.coalesced
            n += 1
            if n % 4:
                continue
            fx = self.core.tick(now_ms())
            if fx:
                self._apply(fx)

    async def _loop_watch(self) -> None:
        """Count the event loop's stalls: how long a frame or a record may have waited for us."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LOOP_WATCH_S)
            late = loop.time() - before - LOOP_WATCH_S
            if late > 0.05:
                self.counters["loop_stalls_50ms"] += 1
                if late > 0.2:
                    self.counters["loop_stalls_200ms"] += 1
                self.counters["loop_stall_max_ms"] = max(self.counters["loop_stall_max_ms"], round(late * 1000))

    async def _maintenance(self) -> None:
        """Every second, pick up drivers registered from the CLI while we run; every five,
        re-create topics a restarted in-memory broker has lost."""
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            self._sync_registry()
            if tick % 5:
                continue
            try:
                self.partitions = await ensure_topics(self.opts.kafka, timeout_s=3.0)
            except Exception as exc:  # the broker is down: heartbeats report it
                log.debug("topic check failed: %s", exc)
                continue
            # The broker answers, yet our heartbeats have not been acknowledged for a while:
            # the producer is stuck (a restarted broker that forgot it). Start it afresh.
            if not self.kafka_ok and self._kafka_down_since and time.monotonic() - self._kafka_down_since > 10:
                assert self.producer is not None
                self.producer.rebuild("heartbeats unacknowledged while the broker answers")
                self._kafka_down_since = time.monotonic()

    def _sync_registry(self) -> None:
        """Take in what `ev-central drivers|cps add|remove` changed in the database while we run
        (looked at only when another connection wrote to it: free on a busy Central)."""
        if not self.store.changed_elsewhere():
            return
        drivers = set(self.store.drivers())
        added = drivers - self.core.drivers
        if added or self.core.drivers - drivers:
            self.core.drivers = drivers
            if added:
                self._note(
                    f"registered driver(s): {', '.join(sorted(added)[:20])}" + (" ..." if len(added) > 20 else "")
                )
        stored = {cp_id: (location, price, stopped) for cp_id, location, price, stopped in self.store.cps()}
        for cp_id in [c for c in self.core.cps if c not in stored]:
            try:
                self._apply(self.core.remove_cp(cp_id))
            except RegistryBusyError:  # removed under a live supply: keep it until that ends
                self._apply([SaveCp(copy.copy(self.core.cps[cp_id]))])
        for cp_id in stored.keys() - self.core.cps.keys():
            self.core.add_cp(cp_id, *stored[cp_id])
            self._note(f"registered charge point {cp_id} at {stored[cp_id][0]}")
        if self.sec is not None:
            # Keys issued by `drivers add --credentials` while we run; CPs the registry unregistered
            # lose their keys and their link at once (they can no longer authenticate either).
            self.sec.keys.reload()
            if self.store.forget_counters(self.sec.keys.key_ids()):
                self.gate.window.load(self.store.record_counters())
            registered = self.sec.creds.registered_ids()
            for cp_id in [c for c in self.links if c not in registered]:
                self._note(f"{cp_id} was unregistered at the registry: its keys are revoked", "warning")
                self.revoke(cp_id, actor="registry", source="registry")

    def remove_cp(self, cp_id: str) -> None:
        """Unregister a CP; its monitor's link is closed. UnknownCpError, RegistryBusyError."""
        self._apply(self.core.remove_cp(cp_id))

    def remove_driver(self, driver_id: str) -> None:
        """Unregister a driver. UnknownDriverError, RegistryBusyError."""
        self._apply(self.core.remove_driver(driver_id))

    async def _heartbeat(self) -> None:
        waiting: list[tuple[float, asyncio.Future[Any]]] = []
        loop = asyncio.get_running_loop()
        while True:
            hb = Heartbeat(
                instance_id=self.instance_id,
                started_ts_ms=self.started_ms,
                interval_s=HEARTBEAT_INTERVAL_S,
                ts_ms=now_ms(),
            )
            fut = self._produce(Topic.CENTRAL_HEARTBEAT, "central", encode_event(hb), event_type=hb.TYPE)
            if fut is not None:
                fut.add_done_callback(self._heartbeat_done)
                waiting.append((loop.time(), fut))
            # A heartbeat unacknowledged for 3 s means the broker is unreachable now,
            # long before the producer's delivery timeout gives up on it.
            waiting = [(t, f) for t, f in waiting if not f.done()]
            if waiting and loop.time() - waiting[0][0] > 3.0:
                self._set_kafka_ok(False)
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    def _heartbeat_done(self, fut: asyncio.Future[Any]) -> None:
        self._set_kafka_ok(not fut.cancelled() and fut.exception() is None)

    def _set_kafka_ok(self, ok: bool) -> None:
        if ok != self.kafka_ok:
            self.kafka_ok = ok
            self._kafka_down_since = None if ok else time.monotonic()
            self._note(
                "Kafka reachable again" if ok else "cannot reach Kafka: events are queued", "info" if ok else "error"
            )
