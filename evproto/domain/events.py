"""The events of the charging network, typed, with every field's bounds (pure).

Each event is a frozen dataclass; each field's range is declared once, next to
its type (``Annotated`` rules: ids, texts, times, energy, prices...), and the
figures of a supply are checked against each other (energy within what the
power could deliver, amount = energy x price). The Kafka codec
(:mod:`evproto.bus.events`) checks every record against these rules on both
sides: readers do not re-check, writers never write what a reader would refuse.
Times are epoch milliseconds (``*_ts_ms``). docs/kafka.md lists every type with
its topic and key.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, fields
from typing import Annotated, Any, Callable, ClassVar

from ..idents import MAX_ID_LEN, MAX_TEXT_LEN, WHITESPACE, id_problem, text_problem
from ..messages import CpState, EndReason
from .session import SessionStatus

__all__ = [
    "Event",
    "EVENT_TYPES",
    "SESSION_STATUSES",
    "END_REASONS",
    "CP_STATE_NAMES",
    "REQUEST_ORIGINS",
    "MIN_TS_MS",
    "FUTURE_SLACK_MS",
    "MAX_POWER_KW",
    "MAX_PRICE_EUR_KWH",
    "MAX_ENERGY_KWH",
    "MAX_TARGET_ENERGY_KWH",
    "MAX_TARGET_DURATION_S",
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
    "EventSchema",
    "schema_of",
    "check_event",
]

#: Session statuses, as Central's API and the driver events spell them (SessionStatus values).
SESSION_STATUSES = tuple(s.value for s in SessionStatus)
#: CP states, as Central's API and ``cp_state`` spell them (CpState names).
CP_STATE_NAMES = tuple(s.name for s in CpState)
#: Why a supply ended, as SupplyFinished and Ticket spell it (EndReason tokens).
END_REASONS = tuple(r.token for r in EndReason)
#: Where a supply request comes from: a driver's app, or the CP's own menu.
REQUEST_ORIGINS = ("driver", "cp")

# -- the bounds every field is checked against (one place: readers do not re-check) -----------

#: Earliest time an event may carry (2000-01-01T00:00:00Z), epoch ms.
MIN_TS_MS = 946_684_800_000
#: How far in the future a reader accepts a time stamp (clock skew, expiry times).
FUTURE_SLACK_MS = 24 * 3600 * 1000
#: Latest time an event may carry at all (2100-01-01), for readers that pass no clock.
MAX_TS_MS = 4_102_444_800_000
#: Highest charging power any CP can have: above the Megawatt Charging System's 3.75 MW.
#: A supply's energy can never exceed what this power delivers in its duration.
MAX_POWER_KW = 4000.0
#: Highest price per kWh (the monitor's --price range).
MAX_PRICE_EUR_KWH = 100.0
#: Largest energy of one supply (a day at the highest power would be more; no vehicle takes it).
MAX_ENERGY_KWH = 10_000.0
#: Largest amount of one supply.
MAX_AMOUNT_EUR = MAX_ENERGY_KWH * MAX_PRICE_EUR_KWH
#: A driver's target: at most this much energy, or this long.
MAX_TARGET_ENERGY_KWH = 1000.0
MAX_TARGET_DURATION_S = 24 * 3600.0
#: Longest supply a CP reports (elapsed time).
MAX_SUPPLY_DURATION_S = 7 * 24 * 3600.0
#: Session ids are positive and fit a JSON number exactly (0: an offline supply not numbered yet).
MAX_SESSION_ID = 2**53 - 1
#: Longest free text (a request update's message).
MAX_MESSAGE_LEN = 512
#: A signed meter reading (OCMF text, evproto.hw.ocmf.MAX_OCMF_LEN) and a meter's public key (hex DER).
MAX_OCMF_LEN = 2048
MAX_METER_KEY_LEN = 512
#: Amount = energy x price, within this much (EUR) plus a millionth of the amount.
AMOUNT_TOLERANCE_EUR = 0.01
#: Energy a meter may read beyond power x duration (rounding, a reading taken just after the end).
ENERGY_SLACK_KWH = 0.01


class Event:
    """Base class of all events; ``TYPE`` is the ``type`` field on the wire."""

    __slots__ = ()
    TYPE: ClassVar[str]


# Field rules, attached to annotations with typing.Annotated (see the aliases below).


@dataclass(frozen=True, slots=True)
class _Ident:
    empty_ok: bool = False
    max_len: int = MAX_ID_LEN


@dataclass(frozen=True, slots=True)
class _Text:
    max_len: int = MAX_TEXT_LEN


@dataclass(frozen=True, slots=True)
class _OneOf:
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Range:
    lo: float
    hi: float
    lo_open: bool = False


@dataclass(frozen=True, slots=True)
class _Time:
    """An epoch-ms time stamp: between 2000 and the reader's now + FUTURE_SLACK_MS."""


Id = Annotated[str, _Ident()]
OptionalId = Annotated[str, _Ident(empty_ok=True)]
Token = Annotated[str, _Ident(empty_ok=True)]  # a reason code such as "power_loss"; "" for none
EndReasonToken = Annotated[str, _OneOf(END_REASONS)]
Text = Annotated[str, _Text()]
Message = Annotated[str, _Text(MAX_MESSAGE_LEN)]
OcmfText = Annotated[str, _Text(MAX_OCMF_LEN)]  # "": no signed reading
MeterKey = Annotated[str, _Text(MAX_METER_KEY_LEN)]
TsMs = Annotated[int, _Time()]
SessionId = Annotated[int, _Range(1, MAX_SESSION_ID)]
OfflineSessionId = Annotated[int, _Range(0, MAX_SESSION_ID)]  # 0: a supply served offline, not numbered yet
EnergyKwh = Annotated[float, _Range(0, MAX_ENERGY_KWH)]
AmountEur = Annotated[float, _Range(0, MAX_AMOUNT_EUR)]
PriceEurKwh = Annotated[float, _Range(0, MAX_PRICE_EUR_KWH)]
PowerKw = Annotated[float, _Range(0, MAX_POWER_KW)]
ElapsedS = Annotated[float, _Range(0, MAX_SUPPLY_DURATION_S)]
TargetKwh = Annotated[float, _Range(0, MAX_TARGET_ENERGY_KWH, lo_open=True)]
TargetS = Annotated[float, _Range(0, MAX_TARGET_DURATION_S, lo_open=True)]


@dataclass(frozen=True, slots=True)
class EventSchema:
    """How one event type is checked: its fields' converters, its floats, its times."""

    #: (name, convert-and-check or raise TypeError/ValueError, may be None) per field, in order.
    fields: tuple[tuple[str, Callable[[Any], Any], bool], ...]
    #: Float fields (JSON has no NaN or infinity: orjson would write them as null).
    floats: tuple[str, ...]
    #: Time-stamp fields (checked against the reader's clock).
    times: tuple[str, ...]
    #: The rule across fields: a problem, or None.
    check: Callable[[Any], str | None] | None


EVENT_TYPES: dict[str, type[Event]] = {}
#: Each event type's rules, built once when the type is declared.
_SCHEMAS: dict[type, EventSchema] = {}

_ev = dataclass(frozen=True, slots=True, kw_only=True)


def _rule_check(rule: Any, name: str) -> Callable[[Any], None]:
    """A function raising ValueError when a value breaks ``rule``."""
    if isinstance(rule, _Ident):

        def check(v: Any) -> None:
            if v == "" and rule.empty_ok:
                return
            problem = id_problem(v, max_len=rule.max_len)
            if problem is not None:
                raise ValueError(f"{name} {problem}")
    elif isinstance(rule, _Text):

        def check(v: Any) -> None:
            problem = text_problem(v, max_len=rule.max_len)
            if problem is not None:
                raise ValueError(f"{name} {problem}")
    elif isinstance(rule, _OneOf):

        def check(v: Any) -> None:
            if v not in rule.values:
                raise ValueError(f"{name} must be one of {', '.join(rule.values)}; got {ascii(v[:40])}")
    elif isinstance(rule, (_Range, _Time)):
        lo, hi, lo_open = (
            (rule.lo, rule.hi, rule.lo_open) if isinstance(rule, _Range) else (MIN_TS_MS, MAX_TS_MS, False)
        )

        def check(v: Any) -> None:
            if not (lo < v <= hi if lo_open else lo <= v <= hi):
                raise ValueError(f"{name} {v!r} is out of range ({'(' if lo_open else '['}{lo:g}, {hi:g}])")
    else:  # pragma: no cover - a schema bug, caught at import
        raise TypeError(f"unsupported rule {rule!r} for {name}")
    return check


def _checker(hint: Any, name: str) -> tuple[Callable[[Any], Any], bool]:
    """(convert-check-or-raise, optional) for one annotated field."""
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        (hint,) = args
    rules: list[Callable[[Any], None]] = []
    meta: list[Any] = []
    if typing.get_origin(hint) is Annotated:
        hint, *meta = typing.get_args(hint)
        rules = [_rule_check(m, name) for m in meta]
    if hint is bool:

        def conv(v: Any) -> Any:
            if type(v) is not bool:
                raise TypeError(f"{name}: expected true/false, got {v!r}")
            return v

    elif hint is int:

        def conv(v: Any) -> Any:
            if type(v) is not int:
                raise TypeError(f"{name}: expected an integer, got {ascii(v)[:40]}")
            return v

    elif hint is float:

        def conv(v: Any) -> Any:
            if type(v) not in (int, float):
                raise TypeError(f"{name}: expected a number, got {ascii(v)[:40]}")
            return float(v)

    elif hint is str:

        def conv(v: Any) -> Any:
            if type(v) is not str:
                raise TypeError(f"{name}: expected a string, got {ascii(v)[:40]}")
            return v

    else:  # pragma: no cover - a schema bug, caught at import
        raise TypeError(f"unsupported field type {hint!r} for {name}")
    if not rules:
        return conv, optional
    (rule,) = rules
    (meta,) = meta
    base = conv
    # The hottest fields get one function doing the type and the rule's fast path inline
    # (Central decodes and encodes every reading: docs/performance.md); anything the fast
    # path does not accept goes to the general check, which also says what is wrong.
    if isinstance(meta, (_Range, _Time)) and hint in (int, float):
        lo, hi = (meta.lo, meta.hi) if isinstance(meta, _Range) else (MIN_TS_MS, MAX_TS_MS)
        lo_open = isinstance(meta, _Range) and meta.lo_open
        accepted = (int,) if hint is int else (int, float)  # never bool: type(True) is bool
        as_float = hint is float

        def fast_number(v: Any) -> Any:
            if type(v) in accepted and (lo < v if lo_open else lo <= v) and v <= hi:
                return float(v) if as_float else v
            v = base(v)
            rule(v)
            return v

        return fast_number, optional
    if isinstance(meta, _Ident):
        max_len, empty_ok, space = meta.max_len, meta.empty_ok, WHITESPACE

        def fast_id(v: Any) -> Any:
            if type(v) is str and (
                0 < len(v) <= max_len and v.isprintable() and space.search(v) is None or (empty_ok and v == "")
            ):
                return v
            v = base(v)
            rule(v)
            return v

        return fast_id, optional

    def checked(v: Any) -> Any:
        v = base(v)
        rule(v)
        return v

    return checked, optional


def _is_time(hint: Any) -> bool:
    hint = (
        next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else hint
    )
    return typing.get_origin(hint) is Annotated and any(isinstance(m, _Time) for m in typing.get_args(hint)[1:])


def _event(type_name: str, check: Callable[[Any], str | None] | None = None) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        cls.TYPE = type_name
        EVENT_TYPES[type_name] = cls
        hints = typing.get_type_hints(cls, include_extras=True)
        plain = typing.get_type_hints(cls)
        spec = []
        for f in fields(cls):
            conv, optional = _checker(hints[f.name], f.name)
            spec.append((f.name, conv, optional))
        _SCHEMAS[cls] = EventSchema(
            fields=tuple(spec),
            floats=tuple(f.name for f in fields(cls) if float in (plain[f.name], *typing.get_args(plain[f.name]))),
            times=tuple(f.name for f in fields(cls) if _is_time(hints[f.name])),
            check=check,
        )
        return cls

    return deco


def _supply_figures(ev: Any) -> str | None:
    """A finished supply (or its ticket): ends after it starts, energy within what the
    highest power delivers in its duration, amount = energy x price."""
    if ev.ended_ts_ms < ev.started_ts_ms:
        return f"ended_ts_ms {ev.ended_ts_ms} is before started_ts_ms {ev.started_ts_ms}"
    hours = (ev.ended_ts_ms - ev.started_ts_ms) / 3_600_000
    if ev.energy_kwh > MAX_POWER_KW * hours + ENERGY_SLACK_KWH:
        return f"energy_kwh {ev.energy_kwh:g} is more than {MAX_POWER_KW:g} kW could deliver in {hours * 3600:.1f} s"
    expected = ev.energy_kwh * ev.price_eur_kwh
    if abs(ev.amount_eur - expected) > AMOUNT_TOLERANCE_EUR + 1e-6 * expected:
        return f"amount_eur {ev.amount_eur:g} is not energy x price ({expected:.4f})"
    return None


def _progress_figures(ev: Any) -> str | None:
    if ev.energy_kwh > MAX_POWER_KW * ev.elapsed_s / 3600 + ENERGY_SLACK_KWH:
        return f"energy_kwh {ev.energy_kwh:g} is more than {MAX_POWER_KW:g} kW could deliver in {ev.elapsed_s:g} s"
    return None


# -- driver-requests -------------------------------------------------------------------------


@_event("supply_request")
@_ev
class SupplyRequest(Event):
    """A driver asks to charge at ``cp_id`` (``origin`` "cp": typed at the CP's own menu)."""

    request_id: Id
    driver_id: Id
    cp_id: Id
    ts_ms: TsMs
    origin: Annotated[str, _OneOf(REQUEST_ORIGINS)] = "driver"
    target_energy_kwh: TargetKwh | None = None
    target_duration_s: TargetS | None = None


# -- cp-commands -----------------------------------------------------------------------------


@_event("authorize")
@_ev
class AuthorizeCommand(Event):
    """Central allows ``driver_id`` to charge at ``cp_id``; void after ``expires_ts_ms`` if not plugged."""

    cp_id: Id
    session_id: SessionId
    driver_id: Id
    request_id: Id
    price_eur_kwh: PriceEurKwh
    expires_ts_ms: TsMs
    ts_ms: TsMs
    target_energy_kwh: TargetKwh | None = None
    target_duration_s: TargetS | None = None


@_event("stop")
@_ev
class StopCommand(Event):
    """Put the CP out of service; any supply in progress ends."""

    cp_id: Id
    ts_ms: TsMs


@_event("resume")
@_ev
class ResumeCommand(Event):
    """Put a stopped CP back in service."""

    cp_id: Id
    ts_ms: TsMs


@_event("cancel_authorization")
@_ev
class CancelAuthorization(Event):
    """Withdraw an authorisation that was not used (expired, or the driver left)."""

    cp_id: Id
    session_id: SessionId
    reason: Token
    ts_ms: TsMs


# -- cp-events -------------------------------------------------------------------------------


@_event("authorization_answer")
@_ev
class AuthorizationAnswer(Event):
    """The CP's answer to an AuthorizeCommand."""

    cp_id: Id
    session_id: SessionId
    accepted: bool
    ts_ms: TsMs
    reason: Token = ""


@_event("supply_started")
@_ev
class SupplyStarted(Event):
    """The vehicle is plugged in and energy flows."""

    cp_id: Id
    session_id: OfflineSessionId
    driver_id: Id
    started_ts_ms: TsMs
    ts_ms: TsMs


@_event("supply_progress", _progress_figures)
@_ev
class SupplyProgress(Event):
    """Telemetry of a running supply, every second."""

    cp_id: Id
    session_id: OfflineSessionId
    driver_id: Id
    energy_kwh: EnergyKwh
    amount_eur: AmountEur
    power_kw: PowerKw
    elapsed_s: ElapsedS
    ts_ms: TsMs


@_event("supply_finished", _supply_figures)
@_ev
class SupplyFinished(Event):
    """Final figures of a supply; Central turns it into exactly one ticket."""

    cp_id: Id
    session_id: OfflineSessionId
    driver_id: Id
    energy_kwh: EnergyKwh
    amount_eur: AmountEur
    price_eur_kwh: PriceEurKwh
    started_ts_ms: TsMs
    ended_ts_ms: TsMs
    reason: EndReasonToken
    ts_ms: TsMs
    #: True for a supply served while Central was unreachable (session_id 0 until Central assigns one).
    offline: bool = False
    request_id: OptionalId = ""
    #: The meter's signed readings at the supply's begin and end (OCMF, docs/hardware.md), and
    #: its public key (hex DER); "" when the meter does not sign.
    ocmf_begin: OcmfText = ""
    ocmf_end: OcmfText = ""
    meter_public_key: MeterKey = ""


# -- driver-events ---------------------------------------------------------------------------


@_event("request_update")
@_ev
class RequestUpdate(Event):
    """A step of a driver's request: received, authorized, denied (with reason), supplying, ended."""

    driver_id: Id
    request_id: Id
    cp_id: Id
    status: Annotated[str, _OneOf(SESSION_STATUSES)]
    ts_ms: TsMs
    session_id: SessionId | None = None
    reason: Token = ""
    message: Message = ""


@_event("driver_telemetry")
@_ev
class DriverTelemetry(Event):
    """Live figures of the driver's supply, relayed by Central (``produced_ts_ms``: the engine's)."""

    driver_id: Id
    session_id: SessionId
    cp_id: Id
    energy_kwh: EnergyKwh
    amount_eur: AmountEur
    power_kw: PowerKw
    produced_ts_ms: TsMs
    ts_ms: TsMs


@_event("ticket", _supply_figures)
@_ev
class Ticket(Event):
    """The final ticket of a supply."""

    driver_id: Id
    session_id: SessionId
    request_id: Id
    cp_id: Id
    energy_kwh: EnergyKwh
    amount_eur: AmountEur
    price_eur_kwh: PriceEurKwh
    started_ts_ms: TsMs
    ended_ts_ms: TsMs
    status: Annotated[str, _OneOf(SESSION_STATUSES)]
    end_reason: EndReasonToken
    ts_ms: TsMs
    #: As in supply_finished: the signed readings the ticket's energy comes from ("" when unsigned).
    ocmf_begin: OcmfText = ""
    ocmf_end: OcmfText = ""
    meter_public_key: MeterKey = ""


# -- cp-state, central-heartbeat -------------------------------------------------------------


@_event("cp_state")
@_ev
class CpStateRecord(Event):
    """A CP's latest state as Central sees it (compacted topic, key = CP id)."""

    cp_id: Id
    location: Text
    price_eur_kwh: PriceEurKwh
    state: Annotated[str, _OneOf(CP_STATE_NAMES)]
    ts_ms: TsMs
    driver_id: OptionalId = ""


@_event("heartbeat")
@_ev
class Heartbeat(Event):
    """Central is alive; sent every ``interval_s``."""

    instance_id: Id
    started_ts_ms: TsMs
    interval_s: Annotated[float, _Range(0, 3600, lo_open=True)]
    ts_ms: TsMs


# -- what the codec needs ---------------------------------------------------------------------


def schema_of(cls: type[Event]) -> EventSchema:
    """The rules of event type ``cls``."""
    return _SCHEMAS[cls]


def check_event(event: Event) -> None:
    """Every field's rule and the rules across fields; ValueError/TypeError saying which."""
    schema = schema_of(type(event))
    for name, conv, optional in schema.fields:
        value = getattr(event, name)
        if value is None and optional:
            continue
        conv(value)
    problem = schema.check(event) if schema.check is not None else None
    if problem is not None:
        raise ValueError(problem)
