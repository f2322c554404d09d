"""evproto.bus.seal: sealed and signed records against the golden vectors of
docs/security.md and against every change an attacker could make to one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

from evproto.bus import seal
from evproto.bus.seal import CounterClock, ReplayWindow, SealError, Why

DOC = Path(__file__).resolve().parent.parent / "docs" / "security.md"
KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


def _golden() -> dict:
    m = re.search(r"<!-- golden:seal -->\n```json\n(.*?)```\n<!-- /golden:seal -->", DOC.read_text(), re.S)
    assert m, "golden:seal missing from docs/security.md"
    return json.loads(m.group(1))


def _sealed(**kw) -> bytes:
    args = dict(topic="cp-events", record_key="CP001", event_type="supply_progress", counter=5)
    args.update(kw)
    return seal.seal(KEY, "CP001.k1", b'{"type":"supply_progress"}', **args)


def test_the_sealed_golden_vector() -> None:
    g = _golden()["sealed"]
    record = seal.seal(
        bytes.fromhex(g["key"]),
        g["key_id"],
        g["plaintext"].encode(),
        topic=g["topic"],
        record_key=g["record_key"],
        event_type=g["event_type"],
        counter=g["counter"],
        nonce=bytes.fromhex(g["nonce"]),
    )
    assert record.hex() == g["record"]
    env = seal.peek(bytes.fromhex(g["record"]))
    assert (env.signed, env.event_type, env.key_id, env.counter) == (False, g["event_type"], g["key_id"], g["counter"])
    assert (
        seal.open_sealed(bytes.fromhex(g["key"]), env, topic=g["topic"], record_key=g["record_key"])
        == g["plaintext"].encode()
    )


def test_the_signed_golden_vector() -> None:
    g = _golden()["signed"]
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(g["private_key"]))
    record = seal.sign(
        private,
        g["key_id"],
        g["payload"].encode(),
        topic=g["topic"],
        record_key=g["record_key"],
        event_type=g["event_type"],
        counter=g["counter"],
    )
    assert record.hex() == g["record"]
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(g["public_key"]))
    env = seal.peek(record)
    assert seal.verify_signed(public, env, topic=g["topic"], record_key=g["record_key"]) == g["payload"].encode()


@pytest.mark.parametrize("change", ["topic", "record_key", "key"])
def test_a_sealed_record_opens_only_where_and_with_what_it_was_sealed_for(change: str) -> None:
    env = seal.peek(_sealed())
    where = {"topic": "cp-events", "record_key": "CP001"}
    key = KEY
    if change == "key":
        key = OTHER  # CP B's key on CP A's record
    else:
        where[change] = "cp-commands" if change == "topic" else "CP002"
    with pytest.raises(SealError) as err:
        seal.open_sealed(key, env, **where)
    assert err.value.why is Why.TAMPERED


def test_any_flipped_bit_anywhere_in_a_sealed_record_is_refused() -> None:
    record = _sealed()
    for i in range(len(record)):
        for bit in (0x01, 0x80):
            bent = bytearray(record)
            bent[i] ^= bit
            try:
                env = seal.peek(bytes(bent))
                if env is None:
                    continue  # no longer looks sealed: the reader refuses it as not sealed
                seal.open_sealed(KEY, env, topic="cp-events", record_key="CP001")
            except SealError:
                continue
            pytest.fail(f"byte {i} bit {bit:#x} changed and the record still opened")


def test_a_signed_record_cannot_be_changed_or_signed_by_anyone_else() -> None:
    central = Ed25519PrivateKey.generate()
    record = seal.sign(
        central,
        "central.1",
        b'{"state":"ACTIVATED"}',
        topic="cp-state",
        record_key="CP001",
        event_type="cp_state",
        counter=9,
    )
    public = central.public_key()
    bent = record.replace(b"ACTIVATED", b"BROKEN\x00\x00\x00")
    forged = seal.sign(
        Ed25519PrivateKey.generate(),
        "central.1",
        b'{"state":"ACTIVATED"}',
        topic="cp-state",
        record_key="CP001",
        event_type="cp_state",
        counter=9,
    )
    for value, where in ((bent, "CP001"), (forged, "CP001"), (record, "CP002")):
        with pytest.raises(SealError):
            seal.verify_signed(public, seal.peek(value), topic="cp-state", record_key=where)


@pytest.mark.parametrize("value", [b"EVS1", b"EVS1\x05ab", b"EVG1\x00\x00" + bytes(8), b"EVS1\x01t\x01k" + bytes(8)])
def test_a_truncated_envelope_is_malformed_not_a_crash(value: bytes) -> None:
    with pytest.raises(SealError) as err:
        seal.peek(value)
    assert err.value.why is Why.MALFORMED


def test_plaintext_is_not_an_envelope() -> None:
    assert seal.peek(b'{"v":1}') is None and seal.peek(b"") is None and seal.peek(None) is None


@given(st.binary(max_size=300))
@settings(max_examples=examples(500), deadline=None)
def test_no_bytes_make_peek_or_open_raise_anything_but_seal_error(data: bytes) -> None:
    for value in (data, b"EVS1" + data, b"EVG1" + data):
        try:
            env = seal.peek(value)
            if env is not None and not env.signed:
                seal.open_sealed(KEY, env, topic="cp-events", record_key="CP001")
        except SealError:
            pass


def test_the_replay_window_refuses_a_counter_it_has_passed_and_survives_a_restart() -> None:
    window = ReplayWindow()
    first, second = seal.peek(_sealed(counter=10)), seal.peek(_sealed(counter=11))
    window.check(first, "cp-events")
    window.accept(first, "cp-events")
    window.check(second, "cp-events")
    window.accept(second, "cp-events")
    for old in (first, second):
        with pytest.raises(SealError) as err:
            window.check(old, "cp-events")
        assert err.value.why is Why.REPLAYED
    window.check(first, "cp-commands")  # another topic's counters are its own
    again = ReplayWindow()
    again.load(json.loads(json.dumps(window.state())))
    with pytest.raises(SealError):
        again.check(first, "cp-events")


def test_the_replay_window_is_bounded() -> None:
    window = ReplayWindow(max_keys=100)
    for i in range(1000):
        window.accept(
            seal.peek(seal.seal(KEY, f"k{i}", b"x", topic="t", record_key="r", event_type="e", counter=1)), "t"
        )
    assert len(window.state()) == 100 and "t|k999" in window.state()


def test_counters_grow_even_when_the_clock_does_not() -> None:
    clock = CounterClock(lambda: 5_000_000)
    values = [clock.next() for _ in range(100)]
    assert values == sorted(set(values)) and values[0] == 5000
