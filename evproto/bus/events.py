"""JSON event schemas exchanged through Kafka (pure: bytes <-> typed dataclasses).

Every record value is one JSON object ``{"v": 1, "type": "<type>", ...fields}``.
``v`` is the schema version: a reader refuses other major versions rather than
guessing. Unknown extra fields are ignored (a newer writer may add optional
fields without bumping ``v``); missing or mistyped required fields are an
:class:`EventDecodeError`. Times are epoch milliseconds (``*_ts_ms``). docs/kafka.md
lists every type with its topic and key.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar

import orjson

from ..errors import EvprotoError

__all__ = [
    "EVENT_VERSION",
    "EventDecodeError",
    "EventEncodeError",
    "Event",
    "EVENT_TYPES",
    "encode_event",
    "decode_event",
    "SESSION_STATUSES",
    "SupplyRequest",
    "AuthorizeCommand",
    "StopCommand",
    "ResumeCommand",
    "CancelAuthorization",
    "AuthorizationAnswer",
    "SupplyStarted",
    "SupplyProgress",
    "SupplyFinished",
    "RequestUpdate",
    "DriverTelemetry",
    "Ticket",
    "CpStateRecord",
    "Heartbeat",
]

EVENT_VERSION = 1

#: Session statuses, as Central's API and the driver events spell them.
SESSION_STATUSES = ("requested", "authorized", "supplying", "completed", "interrupted", "denied")


class EventDecodeError(EvprotoError):
    """A Kafka record that is not a valid event: bad JSON, wrong version, missing or mistyped field."""


class EventEncodeError(EvprotoError):
    """An event that cannot be written as JSON: a string with lone surrogates, an integer beyond 64 bits."""


class Event:
    """Base class of all events; ``TYPE`` is the ``type`` field on the wire."""

    __slots__ = ()
    TYPE: ClassVar[str]


EVENT_TYPES: dict[str, type[Event]] = {}
_FIELDS: dict[type, tuple[tuple[str, Callable[[Any], Any], bool], ...]] = {}
_FLOATS: dict[type, tuple[str, ...]] = {}  # orjson would write NaN and infinities as null

_ev = dataclass(frozen=True, slots=True, kw_only=True)


def _checker(hint: Any, name: str) -> tuple[Callable[[Any], Any], bool]:
    """(convert-or-raise, optional) for one annotated field."""
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        (hint,) = args
    if hint is bool:

        def conv(v: Any) -> Any:
            if type(v) is not bool:
                raise TypeError(f"{name}: expected true/false, got {v!r}")
            return v

    elif hint is int:

        def conv(v: Any) -> Any:
            if type(v) is not int:
                raise TypeError(f"{name}: expected an integer, got {v!r}")
            return v

    elif hint is float:

        def conv(v: Any) -> Any:
            if type(v) not in (int, float):
                raise TypeError(f"{name}: expected a number, got {v!r}")
            return float(v)

    elif hint is str:

        def conv(v: Any) -> Any:
            if type(v) is not str:
                raise TypeError(f"{name}: expected a string, got {v!r}")
            return v

    else:  # pragma: no cover - a schema bug, caught at import
        raise TypeError(f"unsupported field type {hint!r} for {name}")
    return conv, optional


def _event(type_name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        cls.TYPE = type_name
        EVENT_TYPES[type_name] = cls
        hints = typing.get_type_hints(cls)
        spec = []
        for f in fields(cls):
            conv, optional = _checker(hints[f.name], f.name)
            spec.append((f.name, conv, optional))
        _FIELDS[cls] = tuple(spec)
        _FLOATS[cls] = tuple(f.name for f in fields(cls) if float in (hints[f.name], *typing.get_args(hints[f.name])))
        return cls

    return deco


# -- driver-requests -------------------------------------------------------------------------


@_event("supply_request")
@_ev
class SupplyRequest(Event):
    """A driver asks to charge at ``cp_id`` (``origin`` "cp": typed at the CP's own menu)."""

    request_id: str
    driver_id: str
    cp_id: str
    ts_ms: int
    origin: str = "driver"
    target_energy_kwh: float | None = None
    target_duration_s: float | None = None


# -- cp-commands -----------------------------------------------------------------------------


@_event("authorize")
@_ev
class AuthorizeCommand(Event):
    """Central allows ``driver_id`` to charge at ``cp_id``; void after ``expires_ts_ms`` if not plugged."""

    cp_id: str
    session_id: int
    driver_id: str
    request_id: str
    price_eur_kwh: float
    expires_ts_ms: int
    ts_ms: int
    target_energy_kwh: float | None = None
    target_duration_s: float | None = None


@_event("stop")
@_ev
class StopCommand(Event):
    """Put the CP out of service; any supply in progress ends."""

    cp_id: str
    ts_ms: int


@_event("resume")
@_ev
class ResumeCommand(Event):
    """Put a stopped CP back in service."""

    cp_id: str
    ts_ms: int


@_event("cancel_authorization")
@_ev
class CancelAuthorization(Event):
    """Withdraw an authorisation that was not used (expired, or the driver left)."""

    cp_id: str
    session_id: int
    reason: str
    ts_ms: int


# -- cp-events -------------------------------------------------------------------------------


@_event("authorization_answer")
@_ev
class AuthorizationAnswer(Event):
    """The CP's answer to an AuthorizeCommand."""

    cp_id: str
    session_id: int
    accepted: bool
    ts_ms: int
    reason: str = ""


@_event("supply_started")
@_ev
class SupplyStarted(Event):
    """The vehicle is plugged in and energy flows."""

    cp_id: str
    session_id: int
    driver_id: str
    started_ts_ms: int
    ts_ms: int


@_event("supply_progress")
@_ev
class SupplyProgress(Event):
    """Telemetry of a running supply, every second."""

    cp_id: str
    session_id: int
    driver_id: str
    energy_kwh: float
    amount_eur: float
    power_kw: float
    elapsed_s: float
    ts_ms: int


@_event("supply_finished")
@_ev
class SupplyFinished(Event):
    """Final figures of a supply; Central turns it into exactly one ticket."""

    cp_id: str
    session_id: int
    driver_id: str
    energy_kwh: float
    amount_eur: float
    price_eur_kwh: float
    started_ts_ms: int
    ended_ts_ms: int
    reason: str
    ts_ms: int
    #: True for a supply served while Central was unreachable (session_id 0 until Central assigns one).
    offline: bool = False
    request_id: str = ""


# -- driver-events ---------------------------------------------------------------------------


@_event("request_update")
@_ev
class RequestUpdate(Event):
    """A step of a driver's request: received, authorized, denied (with reason), supplying, ended."""

    driver_id: str
    request_id: str
    cp_id: str
    status: str
    ts_ms: int
    session_id: int | None = None
    reason: str = ""
    message: str = ""


@_event("driver_telemetry")
@_ev
class DriverTelemetry(Event):
    """Live figures of the driver's supply, relayed by Central (``produced_ts_ms``: the engine's)."""

    driver_id: str
    session_id: int
    cp_id: str
    energy_kwh: float
    amount_eur: float
    power_kw: float
    produced_ts_ms: int
    ts_ms: int


@_event("ticket")
@_ev
class Ticket(Event):
    """The final ticket of a supply."""

    driver_id: str
    session_id: int
    request_id: str
    cp_id: str
    energy_kwh: float
    amount_eur: float
    price_eur_kwh: float
    started_ts_ms: int
    ended_ts_ms: int
    status: str
    end_reason: str
    ts_ms: int


# -- cp-state, central-heartbeat -------------------------------------------------------------


@_event("cp_state")
@_ev
class CpStateRecord(Event):
    """A CP's latest state as Central sees it (compacted topic, key = CP id)."""

    cp_id: str
    location: str
    price_eur_kwh: float
    state: str
    ts_ms: int
    driver_id: str = ""


@_event("heartbeat")
@_ev
class Heartbeat(Event):
    """Central is alive; sent every ``interval_s``."""

    instance_id: str
    started_ts_ms: int
    interval_s: float
    ts_ms: int


# -- codec -----------------------------------------------------------------------------------


def encode_event(event: Event) -> bytes:
    """The JSON bytes of ``event`` (compact, UTF-8).

    Fields in declaration order, no spaces, non-ASCII as UTF-8. orjson writes it
    four to five times faster than the json module (the bytes differ only in how
    exponents are spelt: ``1e-5``, not ``1e-05``): this is Central's hottest path
    (docs/performance.md, capacity).
    """
    obj: dict[str, Any] = {"v": EVENT_VERSION, "type": event.TYPE}
    for name, _conv, _opt in _FIELDS[type(event)]:
        obj[name] = getattr(event, name)
    for name in _FLOATS[type(event)]:
        value = obj[name]
        if value is not None and not math.isfinite(value):
            raise EventEncodeError(f"cannot encode {event.TYPE}: {name} is {value!r} (JSON numbers are finite)")
    try:
        return orjson.dumps(obj)
    except TypeError as exc:  # orjson.JSONEncodeError: a str with lone surrogates, an int over 64 bits
        raise EventEncodeError(f"cannot encode {event.TYPE}: {exc}") from None


def decode_event(data: bytes | str | None) -> Event:
    """Parse and validate one record value; raises EventDecodeError saying what is wrong."""
    if data is None:
        raise EventDecodeError("empty record (no value)")
    try:
        obj = orjson.loads(data)
    except ValueError as exc:  # orjson.JSONDecodeError, invalid UTF-8 included
        raise EventDecodeError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise EventDecodeError(f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("v")
    if version != EVENT_VERSION:
        raise EventDecodeError(f"unsupported event version {version!r} (this reader speaks {EVENT_VERSION})")
    type_name = obj.get("type")
    cls = EVENT_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise EventDecodeError(f"unknown event type {type_name!r}")
    kwargs: dict[str, Any] = {}
    try:
        for name, conv, optional in _FIELDS[cls]:
            if name not in obj:
                continue  # the dataclass raises for a missing required field
            value = obj[name]
            kwargs[name] = None if value is None and optional else conv(value)
        return cls(**kwargs)
    except TypeError as exc:
        raise EventDecodeError(f"{type_name}: {exc}") from None
