"""The simulated meter's signing: its start and end readings as OCMF (docs/hardware.md)."""

from __future__ import annotations

import time
from typing import Callable

from evproto.hw import ocmf
from evproto.messages import MeterSignedReading, MeterTransaction

__all__ = ["MeterSigner"]

_TX = {MeterTransaction.BEGIN: "B", MeterTransaction.END: "E"}


class MeterSigner:
    """Signs register values with the meter's P-256 key; each signed reading takes the
    next transaction counter (``PG`` T1, T2...), as a real meter's does."""

    def __init__(
        self,
        key: ocmf.ec.EllipticCurvePrivateKey,
        *,
        meter_serial: str,
        gateway_id: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.meter_serial = meter_serial
        self.gateway_id = gateway_id
        self.public_key_der = bytes.fromhex(ocmf.public_key_hex(key))
        self._clock = clock
        self.counter = 0

    def sign(self, transaction: MeterTransaction, identification: str, energy_wh: float) -> MeterSignedReading:
        self.counter += 1
        payload = ocmf.build_payload(
            meter_serial=self.meter_serial,
            pagination=self.counter,
            transaction=_TX[transaction],
            energy_wh=energy_wh,
            ts_ms=int(self._clock() * 1000),
            identification=identification[:64],
            gateway_id=self.gateway_id,
        )
        text = ocmf.sign_payload(payload, self.key)
        return MeterSignedReading(ocmf=text.encode("ascii"), public_key=self.public_key_der)
