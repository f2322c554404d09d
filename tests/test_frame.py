"""The frame envelope: ``lrc``, ``encode_frame`` and the resynchronising ``FrameDecoder``.

Every decoder test feeds its input three ways (whole, byte by byte, random
splits) and requires the same events and the same counters from all of them:
the decoder promises that chunking never changes what it reports.
"""

from __future__ import annotations

import functools
import importlib.util
import operator
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

import evproto
from evproto import (
    DEFAULT_MAX_BODY,
    Control,
    ControlReceived,
    FrameDecoder,
    FrameError,
    FrameErrorKind,
    FrameReceived,
    Garbage,
    encode_frame,
    lrc,
)

ROOT = Path(__file__).resolve().parents[1]
CONTROL_BYTES = bytes([0x04, 0x05, 0x06, 0x15])
SIGNIFICANT = bytes([0x02, 0x03]) + CONTROL_BYTES

# -- helpers -----------------------------------------------------------------------------------

MODES = ("whole", "bytewise", "random")
#: Marker in a feed script: call ``decoder.resync()`` at this point.
RESYNC = object()
#: Marker in a feed script: the line goes quiet for good; ``resync()`` until nothing is held.
DRAIN = object()


def xor_loop(data: bytes) -> int:
    x = 0
    for b in data:
        x ^= b
    return x


def _chunks(data: bytes, mode: str, seed: int) -> list[bytes]:
    if mode == "whole":
        return [data]
    if mode == "bytewise":
        return [data[i : i + 1] for i in range(len(data))]
    if mode == "random":
        rng = random.Random(seed)
        out = []
        i = 0
        while i < len(data):
            n = rng.choice((0, 1, 1, 2, 3, 4, 5, 7, 11, 64, rng.randint(1, 700)))
            out.append(data[i : i + n])
            i += n
        return out
    raise ValueError(mode)


def feed_all(
    data: bytes, mode: str, *, decoder: FrameDecoder | None = None, seed: int = 0
) -> list[evproto.frame.DecoderEvent]:
    """Feed ``data`` to ``decoder`` (a new one by default) whole, byte by byte or in random splits.

    Checks the memory bound after every call and returns the events in order.
    """
    dec = decoder if decoder is not None else FrameDecoder()
    events: list = []
    for chunk in _chunks(data, mode, seed):
        events += dec.feed(chunk)
        assert dec.buffered <= dec.max_body + 5
    return events


def run_script(script, mode: str, *, max_body: int = DEFAULT_MAX_BODY, seed: int = 0):
    """Run a feed script (bytes and RESYNC markers) on a new decoder; return (events, decoder)."""
    dec = FrameDecoder(max_body=max_body)
    events: list = []
    for i, step in enumerate(script):
        if step is RESYNC:
            events += dec.resync()
            assert dec.buffered <= dec.max_body + 5
        elif step is DRAIN:
            events += _drain(dec)
        else:
            events += feed_all(step, mode, decoder=dec, seed=seed * 1000 + i)
    return events, dec


def decode_all_modes(*script, max_body: int = DEFAULT_MAX_BODY, seeds=(0, 1, 2)):
    """Run ``script`` whole, byte by byte and with random splits; all must agree.

    Returns the events and the decoder of the whole-input run.
    """
    ref_events, ref_dec = run_script(script, "whole", max_body=max_body)
    runs = [("bytewise", 0)] + [("random", s) for s in seeds]
    for mode, seed in runs:
        events, dec = run_script(script, mode, max_body=max_body, seed=seed)
        assert events == ref_events, f"{mode} (seed {seed}) differs from whole input"
        assert dec.stats == ref_dec.stats, f"{mode} (seed {seed}) counters differ"
        assert dec.buffered == ref_dec.buffered
    check_stats(ref_events, ref_dec)
    return ref_events, ref_dec


def check_stats(events, dec: FrameDecoder) -> None:
    """Counters agree with the events reported."""
    st_ = dec.stats
    assert st_.frames == sum(isinstance(e, FrameReceived) for e in events)
    assert st_.controls == sum(isinstance(e, ControlReceived) for e in events)
    assert st_.garbage_bytes == sum(e.length for e in events if isinstance(e, Garbage))
    for kind in FrameErrorKind:
        assert st_.errors[kind] == sum(isinstance(e, FrameError) and e.kind is kind for e in events)
    assert st_.error_total == sum(isinstance(e, FrameError) for e in events)
    assert all(e.length > 0 for e in events if isinstance(e, Garbage))


def F(body: bytes) -> FrameReceived:
    return FrameReceived(bytes(body))


def C(name: str) -> ControlReceived:
    return ControlReceived(Control[name])


def kinds(events) -> list:
    """Events with FrameError reduced to its kind (detail strings are free text)."""
    return [e.kind if isinstance(e, FrameError) else e for e in events]


def bad_lrc(body: bytes) -> bytes:
    f = encode_frame(body)
    return f[:-1] + bytes([f[-1] ^ 0x5A])


def bad_etx(body: bytes) -> bytes:
    f = encode_frame(body)
    return f[:-2] + b"\xee" + f[-1:]


def test_feed_all_modes_really_split() -> None:
    data = bytes(range(200))
    assert _chunks(data, "whole", 0) == [data]
    assert len(_chunks(data, "bytewise", 0)) == 200
    parts = _chunks(data, "random", 3)
    assert b"".join(parts) == data and 1 < len(parts) < 200


# -- lrc ---------------------------------------------------------------------------------------


def test_lrc_every_length_0_to_300() -> None:
    rng = random.Random(62056)
    for n in range(301):
        for _ in range(3):
            data = rng.randbytes(n)
            assert lrc(data) == xor_loop(data), n
            assert lrc(bytearray(data)) == xor_loop(data)
            assert lrc(memoryview(data)) == xor_loop(data)


@pytest.mark.parametrize("n", [1000, 4096 + 3, 65535 + 3, 131072, 131073, 200_000, 1 << 20])
def test_lrc_large_inputs(n: int) -> None:
    data = random.Random(n).randbytes(n)
    assert lrc(data) == functools.reduce(operator.xor, data, 0)


@given(st.binary(max_size=2000))
@settings(max_examples=examples(300))
def test_lrc_matches_xor_loop(data: bytes) -> None:
    assert lrc(data) == xor_loop(data)


def test_lrc_doc_vectors() -> None:
    assert lrc(b"") == 0
    assert lrc(bytes.fromhex("00 06 10 02 00 07 00 00 03")) == 0x10
    assert lrc(b"P0\x02(1234567)\x03") == ord("P")  # IEC 62056-21 BCC example


# -- encode_frame ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00",
        b"\x02",
        b"\x03",
        b"\x02\x03\x04\x05\x06\x15",
        bytes([0x02, 0x00, 0x00, 0x03, 0x03]),  # a whole empty frame as a body
        bytes(range(256)),
        b"\x15" * 300,
    ],
)
def test_encode_frame_layout(body: bytes) -> None:
    frame = encode_frame(body)
    n = len(body)
    assert len(frame) == n + 5
    assert frame[0] == 0x02
    assert frame[1:3] == n.to_bytes(2, "big")
    assert frame[3 : 3 + n] == body
    assert frame[3 + n] == 0x03
    assert frame[4 + n] == xor_loop(frame[1 : 4 + n])
    events, _ = decode_all_modes(frame)
    assert events == [F(body)]  # control bytes inside the body are not reported


def test_encode_frame_empty_body_and_doc_example() -> None:
    assert encode_frame(b"") == bytes.fromhex("02 00 00 03 03")
    assert encode_frame(bytes.fromhex("10 02 00 07 00 00")) == bytes.fromhex("02 00 06 10 02 00 07 00 00 03 10")


def test_encode_frame_big_endian_len() -> None:
    frame = encode_frame(b"x" * 0x0102)
    assert frame[1:3] == b"\x01\x02"


def test_encode_frame_accepts_bytes_like() -> None:
    assert encode_frame(bytearray(b"ab")) == encode_frame(b"ab")
    assert encode_frame(memoryview(b"ab")) == encode_frame(b"ab")


def test_encode_frame_default_max_body() -> None:
    assert DEFAULT_MAX_BODY == 4096
    assert len(encode_frame(b"a" * 4096)) == 4101
    with pytest.raises(evproto.LocalProtocolError):
        encode_frame(b"a" * 4097)


def test_encode_frame_custom_max_body() -> None:
    assert len(encode_frame(b"a" * 10, max_body=10)) == 15
    with pytest.raises(evproto.LocalProtocolError):
        encode_frame(b"a" * 11, max_body=10)
    body = b"b" * 65535
    frame = encode_frame(body, max_body=65535)
    assert frame[1:3] == b"\xff\xff"
    events, _ = decode_all_modes(frame, max_body=65535, seeds=(0,))
    assert events == [F(body)]
    with pytest.raises(evproto.LocalProtocolError):
        encode_frame(b"b" * 65536, max_body=100_000)  # LEN is 16 bits whatever max_body says


def test_local_protocol_error_is_an_evproto_error() -> None:
    with pytest.raises(evproto.EvprotoError):
        encode_frame(bytes(5000))


@given(st.binary(max_size=600))
@settings(max_examples=examples(200))
def test_encode_decode_roundtrip(body: bytes) -> None:
    frame = encode_frame(body)
    for mode in MODES:
        assert feed_all(frame, mode) == [F(body)]


# -- decoder basics ----------------------------------------------------------------------------


def test_decoder_rejects_bad_max_body() -> None:
    for bad in (0, -1, 65536):
        with pytest.raises(ValueError):
            FrameDecoder(max_body=bad)
    assert FrameDecoder(max_body=1).max_body == 1
    assert FrameDecoder(max_body=65535).max_body == 65535


DOC_VECTORS = [
    ("02 00 00 03 03", False, [F(b"")]),
    ("06 15 05 04", False, [C("ACK"), C("NACK"), C("ENQ"), C("EOT")]),
    ("ff fe 02 00 00 03 03", False, [Garbage(2), F(b"")]),
    ("ff 06 02 00 00 03 03 06", False, [Garbage(2), F(b""), C("ACK")]),
    (
        "02 00 06 04 00 00 01 00 00 03 01 02 00 06 04 00 00 01 00 00 03 00",
        False,
        [FrameErrorKind.BAD_LRC, Garbage(10), F(bytes.fromhex("040000010000"))],
    ),
    ("02 00 01 aa bb 00 06", False, [FrameErrorKind.BAD_ETX]),
    ("02 00 01 aa bb 00 06", True, [FrameErrorKind.BAD_ETX, Garbage(6)]),
    ("02 ff ff 06", True, [FrameErrorKind.BAD_LENGTH, Garbage(3)]),
    ("02 10 00 06", False, []),
    ("02 10 00 06", True, [FrameErrorKind.TRUNCATED, Garbage(3)]),
]


@pytest.mark.parametrize("hex_in, resync, expected", DOC_VECTORS)
def test_decoder_doc_vectors(hex_in: str, resync: bool, expected: list) -> None:
    script = (bytes.fromhex(hex_in), RESYNC) if resync else (bytes.fromhex(hex_in),)
    events, _ = decode_all_modes(*script)
    assert kinds(events) == expected


def test_frames_and_controls_interleaved() -> None:
    bodies = [b"", b"\x02\x03", b"\x04\x05\x06\x15", bytes(range(100)), b"z" * 4096]
    data = b"\x05"
    expected = [C("ENQ")]
    for b in bodies:
        data += encode_frame(b) + b"\x06"
        expected += [F(b), C("ACK")]
    data += b"\x04"
    expected.append(C("EOT"))
    events, dec = decode_all_modes(data)
    assert events == expected
    assert dec.stats.frames == len(bodies)
    assert dec.stats.controls == len(bodies) + 2
    assert dec.stats.garbage_bytes == 0 and dec.stats.error_total == 0
    assert dec.buffered == 0
    assert not dec.hunting


def test_garbage_run_reported_once_when_it_ends() -> None:
    # Control bytes after line noise are not trusted: they extend the run.
    data = b"\x00\x01\x03\xff" * 50 + b"\x06" + b"\x07" * 3 + encode_frame(b"ok") + b"\x06"
    events, _ = decode_all_modes(data)
    assert events == [Garbage(204), F(b"ok"), C("ACK")]


def test_trailing_garbage_waits_for_its_end() -> None:
    events, dec = decode_all_modes(b"\xaa\xbb\xcc\x15")
    assert events == []
    assert dec.buffered == 0  # counted, not buffered
    assert dec.hunting
    assert dec.resync() == [Garbage(4)]  # a quiet line ends the run and the hunt
    assert not dec.hunting
    assert dec.feed(b"\x15") == [C("NACK")]
    assert dec.stats.garbage_bytes == 4 and dec.stats.controls == 1


def test_partial_frame_waits_then_completes() -> None:
    frame = encode_frame(b"hello")
    for i in range(1, len(frame)):
        dec = FrameDecoder()
        assert dec.feed(frame[:i]) == []
        assert dec.buffered == i
        assert dec.feed(frame[i:]) == [F(b"hello")]
        assert dec.buffered == 0
    assert FrameDecoder().resync() == []  # nothing held: nothing to report


def test_lone_stx_at_end_is_held() -> None:
    for tail in (b"\x02", b"\x02\x00"):
        events, dec = decode_all_modes(encode_frame(b"a") + tail)
        assert events == [F(b"a")]
        assert dec.buffered == len(tail)


# -- errors and resynchronisation --------------------------------------------------------------


def test_bad_lrc_reported_and_next_frame_recovered() -> None:
    damaged = bad_lrc(b"\x10\x20\x30")
    events, dec = decode_all_modes(damaged + encode_frame(b"good"))
    assert kinds(events) == [FrameErrorKind.BAD_LRC, Garbage(len(damaged) - 1), F(b"good")]
    assert dec.stats.errors[FrameErrorKind.BAD_LRC] == 1
    assert dec.stats.error_total == 1
    assert dec.stats.frames == 1


def test_bad_etx_reported_and_next_frame_recovered() -> None:
    damaged = bad_etx(b"\x10\x20\x30")
    events, dec = decode_all_modes(damaged + encode_frame(b"good"))
    assert kinds(events) == [FrameErrorKind.BAD_ETX, Garbage(len(damaged) - 1), F(b"good")]
    assert dec.stats.errors[FrameErrorKind.BAD_ETX] == 1
    assert dec.stats.error_total == 1


@pytest.mark.parametrize("max_body, length", [(4096, 4097), (4096, 0xFFFF), (10, 11), (1, 2)])
def test_bad_length_reported_and_next_frame_recovered(max_body: int, length: int) -> None:
    stray = b"\x02" + length.to_bytes(2, "big")
    events, dec = decode_all_modes(stray + encode_frame(b"x"), max_body=max_body)
    assert kinds(events) == [FrameErrorKind.BAD_LENGTH, Garbage(2), F(b"x")]
    assert dec.stats.errors[FrameErrorKind.BAD_LENGTH] == 1
    assert dec.stats.error_total == 1


def test_length_exactly_max_body_is_accepted() -> None:
    events, _ = decode_all_modes(encode_frame(b"q" * 10, max_body=10), max_body=10)
    assert events == [F(b"q" * 10)]


def test_each_damage_after_a_clean_line_is_one_error() -> None:
    script = (bad_lrc(b"a"), RESYNC, bad_etx(b"b"), RESYNC, b"\x02\xff\xff", RESYNC)
    events, dec = decode_all_modes(*script)
    errors = [e for e in events if isinstance(e, FrameError)]
    assert [e.kind for e in errors] == [
        FrameErrorKind.BAD_LRC,
        FrameErrorKind.BAD_ETX,
        FrameErrorKind.BAD_LENGTH,
    ]
    assert all(isinstance(e.detail, str) and e.detail for e in errors)
    assert dec.stats.error_total == 3


def test_damage_while_hunting_is_garbage_not_new_errors() -> None:
    # One damage, one error (one NACK): further failed candidates before the line
    # is clean again are garbage.
    first, second = bad_lrc(b"one"), bad_etx(b"two")
    events, dec = decode_all_modes(first + second + b"\x02\xff\xff" + encode_frame(b"ok"))
    assert kinds(events) == [
        FrameErrorKind.BAD_LRC,
        Garbage(len(first) - 1 + len(second) + 3),
        F(b"ok"),
    ]
    assert dec.stats.error_total == 1
    # After the valid frame the line is clean: the next damage is a new error.
    events, dec = decode_all_modes(first + encode_frame(b"ok") + second + encode_frame(b"ok"))
    assert [e.kind for e in events if isinstance(e, FrameError)] == [
        FrameErrorKind.BAD_LRC,
        FrameErrorKind.BAD_ETX,
    ]


def test_control_bytes_inside_bad_lrc_frame_are_garbage() -> None:
    damaged = bad_lrc(b"\x04\x05\x06\x15\x01\x15")
    assert damaged[-1] not in SIGNIFICANT
    # Inside the failed frame and right after it (still hunting): garbage.
    data = damaged + b"\x06\x05" + encode_frame(b"next") + b"\x04\x06"
    events, dec = decode_all_modes(data)
    assert kinds(events) == [
        FrameErrorKind.BAD_LRC,
        Garbage(len(damaged) - 1 + 2),
        F(b"next"),
        C("EOT"),  # after a valid frame, control bytes count again
        C("ACK"),
    ]
    assert dec.stats.controls == 2
    # After a quiet line (resync) control bytes count again too.
    events, _ = decode_all_modes(damaged, RESYNC, b"\x06\x05")
    assert kinds(events) == [FrameErrorKind.BAD_LRC, Garbage(len(damaged) - 1), C("ACK"), C("ENQ")]


def test_control_bytes_inside_bad_etx_frame_are_garbage() -> None:
    damaged = bad_etx(b"\x05\x05\x04")
    events, _ = decode_all_modes(damaged + b"\x06", RESYNC, b"\x06")
    assert kinds(events) == [FrameErrorKind.BAD_ETX, Garbage(len(damaged) - 1 + 1), C("ACK")]
    events, _ = decode_all_modes(damaged + encode_frame(b"") + b"\x06")
    assert kinds(events) == [FrameErrorKind.BAD_ETX, Garbage(len(damaged) - 1), F(b""), C("ACK")]


def test_controls_after_bad_length() -> None:
    events, _ = decode_all_modes(b"\x02\xff\xff\x05\x04" + encode_frame(b"v") + b"\x05\x04")
    assert kinds(events) == [FrameErrorKind.BAD_LENGTH, Garbage(4), F(b"v"), C("ENQ"), C("EOT")]


def test_valid_frame_inside_failed_extent_is_found() -> None:
    inner = encode_frame(b"in")
    # Outer frame claims an extent covering inner + two control bytes, then a bad LRC.
    outer_body = b"\x01" + inner + b"\x06\x05"
    damaged = bad_lrc(outer_body)
    assert damaged[-1] not in SIGNIFICANT
    events, _ = decode_all_modes(damaged, RESYNC, b"\x04")
    assert kinds(events) == [
        FrameErrorKind.BAD_LRC,
        Garbage(3),  # LEN (2 bytes) and 0x01
        F(b"in"),
        C("ACK"),  # the valid frame ended the hunt
        C("ENQ"),
        Garbage(2),  # the outer frame's ETX and LRC
        C("EOT"),
    ]


@pytest.mark.parametrize("prefix", [b"\x02", b"\x02\x02", b"\x02\x00\x01", b"\x02\x00\x00\x03", b"\x02\x10"])
def test_stray_stx_before_frame(prefix: bytes) -> None:
    events, dec = decode_all_modes(prefix + encode_frame(b"v") + b"\x04", DRAIN)
    assert events[-2:] == [F(b"v"), C("EOT")]
    assert sum(isinstance(e, FrameError) for e in events) == 1
    assert dec.buffered == 0


def test_resync_truncated_stalled_frame_then_recovers() -> None:
    good = encode_frame(b"after the stall")
    stalled = b"\x02\x10\x00"  # LEN 4096: plausible, waits for 4101 bytes
    events, dec = decode_all_modes(stalled + good + b"\x06")
    assert events == []
    assert dec.buffered == len(stalled + good) + 1
    assert dec.wants_resync
    events, dec = decode_all_modes(stalled + good + b"\x06", RESYNC)
    assert kinds(events) == [
        FrameErrorKind.TRUNCATED,
        Garbage(2),
        F(b"after the stall"),
        C("ACK"),
    ]
    assert dec.stats.errors[FrameErrorKind.TRUNCATED] == 1
    assert dec.buffered == 0
    assert not dec.hunting and not dec.wants_resync


def test_one_resync_settles_nested_stalls() -> None:
    good = encode_frame(b"ok")
    script = (b"\x02\x10\x00\x02\x0f\x00" + good, RESYNC, RESYNC)
    events, dec = decode_all_modes(*script)
    # A quiet line means nothing more is coming for any frame begun in the buffer: one
    # resync() abandons them all. The second stall began while hunting, so its STX is
    # garbage, not a second error; the frame behind both arrives at once.
    assert kinds(events) == [FrameErrorKind.TRUNCATED, Garbage(2 + 1 + 2), F(b"ok")]
    assert dec.stats.errors[FrameErrorKind.TRUNCATED] == 1
    assert dec.buffered == 0


def test_resync_on_short_header() -> None:
    events, dec = decode_all_modes(b"\x02\x00", RESYNC, b"\x06")
    assert kinds(events) == [FrameErrorKind.TRUNCATED, Garbage(1), C("ACK")]
    assert dec.buffered == 0


def test_resync_then_stream_continues() -> None:
    events, _ = decode_all_modes(b"\x02\x00\x40abc", RESYNC, encode_frame(b"later"))
    assert kinds(events) == [FrameErrorKind.TRUNCATED, Garbage(5), F(b"later")]


def test_hunting_flag() -> None:
    dec = FrameDecoder()
    assert not dec.hunting and not dec.wants_resync
    dec.feed(b"\xff")
    assert dec.hunting and dec.wants_resync
    dec.feed(encode_frame(b""))
    assert not dec.hunting
    dec.feed(bad_lrc(b"x"))
    assert dec.hunting
    dec.resync()
    assert not dec.hunting and not dec.wants_resync


# -- bounded memory and linear time ------------------------------------------------------------


@pytest.mark.parametrize("max_body", [DEFAULT_MAX_BODY, 256, 65535])
def test_one_megabyte_of_random_garbage_is_bounded(max_body: int) -> None:
    data = random.Random(max_body).randbytes(1 << 20)
    dec = FrameDecoder(max_body=max_body)
    for i in range(0, len(data), 1 << 16):
        dec.feed(data[i : i + (1 << 16)])
        assert dec.buffered <= max_body + 5
    dec2 = FrameDecoder(max_body=max_body)
    dec2.feed(data)
    assert dec2.buffered <= max_body + 5
    assert dec2.stats == dec.stats


@pytest.mark.parametrize("max_body", [DEFAULT_MAX_BODY, 256])
def test_one_megabyte_of_stx_is_bounded(max_body: int) -> None:
    dec = FrameDecoder(max_body=max_body)
    chunk = b"\x02" * (1 << 16)
    events = []
    for _ in range(16):
        events += dec.feed(chunk)
        assert dec.buffered <= max_body + 5
    assert dec.stats.frames == 0 and dec.stats.controls == 0
    # LEN reads 0x0202 = 514 at every position; after the first failure the decoder
    # is hunting and the rest is garbage (one damage, one error).
    kind = FrameErrorKind.BAD_ETX if max_body >= 514 else FrameErrorKind.BAD_LENGTH
    assert kinds(events) == [kind]
    assert dec.stats.error_total == 1
    # A valid frame after all that is still found once the held tail is given up on.
    events = dec.feed(encode_frame(b"alive")) + _drain(dec)
    assert events[-1] == F(b"alive")
    assert sum(e.length for e in events if isinstance(e, Garbage)) == (1 << 20) - 1
    assert dec.buffered == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["random", "stx", "frames"])
def test_byte_by_byte_200k_is_not_quadratic(kind: str) -> None:
    rng = random.Random(200)
    if kind == "random":
        data = rng.randbytes(200_000)
    elif kind == "stx":
        data = b"\x02" * 200_000
    else:
        parts = []
        while sum(map(len, parts)) < 200_000:
            parts.append(encode_frame(rng.randbytes(rng.choice((0, 5, 100, 4096)))))
            parts.append(rng.choice((b"", b"\x06", b"\x02\x10\x00", rng.randbytes(7))))
        data = b"".join(parts)
    dec = FrameDecoder()
    n_events = 0
    for i in range(len(data)):
        n_events += len(dec.feed(data[i : i + 1]))
        assert dec.buffered <= DEFAULT_MAX_BODY + 5
    whole = FrameDecoder()
    assert len(whole.feed(data)) == n_events
    assert whole.stats == dec.stats


# -- the key property: valid frames survive any garbage ------------------------------------------

_significant = st.sampled_from(list(SIGNIFICANT))
_garbage_bytes = st.lists(st.one_of(st.integers(0, 255), _significant), max_size=48).map(bytes)
_damaged_frame = st.tuples(st.binary(max_size=64), st.integers(0, 10**6), st.integers(1, 255)).map(
    lambda t: _damage(*t)
)
_stx_header = st.tuples(st.integers(0, 0xFFFF)).map(lambda t: b"\x02" + t[0].to_bytes(2, "big"))


def _damage(body: bytes, where: int, xor: int) -> bytes:
    frame = bytearray(encode_frame(body))
    how = where % 3
    i = where // 3 % len(frame)
    if how == 0:  # flip one byte
        frame[i] ^= xor
        return bytes(frame)
    if how == 1:  # truncate
        return bytes(frame[:i])
    return bytes(frame[:i]) + bytes([xor]) + bytes(frame[i:])  # insert a byte


_item = st.one_of(
    st.binary(max_size=64).map(lambda b: ("frame", b)),
    _garbage_bytes.map(lambda g: ("garbage", g)),
    _damaged_frame.map(lambda g: ("garbage", g)),
    _stx_header.map(lambda g: ("garbage", g)),
)


def _valid_candidate_end(stream: bytes, p: int, max_body: int) -> int | None:
    """End of the valid frame starting at ``p``, if there is one."""
    if stream[p] != 0x02 or p + 3 > len(stream):
        return None
    length = int.from_bytes(stream[p + 1 : p + 3], "big")
    end = p + length + 5
    if length > max_body or end > len(stream):
        return None
    if stream[end - 2] != 0x03 or xor_loop(stream[p + 1 : end - 1]) != stream[end - 1]:
        return None
    return end


def _guaranteed_frames(items, max_body: int) -> tuple[bytes, list[bytes]]:
    """The stream, and the bodies of the valid frames garbage cannot swallow.

    A valid frame at ``s`` can only be lost if a *valid* frame that starts in
    garbage before ``s`` (or inside a frame already lost) runs past ``s``:
    the decoder resumes one byte after any failed candidate and a run of
    garbage never skips an STX, so it reaches ``s`` otherwise. Such accidental
    frames are possible (garbage is random) and are excluded here; every other
    frame must come out.
    """
    stream = b""
    spans = []
    for kind, data in items:
        piece = encode_frame(data) if kind == "frame" else data
        spans.append((kind, data, len(stream), len(stream) + len(piece)))
        stream += piece
    required: list[bytes] = []
    reach = 0  # furthest end of a valid frame starting at an unprotected position so far
    for kind, data, a, b in spans:
        if kind == "frame" and reach <= a:
            required.append(data)
            continue
        for p in range(a, b):
            end = _valid_candidate_end(stream, p, max_body)
            if end is not None and end > reach:
                reach = end
    return stream, required


def _is_subsequence(needle: list[bytes], haystack: list[bytes]) -> bool:
    it = iter(haystack)
    return all(any(x == y for y in it) for x in needle)


def _drain(decoder: FrameDecoder) -> list:
    """The line goes quiet for good: ``resync()`` until nothing is held or pending."""
    events: list = []
    while decoder.buffered:
        before = decoder.buffered
        events += decoder.resync()
        assert decoder.buffered < before
    events += decoder.resync()  # ends a trailing garbage run and the hunt
    assert not decoder.hunting and not decoder.wants_resync
    return events


@given(
    items=st.lists(_item, max_size=14),
    max_body=st.sampled_from([64, 100, DEFAULT_MAX_BODY]),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=examples(250), deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_valid_frames_survive_garbage(items, max_body: int, seed: int) -> None:
    stream, required = _guaranteed_frames(items, max_body)
    results = []
    for mode in MODES:
        dec = FrameDecoder(max_body=max_body)
        events = feed_all(stream, mode, decoder=dec, seed=seed)
        events += _drain(dec)
        assert dec.buffered == 0
        events += dec.feed(b"\x04")  # the line is clean again: a control byte counts
        assert events[-1] == C("EOT")
        results.append((events, dec.stats))
        check_stats(events, dec)
        # Every byte is accounted for exactly once.
        accounted = 0
        for e in events:
            if isinstance(e, FrameReceived):
                accounted += len(e.body) + 5
            elif isinstance(e, Garbage):
                accounted += e.length
            else:  # a control byte, or the STX of a rejected candidate
                accounted += 1
        assert accounted == len(stream) + 1
    assert results[0] == results[1] == results[2]
    recovered = [e.body for e in results[0][0] if isinstance(e, FrameReceived)]
    assert _is_subsequence(required, recovered), (required, recovered)


@given(st.lists(st.binary(max_size=64), max_size=10), st.integers(0, 2**32))
@settings(max_examples=examples(100), deadline=None)
def test_clean_stream_gives_exactly_its_frames(bodies: list[bytes], seed: int) -> None:
    stream = b"".join(encode_frame(b) for b in bodies)
    for mode in MODES:
        dec = FrameDecoder()
        assert feed_all(stream, mode, decoder=dec, seed=seed) == [F(b) for b in bodies]
        assert dec.stats.error_total == 0 and dec.stats.garbage_bytes == 0
        assert dec.buffered == 0


def test_subsequence_helper() -> None:
    assert _is_subsequence([b"a", b"c"], [b"a", b"b", b"c"])
    assert not _is_subsequence([b"c", b"a"], [b"a", b"b", b"c"])
    assert _is_subsequence([], [])
    assert not _is_subsequence([b"a", b"a"], [b"a"])


# -- fuzz (CI size; `make fuzz` runs the long version) ---------------------------------------------


def _load_fuzzer():
    path = ROOT / "benchmarks" / "fuzz_decoder.py"
    spec = importlib.util.spec_from_file_location("evproto_fuzz_decoder", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fuzz_decoder_and_decode_body() -> None:
    fuzz = _load_fuzzer()
    result = fuzz.run_fuzz(100_000, seed=20251128)
    assert result["inputs"] == 100_000
    assert result["unexpected"] == 0, result["examples"]
    # The mix really exercises every path.
    assert result["frames"] > 10_000
    assert result["decoded"] > 1_000
    assert result["decode_errors"] > 1_000
    assert result["controls"] > 0 and result["garbage_bytes"] > 0
    for kind in FrameErrorKind:
        assert result["errors"][kind.value] > 0, kind


# -- a stray byte costs at most the frame it hits --------------------------------------------


def _bodies_received(stream: bytes, chunks: list[int] | None = None) -> list[bytes]:
    dec = FrameDecoder()
    events = []
    if chunks:
        at = 0
        for size in chunks:
            events += dec.feed(stream[at : at + size])
            at += size
        events += dec.feed(stream[at:])
    else:
        events += dec.feed(stream)
    events += dec.resync()
    return [e.body for e in events if isinstance(e, FrameReceived)]


def _lost(sent: list[bytes], got: list[bytes]) -> int:
    """How many of ``sent`` are missing from ``got``, in order (extra bodies in ``got`` are
    not counted here): ``len(sent)`` minus their longest common subsequence."""
    row = [0] * (len(got) + 1)
    for body in sent:
        prev_diag = 0
        for j, candidate in enumerate(got, 1):
            prev_diag, row[j] = row[j], (prev_diag + 1 if body == candidate else max(row[j], row[j - 1]))
    return len(sent) - row[-1]


def test_one_stray_stx_before_back_to_back_frames_loses_none() -> None:
    # The linear LRC: 12 whole frames XOR to 0, so "STX + the first frame's STX and LEN"
    # read as a 512-byte body passed every check and swallowed all 12 frames.
    rng = random.Random(12)
    for _ in range(50):
        bodies = [bytes(rng.randrange(256) for _ in range(38)) for _ in range(12)]
        assert len(encode_frame(bodies[0])) == 43
        assert _bodies_received(b"\x02" + b"".join(encode_frame(b) for b in bodies)) == bodies


@pytest.mark.parametrize("stray", [0x02, 0x03, 0x00, 0x06, 0xFF])
def test_a_stray_byte_at_every_position_costs_at_most_the_frame_it_hits(stray: int) -> None:
    rng = random.Random(stray)
    bodies = [bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 5, 38, 38, 38, 120)))) for _ in range(10)]
    bodies[3] = b"\x02\x00\x05" + bodies[3]  # an STX and a plausible LEN inside a body
    stream = b"".join(encode_frame(b) for b in bodies)
    for at in range(len(stream) + 1):
        damaged = stream[:at] + bytes([stray]) + stream[at:]
        got = _bodies_received(damaged)
        assert _lost(bodies, got) <= 1, (at, got)


@given(
    bodies=st.lists(st.binary(max_size=80), min_size=2, max_size=14),
    stray=st.integers(0, 255),
    where=st.floats(0, 1),
    chunks=st.lists(st.integers(1, 64), max_size=20),
)
@settings(max_examples=examples(400), suppress_health_check=[HealthCheck.too_slow])
def test_property_a_stray_byte_anywhere_costs_at_most_one_frame(
    bodies: list[bytes], stray: int, where: float, chunks: list[int]
) -> None:
    stream = b"".join(encode_frame(b) for b in bodies)
    at = int(where * len(stream))
    damaged = stream[:at] + bytes([stray]) + stream[at:]
    assert _lost(bodies, _bodies_received(damaged, chunks)) <= 1


@given(bodies=st.lists(st.binary(max_size=700), min_size=1, max_size=6))
@settings(max_examples=examples(200))
def test_frames_that_carry_frames_in_their_bodies_arrive_whole(bodies: list[bytes]) -> None:
    # A body may itself hold encoded frames (a relay, a tunnel): the false-start rule
    # must not split the carrier.
    carriers = [b + encode_frame(b[:40]) for b in bodies]
    assert _bodies_received(b"".join(encode_frame(c) for c in carriers)) == carriers
