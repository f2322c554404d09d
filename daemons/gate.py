"""The one place where a Kafka record's envelope is checked and made: who may write what.

Readers call :meth:`RecordGate.decode` instead of ``decode_event``: it opens the sealed
or checks the signed envelope the topic requires (:data:`SECURE_POLICY`), refuses a
replayed counter, decodes the event with its schema, and checks that the key that
sealed or signed it belongs to the party the event speaks for (:func:`_speaks_for`).
Writers call :meth:`RecordSealer.wrap` at send time.

Under ``--insecure`` (the assignment's release 1) every topic is plain JSON and the
gate only decodes; a sealed record reaching an insecure reader fails to decode.

Keys are looked up by key id in a :class:`KeyBook`: Central's comes from its database
(every CP's and driver's key), an engine's holds its own CP key (handed over by its
monitor), a driver's its own key; everyone has Central's verify key.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Callable, Protocol

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from evproto.bus import seal
from evproto.bus.consumer import Record
from evproto.bus.events import EventDecodeError, decode_event
from evproto.bus.seal import CounterClock, Envelope, ReplayWindow, SealError, Why
from evproto.bus.topics import Topic
from evproto.domain.events import (
    AuthorizationAnswer,
    Event,
    SupplyFinished,
    SupplyProgress,
    SupplyRequest,
    SupplyStarted,
)

__all__ = [
    "Policy",
    "SECURE_POLICY",
    "PLAIN_POLICY",
    "Owner",
    "OwnerKind",
    "KeyBook",
    "MemoryKeyBook",
    "RecordGate",
    "RecordSealer",
    "NoKey",
    "CENTRAL",
    "event_type_of",
    "public_key_bytes",
    "verify_key_id",
]


class Policy(enum.Enum):
    PLAIN = "plain"
    SEALED = "sealed"  # AES-256-GCM with the key of the CP or driver the record is about
    SIGNED = "signed"  # Ed25519 by Central


SECURE_POLICY: dict[Topic, Policy] = {
    Topic.DRIVER_REQUESTS: Policy.SEALED,  # the driver's key (or, for a request typed at a CP, that CP's)
    Topic.CP_COMMANDS: Policy.SEALED,  # the CP's key, by Central
    Topic.CP_EVENTS: Policy.SEALED,  # the CP's key, by its engine
    Topic.DRIVER_EVENTS: Policy.SEALED,  # the driver's key, by Central (a driver's tickets are its own business)
    Topic.CP_STATE: Policy.SIGNED,  # by Central, readable by all
    Topic.CENTRAL_HEARTBEAT: Policy.SIGNED,
}
PLAIN_POLICY: dict[Topic, Policy] = {t: Policy.PLAIN for t in Topic}


class OwnerKind(enum.Enum):
    CP = "cp"
    DRIVER = "driver"
    CENTRAL = "central"


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose key it is."""

    kind: OwnerKind
    id: str

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.id}"


CENTRAL = Owner(OwnerKind.CENTRAL, "central")


class KeyBook(Protocol):
    def record_key(self, key_id: str) -> tuple[Owner, bytes]:
        """The owner and AES key of ``key_id``; SealError(UNKNOWN_KEY / REVOKED_KEY)."""
        ...

    def verify_key(self, key_id: str) -> Ed25519PublicKey:
        """Central's verify key named ``key_id``; SealError(UNKNOWN_KEY)."""
        ...


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify_key_id(public: bytes) -> str:
    """The key id that names Central's verify key: ``central.`` + 16 hex digits of its hash."""
    return "central." + hashlib.sha256(public).hexdigest()[:16]


@dataclass
class MemoryKeyBook:
    """Keys held in memory: an engine's or a driver's own, and Central's verify key."""

    keys: dict[str, tuple[Owner, bytes]] = field(default_factory=dict)
    verify_keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)

    def trust_central(self, raw: bytes) -> None:
        """Central's verify key (32 raw bytes, as its .pub file, a CpKey or a driver's file give it)
        becomes the one this book trusts. ValueError for anything else."""
        if len(raw) != 32:
            raise ValueError("Central's verify key is 32 bytes")
        self.verify_keys = {verify_key_id(raw): Ed25519PublicKey.from_public_bytes(raw)}

    @property
    def central_key(self) -> bytes | None:
        """The raw verify key trusted now (what a state file keeps), None before one."""
        return next((public_key_bytes(k) for k in self.verify_keys.values()), None)

    def record_key(self, key_id: str) -> tuple[Owner, bytes]:
        try:
            return self.keys[key_id]
        except KeyError:
            raise SealError(Why.UNKNOWN_KEY, key_id[:64]) from None

    def verify_key(self, key_id: str) -> Ed25519PublicKey:
        try:
            return self.verify_keys[key_id]
        except KeyError:
            raise SealError(Why.UNKNOWN_KEY, key_id[:64]) from None


def event_type_of(value: bytes) -> str:
    """The ``type`` of an encoded event (ours: valid JSON with a string type)."""
    obj = orjson.loads(value)
    return str(obj["type"])


_CP_EVENTS = (AuthorizationAnswer, SupplyStarted, SupplyProgress, SupplyFinished)


def _speaks_for(owner: Owner, topic: Topic, record_key: str | None, event: Event) -> str | None:
    """Why the holder of ``owner``'s key may not have written ``event`` (None: it may).

    The table of who speaks for whom, in one place: a CP's engine for that CP's
    events; a driver for its own requests (or a CP for a request typed at its menu);
    Central for commands, the state of every CP, the heartbeat and drivers' news.
    """
    if topic is Topic.DRIVER_REQUESTS:
        if not isinstance(event, SupplyRequest):
            return f"{event.TYPE} is not a request"
        if owner.kind is OwnerKind.DRIVER and owner.id == event.driver_id == record_key and event.origin == "driver":
            return None
        if (
            owner.kind is OwnerKind.CP
            and owner.id == event.cp_id
            and event.origin == "cp"
            and record_key == event.driver_id
        ):
            return None
        return f"{owner} cannot ask on behalf of driver {event.driver_id} at {event.cp_id}"
    if topic is Topic.CP_EVENTS:
        if owner.kind is OwnerKind.CP and isinstance(event, _CP_EVENTS) and owner.id == record_key == event.cp_id:
            return None
        return f"{owner} cannot report for {getattr(event, 'cp_id', '?')}"
    if topic is Topic.CP_COMMANDS:
        if owner.kind is OwnerKind.CP and owner.id == record_key == getattr(event, "cp_id", None):
            return None
        return f"a command for {getattr(event, 'cp_id', '?')} sealed with the key of {owner}"
    if topic is Topic.DRIVER_EVENTS:
        if owner.kind is OwnerKind.DRIVER and owner.id == record_key == getattr(event, "driver_id", None):
            return None
        return f"news for {getattr(event, 'driver_id', '?')} sealed with the key of {owner}"
    return None if owner == CENTRAL else f"{owner} is not Central"


class RecordGate:
    """Opens, checks and decodes records for one reader.

    ``decode`` raises EventDecodeError (the schema refuses it) or SealError (not sealed
    or signed as it must be, by a party that may write it). Accepted counters are
    remembered in ``window`` at once; a reader that rolls back a batch reloads the
    window it stored with its offsets.
    """

    def __init__(
        self, keys: KeyBook, *, policy: dict[Topic, Policy] = SECURE_POLICY, window: ReplayWindow | None = None
    ) -> None:
        self.keys = keys
        self.policy = policy
        self.window = window if window is not None else ReplayWindow()

    @property
    def secure(self) -> bool:
        return any(p is not Policy.PLAIN for p in self.policy.values())

    def decode(self, record: Record, now_ms: int) -> Event:
        return self.decode_value(record.topic, record.key, record.value, now_ms, size=record.size)

    def decode_value(
        self, topic: Topic, record_key: str | None, value: bytes | None, now_ms: int, *, size: int | None = None
    ) -> Event:
        policy = self.policy.get(topic, Policy.PLAIN)
        if policy is Policy.PLAIN:
            return decode_event(value, now_ms=now_ms, size=size)
        if size is not None:  # cut by the reader: it cannot authenticate
            raise EventDecodeError(f"{size} bytes, more than an event may have")
        envelope = seal.peek(value)
        if envelope is None:
            raise SealError(Why.NOT_SEALED if policy is Policy.SEALED else Why.NOT_SIGNED)
        # Replay windows guard what acts (sealed: commands, reports, requests, news). What
        # Central signs is state, read again from the start of a compacted topic at every
        # start: its freshness is its own timestamp (a heartbeat counts only while recent).
        windowed = policy is Policy.SEALED
        if windowed:
            self.window.check(envelope, topic.value)
        owner, plaintext = self._open(policy, topic, record_key or "", envelope)
        event = decode_event(plaintext, now_ms=now_ms)
        if event.TYPE != envelope.event_type:
            raise SealError(Why.WRONG_TYPE, f"{event.TYPE} in an envelope for {envelope.event_type}")
        problem = _speaks_for(owner, topic, record_key, event)
        if problem is not None:
            raise SealError(Why.WRONG_SENDER, problem)
        if windowed:
            self.window.accept(envelope, topic.value)
        return event

    def _open(self, policy: Policy, topic: Topic, record_key: str, envelope: Envelope) -> tuple[Owner, bytes]:
        if policy is Policy.SEALED:
            if envelope.signed:
                raise SealError(Why.NOT_SEALED, "signed where it must be sealed")
            owner, key = self.keys.record_key(envelope.key_id)
            return owner, seal.open_sealed(key, envelope, topic=topic.value, record_key=record_key)
        if not envelope.signed:
            raise SealError(Why.NOT_SIGNED, "sealed where it must be signed")
        public = self.keys.verify_key(envelope.key_id)
        return CENTRAL, seal.verify_signed(public, envelope, topic=topic.value, record_key=record_key)


class NoKey(Exception):
    """No key to seal with yet (the CP has not authenticated): hold the record."""


class RecordSealer:
    """Wraps records at send time: sealed with the key of the party a record is about
    (``sealing_key(topic, record_key)`` gives (key id, key), or raises NoKey), or signed
    with Central's key. Each record gets a fresh counter."""

    def __init__(
        self,
        *,
        policy: dict[Topic, Policy] = SECURE_POLICY,
        sealing_key: Callable[[Topic, str], tuple[str, bytes]] | None = None,
        signing: tuple[str, Ed25519PrivateKey] | None = None,
    ) -> None:
        self.policy = policy
        self._sealing_key = sealing_key
        self._signing = signing
        self.clock = CounterClock()

    def wrap(self, topic: Topic, record_key: str, value: bytes, *, event_type: str | None = None) -> bytes:
        policy = self.policy.get(topic, Policy.PLAIN)
        if policy is Policy.PLAIN or value is None:
            return value
        event_type = event_type or event_type_of(value)
        if policy is Policy.SEALED:
            if self._sealing_key is None:
                raise NoKey(f"no key to seal {topic.value} records with")
            key_id, key = self._sealing_key(topic, record_key)
            return seal.seal(
                key,
                key_id,
                value,
                topic=topic.value,
                record_key=record_key,
                event_type=event_type,
                counter=self.clock.next(),
            )
        if self._signing is None:
            raise NoKey(f"no key to sign {topic.value} records with")
        key_id, private = self._signing
        return seal.sign(
            private,
            key_id,
            value,
            topic=topic.value,
            record_key=record_key,
            event_type=event_type,
            counter=self.clock.next(),
        )
