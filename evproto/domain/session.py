"""The lifecycle of a supply session, as Central tracks it (pure transition table).

::

    requested --cp accepts--> authorized --plugged--> supplying --ended ok--> completed
        |                         |                       \\-----ended early--> interrupted
        +--cp refuses/no answer-> denied                  (a ticket for both)
                                  +--withdrawn/expired--> interrupted (no supply, no ticket)

A final report from the CP (``FINISHED_*``) ends the session from any live state,
because CP events are ordered per CP but Central may have missed the start (it
was down). Terminal states ignore everything: a duplicate report can never make
a second ticket.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass

from ..messages import EndReason

__all__ = [
    "SessionStatus",
    "SessionInput",
    "SessionAction",
    "SessionTransition",
    "ACTIONS",
    "SESSION_TABLE",
    "step",
    "render_markdown",
    "finish_input",
    "COMPLETED_REASONS",
]


class SessionStatus(enum.Enum):
    """Session statuses, spelled as the API and the driver events spell them."""

    REQUESTED = "requested"
    AUTHORIZED = "authorized"
    SUPPLYING = "supplying"
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    DENIED = "denied"

    @property
    def live(self) -> bool:
        """Not finished yet."""
        return self in (SessionStatus.REQUESTED, SessionStatus.AUTHORIZED, SessionStatus.SUPPLYING)

    @property
    def final(self) -> bool:
        """Finished: denied, completed or interrupted; nothing changes it any more."""
        return not self.live


class SessionInput(enum.Enum):
    """What can happen to a session."""

    CP_ACCEPTED = "cp_accepted"
    CP_REFUSED = "cp_refused"
    STARTED = "started"
    PROGRESS = "progress"
    FINISHED_OK = "finished_ok"
    FINISHED_EARLY = "finished_early"
    EXPIRED = "expired"


#: End reasons (SupplyFinished.reason tokens) that count as a normal end: status "completed".
COMPLETED_REASONS = frozenset(r.token for r in EndReason if r.normal)


class SessionAction(str, enum.Enum):
    """What an input does to a session. The value is the name the rendered table shows."""

    IGNORE = "ignore"
    MOVE = "move"
    TICKET = "move, ticket"


#: What each action means (the legend of the rendered table).
ACTIONS = {
    SessionAction.IGNORE: "nothing changes (a repeat, or a session that already ended)",
    SessionAction.MOVE: "the session moves to the next status",
    SessionAction.TICKET: "the session ends in the next status and its driver gets exactly one ticket",
}


@dataclass(frozen=True, slots=True)
class SessionTransition:
    """What an input does to a session in a status (the table's pattern: evproto/link_table.py)."""

    action: SessionAction
    next: SessionStatus | None = None

    @property
    def ticket(self) -> bool:
        """A ticket is issued."""
        return self.action is SessionAction.TICKET


S = SessionStatus
I = SessionInput  # noqa: E741
A = SessionAction
_IGNORE = SessionTransition(A.IGNORE)


def _move(status: SessionStatus) -> SessionTransition:
    return SessionTransition(A.MOVE, status)


def _ticket(status: SessionStatus) -> SessionTransition:
    return SessionTransition(A.TICKET, status)


SESSION_TABLE: dict[tuple[SessionStatus, SessionInput], SessionTransition] = {
    (S.REQUESTED, I.CP_ACCEPTED): _move(S.AUTHORIZED),
    (S.REQUESTED, I.CP_REFUSED): _move(S.DENIED),
    (S.REQUESTED, I.STARTED): _move(S.SUPPLYING),
    (S.REQUESTED, I.PROGRESS): _move(S.SUPPLYING),
    (S.REQUESTED, I.FINISHED_OK): _ticket(S.COMPLETED),
    (S.REQUESTED, I.FINISHED_EARLY): _ticket(S.INTERRUPTED),
    (S.REQUESTED, I.EXPIRED): _move(S.DENIED),
    (S.AUTHORIZED, I.CP_ACCEPTED): _IGNORE,
    (S.AUTHORIZED, I.CP_REFUSED): _move(S.INTERRUPTED),
    (S.AUTHORIZED, I.STARTED): _move(S.SUPPLYING),
    (S.AUTHORIZED, I.PROGRESS): _move(S.SUPPLYING),
    (S.AUTHORIZED, I.FINISHED_OK): _ticket(S.COMPLETED),
    (S.AUTHORIZED, I.FINISHED_EARLY): _ticket(S.INTERRUPTED),
    (S.AUTHORIZED, I.EXPIRED): _move(S.INTERRUPTED),
    (S.SUPPLYING, I.CP_ACCEPTED): _IGNORE,
    (S.SUPPLYING, I.CP_REFUSED): _IGNORE,
    (S.SUPPLYING, I.STARTED): _IGNORE,
    (S.SUPPLYING, I.PROGRESS): _IGNORE,
    (S.SUPPLYING, I.FINISHED_OK): _ticket(S.COMPLETED),
    (S.SUPPLYING, I.FINISHED_EARLY): _ticket(S.INTERRUPTED),
    # A supply that started is never expired by Central: only the CP knows the
    # energy, and it reports the end even after a crash (its state is on disk).
    (S.SUPPLYING, I.EXPIRED): _IGNORE,
}
for _status in (S.COMPLETED, S.INTERRUPTED, S.DENIED):
    for _inp in SessionInput:
        SESSION_TABLE[(_status, _inp)] = _IGNORE


def _check_table() -> None:
    # Complete, every action used and documented, and moves only where an action moves.
    missing = set(itertools.product(SessionStatus, SessionInput)) - set(SESSION_TABLE)
    if missing:
        raise AssertionError(f"session table lacks {sorted((s.value, i.value) for s, i in missing)}")
    used = {tr.action for tr in SESSION_TABLE.values()}
    if used != set(SessionAction) or set(ACTIONS) != set(SessionAction):
        raise AssertionError("every session action must be used by the table and documented")
    if any((tr.next is None) != (tr.action is A.IGNORE) for tr in SESSION_TABLE.values()):
        raise AssertionError("only IGNORE leaves the status as it is")


_check_table()


def step(status: SessionStatus, inp: SessionInput) -> SessionTransition:
    """Look up what ``inp`` does to a session in ``status``."""
    return SESSION_TABLE[(status, inp)]


def render_markdown() -> str:
    """The table as Markdown, one row per input and one column per status (docs/central.md)."""
    statuses = list(SessionStatus)
    lines = [
        "| input | " + " | ".join(s.value for s in statuses) + " |",
        "| --- | " + " | ".join("---" for _ in statuses) + " |",
    ]
    for inp in SessionInput:
        cells = []
        for s in statuses:
            tr = SESSION_TABLE[(s, inp)]
            cells.append(tr.action.value + (f" &rarr; {tr.next.value}" if tr.next is not None else ""))
        lines.append(f"| {inp.value} | " + " | ".join(cells) + " |")
    lines += ["", "| action | what it does |", "| --- | --- |"]
    lines += [f"| {action.value} | {text} |" for action, text in ACTIONS.items()]
    return "\n".join(lines) + "\n"


def finish_input(reason: str) -> SessionInput:
    """The input a SupplyFinished with ``reason`` is."""
    return SessionInput.FINISHED_OK if reason in COMPLETED_REASONS else SessionInput.FINISHED_EARLY
