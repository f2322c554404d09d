"""What the engine's and the driver's Kafka readers share: hearing Central, and applying a
record so that it can never stop or loop the reader.

- :class:`CentralWatch`: Central sends a heartbeat every second; silence for
  CENTRAL_SILENCE_S means "cannot reach Central". A reader that has just started
  gives the first heartbeat that long before it counts as silence.
- :class:`RecordGuard`: a record that cannot be applied (malformed, out of range,
  not meant for this reader, or making the code raise) is quarantined in
  ``STATE_DIR/dead-letters.jsonl``, counted, logged (rate-limited), and the reader
  moves past it. A crash mark (``STATE_DIR/crash-mark``) around each record makes
  one that kills the process anyway be set aside after MAX_CRASHES deaths instead
  of being read again at every start (daemons/quarantine.py).
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from typing import Callable

from evproto.bus.events import MAX_EVENT_BYTES, EventDecodeError, decode_event
from evproto.bus.kafka import OFFSET_END, BusConsumer, KafkaSettings, Record
from evproto.bus.seal import SealError
from evproto.bus.topics import Topic
from evproto.domain.events import Event, Heartbeat
from evproto.ratelog import RateLimitedLog

from .common import now_ms
from .files import makedirs
from .quarantine import CrashGuard, DeadLetter, DeadLetterFile, Verdict

__all__ = ["CENTRAL_SILENCE_S", "MAX_CRASHES", "CentralWatch", "RecordGuard"]

log = logging.getLogger("evproto.readers")

#: Central counts as unreachable after this long without a heartbeat (it sends one a second).
CENTRAL_SILENCE_S = 3.5
#: A heartbeat stamped longer ago than this does not count (a replayed one cannot keep a
#: dead Central looking alive for longer; generous for hosts whose clocks differ).
HEARTBEAT_MAX_AGE_MS = 30_000
#: A record that killed its reader this many times is set aside without being applied.
MAX_CRASHES = 3


class CentralWatch:
    """Whether Central is reachable, from its heartbeats; ``await watch.listen(kafka)`` feeds it."""

    def __init__(
        self,
        *,
        silence_s: float = CENTRAL_SILENCE_S,
        clock: Callable[[], float] = time.monotonic,
        decode: Callable[..., Event] | None = None,
    ) -> None:
        self.silence_s = silence_s
        #: (topic, key, value, now_ms, size=) -> Event: the reader's gate (signed heartbeats
        #: in release 2: a forged one cannot make Central look alive).
        self._decode = decode or (lambda topic, key, value, now, size=None: decode_event(value, now_ms=now, size=size))
        self._clock = clock
        self._since: float | None = None
        self._heard: float | None = None
        self._told: bool | None = None
        #: Records on the heartbeat topic that were not valid heartbeats (skipped).
        self.skipped = 0
        self._warn = RateLimitedLog(log)

    def listening(self) -> None:
        """We can hear heartbeats from now on: the first one has ``silence_s`` to arrive."""
        self._since = self._clock()

    def heard(self) -> None:
        """A heartbeat arrived just now."""
        self._heard = self._clock()

    @property
    def reachable(self) -> bool:
        """A heartbeat arrived less than ``silence_s`` ago."""
        return self._heard is not None and self._clock() - self._heard < self.silence_s

    def state(self) -> bool | None:
        """True: heard lately; False: silent; None: no heartbeat yet, and not listening for
        ``silence_s`` yet (too early to say)."""
        if self.reachable:
            return True
        if self._heard is None and (self._since is None or self._clock() - self._since < self.silence_s):
            return None
        return False

    def news(self) -> bool | None:
        """What to tell the user, once per change: False when Central falls silent (or never
        spoke in time), True when it is back after that; None when there is nothing new."""
        state = self.state()
        if state is None or state == self._told:
            return None
        told, self._told = self._told, state
        return None if state and told is None else state  # the first heartbeat in time: nothing to say

    async def listen(self, kafka: KafkaSettings) -> None:
        # start() waits for the broker at most a few seconds: a broker that is down counts as silence.
        async with BusConsumer(
            kafka, assignments=[(Topic.CENTRAL_HEARTBEAT, 0, OFFSET_END)], max_value_bytes=MAX_EVENT_BYTES
        ) as consumer:
            self.listening()
            async for record in consumer:
                try:
                    now = now_ms()
                    event = self._decode(record.topic, record.key, record.value, now, size=record.size)
                    if isinstance(event, Heartbeat) and now - event.ts_ms <= HEARTBEAT_MAX_AGE_MS:
                        self.heard()
                        continue
                    problem = (
                        "not a heartbeat"
                        if not isinstance(event, Heartbeat)
                        else f"a heartbeat {(now - event.ts_ms) / 1000:.0f} s old (replayed, or clocks far apart)"
                    )
                except (EventDecodeError, SealError) as exc:
                    problem = str(exc)
                self.skipped += 1
                self._warn.log(logging.WARNING, f"skipped a record on the heartbeat topic: {problem}")


class RecordGuard:
    """Applies a reader's records one at a time so that none can stop or loop it.

    ``take(record, apply)`` calls ``apply(record)``, which returns None once the record
    is applied, or why it will not apply it. That reason, an EventDecodeError or any
    other exception quarantines the record. ``role`` names the process in reasons.
    """

    def __init__(self, state_dir: str, *, role: str) -> None:
        makedirs(state_dir)
        self.role = role
        self.letters = DeadLetterFile(os.path.join(state_dir, "dead-letters.jsonl"))
        self.crashes = CrashGuard(os.path.join(state_dir, "crash-mark"), max_crashes=MAX_CRASHES)
        self._errors = RateLimitedLog(log)

    @property
    def count(self) -> int:
        """Records this process quarantined."""
        return self.letters.count

    def take(self, record: Record, apply: Callable[[Record], str | None]) -> bool:
        """Apply ``record`` (True) or quarantine it (False); never raises for the record's sake."""
        topic, partition, offset = record.topic.value, record.partition, record.offset
        if self.crashes.verdict(topic, partition, offset) is Verdict.QUARANTINE:
            deaths = self.crashes.crashes_on(topic, partition, offset)
            self.crashes.forget(topic, partition, offset + 1)
            self._quarantine(record, f"the {self.role} died {deaths} times applying it: set aside unapplied")
            return False
        # The mark is one pwrite without fsync: it only has to outlive the process.
        self.crashes.applying([(topic, partition, offset, offset)])
        try:
            problem = apply(record)
        except (EventDecodeError, SealError) as exc:
            problem = str(exc)
        except Exception as exc:  # a bug, or a resource that failed: the record must not stop the reader
            problem = f"applying it failed: {exc!r}"
            self._errors.log(logging.ERROR, f"applying {topic}[{partition}]@{offset} failed:\n{traceback.format_exc()}")
        self.crashes.applied()
        if self.crashes.suspect is not None:
            self.crashes.forget(topic, partition, offset + 1)
        if problem is None:
            return True
        self._quarantine(record, problem)
        return False

    def _quarantine(self, record: Record, reason: str) -> None:
        self.letters.add(
            DeadLetter.of(
                topic=record.topic.value,
                partition=record.partition,
                offset=record.offset,
                key=record.key,
                reason=reason,
                value=record.value,
                size=record.size,
            )
        )

    def close(self) -> None:
        self.crashes.close()
