"""The engine daemon: wires the ChargePoint state machine to its monitor, Kafka and a meter.

- Its monitor connects over an evproto link, names the CP, and health-checks it.
- Commands (authorise, stop, resume, cancel) arrive on cp-commands, partition of the CP.
- Events (answers, supply start, telemetry, supply end, manual requests) go out to Kafka;
  every event that matters is first written to an outbox in the engine's state file
  and removed only when the broker acknowledged it: a crash or a broker outage loses
  nothing, it only delays.
- The state file (atomic write + fsync) also holds the supply in progress, so an engine
  that is killed reports the final figures of the interrupted supply when it restarts.
  It is written ahead of acting at every session boundary (authorised, started, ended)
  and whenever an owed event enters or leaves the outbox; the energy so far only every
  ``checkpoint_s``. After a crash the meter's register is the truth for the energy of the
  interrupted supply (the checkpoint's figures plus what the register gained since); the
  checkpoint bounds what is lost only when the register cannot be read. Writes run in a
  worker thread, one at a time, newest last (statefile.StateWriter).
- A meter reading is handled the moment it arrives: its progress report goes out at once
  (at most one per ``progress_interval_ms``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from typing import Any

from evproto import (
    LinkConfig,
)
from evproto.aio import Link, serve
from evproto.bus.events import EventEncodeError, encode_event
from evproto.bus.kafka import (
    BusError,
    BusProducer,
    KafkaSettings,
    ensure_topics,
)
from evproto.bus.topics import Topic, partition_for
from evproto.domain.chargepoint import AutoMode, ChargePoint, Effect, Emit, Persist, Phase, Say
from evproto.domain.events import (
    SupplyFinished,
    SupplyProgress,
    SupplyRequest,
    SupplyStarted,
)
from evproto.hw.base import MeterDriver, MeterError
from evproto.hw.supervisor import MeterSupervisor
from evproto.messages import EndReason
from evproto.ratelog import RateLimitedLog

from ..common import now_ms
from ..files import StateFileError, load_state, write_ready_file
from ..gate import PLAIN_POLICY, SECURE_POLICY, MemoryKeyBook, NoKey, RecordGate, RecordSealer
from ..readers import CentralWatch, RecordGuard
from .commands import CommandReader
from .console import EngineConsole
from .meter import ReadingSignal
from .monitor_link import MonitorLink
from .signed import SignedReadings, identification
from .statefile import StateWriter

__all__ = ["EngineOptions", "Engine"]

log = logging.getLogger("evproto.engine")

_TICK_S = 0.2
#: Finished supplies kept in the state file's ledger.
LEDGER_SIZE = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOptions:
    kafka: KafkaSettings
    listen: str
    state_dir: str
    auto: AutoMode | None = None
    ready_file: str | None = None
    link_config: LinkConfig = LinkConfig()
    interactive: bool = True
    #: Serve manual supplies while Central is unreachable and report them when it is back (OCPP 1.6 rule).
    offline_supply: bool = False
    #: Seconds between meter readings.
    meter_interval_s: float = 1.0
    #: Release 2: commands must be sealed with this CP's key and events are sealed with it.
    secure: bool = False
    #: Seconds between checkpoints of a supply's progress (energy so far) in the state file.
    checkpoint_s: float = 10.0
    #: How long a meter reading at restart, to end the interrupted supply with, may take.
    restart_read_timeout_s: float = 2.0
    #: A supply without signed begin/end meter readings that check (OCMF) ends as a fault.
    require_signed_meter: bool = False
    #: The meter's public key (hex DER) its signed readings must check against (None: the key it presents).
    meter_public_key: str | None = None


#: Progress reports (telemetry for the driver and Central) at most once a second.
PROGRESS_INTERVAL_MS = 1000


def progress_interval_ms(meter_interval_s: float) -> int:
    """The bar between two progress reports for readings every ``meter_interval_s``.

    Progress goes out with the reading that makes it due. Readings arrive on a fixed
    schedule plus a little delay that varies, so the bar sits half an interval below the
    k-th reading that reaches PROGRESS_INTERVAL_MS: every k-th reading is reported, never
    two in one interval, and none waits for the next because it came a millisecond early.
    """
    interval_ms = max(1.0, meter_interval_s * 1000.0)
    k = max(1, math.ceil(PROGRESS_INTERVAL_MS / interval_ms))
    return int((k - 0.5) * interval_ms)


#: An event to produce: topic, key, value, its outbox id (None: best effort), its type.
_Send = tuple[Topic, str, bytes, int | None, str]

# Supply fields that change with every reading: written on the checkpoint's schedule, not at once.
_PROGRESS_FIELDS = ("energy_wh", "power_w", "last_progress_ts_ms", "last_reading_ts_ms")


class Engine(MonitorLink, CommandReader, EngineConsole):
    """One engine process. ``await Engine(opts, meter).run(stop_event)``."""

    def __init__(self, opts: EngineOptions, meter: MeterDriver) -> None:
        self.opts = opts
        self.meter = meter
        self.readings = ReadingSignal(meter)
        self.supervisor = MeterSupervisor(self.readings, interval_s=opts.meter_interval_s)
        self.state_path = os.path.join(opts.state_dir, "engine-state.json")
        self.writer = StateWriter(self.state_path)
        #: The durable part of the CP's snapshot last handed to the writer (progress aside).
        self._written_key: tuple[Any, ...] | None = None
        #: When a snapshot was last handed to the writer (time.monotonic()), and whether
        #: progress changed since.
        self._written_at = -math.inf
        self._dirty = False
        #: Batches of events waiting for a write, and the write the last of them waits for.
        self._held = 0
        self._last_held: asyncio.Future[None] | None = None
        self.cp: ChargePoint | None = None
        self.commands_offset: int | None = None
        #: The log commands_offset belongs to (None: not known yet).
        self.commands_topic_id: str | None = None
        self.outbox: list[dict[str, Any]] = []
        #: The last LEDGER_SIZE supplies this engine finished (what it metered and reported).
        self.finished: list[dict[str, Any]] = []
        self._outbox_seq = 0
        self._in_flight: set[int] = set()
        self.partitions: dict[Topic, int] = {}
        self.producer: BusProducer | None = None
        self.monitor: Link | None = None
        #: Our CP's record keys (from the monitor) and Central's verify key.
        self.keys = MemoryKeyBook()
        self._key_order: list[str] = []
        self._key_arrived = asyncio.Event()
        policy = SECURE_POLICY if opts.secure else PLAIN_POLICY
        self.gate = RecordGate(self.keys, policy=policy)
        self.sealer = RecordSealer(policy=policy, sealing_key=self._sealing_key)
        self.central = CentralWatch(decode=self.gate.decode_value)
        #: Commands this engine could not apply (made in run(): it reads the state directory).
        self.records: RecordGuard | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._commands_task: asyncio.Task[Any] | None = None
        self._stop: asyncio.Event | None = None
        self._errors = RateLimitedLog(log)
        self.signed = SignedReadings(
            getattr(meter, "read_signed", None),
            require=opts.require_signed_meter,
            public_key_hex=opts.meter_public_key,
            timeout_s=opts.restart_read_timeout_s,
        )
        #: Supplies' reports waiting for the meter's signed end reading.
        self._signing: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until ``stop``; whatever was started is closed on every way out (a taken
        port included: a Kafka client left open at interpreter exit can crash it)."""
        self._stop = stop
        state = load_state(self.state_path)
        async with contextlib.AsyncExitStack() as started:
            self.records = RecordGuard(self.opts.state_dir, role="engine")
            started.callback(self.records.close)
            self.outbox = list(state.get("outbox", []))
            self.finished = list(state.get("finished", []))
            self._outbox_seq = max((e["id"] for e in self.outbox), default=0)
            self.partitions = await ensure_topics(self.opts.kafka)
            self.producer = BusProducer(self.opts.kafka)
            await self.producer.start()
            started.push_async_callback(self.producer.close, 5.0)
            server = await serve(
                self.opts.listen, self._session, node_id="engine", on_hello=self._on_hello, config=self.opts.link_config
            )
            started.push_async_callback(self._final_save)
            started.push_async_callback(server.close)
            host, port = server.addresses[0]
            scheme = "tls" if self.opts.listen.startswith("tls://") else "tcp"
            log.info(
                "listening for the monitor on %s://%s:%s%s; Kafka %s",
                scheme,
                host,
                port,
                " (mutual TLS)" if scheme == "tls" else "",
                self.opts.kafka.bootstrap,
            )
            if state.get("cp_id"):
                self._adopt(state["cp_id"], state, await self._register_at_restart(state))
            write_ready_file(
                self.opts.ready_file,
                role="engine",
                listen=f"{host}:{port}",
                scheme=scheme,
                cp_id=self.cp.cp_id if self.cp else None,
            )
            await self.supervisor.start()
            started.push_async_callback(self.supervisor.close)
            self._tasks = [
                asyncio.ensure_future(self._tick_loop()),
                asyncio.ensure_future(self._readings_loop()),
                asyncio.ensure_future(self.central.listen(self.opts.kafka)),
                asyncio.ensure_future(self._outbox_loop()),
            ]
            started.push_async_callback(self._cancel_tasks)
            if self.opts.interactive:
                self._tasks.append(asyncio.ensure_future(self._keys()))
                log.info("keys: p plug · u unplug · k KO · r recover · m DRIVER manual supply · s status · q quit")
            await stop.wait()
            log.info("shutting down")
        return 0

    async def _cancel_tasks(self) -> None:
        for t in list(self._signing):
            t.cancel()  # each still sends its report, unsigned: a report is never lost for a signature
        await asyncio.gather(*self._signing, return_exceptions=True)
        for t in self._tasks + ([self._commands_task] if self._commands_task else []):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._commands_task is not None:
            await asyncio.gather(self._commands_task, return_exceptions=True)

    # -- state -----------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        """The whole state file, as copies the writer's thread can read while the loop goes on."""
        assert self.cp is not None
        return {
            "cp_id": self.cp.cp_id,
            "cp": self.cp.snapshot(),
            "commands_offset": self.commands_offset,
            "commands_topic_id": self.commands_topic_id,
            "outbox": list(self.outbox),  # entries and ledger rows are never changed once made
            "finished": list(self.finished),
            # The record keys are secrets: the state file is 0600 like everything we write.
            "keys": [{"key_id": k, "key": self.keys.keys[k][1].hex()} for k in self._key_order],
            "central_key": (self.keys.central_key or b"").hex(),
            "replay": self.gate.window.state(),
        }

    def _durable_key(self) -> tuple[Any, ...] | None:
        """The CP's snapshot minus the figures every reading changes: what must be written at once."""
        if self.cp is None:
            return None
        snap = self.cp.snapshot()
        supply = snap["supply"]
        fields = (
            None if supply is None else tuple(sorted((k, v) for k, v in supply.items() if k not in _PROGRESS_FIELDS))
        )
        return (snap["stopped"], snap["phase"], snap["offline_price_eur_kwh"], fields)

    def _save(self, *, checkpoint: bool = False) -> asyncio.Future[None] | None:
        """Hand the state to the writer: now, or with ``checkpoint`` (only progress changed)
        once ``checkpoint_s`` have passed since the last write. The future resolves once it is
        on disk (None: nothing handed over)."""
        if self.cp is None:
            return None
        now = time.monotonic()
        if checkpoint and now - self._written_at < self.opts.checkpoint_s:
            self._dirty = True
            return None
        self._written_at, self._dirty = now, False
        self._written_key = self._durable_key()
        return self.writer.submit(self._state())

    async def _final_save(self) -> None:
        await self.writer.flush()
        if self.cp is not None:
            self.writer.save_now(self._state())

    async def _register_at_restart(self, state: dict[str, Any]) -> tuple[float, int] | None:
        """The meter's register (Wh) and when it was read, to end a supply the engine was
        killed in: the register, not the last checkpoint, says what was delivered."""
        if (state.get("cp") or {}).get("phase") != "supplying":
            return None
        kept = getattr(self.meter, "last_register", None)
        if kept is not None:
            register: tuple[float, int] | None = kept()  # the simulated meter's own memory
            return register
        try:
            reading = await asyncio.wait_for(self.supervisor.read_once(), self.opts.restart_read_timeout_s)
        except (MeterError, OSError, asyncio.TimeoutError) as exc:
            log.warning("cannot read the meter to end the interrupted supply (%s): its last checkpoint counts", exc)
            return None
        return reading.energy_wh, now_ms()

    def _adopt(
        self, cp_id: str, state: dict[str, Any] | None = None, meter_register: tuple[float, int] | None = None
    ) -> None:
        """Become charge point ``cp_id`` (from the state file, or named by the monitor)."""
        if self.cp is not None and self.cp.cp_id == cp_id:
            return
        self.cp = ChargePoint(
            cp_id=cp_id,
            auto=self.opts.auto,
            offline_supply=self.opts.offline_supply,
            progress_interval_ms=progress_interval_ms(self.opts.meter_interval_s),
            progress_with_reading=True,
        )
        self.commands_offset = self.commands_topic_id = None
        now = now_ms()
        if state and state.get("cp_id") == cp_id:
            self.commands_offset = state.get("commands_offset")
            self.commands_topic_id = state.get("commands_topic_id")
            self._restore_keys(cp_id, state)
            register = (state.get("cp") or {}).get("meter_energy_wh")
            restore = getattr(self.meter, "restore_register", None)
            if register is not None and restore is not None:
                restore(register)
            try:
                fx = self.cp.restore(state.get("cp") or {}, now, register=meter_register)
            except (TypeError, ValueError, KeyError, AttributeError, AssertionError) as exc:
                raise StateFileError(f"{self.state_path}: the supply it holds cannot be restored ({exc})") from None
            if fx:
                log.warning("restarted with an unfinished supply: reporting its final state")
            self._apply(fx)
        log.info("serving charge point %s", cp_id)
        self._save()
        if self._commands_task is not None:
            self._commands_task.cancel()
        self._commands_task = asyncio.ensure_future(self._commands_loop(cp_id))
        self._apply(self._central_news(now))

    # -- effects ---------------------------------------------------------------------------

    def _apply(self, effects: list[Effect], *, signed: bool = False) -> None:
        """Carry out effects write-ahead: the state file (with the outbox) is on disk
        before any event leaves, so a crash can never let Central know more than we do.
        A change of progress alone is checkpointed on its schedule (see _save). A supply's
        report waits for the meter's signed end reading (``signed``: it has it)."""
        persist = checkpoint = False
        sends: list[_Send] = []
        for fx in effects:
            if isinstance(fx, Say):
                getattr(log, fx.level if fx.level in ("warning", "error") else "info")(fx.text)
            elif isinstance(fx, Persist):
                if self._durable_key() != self._written_key:
                    persist = True  # a session boundary, STOP/RESUME, the price: write ahead
                else:
                    checkpoint = True
            elif isinstance(fx, Emit):
                ev = fx.event
                if isinstance(ev, SupplyFinished) and self.signed.active and not signed:
                    self._finish_signed(ev)  # its report goes out once the meter signed the end
                    continue
                if isinstance(ev, SupplyStarted):
                    self._begin_signed(ev)
                if isinstance(ev, SupplyRequest):
                    topic, key = Topic.DRIVER_REQUESTS, ev.driver_id
                else:
                    topic, key = Topic.CP_EVENTS, ev.cp_id  # type: ignore[attr-defined]
                try:
                    value = encode_event(ev)
                except EventEncodeError as exc:
                    # Our own rules refuse it: a bug to fix, never a reason to stop the engine's loops.
                    self._errors.log(logging.ERROR, f"not sending a {ev.TYPE} event the schemas refuse: {exc}")
                    continue
                if isinstance(ev, SupplyProgress):
                    sends.append((topic, key, value, None, ev.TYPE))  # interim figures: best effort
                    continue
                if isinstance(ev, SupplyFinished):
                    self._ledger(ev)
                self._outbox_seq += 1
                entry = {"id": self._outbox_seq, "topic": topic.value, "key": key, "value": value.decode()}
                self.outbox.append(entry)
                # Not re-sent by the outbox loop while its write is under way.
                self._in_flight.add(entry["id"])
                persist = True
                sends.append((topic, key, value, entry["id"], ev.TYPE))
        written = self._save() if persist else self._save(checkpoint=True) if checkpoint else None
        if not sends:
            return
        if any(outbox_id is not None for _, _, _, outbox_id, _ in sends):
            # Owed events leave once the state that holds them is on disk.
            assert written is not None
            wait: asyncio.Future[None] | None = written
        else:
            # Progress is best effort and needs no write of its own, but never overtakes
            # events still waiting for theirs.
            wait = self._last_held if self._held else None
        if wait is None:
            self._send(sends, None)
            return
        self._held += 1
        self._last_held = wait
        wait.add_done_callback(lambda f, batch=sends: self._send(batch, f))

    def _begin_signed(self, ev: SupplyStarted) -> None:
        task = self.signed.started(ev)
        if task is not None and self.signed.require:
            ident = identification(ev.driver_id, ev.session_id, ev.started_ts_ms)
            task.add_done_callback(lambda t, ident=ident: self._begin_checked(ident, t))

    def _begin_checked(self, ident: str, task: asyncio.Task[Any]) -> None:
        """A required signature missing at the start: the supply ends now, as a fault."""
        if task.cancelled() or task.exception() is not None or self.cp is None:
            return
        supply = self.cp.supply
        if supply is None or supply.started_ts_ms is None or self.cp.phase is not Phase.SUPPLYING:
            return
        if identification(supply.driver_id, supply.session_id, supply.started_ts_ms) != ident:
            return  # another supply by now
        problem = self.signed.check_begin(task.result())
        if problem is None:
            return
        now = now_ms()
        detail = f"signed meter values required: begin reading {problem}"
        fx = self.cp.set_ko(now, source="signed meter", detail=detail)
        self._apply(fx + self.cp.recover(now, source="signed meter"))

    def _finish_signed(self, ev: SupplyFinished) -> None:
        async def finish() -> None:
            try:
                report = await self.signed.finish(ev)
            except BaseException:  # cancelled at shutdown: the report is owed all the same
                unsigned = replace(ev, reason=EndReason.FAULT.token) if self.signed.require else ev
                self._apply([Emit(unsigned)], signed=True)
                raise
            self._apply([Emit(report)], signed=True)

        task = asyncio.ensure_future(finish())
        self._signing.add(task)
        task.add_done_callback(self._signing.discard)

    def _send(self, sends: list[_Send], written: asyncio.Future[None] | None) -> None:
        if written is not None:
            self._held -= 1
        failed = written is not None and (written.cancelled() or written.exception() is not None)
        for topic, key, value, outbox_id, event_type in sends:
            if outbox_id is not None:
                self._in_flight.discard(outbox_id)
            if failed:
                continue  # not on disk: owed events stay in the outbox, the outbox loop tries again
            self._produce(topic, key, value, outbox_id, event_type)

    def _ledger(self, ev: SupplyFinished) -> None:
        """Record the finished supply in the state file's ledger (saved atomically with the
        outbox that carries its report): the engine's own account of what it metered."""
        self.finished.append(
            {
                "session_id": ev.session_id,
                "request_id": ev.request_id,
                "driver_id": ev.driver_id,
                "energy_kwh": ev.energy_kwh,
                "amount_eur": ev.amount_eur,
                "reason": ev.reason,
                "offline": ev.offline,
                "ended_ts_ms": ev.ended_ts_ms,
            }
        )
        del self.finished[:-LEDGER_SIZE]

    def _produce(
        self, topic: Topic, key: str, value: bytes, outbox_id: int | None, event_type: str | None = None
    ) -> None:
        if self.producer is None:
            return
        partition = partition_for(key, self.partitions.get(topic, 1))
        try:
            # Sealed at send time, with a fresh counter: an owed event sent again is not a replay.
            value = self.sealer.wrap(topic, key, value, event_type=event_type)  # (None: read from the value)
        except NoKey:
            return  # owed events stay in the outbox until the monitor hands over a key
        try:
            if outbox_id is None:  # interim figures: nobody waits for them, nothing keeps them
                self.producer.post(topic, key, value, partition=partition)
                return
            fut = self.producer.produce(topic, key, value, partition=partition)
        except BusError as exc:
            log.warning("cannot queue event for Kafka: %s", exc)
            return
        self._in_flight.add(outbox_id)
        fut.add_done_callback(lambda f, i=outbox_id: self._delivered(i, f))

    def _delivered(self, outbox_id: int, fut: asyncio.Future[Any]) -> None:
        self._in_flight.discard(outbox_id)
        if fut.cancelled() or fut.exception() is not None:
            return  # stays in the outbox; the outbox loop sends it again
        self.outbox = [e for e in self.outbox if e["id"] != outbox_id]
        self._save()  # an owed event left the outbox

    async def _outbox_loop(self) -> None:
        # On start-up and after failures: send again whatever the broker never acknowledged.
        first = True
        while True:
            for e in list(self.outbox):
                if e["id"] not in self._in_flight:
                    if first:
                        log.info("re-sending %d undelivered event(s) from before the restart", len(self.outbox))
                        first = False
                    self._produce(Topic(e["topic"]), e["key"], e["value"].encode(), e["id"])
            first = False
            await asyncio.sleep(2.0)

    # -- time ------------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(_TICK_S)
            self._step()
            if self._dirty:
                self._save(checkpoint=True)  # progress not yet checkpointed: once it is due

    async def _readings_loop(self) -> None:
        # A reading is handled as it arrives, not at the next tick: its progress goes out now.
        while True:
            await self.readings.arrived.wait()
            self.readings.arrived.clear()
            self._step()

    def _step(self) -> None:
        """Take the news (Central, a fresh reading, the meter's health) and let time pass."""
        cp = self.cp
        if cp is None:
            return
        set_load = getattr(self.meter, "set_load", None)
        now = now_ms()
        fx: list[Effect] = self._central_news(now)
        if set_load is not None:
            set_load(cp.phase is Phase.SUPPLYING)
        # Only fresh readings go in: a stalled meter's last values are never re-used.
        reading = self.supervisor.take()
        if reading is not None:
            fx += cp.meter(reading.energy_wh, reading.power_w, now)
        fault = self.supervisor.health.fault
        if fault is not None and "meter" not in cp.faults:
            fx += cp.set_ko(now, source="meter", detail=f"{fault.label}: {self.supervisor.health.detail}")
        elif fault is None and "meter" in cp.faults:
            fx += cp.recover(now, source="meter")
        fx += cp.tick(now)
        self._apply(fx)
        if set_load is not None:
            set_load(cp.phase is Phase.SUPPLYING)
