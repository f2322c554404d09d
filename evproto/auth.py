"""Proving a credential over a link without sending it: a SCRAM-style exchange on scrypt.

Pure functions, no I/O, standard library only (hashlib, hmac, secrets). The bytes are
specified in docs/security.md with golden vectors the tests read.

What is stored where:

- the charge point keeps its **secret** (issued once by the registry);
- the registry and Central keep only a :class:`StoredCredential`: the scrypt salt and
  parameters, ``stored_key = SHA-256(client_key)`` and ``server_key``, from which the
  secret cannot be recovered and with which nobody can log in;
- on the link: the client's nonce (in Hello), the server's :class:`Challenge` (salt,
  parameters, its nonce), the client's proof, the server's signature.

``client_key = HMAC(scrypt(secret, salt), "evproto client key")``; the proof is
``client_key XOR HMAC(stored_key, auth_message)``. The server recovers ``client_key``
from the proof and checks its hash against ``stored_key``; it answers with
``HMAC(server_key, auth_message | wrapped key)``, which shows the client it talks to
the holder of its stored credential. Both sides then share ``client_key``, which an
eavesdropper never sees: it pads the per-CP key Central hands over (:func:`wrap_key`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from .errors import EvprotoError

__all__ = [
    "AuthError",
    "StoredCredential",
    "Challenge",
    "ClientSession",
    "new_secret",
    "hash_secret",
    "new_nonce",
    "auth_message",
    "verify_proof",
    "server_signature",
    "wrap_key",
    "SCRYPT_DEFAULT",
    "NONCE_BYTES",
]

#: scrypt's (log2 N, r, p) for new credentials: 16 MiB and tens of milliseconds once per
#: charge point and start. Registry secrets are 256 random bits, so the cost guards
#: against nothing a guess could do; it is there so that a copied database gives no
#: cheap way to test candidate secrets either.
SCRYPT_DEFAULT = (14, 8, 1)
#: Bounds a client accepts from a server's challenge, so a fake server cannot make it
#: burn gigabytes (scrypt memory is 128 * r * N bytes).
MAX_LOG2_N, MAX_R, MAX_P = 17, 16, 4
NONCE_BYTES = 24
_MIN_NONCE, _MAX_NONCE = 16, 64
_MAX_SALT = 64
KEY_BYTES = 32
_CLIENT_LABEL = b"evproto client key"
_SERVER_LABEL = b"evproto server key"
_WRAP_LABEL = b"evproto key wrap"
_PREFIX = "scrypt"


class AuthError(EvprotoError):
    """A credential, challenge or proof that is malformed or does not verify."""


def new_secret() -> str:
    """A fresh credential secret: 256 random bits, URL-safe text (43 characters)."""
    return secrets.token_urlsafe(32)


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _salted(secret: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * r * n, dklen=32)


def _keys(salted: bytes) -> tuple[bytes, bytes]:
    client_key = hmac.digest(salted, _CLIENT_LABEL, "sha256")
    return client_key, hmac.digest(salted, _SERVER_LABEL, "sha256")


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredCredential:
    """What a server keeps of a secret: enough to verify a proof, not to make one."""

    salt: bytes
    log2_n: int
    r: int
    p: int
    stored_key: bytes
    server_key: bytes

    def to_text(self) -> str:
        """``scrypt$14$8$1$SALT$STORED_KEY$SERVER_KEY`` (URL-safe base64): one database column."""
        return "$".join(
            [
                _PREFIX,
                str(self.log2_n),
                str(self.r),
                str(self.p),
                _b64(self.salt),
                _b64(self.stored_key),
                _b64(self.server_key),
            ]
        )

    @classmethod
    def from_text(cls, text: str) -> StoredCredential:
        parts = text.split("$")
        try:
            if len(parts) != 7 or parts[0] != _PREFIX:
                raise ValueError
            cred = cls(
                log2_n=int(parts[1]),
                r=int(parts[2]),
                p=int(parts[3]),
                salt=_unb64(parts[4]),
                stored_key=_unb64(parts[5]),
                server_key=_unb64(parts[6]),
            )
        except (ValueError, TypeError):
            raise AuthError("not a stored credential") from None
        _check_params(cred.log2_n, cred.r, cred.p, cred.salt)
        if len(cred.stored_key) != 32 or len(cred.server_key) != 32:
            raise AuthError("not a stored credential")
        return cred

    def challenge(self, server_nonce: bytes | None = None) -> Challenge:
        """The challenge a server sends for this credential."""
        return Challenge(
            salt=self.salt,
            log2_n=self.log2_n,
            r=self.r,
            p=self.p,
            server_nonce=server_nonce if server_nonce is not None else new_nonce(),
        )


def _check_params(log2_n: int, r: int, p: int, salt: bytes) -> None:
    if not (10 <= log2_n <= MAX_LOG2_N and 1 <= r <= MAX_R and 1 <= p <= MAX_P and 8 <= len(salt) <= _MAX_SALT):
        raise AuthError(f"scrypt parameters out of bounds (log2 N {log2_n}, r {r}, p {p}, salt {len(salt)} bytes)")


def hash_secret(
    secret: str, *, params: tuple[int, int, int] = SCRYPT_DEFAULT, salt: bytes | None = None
) -> StoredCredential:
    """The :class:`StoredCredential` of ``secret`` (a fresh 16-byte salt unless given)."""
    log2_n, r, p = params
    salt = salt if salt is not None else secrets.token_bytes(16)
    _check_params(log2_n, r, p, salt)
    client_key, server_key = _keys(_salted(secret, salt, log2_n, r, p))
    return StoredCredential(
        salt=salt, log2_n=log2_n, r=r, p=p, stored_key=hashlib.sha256(client_key).digest(), server_key=server_key
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """The server's half: how to salt the secret, and its nonce."""

    salt: bytes
    log2_n: int
    r: int
    p: int
    server_nonce: bytes


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def auth_message(node_id: str, client_nonce: bytes, challenge: Challenge) -> bytes:
    """What both sides sign: every value of the exchange, each length-prefixed, so that
    no two different exchanges give the same message."""
    for nonce in (client_nonce, challenge.server_nonce):
        if not _MIN_NONCE <= len(nonce) <= _MAX_NONCE:
            raise AuthError(f"nonce of {len(nonce)} bytes (expected {_MIN_NONCE}..{_MAX_NONCE})")
    return b"evproto-auth-v1" + b"".join(
        _field(x)
        for x in (
            node_id.encode(),
            client_nonce,
            challenge.server_nonce,
            challenge.salt,
            bytes([challenge.log2_n, challenge.r, challenge.p]),
        )
    )


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def verify_proof(stored: StoredCredential, message: bytes, proof: bytes) -> bytes:
    """Server side: the client's ``client_key`` when ``proof`` is right, else AuthError."""
    if len(proof) != 32:
        raise AuthError("proof of the wrong size")
    client_key = _xor(proof, hmac.digest(stored.stored_key, message, "sha256"))
    if not hmac.compare_digest(hashlib.sha256(client_key).digest(), stored.stored_key):
        raise AuthError("wrong credentials")
    return client_key


def _granted(message: bytes, key_id: str, wrapped_key: bytes, verify_key: bytes) -> bytes:
    return message + _field(key_id.encode()) + _field(wrapped_key) + _field(verify_key)


def server_signature(
    stored: StoredCredential, message: bytes, *, key_id: str = "", wrapped_key: bytes = b"", verify_key: bytes = b""
) -> bytes:
    """Server side: proves to the client that the server holds its stored credential,
    and that what it grants (key id, wrapped key, its verify key) comes from it unchanged."""
    return hmac.digest(stored.server_key, _granted(message, key_id, wrapped_key, verify_key), "sha256")


def wrap_key(client_key: bytes, message: bytes, key: bytes) -> bytes:
    """Pad a 32-byte key with a pad only the two ends of this exchange can make (the pad
    depends on both fresh nonces, so it is never used twice). Its own inverse."""
    if len(key) != KEY_BYTES:
        raise AuthError(f"a key of {len(key)} bytes (expected {KEY_BYTES})")
    return _xor(key, hmac.digest(client_key, _WRAP_LABEL + message, "sha256"))


class ClientSession:
    """The client's side of one exchange: make the nonce, answer the challenge, check
    the server's signature and unwrap the key it sends.

    The scrypt result is cached per (salt, parameters), so a reconnecting client pays
    for it once.
    """

    def __init__(self, node_id: str, secret: str) -> None:
        self.node_id = node_id
        self._secret = secret
        self._cache: dict[tuple[bytes, int, int, int], tuple[bytes, bytes]] = {}
        self.client_nonce = b""
        self._message = b""
        self._keys: tuple[bytes, bytes] | None = None

    def __repr__(self) -> str:  # never the secret
        return f"ClientSession(node_id={self.node_id!r})"

    def start(self) -> bytes:
        """A fresh client nonce for this attempt (it travels in Hello.credentials)."""
        self.client_nonce = new_nonce()
        self._message, self._keys = b"", None
        return self.client_nonce

    def answer(self, challenge: Challenge) -> bytes:
        """The proof for ``challenge``; AuthError when its parameters are out of bounds."""
        _check_params(challenge.log2_n, challenge.r, challenge.p, challenge.salt)
        if not self.client_nonce:
            raise AuthError("answer() before start()")
        cache_key = (challenge.salt, challenge.log2_n, challenge.r, challenge.p)
        keys = self._cache.get(cache_key)
        if keys is None:
            keys = _keys(_salted(self._secret, *cache_key))
            self._cache = {cache_key: keys}
        self._keys = keys
        self._message = auth_message(self.node_id, self.client_nonce, challenge)
        client_key = keys[0]
        return _xor(client_key, hmac.digest(hashlib.sha256(client_key).digest(), self._message, "sha256"))

    def finish(
        self, signature: bytes, *, key_id: str = "", wrapped_key: bytes = b"", verify_key: bytes = b""
    ) -> bytes | None:
        """Check the server's signature over what it grants; return the unwrapped key (None
        when none was sent). AuthError when the server did not prove it holds our stored
        credential, or something it sent was changed on the way."""
        if self._keys is None:
            raise AuthError("finish() before answer()")
        client_key, server_key = self._keys
        expected = hmac.digest(server_key, _granted(self._message, key_id, wrapped_key, verify_key), "sha256")
        if not hmac.compare_digest(expected, signature):
            raise AuthError("the server could not prove it knows this charge point's credential")
        return wrap_key(client_key, self._message, wrapped_key) if wrapped_key else None
