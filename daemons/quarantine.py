"""Records that cannot be applied are set aside, never allowed to stop or loop a reader.

The rule every Kafka reader of the network follows (Central, engines, drivers):

- A record that cannot be applied (malformed, out of range, refers to nothing,
  breaks a constraint, or makes the code raise) is **quarantined**: kept as a
  :class:`DeadLetter` (topic, partition, offset, key, reason and the first
  ``MAX_KEPT_BYTES`` of its value), counted, logged once per kind of reason (rate
  limited), and the reader moves past it. Central keeps dead letters in its
  database, in the same transaction as the offset that moves past them; engines
  and drivers in a bounded file (:class:`DeadLetterFile`).
- A record that kills the process anyway (an interpreter crash, the OOM killer)
  must not be re-read forever. :class:`CrashGuard` writes down what is being
  applied before applying it. A process that finds that mark at start-up died
  while applying those records: it applies them again one at a time, and a record
  that has killed it ``max_crashes`` times is quarantined without being applied.

The mark is written without fsync on purpose: it must survive the death of the
process (the page cache keeps it), not a power cut, and it is written per batch.
"""

from __future__ import annotations

import base64
import enum
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from evproto.ratelog import RateLimitedLog

__all__ = ["MAX_KEPT_BYTES", "DeadLetter", "DeadLetterFile", "Verdict", "CrashGuard"]

log = logging.getLogger("evproto.quarantine")

#: Bytes of a quarantined record's value that are kept (the rest is only counted).
MAX_KEPT_BYTES = 4096
#: Characters of a record's key and of a reason that are kept.
MAX_KEY_CHARS = 256
MAX_REASON_CHARS = 512


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """A record set aside: where it was, why, and (the start of) what it held."""

    topic: str
    partition: int
    offset: int
    key: str | None
    reason: str
    value: bytes | None
    ts_ms: int
    #: The value's full size (it may have been cut before it reached us: ``Record.size``).
    size: int

    @classmethod
    def of(
        cls,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: str | None,
        reason: str,
        value: bytes | None,
        ts_ms: int | None = None,
        size: int | None = None,
    ) -> DeadLetter:
        """A dead letter with every part bounded."""
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            key=None if key is None else key[:MAX_KEY_CHARS],
            reason=reason[:MAX_REASON_CHARS],
            value=None if value is None else value[:MAX_KEPT_BYTES],
            ts_ms=int(time.time() * 1000) if ts_ms is None else ts_ms,
            size=len(value or b"") if size is None else size,
        )

    @property
    def kept(self) -> bytes:
        return (self.value or b"")[:MAX_KEPT_BYTES]

    def describe(self) -> str:
        """One log line: where and why (never the value: it may be huge or hostile)."""
        key = "no key" if self.key is None else f"key {ascii(self.key[:40])}"
        return f"quarantined {self.topic}[{self.partition}]@{self.offset} ({key}, {self.size} bytes): {self.reason}"


class DeadLetterFile:
    """Dead letters as JSON lines in a file (0600), bounded: past ``max_bytes`` the file is
    rotated to ``PATH.1`` (the previous ``.1`` is dropped)."""

    def __init__(self, path: str, *, max_bytes: int = 1 << 20) -> None:
        self.path = path
        self.max_bytes = max_bytes
        #: Dead letters written by this process.
        self.count = 0
        self._warn = RateLimitedLog(log)

    def add(self, letter: DeadLetter) -> None:
        self.count += 1
        self._warn.log(logging.WARNING, letter.describe())
        line = (
            json.dumps(
                {
                    "ts_ms": letter.ts_ms,
                    "topic": letter.topic,
                    "partition": letter.partition,
                    "offset": letter.offset,
                    "key": letter.key,
                    "reason": letter.reason,
                    "size": letter.size,
                    "value_b64": base64.b64encode(letter.kept).decode("ascii"),
                },
                ensure_ascii=True,
            )
            + "\n"
        )
        try:
            if os.path.exists(self.path) and os.path.getsize(self.path) + len(line) > self.max_bytes:
                os.replace(self.path, self.path + ".1")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode("ascii"))
            finally:
                os.close(fd)
        except OSError as exc:  # a full disk must not turn a bad record into a crash
            self._warn.log(logging.ERROR, f"cannot keep a dead letter in {self.path}: {exc}")

    def read(self) -> list[dict[str, Any]]:
        """The dead letters in the file (oldest first), for tools and tests."""
        out = []
        for path in (self.path + ".1", self.path):
            try:
                with open(path, encoding="ascii") as fh:
                    out += [json.loads(line) for line in fh if line.strip()]
            except OSError:
                continue
        return out


class Verdict(enum.Enum):
    """What to do with a record, given what killed the previous run."""

    APPLY = "apply"
    #: It was in a batch that killed the previous run: apply it on its own, marked.
    APPLY_ALONE = "apply_alone"
    #: It killed the process max_crashes times: quarantine it without applying it.
    QUARANTINE = "quarantine"


Range = tuple[str, int, int, int]  # topic, partition, first offset, last offset


class CrashGuard:
    """The mark of the records being applied (a small file next to the reader's state).

    ``applying(ranges)`` before applying records, ``applied()`` once their effects are
    stored; ``verdict(topic, partition, offset)`` for each record read. A process
    that died between the two leaves the mark behind for the next start to find.
    """

    def __init__(self, path: str, *, max_crashes: int = 3) -> None:
        if max_crashes < 1:
            raise ValueError("max_crashes must be >= 1")
        self.path = path
        self.max_crashes = max_crashes
        #: What the previous run was applying when it died, and how many runs died on it.
        self.suspect: tuple[list[Range], int] | None = None
        self._fd: int | None = None
        self._marked = False
        self._load()

    def _load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read the crash mark %s: %s", self.path, exc)
            return
        try:
            mark = json.loads(text) if text.strip() else None
            if mark is None:
                return
            ranges = [(str(t), int(p), int(a), int(b)) for t, p, a, b in mark["ranges"]]
            crashes = int(mark["crashes"]) + 1
        except (ValueError, KeyError, TypeError) as exc:  # torn by a power cut: start afresh
            log.warning("ignoring an unreadable crash mark in %s: %s", self.path, exc)
            return
        # The mark has been read: what killed the previous run is now in memory. Clearing
        # the file means a later death that has nothing to do with these records (a
        # kill while idle) is not counted against them.
        self._write("")
        if ranges:
            self.suspect = (ranges, crashes)
            where = ", ".join(f"{t}[{p}]@{a}" + (f"..{b}" if b != a else "") for t, p, a, b in ranges)
            log.warning(
                "the previous run died while applying %s (%d time(s)): applying those records one at a time",
                where,
                crashes,
            )

    def verdict(self, topic: str, partition: int, offset: int) -> Verdict:
        if self.suspect is None:
            return Verdict.APPLY
        ranges, crashes = self.suspect
        for t, p, first, last in ranges:
            if t == topic and p == partition and first <= offset <= last:
                if first == last and len(ranges) == 1 and crashes >= self.max_crashes:
                    return Verdict.QUARANTINE
                return Verdict.APPLY_ALONE
        return Verdict.APPLY

    def crashes_on(self, topic: str, partition: int, offset: int) -> int:
        """How many runs died applying exactly this record (0 if not known)."""
        if self.suspect is None:
            return 0
        ranges, crashes = self.suspect
        return crashes if ranges == [(topic, partition, offset, offset)] else 0

    def applying(self, ranges: list[Range]) -> None:
        """Mark ``ranges`` as being applied (before applying them)."""
        crashes = 0
        if self.suspect is not None and ranges == self.suspect[0]:
            crashes = self.suspect[1]  # the same records again: count on
        self._write(json.dumps({"ranges": ranges, "crashes": crashes}, separators=(",", ":")))
        self._marked = True

    def applied(self) -> None:
        """The marked records' effects are stored: clear the mark."""
        if self._marked:
            self._write("")
            self._marked = False

    def forget(self, topic: str, partition: int, below: int) -> None:
        """Records of ``topic[partition]`` before ``below`` are settled: stop suspecting them."""
        if self.suspect is None:
            return
        ranges, crashes = self.suspect
        left = [r for r in ranges if not (r[0] == topic and r[1] == partition and r[3] < below)]
        self.suspect = (left, crashes) if left else None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write(self, text: str) -> None:
        data = text.encode("utf-8")
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.pwrite(self._fd, data, 0)
            os.ftruncate(self._fd, len(data))
        except OSError as exc:  # without the mark we only lose crash-loop protection
            log.warning("cannot write the crash mark %s: %s", self.path, exc)
