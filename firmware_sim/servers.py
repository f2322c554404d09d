"""The simulated meter's protocols: evproto (link server) and IEC 62056-21 mode C readout."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from evproto.aio import Link, serve_stream
from evproto.errors import LinkDownError
from evproto.link import RequestReceived
from evproto.messages import MeterReadRequest, MeterSignedReading, MeterSignedRequest, MeterValues

from .faults import Faults, FaultyWriter
from .model import MeterModel

if TYPE_CHECKING:  # signing needs cryptography: only a meter given a key imports it
    from .signing import MeterSigner

__all__ = ["evproto_session", "iec_session", "IDENTIFICATION", "readout_lines"]

log = logging.getLogger("evproto.firmware_sim")

#: What the simulated IEC meter says it is: manufacturer EVP, 9600 baud (5), our name.
IDENTIFICATION = b"/EVP5EVPROTO-SIM\r\n"


async def evproto_session(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    model: MeterModel,
    faults: Faults,
    signer: MeterSigner | None = None,
) -> None:
    """Serve one evproto session: answer every MeterReadRequest with MeterValues, and
    every MeterSignedRequest with the register signed (empty without a ``signer``)."""

    async def handler(link: Link) -> None:
        async for event in link.messages:
            if isinstance(event, RequestReceived) and isinstance(event.message, MeterReadRequest):
                energy, power, voltage, current, status = model.read()
                await link.respond(
                    event,
                    MeterValues(
                        energy_wh=energy,
                        power_w=power,
                        voltage_v=voltage,
                        current_a=current,
                        status=status,
                        meter_timestamp_ms=int(time.time() * 1000),
                    ),
                )
            elif isinstance(event, RequestReceived) and isinstance(event.message, MeterSignedRequest):
                request = event.message
                if signer is None:
                    await link.respond(event, MeterSignedReading())
                    continue
                energy = model.read()[0]
                await link.respond(event, signer.sign(request.transaction, request.identification, energy))

    down = await serve_stream(reader, FaultyWriter(writer, faults), handler, node_id="evmeter-sim")  # type: ignore[arg-type]
    log.info("evproto session ended: %s", down.reason.value)


def readout_lines(model: MeterModel, serial_no: str = "12345678") -> list[str]:
    """The data lines of one readout, as a typical residential meter sends them."""
    energy, power, voltage, current, _status = model.read()
    now = time.gmtime()
    return [
        f"0.0.0({serial_no})",
        f"0.9.1({now.tm_hour:02d}{now.tm_min:02d}{now.tm_sec:02d})",
        f"0.9.2({now.tm_year % 100:02d}{now.tm_mon:02d}{now.tm_mday:02d})",
        f"1.8.0({energy / 1000:010.4f}*kWh)",
        f"1.7.0({power / 1000:07.3f}*kW)",
        f"32.7.0({voltage:05.1f}*V)" if voltage is not None else "32.7.0(000.0*V)",
        f"31.7.0({(current or 0.0):06.2f}*A)",
        "F.F(00000000)",
    ]


async def iec_session(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    model: MeterModel,
    faults: Faults,
    *,
    address: str = "",
    line_timeout_s: float = 3.0,
) -> None:
    """Serve IEC 62056-21 mode C readouts until the line closes."""
    from evproto.hw.iec62056 import readout_bytes

    out = FaultyWriter(writer, faults)
    buf = bytearray()

    async def next_line(timeout_s: float | None) -> bytes | None:
        """The next complete sign-on (``/?...``) or ACK line, noise skipped; None on timeout."""
        nonlocal buf
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            starts = [i for i in (buf.find(b"/?"), buf.find(b"\x06")) if i >= 0]
            if starts:
                start = min(starts)
                end = buf.find(b"\r\n", start)
                if end >= 0:
                    text = bytes(buf[start : end + 2])
                    del buf[: end + 2]
                    return text
            if len(buf) > 256:
                del buf[:-256]
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            try:
                chunk = await asyncio.wait_for(reader.read(256), remaining)
            except asyncio.TimeoutError:
                return None
            if not chunk:
                raise EOFError
            buf += chunk

    try:
        signed_on = False
        while True:
            line = await next_line(line_timeout_s if signed_on else None)
            if line is None:  # the client went quiet after the identification: back to idle
                signed_on = False
                continue
            if line.startswith(b"/?"):
                # A sign-on restarts the session at any time, as on a real meter.
                wanted = line[2:-3].decode("ascii", "replace")  # between "/?" and "!\r\n"
                if wanted and address and wanted.lstrip("0") != address.lstrip("0"):
                    signed_on = False
                    continue  # addressed to another meter on the bus
                out.write(IDENTIFICATION)
                signed_on = True
            elif signed_on:  # the acknowledgement / option select
                signed_on = False
                await asyncio.sleep(0.05)  # the baud switch
                out.write(readout_bytes(readout_lines(model)))
    except (EOFError, OSError, LinkDownError):
        pass
    finally:
        out.close()
        await out.wait_closed()
