"""Central's errors: what an operator or a record asked that Central cannot do.

Each carries the HTTP status its API answers with (``http_status``), so the API
needs no copy of them.
"""

from __future__ import annotations

from evproto.errors import EvprotoError

__all__ = ["UnknownCpError", "UnknownDriverError", "RegistryBusyError", "RevokeUnavailable", "RecordRefused"]


class UnknownCpError(EvprotoError, LookupError):
    """An operator named a charge point Central does not know (the HTTP API answers 404)."""

    http_status = 404

    def __init__(self, cp_id: str) -> None:
        super().__init__(f"unknown charge point '{cp_id}'")
        self.cp_id = cp_id


class UnknownDriverError(EvprotoError, LookupError):
    """An operator named a driver Central does not know (the HTTP API answers 404)."""

    http_status = 404

    def __init__(self, driver_id: str) -> None:
        super().__init__(f"unknown driver '{driver_id}'")
        self.driver_id = driver_id


class RegistryBusyError(EvprotoError):
    """A CP or driver cannot be removed now: a supply of theirs is in progress (HTTP 409)."""

    http_status = 409


class RevokeUnavailable(EvprotoError):
    """Revocation asked of a Central that runs without keys (--insecure; HTTP 409)."""

    http_status = 409


class RecordRefused(EvprotoError):
    """An event Central cannot apply: it refers to nothing Central knows, or contradicts
    what it knows (another CP's session, another driver's request id).

    Raised by :meth:`CentralCore.on_event` before any state changed; the daemon
    quarantines the record and moves on.
    """
