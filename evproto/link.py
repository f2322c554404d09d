"""The link: a sans-I/O connection state machine over the frame envelope.

One :class:`LinkConnection` is one conversation between a client and a server.
It never touches a socket or a clock: feed it bytes with :meth:`~LinkConnection.receive_data`
(``b""`` means EOF), read what it decided with :meth:`~LinkConnection.next_event`, write
what :meth:`~LinkConnection.data_to_send` returns, and call
:meth:`~LinkConnection.handle_timer` when the deadline from
:meth:`~LinkConnection.get_timer` passes. Every time argument is a monotonic
float in seconds supplied by the caller.

The exchange (docs/protocol.md has the full table from :mod:`evproto.link_table`)::

    client                     server
    ENQ  ------------------->
         <-------------------  ACK
    Hello frame ------------>
         <-------------------  ACK, Accept frame (or Reject frame, EOT)
    ACK  ------------------->
    ... frames both ways, each answered ACK (or NACK -> retransmit) ...
    EOT  ------------------->  (either side; an orderly goodbye)

Reliability is MQTT-QoS-1-like: one unacknowledged frame per direction
(stop-and-wait), a sequence number per frame, retransmission on NACK or ACK
timeout with bounded retries, duplicates recognised by sequence number and
acknowledged again without being delivered twice, one outstanding request per
direction correlated by ``ref``, idle probes (Ping) and dead-peer detection.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

from .errors import LinkDownError, LinkRejectedError, LocalProtocolError, MessageDecodeError, SendQueueFull
from .frame import (
    Control,
    ControlReceived,
    DecoderEvent,
    FrameDecoder,
    FrameError,
    FrameErrorKind,
    FrameReceived,
    encode_frame,
)
from .link_table import TABLE, LinkAction, LinkInput, LinkState
from .messages import (
    HEADER_SIZE,
    PROTOCOL_VERSION,
    Accept,
    Envelope,
    ErrorCode,
    ErrorReport,
    Flags,
    Hello,
    Message,
    Ping,
    ReasonCode,
    Reject,
    clip_text,
    decode_body,
    encode_body,
    is_known_type,
)

#: Type, flags, seq, ref: read from a body whose type is unknown (docs/protocol.md §2).
_HEADER = struct.Struct(">BBHH")

__all__ = [
    "Side",
    "LinkConfig",
    "LinkConnection",
    "LinkStats",
    "DownReason",
    "LinkEvent",
    "HelloReceived",
    "Connected",
    "MessageReceived",
    "RequestReceived",
    "UnknownMessageReceived",
    "ResponseReceived",
    "RequestTimedOut",
    "Delivered",
    "LinkDown",
    "LinkState",
]

_ACK = Control.ACK.byte
_NACK = Control.NACK.byte
_ENQ = Control.ENQ.byte
_EOT = Control.EOT.byte

#: A server probes an idle link after this many keepalives (a client after one).
SERVER_PROBE_FACTOR = 1.5


class Side(enum.Enum):
    """Which end of the link: the client sends ENQ and Hello, the server answers."""

    CLIENT = "client"
    SERVER = "server"


class DownReason(enum.Enum):
    """Why a link ended. Only the first two are an orderly goodbye (``clean``)."""

    #: The peer sent EOT.
    PEER_CLOSED = "peer_closed"
    #: We called close() and sent EOT.
    CLOSED = "closed"
    #: Nothing heard from the peer for longer than the keepalive allows, or not a byte
    #: while a frame went unacknowledged through every retry (cable pulled, peer hung).
    PEER_SILENT = "peer_silent"
    #: The handshake (ENQ, Hello, Accept) did not finish in time.
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    #: The transport ended (EOF, reset) without EOT: the peer crashed or the connection broke.
    CONNECTION_LOST = "connection_lost"
    #: The peer started a new session (ENQ) in the middle of this one: it restarted.
    PEER_RESET = "peer_reset"
    #: A frame was not acknowledged after every retry although the peer was heard meanwhile.
    RETRIES_EXHAUSTED = "retries_exhausted"
    #: Too many bad frames in a row.
    PROTOCOL_ERROR = "protocol_error"
    #: The server refused the Hello (see LinkDown.code).
    REJECTED = "rejected"

    @property
    def clean(self) -> bool:
        """True for an orderly goodbye; False for a loss (MQTT's "last will" case)."""
        return self in (DownReason.PEER_CLOSED, DownReason.CLOSED)


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkConfig:
    """Timing and bounds of a link. Defaults suit a 1 s health check on a LAN or serial line.

    With the default 1 s keepalive a silent peer is declared dead after
    ``keepalive * (missed_probes + 0.5)`` = 2.5 s, inside the 3 s the network
    promises for a pulled cable.
    """

    #: Probes the peer may miss before it is declared dead.
    missed_probes: int = 2
    #: Keepalive range a server accepts; a client's proposal is clamped into it.
    min_keepalive_s: float = 0.1
    max_keepalive_s: float = 60.0
    #: Time to wait for ACK before retransmitting.
    ack_timeout_s: float = 0.5
    #: Retransmissions of one frame (or ENQ) before the link is declared failed.
    max_retries: int = 3
    #: Time allowed for ENQ, Hello and Accept.
    handshake_timeout_s: float = 5.0
    #: A frame left incomplete this long after its last byte is abandoned (resync).
    interbyte_timeout_s: float = 0.5
    #: Largest BODY sent or accepted.
    max_body: int = 4096
    #: Frames that may wait behind the one in flight.
    max_queue: int = 64
    #: Bad frames in a row before the link gives up.
    max_consecutive_errors: int = 8
    #: Default time a request waits for its answer.
    request_timeout_s: float = 5.0
    #: Received messages the application has not read yet that an adapter keeps
    #: (``evproto.aio``: ``link.messages``). One more closes the link with
    #: :class:`~evproto.errors.IncomingOverflowError`: reading never stops, so
    #: acknowledgements, keepalives and answers to requests are never held up
    #: behind unread messages.
    max_incoming: int = 256

    def __post_init__(self) -> None:
        for name in ("ack_timeout_s", "handshake_timeout_s", "interbyte_timeout_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.missed_probes < 1 or self.max_retries < 0 or self.max_queue < 1 or self.max_incoming < 1:
            raise ValueError("missed_probes >= 1, max_retries >= 0, max_queue >= 1 and max_incoming >= 1 are required")
        if not 0 < self.min_keepalive_s <= self.max_keepalive_s <= 65.535:
            raise ValueError("keepalive bounds must satisfy 0 < min <= max <= 65.535 s")

    def silence_limit_s(self, keepalive_s: float) -> float:
        """How long the peer may stay silent before it is declared dead."""
        return keepalive_s * (self.missed_probes + 0.5)


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HelloReceived:
    """Server side: a client said hello. Call ``accept()`` or ``reject()``."""

    hello: Hello


@dataclass(frozen=True, slots=True, kw_only=True)
class Connected:
    """The handshake finished; the link is OPEN."""

    peer_id: str
    keepalive_s: float
    protocol_version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived:
    """A one-way message from the peer."""

    message: Message
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestReceived:
    """The peer asks something; answer with ``respond(request_id, message)``."""

    message: Message
    request_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownMessageReceived:
    """A frame that arrived intact but whose type this side does not know (a newer
    peer, or an application type nobody registered here). It was acknowledged and
    the peer told so with an ``ErrorReport(code=UNKNOWN_TYPE, ref=seq)``; the link
    stays up."""

    msg_type: int
    payload: bytes
    seq: int
    #: The peer asked for an answer (it got the ErrorReport as that answer).
    request: bool = False

    @property
    def message(self) -> None:
        """None: no catalogue message (code that reads ``event.message`` sees nothing it knows)."""
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseReceived:
    """The answer to our request ``request_id``."""

    message: Message
    request_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestTimedOut:
    """No answer to request ``request_id`` in time; the request slot is free again."""

    request_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivered:
    """The peer acknowledged our frame ``seq``."""

    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkDown:
    """The link ended. ``undelivered`` holds messages the peer never acknowledged, in order."""

    reason: DownReason
    detail: str = ""
    code: ReasonCode | None = None
    undelivered: tuple[Message, ...] = ()

    @property
    def clean(self) -> bool:
        """True when the link ended with EOT rather than a loss."""
        return self.reason.clean

    def error(self) -> LinkDownError:
        """The exception an adapter raises for this ending (LinkRejectedError for a Reject)."""
        if self.reason is DownReason.REJECTED:
            return LinkRejectedError(self.reason, self.detail, code=self.code)
        return LinkDownError(self.reason, self.detail)


LinkEvent = (
    HelloReceived
    | Connected
    | MessageReceived
    | RequestReceived
    | UnknownMessageReceived
    | ResponseReceived
    | RequestTimedOut
    | Delivered
    | LinkDown
)


@dataclass(slots=True)
class LinkStats:
    """Counters of one connection."""

    frames_sent: int = 0
    frames_received: int = 0
    retransmissions: int = 0
    nacks_sent: int = 0
    nacks_received: int = 0
    duplicates: int = 0
    stray_controls: int = 0
    late_responses: int = 0
    #: Frames of a type this side does not know (acknowledged, answered with ErrorReport).
    unknown_types: int = 0
    bad_frames: int = 0
    resyncs: int = 0
    last_error: str = ""
    errors_by_kind: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _InFlight:
    seq: int
    wire: bytes
    message: Message
    deadline: float
    copies: int = 1
    nacks: int = 0
    first_sent: float = 0.0


# -- what an input carries to its action -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _AcceptCall:
    """accept(): the keepalive the server wants (None: the client's, clamped)."""

    keepalive_ms: int | None


@dataclass(frozen=True, slots=True)
class _RejectCall:
    """reject(): why."""

    code: ReasonCode
    detail: str


@dataclass(frozen=True, slots=True)
class _SendCall:
    """send()/request()/respond(): the message and its header fields."""

    message: Message
    flags: int
    ref: int


@dataclass(frozen=True, slots=True)
class _UnknownFrame:
    """An intact frame of a type this side does not know: its header and payload."""

    msg_type: int
    flags: int
    seq: int
    ref: int
    payload: bytes


#: The data an input brings: a decoded frame (Envelope), an unknown frame, a call's
#: arguments, or nothing (control bytes, EOF, timers, close()).
_InputData: TypeAlias = Envelope | _UnknownFrame | _AcceptCall | _RejectCall | _SendCall | None


class LinkConnection:
    """One link conversation, client or server side. See the module docstring."""

    def __init__(
        self,
        side: Side,
        *,
        hello: Hello | None = None,
        config: LinkConfig | None = None,
        node_id: str = "",
    ) -> None:
        """``hello`` is required on the client side; ``node_id`` names a server in its Accept."""
        if side is Side.CLIENT and hello is None:
            raise LocalProtocolError("a client link needs the Hello it will send")
        self.side = side
        self.config = config or LinkConfig()
        self.hello = hello
        self.node_id = node_id
        self.state = LinkState.IDLE if side is Side.CLIENT else LinkState.AWAIT_ENQ
        self.stats = LinkStats()
        self.decoder = FrameDecoder(max_body=self.config.max_body)
        #: The agreed keepalive (seconds), known once Connected.
        self.keepalive_s: float | None = None
        self._probe_after_s = 0.0
        #: The peer's Hello (server side) once received.
        self.peer_hello: Hello | None = None
        #: The server's Accept (client side) once received.
        self.peer_accept: Accept | None = None
        self.down: LinkDown | None = None
        self._out = bytearray()
        self._events: deque[LinkEvent] = deque()
        self._queue: deque[_InFlight] = deque()
        self._inflight: _InFlight | None = None
        self._next_seq = 1
        self._last_rx_seq: int | None = None
        self._enq_tries = 0
        self._enq_deadline: float | None = None
        self._dup_acks_expected = 0
        self._settle_until: float | None = None
        self._last_tx = 0.0
        self._last_rx = 0.0
        self._last_byte_rx = 0.0
        self._silence_deadline: float | None = None
        self._request: tuple[int, float] | None = None
        self._consecutive_errors = 0

    # -- public API ------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin: a client sends ENQ; a server arms its handshake timer."""
        self._handle(LinkInput.CALL_START, now)

    def accept(self, now: float, *, keepalive_ms: int | None = None) -> None:
        """Server: accept the pending Hello (keepalive defaults to the client's, clamped)."""
        self._handle(LinkInput.CALL_ACCEPT, now, _AcceptCall(keepalive_ms))

    def reject(self, now: float, code: ReasonCode, detail: str = "") -> None:
        """Server: refuse the pending Hello with ``code``; sends Reject then EOT."""
        # The reason must fit, or the peer sees no Reject at all.
        self._handle(LinkInput.CALL_REJECT, now, _RejectCall(code, clip_text(detail)))

    def send(self, message: Message, now: float) -> int:
        """Queue a one-way message; returns its sequence number (a Delivered event follows)."""
        return self._send(message, now, flags=0, ref=0)

    def request(self, message: Message, now: float, *, timeout_s: float | None = None) -> int:
        """Send ``message`` expecting an answer; returns the request id.

        One request may be outstanding per direction: a second call before the
        answer (or RequestTimedOut) raises LocalProtocolError.
        """
        if self._request is not None:
            raise LocalProtocolError(f"request {self._request[0]} is still outstanding")
        seq = self._send(message, now, flags=Flags.REQUEST, ref=0)
        timeout = self.config.request_timeout_s if timeout_s is None else timeout_s
        self._request = (seq, now + timeout)
        return seq

    def cancel_request(self) -> None:
        """Give up waiting for the outstanding request's answer (a late answer is dropped)."""
        self._request = None

    def respond(self, request_id: int, message: Message, now: float) -> int:
        """Answer the peer's request ``request_id``."""
        return self._send(message, now, flags=Flags.RESPONSE, ref=request_id)

    def close(self, now: float) -> None:
        """End the link with EOT (an orderly goodbye). Closing twice is harmless."""
        self._handle(LinkInput.CALL_CLOSE, now)

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read from the transport; ``b""`` means the transport hit EOF."""
        if self.state is LinkState.CLOSED:
            return
        if not data:
            self._handle(LinkInput.RX_EOF, now)
            return
        self._last_byte_rx = now
        self._dispatch_decoded(self.decoder.feed(data), now)

    def next_event(self) -> LinkEvent | None:
        """The next event, or None when there is none for now."""
        return self._events.popleft() if self._events else None

    def events(self) -> list[LinkEvent]:
        """Every pending event, oldest first."""
        out = list(self._events)
        self._events.clear()
        return out

    def data_to_send(self) -> bytes:
        """Bytes the transport must write now (possibly empty)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def get_timer(self) -> float | None:
        """The earliest deadline at which :meth:`handle_timer` must be called, or None."""
        if self.state is LinkState.CLOSED:
            return None
        candidates = [d for d in self._deadlines().values() if d is not None]
        return min(candidates) if candidates else None

    @property
    def is_live(self) -> bool:
        """False once the link has ended (state CLOSED)."""
        return self.state is not LinkState.CLOSED

    def handle_timer(self, now: float) -> None:
        """Run every timer that is due at ``now``."""
        if self.state is LinkState.CLOSED:
            return
        d = self._deadlines()
        if d["interbyte"] is not None and now >= d["interbyte"]:
            self.stats.resyncs += 1
            self._dispatch_decoded(self.decoder.resync(), now)
        if d["retransmit"] is not None and now >= d["retransmit"]:
            self._handle(LinkInput.TIMER_RETRANSMIT, now)
        if d["silence"] is not None and now >= d["silence"] and self.is_live:
            self._handle(LinkInput.TIMER_SILENCE, now)
        if d["request"] is not None and now >= d["request"] and self._request is not None:
            request_id = self._request[0]
            self._request = None
            self._events.append(RequestTimedOut(request_id=request_id))
        if d["keepalive"] is not None and now >= d["keepalive"] and self.is_live:
            self._handle(LinkInput.TIMER_KEEPALIVE, now)

    @property
    def request_pending(self) -> bool:
        """True while our request waits for its answer."""
        return self._request is not None

    @property
    def queued(self) -> int:
        """Frames not yet acknowledged (in flight plus waiting)."""
        return len(self._queue) + (self._inflight is not None)

    # -- dispatch --------------------------------------------------------------------------

    def _deadlines(self) -> dict[str, float | None]:
        retransmit: float | None = None
        if self.state is LinkState.ENQ_SENT:
            retransmit = self._enq_deadline
        elif self._inflight is not None:
            retransmit = self._inflight.deadline
        elif self._settle_until is not None and self._queue:
            retransmit = self._settle_until
        keepalive = None
        if self.state is LinkState.OPEN and self.keepalive_s is not None:
            keepalive = self._last_tx + self._probe_after_s
        return {
            "interbyte": (self._last_byte_rx + self.config.interbyte_timeout_s if self.decoder.wants_resync else None),
            "retransmit": retransmit,
            "silence": self._silence_deadline,
            "request": self._request[1] if self._request is not None else None,
            "keepalive": keepalive,
        }

    def _handle(self, inp: LinkInput, now: float, data: _InputData = None) -> int | None:
        """Run the table's action for ``inp`` with ``data``; return what it returns (a seq)."""
        action, next_state = _DISPATCH[(self.state, inp)]
        before = self.state
        result = action(self, now, inp, data)
        # An action that ended the link has already moved to CLOSED.
        if next_state is not None and self.state is before:
            self.state = next_state
        self._pump(now)
        return result

    def _dispatch_decoded(self, decoded: list[DecoderEvent], now: float) -> None:
        for ev in decoded:
            if self.state is LinkState.CLOSED:
                return
            if isinstance(ev, FrameReceived):
                self._last_rx = now
                self._rearm_silence(now)
                try:
                    env = decode_body(ev.body)
                except MessageDecodeError as exc:
                    if len(ev.body) >= HEADER_SIZE and not is_known_type(ev.body[0]):
                        self._on_unknown_type(ev.body, now)
                        continue
                    self._note_error("bad_message", str(exc))
                    self._handle(LinkInput.RX_BAD, now)
                    continue
                self.stats.frames_received += 1
                self._handle(self._classify(env), now, env)
            elif isinstance(ev, ControlReceived):
                self._last_rx = now
                self._rearm_silence(now)
                self._handle(_CONTROL_INPUT[ev.control], now)
            elif isinstance(ev, FrameError):
                self._note_error(ev.kind.value, ev.detail)
                if ev.kind is FrameErrorKind.TRUNCATED:
                    # Found only once the line went quiet: the frame it began may be one the
                    # sender has moved past since, and a bare NACK sent now would be taken for
                    # a NACK of its current frame (whose ACK would then be counted twice). The
                    # sender's own ACK timeout sends again what it still needs.
                    continue
                self._handle(LinkInput.RX_BAD, now)
            # Garbage is counted by the decoder and otherwise ignored.

    def _on_unknown_type(self, body: bytes, now: float) -> None:
        msg_type, flags, seq, ref = _HEADER.unpack_from(body)
        frame = _UnknownFrame(msg_type, flags, seq, ref, bytes(body[HEADER_SIZE:]))
        if self._last_rx_seq is not None and seq == self._last_rx_seq:
            self._handle(LinkInput.RX_DUPLICATE, now, frame)
            return
        self.stats.frames_received += 1
        self._handle(LinkInput.RX_UNKNOWN, now, frame)

    def _classify(self, env: Envelope) -> LinkInput:
        if self._last_rx_seq is not None and env.seq == self._last_rx_seq:
            return LinkInput.RX_DUPLICATE
        msg = env.message
        if isinstance(msg, Hello):
            return LinkInput.RX_HELLO
        if isinstance(msg, Accept):
            return LinkInput.RX_ACCEPT
        if isinstance(msg, Reject):
            return LinkInput.RX_REJECT
        return LinkInput.RX_DATA

    def _note_error(self, kind: str, detail: str) -> None:
        self.stats.bad_frames += 1
        self.stats.errors_by_kind[kind] = self.stats.errors_by_kind.get(kind, 0) + 1
        self.stats.last_error = detail

    def _rearm_silence(self, now: float) -> None:
        if self.state is LinkState.OPEN and self.keepalive_s is not None:
            self._silence_deadline = now + self.config.silence_limit_s(self.keepalive_s)

    # -- sending machinery -----------------------------------------------------------------

    def _write(self, data: bytes, now: float) -> None:
        self._out += data
        self._last_tx = now

    def _alloc_seq(self) -> int:
        seq = self._next_seq
        self._next_seq = seq + 1 if seq < 0xFFFF else 1
        return seq

    def _enqueue(self, message: Message, now: float, *, flags: int = 0, ref: int = 0) -> int:
        seq = self._alloc_seq()
        wire = encode_frame(encode_body(message, seq=seq, ref=ref, flags=flags), max_body=self.config.max_body)
        self._queue.append(_InFlight(seq, wire, message, 0.0))
        return seq

    def _send(self, message: Message, now: float, *, flags: int, ref: int) -> int:
        if self.state is not LinkState.OPEN:
            raise LocalProtocolError(f"cannot send {type(message).__name__} in state {self.state.value}")
        if len(self._queue) >= self.config.max_queue:
            raise SendQueueFull(f"{len(self._queue)} frames already queued")
        seq = self._handle(LinkInput.CALL_SEND, now, _SendCall(message, flags, ref))
        assert seq is not None  # OPEN: the table's action is queue_send
        return seq

    def _pump(self, now: float) -> None:
        """Put the next queued frame on the wire when nothing is in flight."""
        if self._inflight is not None or not self._queue or self.state is LinkState.CLOSED:
            return
        if self._settle_until is not None:
            if self._dup_acks_expected > 0 and now < self._settle_until:
                return
            self._settle_until = None
            self._dup_acks_expected = 0
        item = self._queue.popleft()
        item.deadline = now + self.config.ack_timeout_s
        item.first_sent = now
        self._inflight = item
        self.stats.frames_sent += 1
        self._write(item.wire, now)

    def _go_down(self, reason: DownReason, detail: str = "", code: ReasonCode | None = None) -> None:
        undelivered = []
        if self._inflight is not None:
            undelivered.append(self._inflight.message)
        undelivered.extend(item.message for item in self._queue)
        self._inflight = None
        self._queue.clear()
        self._request = None
        self._silence_deadline = None
        self.state = LinkState.CLOSED
        self.down = LinkDown(
            reason=reason,
            detail=detail,
            code=code,
            undelivered=tuple(m for m in undelivered if not isinstance(m, _LINK_MESSAGES)),
        )
        self._events.append(self.down)

    # -- actions (link_table.LinkAction; each resolved to its method in _ACTIONS below) ----

    def _a_ignore(self, now: float, inp: LinkInput, data: _InputData) -> None:
        if inp.name.startswith("RX_") and inp is not LinkInput.RX_EOF:
            self.stats.stray_controls += 1

    def _a_local_error(self, now: float, inp: LinkInput, data: _InputData) -> None:
        raise LocalProtocolError(f"{inp.value} is not allowed in state {self.state.value}")

    def _a_start_client(self, now: float, inp: LinkInput, data: _InputData) -> None:
        self._enq_tries = 1
        self._enq_deadline = now + self.config.ack_timeout_s
        self._silence_deadline = now + self.config.handshake_timeout_s
        self._write(_ENQ, now)

    def _a_start_server(self, now: float, inp: LinkInput, data: _InputData) -> None:
        self._silence_deadline = now + self.config.handshake_timeout_s

    def _a_enq_acked(self, now: float, inp: LinkInput, data: _InputData) -> None:
        self._enq_deadline = None
        assert self.hello is not None
        self._enqueue(self.hello, now)

    def _a_enq_nacked(self, now: float, inp: LinkInput, data: _InputData) -> None:
        self.stats.nacks_received += 1
        self._retry_enq(now)

    def _retry_enq(self, now: float) -> None:
        if self._enq_tries > self.config.max_retries:
            self._go_down(DownReason.RETRIES_EXHAUSTED, f"ENQ unanswered after {self._enq_tries} tries")
            return
        self._enq_tries += 1
        self.stats.retransmissions += 1
        self._enq_deadline = now + self.config.ack_timeout_s
        self._write(_ENQ, now)

    def _a_answer_enq(self, now: float, inp: LinkInput, data: _InputData) -> None:
        self._write(_ACK, now)

    def _ack_rx(self, seq: int, now: float) -> None:
        self._last_rx_seq = seq
        self._consecutive_errors = 0
        self._write(_ACK, now)

    def _a_hello_received(self, now: float, inp: LinkInput, data: _InputData) -> None:
        assert isinstance(data, Envelope) and isinstance(data.message, Hello)
        self._ack_rx(data.seq, now)
        hello = data.message
        self.peer_hello = hello
        self._events.append(HelloReceived(hello=hello))

    def _a_accepted(self, now: float, inp: LinkInput, data: _InputData) -> None:
        assert isinstance(data, Envelope) and isinstance(data.message, Accept)
        self._ack_rx(data.seq, now)
        accept = data.message
        self.peer_accept = accept
        if self._inflight is not None:  # the Accept proves our Hello arrived even if its ACK did not
            self._complete_inflight(now)
        self._open(accept.keepalive_ms, now)
        self._events.append(
            Connected(
                peer_id=accept.node_id, keepalive_s=self.keepalive_s or 0.0, protocol_version=accept.protocol_version
            )
        )

    def _open(self, keepalive_ms: int, now: float) -> None:
        self.keepalive_s = keepalive_ms / 1000.0
        # The client probes after one idle keepalive; the server waits half a keepalive
        # longer, so a live client's Ping (whose ACK is the server's transmission) always
        # comes first: one Ping and one ACK per keepalive per link, not two of each.
        self._probe_after_s = self.keepalive_s * (1.0 if self.side is Side.CLIENT else SERVER_PROBE_FACTOR)
        self.state = LinkState.OPEN
        self._rearm_silence(now)

    def _a_rejected(self, now: float, inp: LinkInput, data: _InputData) -> None:
        assert isinstance(data, Envelope) and isinstance(data.message, Reject)
        self._ack_rx(data.seq, now)
        rej = data.message
        self._go_down(DownReason.REJECTED, rej.detail or rej.code.name.lower(), rej.code)

    def _a_do_accept(self, now: float, inp: LinkInput, data: _InputData) -> None:
        assert isinstance(data, _AcceptCall) and self.peer_hello is not None
        cfg = self.config
        wanted = data.keepalive_ms if data.keepalive_ms is not None else self.peer_hello.keepalive_ms
        keepalive_ms = int(min(max(wanted, cfg.min_keepalive_s * 1000), cfg.max_keepalive_s * 1000))
        self._enqueue(Accept(node_id=self.node_id, protocol_version=PROTOCOL_VERSION, keepalive_ms=keepalive_ms), now)
        self._open(keepalive_ms, now)
        self._events.append(
            Connected(
                peer_id=self.peer_hello.node_id,
                keepalive_s=keepalive_ms / 1000.0,
                protocol_version=self.peer_hello.protocol_version,
            )
        )

    def _a_do_reject(self, now: float, inp: LinkInput, data: _InputData) -> None:
        assert isinstance(data, _RejectCall)
        wire = encode_frame(
            encode_body(Reject(code=data.code, detail=data.detail), seq=self._alloc_seq()),
            max_body=self.config.max_body,
        )
        self.stats.frames_sent += 1
        self._write(wire + _EOT, now)
        self._go_down(DownReason.REJECTED, data.detail or data.code.name.lower(), data.code)

    def _a_queue_send(self, now: float, inp: LinkInput, data: _InputData) -> int:
        assert isinstance(data, _SendCall)
        return self._enqueue(data.message, now, flags=data.flags, ref=data.ref)

    def _a_deliver(self, now: float, inp: LinkInput, data: _InputData) -> None:
        assert isinstance(data, Envelope)
        env = data
        self._ack_rx(env.seq, now)
        msg = env.message
        if isinstance(msg, Ping):
            return
        if env.flags & Flags.RESPONSE:
            if self._request is not None and env.ref == self._request[0]:
                self._request = None
                self._events.append(ResponseReceived(message=msg, request_id=env.ref))
            else:
                self.stats.late_responses += 1
        elif env.flags & Flags.REQUEST:
            self._events.append(RequestReceived(message=msg, request_id=env.seq))
        else:
            self._events.append(MessageReceived(message=msg, seq=env.seq))

    def _a_unknown(self, now: float, inp: LinkInput, data: _InputData) -> None:
        assert isinstance(data, _UnknownFrame)
        msg_type, flags, seq, ref = data.msg_type, data.flags, data.seq, data.ref
        self._last_rx_seq = seq
        self._consecutive_errors = 0
        self._write(_ACK, now)
        self.stats.unknown_types += 1
        what = f"message type 0x{msg_type:02x}"
        if flags & Flags.RESPONSE:
            # The peer answered our request with a type we do not know: the request ends
            # with an ErrorReport the caller can handle, rather than a timeout.
            if self._request is not None and ref == self._request[0]:
                self._request = None
                report = ErrorReport(code=ErrorCode.UNKNOWN_TYPE, detail=f"the answer is a {what} unknown here")
                self._events.append(ResponseReceived(message=report, request_id=ref))
            else:
                self.stats.late_responses += 1
            return
        if len(self._queue) < self.config.max_queue:
            report = ErrorReport(
                code=ErrorCode.UNKNOWN_TYPE,
                detail=clip_text(
                    f"{what} is unknown to {self.node_id or (self.hello.node_id if self.hello else 'this peer')}"
                ),
            )
            self._enqueue(report, now, flags=Flags.RESPONSE if flags & Flags.REQUEST else 0, ref=seq)
        self._events.append(
            UnknownMessageReceived(
                msg_type=msg_type, payload=data.payload, seq=seq, request=bool(flags & Flags.REQUEST)
            )
        )

    def _a_reack(self, now: float, inp: LinkInput, data: _InputData) -> None:
        self.stats.duplicates += 1
        self._write(_ACK, now)

    def _complete_inflight(self, now: float) -> None:
        item = self._inflight
        assert item is not None
        self._inflight = None
        extra = item.copies - 1 - item.nacks
        if extra > 0:
            # Bare ACKs carry no sequence number: ACKs for the extra copies may still be
            # on their way. Hold the next frame until they arrive (or a short settle
            # time passes) so that none of them is taken for the next frame's ACK.
            self._dup_acks_expected = extra
            self._settle_until = now + self.config.ack_timeout_s
        else:
            self._dup_acks_expected = 0
            self._settle_until = None
        if not isinstance(item.message, _LINK_MESSAGES):
            self._events.append(Delivered(seq=item.seq))

    def _a_frame_acked(self, now: float, inp: LinkInput, data: _InputData) -> None:
        if self._inflight is not None:
            self._complete_inflight(now)
        elif self._dup_acks_expected > 0:
            self._dup_acks_expected -= 1
        else:
            self.stats.stray_controls += 1

    def _a_frame_nacked(self, now: float, inp: LinkInput, data: _InputData) -> None:
        self.stats.nacks_received += 1
        if self._inflight is None:
            self.stats.stray_controls += 1
            return
        self._inflight.nacks += 1
        self._retransmit(now)

    def _retransmit(self, now: float) -> None:
        item = self._inflight
        assert item is not None
        if item.copies > self.config.max_retries:
            if self._last_rx < item.first_sent:
                # Not a byte since the frame first went out: the peer is gone, not refusing.
                self._go_down(
                    DownReason.PEER_SILENT,
                    f"nothing heard for {now - self._last_rx:.1f} s; frame seq {item.seq} sent {item.copies} times",
                )
            else:
                self._go_down(
                    DownReason.RETRIES_EXHAUSTED, f"frame seq {item.seq} unacknowledged after {item.copies} copies"
                )
            return
        item.copies += 1
        item.deadline = now + self.config.ack_timeout_s
        if item.copies == 2:
            # Set the DUP flag on retransmissions (header byte 1 of the BODY at offset 3+1).
            wire = bytearray(item.wire)
            wire[4] |= Flags.DUP
            wire[-1] ^= Flags.DUP  # keep the LRC right: it XORs every byte once
            item.wire = bytes(wire)
        self.stats.retransmissions += 1
        self._write(item.wire, now)

    def _a_retransmit(self, now: float, inp: LinkInput, data: _InputData) -> None:
        if self.state is LinkState.ENQ_SENT:
            self._retry_enq(now)
        elif self._inflight is not None and now >= self._inflight.deadline:
            self._retransmit(now)
        # otherwise the settle time ended; _pump sends the next frame

    def _a_nack(self, now: float, inp: LinkInput, data: _InputData) -> None:
        self._consecutive_errors += 1
        self.stats.nacks_sent += 1
        if inp is not LinkInput.RX_BAD:
            self._note_error("unexpected", f"{inp.value} in state {self.state.value}")
        self._write(_NACK, now)
        if self._consecutive_errors > self.config.max_consecutive_errors:
            self._go_down(
                DownReason.PROTOCOL_ERROR, f"{self._consecutive_errors} bad frames in a row: {self.stats.last_error}"
            )

    def _a_keepalive(self, now: float, inp: LinkInput, data: _InputData) -> None:
        if self._inflight is None and not self._queue:
            self._enqueue(Ping(), now)
        else:
            # Traffic is pending; its ACK is the probe. Push the idle timer forward.
            self._last_tx = now

    def _a_close_local(self, now: float, inp: LinkInput, data: _InputData) -> None:
        self._write(_EOT, now)
        self._go_down(DownReason.CLOSED)

    def _a_close_quiet(self, now: float, inp: LinkInput, data: _InputData) -> None:
        self._go_down(DownReason.CLOSED)

    def _a_peer_closed(self, now: float, inp: LinkInput, data: _InputData) -> None:
        self._go_down(DownReason.PEER_CLOSED)

    def _a_connection_lost(self, now: float, inp: LinkInput, data: _InputData) -> None:
        self._go_down(DownReason.CONNECTION_LOST, "transport closed without EOT")

    def _a_peer_reset(self, now: float, inp: LinkInput, data: _InputData) -> None:
        self._go_down(DownReason.PEER_RESET, "peer sent ENQ in the middle of a session")

    def _a_handshake_timeout(self, now: float, inp: LinkInput, data: _InputData) -> None:
        self._go_down(DownReason.HANDSHAKE_TIMEOUT, f"no handshake within {self.config.handshake_timeout_s:g} s")

    def _a_peer_silent(self, now: float, inp: LinkInput, data: _InputData) -> None:
        limit = self.config.silence_limit_s(self.keepalive_s or 0.0)
        self._go_down(DownReason.PEER_SILENT, f"nothing heard for {limit:g} s")


#: Messages the link itself produces and consumes; never reported to the application.
_LINK_MESSAGES = (Ping, Hello, Accept, Reject)

_CONTROL_INPUT = {
    Control.ENQ: LinkInput.RX_ENQ,
    Control.ACK: LinkInput.RX_ACK,
    Control.NACK: LinkInput.RX_NACK,
    Control.EOT: LinkInput.RX_EOT,
}


# -- actions resolved once, at import ----------------------------------------------------------

#: An action method: (connection, now, input, the input's data) -> a seq for queue_send, else None.
_Action: TypeAlias = Callable[[LinkConnection, float, LinkInput, _InputData], int | None]

#: Every action of :mod:`evproto.link_table` and the one method that does it.
_ACTIONS: dict[LinkAction, _Action] = {
    LinkAction.IGNORE: LinkConnection._a_ignore,
    LinkAction.LOCAL_ERROR: LinkConnection._a_local_error,
    LinkAction.START_CLIENT: LinkConnection._a_start_client,
    LinkAction.START_SERVER: LinkConnection._a_start_server,
    LinkAction.ENQ_ACKED: LinkConnection._a_enq_acked,
    LinkAction.ENQ_NACKED: LinkConnection._a_enq_nacked,
    LinkAction.ANSWER_ENQ: LinkConnection._a_answer_enq,
    LinkAction.HELLO_RECEIVED: LinkConnection._a_hello_received,
    LinkAction.ACCEPTED: LinkConnection._a_accepted,
    LinkAction.REJECTED: LinkConnection._a_rejected,
    LinkAction.DO_ACCEPT: LinkConnection._a_do_accept,
    LinkAction.DO_REJECT: LinkConnection._a_do_reject,
    LinkAction.QUEUE_SEND: LinkConnection._a_queue_send,
    LinkAction.DELIVER: LinkConnection._a_deliver,
    LinkAction.UNKNOWN: LinkConnection._a_unknown,
    LinkAction.REACK: LinkConnection._a_reack,
    LinkAction.FRAME_ACKED: LinkConnection._a_frame_acked,
    LinkAction.FRAME_NACKED: LinkConnection._a_frame_nacked,
    LinkAction.RETRANSMIT: LinkConnection._a_retransmit,
    LinkAction.NACK: LinkConnection._a_nack,
    LinkAction.KEEPALIVE: LinkConnection._a_keepalive,
    LinkAction.CLOSE_LOCAL: LinkConnection._a_close_local,
    LinkAction.CLOSE_QUIET: LinkConnection._a_close_quiet,
    LinkAction.PEER_CLOSED: LinkConnection._a_peer_closed,
    LinkAction.CONNECTION_LOST: LinkConnection._a_connection_lost,
    LinkAction.PEER_RESET: LinkConnection._a_peer_reset,
    LinkAction.HANDSHAKE_TIMEOUT: LinkConnection._a_handshake_timeout,
    LinkAction.PEER_SILENT: LinkConnection._a_peer_silent,
}


def _check_actions() -> None:
    # Adding an action to the table without its method (or leaving a method no action
    # names, or pointing an action at another's method) fails here, not on some input.
    methods = {name for name in vars(LinkConnection) if name.startswith("_a_")}
    missing = sorted(a.value for a in LinkAction if a not in _ACTIONS)
    unused = sorted(methods - {f.__name__ for f in _ACTIONS.values()})
    crossed = sorted(a.value for a, f in _ACTIONS.items() if f.__name__ != "_a_" + a.value)
    if missing or unused or crossed:
        raise RuntimeError(
            f"link actions: without a method {missing}, methods no action names {unused}, "
            f"mapped to another action's method {crossed}"
        )


_check_actions()

#: ``TABLE`` with each action resolved to its method: (state, input) -> (method, next state).
_DISPATCH: dict[tuple[LinkState, LinkInput], tuple[_Action, LinkState | None]] = {
    pair: (_ACTIONS[tr.action], tr.next) for pair, tr in TABLE.items()
}
