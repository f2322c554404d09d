"""Sealed and signed Kafka records: the bytes, no I/O, no clocks passed implicitly.

Two envelopes around an event's JSON (docs/security.md has the layout and golden vectors):

**Sealed** (AES-256-GCM, a key per charge point), for ``cp-commands`` and ``cp-events``::

    "EVS1" | u8 len | event type | u8 len | key id | u64 counter | 12-byte nonce | ciphertext+tag

The associated data is the header (everything before the ciphertext) followed by the
logical topic name and the record key, each u16-length-prefixed: a record moved to
another topic or key, or with its type, key id or counter changed, does not open.
Nonces are random (96 bits; a CP's key seals far fewer than the 2^32 records after which
random nonces start to risk a repeat, and a new key is issued at each authentication).

**Signed** (Ed25519, Central's signing key), for what Central tells everyone
(``cp-state``, ``central-heartbeat``, ``driver-events``) and what drivers ask::

    "EVG1" | u8 len | event type | u8 len | key id | u64 counter | 64-byte signature | payload

signed over the same associated data followed by the payload. The payload stays
readable (anyone may read a CP's state); only its author could have written it.

The counter is what makes a replayed record stand out: each writer's counters only
grow (:class:`CounterClock`), and a reader accepts a counter only above the last it
accepted for that key and topic (:class:`ReplayWindow`, whose state the reader keeps
with its offsets).
"""

from __future__ import annotations

import enum
import os
import struct
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import EvprotoError

__all__ = [
    "SEALED_MAGIC",
    "SIGNED_MAGIC",
    "SealError",
    "Why",
    "Envelope",
    "peek",
    "seal",
    "open_sealed",
    "sign",
    "verify_signed",
    "CounterClock",
    "ReplayWindow",
    "KEY_BYTES",
]

SEALED_MAGIC = b"EVS1"
SIGNED_MAGIC = b"EVG1"
KEY_BYTES = 32
NONCE_BYTES = 12
SIGNATURE_BYTES = 64
_U64 = struct.Struct(">Q")


class Why(enum.Enum):
    """Why a record was not accepted (the dead letter and the audit log say this)."""

    NOT_SEALED = "not sealed"  # plaintext (or garbage) where a sealed record is required
    NOT_SIGNED = "not signed"
    MALFORMED = "malformed envelope"
    UNKNOWN_KEY = "unknown key"  # never issued (or forgotten) key id
    REVOKED_KEY = "revoked key"
    WRONG_SENDER = "key of another sender"  # CP B's key on CP A's record
    TAMPERED = "does not authenticate"  # ciphertext, tag, header, topic or record key changed
    REPLAYED = "replayed"  # a counter not above the last accepted one
    WRONG_TYPE = "type differs from its envelope"


class SealError(EvprotoError):
    """A record that is not sealed or signed as it must be; ``why`` says how."""

    def __init__(self, why: Why, detail: str = "") -> None:
        super().__init__(why.value + (f": {detail}" if detail else ""))
        self.why = why
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed envelope header: what can be read before any key is used."""

    signed: bool
    event_type: str
    key_id: str
    counter: int
    #: The header bytes (the start of the associated data).
    header: bytes
    #: Nonce (sealed) or signature (signed).
    nonce_or_signature: bytes
    #: Ciphertext+tag (sealed) or payload (signed).
    body: bytes


def _short(text: str, what: str) -> bytes:
    data = text.encode()
    if not 1 <= len(data) <= 255:
        raise ValueError(f"{what} must be 1-255 bytes of UTF-8")
    return bytes([len(data)]) + data


def _aad(header: bytes, topic: str, record_key: str) -> bytes:
    t, k = topic.encode(), record_key.encode()
    return header + len(t).to_bytes(2, "big") + t + len(k).to_bytes(2, "big") + k


def _header(magic: bytes, event_type: str, key_id: str, counter: int) -> bytes:
    return magic + _short(event_type, "event type") + _short(key_id, "key id") + _U64.pack(counter)


def peek(value: bytes | None) -> Envelope | None:
    """The envelope of ``value``, None when it does not start like one (plaintext)."""
    if not value or value[:4] not in (SEALED_MAGIC, SIGNED_MAGIC):
        return None
    signed = value[:4] == SIGNED_MAGIC
    try:
        pos = 4
        n = value[pos]
        event_type = value[pos + 1 : pos + 1 + n].decode()
        pos += 1 + n
        n = value[pos]
        key_id = value[pos + 1 : pos + 1 + n].decode()
        pos += 1 + n
        (counter,) = _U64.unpack_from(value, pos)
        pos += 8
    except (IndexError, struct.error, UnicodeDecodeError):
        raise SealError(Why.MALFORMED) from None
    tail = SIGNATURE_BYTES if signed else NONCE_BYTES
    if not event_type or not key_id or len(value) < pos + tail + (0 if signed else 16):
        raise SealError(Why.MALFORMED)
    return Envelope(signed, event_type, key_id, counter, value[:pos], value[pos : pos + tail], value[pos + tail :])


_AEADS: dict[bytes, AESGCM] = {}


def _aead(key: bytes) -> AESGCM:
    # One cipher object per key (a CP's or a driver's), not one per record; bounded.
    aead = _AEADS.get(key)
    if aead is None:
        if len(_AEADS) >= 100_000:
            _AEADS.clear()
        aead = _AEADS[key] = AESGCM(key)
    return aead


def seal(
    key: bytes,
    key_id: str,
    plaintext: bytes,
    *,
    topic: str,
    record_key: str,
    event_type: str,
    counter: int,
    nonce: bytes | None = None,
) -> bytes:
    """Seal ``plaintext`` (an event's JSON) for ``topic``/``record_key`` under ``key``."""
    header = _header(SEALED_MAGIC, event_type, key_id, counter)
    nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
    return header + nonce + _aead(key).encrypt(nonce, plaintext, _aad(header, topic, record_key))


def open_sealed(key: bytes, envelope: Envelope, *, topic: str, record_key: str) -> bytes:
    """The plaintext of a sealed record; SealError(TAMPERED) when anything was changed."""
    if envelope.signed:
        raise SealError(Why.NOT_SEALED, "signed, not sealed")
    try:
        return _aead(key).decrypt(envelope.nonce_or_signature, envelope.body, _aad(envelope.header, topic, record_key))
    except InvalidTag:
        raise SealError(Why.TAMPERED) from None


def sign(
    private_key: Ed25519PrivateKey,
    key_id: str,
    payload: bytes,
    *,
    topic: str,
    record_key: str,
    event_type: str,
    counter: int,
) -> bytes:
    """Sign ``payload`` for ``topic``/``record_key``; the payload stays readable."""
    header = _header(SIGNED_MAGIC, event_type, key_id, counter)
    return header + private_key.sign(_aad(header, topic, record_key) + payload) + payload


def verify_signed(public_key: Ed25519PublicKey, envelope: Envelope, *, topic: str, record_key: str) -> bytes:
    """The payload of a signed record; SealError(TAMPERED) when the signature fails."""
    if not envelope.signed:
        raise SealError(Why.NOT_SIGNED, "sealed, not signed")
    try:
        public_key.verify(envelope.nonce_or_signature, _aad(envelope.header, topic, record_key) + envelope.body)
    except InvalidSignature:
        raise SealError(Why.TAMPERED) from None
    return envelope.body


class CounterClock:
    """A writer's counters: microseconds since the epoch, and always above the last one
    given, so they grow across restarts (the clock moved on) without being stored."""

    def __init__(self, clock_ns: object = time.time_ns) -> None:
        self._clock = clock_ns
        self._last = 0

    def next(self) -> int:
        now = self._clock() // 1000  # type: ignore[operator]
        self._last = max(self._last + 1, now)
        return self._last


class ReplayWindow:
    """A reader's memory of the last counter it accepted per (key id, topic).

    ``check`` refuses a counter that is not above the last accepted one; ``accept``
    records it once the record was applied. ``state()``/``load()`` let the reader keep
    it with its offsets, so a restart does not reopen the window. Bounded: the keys
    unused longest are forgotten beyond ``max_keys`` (a forgotten key's old records
    could be replayed only if the key itself is still valid).
    """

    def __init__(self, *, max_keys: int = 100_000) -> None:
        self._last: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._max = max_keys

    @staticmethod
    def _slot(key_id: str, topic: str) -> str:
        return f"{topic}|{key_id}"

    def check(self, envelope: Envelope, topic: str) -> None:
        last = self._last.get(self._slot(envelope.key_id, topic))
        if last is not None and envelope.counter <= last:
            raise SealError(Why.REPLAYED, f"counter {envelope.counter} after {last}")

    def accept(self, envelope: Envelope, topic: str) -> None:
        slot = self._slot(envelope.key_id, topic)
        self._last.pop(slot, None)
        self._last[slot] = envelope.counter  # newest last: eviction takes the oldest
        self._dirty.add(slot)
        if len(self._last) > self._max:
            for old in list(self._last)[: len(self._last) - self._max]:
                del self._last[old]
                self._dirty.discard(old)

    def state(self) -> dict[str, int]:
        return dict(self._last)

    def take_changes(self) -> dict[str, int]:
        """The slots accepted since the last call (what a reader stores with its offsets)."""
        changes = {slot: self._last[slot] for slot in self._dirty if slot in self._last}
        self._dirty.clear()
        return changes

    def load(self, state: dict[str, int]) -> None:
        self._last = {str(k): int(v) for k, v in state.items()}
        self._dirty.clear()
