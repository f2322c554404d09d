"""Central's database read from outside Central, read-only: its keys and its Kafka positions.

For the network's owner on Central's host (``evcharging events``) and for Central's own
event inspector, which reads on connections of its own (from a thread): nothing here
writes to the database, so it can be read while Central runs.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from evproto.bus.seal import SealError, Why

from .gate import Owner, OwnerKind, verify_key_id

__all__ = ["StoredKeys", "central_offsets"]

log = logging.getLogger("evproto.inspector")


def central_offsets(db_path: str) -> dict[tuple[str, int], int]:
    """Where Central reads each partition it reads (its ``offsets`` table), read-only."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return {(t, int(p)): int(o) for t, p, o in db.execute("SELECT topic, partition, next_offset FROM offsets")}
    except sqlite3.Error as exc:
        raise OSError(f"cannot read Central's offsets in {db_path}: {exc}") from None
    finally:
        db.close()


class StoredKeys:
    """Central's record keys and verify key, read from its database without writing to it
    (a :class:`~.gate.KeyBook`). A key issued after loading (a monitor that authenticated
    again) is looked up by its id the first time a record names it: one indexed query, so
    the record sealed with a brand-new key opens at once (a timed reload of every key left
    such records closed until it came round). Retired and revoked keys still open what
    they sealed: this is for looking, not for accepting."""

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self._keys: dict[str, tuple[Owner, bytes]] = {}
        pub_path = db_path + ".signing.pub"
        with open(pub_path, encoding="ascii") as f:
            raw = bytes.fromhex(f.read().strip())
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        self._verify_id = verify_key_id(raw)
        self._verify = Ed25519PublicKey.from_public_bytes(raw)
        self.reload()

    def reload(self) -> None:
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        try:
            keys: dict[str, tuple[Owner, bytes]] = {}
            for key_id, cp_id, key in db.execute("SELECT key_id, cp_id, key FROM cp_keys"):
                keys[key_id] = (Owner(OwnerKind.CP, cp_id), bytes(key))
            for key_id, driver_id, key in db.execute("SELECT key_id, driver_id, key FROM driver_keys"):
                keys[key_id] = (Owner(OwnerKind.DRIVER, driver_id), bytes(key))
        except sqlite3.Error as exc:
            raise OSError(f"cannot read the keys in {self.db_path}: {exc}") from None
        finally:
            db.close()
        self._keys = keys

    def _lookup(self, key_id: str) -> tuple[Owner, bytes] | None:
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT cp_id, key FROM cp_keys WHERE key_id = ?", (key_id,)).fetchone()
            if row is not None:
                return Owner(OwnerKind.CP, row[0]), bytes(row[1])
            row = db.execute("SELECT driver_id, key FROM driver_keys WHERE key_id = ?", (key_id,)).fetchone()
            return (Owner(OwnerKind.DRIVER, row[0]), bytes(row[1])) if row is not None else None
        except sqlite3.Error as exc:
            log.warning("cannot read the keys in %s: %s", self.db_path, exc)
            return None
        finally:
            db.close()

    def record_key(self, key_id: str) -> tuple[Owner, bytes]:
        found = self._keys.get(key_id)
        if found is None and len(key_id) <= 128:
            found = self._lookup(key_id)
            if found is not None:
                self._keys[key_id] = found
        if found is None:
            raise SealError(Why.UNKNOWN_KEY, key_id[:64])
        return found

    def verify_key(self, key_id: str) -> Any:
        if key_id != self._verify_id:
            raise SealError(Why.UNKNOWN_KEY, key_id[:64])
        return self._verify
