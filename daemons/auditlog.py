"""The security audit log: one JSON line per security-relevant event, hash-chained.

Each line carries ``prev`` (the previous line's hash) and ``hash`` (SHA-256 of the line's
canonical JSON without ``hash``), so editing, inserting or deleting a line breaks
:func:`verify` from there on. Several processes (Central, the registry) append to the
same file: each append takes an exclusive ``flock``, reads the chain's head from the
file's tail and writes the line before the lock is released, so the chain stays one
line of descent and a killed process loses no entry. The file is fsynced at most once
a second (``SYNC_INTERVAL_S``) and at close: a power cut can cost the last second, and
a storm of logins does not wait on the disk once per line.

Cutting lines off the end leaves a shorter valid chain: :func:`verify` reports the head
(sequence number and hash), which an operator can keep elsewhere to detect that.

Entries never hold secrets: callers pass ids, addresses and reasons; detail keys that
name a secret (``secret``, ``token``, ``password``, ``key``, ``*_key``...) are refused;
ids of keys and tokens (``key_id``) are fine.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator

__all__ = ["AuditLog", "AuditEntry", "VerifyResult", "verify", "read_entries", "GENESIS"]

#: ``prev`` of the first entry.
GENESIS = "0" * 64
_FORBIDDEN = ("secret", "token", "password", "key", "credentials")
_FORBIDDEN_SUFFIXES = ("_secret", "_token", "_password", "_key")
#: At most one entry per coalescing key and this many seconds; the rest are counted.
COALESCE_S = 1.0
#: The file is fsynced at most this often (and when closed).
SYNC_INTERVAL_S = 1.0
_TAIL = 64 * 1024


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    hash: str
    line: dict[str, Any]


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _digest(entry: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


class AuditLog:
    """Append-only, hash-chained JSON lines at ``path`` (created 0600)."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._held: dict[str, tuple[float, int]] = {}  # coalescing key -> (last written, held back since)
        self._synced = time.monotonic()
        self._unsynced = False

    def close(self) -> None:
        if self._fd >= 0:
            if self._unsynced:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _head(self) -> tuple[int, str]:
        size = os.fstat(self._fd).st_size
        if size == 0:
            return 0, GENESIS
        start = max(0, size - _TAIL)
        tail = os.pread(self._fd, size - start, start)
        lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
        try:
            last = json.loads(lines[-1])
            return int(last["seq"]), str(last["hash"])
        except (ValueError, KeyError, TypeError):
            # A torn or damaged last line: chain on from a marker that verify() will flag.
            return -1, "damaged"

    def record(
        self,
        *,
        actor: str,
        source: str,
        action: str,
        obj: str,
        outcome: str,
        coalesce: str | None = None,
        **details: Any,
    ) -> dict[str, Any] | None:
        """Append one entry (returned). ``actor`` who (``cp:CP001``, ``operator:alice``,
        ``anonymous``), ``source`` from where (an IP address, ``cli``, ``kafka:TOPIC``),
        ``action`` what (``auth``, ``register``, ``stop``...), ``obj`` on what, ``outcome``
        ``ok``/``refused``/``failed``. With ``coalesce``, at most one entry per key per
        second is written; the next one says how many were held back (None when held)."""
        bad = [k for k in details if k.lower() in _FORBIDDEN or k.lower().endswith(_FORBIDDEN_SUFFIXES)]
        if bad:
            raise ValueError(f"audit details must not hold secrets: {bad}")
        now = time.monotonic()
        if coalesce is not None:
            last, held = self._held.get(coalesce, (0.0, 0))
            if now - last < COALESCE_S:
                self._held[coalesce] = (last, held + 1)
                return None
            self._held[coalesce] = (now, 0)
            if held:
                details["held_back"] = held
            if len(self._held) > 10_000:  # bounded: forget the keys gone quiet
                self._held = {k: v for k, v in self._held.items() if now - v[0] < COALESCE_S}
        entry: dict[str, Any] = {
            "ts": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "actor": actor,
            "source": source,
            "action": action,
            "object": obj,
            "outcome": outcome,
        }
        if details:
            entry["details"] = details
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            seq, prev = self._head()
            entry["seq"] = seq + 1
            entry["prev"] = prev
            entry["hash"] = _digest(entry)
            os.write(self._fd, _canonical(entry) + b"\n")
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._unsynced = True
        if now - self._synced >= SYNC_INTERVAL_S:
            os.fsync(self._fd)
            self._synced, self._unsynced = now, False
        return entry


def read_entries(path: str, *, limit: int | None = None) -> list[dict[str, Any]]:
    """The newest ``limit`` entries (all when None), oldest first; damaged lines skipped."""
    out: list[dict[str, Any]] = []
    for _, entry in _lines(path):
        if isinstance(entry, dict):
            out.append(entry)
            if limit is not None and len(out) > limit:
                out.pop(0)
    return out


def _lines(path: str) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                yield number, json.loads(raw)
            except ValueError:
                yield number, None


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    #: First line (1-based) where the chain breaks, and why.
    bad_line: int | None = None
    reason: str = ""


def verify(path: str) -> VerifyResult:
    """Walk the chain from the first line; the first line that breaks it, or the head."""
    prev, seq, count = GENESIS, 0, 0
    for number, entry in _lines(path):
        if not isinstance(entry, dict) or "hash" not in entry:
            return VerifyResult(False, count, seq, prev, number, "not an audit entry (damaged or inserted)")
        if entry.get("prev") != prev:
            return VerifyResult(
                False,
                count,
                seq,
                prev,
                number,
                "does not follow the line before it (a line was deleted, inserted or reordered)",
            )
        if entry.get("seq") != seq + 1:
            return VerifyResult(False, count, seq, prev, number, f"sequence {entry.get('seq')} after {seq}")
        if _digest(entry) != entry["hash"]:
            return VerifyResult(False, count, seq, prev, number, "its content does not match its hash (edited)")
        prev, seq, count = entry["hash"], entry["seq"], count + 1
    return VerifyResult(True, count, seq, prev)
