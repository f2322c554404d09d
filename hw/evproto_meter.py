"""Meter driver 1: our own framed protocol over a serial line (or TCP).

The engine is the link's client: ENQ, Hello (role ENGINE), then one
MeterReadRequest per reading, answered by MeterValues. It is the same frame and
link layer as the sockets (evproto.aio), so keepalive, NACK and retransmission,
and duplicate suppression all come with it.
"""

from __future__ import annotations

import time

from evproto.aio import Link, open_link
from evproto.errors import LinkDownError, RequestTimeoutError, TransportError
from evproto.link import DownReason, LinkConfig
from evproto.messages import (
    ErrorReport,
    Hello,
    MeterReadRequest,
    MeterSignedReading,
    MeterSignedRequest,
    MeterTransaction,
    MeterValues,
    Role,
)

from .base import MeterGone, MeterProtocolError, MeterReading, MeterTimeout

__all__ = ["EvprotoMeter"]

# Link down reasons that mean the device itself is gone, not merely slow.
_GONE = {DownReason.CONNECTION_LOST}


class EvprotoMeter:
    """A meter speaking evproto at ``address`` (``/dev/ttyUSB0``, ``serial://...`` or ``tcp://host:port``)."""

    protocol = "evproto"

    def __init__(
        self,
        address: str,
        *,
        baudrate: int = 9600,
        timeout_s: float = 2.0,
        node_id: str = "engine",
        config: LinkConfig | None = None,
    ) -> None:
        if address.startswith("/"):
            address = f"serial://{address}?baudrate={baudrate}"
        elif address.startswith("serial://") and "baudrate=" not in address:
            address += ("&" if "?" in address else "?") + f"baudrate={baudrate}"
        self.address = address
        self.timeout_s = timeout_s
        self.node_id = node_id
        # A meter may take a moment: its keepalive is generous, retries quick.
        self.config = config or LinkConfig(ack_timeout_s=min(0.5, timeout_s / 3), handshake_timeout_s=timeout_s)
        self._link: Link | None = None

    @property
    def link(self) -> Link | None:
        """The open link (statistics: ``link.conn.stats``), None when closed."""
        return self._link

    async def open(self) -> None:
        await self.close()
        hello = Hello(role=Role.ENGINE, node_id=self.node_id, keepalive_ms=1000)
        try:
            self._link = await open_link(self.address, hello=hello, config=self.config)
        except TransportError as exc:
            raise MeterGone(str(exc)) from exc
        except LinkDownError as exc:
            if exc.reason in _GONE:
                raise MeterGone(f"{self.address}: {exc}") from exc
            raise MeterTimeout(f"{self.address}: no handshake with the meter ({exc})") from exc

    async def read(self) -> MeterReading:
        link = self._link
        if link is None or not link.is_open:
            down = link.down_event if link is not None else None
            if down is not None and down.reason not in _GONE:
                raise MeterTimeout(f"link to the meter ended: {down.reason.value}")
            raise MeterGone(f"{self.address}: not open")
        try:
            answer = await link.request(MeterReadRequest(), timeout_s=self.timeout_s)
        except RequestTimeoutError as exc:
            raise MeterTimeout(f"no meter values within {self.timeout_s:g} s") from exc
        except LinkDownError as exc:
            if exc.reason in _GONE:
                raise MeterGone(f"{self.address}: {exc}") from exc
            raise MeterTimeout(f"link to the meter ended: {exc}") from exc
        if not isinstance(answer, MeterValues):
            raise MeterProtocolError(f"the meter answered {type(answer).__name__}, not MeterValues")
        clock = answer.meter_timestamp_ms > 0
        return MeterReading(
            energy_wh=answer.energy_wh,
            power_w=answer.power_w,
            voltage_v=answer.voltage_v,
            current_a=answer.current_a,
            status=answer.status,
            timestamp_ms=answer.meter_timestamp_ms if clock else int(time.time() * 1000),
            meter_clock=clock,
        )

    async def read_signed(self, transaction: MeterTransaction, identification: str = "") -> MeterSignedReading:
        """The register signed by the meter as the ``transaction`` end of the supply named
        ``identification`` (OCMF, docs/hardware.md). An empty ``ocmf``: the meter does not
        sign (a meter that does not know the request answers ErrorReport: the same)."""
        link = self._link
        if link is None or not link.is_open:
            raise MeterGone(f"{self.address}: not open")
        request = MeterSignedRequest(transaction=transaction, identification=identification[:64])
        try:
            answer = await link.request(request, timeout_s=self.timeout_s)
        except RequestTimeoutError as exc:
            raise MeterTimeout(f"no signed reading within {self.timeout_s:g} s") from exc
        except LinkDownError as exc:
            raise MeterTimeout(f"link to the meter ended: {exc}") from exc
        if isinstance(answer, ErrorReport):
            return MeterSignedReading()
        if not isinstance(answer, MeterSignedReading):
            raise MeterProtocolError(f"the meter answered {type(answer).__name__}, not MeterSignedReading")
        return answer

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()
