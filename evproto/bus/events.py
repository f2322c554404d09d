"""The events' JSON codec for Kafka (pure: bytes <-> the typed events of evproto.domain.events).

Every record value is one JSON object ``{"v": 1, "type": "<type>", ...fields}``.
``v`` is the schema version: a reader refuses other major versions rather than
guessing. Unknown extra fields are ignored (a newer writer may add optional
fields without bumping ``v``); missing, mistyped or out-of-range fields are an
:class:`EventDecodeError`. The rules are the events' own
(:mod:`evproto.domain.events`), checked on both sides: readers do not re-check,
writers never write what a reader would refuse.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from ..domain.events import EVENT_TYPES, FUTURE_SLACK_MS, Event, check_event, schema_of
from ..errors import EvprotoError

__all__ = ["EVENT_VERSION", "MAX_EVENT_BYTES", "EventDecodeError", "EventEncodeError", "encode_event", "decode_event"]

EVENT_VERSION = 1

#: Largest record value a reader accepts and a writer produces, in bytes. Our largest
#: event is well under 2 KiB; the margin is for signed meter data and sealing.
MAX_EVENT_BYTES = 16 * 1024


class EventDecodeError(EvprotoError):
    """A Kafka record that is not a valid event: bad JSON, wrong version, missing,
    mistyped or out-of-range field, inconsistent figures."""


class EventEncodeError(EvprotoError):
    """An event that cannot be written: a string with lone surrogates, an integer beyond
    64 bits, a non-finite number, or a value larger than MAX_EVENT_BYTES."""


# -- codec -----------------------------------------------------------------------------------


def encode_event(event: Event, *, validate: bool = True) -> bytes:
    """The JSON bytes of ``event`` (compact, UTF-8).

    Fields in declaration order, no spaces, non-ASCII as UTF-8. orjson writes it
    four to five times faster than the json module (the bytes differ only in how
    exponents are spelt: ``1e-5``, not ``1e-05``): this is Central's hottest path
    (docs/performance.md, capacity).

    The event is checked against the same rules as :func:`decode_event` (except the
    reader's clock): we never write what a reader would quarantine, and never a value
    over MAX_EVENT_BYTES. Raises EventEncodeError saying what is wrong.
    ``validate=False`` skips the field rules (not the size and finiteness checks) for
    an event built only from values already checked, such as Central relaying a reading.
    """
    schema = schema_of(type(event))
    obj: dict[str, Any] = {"v": EVENT_VERSION, "type": event.TYPE}
    for name, _conv, _opt in schema.fields:
        obj[name] = getattr(event, name)
    for name in schema.floats:
        value = obj[name]
        if value is not None and not math.isfinite(value):
            raise EventEncodeError(f"cannot encode {event.TYPE}: {name} is {value!r} (JSON numbers are finite)")
    try:
        if validate:
            check_event(event)
    except (TypeError, ValueError) as exc:
        raise EventEncodeError(f"cannot encode {event.TYPE}: {exc}") from None
    try:
        data = orjson.dumps(obj)
    except TypeError as exc:  # orjson.JSONEncodeError: a str with lone surrogates, an int over 64 bits
        raise EventEncodeError(f"cannot encode {event.TYPE}: {exc}") from None
    if len(data) > MAX_EVENT_BYTES:
        raise EventEncodeError(f"cannot encode {event.TYPE}: {len(data)} bytes (at most {MAX_EVENT_BYTES})")
    return data


def decode_event(data: bytes | str | None, *, now_ms: int | None = None, size: int | None = None) -> Event:
    """Parse and validate one record value; raises EventDecodeError saying what is wrong.

    Every field is checked against its rule (type, range, id and text rules) and
    the figures against each other. With ``now_ms`` (the reader's clock) no time
    stamp may lie more than FUTURE_SLACK_MS ahead of it. A value larger than
    MAX_EVENT_BYTES is refused before it is parsed; ``size`` is the value's full size
    when the reader kept only the start of it (``Record.size``).
    """
    if data is None:
        raise EventDecodeError("empty record (no value)")
    full = len(data) if size is None else size
    if full > MAX_EVENT_BYTES:
        raise EventDecodeError(f"record of {full} bytes (at most {MAX_EVENT_BYTES})")
    try:
        obj = orjson.loads(data)
    except ValueError as exc:  # orjson.JSONDecodeError, invalid UTF-8 included
        raise EventDecodeError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise EventDecodeError(f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("v")
    if version != EVENT_VERSION:
        raise EventDecodeError(f"unsupported event version {ascii(version)[:20]} (this reader speaks {EVENT_VERSION})")
    type_name = obj.get("type")
    cls = EVENT_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise EventDecodeError(f"unknown event type {ascii(type_name)[:40]}")
    schema = schema_of(cls)
    kwargs: dict[str, Any] = {}
    try:
        for name, conv, optional in schema.fields:
            value = obj.get(name, _MISSING)
            if value is _MISSING:
                continue  # the dataclass raises for a missing required field
            kwargs[name] = None if value is None and optional else conv(value)
        event = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise EventDecodeError(f"{type_name}: {exc}") from None
    problem = schema.check(event) if schema.check is not None else None
    if problem is None and now_ms is not None:
        latest = now_ms + FUTURE_SLACK_MS
        for name in schema.times:
            stamp = kwargs.get(name)
            if stamp is not None and stamp > latest:
                problem = f"{name} {stamp} is more than a day ahead of the reader's clock"
                break
    if problem is not None:
        raise EventDecodeError(f"{type_name}: {problem}")
    return event


_MISSING = object()
