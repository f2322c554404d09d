"""Central's rules, pure: who may charge where, session bookkeeping, tickets.

Split by job: :mod:`.records` (what Central knows), :mod:`.effects` (what it asks
the daemon to do), :mod:`.errors`, :mod:`.registry` (CPs, drivers, monitors,
health, operator commands), :mod:`.sessions` (requests to tickets),
:mod:`.limits` (rate limits), and :mod:`.core`, which joins them into
:class:`CentralCore`. The daemon (``evproto.daemons.central``) carries the
effects out: Kafka, the database, the panel.
"""

from __future__ import annotations

from .core import CentralCore
from .effects import Effect, Forget, Note, Publish, SaveCp, SaveSession
from .errors import (
    RecordRefused,
    RegistryBusyError,
    RevokeUnavailable,
    UnknownCpError,
    UnknownDriverError,
)
from .records import CpRecord, HealthReport, Rules, SessionHistory, SessionRecord

__all__ = [
    "CentralCore",
    "Rules",
    "CpRecord",
    "SessionRecord",
    "SessionHistory",
    "HealthReport",
    "Publish",
    "SaveCp",
    "SaveSession",
    "Note",
    "Forget",
    "Effect",
    "UnknownCpError",
    "UnknownDriverError",
    "RegistryBusyError",
    "RevokeUnavailable",
    "RecordRefused",
]
