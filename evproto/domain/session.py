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
from dataclasses import dataclass

from ..messages import EndReason

__all__ = ["SessionStatus", "SessionInput", "SessionStep", "SESSION_TABLE", "step", "finish_input", "COMPLETED_REASONS"]


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


@dataclass(frozen=True, slots=True)
class SessionStep:
    """Where an input leads: the next status (None: ignore) and whether a ticket is issued."""

    next: SessionStatus | None
    ticket: bool = False


S = SessionStatus
I = SessionInput  # noqa: E741
_IGNORE = SessionStep(None)

SESSION_TABLE: dict[tuple[SessionStatus, SessionInput], SessionStep] = {
    (S.REQUESTED, I.CP_ACCEPTED): SessionStep(S.AUTHORIZED),
    (S.REQUESTED, I.CP_REFUSED): SessionStep(S.DENIED),
    (S.REQUESTED, I.STARTED): SessionStep(S.SUPPLYING),
    (S.REQUESTED, I.PROGRESS): SessionStep(S.SUPPLYING),
    (S.REQUESTED, I.FINISHED_OK): SessionStep(S.COMPLETED, ticket=True),
    (S.REQUESTED, I.FINISHED_EARLY): SessionStep(S.INTERRUPTED, ticket=True),
    (S.REQUESTED, I.EXPIRED): SessionStep(S.DENIED),
    (S.AUTHORIZED, I.CP_ACCEPTED): _IGNORE,
    (S.AUTHORIZED, I.CP_REFUSED): SessionStep(S.INTERRUPTED),
    (S.AUTHORIZED, I.STARTED): SessionStep(S.SUPPLYING),
    (S.AUTHORIZED, I.PROGRESS): SessionStep(S.SUPPLYING),
    (S.AUTHORIZED, I.FINISHED_OK): SessionStep(S.COMPLETED, ticket=True),
    (S.AUTHORIZED, I.FINISHED_EARLY): SessionStep(S.INTERRUPTED, ticket=True),
    (S.AUTHORIZED, I.EXPIRED): SessionStep(S.INTERRUPTED),
    (S.SUPPLYING, I.CP_ACCEPTED): _IGNORE,
    (S.SUPPLYING, I.CP_REFUSED): _IGNORE,
    (S.SUPPLYING, I.STARTED): _IGNORE,
    (S.SUPPLYING, I.PROGRESS): _IGNORE,
    (S.SUPPLYING, I.FINISHED_OK): SessionStep(S.COMPLETED, ticket=True),
    (S.SUPPLYING, I.FINISHED_EARLY): SessionStep(S.INTERRUPTED, ticket=True),
    # A supply that started is never expired by Central: only the CP knows the
    # energy, and it reports the end even after a crash (its state is on disk).
    (S.SUPPLYING, I.EXPIRED): _IGNORE,
}
for _status in (S.COMPLETED, S.INTERRUPTED, S.DENIED):
    for _inp in SessionInput:
        SESSION_TABLE[(_status, _inp)] = _IGNORE


def step(status: SessionStatus, inp: SessionInput) -> SessionStep:
    """Look up what ``inp`` does to a session in ``status``."""
    return SESSION_TABLE[(status, inp)]


def finish_input(reason: str) -> SessionInput:
    """The input a SupplyFinished with ``reason`` is."""
    return SessionInput.FINISHED_OK if reason in COMPLETED_REASONS else SessionInput.FINISHED_EARLY
