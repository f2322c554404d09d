"""The driver's app: requests, their steps, live figures and tickets, its state file.

Sends supply requests (one-off, or a file of them) to Central through Kafka and
shows every step of each: received, authorised or denied (with the reason), live
kWh and EUR while charging, and the final ticket. A driver reads only its own
partition of driver-events and keeps only its own records. It remembers where it
was (state file): killed mid-supply and started again with the same id, it shows
the outcome of that supply and carries on with its file where it left off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import Any, Callable

from evproto.backoff import Backoff
from evproto.bus.events import MAX_EVENT_BYTES, EventDecodeError, encode_event
from evproto.bus.kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    BusConsumer,
    BusError,
    BusProducer,
    KafkaSettings,
    LogReset,
    Record,
    end_offsets,
    ensure_topics,
    topic_ids,
)
from evproto.bus.seal import SealError
from evproto.bus.topics import Topic, partition_for, spec_for
from evproto.domain.events import (
    CpStateRecord,
    DriverTelemetry,
    RequestUpdate,
    SupplyRequest,
    Ticket,
)
from evproto.domain.session import SessionStatus
from evproto.ratelog import RateLimitedLog

from ..common import EXIT_USAGE, now_ms, stdin_lines
from ..credentials_file import DriverCredentials
from ..files import StateFileError, load_state, save_json_atomic, write_ready_file
from ..gate import (
    PLAIN_POLICY,
    SECURE_POLICY,
    MemoryKeyBook,
    Owner,
    OwnerKind,
    RecordGate,
    RecordSealer,
)
from ..readers import CentralWatch, RecordGuard
from .figures import LiveFigures
from .live import run_screen
from .requests import RequestLine, parse_requests
from .screen import DriverScreen, ticket_text

__all__ = ["Driver"]

log = logging.getLogger("evproto.driver")

#: What Central sends a driver on driver-events.
_DRIVER_EVENTS = (RequestUpdate, DriverTelemetry, Ticket)


class Driver:
    """One driver app; ``await Driver(...).run(stop)``."""

    def __init__(
        self,
        *,
        driver_id: str,
        kafka: KafkaSettings,
        requests: list[RequestLine] | None,
        requests_source: str = "",
        state_dir: str,
        pause_s: float = 4.0,
        answer_timeout_s: float = 60.0,
        interactive: bool = True,
        ready_file: str | None = None,
        credentials: DriverCredentials | None = None,
        screen: DriverScreen | None = None,
    ) -> None:
        self.driver_id = driver_id
        #: The live screen (a terminal), or None: plain log lines.
        self.screen = screen
        # Release 2: our requests are sealed with our key, our news opened with it, and
        # what Central tells everyone (CP states, heartbeats) checked against its key.
        keys = MemoryKeyBook()
        if credentials is not None:
            keys.keys[credentials.key_id] = (Owner(OwnerKind.DRIVER, driver_id), credentials.key)
            keys.trust_central(credentials.central_key)
        policy = SECURE_POLICY if credentials is not None else PLAIN_POLICY
        self.gate = RecordGate(keys, policy=policy)
        self.sealer = RecordSealer(
            policy=policy,
            sealing_key=(
                (lambda topic, record_key: (credentials.key_id, credentials.key)) if credentials is not None else None
            ),
        )
        self.kafka = kafka
        self.requests = requests
        self.requests_source = requests_source
        self.state_dir = state_dir
        self.state_path = os.path.join(state_dir, "driver-state.json")
        self.pause_s = pause_s
        self.answer_timeout_s = answer_timeout_s
        self.interactive = interactive
        self.ready_file = ready_file
        self.state: dict[str, Any] = {}
        self.cps: dict[str, CpStateRecord] = {}
        self.central = CentralWatch(decode=self.gate.decode_value)
        #: Events of ours that could not be applied (made in run(): it reads the state directory).
        self.records: RecordGuard | None = None
        #: cp_state records that were not valid (skipped: the topic is read again at every start).
        self.cp_states_skipped = 0
        self._warn = RateLimitedLog(log)
        self.producer: BusProducer | None = None
        self.partitions: dict[Topic, int] = {}
        self._waiters: dict[str, asyncio.Future[RequestUpdate]] = {}
        self._last_update: dict[str, float] = {}
        # The screen redraws a few times a second: it may show readings as often.
        self.figures = LiveFigures(every_s=0.25) if screen is not None else LiveFigures()
        #: Tickets received (session id -> request id and the text shown), the last few hundred.
        self._tickets: dict[int, dict[str, str]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        self.state = load_state(self.state_path)
        if self.state.get("driver_id") not in (None, self.driver_id):
            log.error("%s belongs to driver %s", self.state_path, self.state.get("driver_id"))
            return EXIT_USAGE
        self.state["driver_id"] = self.driver_id
        self.records = RecordGuard(self.state_dir, role="app")
        try:
            self.gate.window.load(self.state.get("replay") or {})
        except (TypeError, ValueError, AttributeError) as exc:
            raise StateFileError(f"{self.state_path}: its replay counters cannot be read ({exc})") from None
        self._tickets = (
            {int(k): v for k, v in (self.state.get("tickets") or {}).items()}
            if isinstance(self.state.get("tickets"), dict)
            else {}
        )
        self.partitions = await ensure_topics(self.kafka)
        if self.state.get("events_offset") is None:
            # First start: remember where "now" is before asking for anything, so a crash
            # before the first answer cannot make the next start skip that answer.
            partition = partition_for(self.driver_id, self.partitions[Topic.DRIVER_EVENTS])
            ids = await topic_ids(self.kafka, [Topic.DRIVER_EVENTS])
            self.state["events_offset"] = (await end_offsets(self.kafka, Topic.DRIVER_EVENTS, [partition]))[partition]
            self.state["events_topic_id"] = ids.get(Topic.DRIVER_EVENTS)  # the log that offset belongs to
            self._save()
        self.producer = BusProducer(self.kafka)
        await self.producer.start()
        tasks = [
            asyncio.ensure_future(self._events_loop()),
            asyncio.ensure_future(self._cp_state_loop()),
            asyncio.ensure_future(self.central.listen(self.kafka)),
            asyncio.ensure_future(self._central_news_loop()),
            asyncio.ensure_future(self._figures_loop()),
        ]
        work: list[asyncio.Future[Any]] = []
        if self.requests is not None:
            work.append(asyncio.ensure_future(self._walk_file()))
        screen: asyncio.Future[None] | None = None
        if self.screen is not None:
            screen = asyncio.ensure_future(run_screen(self.screen, stop=stop, on_command=self._command_in(stop)))
            # The screen is how the app is used: if it fails, the app stops and says why (below).
            screen.add_done_callback(lambda _: stop.set())
            tasks.append(screen)
        elif self.interactive:
            tasks.append(asyncio.ensure_future(self._keys(stop)))
            log.info("commands: r CP_ID [2.5kWh|30s] request · l list available CPs · q quit")
        stopper = asyncio.ensure_future(stop.wait())
        try:  # from here on every way out closes the producer (its threads must not outlive it)
            write_ready_file(self.ready_file, role="driver", driver_id=self.driver_id)
            await asyncio.wait([stopper, *work], return_when=asyncio.FIRST_COMPLETED)
            if work and work[0].done() and not stop.is_set():
                exc = work[0].exception()
                if exc is not None:
                    raise exc
                if not self.interactive:
                    return 0
                await stop.wait()
            if screen is not None and screen.done() and not screen.cancelled() and screen.exception() is not None:
                raise screen.exception()  # type: ignore[misc]
        finally:
            for t in tasks + work + [stopper]:
                t.cancel()
            await asyncio.gather(*tasks, *work, stopper, return_exceptions=True)
            self._save()
            await self.producer.close(timeout_s=5.0)
            self.records.close()
            if self.records.count:
                log.warning("%d event(s) quarantined in %s", self.records.count, self.records.letters.path)
        return 0

    def _save(self) -> None:
        keep = sorted(self._tickets)[-200:]
        self.state["tickets"] = {str(k): self._tickets[k] for k in keep}
        self.state["replay"] = self.gate.window.state()  # with events_offset: one atomic file
        save_json_atomic(self.state_path, self.state)

    # -- requests --------------------------------------------------------------------------

    async def _central_news_loop(self) -> None:
        """Say when Central falls silent and when it is back, whatever the app is doing."""
        while True:
            await asyncio.sleep(0.25)
            if self.screen is not None:
                self.screen.central_reachable = self.central.state()
            news = self.central.news()
            if news is False:
                log.warning(
                    "cannot reach Central (no heartbeat for %g s): requests wait until it is back",
                    self.central.silence_s,
                )
            elif news:
                log.info("Central reachable again")

    async def _wait_for_central(self, line: RequestLine) -> None:
        # Just started: the first heartbeat may take a second. Silent: the news loop said so.
        if self.central.state() is False:
            log.info("the request at %s waits until Central is reachable", line.describe())
        while not self.central.reachable:
            await asyncio.sleep(0.1)

    async def request(self, line: RequestLine, *, index: int | None = None) -> RequestUpdate | None:
        """Ask for one supply and wait for its outcome (None: no answer in time).

        ``index`` is the line of the requests file, remembered so that a restart
        shows this request's outcome and continues after it.
        """
        await self._wait_for_central(line)
        request_id = uuid.uuid4().hex
        self.state["pending"] = {"request_id": request_id, "cp_id": line.cp_id, "line": index}
        self._save()
        fut = self._watch(request_id)
        assert self.producer is not None
        event = SupplyRequest(
            request_id=request_id,
            driver_id=self.driver_id,
            cp_id=line.cp_id,
            ts_ms=now_ms(),
            target_energy_kwh=line.target_energy_kwh,
            target_duration_s=line.target_duration_s,
        )
        log.info("requesting a supply at %s", line.describe())
        await self._send_request(event)
        if self.screen is not None:
            self.screen.request_sent(request_id=request_id, line=line, ts_ms=now_ms())
        return await self._outcome(request_id, fut)

    async def _send_request(self, event: SupplyRequest) -> None:
        """Send until the broker has it: a broker that is away (restarting) delays the request,
        never ends the app. A resend carries the same request id: Central takes it once."""
        assert self.producer is not None
        backoff = Backoff(initial_s=1.0, max_s=10.0)
        partition = partition_for(self.driver_id, self.partitions[Topic.DRIVER_REQUESTS])
        while True:
            try:
                # Sealed at each attempt (a fresh counter): a resend is not a replay.
                value = self.sealer.wrap(
                    Topic.DRIVER_REQUESTS, self.driver_id, encode_event(event), event_type=event.TYPE
                )
                await self.producer.send(Topic.DRIVER_REQUESTS, self.driver_id, value, partition=partition)
                return
            except BusError as exc:
                delay = backoff.next_delay()
                log.warning("cannot hand the request to Kafka (%s): trying again in %.0f s", exc, delay)
                await asyncio.sleep(delay)

    def _watch(self, request_id: str) -> asyncio.Future[RequestUpdate]:
        fut: asyncio.Future[RequestUpdate] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = fut
        self._last_update[request_id] = time.monotonic()
        return fut

    async def _outcome(self, request_id: str, fut: asyncio.Future[RequestUpdate]) -> RequestUpdate | None:
        try:
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), 1.0)
                except asyncio.TimeoutError:
                    pass
                if not self.central.reachable:
                    self._last_update[request_id] = time.monotonic()  # Central's silence is not the CP's
                    continue
                if time.monotonic() - self._last_update[request_id] > self.answer_timeout_s:
                    log.warning(
                        "no news about request %s for %g s: giving up on it", request_id[:8], self.answer_timeout_s
                    )
                    return None
        finally:
            self._waiters.pop(request_id, None)
            self._last_update.pop(request_id, None)
            self.state["pending"] = None
            self._save()

    async def _walk_file(self) -> None:
        assert self.requests is not None
        start = int(self.state.get("next_line", 0)) if self.state.get("file") == self.requests_source else 0
        pending = self.state.get("pending")
        if pending:
            log.info(
                "restarted while request %s at %s was in progress: waiting for its outcome",
                pending["request_id"][:8],
                pending["cp_id"],
            )
            outcome = await self._outcome(pending["request_id"], self._watch(pending["request_id"]))
            ticket = next((t["text"] for t in self._tickets.values() if t["request_id"] == pending["request_id"]), None)
            if ticket is not None:
                log.info("outcome of the supply in progress before the restart: %s", ticket)
            if pending.get("line") is not None and pending["line"] >= start:
                start = pending["line"] + 1  # that request is done: go on after it
                self.state["file"], self.state["next_line"] = self.requests_source, start
                self._save()
            if outcome is not None and start < len(self.requests):
                await asyncio.sleep(self.pause_s)
        if start:
            log.info(
                "continuing %s at request %d of %d",
                self.requests_source or "the requests",
                start + 1,
                len(self.requests),
            )
        for index in range(start, len(self.requests)):
            await self.request(self.requests[index], index=index)
            self.state["file"] = self.requests_source
            self.state["next_line"] = index + 1
            self._save()
            if index + 1 < len(self.requests):
                await asyncio.sleep(self.pause_s)
        log.info(
            "all %d requests done: %d completed, %d denied or interrupted",
            len(self.requests),
            self.state.get("completed", 0),
            self.state.get("not_completed", 0),
        )

    # -- Kafka -----------------------------------------------------------------------------

    async def _events_loop(self) -> None:
        partition = partition_for(self.driver_id, self.partitions[Topic.DRIVER_EVENTS])
        start = self.state.get("events_offset")
        # With the log it came from: a broker that lost its data since is found out, and the
        # new log is read from its beginning (Central sends the recent tickets and updates again).
        position = (
            Topic.DRIVER_EVENTS,
            partition,
            OFFSET_END if start is None else start,
            self.state.get("events_topic_id"),
        )
        async with BusConsumer(
            self.kafka, assignments=[position], on_reset=self._events_reset, max_value_bytes=MAX_EVENT_BYTES
        ) as consumer:
            async for record in consumer:
                self.state["events_offset"], self.state["events_topic_id"] = record.offset + 1, record.topic_id
                if record.key != self.driver_id:
                    continue  # another driver's record in the same partition
                assert self.records is not None
                self.records.take(record, self._on_record)

    def _on_record(self, record: Record) -> str | None:
        """Apply one record keyed to this driver; why it cannot be applied, or None once applied."""
        ev = self.gate.decode(record, now_ms())
        if not isinstance(ev, _DRIVER_EVENTS):
            return f"a {ev.TYPE} event is not a driver event"
        if ev.driver_id != self.driver_id:
            return f"an event for driver {ev.driver_id}, keyed to {self.driver_id}"
        self._on_event(ev)
        return None

    def _events_reset(self, reset: LogReset) -> None:
        log.warning(
            "Kafka lost its log of %s (%s): reading the new log from its beginning; %s",
            reset.topic.value,
            reset.cause.text,
            spec_for(reset.topic).resend.recovery,
        )
        self.state["events_offset"], self.state["events_topic_id"] = OFFSET_BEGINNING, reset.topic_id
        self._save()

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, RequestUpdate):
            if ev.request_id in self._last_update:
                self._last_update[ev.request_id] = time.monotonic()
            if self.screen is not None:
                self.screen.request_update(ev)
            text = ev.message or ev.status
            final = SessionStatus(ev.status).final
            if ev.status == SessionStatus.DENIED.value:
                log.warning("%s: DENIED: %s", ev.cp_id, text)
            elif final:
                log.info("%s: %s", ev.cp_id, text)
            elif ev.reason:
                log.warning("%s: %s", ev.cp_id, text)
            else:
                log.info("%s: %s", ev.cp_id, text)
            if final and ev.session_id is not None:
                self.figures.ended(ev.session_id)
            if final and ev.request_id in self._waiters:
                key = "completed" if ev.status == SessionStatus.COMPLETED.value else "not_completed"
                self.state[key] = int(self.state.get(key, 0)) + 1
                fut = self._waiters.get(ev.request_id)
                if fut is not None and not fut.done():
                    fut.set_result(ev)
        elif isinstance(ev, DriverTelemetry):
            if ev.session_id not in self._tickets:  # a reading relayed late, or read again after a restart
                self.figures.offer(ev, time.monotonic())
        elif isinstance(ev, Ticket):
            self.figures.ended(ev.session_id)
            if ev.session_id in self._tickets:
                return  # the same ticket again (Central re-sent its outbox after a restart)
            text = ticket_text(ev)
            log.info("%s", text)
            if self.screen is not None:
                self.screen.ticket(ev)
            self._write_ticket_file(ev)
            # Remembered after it was shown: a crash in between shows it again, never not at all.
            self._tickets[ev.session_id] = {"request_id": ev.request_id, "text": text}
            self._save()

    def ticket_path(self, session_id: int) -> str:
        """Where the ticket of ``session_id`` is kept as JSON (``evcp-meter verify`` checks it)."""
        return os.path.join(self.state_dir, "tickets", f"TICKET-{session_id}.json")

    def _write_ticket_file(self, ev: Ticket) -> None:
        """The ticket as a file the driver keeps: its figures, and the meter's signed begin and
        end readings with the meter's public key when the CP's meter signs (OCMF)."""
        doc: dict[str, Any] = {
            "session_id": ev.session_id,
            "request_id": ev.request_id,
            "driver_id": ev.driver_id,
            "cp_id": ev.cp_id,
            "energy_kwh": ev.energy_kwh,
            "amount_eur": ev.amount_eur,
            "price_eur_kwh": ev.price_eur_kwh,
            "started_ts_ms": ev.started_ts_ms,
            "ended_ts_ms": ev.ended_ts_ms,
            "status": ev.status,
            "end_reason": ev.end_reason,
            "ocmf_begin": ev.ocmf_begin,
            "ocmf_end": ev.ocmf_end,
            "meter_public_key": ev.meter_public_key,
        }
        try:
            save_json_atomic(self.ticket_path(ev.session_id), doc)
        except OSError as exc:
            log.error("cannot write the ticket file of session %s: %s", ev.session_id, exc)

    async def _figures_loop(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            ev = self.figures.due(time.monotonic())
            if ev is not None and self.screen is not None:
                self.screen.reading(ev)
            elif ev is not None:
                log.info(
                    "charging at %s: %.3f kWh, %.2f EUR, %.1f kW", ev.cp_id, ev.energy_kwh, ev.amount_eur, ev.power_kw
                )

    async def _cp_state_loop(self) -> None:
        async with BusConsumer(
            self.kafka,
            max_value_bytes=MAX_EVENT_BYTES,
            assignments=[(Topic.CP_STATE, p, OFFSET_BEGINNING) for p in range(self.partitions.get(Topic.CP_STATE, 1))],
        ) as consumer:
            async for record in consumer:
                if record.value is None:  # a tombstone: the CP is gone
                    self.cps.pop(record.key or "", None)
                    if self.screen is not None:
                        self.screen.cp_removed(record.key or "")
                    continue
                try:
                    ev = self.gate.decode(record, now_ms())
                    if not isinstance(ev, CpStateRecord):
                        problem: str | None = f"a {ev.TYPE} event is not a cp_state"
                    else:
                        problem = None if ev.cp_id == record.key else f"the state of {ev.cp_id}, keyed to another CP"
                except (EventDecodeError, SealError) as exc:
                    problem = str(exc)
                if problem is None:
                    self.cps[ev.cp_id] = ev
                    if self.screen is not None:
                        self.screen.cp_state(ev)
                    continue
                self.cp_states_skipped += 1
                self._warn.log(
                    logging.WARNING, f"skipped a record on cp-state ({record.partition}@{record.offset}): {problem}"
                )

    # -- keys ------------------------------------------------------------------------------

    async def _keys(self, stop: asyncio.Event) -> None:
        on_command = self._command_in(stop)
        async for line in stdin_lines():
            on_command(line)
            if stop.is_set():
                return

    def _command_in(self, stop: asyncio.Event) -> Callable[[str], None]:
        """What runs one typed command (``r CP_ID [target]``, ``l``, ``q``), plain or on the screen."""
        busy: asyncio.Future[Any] | None = None

        def on_command(line: str) -> None:
            nonlocal busy
            word, _, rest = line.partition(" ")
            word = word.lower()
            if word in ("q", "quit"):
                stop.set()
                return
            if word in ("l", "list"):
                if self.screen is not None:
                    self.screen.toggle_cps()
                    return
                available = sorted(c.cp_id for c in self.cps.values() if c.state == "ACTIVATED")
                others = sorted(f"{c.cp_id} ({c.state})" for c in self.cps.values() if c.state != "ACTIVATED")
                log.info("available: %s", ", ".join(available) or "none")
                if others:
                    log.info("not available: %s", ", ".join(others))
                return
            if word in ("r", "request"):
                try:
                    (parsed,) = parse_requests(rest, source="request") or [None]
                except ValueError as exc:
                    log.warning("%s", exc)
                    return
                if parsed is None:
                    log.warning("usage: r CP_ID [2.5kWh|30s]")
                    return
                if busy is not None and not busy.done():
                    log.warning("a request is already in progress")
                    return
                busy = asyncio.ensure_future(self.request(parsed))
                return
            log.warning("unknown command %r: r CP_ID [target] · l · q", line)

        return on_command
