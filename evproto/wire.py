"""Field types for application messages (:func:`evproto.register_message`).

Each function returns a dataclass field that says how the value travels; the
default, when given, makes the field optional::

    @evproto.register_message(0x80)
    @dataclass(frozen=True, slots=True, kw_only=True)
    class Tariff(evproto.Message):
        cp_id: str = wire.text()
        price_eur_kwh: float = wire.f64()
        valid_s: int = wire.u32(3600)

Integers are unsigned and big-endian; text is UTF-8 of at most 255 bytes
(:func:`evproto.clip_text`); bytes at most 65535; ``opt_*`` floats carry None
as NaN. docs/protocol.md lists the wire form of each.
"""

from __future__ import annotations

import enum
from dataclasses import MISSING
from typing import Any

import construct as _construct

from . import messages as _m

cs: Any = _construct  # untyped library (see evproto.messages)

__all__ = ["u8", "u16", "u32", "u64", "f32", "f64", "opt_f32", "opt_f64", "text", "blob", "enum8", "enum16"]


def u8(default: Any = MISSING) -> Any:
    """An integer 0..255."""
    return _m.wire_field(_m.U8, default)


def u16(default: Any = MISSING) -> Any:
    """An integer 0..65535."""
    return _m.wire_field(_m.U16, default)


def u32(default: Any = MISSING) -> Any:
    """An integer 0..2**32-1."""
    return _m.wire_field(_m.U32, default)


def u64(default: Any = MISSING) -> Any:
    """An integer 0..2**64-1."""
    return _m.wire_field(_m.U64, default)


def f32(default: Any = MISSING) -> Any:
    """A float, single precision."""
    return _m.wire_field(_m.F32, default)


def f64(default: Any = MISSING) -> Any:
    """A float, double precision."""
    return _m.wire_field(_m.F64, default)


def opt_f32(default: Any = None) -> Any:
    """A float or None (NaN on the wire), single precision."""
    return _m.wire_field(_m.OPT_F32, default)


def opt_f64(default: Any = None) -> Any:
    """A float or None (NaN on the wire), double precision."""
    return _m.wire_field(_m.OPT_F64, default)


def text(default: Any = MISSING) -> Any:
    """UTF-8 text of at most 255 bytes (u8 length)."""
    return _m.wire_field(_m.TEXT, default)


def blob(default: Any = MISSING) -> Any:
    """Bytes, at most 65535 (u16 length)."""
    return _m.wire_field(_m.BLOB, default)


def enum8(enum_cls: type[enum.IntEnum], default: Any = MISSING) -> Any:
    """A member of ``enum_cls`` as one byte; an unknown value is a malformed body."""
    return _m.wire_field(_m.enum_wire(enum_cls, cs.Int8ub), default)


def enum16(enum_cls: type[enum.IntEnum], default: Any = MISSING) -> Any:
    """A member of ``enum_cls`` as two bytes."""
    return _m.wire_field(_m.enum_wire(enum_cls, cs.Int16ub), default)
