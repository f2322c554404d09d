"""API tokens of people and services (operators, installers, the weather service): who
may call which HTTP endpoint.

A token is ``evp_<id>_<secret>``: the id finds the row, the secret is checked in
constant time against its SHA-256. Tokens are 256 random bits, so a fast hash is
enough (nothing to guess; a slow one would cost every API call tens of milliseconds);
a copied database gives no usable token. Stored in the network's database next to
Central's tables, so ``ev-central tokens`` and the registry share them.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from evproto.idents import check_id

from .files import connect_private_db

__all__ = ["TokenRole", "Principal", "TokenStore", "ROLE_GRANTS"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    secret_sha256 BLOB NOT NULL,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    created_ts_ms INTEGER NOT NULL,
    revoked_ts_ms INTEGER
);
"""
_PREFIX = "evp_"


class TokenRole(enum.Enum):
    """What a token may do. Each role includes what the roles it grants can do."""

    VIEWER = "viewer"  # read Central's state
    OPERATOR = "operator"  # + stop/resume CPs, revoke keys
    INSTALLER = "installer"  # register and unregister CPs at the registry (nothing at Central)
    SERVICE = "service"  # a machine client of its own (the weather service)
    ADMIN = "admin"  # everything, and the audit log


#: Role -> the roles whose rights it has (itself included).
ROLE_GRANTS: dict[TokenRole, frozenset[TokenRole]] = {
    TokenRole.VIEWER: frozenset({TokenRole.VIEWER}),
    TokenRole.OPERATOR: frozenset({TokenRole.VIEWER, TokenRole.OPERATOR}),
    TokenRole.INSTALLER: frozenset({TokenRole.INSTALLER}),
    TokenRole.SERVICE: frozenset({TokenRole.SERVICE}),
    TokenRole.ADMIN: frozenset(TokenRole),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token belongs to."""

    token_id: str
    name: str
    role: TokenRole

    def may(self, needed: TokenRole) -> bool:
        return needed in ROLE_GRANTS[self.role]

    @property
    def label(self) -> str:
        """How the audit log names it: ``operator:alice (tok 1a2b3c4d)``."""
        return f"{self.role.value}:{self.name} (tok {self.token_id})"


class TokenStore:
    """The ``api_tokens`` table of the network's database (its own connection)."""

    def __init__(self, path: str) -> None:
        self._db = connect_private_db(path)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def create(self, role: TokenRole, name: str) -> tuple[str, Principal]:
        """A new token (shown once: only its hash is kept) and who it names."""
        check_id(name, what="token name")
        token_id = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        self._db.execute(
            "INSERT INTO api_tokens VALUES (?, ?, ?, ?, ?, NULL)",
            (token_id, hashlib.sha256(secret.encode()).digest(), role.value, name, int(time.time() * 1000)),
        )
        return f"{_PREFIX}{token_id}_{secret}", Principal(token_id, name, role)

    def verify(self, token: str) -> Principal | None:
        """Who ``token`` belongs to, None when it is not a live token (malformed, unknown,
        wrong secret or revoked: the caller cannot tell which)."""
        if not token.startswith(_PREFIX) or len(token) > 200:
            return None
        token_id, _, secret = token[len(_PREFIX) :].partition("_")
        row = self._db.execute(
            "SELECT secret_sha256, role, name, revoked_ts_ms FROM api_tokens WHERE id = ?", (token_id,)
        ).fetchone()
        digest = hashlib.sha256(secret.encode(errors="replace")).digest()
        expected = row[0] if row is not None else bytes(32)  # same work for an unknown id
        if not hmac.compare_digest(digest, expected) or row is None or row[3] is not None:
            return None
        try:
            return Principal(token_id, row[2], TokenRole(row[1]))
        except ValueError:
            return None

    def is_live(self, token_id: str) -> bool:
        """Whether the token ``token_id`` exists and is not revoked (a console session
        opened with it ends when it is revoked)."""
        row = self._db.execute("SELECT revoked_ts_ms FROM api_tokens WHERE id = ?", (token_id,)).fetchone()
        return row is not None and row[0] is None

    def revoke(self, token_id: str) -> bool:
        cur = self._db.execute(
            "UPDATE api_tokens SET revoked_ts_ms = ? WHERE id = ? AND revoked_ts_ms IS NULL",
            (int(time.time() * 1000), token_id),
        )
        return cur.rowcount == 1

    def list(self) -> list[dict[str, object]]:
        """Every token without its secret: id, name, role, created, revoked."""
        return [
            {"id": r[0], "name": r[1], "role": r[2], "created_ts_ms": r[3], "revoked": r[4] is not None}
            for r in self._db.execute(
                "SELECT id, name, role, created_ts_ms, revoked_ts_ms FROM api_tokens ORDER BY created_ts_ms"
            )
        ]
