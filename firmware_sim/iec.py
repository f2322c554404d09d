"""The simulated meter's IEC 62056-21 mode C side: sign-on, identification, option select,
the readout whole or in partial blocks, and a programming-mode request met with the password
request (P0) until the HHU breaks off (B0).

The meter answers every message after its reaction time tr, as the standard requires:
200 ms .. 1.5 s, or from 20 ms when the manufacturer id's third letter is lower case. After
the option select it changes speed within that time and answers at the new one, so a client
that reopens its port at the new speed right after the acknowledgement loses nothing.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass

from evproto.errors import LinkDownError
from evproto.hw.base import MeterProtocolError
from evproto.hw.iec62056 import (
    ACK,
    BAUD_CHARS,
    MAX_BLOCK_RETRIES,
    NAK,
    SOH,
    command_message,
    parse_option_select,
    reaction_window_s,
    readout_blocks,
    readout_bytes,
)

from .faults import Faults, FaultyWriter
from .model import MeterModel
from .servers import readout_lines

__all__ = ["IecOptions", "iec_session", "DEFAULT_REACTION_S", "MeterState", "Heard", "MeterAction", "TRANSITIONS"]

log = logging.getLogger("evproto.firmware_sim")

#: The simulated meter's reaction time unless told otherwise: inside the window of any meter.
DEFAULT_REACTION_S = 0.25
# Longest message the meter buffers while looking for one (a sign-on is at most 37 bytes).
_MAX_PENDING = 512


@dataclass(frozen=True, slots=True, kw_only=True)
class IecOptions:
    """How the simulated IEC meter identifies itself and behaves."""

    manufacturer: str = "EVP"
    baud_char: str = "5"
    ident: str = "EVPROTO-SIM"
    #: The W characters of the enhanced identification ``\\W`` ("" = none, "2" = also HDLC).
    enhanced: str = ""
    reaction_s: float = DEFAULT_REACTION_S
    #: Data lines per partial block; 0 sends the readout as one block.
    block_lines: int = 0
    address: str = ""

    def identification(self) -> bytes:
        """The identification message ``/XXXZ[\\W]ident`` CR LF."""
        escapes = "".join("\\" + w for w in self.enhanced)
        return f"/{self.manufacturer}{self.baud_char}{escapes}{self.ident}\r\n".encode("ascii")

    def check(self, *, nonconformant: bool = False) -> None:
        """ValueError when the options make a meter the standard does not allow (a reaction
        time outside its window), unless ``nonconformant`` (fault injection)."""
        if not (len(self.manufacturer) == 3 and self.manufacturer[:2].isupper() and self.manufacturer.isalpha()):
            raise ValueError(f"manufacturer {self.manufacturer!r}: two capital letters and a letter (EVP, EVp)")
        low, high = reaction_window_s(self.manufacturer)
        if self.baud_char not in BAUD_CHARS:
            raise ValueError(f"baud character {self.baud_char!r}: 0..6")
        if len(self.enhanced) > 4 or any(c in "/!\\" or not c.isprintable() for c in self.enhanced):
            raise ValueError(f"enhanced identification {self.enhanced!r}: up to 4 printable characters")
        if self.block_lines < 0:
            raise ValueError("block lines: 0 (one block) or more")
        if not nonconformant and not low <= self.reaction_s <= high:
            raise ValueError(
                f"reaction time {self.reaction_s * 1000:g} ms is outside {low * 1000:g}..{high * 1000:g} ms "
                f"for manufacturer {self.manufacturer!r} (IEC 62056-21); --iec-nonconformant to inject it anyway"
            )


class _Messages:
    """The HHU's messages out of the byte stream: sign-on, option select, ACK, NAK, commands."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._buf = bytearray()

    def _take(self, *, option: bool) -> tuple[str, bytes] | None:
        buf = self._buf
        starts = [i for i in (buf.find(b"/?"), buf.find(ACK), buf.find(NAK), buf.find(SOH)) if i >= 0]
        if not starts:
            del buf[: max(0, len(buf) - 1)]  # keep a '/' that may start a sign-on
            return None
        start = min(starts)
        del buf[:start]
        first = buf[0]
        if first == 0x2F:  # '/'
            end = buf.find(b"\r\n")
            return None if end < 0 else ("signon", self._cut(end + 2))
        if first == ACK and option:
            return None if len(buf) < 6 else ("option", self._cut(6))
        if first in (ACK, NAK):
            return ("ack" if first == ACK else "nak", self._cut(1))
        etx = buf.find(b"\x03")
        return None if etx < 0 or len(buf) < etx + 2 else ("command", self._cut(etx + 2))

    def _cut(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def next(self, timeout_s: float | None, *, option: bool) -> tuple[str, bytes] | None:
        """The next message, None after ``timeout_s`` of waiting; EOFError when the line closes."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            msg = self._take(option=option)
            if msg is not None:
                return msg
            if len(self._buf) > _MAX_PENDING:
                del self._buf[:-_MAX_PENDING]
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            try:
                chunk = await asyncio.wait_for(self._reader.read(256), remaining)
            except asyncio.TimeoutError:
                return None
            if not chunk:
                raise EOFError
            self._buf += chunk


class MeterState(enum.Enum):
    """Where the simulated meter is in a mode C session."""

    IDLE = "idle"  # waiting for a sign-on
    IDENTIFIED = "identified"  # identification sent, waiting for the option select
    BLOCKS = "blocks"  # a partial block sent, waiting for ACK or NAK
    PROGRAMMING = "programming"  # password request sent, waiting for the break


class Heard(enum.Enum):
    """What the meter made of the HHU's next message (or of its silence)."""

    SIGN_ON = "sign-on"  # /?!, or /?<our address>!
    SIGN_ON_OTHER = "sign-on for another meter"
    OPTION_READOUT = "option select: readout"
    OPTION_READOUT_BLOCKS = "option select: readout (we send partial blocks)"
    OPTION_PROGRAMMING = "option select: programming"
    OPTION_OTHER = "option select: garbled or a mode we do not serve"
    ACK = "ACK"
    ACK_LAST = "ACK of the last block"
    NAK = "NAK"
    NAK_EXHAUSTED = "NAK beyond the retries"
    BREAK = "break B0"
    OTHER_COMMAND = "another command (password, read...)"
    SILENCE = "silence (3 s)"


class MeterAction(enum.Enum):
    """What the meter sends, after its reaction time."""

    NOTHING = "nothing"
    IDENTIFY = "identification"
    READOUT = "the readout in one block"
    FIRST_BLOCK = "the first partial block"
    NEXT_BLOCK = "the next partial block"
    SAME_BLOCK = "the same block again"
    PASSWORD_REQUEST = "password request P0"


def _transitions() -> dict[tuple[MeterState, Heard], tuple[MeterAction, MeterState]]:
    nothing = MeterAction.NOTHING
    # What does not fit the state is ignored, except that a sign-on restarts the session and
    # silence or a sign-on for another meter ends it, whatever the state.
    table = {(state, heard): (nothing, state) for state in MeterState for heard in Heard}
    for state in MeterState:
        table[state, Heard.SIGN_ON] = (MeterAction.IDENTIFY, MeterState.IDENTIFIED)
        table[state, Heard.SIGN_ON_OTHER] = (nothing, MeterState.IDLE)
        table[state, Heard.SILENCE] = (nothing, MeterState.IDLE)
    table.update(
        {
            (MeterState.IDENTIFIED, Heard.OPTION_READOUT): (MeterAction.READOUT, MeterState.IDLE),
            (MeterState.IDENTIFIED, Heard.OPTION_READOUT_BLOCKS): (MeterAction.FIRST_BLOCK, MeterState.BLOCKS),
            (MeterState.IDENTIFIED, Heard.OPTION_PROGRAMMING): (
                MeterAction.PASSWORD_REQUEST,
                MeterState.PROGRAMMING,
            ),
            (MeterState.IDENTIFIED, Heard.OPTION_OTHER): (nothing, MeterState.IDLE),
            (MeterState.BLOCKS, Heard.ACK): (MeterAction.NEXT_BLOCK, MeterState.BLOCKS),
            (MeterState.BLOCKS, Heard.ACK_LAST): (nothing, MeterState.IDLE),
            (MeterState.BLOCKS, Heard.NAK): (MeterAction.SAME_BLOCK, MeterState.BLOCKS),
            (MeterState.BLOCKS, Heard.NAK_EXHAUSTED): (nothing, MeterState.IDLE),
            (MeterState.PROGRAMMING, Heard.BREAK): (nothing, MeterState.IDLE),
        }
    )
    return table


#: (state, what was heard) -> (what the meter sends, next state): every pair is in the table.
TRANSITIONS: dict[tuple[MeterState, Heard], tuple[MeterAction, MeterState]] = _transitions()


class _Session:
    """One line's session: classifies what it hears (with the context the table leaves out:
    our address, which block, how many repeats) and carries out the table's actions."""

    def __init__(self, opts: IecOptions, model: MeterModel) -> None:
        self.opts = opts
        self.model = model
        self.state = MeterState.IDLE
        self.blocks: list[bytes] = []
        self.index = 0
        self.repeats = 0

    def hear(self, msg: tuple[str, bytes] | None) -> Heard | None:
        """What ``msg`` means now; None for what this state cannot take (a stray byte)."""
        if msg is None:
            return Heard.SILENCE
        kind, raw = msg
        if kind == "signon":
            wanted = raw[2:-3].decode("ascii", "replace")  # between "/?" and "!\r\n"
            address = self.opts.address
            ours = not (wanted and address and wanted.lstrip("0") != address.lstrip("0"))
            return Heard.SIGN_ON if ours else Heard.SIGN_ON_OTHER
        if kind == "option":
            try:
                option = parse_option_select(raw)
            except MeterProtocolError as exc:
                log.info("IEC: %s", exc)
                return Heard.OPTION_OTHER
            if option.programming:
                return Heard.OPTION_PROGRAMMING
            if option.mode != "0":
                log.info("IEC: option select mode %s not supported; back to idle", option.mode)
                return Heard.OPTION_OTHER
            return Heard.OPTION_READOUT_BLOCKS if self.opts.block_lines else Heard.OPTION_READOUT
        if kind == "ack":
            return Heard.ACK_LAST if self.index + 1 >= len(self.blocks) else Heard.ACK
        if kind == "nak":
            return Heard.NAK_EXHAUSTED if self.repeats >= MAX_BLOCK_RETRIES else Heard.NAK
        if kind == "command":
            return Heard.BREAK if raw[1:3] == b"B0" else Heard.OTHER_COMMAND
        return None

    def act(self, action: MeterAction) -> bytes | None:
        """The bytes to send for ``action`` (None: nothing), updating the block bookkeeping."""
        opts = self.opts
        if action is MeterAction.IDENTIFY:
            return opts.identification()
        if action is MeterAction.READOUT:
            return readout_bytes(readout_lines(self.model))
        if action is MeterAction.FIRST_BLOCK:
            self.blocks, self.index, self.repeats = readout_blocks(readout_lines(self.model), opts.block_lines), 0, 0
            return self.blocks[0]
        if action is MeterAction.NEXT_BLOCK:
            self.index, self.repeats = self.index + 1, 0
            return self.blocks[self.index]
        if action is MeterAction.SAME_BLOCK:
            self.repeats += 1
            log.info("IEC: block %d of %d asked again (NAK)", self.index + 1, len(self.blocks))
            return self.blocks[self.index]
        if action is MeterAction.PASSWORD_REQUEST:
            return command_message("P0", f"({opts.ident[:16]})")
        return None


async def iec_session(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    model: MeterModel,
    faults: Faults,
    *,
    options: IecOptions | None = None,
    line_timeout_s: float = 3.0,
) -> None:
    """Serve IEC 62056-21 mode C sessions until the line closes (:data:`TRANSITIONS`)."""
    opts = options or IecOptions()
    out = FaultyWriter(writer, faults)
    messages = _Messages(reader)
    session = _Session(opts, model)
    try:
        while True:
            state = session.state
            msg = await messages.next(
                None if state is MeterState.IDLE else line_timeout_s, option=state is MeterState.IDENTIFIED
            )
            heard = session.hear(msg)
            if heard is None:
                continue
            action, session.state = TRANSITIONS[state, heard]
            if heard is Heard.BREAK:
                log.info("IEC: the HHU broke off programming mode (B0)")
            elif heard is Heard.NAK_EXHAUSTED:
                log.info("IEC: block %d refused %d times; back to idle", session.index + 1, session.repeats + 1)
            data = session.act(action)
            if data is not None:
                await asyncio.sleep(opts.reaction_s)  # tr, and the baud switch within it
                out.write(data)
    except (EOFError, OSError, LinkDownError):
        pass
    finally:
        out.close()
        await out.wait_closed()
