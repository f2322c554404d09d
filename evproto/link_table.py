"""The link's transition table: every (state, input) pair and what it does.

Pure data. :class:`evproto.link.LinkConnection` looks each input up here and runs
the named action; ``docs/protocol.md`` embeds :func:`render_markdown` verbatim
(a test keeps the two identical) and another test walks every pair.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["LinkState", "LinkInput", "Transition", "TABLE", "ACTIONS", "render_markdown"]


class LinkState(enum.Enum):
    """States of one link connection."""

    #: Client created, ``start()`` not called yet.
    IDLE = "IDLE"
    #: Client sent ENQ, waiting for ACK.
    ENQ_SENT = "ENQ_SENT"
    #: Client's Hello frame sent, waiting for Accept or Reject.
    HELLO_SENT = "HELLO_SENT"
    #: Server waiting for the client's ENQ.
    AWAIT_ENQ = "AWAIT_ENQ"
    #: Server answered ENQ, waiting for Hello.
    AWAIT_HELLO = "AWAIT_HELLO"
    #: Server got a Hello; the application must ``accept()`` or ``reject()``.
    HELLO_RECEIVED = "HELLO_RECEIVED"
    #: Both sides exchange frames.
    OPEN = "OPEN"
    #: Finished; a LinkDown event said why.
    CLOSED = "CLOSED"


class LinkInput(enum.Enum):
    """Everything that can happen to a link: calls, peer bytes, transport, timers."""

    CALL_START = "start()"
    CALL_ACCEPT = "accept()"
    CALL_REJECT = "reject()"
    CALL_SEND = "send()/request()/respond()"
    CALL_CLOSE = "close()"
    RX_ENQ = "ENQ"
    RX_ACK = "ACK"
    RX_NACK = "NACK"
    RX_EOT = "EOT"
    RX_HELLO = "Hello frame"
    RX_ACCEPT = "Accept frame"
    RX_REJECT = "Reject frame"
    RX_DATA = "other frame"
    RX_DUPLICATE = "duplicate frame (same seq)"
    RX_UNKNOWN = "frame of a type this side does not know"
    RX_BAD = "bad frame or body"
    RX_EOF = "EOF / reset"
    TIMER_RETRANSMIT = "ACK timeout"
    TIMER_KEEPALIVE = "idle timer"
    TIMER_SILENCE = "silence timer"


#: Action name -> what it does (the documentation column).
ACTIONS: dict[str, str] = {
    "ignore": "nothing (stray input counted)",
    "local_error": "raise LocalProtocolError",
    "start_client": "send ENQ, arm ACK timer",
    "start_server": "arm handshake timer",
    "enq_acked": "send Hello frame",
    "enq_nacked": "resend ENQ (bounded), else down: retries_exhausted",
    "answer_enq": "send ACK",
    "hello_received": "ACK, emit HelloReceived",
    "accepted": "ACK, emit Connected",
    "rejected": "ACK, emit LinkDown(rejected)",
    "do_accept": "send Accept frame, emit Connected",
    "do_reject": "send Reject frame and EOT, emit LinkDown(rejected)",
    "queue_send": "queue frame (stop-and-wait, bounded)",
    "deliver": "ACK, emit message / request / response",
    "reack": "ACK again, do not deliver",
    "unknown": "ACK, answer ErrorReport(unknown_type) (as the response to a request), emit UnknownMessageReceived",
    "frame_acked": "complete outstanding frame, send next",
    "frame_nacked": "retransmit outstanding frame (bounded)",
    "retransmit": "retransmit ENQ or frame (bounded), else down: retries_exhausted",
    "nack": "send NACK, count error; too many in a row: down: protocol_error",
    "keepalive": "send Ping if idle",
    "close_local": "send EOT, emit LinkDown(closed)",
    "close_quiet": "emit LinkDown(closed)",
    "peer_closed": "emit LinkDown(peer_closed)",
    "connection_lost": "emit LinkDown(connection_lost)",
    "peer_reset": "emit LinkDown(peer_reset)",
    "handshake_timeout": "emit LinkDown(handshake_timeout)",
    "peer_silent": "emit LinkDown(peer_silent)",
}


@dataclass(frozen=True, slots=True)
class Transition:
    """Run ``action``, then move to ``next`` (None: stay)."""

    action: str
    next: LinkState | None = None


S = LinkState
I = LinkInput  # noqa: E741
_T = Transition
_PRE_OPEN = (S.ENQ_SENT, S.HELLO_SENT, S.AWAIT_ENQ, S.AWAIT_HELLO, S.HELLO_RECEIVED)
_LIVE = _PRE_OPEN + (S.OPEN,)


def _build() -> dict[tuple[LinkState, LinkInput], Transition]:
    t: dict[tuple[LinkState, LinkInput], Transition] = {}

    def row(states: tuple[LinkState, ...] | LinkState, inp: LinkInput, tr: Transition) -> None:
        for s in states if isinstance(states, tuple) else (states,):
            t[(s, inp)] = tr

    # Calls. Anything not listed for a state is a LocalProtocolError.
    row(S.IDLE, I.CALL_START, _T("start_client", S.ENQ_SENT))
    row(S.AWAIT_ENQ, I.CALL_START, _T("start_server"))
    row(S.HELLO_RECEIVED, I.CALL_ACCEPT, _T("do_accept", S.OPEN))
    row(S.HELLO_RECEIVED, I.CALL_REJECT, _T("do_reject", S.CLOSED))
    row(S.OPEN, I.CALL_SEND, _T("queue_send"))
    row(S.IDLE, I.CALL_CLOSE, _T("close_quiet", S.CLOSED))
    row(_LIVE, I.CALL_CLOSE, _T("close_local", S.CLOSED))
    row(S.CLOSED, I.CALL_CLOSE, _T("ignore"))

    # Control bytes.
    row(S.ENQ_SENT, I.RX_ENQ, _T("nack"))
    row(S.HELLO_SENT, I.RX_ENQ, _T("nack"))
    row(S.AWAIT_ENQ, I.RX_ENQ, _T("answer_enq", S.AWAIT_HELLO))
    row(S.AWAIT_HELLO, I.RX_ENQ, _T("answer_enq"))  # our ACK was lost; the client asks again
    row((S.HELLO_RECEIVED, S.OPEN), I.RX_ENQ, _T("peer_reset", S.CLOSED))
    row(S.ENQ_SENT, I.RX_ACK, _T("enq_acked", S.HELLO_SENT))
    row(S.ENQ_SENT, I.RX_NACK, _T("enq_nacked"))
    for s in (S.HELLO_SENT, S.AWAIT_ENQ, S.AWAIT_HELLO, S.HELLO_RECEIVED, S.OPEN):
        row(s, I.RX_ACK, _T("frame_acked"))
        row(s, I.RX_NACK, _T("frame_nacked"))
    row(_LIVE, I.RX_EOT, _T("peer_closed", S.CLOSED))

    # Frames. A duplicate is recognised by seq before its type is looked at.
    for s in _LIVE:
        row(s, I.RX_HELLO, _T("nack"))
        row(s, I.RX_ACCEPT, _T("nack"))
        row(s, I.RX_REJECT, _T("nack"))
        row(s, I.RX_DATA, _T("nack"))
        row(s, I.RX_DUPLICATE, _T("reack"))
        row(s, I.RX_UNKNOWN, _T("nack"))
        row(s, I.RX_BAD, _T("nack"))
    row(S.AWAIT_HELLO, I.RX_HELLO, _T("hello_received", S.HELLO_RECEIVED))
    row(S.HELLO_SENT, I.RX_ACCEPT, _T("accepted", S.OPEN))
    row(S.HELLO_SENT, I.RX_REJECT, _T("rejected", S.CLOSED))
    row(S.OPEN, I.RX_DATA, _T("deliver"))
    # A type added elsewhere in a fleet must never take links down: it arrived intact.
    row(S.OPEN, I.RX_UNKNOWN, _T("unknown"))

    # Transport and timers.
    row(S.IDLE, I.RX_EOF, _T("connection_lost", S.CLOSED))
    row(_LIVE, I.RX_EOF, _T("connection_lost", S.CLOSED))
    row(S.ENQ_SENT, I.TIMER_RETRANSMIT, _T("retransmit"))
    row((S.HELLO_SENT, S.OPEN), I.TIMER_RETRANSMIT, _T("retransmit"))
    row(S.OPEN, I.TIMER_KEEPALIVE, _T("keepalive"))
    row(_PRE_OPEN, I.TIMER_SILENCE, _T("handshake_timeout", S.CLOSED))
    row(S.OPEN, I.TIMER_SILENCE, _T("peer_silent", S.CLOSED))

    # Fill the rest explicitly so that every pair has a documented meaning.
    for s in LinkState:
        for i in LinkInput:
            if (s, i) not in t:
                t[(s, i)] = _T("local_error" if i.name.startswith("CALL_") else "ignore")
    return t


#: The complete table: ``TABLE[(state, input)]`` exists for every pair.
TABLE: dict[tuple[LinkState, LinkInput], Transition] = _build()


def render_markdown() -> str:
    """The table as Markdown, one row per input and one column per state."""
    states = list(LinkState)
    lines = [
        "| input | " + " | ".join(s.value for s in states) + " |",
        "| --- | " + " | ".join("---" for _ in states) + " |",
    ]
    for inp in LinkInput:
        cells = []
        for s in states:
            tr = TABLE[(s, inp)]
            cell = tr.action
            if tr.next is not None and tr.next is not s:
                cell += f" &rarr; {tr.next.value}"
            cells.append(cell)
        lines.append(f"| {inp.value} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| action | what it does |")
    lines.append("| --- | --- |")
    for name, text in ACTIONS.items():
        lines.append(f"| {name} | {text} |")
    return "\n".join(lines) + "\n"
