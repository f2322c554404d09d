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
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from evproto import (
    LinkConfig,
)
from evproto.aio import Link, Server, serve
from evproto.bus.events import EventEncodeError, encode_event
from evproto.bus.kafka import (
    BusProducer,
    KafkaSettings,
    ensure_topics,
)
from evproto.bus.topics import Topic, partition_for
from evproto.domain.central import (
    CentralCore,
    Effect,
    Forget,
    Note,
    Publish,
    Rules,
)
from evproto.domain.central.limits import Coalescer
from evproto.domain.central.view import MessageView
from evproto.domain.events import DriverTelemetry
from evproto.ratelog import RateLimitedLog

from ..common import now_ms
from ..files import write_ready_file
from ..gate import NoKey
from ..quarantine import CrashGuard, DeadLetter
from ..tokens import TokenStore
from .backend import HttpBackend
from .intake import RecordIntake
from .loops import CentralLoops
from .monitors import MonitorLinks
from .operator import OperatorConsole
from .security import CentralSecurity, insecure_gate, insecure_sealer
from .store import OutboxRow, Position, Store
from .weather import WeatherDesk, WeatherReport

__all__ = ["CentralOptions", "Central"]

log = logging.getLogger("evproto.central")

#: Readings whose age (engine -> Central) the status API summarises: the latest ones.
TELEMETRY_AGES = 4096
#: Lines about one subject (a CP's health, refused hellos from one address) at most this often.
NOTE_INTERVAL_S = 5.0
#: A CP's cp_state record at most this often (changes in between are coalesced).
STATE_INTERVAL_S = 1.0
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
    #: A location the weather service has not reported for this long is "weather unknown".
    weather_stale_s: float = 60.0


class Central(MonitorLinks, CentralLoops, OperatorConsole, WeatherDesk):
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
        #: The weather service's last report per location (casefolded), in memory only.
        self.weather_reports: dict[str, WeatherReport] = {}

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
                    for loop in (
                        self._ticker,
                        self._heartbeat,
                        self._outbox_loop,
                        self._maintenance,
                        self._loop_watch,
                        self._weather_watch,
                    )
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
