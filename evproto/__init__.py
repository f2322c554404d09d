"""evproto: a framed binary link protocol for EV charging networks.

The core (frames, messages, link) is sans-I/O; :mod:`evproto.aio` runs it over
TCP and serial lines with asyncio. See docs/protocol.md for the bytes.
"""

import logging as _logging

from ._version import __version__
from .errors import (
    EvprotoError,
    LinkDownError,
    LinkError,
    LinkRejectedError,
    IncomingOverflowError,
    LocalProtocolError,
    MessageDecodeError,
    MessageEncodeError,
    ProtocolError,
    RemoteProtocolError,
    RequestTimeoutError,
    SendQueueFull,
    TransportError,
)
from .frame import (
    DEFAULT_MAX_BODY,
    Control,
    ControlReceived,
    DecoderEvent,
    DecoderStats,
    FrameDecoder,
    FrameError,
    FrameErrorKind,
    FrameReceived,
    Garbage,
    encode_frame,
    lrc,
)
from .backoff import Backoff
from .endpoint import Endpoint, parse_endpoint
from .link import (
    Connected,
    Delivered,
    DownReason,
    HelloReceived,
    LinkConfig,
    LinkConnection,
    LinkDown,
    LinkState,
    LinkStats,
    MessageReceived,
    RequestReceived,
    UnknownMessageReceived,
    RequestTimedOut,
    ResponseReceived,
    Side,
)
from .messages import (
    PROTOCOL_VERSION,
    Accept,
    AuthorizeSupply,
    Command,
    CommandAction,
    CommandResult,
    CpState,
    CpStatus,
    EndReason,
    Envelope,
    ErrorReport,
    ErrorCode,
    FaultCode,
    FaultReport,
    Flags,
    HealthCheck,
    HealthState,
    HealthStatus,
    Hello,
    Message,
    MessageType,
    MeterReadRequest,
    MeterStatus,
    MeterValues,
    AuthChallenge,
    AuthProof,
    AuthResult,
    CpKey,
    Ping,
    ReasonCode,
    RecoveryReport,
    Reject,
    Role,
    SupplyEnd,
    SupplyTelemetry,
    APP_TYPES,
    Opaque,
    clip_text,
    decode_body,
    encode_body,
    is_known_type,
    register_message,
)
from . import wire

# A library never configures logging; applications do.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

__all__ = [
    "__version__",
    # errors
    "EvprotoError", "ProtocolError", "LocalProtocolError", "RemoteProtocolError",
    "MessageDecodeError", "MessageEncodeError", "SendQueueFull", "LinkError",
    "LinkDownError", "LinkRejectedError", "IncomingOverflowError", "RequestTimeoutError", "TransportError",
    # frames
    "DEFAULT_MAX_BODY", "Control", "lrc", "encode_frame", "FrameDecoder", "DecoderStats", "DecoderEvent", "Backoff", "Endpoint", "parse_endpoint",
    "FrameReceived", "ControlReceived", "FrameError", "FrameErrorKind", "Garbage",
    # messages
    "PROTOCOL_VERSION", "MessageType", "Flags", "Role", "ReasonCode", "HealthState",
    "FaultCode", "CpState", "CommandAction", "EndReason", "ErrorCode", "MeterStatus",
    "Message", "Envelope", "Hello", "Accept", "Reject", "Ping", "ErrorReport", "HealthCheck",
    "HealthStatus", "FaultReport", "RecoveryReport", "CpStatus", "Command",
    "AuthorizeSupply", "CommandResult", "SupplyTelemetry", "SupplyEnd",
    "MeterReadRequest", "MeterValues", "encode_body", "decode_body", "clip_text", "Opaque", "register_message", "is_known_type", "APP_TYPES", "wire",
    "AuthChallenge", "AuthProof", "AuthResult", "CpKey",
    # link
    "Side", "LinkConfig", "LinkConnection", "LinkStats", "LinkState", "DownReason",
    "HelloReceived", "Connected", "MessageReceived", "RequestReceived", "UnknownMessageReceived",
    "ResponseReceived", "RequestTimedOut", "Delivered", "LinkDown",
]
