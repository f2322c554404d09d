"""The message catalogue: roundtrips, agreement with the construct schema, and errors.

Strategies are derived from each message class's dataclass fields and the wire
type in ``field.metadata["wire"]``, so every class in ``MESSAGE_CLASSES`` is
covered, including ones added later.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import struct
import typing
from dataclasses import dataclass
from typing import Any

import construct as cs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

import evproto
from evproto import (
    Envelope,
    Flags,
    MessageDecodeError,
    MessageEncodeError,
    decode_body,
    encode_body,
)
from evproto.messages import BODY_SCHEMA, HEADER_SIZE, MESSAGE_CLASSES, Message

CLASSES = list(MESSAGE_CLASSES.values())
CLASS_IDS = [c.__name__ for c in CLASSES]
NACK = b"\x15"

# -- field introspection -----------------------------------------------------------------------


@dataclass(frozen=True)
class FieldInfo:
    """What a message field is on the wire, derived from its ``wire`` metadata."""

    name: str
    kind: str  # "enum", "flag", "text", "bytes", "int", "float"
    wire: Any
    py_type: Any = None  # the enum class for enum/flag fields
    bits: int = 0  # integer width for int/enum/flag fields
    fmt: str = ""  # "f" or "d" for floats
    optional: bool = False  # float that may be None (NaN on the wire)


def _info(cls: type, f: dataclasses.Field) -> FieldInfo:
    wire = f.metadata["wire"]
    sub = wire.subcon
    hint = typing.get_type_hints(cls)[f.name]
    if isinstance(sub, cs.Enum):
        enum_cls = hint if isinstance(hint, type) and issubclass(hint, enum.Enum) else None
        assert enum_cls is not None, f"{cls.__name__}.{f.name}: enum wire without an enum annotation"
        return FieldInfo(f.name, "enum", wire, enum_cls, bits=8 * sub.subcon.sizeof())
    if isinstance(sub, cs.StringEncoded):
        return FieldInfo(f.name, "text", wire)
    if isinstance(sub, cs.Prefixed):
        return FieldInfo(f.name, "bytes", wire)
    assert isinstance(sub, cs.FormatField), f"{cls.__name__}.{f.name}: unexpected wire {sub!r}"
    code = sub.fmtstr[-1]
    if code in "fd":
        args = typing.get_args(hint)
        optional = type(None) in args
        assert optional == (wire.to_py is not None), f"{cls.__name__}.{f.name}: NaN<->None mismatch"
        return FieldInfo(f.name, "float", wire, fmt=code, optional=optional)
    if isinstance(hint, type) and issubclass(hint, enum.IntFlag):
        return FieldInfo(f.name, "flag", wire, hint, bits=8 * sub.sizeof())
    return FieldInfo(f.name, "int", wire, bits=8 * sub.sizeof())


INFOS: dict[type, list[FieldInfo]] = {cls: [_info(cls, f) for f in dataclasses.fields(cls)] for cls in CLASSES}


def infos_of(kind: str) -> list[tuple[type, FieldInfo]]:
    return [(cls, i) for cls in CLASSES for i in INFOS[cls] if i.kind == kind]


def _ids(pairs) -> list[str]:
    return [f"{cls.__name__}.{i.name}" for cls, i in pairs]


def is_fixed(cls: type) -> bool:
    return all(i.wire.fmt is not None for i in INFOS[cls])


# -- strategies --------------------------------------------------------------------------------

_TEXT_EDGES = [
    "",
    "a" * 255,
    "é" * 127 + "a",  # 255 bytes
    "€" * 85,  # 255 bytes
    "🔌" * 63 + "abc",  # 255 bytes
    "\x00\x02\x03\x04\x05\x06\x15",
    "Alicante ñandú 日本",
]


def _utf8_255(s: str) -> str:
    return s.encode("utf-8")[:255].decode("utf-8", "ignore")


TEXT = st.one_of(st.text(max_size=300).map(_utf8_255), st.sampled_from(_TEXT_EDGES))
BLOB = st.one_of(st.binary(max_size=300), st.sampled_from([b"", b"\x00" * 65535]))


def field_strategy(info: FieldInfo) -> st.SearchStrategy:
    if info.kind == "enum":
        return st.sampled_from(list(info.py_type))
    if info.kind == "flag":
        return st.integers(0, 2**info.bits - 1).map(info.py_type)
    if info.kind == "text":
        return TEXT
    if info.kind == "bytes":
        return BLOB
    if info.kind == "int":
        return st.integers(0, 2**info.bits - 1)
    if info.kind == "float":
        floats = st.floats(width=32 if info.fmt == "f" else 64, allow_nan=False)
        return st.one_of(st.none(), floats) if info.optional else floats
    raise AssertionError(info)


def messages(cls: type) -> st.SearchStrategy:
    return st.builds(cls, **{i.name: field_strategy(i) for i in INFOS[cls]})


def envelopes(cls: type) -> st.SearchStrategy:
    return st.builds(
        Envelope,
        message=messages(cls),
        seq=st.integers(0, 0xFFFF),
        ref=st.integers(0, 0xFFFF),
        flags=st.integers(0, 7).map(Flags),
    )


def encode(env: Envelope) -> bytes:
    return encode_body(env.message, seq=env.seq, ref=env.ref, flags=env.flags)


def sample_value(info: FieldInfo) -> Any:
    """A valid, non-trivial value (non-empty text and bytes, the last enum member)."""
    return {
        "enum": lambda: list(info.py_type)[-1],
        "flag": lambda: info.py_type(3),
        "text": lambda: "héllo €",
        "bytes": lambda: b"\x01\x02\x03",
        "int": lambda: 2**info.bits - 2,
        "float": lambda: 2.5,
    }[info.kind]()


def sample(cls: type, **overrides: Any) -> Message:
    values = {i.name: sample_value(i) for i in INFOS[cls]}
    values.update(overrides)
    return cls(**values)


def to_wire(info: FieldInfo, v: Any) -> Any:
    """The value construct sees for python value ``v``."""
    if info.kind in ("enum", "flag"):
        return int(v)
    if info.kind == "float":
        return math.nan if v is None else float(v)
    return v


def from_construct(info: FieldInfo, v: Any) -> Any:
    if info.kind == "enum":
        return int(getattr(v, "intvalue", v))
    return v


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return type(a) is type(b) and a == b


_CONSTRUCT_TYPES = (cs.Container, cs.ListContainer, cs.EnumIntegerString, cs.EnumInteger)


def assert_plain(env: Envelope, cls: type) -> None:
    """Only plain Python values and enum members come out of decode_body."""
    assert type(env) is Envelope
    assert type(env.message) is cls
    assert type(env.seq) is int and type(env.ref) is int
    assert type(env.flags) is Flags
    for info in INFOS[cls]:
        v = getattr(env.message, info.name)
        assert not isinstance(v, _CONSTRUCT_TYPES), (info.name, type(v))
        expected = {
            "enum": info.py_type,
            "flag": info.py_type,
            "text": str,
            "bytes": bytes,
            "int": int,
            "float": float,
        }[info.kind]
        if info.kind == "float" and info.optional and v is None:
            continue
        assert type(v) is expected, (info.name, type(v), expected)


def header(cls: type, flags: int = 0, seq: int = 0, ref: int = 0) -> bytes:
    return struct.pack(">BBHH", int(cls.TYPE), flags, seq, ref)


def schema_build(cls: type, message_fields: dict[str, Any], *, flags: int = 0, seq: int = 0, ref: int = 0) -> bytes:
    return BODY_SCHEMA.build(dict(type=cls.TYPE.name, flags=flags, seq=seq, ref=ref, fields=message_fields))


def raw_schema(cls: type) -> cs.Struct:
    """Like the class's layout, but text fields as raw length-prefixed bytes."""
    return cs.Struct(
        "type" / cs.Int8ub,
        "flags" / cs.Int8ub,
        "seq" / cs.Int16ub,
        "ref" / cs.Int16ub,
        *(i.name / (cs.Prefixed(cs.Int8ub, cs.GreedyBytes) if i.kind == "text" else i.wire.subcon) for i in INFOS[cls]),
    )


def wire_fields(msg: Message) -> dict[str, Any]:
    return {i.name: to_wire(i, getattr(msg, i.name)) for i in INFOS[type(msg)]}


# -- sanity of the catalogue as the tests see it ----------------------------------------------


def test_catalogue_is_introspectable() -> None:
    assert len(CLASSES) >= 17
    for t, cls in MESSAGE_CLASSES.items():
        assert cls.TYPE == t
        assert issubclass(cls, Message)
        assert dataclasses.is_dataclass(cls)
    # Both decoding paths exist: fixed-size (struct) and variable (compiled construct).
    assert sum(map(is_fixed, CLASSES)) >= 3
    assert sum(not is_fixed(c) for c in CLASSES) >= 3
    assert {i.kind for c in CLASSES for i in INFOS[c]} == {"enum", "flag", "text", "bytes", "int", "float"}


# -- roundtrip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_roundtrip(cls: type, data: st.DataObject) -> None:
    env = data.draw(envelopes(cls))
    body = encode(env)
    assert type(body) is bytes
    assert body[0] == int(cls.TYPE)
    decoded = decode_body(body)
    assert decoded == env
    assert_plain(decoded, cls)
    if is_fixed(cls):
        fmt = ">" + "".join(i.wire.fmt for i in INFOS[cls])
        assert len(body) == HEADER_SIZE + struct.calcsize(fmt)
    # Re-encoding the decoded envelope gives the same bytes.
    assert encode(decoded) == body


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_roundtrip_defaults_and_samples(cls: type) -> None:
    for msg in (sample(cls),):
        for seq, ref, flags in ((0, 0, Flags.NONE), (0xFFFF, 0xFFFF, Flags(7)), (1, 2, Flags.REQUEST)):
            env = Envelope(message=msg, seq=seq, ref=ref, flags=flags)
            assert decode_body(encode(env)) == env


def test_envelope_defaults() -> None:
    env = decode_body(encode_body(evproto.Ping()))
    assert env == Envelope(message=evproto.Ping())
    assert env.seq == 0 and env.ref == 0 and env.flags is Flags.NONE


_NONOPT_FLOATS = [(c, i) for c, i in infos_of("float") if not i.optional]
_OPT_FLOATS = [(c, i) for c, i in infos_of("float") if i.optional]


@pytest.mark.parametrize("cls, info", _NONOPT_FLOATS, ids=_ids(_NONOPT_FLOATS))
def test_nan_in_plain_float_roundtrips_as_nan(cls: type, info: FieldInfo) -> None:
    env = decode_body(encode_body(sample(cls, **{info.name: math.nan})))
    v = getattr(env.message, info.name)
    assert type(v) is float and math.isnan(v)


@pytest.mark.parametrize("cls, info", _OPT_FLOATS, ids=_ids(_OPT_FLOATS))
def test_optional_float_nan_and_none_decode_as_none(cls: type, info: FieldInfo) -> None:
    for value in (None, math.nan, -math.nan):
        env = decode_body(encode_body(sample(cls, **{info.name: value})))
        assert getattr(env.message, info.name) is None
    for value in (0.0, -0.0, math.inf, -math.inf, 1.5):
        env = decode_body(encode_body(sample(cls, **{info.name: value})))
        assert same(getattr(env.message, info.name), value)


_ALL_FLOATS = infos_of("float")


@pytest.mark.parametrize("cls, info", _ALL_FLOATS, ids=_ids(_ALL_FLOATS))
def test_any_nan_bit_pattern(cls: type, info: FieldInfo) -> None:
    """Any NaN on the wire: None for optional fields, NaN for plain ones (both decode paths)."""
    sentinel = 12345.6875  # exact in float32 and float64
    body = encode_body(sample(cls, **{info.name: sentinel}))
    packed = struct.pack(">" + info.fmt, sentinel)
    assert body.count(packed) == 1
    nans = (
        [b"\x7f\xc0\x00\x00", b"\xff\xc0\x00\x01", b"\x7f\x80\x00\x01", b"\xff\xff\xff\xff"]
        if info.fmt == "f"
        else [b"\x7f\xf8" + bytes(6), b"\xff\xf8" + bytes(5) + b"\x01", b"\x7f\xf0" + bytes(5) + b"\x01"]
    )
    for nan in nans:
        env = decode_body(body.replace(packed, nan))
        v = getattr(env.message, info.name)
        if info.optional:
            assert v is None
        else:
            assert type(v) is float and math.isnan(v)


def test_f32_values_are_rounded_to_float32() -> None:
    # Not an error: a float32 field carries the nearest float32.
    env = decode_body(encode_body(evproto.SupplyTelemetry(session_id=1, energy_wh=0.1, power_w=0.1, amount_eur=0.1)))
    assert env.message.energy_wh == 0.1  # f64
    assert env.message.power_w == struct.unpack(">f", struct.pack(">f", 0.1))[0]


# -- the fast paths agree with BODY_SCHEMA -----------------------------------------------------


def _check_against_schema(cls: type, env: Envelope, body: bytes) -> None:
    parsed = BODY_SCHEMA.parse(body)
    assert int(parsed.type.intvalue) == int(cls.TYPE)
    flags = parsed.flags
    flag_bits = (
        (0x01 if flags.get("dup") else 0)
        | (0x02 if flags.get("request") else 0)
        | (0x04 if flags.get("response") else 0)
    )
    # BODY_SCHEMA names three flag bits; other bits are reserved and ignored by it.
    assert flag_bits == int(env.flags) & 0x07
    assert parsed.seq == env.seq and parsed.ref == env.ref
    for info in INFOS[cls]:
        expected = to_wire(info, getattr(env.message, info.name))
        actual = from_construct(info, parsed.fields[info.name])
        assert same(actual, expected) or (info.kind == "int" and actual == expected), (
            info.name,
            actual,
            expected,
        )


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_encode_body_agrees_with_body_schema(cls: type, data: st.DataObject) -> None:
    env = data.draw(envelopes(cls))
    body = encode(env)
    # encode_body's bytes parse with the construct schema to the same values ...
    _check_against_schema(cls, env, body)
    # ... and the construct schema builds the same bytes, which decode_body reads back.
    built = schema_build(cls, wire_fields(env.message), flags=int(env.flags), seq=env.seq, ref=env.ref)
    assert built == body
    decoded = decode_body(built)
    assert decoded == env
    assert_plain(decoded, cls)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_decode_body_agrees_with_body_schema_on_any_bytes(cls: type, data: st.DataObject) -> None:
    """Differential: on arbitrary (mostly damaged) bodies, decode_body accepts exactly
    what BODY_SCHEMA accepts (minus unknown enum values) and reads the same values."""
    base = encode(data.draw(envelopes(cls)))
    mutated = data.draw(
        st.one_of(
            st.just(base),
            st.binary(max_size=80).map(lambda tail: base[:HEADER_SIZE] + tail),
            st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)).map(
                lambda t: base[: t[0]] + bytes([t[1]]) + base[t[0] + 1 :]
            ),
            st.integers(0, len(base)).map(lambda n: base[:n]),
            st.binary(max_size=4).map(lambda extra: base + extra),
        )
    )
    try:
        parsed = BODY_SCHEMA.parse(mutated)
    except (cs.ConstructError, UnicodeError):
        parsed = None
    try:
        env = decode_body(mutated)
    except MessageDecodeError as exc:
        assert exc.reply == NACK
        env = None
    if env is not None:
        assert parsed is not None, "decode_body accepted a body BODY_SCHEMA rejects"
        actual_cls = type(env.message)  # a mutation may have changed the type byte
        assert_plain(env, actual_cls)
        _check_against_schema(actual_cls, env, mutated)
    elif parsed is not None:
        # The only thing construct lets through that decode_body must refuse: an
        # enum value that is not a member (construct's Enum maps unknown values to ints).
        parsed_cls = MESSAGE_CLASSES[int(parsed.type.intvalue)]
        assert any(
            i.kind == "enum" and not isinstance(parsed.fields[i.name], cs.EnumIntegerString) for i in INFOS[parsed_cls]
        ), "BODY_SCHEMA accepted a body decode_body rejects"


# -- malformed bodies --------------------------------------------------------------------------


def _raises_decode_error(body: bytes) -> MessageDecodeError:
    with pytest.raises(MessageDecodeError) as info:
        decode_body(body)
    exc = info.value
    assert isinstance(exc, evproto.RemoteProtocolError)
    assert exc.reply == NACK
    return exc


def test_unknown_type_byte() -> None:
    known = {int(t) for t in MESSAGE_CLASSES}
    unknown = [t for t in range(256) if t not in known]
    assert unknown
    for t in unknown:
        for rest in (bytes(5), bytes(5) + b"\x01" * 40):
            exc = _raises_decode_error(bytes([t]) + rest)
            assert exc.msg_type == t


@pytest.mark.parametrize("length", range(HEADER_SIZE))
def test_shorter_than_header(length: int) -> None:
    _raises_decode_error(b"")
    for cls in CLASSES:
        _raises_decode_error(header(cls)[:length])


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_header_only(cls: type) -> None:
    if INFOS[cls]:
        _raises_decode_error(header(cls, 2, 7, 0))
    else:
        assert decode_body(header(cls, 2, 7, 0)) == Envelope(message=cls(), seq=7, flags=Flags.REQUEST)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_truncated_at_every_length(cls: type) -> None:
    body = encode_body(sample(cls), seq=0x0203, ref=0x0405, flags=Flags.RESPONSE)
    decode_body(body)  # the whole body is fine
    for n in range(len(body)):
        _raises_decode_error(body[:n])


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@settings(max_examples=examples(25), deadline=None)
@given(data=st.data())
def test_truncated_or_extended_random_bodies(cls: type, data: st.DataObject) -> None:
    body = encode(data.draw(envelopes(cls)))
    n = data.draw(st.integers(0, len(body) - 1))
    _raises_decode_error(body[:n])
    _raises_decode_error(body + data.draw(st.binary(min_size=1, max_size=3)))


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_one_extra_trailing_byte(cls: type) -> None:
    for body in (encode_body(sample(cls)), encode_body(cls(**{i.name: sample_value(i) for i in INFOS[cls]}), seq=9)):
        for extra in (b"\x00", b"\xff", b"\x03"):
            _raises_decode_error(body + extra)


_ENUMS = infos_of("enum")


@pytest.mark.parametrize("cls, info", _ENUMS, ids=_ids(_ENUMS))
def test_invalid_enum_value_on_the_wire(cls: type, info: FieldInfo) -> None:
    valid = {int(m) for m in info.py_type}
    invalid = [v for v in range(min(2**info.bits, 1024)) if v not in valid] + [2**info.bits - 1]
    invalid = sorted({v for v in invalid if v not in valid})
    assert invalid
    for v in invalid[:3] + invalid[-3:]:
        fields = wire_fields(sample(cls))
        fields[info.name] = v
        body = schema_build(cls, fields)
        _raises_decode_error(body)


_TEXTS = infos_of("text")
_BAD_UTF8 = [b"\xff", b"\xc3", b"a\x80b", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok\xe2\x82"]


@pytest.mark.parametrize("cls, info", _TEXTS, ids=_ids(_TEXTS))
def test_invalid_utf8_in_text_field(cls: type, info: FieldInfo) -> None:
    raw = raw_schema(cls)
    good = wire_fields(sample(cls))
    good = {k: (v.encode() if isinstance(v, str) else v) for k, v in good.items()}
    base = dict(type=int(cls.TYPE), flags=0, seq=1, ref=0)
    assert decode_body(raw.build(dict(base, **good))).message == sample(cls)  # the raw layout is right
    for bad in _BAD_UTF8:
        body = raw.build(dict(base, **dict(good, **{info.name: bad})))
        _raises_decode_error(body)


def test_invalid_enum_in_fixed_and_variable_messages() -> None:
    # One explicit case per decoding path, as raw bytes.
    hs = evproto.HealthStatus
    _raises_decode_error(header(hs) + b"\x07\x00\x00")  # HealthState 7
    _raises_decode_error(header(hs) + b"\x00\x12\x34")  # FaultCode 0x1234
    rj = evproto.Reject
    _raises_decode_error(header(rj) + b"\x63\x00")  # ReasonCode 99, empty detail


_KNOWN_TYPE_THEN_BYTES = st.tuples(
    st.sampled_from(sorted(int(t) for t in MESSAGE_CLASSES)), st.binary(max_size=80)
).map(lambda t: bytes([t[0]]) + t[1])


@settings(max_examples=examples(400), deadline=None)
@given(st.one_of(st.binary(max_size=120), _KNOWN_TYPE_THEN_BYTES))
def test_decode_body_raises_only_message_decode_error(body: bytes) -> None:
    try:
        env = decode_body(body)
    except MessageDecodeError as exc:
        assert exc.reply == NACK
    else:
        assert_plain(env, type(env.message))


# -- encoding errors ---------------------------------------------------------------------------


def _raises_encode_error(msg: Any, **header_kw: Any) -> None:
    with pytest.raises(MessageEncodeError) as info:
        encode_body(msg, **header_kw)
    assert isinstance(info.value, evproto.LocalProtocolError)


_TOO_LONG = ["a" * 256, "é" * 128, "€" * 86, "🔌" * 64, "a" * 1000]
_LONGEST = ["a" * 255, "é" * 127 + "a", "€" * 85, "🔌" * 63 + "abc"]


@pytest.mark.parametrize("cls, info", _TEXTS, ids=_ids(_TEXTS))
def test_text_over_255_utf8_bytes(cls: type, info: FieldInfo) -> None:
    for text in _TOO_LONG:
        assert len(text.encode()) > 255
        _raises_encode_error(sample(cls, **{info.name: text}))
    for text in _LONGEST:
        assert len(text.encode()) == 255
        msg = sample(cls, **{info.name: text})
        assert decode_body(encode_body(msg)).message == msg


def test_non_ascii_text_roundtrips() -> None:
    msg = evproto.Hello(role=evproto.Role.MONITOR, node_id="CP-ñ€🔌", location="Alacant / Alicante ☀")
    assert decode_body(encode_body(msg)).message == msg


@pytest.mark.parametrize("cls, info", _TEXTS, ids=_ids(_TEXTS))
def test_wrong_type_for_text_field(cls: type, info: FieldInfo) -> None:
    for bad in (5, b"bytes", None, 1.5, ["x"]):
        _raises_encode_error(sample(cls, **{info.name: bad}))
    _raises_encode_error(sample(cls, **{info.name: "\ud800"}))  # lone surrogate: not encodable


_BLOBS = infos_of("bytes")


@pytest.mark.parametrize("cls, info", _BLOBS, ids=_ids(_BLOBS))
def test_bytes_field_limits_and_types(cls: type, info: FieldInfo) -> None:
    msg = sample(cls, **{info.name: b"\xff" * 65535})
    assert decode_body(encode_body(msg)).message == msg
    _raises_encode_error(sample(cls, **{info.name: b"\xff" * 65536}))
    for bad in ("text", 5, None):
        _raises_encode_error(sample(cls, **{info.name: bad}))


_INTS = infos_of("int")


@pytest.mark.parametrize("cls, info", _INTS, ids=_ids(_INTS))
def test_integer_out_of_range_or_wrong_type(cls: type, info: FieldInfo) -> None:
    top = 2**info.bits - 1
    for ok in (0, top):
        msg = sample(cls, **{info.name: ok})
        assert decode_body(encode_body(msg)).message == msg
    for bad in (top + 1, -1, 2**64 + 1, "1", None, 1.5):
        _raises_encode_error(sample(cls, **{info.name: bad}))


def test_session_id_2_pow_32() -> None:
    _raises_encode_error(evproto.Command(action=evproto.CommandAction.STOP, session_id=2**32))
    _raises_encode_error(evproto.CpStatus(state=evproto.CpState.ACTIVATED, session_id=2**32))
    _raises_encode_error(evproto.AuthorizeSupply(session_id=2**32, driver_id="D"))


@pytest.mark.parametrize("cls, info", _ENUMS, ids=_ids(_ENUMS))
def test_invalid_enum_value_when_encoding(cls: type, info: FieldInfo) -> None:
    valid = {int(m) for m in info.py_type}
    bad_ints = [v for v in (-1, 0, 7, 99, 255, 256, 2**info.bits) if v not in valid]
    for bad in bad_ints + ["OK", None, 1.5]:
        _raises_encode_error(sample(cls, **{info.name: bad}))
    # A plain int that names a member is fine, and decodes as the member.
    member = list(info.py_type)[0]
    env = decode_body(encode_body(sample(cls, **{info.name: int(member)})))
    assert getattr(env.message, info.name) is member


_FLAGS = infos_of("flag")


@pytest.mark.parametrize("cls, info", _FLAGS, ids=_ids(_FLAGS))
def test_flag_field_range(cls: type, info: FieldInfo) -> None:
    top = 2**info.bits - 1
    env = decode_body(encode_body(sample(cls, **{info.name: info.py_type(top)})))
    assert getattr(env.message, info.name) == top
    for bad in (top + 1, -1, None):
        _raises_encode_error(sample(cls, **{info.name: bad}))


@pytest.mark.parametrize("cls, info", _ALL_FLOATS, ids=_ids(_ALL_FLOATS))
def test_float_field_errors(cls: type, info: FieldInfo) -> None:
    bad_values: list[Any] = ["abc", [1.0], {}]
    if not info.optional:
        bad_values.append(None)
    if info.fmt == "f":
        bad_values += [1e39, -1e39]  # overflows float32
    for bad in bad_values:
        _raises_encode_error(sample(cls, **{info.name: bad}))


def test_numeric_string_is_not_a_float() -> None:
    # A str (or bytes) is the wrong Python type for a float field, as an int is for a
    # str field: it must be refused, not coerced with float() and put on the wire.
    accepted = []
    for cls, info in _ALL_FLOATS:
        for bad in ("1.5", b"1", "nan"):
            try:
                encode_body(sample(cls, **{info.name: bad}))
            except MessageEncodeError:
                pass
            else:
                accepted.append(f"{cls.__name__}.{info.name}={bad!r}")
    assert not accepted, f"encoded without error: {', '.join(accepted)}"


@pytest.mark.parametrize(
    "kw",
    [
        dict(seq=0x10000),
        dict(seq=-1),
        dict(ref=0x10000),
        dict(ref=-1),
        dict(flags=0x100),
        dict(flags=-1),
        dict(seq=1.5),
    ],
    ids=repr,
)
def test_header_out_of_range(kw: dict) -> None:
    _raises_encode_error(evproto.Ping(), **kw)
    _raises_encode_error(sample(evproto.Hello), **kw)


@pytest.mark.parametrize("kw", [dict(seq="1"), dict(seq=None), dict(ref="2"), dict(flags="x")], ids=repr)
def test_header_wrong_type(kw: dict) -> None:
    _raises_encode_error(evproto.Ping(), **kw)


def test_header_extremes_are_fine() -> None:
    for seq in (0, 1, 0xFFFF):
        env = decode_body(encode_body(evproto.Ping(), seq=seq, ref=0xFFFF - seq, flags=7))
        assert (env.seq, env.ref, env.flags) == (seq, 0xFFFF - seq, Flags(7))


def test_not_a_catalogue_message() -> None:
    @dataclass(frozen=True)
    class Stranger(Message):
        pass

    _raises_encode_error(Stranger())
    _raises_encode_error(Envelope(message=evproto.Ping()))  # type: ignore[arg-type]


# -- dataclass behaviour -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_messages_are_frozen(cls: type) -> None:
    msg = sample(cls)
    for info in INFOS[cls]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(msg, info.name, sample_value(info))
    with pytest.raises((dataclasses.FrozenInstanceError, AttributeError, TypeError)):
        msg.some_new_attribute = 1  # type: ignore[attr-defined]
    env = Envelope(message=msg)
    for name in ("message", "seq", "ref", "flags"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(env, name, 1)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_messages_are_keyword_only(cls: type) -> None:
    assert all(f.kw_only for f in dataclasses.fields(cls))
    values = [sample_value(i) for i in INFOS[cls]] or [1]
    with pytest.raises(TypeError):
        cls(*values)
    with pytest.raises(TypeError):
        Envelope(sample(cls))  # type: ignore[misc]


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_messages_compare_with_eq(cls: type) -> None:
    a, b = sample(cls), sample(cls)
    assert a == b and hash(a) == hash(b)
    assert Envelope(message=a, seq=1) == Envelope(message=b, seq=1)
    assert Envelope(message=a, seq=1) != Envelope(message=b, seq=2)
    for info in INFOS[cls]:
        other = {
            "enum": lambda: list(info.py_type)[0],
            "flag": lambda: info.py_type(0),
            "text": lambda: "other",
            "bytes": lambda: b"",
            "int": lambda: 1,
            "float": lambda: -7.0,
        }[info.kind]()
        assert sample(cls, **{info.name: other}) != a, info.name
    for other_cls in CLASSES:
        if other_cls is not cls:
            assert sample(other_cls) != a


def test_fieldless_messages_differ_by_class() -> None:
    fieldless = [c for c in CLASSES if not INFOS[c]]
    assert len(fieldless) >= 2
    for x in fieldless:
        for y in fieldless:
            assert (x() == y()) == (x is y)


# -- no construct objects in the public API ----------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_decoded_values_are_plain_python(cls: type) -> None:
    for body in (
        encode_body(sample(cls), seq=3, ref=4, flags=Flags.RESPONSE),
        schema_build(cls, wire_fields(sample(cls)), flags=1, seq=5, ref=6),
    ):
        env = decode_body(body)
        assert_plain(env, cls)
        for v in (env.seq, env.ref, env.flags, *(getattr(env.message, i.name) for i in INFOS[cls])):
            assert type(v).__module__.split(".")[0] != "construct", type(v)


def test_public_api_has_no_construct_objects() -> None:
    for name in evproto.__all__:
        obj = getattr(evproto, name)
        assert not isinstance(obj, cs.Construct), name
