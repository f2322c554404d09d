"""The simulated meter's protocols: evproto (link server) and the data lines of an IEC 62056-21
readout (the IEC session itself is :mod:`.iec`)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from evproto.aio import Link, serve_stream
from evproto.link import RequestReceived
from evproto.messages import MeterReadRequest, MeterSignedReading, MeterSignedRequest, MeterValues

from .faults import Faults, FaultyWriter
from .model import MeterModel

if TYPE_CHECKING:  # signing needs cryptography: only a meter given a key imports it
    from .signing import MeterSigner

__all__ = ["evproto_session", "readout_lines"]

log = logging.getLogger("evproto.firmware_sim")


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
