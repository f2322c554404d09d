"""Thin asyncio adapters over confluent-kafka (one import for the daemons).

- :class:`KafkaSettings`: bootstrap, client id, topic prefix, extra librdkafka options.
- :func:`ensure_topics`: create missing topics; returns every topic's real partition count.
- :class:`BusProducer`: idempotent producer; ``produce()`` returns a future of (partition, offset).
- :class:`BusConsumer`: reads assigned partitions from given offsets (no consumer group):
  ``async for record in consumer``; reports a replaced log as a :class:`LogReset`.

Offsets belong to the caller (stored with its own state), so consumers never
join groups or commit. The pieces live in :mod:`.client`, :mod:`.producer` and
:mod:`.consumer`.
"""

from .client import (
    OFFSET_BEGINNING,
    OFFSET_END,
    BusError,
    KafkaSettings,
    all_partitions,
    end_offsets,
    ensure_topics,
    group_settings,
    topic_ids,
)
from .consumer import BusConsumer, Record
from .producer import BusProducer
from .resets import LogReset, ResetCause

__all__ = [
    "BusError",
    "KafkaSettings",
    "OFFSET_BEGINNING",
    "OFFSET_END",
    "Record",
    "BusProducer",
    "BusConsumer",
    "ensure_topics",
    "all_partitions",
    "end_offsets",
    "topic_ids",
    "group_settings",
    "LogReset",
    "ResetCause",
]
