"""Central's keys: a record key per charge point and per driver, and Central's signing key.

- A CP's record key is issued fresh each time its monitor authenticates; the one
  before it is *retired* (records it sealed are still accepted for
  :data:`RETIRED_GRACE_MS`, so nothing in flight is lost) and a revocation ends all of
  them at once.
- A driver's key is its credential, issued when the driver is registered and given
  to its app in a file (``ev-central drivers add D001 --credentials DIR``).
- Central's signing key (Ed25519) signs what it tells everyone; its public half goes
  to monitors (with each CP key) and to drivers (a file), and is named by a key id
  derived from it.

Keys live in the network's database (``cp_keys``, ``driver_keys``; the file is 0600)
and in ``DB.signing.key`` (0600). Lookups are served from memory.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from evproto.bus.seal import KEY_BYTES, SealError, Why
from evproto.bus.topics import Topic

from ..files import connect_private_db, open_private
from ..gate import CENTRAL, NoKey, Owner, OwnerKind, public_key_bytes, verify_key_id
from ..pki import write_private

__all__ = ["KeyRing", "CpKeyGrant", "RETIRED_GRACE_MS", "signing_key"]

#: How long records sealed with a CP's previous key are still accepted after a new one.
RETIRED_GRACE_MS = 10 * 60 * 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cp_keys (
    key_id TEXT PRIMARY KEY,
    cp_id TEXT NOT NULL,
    key BLOB NOT NULL,
    issued_ts_ms INTEGER NOT NULL,
    retired_ts_ms INTEGER,
    revoked_ts_ms INTEGER
);
CREATE INDEX IF NOT EXISTS cp_keys_cp ON cp_keys(cp_id);
CREATE TABLE IF NOT EXISTS driver_keys (
    driver_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    key BLOB NOT NULL,
    issued_ts_ms INTEGER NOT NULL
);
"""


def _now_ms() -> int:
    return int(time.time() * 1000)


def signing_key(path: str) -> Ed25519PrivateKey:
    """Central's signing key at ``path`` (raw 32 bytes, 0600), made on first use."""
    try:
        with open(path, "rb") as f:
            return Ed25519PrivateKey.from_private_bytes(f.read())
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        write_private(
            Path(path),
            key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            ),
        )
        return key


@dataclass(frozen=True, slots=True)
class CpKeyGrant:
    key_id: str
    key: bytes


@dataclass(slots=True)
class _Key:
    owner: Owner
    key: bytes
    retired_ts_ms: int | None = None
    revoked: bool = False


class KeyRing:
    """Every record key Central knows, plus its own signing key (implements gate.KeyBook)."""

    def __init__(self, db_path: str) -> None:
        self._db = connect_private_db(db_path)
        self._db.executescript(_SCHEMA)
        self.signer = signing_key(db_path + ".signing.key")
        self.verify_bytes = public_key_bytes(self.signer)
        self.signing_key_id = verify_key_id(self.verify_bytes)
        self._public = self.signer.public_key()
        pub_path = db_path + ".signing.pub"
        if not os.path.exists(pub_path):
            with open_private(pub_path, "w") as f:
                f.write(self.verify_bytes.hex() + "\n")
        self._keys: dict[str, _Key] = {}
        self._current: dict[str, str] = {}  # cp id -> its newest live key id
        self._drivers: dict[str, str] = {}  # driver id -> key id
        self.reload()

    def close(self) -> None:
        self._db.close()

    def key_ids(self) -> set[str]:
        return set(self._keys)

    def reload(self) -> None:
        """Read every key again (another process may have issued some), dropping first the
        keys nothing can use any more: retired past their grace, revoked a day ago. Bounded
        however often monitors reconnect."""
        now = _now_ms()
        self._db.execute(
            "DELETE FROM cp_keys WHERE retired_ts_ms < ? OR revoked_ts_ms < ?",
            (now - RETIRED_GRACE_MS, now - 86_400_000),
        )
        keys: dict[str, _Key] = {}
        current: dict[str, tuple[int, str]] = {}
        for key_id, cp_id, key, issued, retired, revoked in self._db.execute(
            "SELECT key_id, cp_id, key, issued_ts_ms, retired_ts_ms, revoked_ts_ms FROM cp_keys"
        ):
            keys[key_id] = _Key(Owner(OwnerKind.CP, cp_id), bytes(key), retired, revoked is not None)
            if retired is None and revoked is None and issued >= current.get(cp_id, (-1, ""))[0]:
                current[cp_id] = (issued, key_id)
        drivers: dict[str, str] = {}
        for driver_id, key_id, key in self._db.execute("SELECT driver_id, key_id, key FROM driver_keys"):
            keys[key_id] = _Key(Owner(OwnerKind.DRIVER, driver_id), bytes(key))
            drivers[driver_id] = key_id
        self._keys, self._drivers = keys, drivers
        self._current = {cp: kid for cp, (_, kid) in current.items()}

    # -- charge points ---------------------------------------------------------------------

    def issue_cp_key(self, cp_id: str) -> CpKeyGrant:
        """A fresh key for ``cp_id``; its previous keys are retired (accepted a while longer)."""
        now = _now_ms()
        key_id = f"cp.{cp_id}.{secrets.token_hex(4)}"
        key = secrets.token_bytes(KEY_BYTES)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "UPDATE cp_keys SET retired_ts_ms = ? WHERE cp_id = ? AND retired_ts_ms IS NULL", (now, cp_id)
            )
            self._db.execute("INSERT INTO cp_keys VALUES (?, ?, ?, ?, NULL, NULL)", (key_id, cp_id, key, now))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        for k in self._keys.values():
            if k.owner == Owner(OwnerKind.CP, cp_id) and k.retired_ts_ms is None:
                k.retired_ts_ms = now
        self._keys[key_id] = _Key(Owner(OwnerKind.CP, cp_id), key)
        self._current[cp_id] = key_id
        return CpKeyGrant(key_id, key)

    def revoke_cp(self, cp_id: str) -> int:
        """Revoke every key of ``cp_id`` (it must authenticate again); how many were live."""
        now = _now_ms()
        cur = self._db.execute(
            "UPDATE cp_keys SET revoked_ts_ms = ? WHERE cp_id = ? AND revoked_ts_ms IS NULL", (now, cp_id)
        )
        for k in self._keys.values():
            if k.owner == Owner(OwnerKind.CP, cp_id):
                k.revoked = True
        self._current.pop(cp_id, None)
        return cur.rowcount

    def current_cp_key(self, cp_id: str) -> CpKeyGrant | None:
        key_id = self._current.get(cp_id)
        if key_id is None:
            return None
        return CpKeyGrant(key_id, self._keys[key_id].key)

    def has_live_key(self, cp_id: str) -> bool:
        return cp_id in self._current

    # -- drivers ---------------------------------------------------------------------------

    def issue_driver_key(self, driver_id: str) -> CpKeyGrant:
        """A new key for ``driver_id`` (replacing any older one: the old file stops working)."""
        key_id = f"drv.{driver_id}.{secrets.token_hex(4)}"
        key = secrets.token_bytes(KEY_BYTES)
        self._db.execute(
            "INSERT INTO driver_keys VALUES (?, ?, ?, ?) ON CONFLICT(driver_id) DO UPDATE SET "
            "key_id = excluded.key_id, key = excluded.key, issued_ts_ms = excluded.issued_ts_ms",
            (driver_id, key_id, key, _now_ms()),
        )
        old = self._drivers.get(driver_id)
        if old is not None:
            self._keys.pop(old, None)
        self._keys[key_id] = _Key(Owner(OwnerKind.DRIVER, driver_id), key)
        self._drivers[driver_id] = key_id
        return CpKeyGrant(key_id, key)

    def driver_key(self, driver_id: str) -> CpKeyGrant | None:
        key_id = self._drivers.get(driver_id)
        return None if key_id is None else CpKeyGrant(key_id, self._keys[key_id].key)

    def forget_driver(self, driver_id: str) -> None:
        self._db.execute("DELETE FROM driver_keys WHERE driver_id = ?", (driver_id,))
        key_id = self._drivers.pop(driver_id, None)
        if key_id is not None:
            self._keys.pop(key_id, None)

    # -- gate.KeyBook ----------------------------------------------------------------------

    def record_key(self, key_id: str) -> tuple[Owner, bytes]:
        k = self._keys.get(key_id)
        if k is None:
            raise SealError(Why.UNKNOWN_KEY, key_id[:64])
        if k.revoked:
            raise SealError(Why.REVOKED_KEY, key_id[:64])
        if k.retired_ts_ms is not None and _now_ms() - k.retired_ts_ms > RETIRED_GRACE_MS:
            raise SealError(Why.REVOKED_KEY, f"{key_id[:64]} was replaced")
        return k.owner, k.key

    def verify_key(self, key_id: str) -> Ed25519PublicKey:
        if key_id != self.signing_key_id:
            raise SealError(Why.UNKNOWN_KEY, key_id[:64])
        return self._public

    def sealing_key(self, topic: object, record_key: str) -> tuple[str, bytes]:
        """For RecordSealer: the key of the CP (commands) or driver (news) a record is for."""
        grant = self.current_cp_key(record_key) if topic is Topic.CP_COMMANDS else self.driver_key(record_key)
        if grant is None:
            raise NoKey(f"no live key for {record_key}")
        return grant.key_id, grant.key

    @property
    def central_owner(self) -> Owner:
        return CENTRAL
