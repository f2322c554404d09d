"""How Central takes in Kafka records: a batch per transaction, and nothing that can stop it.

Each batch is decoded, decided by the core and stored in one transaction with the
offsets that move past it. A record that cannot be applied is quarantined in that
same transaction (a dead letter in the database), never retried:

- it does not decode or breaks a field's rule (``EventDecodeError``),
- it is not sealed or signed as its topic requires, by the party it speaks for
  (``SealError``: also audited),
- it refers to nothing Central knows or contradicts it (``RecordRefused``),
- applying it raises anything else, or the database refuses its effects: the
  batch is rolled back, the core rebuilt from the database, and the batch applied
  again one record at a time, so only the record at fault is set aside,
- it killed Central outright (the crash mark, :class:`~..quarantine.CrashGuard`):
  after the first such death its batch is applied one record at a time, and a
  record that killed Central three times is set aside unapplied.
"""

from __future__ import annotations

import collections
import logging
from typing import Callable

from evproto.bus.consumer import Record
from evproto.bus.events import EventDecodeError, decode_event
from evproto.bus.seal import SealError
from evproto.domain.central import Effect, RecordRefused
from evproto.domain.events import Event
from evproto.ratelog import RateLimitedLog

from ..quarantine import CrashGuard, DeadLetter, Verdict
from .store import Position

__all__ = ["RecordIntake"]

log = logging.getLogger("evproto.central")

Offsets = dict[tuple[str, int], Position]


class RecordIntake:
    """Applies batches of records through ``decide`` (the core) and ``commit`` (one transaction).

    ``commit(effects, offsets, dead_letters)`` stores and then carries out effects;
    ``recover()`` rebuilds the core from the database after a failure that may have
    left it half-changed; ``seen(event, now_ms)`` is told of every valid event.
    """

    def __init__(
        self,
        *,
        guard: CrashGuard,
        decide: Callable[[Event, int], list[Effect]],
        commit: Callable[[list[Effect], Offsets, list[DeadLetter]], None],
        recover: Callable[[], None],
        seen: Callable[[Event, int], None] = lambda event, now_ms: None,
        counters: collections.Counter[str] | None = None,
        decode: Callable[[Record, int], Event] | None = None,
        refused: Callable[[Record, SealError], None] = lambda record, exc: None,
    ) -> None:
        self.guard = guard
        self.decide = decide
        self.commit = commit
        self.recover = recover
        self.seen = seen
        self.counters = counters if counters is not None else collections.Counter()
        #: Record -> event: the schema alone, or the gate (envelope, sender, then schema).
        self.decode = decode or (lambda r, now_ms: decode_event(r.value, now_ms=now_ms, size=r.size))
        #: Told of every record refused for its envelope (not sealed or signed as it must be).
        self.refused = refused
        self._warn = RateLimitedLog(log)

    def apply(self, batch: list[Record], now_ms: int) -> None:
        """Apply ``batch`` (records in offset order per partition); never raises for a record's sake."""
        if any(self.guard.verdict(r.topic.value, r.partition, r.offset) is not Verdict.APPLY for r in batch):
            for record in batch:
                self._apply_alone(record, now_ms)
            return
        self.guard.applying(_ranges(batch))
        try:
            effects: list[Effect] = []
            dead: list[DeadLetter] = []
            for record in batch:
                effects += self._decide(record, now_ms, dead)
            self.commit(effects, _offsets(batch), dead)
            self._kept(dead)
        except Exception as exc:
            self._warn.log(
                logging.ERROR,
                f"a batch of {len(batch)} record(s) failed ({type(exc).__name__}: {exc}): "
                "applying its records one at a time",
            )
            self.counters["batches_retried"] += 1
            self.recover()
            for record in batch:
                self._apply_alone(record, now_ms)
            return
        self.guard.applied()

    def _apply_alone(self, record: Record, now_ms: int) -> None:
        where = {(record.topic.value, record.partition): Position(record.offset + 1, record.topic_id)}
        verdict = self.guard.verdict(record.topic.value, record.partition, record.offset)
        if verdict is Verdict.QUARANTINE:
            crashes = self.guard.crashes_on(record.topic.value, record.partition, record.offset)
            letters = [self._letter(record, f"Central died {crashes} times applying it")]
            self.commit([], where, letters)
            self._kept(letters)
            return
        self.guard.applying(_ranges([record]))
        try:
            dead: list[DeadLetter] = []
            effects = self._decide(record, now_ms, dead)
            self.commit(effects, where, dead)
        except Exception as exc:
            log.debug("applying %s[%d]@%d failed", record.topic.value, record.partition, record.offset, exc_info=True)
            self.recover()
            dead = [self._letter(record, f"applying it failed: {type(exc).__name__}: {exc}")]
            self.commit([], where, dead)
        self._kept(dead)
        self.guard.applied()

    def _decide(self, record: Record, now_ms: int, dead: list[DeadLetter]) -> list[Effect]:
        try:
            event = self.decode(record, now_ms)
        except EventDecodeError as exc:
            dead.append(self._letter(record, str(exc)))
            return []
        except SealError as exc:
            self.counters["records_refused_" + exc.why.name.lower()] += 1
            dead.append(self._letter(record, f"refused: {exc}"))
            self.refused(record, exc)
            return []
        self.seen(event, now_ms)
        try:
            return self.decide(event, now_ms)
        except RecordRefused as exc:
            dead.append(self._letter(record, str(exc)))
            return []

    @staticmethod
    def _letter(record: Record, reason: str) -> DeadLetter:
        return DeadLetter.of(
            topic=record.topic.value,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            reason=reason,
            value=record.value,
            size=record.size,
        )

    def _kept(self, letters: list[DeadLetter]) -> None:
        """Count and log (rate-limited) dead letters once their transaction committed."""
        for letter in letters:
            self.counters["quarantined"] += 1
            self._warn.log(logging.WARNING, letter.describe())


def _offsets(batch: list[Record]) -> Offsets:
    out: Offsets = {}
    for r in batch:
        out[(r.topic.value, r.partition)] = Position(r.offset + 1, r.topic_id)  # with the log it came from
    return out


def _ranges(batch: list[Record]) -> list[tuple[str, int, int, int]]:
    spans: dict[tuple[str, int], list[int]] = {}
    for r in batch:
        span = spans.setdefault((r.topic.value, r.partition), [r.offset, r.offset])
        span[0], span[1] = min(span[0], r.offset), max(span[1], r.offset)
    return [(t, p, a, b) for (t, p), (a, b) in spans.items()]
