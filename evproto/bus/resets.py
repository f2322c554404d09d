"""Log resets: a topic's log is not the one a reader's position or a producer's records came from (pure).

A broker that loses its data (Tansu with in-memory storage, restarted) comes back
with new, empty logs: new topic ids, offsets from 0. A reader resuming a stored
position would wait past the new log's end, or skip its first records; records the
old log held and nobody had read are gone. :class:`~evproto.bus.kafka.BusConsumer`
finds such resets, reads the new log from its beginning and reports each one as a
:class:`LogReset`; :class:`~evproto.bus.kafka.BusProducer` sends again what the
topic's :class:`~evproto.bus.topics.Resend` policy says.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .topics import Topic

__all__ = ["ResetCause", "LogReset", "RESET_CHECK_S", "CONFIRM_S"]

#: Seconds between checks of the logs a client reads or writes (topic ids, end offsets).
RESET_CHECK_S = 5.0
#: A log found ending before a reader's position is looked at again after this long before
#: the reader acts: a new partition leader may briefly report a lower end (Apache Kafka).
CONFIRM_S = 1.0


class ResetCause(enum.Enum):
    """How a reader found out that its log was replaced."""

    #: The topic has another id: it was deleted and created again (a broker that lost its data).
    TOPIC_RECREATED = "topic_recreated"
    #: The log ends before the reader's position, twice in a row: replaced or truncated.
    LOG_ENDS_BEFORE_POSITION = "log_ends_before_position"
    #: The broker refused the reader's position (Apache Kafka: below the log's start or past its end).
    OFFSET_OUT_OF_RANGE = "offset_out_of_range"

    @property
    def text(self) -> str:
        """Words for logs and operators."""
        return _TEXTS[self]


_TEXTS = {
    ResetCause.TOPIC_RECREATED: "the topic was created again (new topic id)",
    ResetCause.LOG_ENDS_BEFORE_POSITION: "the log ends before the position read so far",
    ResetCause.OFFSET_OUT_OF_RANGE: "the broker no longer has the position read so far",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class LogReset:
    """One assigned partition whose log was replaced; the reader now reads it from its beginning.

    ``position`` is the next offset the reader would have read in the old log (-1
    when it had not resolved one yet); ``end_offset`` the new log's end when it
    was found (-1 when not asked). Topic ids are None when the broker did not tell.
    """

    topic: Topic
    partition: int
    cause: ResetCause
    old_topic_id: str | None
    topic_id: str | None
    position: int
    end_offset: int = -1
