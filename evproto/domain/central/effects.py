"""What Central's rules ask the daemon to do, in order: publish, save, note, forget.

Durable publishes go through the database outbox in the same transaction as the
saves, so a crash can neither lose nor invent a ticket.
"""

from __future__ import annotations

from dataclasses import dataclass

from evproto.bus.topics import Topic
from evproto.domain.events import Event

from .records import CpRecord, SessionRecord

__all__ = ["Publish", "SaveCp", "SaveSession", "Note", "Forget", "Effect"]


@dataclass(frozen=True, slots=True)
class Publish:
    """Send ``event`` to ``topic`` under ``key``; durable ones go through the outbox."""

    topic: Topic
    key: str
    event: Event
    durable: bool = True


@dataclass(frozen=True, slots=True)
class SaveCp:
    record: CpRecord


@dataclass(frozen=True, slots=True)
class SaveSession:
    record: SessionRecord


@dataclass(frozen=True, slots=True)
class Note:
    """A line for the application-messages pane and the log; lines with the same ``key``
    are rate-limited together (what a flapping CP says)."""

    text: str
    level: str = "info"
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Forget:
    """Delete a CP (``cp_id``) or a driver (``driver_id``) from the registry; a CP's
    ``cp_state`` is deleted too (a tombstone on the compacted topic)."""

    cp_id: str | None = None
    driver_id: str | None = None


Effect = Publish | SaveCp | SaveSession | Note | Forget
