"""Topic names, their settings, and the stable key -> partition mapping (pure)."""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass, field

__all__ = ["Topic", "TopicSpec", "Resend", "DEFAULT_PREFIX", "topic_specs", "spec_for", "partition_for"]

#: Prefix of every topic name; one broker can host several networks with different prefixes.
DEFAULT_PREFIX = "evcharging."


class Topic(enum.Enum):
    """The logical topics. ``value`` is the name after the prefix."""

    #: Driver (or a CP's manual menu) -> Central: supply requests. Key: driver id.
    DRIVER_REQUESTS = "driver-requests"
    #: Central -> engine: authorise, stop, resume. Key: CP id; partition: partition_for(cp id).
    CP_COMMANDS = "cp-commands"
    #: Engine -> Central: authorisation answers, supply start, telemetry, supply end. Key: CP id.
    CP_EVENTS = "cp-events"
    #: Central -> driver: request progress, relayed telemetry, tickets. Key: driver id;
    #: partition: partition_for(driver id), so a driver reads one partition only.
    DRIVER_EVENTS = "driver-events"
    #: Central -> everyone: each CP's latest state (compacted: the newest record per CP survives).
    CP_STATE = "cp-state"
    #: Central -> everyone: a heartbeat every second; silence means "cannot reach Central".
    CENTRAL_HEARTBEAT = "central-heartbeat"

    def name_with(self, prefix: str = DEFAULT_PREFIX) -> str:
        """The full topic name under ``prefix``."""
        return prefix + self.value


class Resend(enum.Enum):
    """What a producer sends again when it finds the topic re-created (the broker lost its log).

    A property of the topic's readers: whether a record they may already have
    acted on can be given to them a second time.
    """

    #: Nothing: its readers would act twice (commands, requests) or the records are stale (heartbeats).
    NOTHING = "nothing"
    #: The records the producer waited for that the broker acknowledged in the last few
    #: minutes, in their order: the readers de-duplicate them (tickets and supply ends by
    #: session id). Posted records (interim figures) are never sent again.
    RECENT = "recent"
    #: The newest record of each key, posted or waited for: a compacted topic's content.
    LATEST_PER_KEY = "latest_per_key"

    @property
    def recovery(self) -> str:
        """What becomes of the records a lost log held, in words for logs and operators."""
        return _RECOVERY[self]


_RECOVERY = {
    Resend.NOTHING: "the records it held and nobody had read are lost",
    Resend.RECENT: "its writers send again what they sent in the last minutes; interim figures are lost",
    Resend.LATEST_PER_KEY: "its writers send again the newest record of each key",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicSpec:
    """How a topic is created when missing, and what its producers send again after a reset."""

    topic: Topic
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    resend: Resend = Resend.NOTHING


_SPECS = (
    TopicSpec(topic=Topic.DRIVER_REQUESTS, partitions=4),
    TopicSpec(topic=Topic.CP_COMMANDS, partitions=8),
    TopicSpec(topic=Topic.CP_EVENTS, partitions=8, resend=Resend.RECENT),
    TopicSpec(topic=Topic.DRIVER_EVENTS, partitions=8, resend=Resend.RECENT),
    TopicSpec(topic=Topic.CP_STATE, partitions=1, config={"cleanup.policy": "compact"}, resend=Resend.LATEST_PER_KEY),
    TopicSpec(topic=Topic.CENTRAL_HEARTBEAT, partitions=1, config={"retention.ms": str(3_600_000)}),
)


def topic_specs() -> tuple[TopicSpec, ...]:
    """Every topic the network uses, with partitions and config."""
    return _SPECS


_BY_TOPIC = {spec.topic: spec for spec in _SPECS}


def spec_for(topic: Topic) -> TopicSpec:
    """The spec of ``topic``."""
    return _BY_TOPIC[topic]


def partition_for(key: str, partitions: int) -> int:
    """The partition a key lives in: CRC-32 of its UTF-8 bytes, modulo ``partitions``.

    Producers pass this partition explicitly and readers assign themselves to it,
    so the mapping never depends on a client library's default partitioner.
    """
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    return zlib.crc32(key.encode("utf-8")) % partitions
