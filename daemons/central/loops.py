"""Central's loops beside the monitors': Kafka intake, the clock, maintenance (registry
changes made elsewhere, topics, a stuck producer) and its heartbeat.

A part of :class:`~.app.Central` (its state is set up there).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from typing import Any, Awaitable, Callable

from evproto.bus.events import MAX_EVENT_BYTES, encode_event
from evproto.bus.kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    BusConsumer,
    LogReset,
    all_partitions,
    end_offsets,
    ensure_topics,
    topic_ids,
)
from evproto.bus.topics import Topic, spec_for
from evproto.domain.central import (
    CentralCore,
    RegistryBusyError,
    SaveCp,
)
from evproto.domain.events import CpStateRecord, Event, Heartbeat, SupplyProgress

from ..common import now_ms
from .store import Position

__all__ = ["CentralLoops"]

log = logging.getLogger("evproto.central")

HEARTBEAT_INTERVAL_S = 1.0
#: Period of the event-loop stall watch (status counters loop_stalls_*).
LOOP_WATCH_S = 0.05
#: Kafka records handled per database transaction at most.
BATCH_SIZE = 500


class CentralLoops:
    """The loops that keep Central fed and alive."""

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
