"""The link's transition table: every (state, input) pair and what it does.

Pure data. :class:`evproto.link.LinkConnection` looks each input up here and runs
the action; ``docs/protocol.md`` embeds :func:`render_markdown` verbatim (a test
keeps the two identical) and another test walks every pair.

The pattern, for any table-driven state machine here:

- Three enums: the states, the inputs, and the actions (what the machine can do).
  An action's value is the name the rendered table shows.
- ``TABLE[(state, input)] -> Transition(action, next)``: complete (every pair has a
  row, the unlisted ones filled in explicitly), built once at import, rendered into
  the docs. Checked at import: every action is documented and used by some row.
- The machine maps each action to one method once, at import (a dict written out
  by hand, so a type checker sees every method's signature), and checks there that
  every action has its method and every action method its action; a test repeats it.
- Dispatch: look the pair up, call the method with everything it needs as
  parameters (the time, the input and what the input carries: a decoded frame,
  or a call's arguments as a small frozen dataclass), then move to ``next``
  unless the action already moved (to CLOSED). Nothing is found by name at run
  time and no argument travels through a field of the machine.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["LinkState", "LinkInput", "LinkAction", "Transition", "TABLE", "ACTIONS", "render_markdown"]


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


class LinkAction(str, enum.Enum):
    """What the link does for an input. The value is the name the rendered table shows
    (a str enum, so it also compares equal to that name)."""

    IGNORE = "ignore"
    LOCAL_ERROR = "local_error"
    START_CLIENT = "start_client"
    START_SERVER = "start_server"
    ENQ_ACKED = "enq_acked"
    ENQ_NACKED = "enq_nacked"
    ANSWER_ENQ = "answer_enq"
    HELLO_RECEIVED = "hello_received"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DO_ACCEPT = "do_accept"
    DO_REJECT = "do_reject"
    QUEUE_SEND = "queue_send"
    DELIVER = "deliver"
    REACK = "reack"
    UNKNOWN = "unknown"
    FRAME_ACKED = "frame_acked"
    FRAME_NACKED = "frame_nacked"
    RETRANSMIT = "retransmit"
    NACK = "nack"
    KEEPALIVE = "keepalive"
    CLOSE_LOCAL = "close_local"
    CLOSE_QUIET = "close_quiet"
    PEER_CLOSED = "peer_closed"
    CONNECTION_LOST = "connection_lost"
    PEER_RESET = "peer_reset"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    PEER_SILENT = "peer_silent"


#: Action -> what it does (the documentation column).
ACTIONS: dict[LinkAction, str] = {
    LinkAction.IGNORE: "nothing (stray input counted)",
    LinkAction.LOCAL_ERROR: "raise LocalProtocolError",
    LinkAction.START_CLIENT: "send ENQ, arm ACK timer",
    LinkAction.START_SERVER: "arm handshake timer",
    LinkAction.ENQ_ACKED: "send Hello frame",
    LinkAction.ENQ_NACKED: "resend ENQ (bounded), else down: retries_exhausted",
    LinkAction.ANSWER_ENQ: "send ACK",
    LinkAction.HELLO_RECEIVED: "ACK, emit HelloReceived",
    LinkAction.ACCEPTED: "ACK, emit Connected",
    LinkAction.REJECTED: "ACK, emit LinkDown(rejected)",
    LinkAction.DO_ACCEPT: "send Accept frame, emit Connected",
    LinkAction.DO_REJECT: "send Reject frame and EOT, emit LinkDown(rejected)",
    LinkAction.QUEUE_SEND: "queue frame (stop-and-wait, bounded)",
    LinkAction.DELIVER: "ACK, emit message / request / response",
    LinkAction.REACK: "ACK again, do not deliver",
    LinkAction.UNKNOWN: (
        "ACK, answer ErrorReport(unknown_type) (as the response to a request), emit UnknownMessageReceived"
    ),
    LinkAction.FRAME_ACKED: "complete outstanding frame, send next",
    LinkAction.FRAME_NACKED: "retransmit outstanding frame (bounded)",
    LinkAction.RETRANSMIT: "retransmit ENQ or frame (bounded), else down: retries_exhausted",
    LinkAction.NACK: "send NACK, count error; too many in a row: down: protocol_error",
    LinkAction.KEEPALIVE: "send Ping if idle",
    LinkAction.CLOSE_LOCAL: "send EOT, emit LinkDown(closed)",
    LinkAction.CLOSE_QUIET: "emit LinkDown(closed)",
    LinkAction.PEER_CLOSED: "emit LinkDown(peer_closed)",
    LinkAction.CONNECTION_LOST: "emit LinkDown(connection_lost)",
    LinkAction.PEER_RESET: "emit LinkDown(peer_reset)",
    LinkAction.HANDSHAKE_TIMEOUT: "emit LinkDown(handshake_timeout)",
    LinkAction.PEER_SILENT: "emit LinkDown(peer_silent)",
}


@dataclass(frozen=True, slots=True)
class Transition:
    """Run ``action``, then move to ``next`` (None: stay)."""

    action: LinkAction
    next: LinkState | None = None


S = LinkState
I = LinkInput  # noqa: E741
A = LinkAction
_T = Transition
_PRE_OPEN = (S.ENQ_SENT, S.HELLO_SENT, S.AWAIT_ENQ, S.AWAIT_HELLO, S.HELLO_RECEIVED)
_LIVE = _PRE_OPEN + (S.OPEN,)


def _build() -> dict[tuple[LinkState, LinkInput], Transition]:
    t: dict[tuple[LinkState, LinkInput], Transition] = {}

    def row(states: tuple[LinkState, ...] | LinkState, inp: LinkInput, tr: Transition) -> None:
        for s in states if isinstance(states, tuple) else (states,):
            t[(s, inp)] = tr

    # Calls. Anything not listed for a state is a LocalProtocolError.
    row(S.IDLE, I.CALL_START, _T(A.START_CLIENT, S.ENQ_SENT))
    row(S.AWAIT_ENQ, I.CALL_START, _T(A.START_SERVER))
    row(S.HELLO_RECEIVED, I.CALL_ACCEPT, _T(A.DO_ACCEPT, S.OPEN))
    row(S.HELLO_RECEIVED, I.CALL_REJECT, _T(A.DO_REJECT, S.CLOSED))
    row(S.OPEN, I.CALL_SEND, _T(A.QUEUE_SEND))
    row(S.IDLE, I.CALL_CLOSE, _T(A.CLOSE_QUIET, S.CLOSED))
    row(_LIVE, I.CALL_CLOSE, _T(A.CLOSE_LOCAL, S.CLOSED))
    row(S.CLOSED, I.CALL_CLOSE, _T(A.IGNORE))

    # Control bytes.
    row(S.ENQ_SENT, I.RX_ENQ, _T(A.NACK))
    row(S.HELLO_SENT, I.RX_ENQ, _T(A.NACK))
    row(S.AWAIT_ENQ, I.RX_ENQ, _T(A.ANSWER_ENQ, S.AWAIT_HELLO))
    row(S.AWAIT_HELLO, I.RX_ENQ, _T(A.ANSWER_ENQ))  # our ACK was lost; the client asks again
    row((S.HELLO_RECEIVED, S.OPEN), I.RX_ENQ, _T(A.PEER_RESET, S.CLOSED))
    row(S.ENQ_SENT, I.RX_ACK, _T(A.ENQ_ACKED, S.HELLO_SENT))
    row(S.ENQ_SENT, I.RX_NACK, _T(A.ENQ_NACKED))
    for s in (S.HELLO_SENT, S.AWAIT_ENQ, S.AWAIT_HELLO, S.HELLO_RECEIVED, S.OPEN):
        row(s, I.RX_ACK, _T(A.FRAME_ACKED))
        row(s, I.RX_NACK, _T(A.FRAME_NACKED))
    row(_LIVE, I.RX_EOT, _T(A.PEER_CLOSED, S.CLOSED))

    # Frames. A duplicate is recognised by seq before its type is looked at.
    for s in _LIVE:
        row(s, I.RX_HELLO, _T(A.NACK))
        row(s, I.RX_ACCEPT, _T(A.NACK))
        row(s, I.RX_REJECT, _T(A.NACK))
        row(s, I.RX_DATA, _T(A.NACK))
        row(s, I.RX_DUPLICATE, _T(A.REACK))
        row(s, I.RX_UNKNOWN, _T(A.NACK))
        row(s, I.RX_BAD, _T(A.NACK))
    row(S.AWAIT_HELLO, I.RX_HELLO, _T(A.HELLO_RECEIVED, S.HELLO_RECEIVED))
    row(S.HELLO_SENT, I.RX_ACCEPT, _T(A.ACCEPTED, S.OPEN))
    row(S.HELLO_SENT, I.RX_REJECT, _T(A.REJECTED, S.CLOSED))
    row(S.OPEN, I.RX_DATA, _T(A.DELIVER))
    # A type added elsewhere in a fleet must never take links down: it arrived intact.
    row(S.OPEN, I.RX_UNKNOWN, _T(A.UNKNOWN))

    # Transport and timers.
    row(S.IDLE, I.RX_EOF, _T(A.CONNECTION_LOST, S.CLOSED))
    row(_LIVE, I.RX_EOF, _T(A.CONNECTION_LOST, S.CLOSED))
    row(S.ENQ_SENT, I.TIMER_RETRANSMIT, _T(A.RETRANSMIT))
    row((S.HELLO_SENT, S.OPEN), I.TIMER_RETRANSMIT, _T(A.RETRANSMIT))
    row(S.OPEN, I.TIMER_KEEPALIVE, _T(A.KEEPALIVE))
    row(_PRE_OPEN, I.TIMER_SILENCE, _T(A.HANDSHAKE_TIMEOUT, S.CLOSED))
    row(S.OPEN, I.TIMER_SILENCE, _T(A.PEER_SILENT, S.CLOSED))

    # Fill the rest explicitly so that every pair has a documented meaning.
    for s in LinkState:
        for i in LinkInput:
            if (s, i) not in t:
                t[(s, i)] = _T(A.LOCAL_ERROR if i.name.startswith("CALL_") else A.IGNORE)
    return t


#: The complete table: ``TABLE[(state, input)]`` exists for every pair.
TABLE: dict[tuple[LinkState, LinkInput], Transition] = _build()


def _check() -> None:
    # An action nobody documents, or one no row uses, is a mistake to catch at import.
    undocumented = set(LinkAction) - set(ACTIONS)
    unused = set(LinkAction) - {tr.action for tr in TABLE.values()}
    if undocumented or unused:
        raise RuntimeError(
            f"link table: actions without documentation {sorted(a.value for a in undocumented)}, "
            f"actions no row uses {sorted(a.value for a in unused)}"
        )


_check()


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
            cell = tr.action.value
            if tr.next is not None and tr.next is not s:
                cell += f" &rarr; {tr.next.value}"
            cells.append(cell)
        lines.append(f"| {inp.value} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| action | what it does |")
    lines.append("| --- | --- |")
    for action, text in ACTIONS.items():
        lines.append(f"| {action.value} | {text} |")
    return "\n".join(lines) + "\n"
