"""The frame envelope: encoding, the LRC, and an incremental, resynchronising decoder.

Wire layout (pinned, see docs/protocol.md)::

    STX 0x02 | LEN uint16 big-endian | BODY (LEN bytes) | ETX 0x03 | LRC

LRC is the XOR of every byte after STX up to and including ETX. Control bytes
ENQ, ACK, NACK and EOT travel as single bytes between frames.

This module does no I/O: bytes in, events out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "STX",
    "ETX",
    "DEFAULT_MAX_BODY",
    "Control",
    "lrc",
    "encode_frame",
    "FrameDecoder",
    "DecoderStats",
    "FrameReceived",
    "ControlReceived",
    "FrameError",
    "FrameErrorKind",
    "Garbage",
    "DecoderEvent",
]

STX = 0x02
ETX = 0x03
#: Default largest BODY accepted or produced; configurable per decoder up to 65535.
DEFAULT_MAX_BODY = 4096
_HEADER = 3  # STX + LEN
_OVERHEAD = 5  # STX + LEN + ETX + LRC


class Control(enum.IntEnum):
    """Single control bytes exchanged between frames."""

    EOT = 0x04
    ENQ = 0x05
    ACK = 0x06
    NACK = 0x15

    @property
    def byte(self) -> bytes:
        """The byte on the wire, as ``bytes`` of length 1."""
        return _CONTROL_BYTES[self]


_CONTROL_BYTES = {c: bytes([c]) for c in Control}

# XOR-fold shift sequences, indexed by (len - 1).bit_length(): fold the integer
# in halves until one byte is left. C-level big-int ops beat a Python byte loop
# from a few dozen bytes up (see benchmarks/bench_codec.py).
_FOLDS = [()] + [tuple(8 << k for k in range(b - 1, -1, -1)) for b in range(1, 64)]


def lrc(data: bytes | bytearray | memoryview) -> int:
    """XOR of all bytes of ``data`` (the IEC 62056-21 BCC rule); 0 for empty input."""
    n = len(data)
    if n < 16:
        x = 0
        for b in data:
            x ^= b
        return x
    x = int.from_bytes(data, "little")
    for shift in _FOLDS[(n - 1).bit_length()]:
        x ^= x >> shift
    return x & 0xFF


def encode_frame(body: bytes, *, max_body: int = DEFAULT_MAX_BODY) -> bytes:
    """Wrap ``body`` in the envelope: STX, LEN, BODY, ETX, LRC.

    Raises :class:`evproto.errors.LocalProtocolError` if ``body`` is longer than ``max_body``.
    """
    n = len(body)
    if n > max_body or n > 0xFFFF:
        from .errors import LocalProtocolError

        raise LocalProtocolError(f"frame body of {n} bytes exceeds the maximum of {max_body}")
    inner = bytes((n >> 8, n & 0xFF)) + bytes(body) + b"\x03"
    return b"\x02" + inner + bytes((lrc(inner),))


class FrameErrorKind(enum.Enum):
    """Why a candidate frame was rejected."""

    #: LEN larger than the decoder's maximum body size.
    BAD_LENGTH = "bad_length"
    #: The byte where ETX must be is something else.
    BAD_ETX = "bad_etx"
    #: ETX in place but the LRC does not match.
    BAD_LRC = "bad_lrc"
    #: A started frame stayed incomplete until the caller gave up on it (:meth:`FrameDecoder.resync`).
    TRUNCATED = "truncated"


@dataclass(frozen=True, slots=True)
class FrameReceived:
    """A complete frame with a valid envelope. ``body`` is the BODY bytes."""

    body: bytes


@dataclass(frozen=True, slots=True)
class ControlReceived:
    """A control byte (ENQ, ACK, NACK, EOT) between frames."""

    control: Control


@dataclass(frozen=True, slots=True)
class FrameError:
    """A candidate frame that failed its envelope checks; the decoder has resynchronised."""

    kind: FrameErrorKind
    detail: str


@dataclass(frozen=True, slots=True)
class Garbage:
    """``length`` bytes that were neither part of a valid frame nor a control byte.

    Reported once the run of garbage ends, so the same input gives the same
    events however it is split into chunks.
    """

    length: int


DecoderEvent = FrameReceived | ControlReceived | FrameError | Garbage

_CONTROL_EVENTS = {int(c): ControlReceived(c) for c in Control}


@dataclass(slots=True)
class DecoderStats:
    """Counters kept by a :class:`FrameDecoder` (monotonic, never reset)."""

    frames: int = 0
    controls: int = 0
    garbage_bytes: int = 0
    errors: dict[FrameErrorKind, int] = field(default_factory=lambda: dict.fromkeys(FrameErrorKind, 0))

    @property
    def error_total(self) -> int:
        """All envelope errors of every kind."""
        return sum(self.errors.values())


class FrameDecoder:
    """Incremental frame decoder: ``feed(bytes) -> list of events`` in stream order.

    Events are :class:`FrameReceived`, :class:`ControlReceived`, :class:`FrameError`
    and :class:`Garbage`. Any chunking of the same byte stream gives the same
    events. On a bad LEN, ETX or LRC the decoder reports a :class:`FrameError` and
    resumes scanning at the byte after the failed STX, so a valid frame hidden
    behind garbage is still found.

    Control bytes are trusted only on a clean line. After anything that is not a
    valid frame or a control byte (garbage, a failed frame) the decoder is
    *hunting*: control bytes count as garbage, since a damaged frame's body bytes
    (0x04, 0x05, 0x06, 0x15 are common in binary fields) would otherwise be taken for
    EOT, ENQ, ACK or NACK, and a false ACK loses a frame silently. Hunting ends at
    the next valid frame, or when the caller reports a quiet line with
    :meth:`resync`. While hunting, further failed candidates are garbage, not new
    errors: one damage, one error (one NACK).

    Memory is bounded: between calls the decoder keeps at most one incomplete
    frame (``max_body + 5`` bytes).
    """

    __slots__ = ("max_body", "stats", "_buf", "_hunting", "_garbage", "_soft")

    def __init__(self, *, max_body: int = DEFAULT_MAX_BODY) -> None:
        if not 0 < max_body <= 0xFFFF:
            raise ValueError(f"max_body must be in 1..65535, not {max_body}")
        self.max_body = max_body
        self.stats = DecoderStats()
        self._buf = bytearray()
        self._hunting = False
        self._garbage = 0  # length of the garbage run in progress
        #: True when ``_buf[0]`` is the last frame's LRC byte and an STX: it may also be the
        #: start of the next frame (see ``_soft_verdict``).
        self._soft = False

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf) - self._soft

    @property
    def hunting(self) -> bool:
        """True while control bytes are distrusted after damage (see the class docstring)."""
        return self._hunting

    @property
    def wants_resync(self) -> bool:
        """True when a quiet line should be reported with :meth:`resync`."""
        return self._hunting or self.buffered > 0 or bool(self._garbage)

    def feed(self, data: bytes | bytearray | memoryview) -> list[DecoderEvent]:
        """Consume ``data`` and return the events it completes, in stream order."""
        buf = self._buf
        buf += data
        events: list[DecoderEvent] = []
        pos = self._scan(buf, 0, events)
        del buf[:pos]
        return events

    def resync(self) -> list[DecoderEvent]:
        """Report that the line has gone quiet (an inter-byte timeout).

        An incomplete frame still held is abandoned: reported as
        :attr:`FrameErrorKind.TRUNCATED` (unless it began while already hunting)
        and the bytes after its STX are rescanned as suspect. Then hunting ends and
        any garbage run is reported: the next byte starts on a clean line. This is
        what keeps a stray STX with a plausible LEN from stalling the line.
        """
        buf = self._buf
        events: list[DecoderEvent] = []
        while True:
            if self._soft:
                # The quiet line settles it: that byte was the last frame's LRC. What
                # followed it is read as usual.
                self._soft = False
                del buf[:1]
                del buf[: self._scan(buf, 0, events)]
                continue
            if not buf:
                break
            # Nothing more is coming: the frame begun at the head is unfinished.
            if self._hunting:
                self._garbage += 1
            else:
                self._fail(events, FrameErrorKind.TRUNCATED, f"{len(buf)} bytes of an unfinished frame")
            self._hunting = True
            del buf[: self._scan(buf, 1, events)]
        self._hunting = False
        self._flush_garbage(events)
        return events

    # -- internals -------------------------------------------------------------------------

    def _soft_verdict(self, buf: bytearray, view: memoryview, pos: int, n: int) -> bool | None:
        """Whether the STX at ``pos``, which is also the last frame's LRC, starts a frame.

        True when it starts a valid frame that ends before anything read from the byte
        after it could (the next frame swallowed by a damaged one that a stray byte
        made one byte too long); False when the byte after it begins a control byte or
        a valid frame that ends first (the usual case: it was just an LRC); None when
        the bytes so far cannot tell. The answer depends on the bytes only, never on
        how they were split into chunks, and waits for nothing the stream's next
        event would not wait for anyway.
        """
        r = pos + 1
        soft_end = _valid_frame_end(buf, view, pos, n, self.max_body)
        if soft_end == 0:
            return False
        regular_end = 0
        if r < n and buf[r] in _CONTROL_EVENTS:
            regular_end = r + 1
        elif r < n and buf[r] == STX:
            regular_end = _valid_frame_end(buf, view, r, n, self.max_body)
            if regular_end < 0:  # the regular reading cannot be settled yet
                return None if soft_end < 0 or -regular_end <= soft_end else True
        if regular_end > 0 and (soft_end < 0 or regular_end <= soft_end):
            return False
        return None if soft_end < 0 else True

    def _fail(self, events: list[DecoderEvent], kind: FrameErrorKind, detail: str) -> None:
        self._flush_garbage(events)
        self.stats.errors[kind] += 1
        events.append(FrameError(kind, detail))

    def _flush_garbage(self, events: list[DecoderEvent]) -> None:
        if self._garbage:
            self.stats.garbage_bytes += self._garbage
            events.append(Garbage(self._garbage))
            self._garbage = 0

    def _reject(self, events: list[DecoderEvent], kind: FrameErrorKind, detail: str) -> None:
        if self._hunting:
            self._garbage += 1  # part of damage already reported
        else:
            self._fail(events, kind, detail)
            self._hunting = True

    def _scan(self, buf: bytearray, pos: int, events: list[DecoderEvent]) -> int:
        """Decode from ``pos``; return the index of the first byte not consumed."""
        n = len(buf)
        max_body = self.max_body
        stats = self.stats
        view = memoryview(buf)
        try:
            while pos < n:
                if self._soft:
                    verdict = self._soft_verdict(buf, view, pos, n)
                    if verdict is None:
                        break
                    self._soft = False
                    if not verdict:
                        pos += 1
                        continue
                b = buf[pos]
                if b == STX:
                    if n - pos < _HEADER:
                        break
                    length = (buf[pos + 1] << 8) | buf[pos + 2]
                    if length > max_body:
                        self._reject(events, FrameErrorKind.BAD_LENGTH, f"LEN {length} > max {max_body}")
                        pos += 1
                        continue
                    end = pos + length + _OVERHEAD
                    if end > n:
                        break
                    if buf[end - 2] != ETX:
                        self._reject(
                            events,
                            FrameErrorKind.BAD_ETX,
                            f"byte 0x{buf[end - 2]:02x} where ETX belongs (LEN {length})",
                        )
                        pos += 1
                        continue
                    check = lrc(view[pos + 1 : end - 1])
                    if check != buf[end - 1]:
                        self._reject(
                            events,
                            FrameErrorKind.BAD_LRC,
                            f"LRC 0x{buf[end - 1]:02x}, computed 0x{check:02x} (LEN {length})",
                        )
                        pos += 1
                        continue
                    if length >= _OVERHEAD and (
                        _hides_frame(buf, view, pos, end) or self._hunting and _ends_with_frame(buf, view, pos, end)
                    ):
                        # A stray STX (or one inside a damaged frame) read as a start: the
                        # candidate ends exactly where a valid frame that starts inside it
                        # ends. Take this byte for garbage and read what follows it.
                        self._hunting = True
                        self._garbage += 1
                        pos += 1
                        continue
                    if self._garbage:
                        self._flush_garbage(events)
                    events.append(FrameReceived(bytes(view[pos + _HEADER : end - 2])))
                    stats.frames += 1
                    self._hunting = False
                    if buf[end - 1] == STX:
                        # This LRC is also an STX: if a stray byte made a damaged frame
                        # look one byte longer than it is, it is the next frame's start.
                        self._soft = True
                        pos = end - 1
                    else:
                        pos = end
                elif b in _CONTROL_EVENTS and not self._hunting:
                    if self._garbage:
                        self._flush_garbage(events)
                    events.append(_CONTROL_EVENTS[b])
                    stats.controls += 1
                    pos += 1
                else:
                    # Garbage: the line is not clean any more. Only an STX can end the
                    # run now; control bytes before it are suspect.
                    self._hunting = True
                    nxt = buf.find(STX, pos + 1)
                    if nxt < 0:
                        nxt = n
                    self._garbage += nxt - pos
                    pos = nxt
        finally:
            view.release()
        return pos


def _hides_frame(buf: bytearray, view: memoryview, pos: int, end: int) -> bool:
    """True when the candidate ``buf[pos:end]`` (whose envelope checks out) is a stray STX
    followed by whole valid frames: from ``pos + 1`` to ``end`` they tile it exactly.

    The LRC is linear: a frame XORs to STX as a whole, so a false start followed by
    an even number of whole frames passes its LEN-ETX-LRC checks whenever the LEN
    it reads lands on a frame boundary (one stray 0x02 before 12 frames of 43
    bytes gives a "512-byte body" that swallows all 12). A genuine frame is read so
    only if its LEN field and body themselves form a chain of valid frames ending
    exactly with it, which no encoder produces.
    """
    q = pos + 1
    while q < end:
        if buf[q] != STX:
            return False
        q = _valid_frame_end(buf, view, q, end, 0xFFFF)  # > 0 only for a valid frame inside the candidate
        if q <= 0:
            return False
    return True


def _ends_with_frame(buf: bytearray, view: memoryview, pos: int, end: int) -> bool:
    """True when a valid frame that starts inside the candidate ``buf[pos:end]`` ends
    exactly where it ends.

    Asked only while hunting (right after damage): an STX among the damaged bytes
    whose LEN happens to land on the end of the next whole frame passes the
    envelope checks more often than chance, since whole frames XOR to STX. The
    candidate is then taken for garbage and the frame inside it read on its own.
    """
    limit = end - 4  # the inner frame needs STX, LEN (2), ETX and LRC before ``end``
    q = buf.find(STX, pos + 1, limit)
    while q >= 0:
        if _valid_frame_end(buf, view, q, end, 0xFFFF) == end:
            return True
        q = buf.find(STX, q + 1, limit)
    return False


def _valid_frame_end(buf: bytearray, view: memoryview, pos: int, n: int, max_body: int) -> int:
    """For an STX at ``pos``: the end of the valid frame it starts (> 0), 0 when it starts
    none, or minus the end it would need (< 0) while its bytes have not all arrived."""
    if n - pos < _HEADER:
        return -(pos + _OVERHEAD)
    length = (buf[pos + 1] << 8) | buf[pos + 2]
    if length > max_body:
        return 0
    end = pos + length + _OVERHEAD
    if end > n:
        return -end
    if buf[end - 2] != ETX or lrc(view[pos + 1 : end - 1]) != buf[end - 1]:
        return 0
    return end
