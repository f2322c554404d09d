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

__all__ = ["IecOptions", "iec_session", "DEFAULT_REACTION_S"]

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


async def iec_session(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    model: MeterModel,
    faults: Faults,
    *,
    options: IecOptions | None = None,
    line_timeout_s: float = 3.0,
) -> None:
    """Serve IEC 62056-21 mode C sessions until the line closes."""
    opts = options or IecOptions()
    out = FaultyWriter(writer, faults)
    messages = _Messages(reader)
    state = "idle"  # idle, identified, blocks, programming
    blocks: list[bytes] = []
    index = repeats = 0

    async def answer(data: bytes) -> None:
        await asyncio.sleep(opts.reaction_s)  # tr, and the baud switch within it
        out.write(data)

    try:
        while True:
            msg = await messages.next(None if state == "idle" else line_timeout_s, option=state == "identified")
            if msg is None:  # the HHU went quiet: back to idle, as a real meter does
                state = "idle"
                continue
            kind, raw = msg
            if kind == "signon":
                # A sign-on restarts the session at any time, as on a real meter.
                wanted = raw[2:-3].decode("ascii", "replace")  # between "/?" and "!\r\n"
                if wanted and opts.address and wanted.lstrip("0") != opts.address.lstrip("0"):
                    state = "idle"
                    continue  # addressed to another meter on the bus
                await answer(opts.identification())
                state = "identified"
            elif state == "identified" and kind == "option":
                state = "idle"
                try:
                    option = parse_option_select(raw)
                except MeterProtocolError as exc:
                    log.info("IEC: %s", exc)
                    continue
                if option.programming:
                    await answer(command_message("P0", f"({opts.ident[:16]})"))
                    state = "programming"
                elif option.mode == "0":
                    lines = readout_lines(model)
                    if opts.block_lines:
                        blocks, index, repeats = readout_blocks(lines, opts.block_lines), 0, 0
                        state = "blocks"
                        await answer(blocks[0])
                    else:
                        await answer(readout_bytes(lines))
                else:
                    log.info("IEC: option select mode %s not supported; back to idle", option.mode)
            elif state == "blocks" and kind in ("ack", "nak"):
                if kind == "nak":
                    repeats += 1
                    if repeats > MAX_BLOCK_RETRIES:
                        log.info("IEC: block %d refused %d times; back to idle", index + 1, repeats)
                        state = "idle"
                        continue
                    log.info("IEC: block %d of %d asked again (NAK)", index + 1, len(blocks))
                else:
                    index, repeats = index + 1, 0
                    if index == len(blocks):  # the last block acknowledged
                        state = "idle"
                        continue
                await answer(blocks[index])
            elif state == "programming" and kind == "command":
                if raw[1:3] == b"B0":
                    log.info("IEC: the HHU broke off programming mode (B0)")
                    state = "idle"
                # Anything else (a password P1, a read R1...) is not served: we wait for B0.
    except (EOFError, OSError, LinkDownError):
        pass
    finally:
        out.close()
        await out.wait_closed()
