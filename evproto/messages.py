"""The message catalogue: what travels inside a frame's BODY.

Every BODY starts with the same 6-byte header, then the fields of its type::

    type u8 | flags u8 | seq u16 BE | ref u16 BE | fields...

The layouts are declared once with ``construct`` (see :data:`BODY_SCHEMA` and each
message's ``SCHEMA``) and compiled at import. Public code only ever sees the frozen
dataclasses below; construct objects never leak out. Fixed-size messages (the hot
ones: telemetry, meter values, health) decode through a ``struct`` layout derived
from their construct fields, everything else through construct's compiled parser.
A test checks that both paths agree with the construct schema for every type.

This module does no I/O.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Callable, ClassVar, TypeVar

import construct as _construct

from .errors import MessageDecodeError, MessageEncodeError

#: construct ships no type information, and what a checker infers from its source is
#: wrong (its integer fields come out as functions): its values stay Any here.
cs: Any = _construct

__all__ = [
    "PROTOCOL_VERSION",
    "HEADER_SIZE",
    "MessageType",
    "Flags",
    "Role",
    "ReasonCode",
    "HealthState",
    "FaultCode",
    "CpState",
    "CommandAction",
    "EndReason",
    "ErrorCode",
    "MeterStatus",
    "Message",
    "Envelope",
    "Hello",
    "Accept",
    "Reject",
    "Ping",
    "ErrorReport",
    "HealthCheck",
    "HealthStatus",
    "FaultReport",
    "RecoveryReport",
    "CpStatus",
    "Command",
    "AuthorizeSupply",
    "CommandResult",
    "SupplyTelemetry",
    "SupplyEnd",
    "MeterReadRequest",
    "MeterValues",
    "MeterTransaction",
    "MeterSignedRequest",
    "MeterSignedReading",
    "AuthChallenge",
    "AuthProof",
    "AuthResult",
    "CpKey",
    "MESSAGE_CLASSES",
    "BODY_SCHEMA",
    "encode_body",
    "decode_body",
    "clip_text",
    "MAX_TEXT_BYTES",
    "is_known_type",
    "register_message",
    "APP_TYPES",
    "APP_MESSAGE_CLASSES",
    "Opaque",
    # How evproto.wire builds the field types it offers:
    "wire_field",
    "enum_wire",
]

#: Version carried in Hello/Accept. Bumped on any incompatible change of this catalogue.
PROTOCOL_VERSION = 1
#: Bytes of the common header at the start of every BODY.
HEADER_SIZE = 6


class MessageType(enum.IntEnum):
    """The type byte, first byte of every BODY."""

    HELLO = 0x01
    ACCEPT = 0x02
    REJECT = 0x03
    PING = 0x04
    ERROR = 0x05
    AUTH_CHALLENGE = 0x06
    AUTH_PROOF = 0x07
    AUTH_RESULT = 0x08
    CP_KEY = 0x09
    HEALTH_CHECK = 0x10
    HEALTH_STATUS = 0x11
    FAULT_REPORT = 0x12
    RECOVERY_REPORT = 0x13
    CP_STATUS = 0x14
    COMMAND = 0x20
    AUTHORIZE_SUPPLY = 0x21
    COMMAND_RESULT = 0x22
    SUPPLY_TELEMETRY = 0x30
    SUPPLY_END = 0x31
    METER_READ_REQUEST = 0x40
    METER_VALUES = 0x41
    METER_SIGNED_REQUEST = 0x42
    METER_SIGNED_READING = 0x43
    OPAQUE = 0x50


class Flags(enum.IntFlag):
    """Header flag bits."""

    NONE = 0
    #: Retransmission of a frame already sent once (informational; dedup uses ``seq``).
    DUP = 0x01
    #: The sender expects an answer frame whose ``ref`` is this frame's ``seq``.
    REQUEST = 0x02
    #: This frame answers the request whose ``seq`` is in ``ref``.
    RESPONSE = 0x04


class Role(enum.IntEnum):
    """Who is speaking, announced in Hello."""

    CENTRAL = 1
    MONITOR = 2
    ENGINE = 3
    METER = 4
    DRIVER = 5
    TOOL = 6


class ReasonCode(enum.IntEnum):
    """Why a hello or a command was refused (``OK`` when it was not)."""

    OK = 0
    UNKNOWN_ID = 1
    DUPLICATE_ID = 2
    BAD_CREDENTIALS = 3
    UNSUPPORTED_VERSION = 4
    ROLE_NOT_ALLOWED = 5
    BUSY = 6
    NOT_AVAILABLE = 7
    INVALID = 8
    UNKNOWN_DRIVER = 9
    ALREADY_CHARGING = 10
    INTERNAL = 255


class HealthState(enum.IntEnum):
    """Answer to a health check."""

    OK = 0
    KO = 1


class FaultCode(enum.IntEnum):
    """What is wrong with a charge point (uint16 on the wire)."""

    NONE = 0
    ENGINE_KO = 1
    ENGINE_SILENT = 2
    METER_TIMEOUT = 3
    METER_LOST = 4
    METER_RESET = 5
    SIMULATED = 6
    INTERNAL = 0xFFFF

    @property
    def label(self) -> str:
        """Words for a screen."""
        return _FAULT_LABELS[self]


_FAULT_LABELS = {
    FaultCode.NONE: "no fault",
    FaultCode.ENGINE_KO: "engine reports KO",
    FaultCode.ENGINE_SILENT: "engine not answering",
    FaultCode.METER_TIMEOUT: "meter not answering",
    FaultCode.METER_LOST: "meter device gone",
    FaultCode.METER_RESET: "meter reset",
    FaultCode.SIMULATED: "simulated fault",
    FaultCode.INTERNAL: "internal error",
}
assert set(_FAULT_LABELS) == set(FaultCode), "every fault kind needs a label"


class CpState(enum.IntEnum):
    """A charge point's state as Central shows it."""

    ACTIVATED = 1
    STOPPED = 2
    SUPPLYING = 3
    BROKEN = 4
    DISCONNECTED = 5


class CommandAction(enum.IntEnum):
    """Commands Central or an operator sends to a charge point."""

    STOP = 1
    RESUME = 2
    PLUG = 3
    UNPLUG = 4


class EndReason(enum.IntEnum):
    """Why a supply ended: the one list, from the wire to the screen.

    On this link it travels as its number; in Kafka events as its :attr:`token`
    (``"monitor_lost"``); screens show its :attr:`label`. Adding a reason is
    adding a member here (and its label below).
    """

    COMPLETED = 1
    UNPLUGGED = 2
    STOPPED = 3
    FAULT = 4
    MONITOR_LOST = 5
    POWER_LOSS = 6
    CENTRAL_LOST = 7
    KEY_REVOKED = 8

    @property
    def token(self) -> str:
        """The spelling in Kafka events and the HTTP API: the name in lower case."""
        return self.name.lower()

    @classmethod
    def from_token(cls, token: str) -> EndReason:
        """The reason spelled ``token``; ValueError if there is none."""
        member = cls.__members__.get(token.upper()) if token.islower() else None
        if member is None:
            raise ValueError(f"not an end reason: {token[:40]!r}")
        return member

    @property
    def normal(self) -> bool:
        """A normal end (the session is "completed"), not an interruption."""
        return self in (EndReason.COMPLETED, EndReason.UNPLUGGED)

    @property
    def label(self) -> str:
        """Words for a screen."""
        return _END_REASON_LABELS[self]


_END_REASON_LABELS = {
    EndReason.COMPLETED: "completed",
    EndReason.UNPLUGGED: "unplugged",
    EndReason.STOPPED: "stopped by Central",
    EndReason.FAULT: "charge point fault",
    EndReason.MONITOR_LOST: "monitor lost",
    EndReason.POWER_LOSS: "power loss",
    EndReason.CENTRAL_LOST: "Central lost",
    EndReason.KEY_REVOKED: "key revoked",
}
assert set(_END_REASON_LABELS) == set(EndReason), "every end reason needs a label"


class ErrorCode(enum.IntEnum):
    """Codes of the ErrorReport message."""

    UNKNOWN_TYPE = 1
    MALFORMED = 2
    UNEXPECTED = 3
    INTERNAL = 4


class MeterStatus(enum.IntFlag):
    """Status bits of a meter reading (uint16 on the wire)."""

    NONE = 0
    LOAD_ON = 0x0001
    COUNTER_RESET = 0x0002
    CLOCK_INVALID = 0x0004
    TAMPER = 0x0008
    FAULT = 0x0010


class MeterTransaction(enum.IntEnum):
    """Which end of a supply a signed meter reading marks (OCMF ``TX`` B and E)."""

    BEGIN = 1
    END = 2


# -- field wire types ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Wire:
    """How one dataclass field travels: its construct subcon and conversions."""

    subcon: Any  # a construct Construct
    #: wire value -> python value (None: identity)
    to_py: Callable[[Any], Any] | None = None
    #: python value -> wire value, validating (None: identity)
    to_wire: Callable[[Any], Any] | None = None
    #: source of an inline expression for the generated fast decoder ('{0}' is the value)
    inline: str | None = None
    #: how docs/protocol.md names the wire type
    doc: str = ""
    #: for length-prefixed fields: bytes of the big-endian length prefix (1 or 2)
    prefix: int = 0
    #: for length-prefixed fields: decode the data as UTF-8
    utf8: bool = False

    @property
    def fmt(self) -> str | None:
        """The struct format character when the field is fixed-size, else None."""
        sub = self.subcon
        if isinstance(sub, cs.Enum):
            sub = sub.subcon
        if isinstance(sub, cs.FormatField):
            return str(sub.fmtstr[1:])
        return None


_INT_DOCS = {cs.Int8ub: "u8", cs.Int16ub: "u16", cs.Int32ub: "u32", cs.Int64ub: "u64"}


def enum_wire(enum_cls: type[enum.IntEnum], subcon: Any) -> _Wire:
    """``enum_cls`` on the wire as the integer ``subcon`` (``cs.Int8ub``...); an unknown value is refused."""
    table = {int(m): m for m in enum_cls}
    name = enum_cls.__name__

    def to_py(v: Any) -> Any:
        try:
            return table[int(getattr(v, "intvalue", v))]
        except KeyError:
            raise ValueError(f"{v!r} is not a valid {name}") from None

    def to_wire(v: Any) -> int:
        try:
            return int(enum_cls(v))
        except ValueError:
            raise ValueError(f"{v!r} is not a valid {name}") from None

    return _Wire(cs.Enum(subcon, enum_cls), to_py, to_wire, doc=f"{_INT_DOCS[subcon]} {name}")


def _flag_wire(flag_cls: type[enum.IntFlag], subcon: Any) -> _Wire:
    limit = 1 << (8 * subcon.sizeof())

    def to_wire(v: Any) -> int:
        n = int(v)
        if not 0 <= n < limit:
            raise ValueError(f"{n!r} does not fit {flag_cls.__name__}")
        return n

    cache: dict[int, enum.IntFlag] = {}

    def to_py(v: int) -> enum.IntFlag:
        # IntFlag construction is slow; a reading's status rarely changes.
        member = cache.get(v)
        if member is None:
            member = flag_cls(v)
            if len(cache) < 1024:
                cache[v] = member
        return member

    return _Wire(subcon, to_py, to_wire, doc=f"{_INT_DOCS[subcon]} {flag_cls.__name__} bits")


def _nan_to_none(v: float) -> float | None:
    return None if v != v else v


U8 = _Wire(cs.Int8ub, doc="u8")
U16 = _Wire(cs.Int16ub, doc="u16")
U32 = _Wire(cs.Int32ub, doc="u32")
U64 = _Wire(cs.Int64ub, doc="u64")


def _real(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"expected a number, got {type(v).__name__}")
    return float(v)


def _optional_real(v: Any) -> float:
    return math.nan if v is None else _real(v)


F32 = _Wire(cs.Float32b, to_wire=_real, doc="f32")
F64 = _Wire(cs.Float64b, to_wire=_real, doc="f64")
#: A float that may be absent; NaN on the wire means "not measured".
_NAN_INLINE = "(None if {0} != {0} else {0})"
OPT_F32 = _Wire(cs.Float32b, _nan_to_none, _optional_real, inline=_NAN_INLINE, doc="f32 (NaN = absent)")
OPT_F64 = _Wire(cs.Float64b, _nan_to_none, _optional_real, inline=_NAN_INLINE, doc="f64 (NaN = absent)")


def _typed(kind: type) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if not isinstance(v, kind):
            raise TypeError(f"expected {kind.__name__}, got {type(v).__name__}")
        return v

    return check


#: Most UTF-8 bytes a text field holds.
MAX_TEXT_BYTES = 255


def clip_text(text: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, at a character boundary.

    Text fields are limited in bytes, not characters: 200 x "é" is 400 bytes.
    """
    if len(text) * 4 <= max_bytes:
        return text
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", "ignore")  # drops a character cut in half


def _text(v: Any) -> Any:
    if not isinstance(v, str):
        raise TypeError(f"expected str, got {type(v).__name__}")
    if len(v) * 4 > MAX_TEXT_BYTES and len(v.encode("utf-8")) > MAX_TEXT_BYTES:
        raise ValueError(
            f"text of {len(v.encode('utf-8'))} UTF-8 bytes; a text field holds at most "
            f"{MAX_TEXT_BYTES} (evproto.clip_text cuts at a character boundary)"
        )
    return v


#: UTF-8 text of at most 255 bytes.
TEXT = _Wire(cs.PascalString(cs.Int8ub, "utf8"), to_wire=_text, doc="text (u8 length + UTF-8)", prefix=1, utf8=True)
#: Opaque bytes, at most 65535.
BLOB = _Wire(cs.Prefixed(cs.Int16ub, cs.GreedyBytes), to_wire=_typed(bytes), doc="bytes (u16 length + data)", prefix=2)


def wire_field(wire: _Wire, default: Any = MISSING) -> Any:
    """A dataclass field that travels as ``wire`` (the catalogue below, and :mod:`evproto.wire`)."""
    return field(default=default, metadata={"wire": wire})


# -- the messages ----------------------------------------------------------------------------


class Message:
    """Base class of every message. ``TYPE`` is the message's type byte."""

    __slots__ = ()
    #: The type byte: a MessageType for the catalogue, 0x80-0xef for application messages.
    TYPE: ClassVar[int]
    SCHEMA: ClassVar[Any]  # its construct Struct


MESSAGE_CLASSES: dict[MessageType, type[Message]] = {}
_M = TypeVar("_M", bound="Message")


def _register(msg_type: MessageType) -> Callable[[type[_M]], type[_M]]:
    def deco(cls: type[_M]) -> type[_M]:
        cls.TYPE = msg_type
        MESSAGE_CLASSES[msg_type] = cls
        return cls

    return deco


@_register(MessageType.HELLO)
@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(Message):
    """First frame of a link: who the client is and the keepalive it wants."""

    role: Role = wire_field(enum_wire(Role, cs.Int8ub))
    node_id: str = wire_field(TEXT)
    protocol_version: int = wire_field(U8, PROTOCOL_VERSION)
    keepalive_ms: int = wire_field(U16, 1000)
    location: str = wire_field(TEXT, "")
    price_eur_kwh: float | None = wire_field(OPT_F64, None)
    software: str = wire_field(TEXT, "")
    credentials: bytes = wire_field(BLOB, b"")


@_register(MessageType.ACCEPT)
@dataclass(frozen=True, slots=True, kw_only=True)
class Accept(Message):
    """The server's yes to a Hello, with the keepalive both sides will use."""

    node_id: str = wire_field(TEXT)
    protocol_version: int = wire_field(U8, PROTOCOL_VERSION)
    keepalive_ms: int = wire_field(U16, 1000)


@_register(MessageType.REJECT)
@dataclass(frozen=True, slots=True, kw_only=True)
class Reject(Message):
    """The server's no to a Hello; the link closes after it."""

    code: ReasonCode = wire_field(enum_wire(ReasonCode, cs.Int8ub))
    detail: str = wire_field(TEXT, "")


@_register(MessageType.PING)
@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Message):
    """Keepalive probe sent when a side has been idle; its ACK proves the peer alive."""


@_register(MessageType.ERROR)
@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReport(Message):
    """An application-level error report."""

    code: ErrorCode = wire_field(enum_wire(ErrorCode, cs.Int8ub))
    detail: str = wire_field(TEXT, "")


@_register(MessageType.AUTH_CHALLENGE)
@dataclass(frozen=True, slots=True, kw_only=True)
class AuthChallenge(Message):
    """Server -> client, right after Accept when the server authenticates: how to salt
    the credential (scrypt parameters) and the server's nonce (see evproto.auth)."""

    salt: bytes = wire_field(BLOB)
    log2_n: int = wire_field(U8)
    r: int = wire_field(U8)
    p: int = wire_field(U8)
    server_nonce: bytes = wire_field(BLOB)


@_register(MessageType.AUTH_PROOF)
@dataclass(frozen=True, slots=True, kw_only=True)
class AuthProof(Message):
    """Client -> server, the answer to AuthChallenge: proof that it holds the secret."""

    proof: bytes = wire_field(BLOB)


@_register(MessageType.AUTH_RESULT)
@dataclass(frozen=True, slots=True, kw_only=True)
class AuthResult(Message):
    """Server -> client: ``OK`` with the server's signature and, for a charge point, its
    record key (wrapped) and the key that verifies what the server signs; or the reason
    it was refused (the link closes after it)."""

    code: ReasonCode = wire_field(enum_wire(ReasonCode, cs.Int8ub))
    detail: str = wire_field(TEXT, "")
    signature: bytes = wire_field(BLOB, b"")
    key_id: str = wire_field(TEXT, "")
    wrapped_key: bytes = wire_field(BLOB, b"")
    verify_key: bytes = wire_field(BLOB, b"")


@_register(MessageType.CP_KEY)
@dataclass(frozen=True, slots=True, kw_only=True)
class CpKey(Message):
    """Monitor -> engine: the record key Central issued this charge point, and the key
    that verifies what Central signs. An empty ``key_id`` withdraws the key (revoked)."""

    key_id: str = wire_field(TEXT, "")
    key: bytes = wire_field(BLOB, b"")
    verify_key: bytes = wire_field(BLOB, b"")


@_register(MessageType.HEALTH_CHECK)
@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck(Message):
    """Monitor -> engine: are you healthy? (answered by HealthStatus)."""


@_register(MessageType.HEALTH_STATUS)
@dataclass(frozen=True, slots=True, kw_only=True)
class HealthStatus(Message):
    """Engine -> monitor: OK, or KO with a fault code."""

    state: HealthState = wire_field(enum_wire(HealthState, cs.Int8ub))
    fault: FaultCode = wire_field(enum_wire(FaultCode, cs.Int16ub), FaultCode.NONE)


@_register(MessageType.FAULT_REPORT)
@dataclass(frozen=True, slots=True, kw_only=True)
class FaultReport(Message):
    """Monitor -> Central: the charge point has a fault."""

    fault: FaultCode = wire_field(enum_wire(FaultCode, cs.Int16ub))
    detail: str = wire_field(TEXT, "")


@_register(MessageType.RECOVERY_REPORT)
@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryReport(Message):
    """Monitor -> Central: the fault ``fault`` has cleared."""

    fault: FaultCode = wire_field(enum_wire(FaultCode, cs.Int16ub))


@_register(MessageType.CP_STATUS)
@dataclass(frozen=True, slots=True, kw_only=True)
class CpStatus(Message):
    """A charge point's current state (session 0 and empty driver when idle)."""

    state: CpState = wire_field(enum_wire(CpState, cs.Int8ub))
    session_id: int = wire_field(U32, 0)
    driver_id: str = wire_field(TEXT, "")


@_register(MessageType.COMMAND)
@dataclass(frozen=True, slots=True, kw_only=True)
class Command(Message):
    """Stop, resume, plug or unplug (``session_id`` 0 when not about a session)."""

    action: CommandAction = wire_field(enum_wire(CommandAction, cs.Int8ub))
    session_id: int = wire_field(U32, 0)


@_register(MessageType.AUTHORIZE_SUPPLY)
@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizeSupply(Message):
    """Central -> charge point: serve ``driver_id`` under ``session_id``."""

    session_id: int = wire_field(U32)
    driver_id: str = wire_field(TEXT)
    max_energy_wh: float | None = wire_field(OPT_F64, None)
    max_duration_s: float | None = wire_field(OPT_F32, None)


@_register(MessageType.COMMAND_RESULT)
@dataclass(frozen=True, slots=True, kw_only=True)
class CommandResult(Message):
    """Answer to a command or authorisation: ``OK`` or the reason it was refused."""

    code: ReasonCode = wire_field(enum_wire(ReasonCode, cs.Int8ub))
    detail: str = wire_field(TEXT, "")


@_register(MessageType.SUPPLY_TELEMETRY)
@dataclass(frozen=True, slots=True, kw_only=True)
class SupplyTelemetry(Message):
    """Progress of a supply, sent every second while it runs."""

    session_id: int = wire_field(U32)
    energy_wh: float = wire_field(F64)
    power_w: float = wire_field(F32)
    amount_eur: float = wire_field(F64)
    elapsed_s: float = wire_field(F32, 0.0)


@_register(MessageType.SUPPLY_END)
@dataclass(frozen=True, slots=True, kw_only=True)
class SupplyEnd(Message):
    """Final figures of a supply: the ticket's data."""

    session_id: int = wire_field(U32)
    driver_id: str = wire_field(TEXT)
    energy_wh: float = wire_field(F64)
    amount_eur: float = wire_field(F64)
    started_at_ms: int = wire_field(U64)
    ended_at_ms: int = wire_field(U64)
    reason: EndReason = wire_field(enum_wire(EndReason, cs.Int8ub))


@_register(MessageType.METER_READ_REQUEST)
@dataclass(frozen=True, slots=True, kw_only=True)
class MeterReadRequest(Message):
    """Engine -> meter: send your current values (answered by MeterValues)."""


@_register(MessageType.METER_VALUES)
@dataclass(frozen=True, slots=True, kw_only=True)
class MeterValues(Message):
    """A meter reading. Voltage and current are None when the meter does not measure them."""

    energy_wh: float = wire_field(F64)
    power_w: float = wire_field(F32)
    voltage_v: float | None = wire_field(OPT_F32, None)
    current_a: float | None = wire_field(OPT_F32, None)
    status: MeterStatus = wire_field(_flag_wire(MeterStatus, cs.Int16ub), MeterStatus.NONE)
    meter_timestamp_ms: int = wire_field(U64, 0)


@_register(MessageType.METER_SIGNED_REQUEST)
@dataclass(frozen=True, slots=True, kw_only=True)
class MeterSignedRequest(Message):
    """Engine -> meter: sign your register now as the ``transaction`` end of the supply
    that ``identification`` names (answered by MeterSignedReading)."""

    transaction: MeterTransaction = wire_field(enum_wire(MeterTransaction, cs.Int8ub))
    identification: str = wire_field(TEXT, "")


@_register(MessageType.METER_SIGNED_READING)
@dataclass(frozen=True, slots=True, kw_only=True)
class MeterSignedReading(Message):
    """A signed reading: ``ocmf`` the OCMF text (ASCII, ``OCMF|payload|signature``; empty:
    this meter does not sign), ``public_key`` the meter's key (DER SubjectPublicKeyInfo)."""

    ocmf: bytes = wire_field(BLOB, b"")
    public_key: bytes = wire_field(BLOB, b"")


@_register(MessageType.OPAQUE)
@dataclass(frozen=True, slots=True, kw_only=True)
class Opaque(Message):
    """Application bytes the protocol does not look into: ``channel`` says what they
    are to the two applications (for typed fields, register a message type instead)."""

    channel: int = wire_field(U16, 0)
    payload: bytes = wire_field(BLOB, b"")


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A decoded BODY: the link header and the message it carries."""

    message: Message
    seq: int = 0
    ref: int = 0
    flags: Flags = Flags.NONE


# -- construct schemas -----------------------------------------------------------------------

_HEADER_FIELDS = (
    "flags" / cs.FlagsEnum(cs.Int8ub, dup=0x01, request=0x02, response=0x04),
    "seq" / cs.Int16ub,
    "ref" / cs.Int16ub,
)


def _wires(cls: type[Message]) -> list[tuple[str, _Wire]]:
    return [(f.name, f.metadata["wire"]) for f in fields(cls)]  # type: ignore[arg-type]


for _cls in MESSAGE_CLASSES.values():
    _cls.SCHEMA = cs.Struct(*(name / w.subcon for name, w in _wires(_cls)))

#: The whole BODY as one declarative construct (reference and docs; decoding uses
#: the per-type codecs below, which tests check against this schema).
BODY_SCHEMA = cs.Struct(
    "type" / cs.Enum(cs.Int8ub, MessageType),
    *_HEADER_FIELDS,
    "fields"
    / cs.Switch(
        cs.this.type,
        {t.name: cls.SCHEMA for t, cls in MESSAGE_CLASSES.items()},
        default=cs.Error,
    ),
    cs.Terminated,
)


# -- per-type codecs, built once at import ---------------------------------------------------

_FLAGS = tuple(Flags(i) for i in range(256))
_new = object.__new__


def _slot_setter(cls: type, name: str) -> Callable[[Any, Any], None]:
    setter: Callable[[Any, Any], None] = cls.__dict__[
        name
    ].__set__  # the slot descriptor; bypasses the frozen __setattr__
    return setter


_ENV_SET = tuple(_slot_setter(Envelope, n) for n in ("message", "seq", "ref", "flags"))


class _Codec:
    """Encoder and decoder for one message type, derived from its construct fields."""

    __slots__ = ("cls", "type", "names", "wires", "fixed", "decode", "_pack", "_build")

    def __init__(self, cls: type[Message]) -> None:
        self.cls = cls
        self.type = int(cls.TYPE)
        wires = _wires(cls)
        self.names = tuple(n for n, _ in wires)
        self.wires = tuple(w for _, w in wires)
        self.fixed = all(w.fmt is not None for w in self.wires)
        # construct's compiled builder encodes the types with text fields
        self._build = cs.Struct(
            "type" / cs.Int8ub,
            "flags" / cs.Int8ub,
            "seq" / cs.Int16ub,
            "ref" / cs.Int16ub,
            *(n / w.subcon for n, w in wires),
            cs.Terminated,
        ).compile()
        self._pack: Callable[..., bytes] | None = None
        if self.fixed:
            self._pack = struct.Struct(">BBHH" + "".join(w.fmt or "" for w in self.wires)).pack
        self.decode = self._generate_decoder()

    def _generate_decoder(self) -> Callable[[bytes], Envelope]:
        """Write, once at import, a decoder specialised for this type.

        Like construct's own compiler, but strict where construct's compiled
        parser is not (it accepts a length prefix longer than the data left) and
        faster: runs of fixed fields are one ``struct.unpack_from``, enums are
        table lookups, and the frozen dataclass is filled through its slot
        descriptors (its keyword ``__init__`` costs about three times more).
        A test checks every type against the interpreted construct schema.
        """
        ns: dict[str, Any] = {"new": _new, "cls": self.cls, "FLAGS": _FLAGS, "Envelope": Envelope}
        ns.update({f"e{i}": setter for i, setter in enumerate(_ENV_SET)})
        names = [f"v{i}" for i in range(len(self.names))]
        if self.fixed:
            # One exact-size unpack; struct.error on any other length.
            ns["unpack"] = struct.Struct(">BBHH" + "".join(w.fmt for w in self.wires)).unpack  # type: ignore[misc]
            lines = ["def decode(body):", f"    _t, flags, seq, ref, {''.join(v + ', ' for v in names)}= unpack(body)"]
        else:
            ns["header"] = struct.Struct(">BBHH").unpack_from
            lines = [
                "def decode(body):",
                "    n = len(body)",
                "    _t, flags, seq, ref = header(body, 0)",
                "    off = 6",
            ]
            run: list[int] = []

            def flush_run() -> None:
                if run:
                    st = struct.Struct(">" + "".join(self.wires[i].fmt for i in run))  # type: ignore[misc]
                    ns[f"g{run[0]}"] = st.unpack_from
                    lines.append(f"    {''.join(names[i] + ', ' for i in run)}= g{run[0]}(body, off)")
                    lines.append(f"    off += {st.size}")
                    run.clear()

            for i, w in enumerate(self.wires):
                if w.fmt is not None:
                    run.append(i)
                    continue
                flush_run()
                length = "body[off]" if w.prefix == 1 else "(body[off] << 8) | body[off + 1]"
                lines += [
                    f"    k = {length}",
                    f"    end = off + {w.prefix} + k",
                    "    if end > n:",
                    f"        raise ValueError(f'field {self.names[i]} claims {{k}} bytes, "
                    f"{{n - off - {w.prefix}}} left')",
                    f"    {names[i]} = body[off + {w.prefix}:end]" + (".decode('utf-8')" if w.utf8 else ""),
                    "    off = end",
                ]
            flush_run()
            lines += ["    if off != n:", "        raise ValueError(f'{n - off} bytes after the last field')"]
        lines.append("    m = new(cls)")
        for i, (name, w) in enumerate(zip(self.names, self.wires)):
            ns[f"s{i}"] = _slot_setter(self.cls, name)
            value = names[i]
            if w.inline is not None:
                value = w.inline.format(value)
            elif w.to_py is not None:
                ns[f"c{i}"] = w.to_py
                value = f"c{i}({value})"
            lines.append(f"    s{i}(m, {value})")
        lines += [
            "    env = new(Envelope)",
            "    e0(env, m); e1(env, seq); e2(env, ref); e3(env, FLAGS[flags & 0x07])",
            "    return env",
        ]
        exec("\n".join(lines), ns)  # noqa: S102 - source built above from our own field names
        return ns["decode"]  # type: ignore[no-any-return]

    def encode(self, message: Message, seq: int, ref: int, flags: int) -> bytes:
        values = []
        for name, w in zip(self.names, self.wires):
            v = getattr(message, name)
            values.append(w.to_wire(v) if w.to_wire is not None else v)
        if self._pack is not None:
            return self._pack(self.type, flags, seq, ref, *values)
        kw = dict(zip(self.names, values))
        built: bytes = self._build.build(dict(type=self.type, flags=flags, seq=seq, ref=ref, **kw))
        return built


_CODECS: dict[int, _Codec] = {int(t): _Codec(cls) for t, cls in MESSAGE_CLASSES.items()}
_CODEC_BY_CLASS: dict[type, _Codec] = {c.cls: c for c in _CODECS.values()}

#: Type bytes applications may give messages of their own (:func:`register_message`);
#: 0x01-0x7f are the protocol's catalogue, 0xf0-0xff reserved for its future use.
APP_TYPES = range(0x80, 0xF0)
#: Application messages registered in this process, by type byte.
APP_MESSAGE_CLASSES: dict[int, type[Message]] = {}


def register_message(msg_type: int) -> Callable[[type[_M]], type[_M]]:
    """Class decorator: make ``cls`` an application message of type ``msg_type``
    (0x80-0xef), sent, acknowledged and decoded like the catalogue's::

        @evproto.register_message(0x80)
        @dataclass(frozen=True, slots=True, kw_only=True)
        class Tariff(evproto.Message):
            cp_id: str = evproto.wire.text()
            price_eur_kwh: float = evproto.wire.f64()

    Both peers register it; a peer that has not answers it with
    ``ErrorReport(UNKNOWN_TYPE)`` and the link stays up (docs/protocol.md).
    Raises ValueError for a type outside the range or taken by another class,
    TypeError for a class that is not a frozen, slots dataclass whose fields all
    come from :mod:`evproto.wire`.
    """
    if isinstance(msg_type, bool) or not isinstance(msg_type, int) or msg_type not in APP_TYPES:
        raise ValueError(f"application message types are 0x80..0xef, not {msg_type!r}")

    def deco(cls: type[_M]) -> type[_M]:
        name = getattr(cls, "__name__", repr(cls))
        if not (isinstance(cls, type) and issubclass(cls, Message) and is_dataclass(cls)):
            raise TypeError(f"{name}: an application message is a dataclass subclass of evproto.Message")
        params = getattr(cls, "__dataclass_params__", None)
        if not (params is not None and params.frozen and "__slots__" in cls.__dict__):
            raise TypeError(f"{name}: declare it @dataclass(frozen=True, slots=True, kw_only=True)")
        for f in fields(cls):
            if not isinstance(f.metadata.get("wire"), _Wire):
                raise TypeError(
                    f"{name}.{f.name}: declare it with an evproto.wire field (wire.text(), wire.u32(), wire.f64() ...)"
                )
        taken = _CODECS.get(msg_type)
        if taken is not None and taken.cls is not cls:
            raise ValueError(f"message type 0x{msg_type:02x} is already {taken.cls.__name__}")
        cls.TYPE = msg_type
        cls.SCHEMA = cs.Struct(*(n / w.subcon for n, w in _wires(cls)))
        codec = _Codec(cls)
        _CODECS[msg_type] = codec
        _CODEC_BY_CLASS[cls] = codec
        APP_MESSAGE_CLASSES[msg_type] = cls
        return cls

    return deco


_DECODE_ERRORS = (
    struct.error,
    cs.ConstructError,
    UnicodeError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    OverflowError,
)


def encode_body(message: Message, *, seq: int = 0, ref: int = 0, flags: int = 0) -> bytes:
    """Encode ``message`` with its header into a frame BODY.

    Raises :class:`~evproto.errors.MessageEncodeError` for values that cannot be
    encoded (text over 255 UTF-8 bytes, integers out of range, bad enum values).
    """
    codec = _CODEC_BY_CLASS.get(type(message))
    if codec is None:
        raise MessageEncodeError(
            f"{type(message).__name__} is neither a catalogue message nor registered: give it "
            "a type of its own with @evproto.register_message(0x80..0xef)"
        )
    try:
        header_ok = all(type(v) is int or isinstance(v, enum.IntFlag) for v in (seq, ref, flags))
        if not (header_ok and 0 <= seq <= 0xFFFF and 0 <= ref <= 0xFFFF and 0 <= flags <= 0xFF):
            raise MessageEncodeError(f"header out of range: seq={seq!r} ref={ref!r} flags={flags!r}")
        return codec.encode(message, seq, ref, int(flags))
    except _DECODE_ERRORS as exc:
        raise MessageEncodeError(f"cannot encode {message!r}: {exc}") from exc


def is_known_type(msg_type: int) -> bool:
    """True when this side can decode messages of type ``msg_type``."""
    return msg_type in _CODECS


def decode_body(body: bytes) -> Envelope:
    """Decode a frame BODY into an :class:`Envelope`.

    Raises :class:`~evproto.errors.MessageDecodeError` (a RemoteProtocolError
    whose ``reply`` is NACK) for an unknown type or a malformed body.
    """
    if len(body) < HEADER_SIZE:
        raise MessageDecodeError(f"body of {len(body)} bytes is shorter than the {HEADER_SIZE}-byte header", body=body)
    codec = _CODECS.get(body[0])
    if codec is None:
        raise MessageDecodeError(f"unknown message type 0x{body[0]:02x}", msg_type=body[0], body=body)
    try:
        return codec.decode(body)
    except _DECODE_ERRORS as exc:
        raise MessageDecodeError(
            f"malformed {codec.cls.__name__} body ({len(body)} bytes): {exc}", msg_type=body[0], body=body
        ) from exc
