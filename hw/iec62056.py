"""IEC 62056-21 (IEC 1107) mode C data readout: the protocol pieces, with no I/O.

A mode C readout, as the client (us) sees it::

    client -> meter   /?!CR LF               sign-on at 300 baud 7E1 (or /?<address>!CR LF)
    meter  -> client  /ISk5MT174-0001 CR LF  identification: manufacturer ISK ('k' lower case =
                                             20 ms reaction time), baud character '5' = 9600
    client -> meter   ACK 0 5 0 CR LF        option select: protocol '0', baud '5', mode '0'
                                             (data readout)
                      ... both sides switch to the new baud rate ...
    meter  -> client  STX data lines CR LF ... ! CR LF ETX BCC

The meter answers every message after its reaction time tr: 200 ms .. 1.5 s, from 20 ms when
the third manufacturer letter is lower case (:func:`reaction_window_s`); the client waits ta
(:data:`ANSWER_WAIT_S`, 1.5 s) for an answer to start. The client sends the acknowledgement at
the old rate and switches as soon as it has left the UART (before the meter's shortest
reaction time is over). The data block's BCC is the XOR of every byte after STX up to and
including ETX. A readout may come in partial blocks (``STX ... EOT BCC``), each acknowledged
(ACK) or asked again (NAK); the last ends with ETX. Programming mode (option ``1``) answers
with a password request ``SOH P0 STX (...) ETX BCC``; we only read, and break off with
``SOH B0 ETX BCC`` (:func:`break_message`).

This module is sans-I/O: the async driver owns the serial port and the clock and uses
:func:`sign_on`, :class:`IdentificationReader`, :func:`select_baud_char` and :func:`ack_option`,
:class:`ReadoutReader` (or :class:`DataBlockDecoder` for one block), then :func:`parse_data` and
:func:`reading_from_data`, in that order.
:func:`readout_bytes`, :func:`readout_blocks`, :func:`command_message` and
:func:`parse_option_select` build and read the meter's side for the simulated meter and tests.
"""

from __future__ import annotations

import dataclasses
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Generic, TypeVar

from evproto.errors import LocalProtocolError
from evproto.frame import lrc
from evproto.messages import MeterStatus

from .base import MeterProtocolError, MeterReading

__all__ = [
    "SOH",
    "STX",
    "ETX",
    "EOT",
    "ACK",
    "NAK",
    "CRLF",
    "BAUD_CHARS",
    "INITIAL_BAUD",
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_BLOCK",
    "DEFAULT_MAX_READOUT",
    "DEFAULT_MAX_BLOCKS",
    "REACTION_TIME_MIN_S",
    "REACTION_TIME_MIN_FAST_S",
    "REACTION_TIME_MAX_S",
    "ANSWER_WAIT_S",
    "MAX_BLOCK_RETRIES",
    "reaction_window_s",
    "bcc",
    "break_message",
    "command_message",
    "parse_option_select",
    "OptionSelect",
    "sign_on",
    "ack_option",
    "select_baud_char",
    "Identification",
    "parse_identification",
    "IdentificationReader",
    "DataBlock",
    "DataBlockDecoder",
    "PasswordRequest",
    "ReadoutReader",
    "DataValue",
    "canonical_address",
    "parse_data_line",
    "parse_data",
    "reading_from_data",
    "readout_bytes",
    "readout_blocks",
]

SOH = 0x01
STX = 0x02
ETX = 0x03
EOT = 0x04
ACK = 0x06
NAK = 0x15
CRLF = b"\r\n"

#: Mode C baud rate characters of the identification and the option select message.
BAUD_CHARS: dict[str, int] = {
    "0": 300,
    "1": 600,
    "2": 1200,
    "3": 2400,
    "4": 4800,
    "5": 9600,
    "6": 19200,
}
#: Every mode C exchange starts at 300 baud, 7 data bits, even parity, 1 stop bit.
INITIAL_BAUD = 300
#: Longest identification line accepted, CR LF included (the standard's is 25 bytes).
DEFAULT_MAX_LINE = 128
#: Longest data block accepted, STX to BCC included.
DEFAULT_MAX_BLOCK = 8192
#: Longest readout accepted over all its partial blocks (their data, joined).
DEFAULT_MAX_READOUT = 65536
#: Most blocks accepted in one readout (each may take a reaction time of 1.5 s).
DEFAULT_MAX_BLOCKS = 256

# Reaction time tr of the tariff device: between the end of the HHU's message and the start of
# the device's answer (the identification, the data after the option select, each next block).
#: Shortest reaction time allowed of a device (200 ms).
REACTION_TIME_MIN_S = 0.2
#: Shortest reaction time of a device whose manufacturer id has a lower-case third letter (20 ms).
REACTION_TIME_MIN_FAST_S = 0.02
#: Longest reaction time allowed of a device (1500 ms).
REACTION_TIME_MAX_S = 1.5
#: ta: how long the HHU waits for the start of an answer before it gives up (at least tr's maximum).
ANSWER_WAIT_S = REACTION_TIME_MAX_S
#: How many times one partial block is asked again (NAK) before the readout fails.
MAX_BLOCK_RETRIES = 3

_STX_B = b"\x02"
_ETX_B = b"\x03"
_EOT_B = b"\x04"
_SOH_B = b"\x01"


def reaction_window_s(manufacturer: str) -> tuple[float, float]:
    """(shortest, longest) reaction time allowed of a device identifying as ``manufacturer``
    (the three letters as written in the identification): 20 ms .. 1.5 s when the third letter
    is lower case, else 200 ms .. 1.5 s."""
    if len(manufacturer) != 3 or not manufacturer.isalpha():
        raise ValueError(f"manufacturer id {manufacturer!r}: three letters")
    fast = manufacturer[2].islower()
    return (REACTION_TIME_MIN_FAST_S if fast else REACTION_TIME_MIN_S, REACTION_TIME_MAX_S)


# -- small pieces: BCC, sign-on, option select --------------------------------------------------

_ADDRESS = re.compile(r"[0-9A-Za-z ]{0,32}")


def bcc(message: bytes | bytearray | memoryview) -> int:
    """The block check character of a whole message that starts with SOH or STX and ends
    with ETX (or EOT, a partial block): XOR of every byte after the first one."""
    if len(message) < 2 or message[0] not in (SOH, STX) or message[-1] not in (ETX, EOT):
        raise ValueError("a BCC message starts with SOH or STX and ends with ETX or EOT")
    return lrc(memoryview(message)[1:])


def sign_on(address: str = "") -> bytes:
    """The request message ``/?`` [address] ``!`` CR LF.

    ``address`` (the meter's device address, empty = any meter) is up to 32 characters
    among digits, letters and space; anything else raises ValueError.
    """
    if not _ADDRESS.fullmatch(address):
        raise ValueError(f"device address {address!r}: up to 32 digits, letters or spaces")
    return b"/?" + address.encode("ascii") + b"!\r\n"


def ack_option(baud_char: str, mode: str = "0", protocol: str = "0") -> bytes:
    """The acknowledgement/option select message: ACK, protocol, baud, mode characters, CR LF.

    ``baud_char`` is a mode C baud character (:data:`BAUD_CHARS`), ``mode`` ``"0"`` data readout,
    ``"1"`` programming, ``"2"`` binary (HDLC) or a manufacturer's ``"3"``..``"9"``; ``protocol``
    ``"0"`` normal, ``"1"`` secondary, ``"2"`` HDLC. Anything else raises ValueError.
    ``ack_option("5") == b"\\x06050\\r\\n"``.
    """
    if baud_char not in BAUD_CHARS:
        raise ValueError(f"baud character {baud_char!r} is not a mode C one (0..6)")
    if len(mode) != 1 or mode not in "0123456789":
        raise ValueError(f"mode character {mode!r} must be one digit")
    if len(protocol) != 1 or protocol not in "012":
        raise ValueError(f"protocol character {protocol!r} must be 0, 1 or 2")
    return bytes((ACK,)) + (protocol + baud_char + mode).encode("ascii") + CRLF


def command_message(command: str, data: str | None = None) -> bytes:
    """A programming command message: SOH, command and type (``"P0"``, ``"B0"``...), then
    STX ``data`` (with its parentheses, e.g. ``"(12345678)"``) when given, ETX, BCC.
    ``command_message("P0", "(1234567)") == b"\\x01P0\\x02(1234567)\\x03P"``."""
    if len(command) != 2 or command[0] not in "PWREB" or not command[1].isdigit():
        raise ValueError(f"command {command!r}: one of P W R E B and a digit")
    body = command.encode("ascii")
    if data is not None:
        if not data.isascii() or not data.isprintable():
            raise ValueError(f"command data {data!r}: printable ASCII")
        body += _STX_B + data.encode("ascii")
    body += _ETX_B
    return _SOH_B + body + bytes((lrc(body),))


def break_message() -> bytes:
    """The break message ``SOH B0 ETX BCC``: the HHU ends the session (leaves programming mode)."""
    return command_message("B0")


@dataclass(frozen=True, slots=True, kw_only=True)
class OptionSelect:
    """The HHU's acknowledgement/option select message ``ACK V Z Y CR LF``."""

    protocol: str
    baud_char: str
    mode: str

    @property
    def programming(self) -> bool:
        """True when the HHU asks for programming mode (Y = 1)."""
        return self.mode == "1"


def parse_option_select(line: bytes | bytearray | memoryview) -> OptionSelect:
    """Parse ``ACK V Z Y CR LF`` (CR LF optional); MeterProtocolError on anything else."""
    raw = bytes(line)
    body = raw[:-2] if raw.endswith(CRLF) else raw
    if len(body) != 4 or body[0] != ACK:
        raise MeterProtocolError(f"not an option select message: {raw[:16]!r}")
    text = body[1:].decode("ascii", "replace")
    protocol, baud_char, mode = text[0], text[1], text[2]
    if protocol not in "012" or baud_char not in BAUD_CHARS or not mode.isdigit():
        raise MeterProtocolError(f"option select {raw[:16]!r}: protocol 0..2, baud 0..6, mode a digit")
    return OptionSelect(protocol=protocol, baud_char=baud_char, mode=mode)


def select_baud_char(offered: str, max_baud: int | None = None) -> str:
    """The baud character to answer with: the meter's ``offered`` one, lowered to the fastest
    mode C rate not above ``max_baud`` (e.g. a slow RS-485 adapter). ValueError if ``offered``
    is not a mode C character or ``max_baud`` is below 300."""
    if offered not in BAUD_CHARS:
        raise ValueError(f"baud character {offered!r} is not a mode C one (0..6)")
    if max_baud is None:
        return offered
    fitting = [c for c, baud in BAUD_CHARS.items() if baud <= max_baud and c <= offered]
    if not fitting:
        raise ValueError(f"max_baud {max_baud} is below the slowest mode C rate (300)")
    return fitting[-1]


# -- identification ----------------------------------------------------------------------------

# /XXX Z [\W ...] ident: printable characters except '/' and '!' (the standard's rule), and
# except '\', the escape character, which may only open the \W sequences right after Z.
_ID_CHARS = rb"\x22-\x2e\x30-\x5b\x5d-\x7e"  # printable, no space, '!', '/' or '\'
_IDENT = re.compile(
    rb"/([A-Z]{2}[A-Za-z])"  # manufacturer
    rb"([" + _ID_CHARS + rb"])"  # baud rate character
    rb"((?:\\[" + _ID_CHARS + rb"])*)"  # \W escapes
    rb"([ " + _ID_CHARS + rb"]*)"  # identification
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Identification:
    """The meter's identification message ``/XXXZ<ident>``.

    ``manufacturer`` is upper case (``"ISK"`` for ``/ISk5...``); ``fast_reaction`` is True
    when the meter wrote its third letter in lower case (20 ms reaction time instead of 200 ms).
    ``baud`` is None when ``baud_char`` is not a mode C character (a mode A or B meter).
    ``enhanced`` holds the W characters of ``\\W`` escapes (``"2"``: the meter also speaks HDLC).
    """

    manufacturer: str
    baud_char: str
    baud: int | None
    identification: str
    fast_reaction: bool
    enhanced: tuple[str, ...] = ()

    @property
    def reaction_window_s(self) -> tuple[float, float]:
        """(shortest, longest) reaction time the standard allows this device (seconds)."""
        return (REACTION_TIME_MIN_FAST_S if self.fast_reaction else REACTION_TIME_MIN_S, REACTION_TIME_MAX_S)

    @property
    def mode_c(self) -> bool:
        """True when the meter offers a mode C baud rate (so :func:`ack_option` applies)."""
        return self.baud is not None


def parse_identification(line: bytes | bytearray | memoryview) -> Identification:
    """Parse ``/XXXZ<ident>`` with or without its CR LF; MeterProtocolError on anything else."""
    raw = bytes(line)
    body = raw[:-2] if raw.endswith(CRLF) else raw
    m = _IDENT.fullmatch(body)
    if m is None:
        raise MeterProtocolError(f"not an identification message: {raw[:40]!r}")
    maker, baud_char, escapes, ident = (g.decode("ascii") for g in m.groups())
    return Identification(
        manufacturer=maker.upper(),
        baud_char=baud_char,
        baud=BAUD_CHARS.get(baud_char),
        identification=ident,
        fast_reaction=maker[2].islower(),
        enhanced=tuple(escapes[1::2]),
    )


_Result = TypeVar("_Result")


class _SingleUseDecoder(ABC, Generic[_Result]):
    """What the identification reader and the data block decoder share: bytes go in through
    :meth:`feed` until one result or one error, after which the decoder is finished.

    A subclass's ``_scan`` looks at everything buffered so far and returns the result, None
    for "not yet", or raises :class:`MeterProtocolError`; it drops noise with ``_skip`` and
    keeps what followed the result in :attr:`remainder`.
    """

    __slots__ = ("_buf", "_finished", "remainder", "skipped")

    def __init__(self) -> None:
        #: Bytes discarded before the result (noise, echoes, abandoned starts).
        self.skipped = 0
        #: Bytes after the result in the chunk that completed it.
        self.remainder = b""
        self._buf = bytearray()
        self._finished = False

    @property
    def finished(self) -> bool:
        """True once the decoder has returned its result or raised."""
        return self._finished

    def feed(self, data: bytes | bytearray | memoryview) -> _Result | None:
        """Consume ``data``; return the result once it is complete, else None."""
        if self._finished:
            raise LocalProtocolError(f"{type(self).__name__} already finished; make a new one")
        buf = self._buf
        buf += data
        try:
            return self._scan(buf)
        except MeterProtocolError:
            self._finish()
            raise

    @abstractmethod
    def _scan(self, buf: bytearray) -> _Result | None: ...

    def _skip(self, n: int) -> None:
        del self._buf[:n]
        self.skipped += n

    def _finish(self) -> None:
        self._buf.clear()
        self._finished = True


def _shortest_line(partial_len: int, ends_with_cr: bool) -> int:
    """Length of the shortest complete line (CR LF included) that can grow from a partial one."""
    return partial_len + (1 if ends_with_cr else 2)


class IdentificationReader(_SingleUseDecoder[Identification]):
    """Incremental reader of the identification line: ``feed(bytes) -> Identification | None``.

    Bytes before a ``/`` are noise and skipped (counted in :attr:`skipped`), and so is an echo
    of our own sign-on (a line starting ``/?``), which half-duplex optical heads return. A ``/``
    seen before the line's CR LF restarts the line: identification text cannot contain ``/``.
    A line that cannot end within ``max_line`` bytes (CR LF included) raises
    :class:`MeterProtocolError`, as does a complete line that is not an identification. Any
    chunking of the same bytes gives the same result.

    The reader is single-use: once it has returned an identification (or raised), feeding it
    again raises :class:`~evproto.errors.LocalProtocolError`. Bytes that arrived after the line
    in the same chunk are kept in :attr:`remainder` (a mode A or B meter sends its data block
    right away).
    """

    __slots__ = ("echoes", "max_line")

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 7:
            raise ValueError(f"max_line must be at least 7, not {max_line}")
        super().__init__()
        self.max_line = max_line
        #: Sign-on echoes seen and skipped (their bytes count in :attr:`skipped`).
        self.echoes = 0

    def _scan(self, buf: bytearray) -> Identification | None:
        max_line = self.max_line
        while buf:
            if buf[0] != 0x2F:  # '/'
                start = buf.find(b"/")
                self._skip(len(buf) if start < 0 else start)
                continue
            end = buf.find(CRLF)
            restart = buf.find(b"/", 1, len(buf) if end < 0 else end)
            if restart >= 0:
                # The candidate ends at another '/': noise, unless it had already grown too long.
                self._check_partial(restart, buf[restart - 1] == 0x0D)
                self._skip(restart)
                continue
            if end < 0:
                self._check_partial(len(buf), buf[-1] == 0x0D)
                return None
            size = end + 2
            if size > max_line:
                raise MeterProtocolError(f"identification line longer than {max_line} bytes")
            if buf[1] == 0x3F:  # '/?': our sign-on echoed back
                self.echoes += 1
                self._skip(size)
                continue
            ident = parse_identification(buf[:size])
            self.remainder = bytes(buf[size:])
            self._finish()
            return ident
        return None

    def _check_partial(self, length: int, ends_with_cr: bool) -> None:
        if _shortest_line(length, ends_with_cr) > self.max_line:
            raise MeterProtocolError(f"identification line longer than {self.max_line} bytes")


# -- data block ----------------------------------------------------------------------------------

_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e\r\n]")


@dataclass(frozen=True, slots=True, kw_only=True)
class DataBlock:
    """A checked data block: its data lines without CR LF and without the end line ``!``."""

    lines: tuple[str, ...]
    bcc: int


def _block_from_data(data: bytes, check: int) -> DataBlock:
    """Split the bytes between STX and ETX into lines, requiring the end line ``!``."""
    bad = _NOT_PRINTABLE.search(data)
    if bad is not None:
        raise MeterProtocolError(
            f"byte 0x{data[bad.start()]:02x} at offset {bad.start()} of the data block is not printable"
        )
    text = data.decode("ascii")
    pairs = text.count("\r\n")
    if text.count("\r") != pairs or text.count("\n") != pairs:
        raise MeterProtocolError("data block has a CR or LF that is not part of a CR LF")
    parts = text.split("\r\n")
    if parts[-1] == "":
        parts.pop()
    if not parts or parts[-1] != "!":
        raise MeterProtocolError("data block does not end with the end line '!'")
    lines = parts[:-1]
    if "!" in lines:
        raise MeterProtocolError("data lines after the end line '!'")
    return DataBlock(lines=tuple(lines), bcc=check)


class DataBlockDecoder(_SingleUseDecoder[DataBlock]):
    """Incremental decoder of the readout data block ``STX data ETX BCC``.

    ``feed(bytes)`` returns the :class:`DataBlock` once its BCC has arrived and checked, else
    None. Bytes before STX are skipped (counted in :attr:`skipped`); an STX seen before the
    ETX restarts the block, since data never contains STX. A bad BCC, a block that cannot end
    within ``max_block`` bytes (STX to BCC), non-printable data or a missing end line ``!``
    raise :class:`MeterProtocolError`. Any chunking of the same bytes gives the same result.

    Single-use like :class:`IdentificationReader`: after a block or an error, feeding raises
    :class:`~evproto.errors.LocalProtocolError`; bytes after the BCC in the chunk that completed
    the block are kept in :attr:`remainder`.
    """

    __slots__ = ("_seen", "max_block")

    def __init__(self, *, max_block: int = DEFAULT_MAX_BLOCK) -> None:
        if max_block < 5:
            raise ValueError(f"max_block must be at least 5 (STX ! CR LF ETX BCC), not {max_block}")
        super().__init__()
        self.max_block = max_block
        self._seen = 1  # buf[1:_seen] of a started block holds neither STX nor ETX

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished block held (at most ``max_block``)."""
        return len(self._buf)

    def _scan(self, buf: bytearray) -> DataBlock | None:
        while buf:
            if buf[0] != STX:
                start = buf.find(_STX_B)
                self._skip(len(buf) if start < 0 else start)
                continue
            # Resume where the last call stopped so a block fed byte by byte is scanned once.
            etx = buf.find(_ETX_B, self._seen)
            restart = buf.find(_STX_B, self._seen, len(buf) if etx < 0 else etx)
            if restart >= 0:
                self._check_size(restart + 2)  # the abandoned start, had it ended with ETX BCC
                self._skip(restart)
                continue
            if etx < 0:
                self._check_size(len(buf) + 2)
                self._seen = len(buf)
                return None
            size = etx + 2
            self._check_size(size)
            if len(buf) < size:
                return None  # ETX in, BCC still to come
            with memoryview(buf) as view:
                expected = lrc(view[1 : etx + 1])
            actual = buf[etx + 1]
            if actual != expected:
                raise MeterProtocolError(
                    f"data block BCC 0x{actual:02x}, expected 0x{expected:02x} "
                    f"(XOR of the {etx} bytes after STX up to ETX)"
                )
            block = _block_from_data(bytes(buf[1:etx]), actual)
            self.remainder = bytes(buf[size:])
            self._finish()
            return block
        return None

    def _check_size(self, shortest_block: int) -> None:
        if shortest_block > self.max_block:
            raise MeterProtocolError(f"data block longer than {self.max_block} bytes")

    def _skip(self, n: int) -> None:
        super()._skip(n)
        self._seen = 1


def readout_bytes(lines: Iterable[str]) -> bytes:
    """The meter's data block for ``lines``: STX, each line + CR LF, ``!`` CR LF, ETX, BCC.

    Lines are printable ASCII without CR or LF, and not the end line ``!`` itself (ValueError).
    """
    text = "".join(_checked_line(line) + "\r\n" for line in lines) + "!\r\n"
    inner = text.encode("ascii") + _ETX_B
    return _STX_B + inner + bytes((lrc(inner),))


def _checked_line(line: str) -> str:
    if line == "!" or not line.isascii() or not line.isprintable():
        raise ValueError(f"data line {line!r}: printable ASCII, not '!'")
    return line


def readout_blocks(lines: Iterable[str], lines_per_block: int) -> list[bytes]:
    """The meter's readout for ``lines`` in partial blocks of up to ``lines_per_block`` data lines.

    Every block but the last is ``STX lines EOT BCC``, the last ``STX lines ! CR LF ETX BCC``.
    A block boundary ends a line: a partial block's last line has no CR LF of its own (the
    reader adds it back), as the independent ``iec62056-21`` client reads partial blocks too.
    """
    if lines_per_block < 1:
        raise ValueError(f"lines_per_block must be at least 1, not {lines_per_block}")
    checked = [_checked_line(line) for line in lines]
    groups = [checked[i : i + lines_per_block] for i in range(0, len(checked), lines_per_block)]
    last = groups.pop() if groups else []  # the end line '!' joins the last group
    blocks = []
    for group in groups:
        inner = "\r\n".join(group).encode("ascii") + _EOT_B
        blocks.append(_STX_B + inner + bytes((lrc(inner),)))
    inner = ("".join(line + "\r\n" for line in last) + "!\r\n").encode("ascii") + _ETX_B
    blocks.append(_STX_B + inner + bytes((lrc(inner),)))
    return blocks


@dataclass(frozen=True, slots=True, kw_only=True)
class PasswordRequest:
    """The device answered with the programming-mode password request ``SOH P0 STX (d) ETX BCC``."""

    data: str


class ReadoutReader:
    """Incremental reader of what follows the option select: the data message whole or in
    partial blocks, or a programming-mode password request.

    ``feed(bytes)`` returns the joined :class:`DataBlock` once the block ending with ETX has
    arrived, a :class:`PasswordRequest`, or None. Replies to send (ACK after a good partial
    block, NAK after a damaged one, the break message after a password request, since we only
    read) are collected and handed out by :meth:`data_to_send`; the caller writes them.

    Bytes before SOH or STX are skipped (:attr:`skipped`). A damaged block is asked again (NAK)
    up to ``max_retries`` times when the readout is in partial blocks (the block ends with EOT,
    or an earlier one did); a damaged single block (STX ... ETX) raises
    :class:`MeterProtocolError`, as a readout without partial blocks is not repeated. So do
    a block, a readout or a count of blocks over its bound and data that is not a readout.
    """

    __slots__ = (
        "_buf",
        "_data",
        "_finished",
        "_out",
        "_retries",
        "blocks",
        "max_block",
        "max_blocks",
        "max_readout",
        "max_retries",
        "repeats",
        "skipped",
    )

    def __init__(
        self,
        *,
        max_block: int = DEFAULT_MAX_BLOCK,
        max_readout: int = DEFAULT_MAX_READOUT,
        max_retries: int = MAX_BLOCK_RETRIES,
        max_blocks: int = DEFAULT_MAX_BLOCKS,
    ) -> None:
        if max_block < 5 or max_readout < max_block or max_retries < 0 or max_blocks < 1:
            raise ValueError("need max_block >= 5, max_readout >= max_block, max_retries >= 0, max_blocks >= 1")
        self.max_block = max_block
        self.max_blocks = max_blocks
        self.max_readout = max_readout
        self.max_retries = max_retries
        #: Bytes discarded outside blocks (noise, damaged blocks).
        self.skipped = 0
        #: Good partial blocks acknowledged so far.
        self.blocks = 0
        #: Blocks asked again (NAK) over the whole readout.
        self.repeats = 0
        self._retries = 0
        self._buf = bytearray()
        self._data = bytearray()
        self._out = bytearray()
        self._finished = False

    @property
    def finished(self) -> bool:
        """True once the reader has returned its result or raised."""
        return self._finished

    def data_to_send(self) -> bytes:
        """The replies queued since the last call (ACK, NAK or the break message)."""
        out, self._out = bytes(self._out), bytearray()
        return out

    def feed(self, data: bytes | bytearray | memoryview) -> DataBlock | PasswordRequest | None:
        """Consume ``data``; the readout or a password request once complete, else None."""
        if self._finished:
            raise LocalProtocolError("ReadoutReader already finished; make a new one")
        self._buf += data
        try:
            return self._scan()
        except MeterProtocolError:
            self._finished = True
            raise

    def _skip(self, n: int) -> None:
        del self._buf[:n]
        self.skipped += n

    def _scan(self) -> DataBlock | PasswordRequest | None:
        buf = self._buf
        while buf:
            if buf[0] not in (SOH, STX):
                starts = [i for i in (buf.find(_SOH_B), buf.find(_STX_B)) if i >= 0]
                self._skip(min(starts) if starts else len(buf))
                continue
            if buf[0] == SOH:
                return self._command()
            end = _first_of(buf, _ETX_B, _EOT_B)
            restart = buf.find(_STX_B, 1, len(buf) if end < 0 else end)
            if restart >= 0:
                self._check_size(restart + 2)
                self._skip(restart)
                continue
            if end < 0:
                self._check_size(len(buf) + 2)
                return None
            self._check_size(end + 2)
            if len(buf) < end + 2:
                return None
            partial = buf[end] == EOT
            with memoryview(buf) as view:
                expected = lrc(view[1 : end + 1])
            actual = buf[end + 1]
            if actual != expected:
                if not (partial or self.blocks):
                    raise MeterProtocolError(
                        f"data block BCC 0x{actual:02x}, expected 0x{expected:02x} "
                        f"(XOR of the {end} bytes after STX up to ETX)"
                    )
                self._retries += 1
                self.repeats += 1
                if self._retries > self.max_retries:
                    raise MeterProtocolError(
                        f"partial block {self.blocks + 1}: bad BCC {self._retries} times (NAK {self.max_retries} times)"
                    )
                self._skip(end + 2)
                self._out.append(NAK)
                continue
            self._retries = 0
            chunk = bytes(buf[1:end])
            del buf[: end + 2]
            if partial and not chunk.endswith(CRLF):
                chunk += CRLF  # the block boundary ends its last line
            if len(self._data) + len(chunk) > self.max_readout:
                raise MeterProtocolError(f"readout longer than {self.max_readout} bytes")
            self._data += chunk
            if partial:
                self.blocks += 1
                if self.blocks >= self.max_blocks:
                    raise MeterProtocolError(f"readout in more than {self.max_blocks} blocks")
                self._out.append(ACK)
                continue
            if self.blocks:
                self._out.append(ACK)
            self._finished = True
            return _block_from_data(bytes(self._data), actual)
        return None

    def _command(self) -> PasswordRequest | None:
        buf = self._buf
        etx = buf.find(_ETX_B)
        if etx < 0:
            self._check_size(len(buf) + 2)
            return None
        self._check_size(etx + 2)
        if len(buf) < etx + 2:
            return None
        message = bytes(buf[: etx + 2])
        expected = lrc(message[1:-1])
        if message[-1] != expected:
            raise MeterProtocolError(f"command message BCC 0x{message[-1]:02x}, expected 0x{expected:02x}")
        command = message[1:3].decode("ascii", "replace")
        if command != "P0":
            raise MeterProtocolError(f"the meter sent programming command {command!r} in a readout")
        stx = message.find(_STX_B)
        data = message[stx + 1 : -2].decode("ascii", "replace") if stx >= 0 else ""
        del buf[: etx + 2]
        self._out += break_message()
        self._finished = True
        return PasswordRequest(data=data)

    def _check_size(self, shortest_block: int) -> None:
        if shortest_block > self.max_block:
            raise MeterProtocolError(f"data block longer than {self.max_block} bytes")


def _first_of(buf: bytearray, a: bytes, b: bytes) -> int:
    found = [i for i in (buf.find(a, 1), buf.find(b, 1)) if i >= 0]
    return min(found) if found else -1


# -- data lines and values ------------------------------------------------------------------------

# address(value*unit): a data set; the address may be empty (a further value of the set before).
_DATA_SET = re.compile(r"([^()]*)\(([^()]*)\)")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
# [A-B:]core[*F or &F]; F = 255 means "current value", other F are billing periods (history).
_OBIS = re.compile(r"(?:\d{1,3}-\d{1,3}:)?([^:*&]+?)(?:([*&])(\d{1,3}))?")


@dataclass(frozen=True, slots=True)
class DataValue:
    """One data set ``address(value*unit)``.

    ``address`` is the canonical short form (:func:`canonical_address`), ``raw_address`` the
    address as written; ``extra`` holds further values of the same set, as in
    ``1.6.1(07.20*kW)(24-03-15 12:30)`` (a maximum demand and its time).
    """

    value: str
    unit: str | None = None
    _: KW_ONLY
    address: str = ""
    raw_address: str = ""
    extra: tuple[DataValue, ...] = ()

    def number(self) -> float:
        """The value as a float; MeterProtocolError if it is not a plain decimal number."""
        return float(self._decimal())

    def _decimal(self) -> Decimal:
        if not _NUMBER.fullmatch(self.value):
            raise MeterProtocolError(f"{self.raw_address or '?'}({self.value}): not a number")
        return Decimal(self.value)


def canonical_address(raw: str) -> str:
    """The short form of an OBIS address: ``1-0:1.8.0*255`` and ``1.8.0`` give ``1.8.0``.

    The medium/channel prefix ``A-B:`` and a ``*255`` (current value) suffix are dropped. Other
    ``*F``/``&F`` suffixes stay: they name a billing period, a stored historical value
    (``1.8.0*19``), not the current register. Addresses that are not OBIS-like stay as written.
    """
    raw = raw.strip()
    m = _OBIS.fullmatch(raw)
    if m is None:
        return raw
    core, sep, period = m.groups()
    if period is None or period == "255":
        return core
    return f"{core}{sep}{period}"


def parse_data_line(line: str) -> tuple[DataValue, ...]:
    """The data sets of one data line, in order; ``()`` for a blank line or the end line ``!``.

    Sets without an address after an addressed one go into its ``extra``; sets without an
    address at the start of the line come back with ``address == ""`` (they continue the data
    set of the previous line). MeterProtocolError if the line is not a sequence of data sets.
    """
    if not line.strip() or line == "!":
        return ()
    out: list[DataValue] = []
    pos = 0
    for m in _DATA_SET.finditer(line):
        if m.start() != pos:
            break
        pos = m.end()
        raw_address, content = m.group(1).strip(), m.group(2)
        value, star, unit = content.partition("*")
        dv = DataValue(
            value.strip(),
            (unit.strip() or None) if star else None,
            address=canonical_address(raw_address),
            raw_address=raw_address,
        )
        if not raw_address and out:
            prev = out[-1]
            out[-1] = dataclasses.replace(prev, extra=(*prev.extra, dv))
        else:
            out.append(dv)
    if pos != len(line):
        raise MeterProtocolError(f"data line {line[:60]!r}: not address(value*unit) at offset {pos}")
    return tuple(out)


def parse_data(block: DataBlock | Iterable[str]) -> dict[str, DataValue]:
    """The data sets of a readout keyed by canonical address (:func:`canonical_address`).

    When an address occurs twice the first occurrence wins: meters list the current registers
    first and reuse some addresses later for other things (a Landis+Gyr ZMD sends
    ``32.7.0(239.5*V)`` and further down ``32.7.0(0002)(00-01-01 00:00)``, a sag counter).
    Blank lines are skipped; parsing stops at the end line ``!``.
    """
    lines = block.lines if isinstance(block, DataBlock) else block
    values: dict[str, DataValue] = {}
    last: str | None = None  # key of the previous data set, None if it was a duplicate
    seen_any = False
    for line in lines:
        if line == "!":
            break
        for dv in parse_data_line(line):
            if not dv.raw_address:
                if not seen_any:
                    raise MeterProtocolError(f"data line {line[:60]!r}: a value with no address")
                if last is not None:
                    prev = values[last]
                    more = (dataclasses.replace(dv, extra=()), *dv.extra)
                    values[last] = dataclasses.replace(prev, extra=(*prev.extra, *more))
                continue
            seen_any = True
            if dv.address in values:
                last = None
            else:
                values[dv.address] = dv
                last = dv.address
    return values


# -- readout -> MeterReading -----------------------------------------------------------------------

_ENERGY_UNITS = {"wh": Decimal(1), "kwh": Decimal(1000)}
_POWER_UNITS = {"w": Decimal(1), "kw": Decimal(1000)}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


def _scaled(dv: DataValue, units: Mapping[str, Decimal], what: str) -> Decimal:
    if dv.unit is None:
        raise MeterProtocolError(f"{dv.raw_address}({dv.value}): {what} without a unit")
    factor = units.get(dv.unit.lower())
    if factor is None:
        raise MeterProtocolError(
            f"{dv.raw_address}({dv.value}*{dv.unit}): unit is not one of {', '.join(units)} for {what}"
        )
    return dv._decimal() * factor


def _plain(dv: DataValue, unit: str, what: str) -> float:
    if dv.unit is not None and dv.unit.lower() != unit.lower():
        raise MeterProtocolError(f"{dv.raw_address}({dv.value}*{dv.unit}): {what} must be in {unit}")
    return dv.number()


def _first(values: Mapping[str, DataValue], *addresses: str) -> DataValue | None:
    for a in addresses:
        if a in values:
            return values[a]
    return None


def _clock_ms(time_dv: DataValue, date_dv: DataValue) -> int:
    hms = time_dv.value.replace(":", "")
    ymd = date_dv.value.replace("-", "")
    if len(ymd) == 7:
        ymd = ymd[1:]  # ISKRA meters write 0YYMMDD
    if len(hms) != 6 or not hms.isdigit() or len(ymd) != 6 or not ymd.isdigit():
        raise MeterProtocolError(f"meter clock {date_dv.value!r} {time_dv.value!r}: expected YYMMDD and hhmmss")
    try:
        at = datetime(
            2000 + int(ymd[:2]),
            int(ymd[2:4]),
            int(ymd[4:]),
            int(hms[:2]),
            int(hms[2:4]),
            int(hms[4:]),
            tzinfo=timezone.utc,
        )
    except ValueError as exc:
        raise MeterProtocolError(f"meter clock {date_dv.value!r} {time_dv.value!r}: {exc}") from None
    return (at - _EPOCH) // _MS


def reading_from_data(values: Mapping[str, DataValue], *, received_ms: int) -> MeterReading:
    """A :class:`MeterReading` from parsed readout values (:func:`parse_data`).

    - ``energy_wh``: import register 1.8.0 in kWh or Wh; missing, unit-less, negative or not a
      number raises MeterProtocolError.
    - ``power_w``: 1.7.0 (import, not negative), else 16.7.0 (sum, signed), in kW or W. A meter
      that reports neither gives ``power_w == 0.0``: the engine takes energy from the register,
      never by integrating power.
    - ``voltage_v``: 32.7.0, else 12.7.0; ``current_a``: 31.7.0, else 11.7.0 (V and A, a unit-less
      value is taken as V or A); None when absent.
    - ``timestamp_ms``: the meter clock 0.9.1 (hhmmss or hh:mm:ss) and 0.9.2 (YYMMDD, YY-MM-DD or
      ISKRA's 0YYMMDD), read as UTC, when both are present (``meter_clock=True``); else
      ``received_ms``. A malformed clock raises MeterProtocolError.
    - ``status``: FAULT when the error register F.F is present and not all zeros.
    """
    energy = values.get("1.8.0")
    if energy is None:
        raise MeterProtocolError("no energy register 1.8.0 in the readout")
    energy_wh = _scaled(energy, _ENERGY_UNITS, "energy")
    if energy_wh < 0:
        raise MeterProtocolError(f"{energy.raw_address}({energy.value}): negative energy register")

    power_w = Decimal(0)
    if (import_power := values.get("1.7.0")) is not None:
        power_w = _scaled(import_power, _POWER_UNITS, "power")
        if power_w < 0:
            raise MeterProtocolError(
                f"{import_power.raw_address}({import_power.value}): import power 1.7.0 cannot be negative"
            )
    elif (sum_power := values.get("16.7.0")) is not None:
        power_w = _scaled(sum_power, _POWER_UNITS, "power")

    voltage = _first(values, "32.7.0", "12.7.0")
    current = _first(values, "31.7.0", "11.7.0")

    time_dv, date_dv = values.get("0.9.1"), values.get("0.9.2")
    if time_dv is not None and date_dv is not None:
        timestamp_ms, meter_clock = _clock_ms(time_dv, date_dv), True
    else:
        timestamp_ms, meter_clock = received_ms, False

    status = MeterStatus.NONE
    errors = _first(values, "F.F", "F.F.0")
    if errors is not None and errors.value.strip("0"):
        status |= MeterStatus.FAULT

    return MeterReading(
        energy_wh=float(energy_wh),
        power_w=float(power_w),
        timestamp_ms=timestamp_ms,
        voltage_v=None if voltage is None else _plain(voltage, "V", "voltage"),
        current_a=None if current is None else _plain(current, "A", "current"),
        status=status,
        meter_clock=meter_clock,
    )
