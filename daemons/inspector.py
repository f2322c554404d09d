"""The event inspector's records: a Kafka record's bytes decoded, opened when allowed, filtered, shown.

What Kafka UI gave the students, for our topics: each record with its topic, partition,
offset, key, time and event type, the event as JSON, filters by topic, partition, CP and
driver. This module is pure but for the keys it is given (no Kafka, no clock of its
own); :mod:`.eventreader` reads the records from Kafka, :mod:`.centraldb` gives Central's
keys to whoever may use them. Used by ``evcharging events`` (:mod:`.launcher.events_cmd`)
and by Central's ``/api/v1/events`` (:mod:`.central.events_api`).

:func:`inspect_value` turns one record's bytes into an :class:`InspectedRecord`: plain
JSON is decoded with the events' schemas, a signed record's payload is decoded (and its
signature checked when the verify key is known), a sealed record is opened only with a
:class:`~.gate.KeyBook` (Central's keys); without one it is shown sealed, with its
envelope's metadata. Whatever the bytes, the answer is a record with ``error`` saying
what is wrong, never an exception. Bounded: values over ``MAX_EVENT_BYTES`` are not
decoded, keys are cut, an undecodable value's preview is 200 bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, Iterator

from evproto.bus import seal
from evproto.bus.events import MAX_EVENT_BYTES, EventDecodeError, decode_event
from evproto.bus.seal import SealError, Why
from evproto.bus.topics import Topic
from evproto.domain.central.view import iso_utc
from evproto.domain.events import Event

from .gate import KeyBook, Policy

__all__ = [
    "CAUGHT_UP",
    "CaughtUp",
    "MAX_KEY_CHARS",
    "RAW_PREVIEW_BYTES",
    "InspectedRecord",
    "EventFilter",
    "StartAt",
    "StartKind",
    "inspect_value",
    "summary",
    "newest",
]

#: Characters of a record's key that are kept (ours are ids of at most 64).
MAX_KEY_CHARS = 256
#: Bytes of an undecodable value shown (escaped) to say what it was.
RAW_PREVIEW_BYTES = 200


class CaughtUp:
    """Marker yielded once every partition's history up to the start has been read."""

    def __repr__(self) -> str:
        return "CAUGHT_UP"


CAUGHT_UP = CaughtUp()


@dataclass(frozen=True, slots=True, kw_only=True)
class InspectedRecord:
    """One Kafka record as the inspector shows it.

    ``sealed``: the value is in a sealed (encrypted) envelope; ``opened``: it was opened
    with the key that sealed it (``sealed_by`` names the key's owner). ``signed``: the
    value is signed by Central (readable by all); ``verified``: the signature was
    checked. ``event`` is the decoded event (``type`` and every field), None when it is
    sealed and not opened or cannot be decoded; ``error`` says why it could not be
    decoded, opened or trusted (None: nothing wrong). ``envelope``: the key id, counter
    and event type a sealed or signed record's header carries.
    """

    topic: str
    partition: int
    offset: int
    key: str | None
    timestamp_ms: int
    time: str | None
    event_type: str | None
    event: dict[str, Any] | None
    sealed: bool
    opened: bool
    signed: bool = False
    verified: bool = False
    sealed_by: str | None = None
    envelope: dict[str, Any] | None = None
    size: int = 0
    error: str | None = None
    #: The start of an undecodable plain value, escaped (never of a sealed one).
    raw: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Every field, JSON-able."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def closed(self) -> InspectedRecord:
        """The same record as someone without the keys sees it: a sealed record's content
        (event, who sealed it) left out; plain and signed records are unchanged."""
        if not self.sealed or not self.opened:
            return self
        # Whatever was learnt by opening it (its fields, what is wrong with them) stays out.
        return dataclasses.replace(self, event=None, opened=False, sealed_by=None, error=None, raw=None)


def _event_json(event: Event) -> dict[str, Any]:
    out: dict[str, Any] = {"type": event.TYPE}
    for f in dataclasses.fields(event):  # type: ignore[arg-type]
        out[f.name] = getattr(event, f.name)
    return out


def _preview(value: bytes) -> str:
    return value[:RAW_PREVIEW_BYTES].decode("utf-8", "backslashreplace")


def inspect_value(
    *,
    topic: Topic,
    partition: int,
    offset: int,
    key: str | None,
    value: bytes | None,
    timestamp_ms: int,
    size: int | None = None,
    keys: KeyBook | None = None,
    open_sealed: bool = True,
    policy: dict[Topic, Policy] | None = None,
    now_ms: int | None = None,
) -> InspectedRecord:
    """One record, decoded and (with ``keys``) opened; every problem is in ``error``.

    ``size``: the value's full size when only its start was kept. ``open_sealed=False``:
    ``keys`` only check signatures; sealed records stay closed. ``policy``: what the
    network requires of each topic (a plain record where a sealed one is required is
    shown, with the error the network's readers would give it).
    """
    if key is not None and len(key) > MAX_KEY_CHARS:
        key = key[:MAX_KEY_CHARS]
    full = size if size is not None else len(value or b"")
    base: dict[str, Any] = dict(
        topic=topic.value,
        partition=partition,
        offset=offset,
        key=key,
        timestamp_ms=timestamp_ms,
        time=iso_utc(timestamp_ms) if timestamp_ms >= 0 else None,
        size=full,
    )
    if value is None:
        return InspectedRecord(**base, event_type=None, event=None, sealed=False, opened=False, error="no value")
    if full > MAX_EVENT_BYTES:
        return InspectedRecord(
            **base,
            event_type=None,
            event=None,
            sealed=value[:4] == seal.SEALED_MAGIC,
            opened=False,
            error=f"{full} bytes, more than an event may have ({MAX_EVENT_BYTES}): not decoded",
        )
    try:
        envelope = seal.peek(value)
    except SealError as exc:
        return InspectedRecord(
            **base,
            event_type=None,
            event=None,
            sealed=value[:4] == seal.SEALED_MAGIC,
            signed=value[:4] == seal.SIGNED_MAGIC,
            opened=False,
            error=str(exc),
        )
    required = (policy or {}).get(topic, Policy.PLAIN)
    if envelope is None:
        return _plain(base, value, required, now_ms)
    meta = {"key_id": envelope.key_id, "counter": envelope.counter, "event_type": envelope.event_type}
    if envelope.signed:
        return _signed(base, envelope, meta, topic, key, keys, required, now_ms)
    return _sealed(base, envelope, meta, topic, key, keys if open_sealed else None, required, now_ms)


def _plain(base: dict[str, Any], value: bytes, required: Policy, now_ms: int | None) -> InspectedRecord:
    problem = None
    if required is not Policy.PLAIN:
        why = Why.NOT_SEALED if required is Policy.SEALED else Why.NOT_SIGNED
        problem = f"{why.value}: the network's readers refuse it"
    try:
        event = decode_event(value, now_ms=now_ms)
    except EventDecodeError as exc:
        return InspectedRecord(
            **base,
            event_type=None,
            event=None,
            sealed=False,
            opened=False,
            error=str(exc) if problem is None else f"{problem}; {exc}",
            raw=_preview(value),
        )
    return InspectedRecord(
        **base, event_type=event.TYPE, event=_event_json(event), sealed=False, opened=False, error=problem
    )


def _decode_inner(plaintext: bytes, envelope: seal.Envelope, now_ms: int | None) -> tuple[Event | None, str | None]:
    try:
        event = decode_event(plaintext, now_ms=now_ms)
    except EventDecodeError as exc:
        return None, str(exc)
    if event.TYPE != envelope.event_type:
        return event, f"{Why.WRONG_TYPE.value}: {event.TYPE} in an envelope for {envelope.event_type}"
    return event, None


def _signed(
    base: dict[str, Any],
    envelope: seal.Envelope,
    meta: dict[str, Any],
    topic: Topic,
    key: str | None,
    keys: KeyBook | None,
    required: Policy,
    now_ms: int | None,
) -> InspectedRecord:
    problems = []
    if required is Policy.SEALED:
        problems.append(f"{Why.NOT_SEALED.value}: signed where it must be sealed")
    verified = False
    if keys is not None:
        try:
            seal.verify_signed(keys.verify_key(envelope.key_id), envelope, topic=topic.value, record_key=key or "")
            verified = True
        except SealError as exc:
            problems.append(f"signature: {exc}")
    event, problem = _decode_inner(envelope.body, envelope, now_ms)
    if problem is not None:
        problems.append(problem)
    return InspectedRecord(
        **base,
        event_type=event.TYPE if event is not None else envelope.event_type,
        event=_event_json(event) if event is not None else None,
        sealed=False,
        opened=False,
        signed=True,
        verified=verified,
        sealed_by="central" if verified else None,
        envelope={"kind": "signed", **meta},
        error="; ".join(problems) or None,
        raw=_preview(envelope.body) if event is None else None,
    )


def _sealed(
    base: dict[str, Any],
    envelope: seal.Envelope,
    meta: dict[str, Any],
    topic: Topic,
    key: str | None,
    keys: KeyBook | None,
    required: Policy,
    now_ms: int | None,
) -> InspectedRecord:
    closed: dict[str, Any] = dict(
        **base,
        event_type=envelope.event_type,
        event=None,
        sealed=True,
        opened=False,
        envelope={"kind": "sealed", **meta},
    )
    mismatch = f"{Why.NOT_SIGNED.value}: sealed where it must be signed" if required is Policy.SIGNED else None
    if keys is None:
        return InspectedRecord(**closed, error=mismatch)
    try:
        owner, secret = keys.record_key(envelope.key_id)
        plaintext = seal.open_sealed(secret, envelope, topic=topic.value, record_key=key or "")
    except SealError as exc:
        return InspectedRecord(**closed, error=str(exc))
    event, problem = _decode_inner(plaintext, envelope, now_ms)
    problems = [p for p in (mismatch, problem) if p is not None]
    closed.update(
        event_type=event.TYPE if event is not None else envelope.event_type,
        event=_event_json(event) if event is not None else None,
        opened=True,
        sealed_by=str(owner),
        error="; ".join(problems) or None,
    )
    return InspectedRecord(**closed)


# -- filters and start positions -------------------------------------------------------------

#: The event field naming each kind of party, and the topics whose record key is that party's id.
_KEY_IS_CP = frozenset({Topic.CP_COMMANDS, Topic.CP_EVENTS, Topic.CP_STATE})
_KEY_IS_DRIVER = frozenset({Topic.DRIVER_REQUESTS, Topic.DRIVER_EVENTS})


@dataclass(frozen=True, slots=True, kw_only=True)
class EventFilter:
    """Which records to show: some topics, some partitions (empty: all), about one CP,
    about one driver (every given condition must hold). A record is about a CP or driver when its key is that id on a
    topic keyed by it, or when its decoded event names it (``cp_id``, ``driver_id``); a
    sealed record that is not opened is matched by its key only."""

    topics: tuple[Topic, ...] = tuple(Topic)
    partitions: tuple[int, ...] = ()
    cp_id: str | None = None
    driver_id: str | None = None

    def matches(self, record: InspectedRecord) -> bool:
        topic = Topic(record.topic)
        if topic not in self.topics or (self.partitions and record.partition not in self.partitions):
            return False
        if self.cp_id is not None and not _names(record, topic, _KEY_IS_CP, "cp_id", self.cp_id):
            return False
        if self.driver_id is not None and not _names(record, topic, _KEY_IS_DRIVER, "driver_id", self.driver_id):
            return False
        return True


def _names(record: InspectedRecord, topic: Topic, keyed: frozenset[Topic], field: str, wanted: str) -> bool:
    if topic in keyed and record.key == wanted:
        return True
    return record.event is not None and record.event.get(field) == wanted


class StartKind(enum.Enum):
    LAST = "last"  # the last ``value`` records of each partition (0: only new ones)
    BEGINNING = "beginning"
    OFFSET = "offset"  # from offset ``value`` in each partition
    TIME = "time"  # from the first record at or after epoch ms ``value``


@dataclass(frozen=True, slots=True)
class StartAt:
    """Where reading starts in each partition."""

    kind: StartKind
    value: int = 0

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError("a start position is >= 0")

    @classmethod
    def last(cls, n: int) -> StartAt:
        return cls(StartKind.LAST, n)

    @classmethod
    def beginning(cls) -> StartAt:
        return cls(StartKind.BEGINNING)

    @classmethod
    def offset(cls, offset: int) -> StartAt:
        return cls(StartKind.OFFSET, offset)

    @classmethod
    def time(cls, ts_ms: int) -> StartAt:
        return cls(StartKind.TIME, ts_ms)


# -- showing ---------------------------------------------------------------------------------


def newest(records: Iterator[InspectedRecord | CaughtUp], limit: int) -> list[InspectedRecord]:
    """The newest ``limit`` records of a history read (up to CAUGHT_UP), oldest first by time."""
    kept: collections.deque[InspectedRecord] = collections.deque(maxlen=max(limit, 0))
    for item in records:
        if item is CAUGHT_UP:
            break
        assert isinstance(item, InspectedRecord)
        if limit > 0:
            kept.append(item)
    # Each partition's records arrive in order but partitions interleave as fetched: the
    # deque may have dropped a later record of one partition and kept an earlier one of
    # another. Good enough for a view; sorted by time for reading.
    return sorted(kept, key=lambda r: (r.timestamp_ms, r.topic, r.partition, r.offset))


def summary(record: InspectedRecord, *, width: int = 100) -> str:
    """The event's fields in one short line (what the tables show next to the type)."""
    if record.event is None:
        if record.sealed and not record.opened and record.error is None:
            return f"(sealed, key {record.envelope['key_id'] if record.envelope else '?'})"
        return f"! {record.error}" if record.error else ""
    parts = []
    for name, value in record.event.items():
        if name in ("type",) or value in (None, "") or name.endswith("ts_ms"):
            continue
        if isinstance(value, float):
            value = f"{value:.3f}".rstrip("0").rstrip(".")
        parts.append(f"{name}={value}")
    text = " ".join(parts)
    if record.error:
        text = f"! {record.error} | {text}"
    return text if len(text) <= width else text[: width - 1] + "…"
