"""Charge points' credentials, as the registry issues them and Central checks them.

The ``cp_credentials`` table lives in the network's database, which the registry and
Central share (the assignment allows it, and it makes unregistering take effect at
Central's next look, without a call between the two): the registry writes it, Central
only reads it. A row keeps the stored credential (:mod:`evproto.auth`), never the
secret, which is shown once to whoever registered the CP.
"""

from __future__ import annotations

import sqlite3
import time

from evproto import auth
from evproto.auth import StoredCredential
from evproto.idents import check_id, check_text

from .files import connect_private_db

__all__ = ["CredentialStore", "AlreadyRegistered"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cp_credentials (
    cp_id TEXT PRIMARY KEY,
    location TEXT NOT NULL,
    credential TEXT NOT NULL,
    registered_ts_ms INTEGER NOT NULL,
    registered_by TEXT NOT NULL
);
"""


class AlreadyRegistered(Exception):
    """A CP id the registry already has (unregister it first to issue new credentials)."""


class CredentialStore:
    """The ``cp_credentials`` table (its own connection, safe to share across threads)."""

    def __init__(self, path: str, *, params: tuple[int, int, int] = auth.SCRYPT_DEFAULT) -> None:
        self._db = connect_private_db(path)
        self._db.executescript(_SCHEMA)
        self.params = params

    def close(self) -> None:
        self._db.close()

    def register(self, cp_id: str, location: str, *, by: str) -> str:
        """Register ``cp_id`` and return its new secret (the only time it exists outside
        the charge point). ValueError for a bad id or location; AlreadyRegistered."""
        check_id(cp_id, what="CP id")
        check_text(location, what="location", allow_empty=False)
        secret = auth.new_secret()
        stored = auth.hash_secret(secret, params=self.params)
        try:
            self._db.execute(
                "INSERT INTO cp_credentials VALUES (?, ?, ?, ?, ?)",
                (cp_id, location, stored.to_text(), int(time.time() * 1000), by),
            )
        except sqlite3.IntegrityError:
            raise AlreadyRegistered(f"{cp_id} is already registered (unregister it to issue new credentials)") from None
        return secret

    def unregister(self, cp_id: str) -> bool:
        return self._db.execute("DELETE FROM cp_credentials WHERE cp_id = ?", (cp_id,)).rowcount == 1

    def stored(self, cp_id: str) -> StoredCredential | None:
        """The stored credential of ``cp_id``; None when it is not registered (or its row
        is damaged: a CP that cannot be checked cannot authenticate)."""
        row = self._db.execute("SELECT credential FROM cp_credentials WHERE cp_id = ?", (cp_id,)).fetchone()
        if row is None:
            return None
        try:
            return StoredCredential.from_text(row[0])
        except auth.AuthError:
            return None

    def registered_ids(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT cp_id FROM cp_credentials")}

    def get(self, cp_id: str) -> dict[str, object] | None:
        row = self._db.execute(
            "SELECT cp_id, location, registered_ts_ms, registered_by FROM cp_credentials WHERE cp_id = ?", (cp_id,)
        ).fetchone()
        return None if row is None else _row(row)

    def list(self) -> list[dict[str, object]]:
        return [
            _row(r)
            for r in self._db.execute(
                "SELECT cp_id, location, registered_ts_ms, registered_by FROM cp_credentials ORDER BY cp_id"
            )
        ]


def _row(r: tuple) -> dict[str, object]:
    return {"id": r[0], "location": r[1], "registered_ts_ms": r[2], "registered_by": r[3]}
