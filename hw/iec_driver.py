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
    BAUD_CHARS,
    BAUD_SWITCH_WAIT_S,
    INITIAL_BAUD,
    DataBlockDecoder,
    IdentificationReader,
    ack_option,
    parse_data,
    reading_from_data,
    select_baud_char,
    sign_on,
)

__all__ = ["Iec62056Meter"]

log = logging.getLogger("evproto.hw")

_SIGN_ON_SETTINGS = {"baudrate": INITIAL_BAUD, "bytesize": 7, "parity": "E", "stopbits": 1}


class Iec62056Meter:
    """A mode C meter on ``port`` (a device path, ``serial://...``, or ``tcp://`` for a simulator)."""

    protocol = "iec62056-21"

    def __init__(self, port: str, *, address: str = "", max_baud: int | None = None, timeout_s: float = 5.0) -> None:
        ep = parse_endpoint(port)
        if ep.scheme == "serial":
            ep = Endpoint(scheme="serial", path=ep.path, options={**ep.options, **_SIGN_ON_SETTINGS})
        self.endpoint = ep
        self.address = address
        self.max_baud = max_baud
        # Sign-on and identification at 300 baud alone take about a second.
        self.timeout_s = max(timeout_s, 3.0)
        sign_on(address)  # validates the address now, not at the first reading
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.last_identification: Any = None

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

    async def read(self) -> MeterReading:
        if self._reader is None or self._writer is None:
            raise MeterGone(f"{self.endpoint.url}: not open")
        deadline = time.monotonic() + self.timeout_s
        try:
            self._set_baud(INITIAL_BAUD)
            self._writer.write(sign_on(self.address))
            await self._writer.drain()
            ident_reader = IdentificationReader()
            ident = None
            while ident is None:
                ident = ident_reader.feed(await self._read_some(deadline))
            self.last_identification = ident
            try:
                char = select_baud_char(ident.baud_char, self.max_baud)
            except ValueError as exc:  # a garbled identification, or not a mode C meter
                raise MeterProtocolError(f"identification {ident.manufacturer}{ident.baud_char}: {exc}") from exc
            self._writer.write(ack_option(char))
            await self._writer.drain()
            # The ACK must leave at the old speed before both ends switch.
            await asyncio.sleep(BAUD_SWITCH_WAIT_S)
            self._set_baud(BAUD_CHARS[char])
            decoder = DataBlockDecoder()
            block = decoder.feed(ident_reader.remainder) if ident_reader.remainder else None
            while block is None:
                block = decoder.feed(await self._read_some(deadline))
        except OSError as exc:
            raise MeterGone(f"{self.endpoint.url}: {exc}") from exc
        return reading_from_data(parse_data(block), received_ms=int(time.time() * 1000))

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except Exception:  # a port that vanished cannot be closed cleanly; it is gone anyway
                pass
