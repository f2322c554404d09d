"""The one exception tree of evproto: everything we raise derives from EvprotoError."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # errors is imported by the modules that define these
    from .link import DownReason
    from .messages import ReasonCode

__all__ = [
    "EvprotoError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "MessageDecodeError",
    "MessageEncodeError",
    "SendQueueFull",
    "LinkError",
    "LinkDownError",
    "LinkRejectedError",
    "IncomingOverflowError",
    "RequestTimeoutError",
    "TransportError",
]


class EvprotoError(Exception):
    """Base class of every exception raised by evproto."""


class ProtocolError(EvprotoError):
    """Something broke the protocol's rules; see the two subclasses for who did."""


class LocalProtocolError(ProtocolError):
    """We misused the protocol: a call in the wrong state, a value that cannot be encoded."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that breaks the protocol.

    ``reply`` holds the bytes the link answers with (a NACK), so callers that
    catch it can always respond correctly.
    """

    def __init__(self, message: str, *, reply: bytes = b"\x15") -> None:
        super().__init__(message)
        self.reply = reply


class MessageDecodeError(RemoteProtocolError):
    """A frame body that is not a valid message: unknown type, wrong size, bad field value."""

    def __init__(self, message: str, *, msg_type: int | None = None, body: bytes = b"") -> None:
        super().__init__(message)
        self.msg_type = msg_type
        #: The first bytes of the offending body, kept short for logs.
        self.body_prefix = body[:32]


class MessageEncodeError(LocalProtocolError):
    """A message that cannot be put on the wire (string too long, value out of range)."""


class SendQueueFull(LocalProtocolError):
    """The link's bounded outbound queue is full; the caller decides what to drop."""


class LinkError(EvprotoError):
    """Errors of a live link (async API)."""


class LinkDownError(LinkError):
    """The link is down; ``reason`` says why (:class:`evproto.link.DownReason`)."""

    def __init__(self, reason: DownReason, detail: str = "") -> None:
        text = f"link down: {getattr(reason, 'value', reason)}"
        if detail:
            text += f" ({detail})"
        super().__init__(text)
        self.reason: DownReason = reason
        self.detail = detail

    @property
    def clean(self) -> bool:
        """True when the link ended with an orderly goodbye (EOT) rather than a loss."""
        return bool(getattr(self.reason, "clean", False))


class LinkRejectedError(LinkDownError):
    """The server refused our hello; ``code`` is its :class:`evproto.messages.ReasonCode`."""

    def __init__(self, reason: DownReason, detail: str = "", *, code: ReasonCode | None = None) -> None:
        super().__init__(reason, detail)
        self.code: ReasonCode | None = code


class IncomingOverflowError(LinkDownError):
    """The application left more received messages unread than ``LinkConfig.max_incoming``
    allows; the link was closed (with EOT) rather than stall or drop them. Read
    ``link.messages`` (or raise the limit)."""

    def __init__(self, limit: int) -> None:
        from .link import DownReason  # errors is imported by link: import late

        super().__init__(
            DownReason.CLOSED,
            f"{limit} received messages left unread (LinkConfig.max_incoming): read them, or raise the limit",
        )
        self.limit = limit


class RequestTimeoutError(LinkError, TimeoutError):
    """No answer to a request within its timeout."""


class TransportError(EvprotoError):
    """A transport URL that is malformed or cannot be opened."""
