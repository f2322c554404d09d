"""Meter driver 2: IEC 62056-21 mode C readout over a serial line (optical probe or RS-485).

Each reading is one readout session: at 300 baud 7E1 send the sign-on, read the
identification, acknowledge with the chosen speed, switch baud rate, read the
data block and check its BCC. The byte-level rules are in :mod:`.iec62056`; this
module only moves bytes and changes the port's speed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from evproto.aio import open_stream
from evproto.endpoint import Endpoint, parse_endpoint
from evproto.errors import TransportError

from .base import MeterGone, MeterProtocolError, MeterReading, MeterTimeout
from .iec62056 import (
    ANSWER_WAIT_S,
    BAUD_CHARS,
    INITIAL_BAUD,
    REACTION_TIME_MAX_S,
    IdentificationReader,
    PasswordRequest,
    ReadoutReader,
    ack_option,
    parse_data,
    reading_from_data,
    select_baud_char,
    sign_on,
)

__all__ = ["Iec62056Meter", "BAUD_SWITCHES", "MIN_READ_TIMEOUT_S"]

log = logging.getLogger("evproto.hw")

#: How the port changes speed after the option select: ``in-place`` reconfigures the open port
#: (nothing received is lost), ``reopen`` closes it and opens it again at the new rate, as many
#: clients do (opening a port flushes its input: it must happen before the meter answers).
BAUD_SWITCHES = ("in-place", "reopen")
#: Shortest timeout of one reading: two answers at the longest reaction time (identification,
#: data) plus about a second of 300 baud sign-on, identification and acknowledgement.
MIN_READ_TIMEOUT_S = 2 * REACTION_TIME_MAX_S + 1.5
# Slack on top of ta for the first byte of an answer (scheduling, a USB adapter's latency).
_ANSWER_SLACK_S = 0.5

_SIGN_ON_SETTINGS = {"baudrate": INITIAL_BAUD, "bytesize": 7, "parity": "E", "stopbits": 1}


class Iec62056Meter:
    """A mode C meter on ``port`` (a device path, ``serial://...``, or ``tcp://`` for a simulator)."""

    protocol = "iec62056-21"

    def __init__(
        self,
        port: str,
        *,
        address: str = "",
        max_baud: int | None = None,
        timeout_s: float = 5.0,
        baud_switch: str = "in-place",
    ) -> None:
        if baud_switch not in BAUD_SWITCHES:
            raise ValueError(f"baud_switch {baud_switch!r}: one of {', '.join(BAUD_SWITCHES)}")
        ep = parse_endpoint(port)
        if ep.scheme == "serial":
            ep = Endpoint(scheme="serial", path=ep.path, options={**ep.options, **_SIGN_ON_SETTINGS})
        self.endpoint = ep
        self.address = address
        self.max_baud = max_baud
        self.baud_switch = baud_switch
        # A conformant meter may take 1.5 s to answer, twice per reading (see MIN_READ_TIMEOUT_S).
        self.timeout_s = max(timeout_s, MIN_READ_TIMEOUT_S)
        sign_on(address)  # validates the address now, not at the first reading
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.last_identification: Any = None
        #: Seconds from our request leaving to the first byte of the meter's answer, in the last
        #: reading: (identification, data). The meter's reaction time tr plus line latency.
        self.last_reaction_s: tuple[float, float] | None = None
        #: Partial blocks asked again (NAK) in the last reading.
        self.last_repeats = 0

    async def open(self) -> None:
        await self.close()
        try:
            self._reader, self._writer = await open_stream(self.endpoint, timeout_s=self.timeout_s)
        except TransportError as exc:
            if self.endpoint.scheme != "serial" or "refuses" not in str(exc) or not os.path.exists(self.endpoint.path):
                raise MeterGone(str(exc)) from exc
            # A port that cannot do 7E1 (a pty, as the simulator uses) gets 8N1: the bytes
            # of a readout are 7-bit ASCII either way. A real line must do 7E1.
            log.warning(
                "%s cannot do 7E1 framing; using 8N1 (fine for a pty, wrong for a real meter)", self.endpoint.path
            )
            self.endpoint = Endpoint(
                scheme="serial",
                path=self.endpoint.path,
                options={**self.endpoint.options, "bytesize": 8, "parity": "N"},
            )
            try:
                self._reader, self._writer = await open_stream(self.endpoint, timeout_s=self.timeout_s)
            except TransportError as exc2:
                raise MeterGone(str(exc2)) from exc2

    def _set_baud(self, baud: int) -> None:
        serial = getattr(self._writer.transport, "serial", None) if self._writer else None
        if serial is not None and serial.baudrate != baud:
            serial.baudrate = baud

    async def _read_some(self, deadline: float) -> bytes:
        assert self._reader is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MeterTimeout(f"no complete readout within {self.timeout_s:g} s")
        try:
            data = await asyncio.wait_for(self._reader.read(1024), remaining)
        except asyncio.TimeoutError:
            raise MeterTimeout(f"no complete readout within {self.timeout_s:g} s") from None
        except OSError as exc:
            raise MeterGone(f"{self.endpoint.url}: {exc}") from exc
        if not data:
            raise MeterGone(f"{self.endpoint.url}: the device went away")
        return data

    def _serial(self) -> Any:
        return getattr(self._writer.transport, "serial", None) if self._writer else None

    async def _sent(self) -> float:
        """Wait until what was written has left the UART; the monotonic time it had."""
        assert self._writer is not None
        await self._writer.drain()
        serial = self._serial()
        if serial is not None:
            # tcdrain: the bytes are on the line, not only in the kernel's buffer (at 300 baud
            # an option select takes 200 ms to leave).
            await asyncio.to_thread(serial.flush)
        return time.monotonic()

    async def _switch_baud(self, baud: int) -> None:
        serial = self._serial()
        if serial is None or serial.baudrate == baud:
            return
        if self.baud_switch == "in-place":
            serial.baudrate = baud
            return
        # Close and open again at the new speed; the meter's reaction time (at least 20 ms)
        # covers this, and opening flushes only what arrived before the meter answered.
        await self.close()
        options = {**self.endpoint.options, "baudrate": baud}
        try:
            self._reader, self._writer = await open_stream(
                Endpoint(scheme="serial", path=self.endpoint.path, options=options), timeout_s=self.timeout_s
            )
        except TransportError as exc:
            raise MeterGone(str(exc)) from exc

    async def read(self) -> MeterReading:
        if self._reader is None or self._writer is None:
            raise MeterGone(f"{self.endpoint.url}: not open")
        deadline = time.monotonic() + self.timeout_s
        try:
            self._set_baud(INITIAL_BAUD)
            self._writer.write(sign_on(self.address))
            asked = await self._sent()
            ident_reader = IdentificationReader()
            ident = ident_reader.feed(await self._answer(asked, deadline))
            ident_s = time.monotonic() - asked
            while ident is None:
                ident = ident_reader.feed(await self._read_some(deadline))
            self.last_identification = ident
            # We keep the same minimum turnaround towards the meter as it keeps towards us (a
            # half-duplex optical head needs it): 200 ms, 20 ms for a lower-case third letter.
            turnaround_s = ident.reaction_window_s[0]
            await asyncio.sleep(turnaround_s)
            try:
                char = select_baud_char(ident.baud_char, self.max_baud)
            except ValueError as exc:  # a garbled identification, or not a mode C meter
                raise MeterProtocolError(f"identification {ident.manufacturer}{ident.baud_char}: {exc}") from exc
            self._writer.write(ack_option(char))
            asked = await self._sent()
            # Both ends switch once the option select has left: the meter answers no sooner
            # than its reaction time (20 or 200 ms) after it, at the new speed.
            await self._switch_baud(BAUD_CHARS[char])
            reader = ReadoutReader()
            first = ident_reader.remainder or await self._answer(asked, deadline)
            data_s = time.monotonic() - asked
            result = reader.feed(first)
            while result is None:
                reply = reader.data_to_send()
                if reply:
                    await asyncio.sleep(turnaround_s)
                    self._writer.write(reply)
                    asked = await self._sent()
                    # Each block acknowledged gives the meter a reaction time again.
                    deadline = max(deadline, asked + ANSWER_WAIT_S + _ANSWER_SLACK_S)
                    result = reader.feed(await self._answer(asked, deadline))
                else:
                    result = reader.feed(await self._read_some(deadline))
            self.last_repeats = reader.repeats
            reply = reader.data_to_send()
            if reply:
                await asyncio.sleep(turnaround_s)
                self._writer.write(reply)
                await self._sent()
            if isinstance(result, PasswordRequest):
                raise MeterProtocolError(
                    "the meter asks for a programming-mode password (P0); we only read out: sent a break (B0)"
                )
            self.last_reaction_s = (ident_s, data_s)
        except OSError as exc:
            raise MeterGone(f"{self.endpoint.url}: {exc}") from exc
        return reading_from_data(parse_data(result), received_ms=int(time.time() * 1000))

    async def _answer(self, asked: float, deadline: float) -> bytes:
        """The first bytes of the meter's answer to what left at ``asked``: it may take up to
        ta (1.5 s) to start; never later than ``deadline``."""
        wait_until = min(deadline, max(asked + ANSWER_WAIT_S + _ANSWER_SLACK_S, time.monotonic()))
        try:
            return await self._read_some(wait_until)
        except MeterTimeout:
            if wait_until >= deadline:
                raise
            raise MeterTimeout(f"no answer within {ANSWER_WAIT_S:g} s (ta) of our request") from None

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except Exception:  # a port that vanished cannot be closed cleanly; it is gone anyway
                pass
