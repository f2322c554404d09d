"""The engine's signed meter values (OCMF, docs/hardware.md): it asks the meter to sign its
register when a supply starts and when it ends, and puts both into ``supply_finished``.

When both readings check (signatures, same meter, a begin then an end) the supply bills
what they prove: energy = end - begin at the register's 1 Wh resolution. With
``require`` a supply whose readings are missing, unsigned or do not check ends as a
fault: at its start (the begin reading) or in its report (the end reading).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, Callable

from evproto.domain.events import SupplyFinished, SupplyStarted
from evproto.hw import ocmf
from evproto.hw.base import MeterError
from evproto.messages import EndReason, MeterSignedReading, MeterTransaction

__all__ = ["SignedReadings", "identification"]

log = logging.getLogger("evproto.engine")

#: Begin readings kept for supplies not finished yet (one runs at a time; a few are plenty).
_MAX_PENDING = 8


def identification(driver_id: str, session_id: int, started_ts_ms: int) -> str:
    """What the meter writes as a supply's identification (OCMF ``ID``): the same at its
    begin and end, different for every supply."""
    return f"{driver_id}/{session_id}/{started_ts_ms}"[:64]


def _ident(ev: SupplyStarted | SupplyFinished) -> str:
    return identification(ev.driver_id, ev.session_id, ev.started_ts_ms)


class SignedReadings:
    """Signed begin/end readings of the engine's supplies.

    ``read_signed``: the meter driver's method (None: the meter cannot sign);
    ``public_key_hex``: the meter's key to check against (None: the key it presents).
    """

    def __init__(
        self,
        read_signed: Callable[..., Any] | None,
        *,
        require: bool = False,
        public_key_hex: str | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        self.read_signed = read_signed
        self.require = require
        self.public_key_hex = public_key_hex
        self.timeout_s = timeout_s
        self._begins: dict[str, asyncio.Task[MeterSignedReading]] = {}

    @property
    def active(self) -> bool:
        """Whether supplies' reports wait for the end reading (or, required, fail without one)."""
        return self.read_signed is not None or self.require

    async def _ask(self, transaction: MeterTransaction, ident: str) -> MeterSignedReading:
        if self.read_signed is None:
            return MeterSignedReading()
        try:
            answer: MeterSignedReading = await asyncio.wait_for(
                self.read_signed(transaction, ident), self.timeout_s * 2
            )
            return answer
        except (MeterError, OSError, asyncio.TimeoutError) as exc:
            log.warning("no signed %s reading from the meter: %s", transaction.name.lower(), exc)
            return MeterSignedReading()

    def started(self, ev: SupplyStarted) -> asyncio.Task[MeterSignedReading] | None:
        """Ask for the signed begin reading of the supply ``ev`` started (None: cannot sign)."""
        if not self.active:
            return None
        ident = _ident(ev)
        task = asyncio.ensure_future(self._ask(MeterTransaction.BEGIN, ident))
        self._begins[ident] = task
        while len(self._begins) > _MAX_PENDING:
            self._begins.pop(next(iter(self._begins))).cancel()
        return task

    def _key(self, *readings: MeterSignedReading) -> ocmf.ec.EllipticCurvePublicKey:
        if self.public_key_hex:
            return ocmf.load_public_key(self.public_key_hex)
        presented = next((r.public_key for r in readings if r.public_key), b"")
        if not presented:
            raise ocmf.OcmfError(ocmf.OcmfProblem.SIGNATURE, "the meter presented no public key")
        return ocmf.load_public_key(presented)

    def check_begin(self, reading: MeterSignedReading) -> str | None:
        """Why a begin reading is not acceptable, or None."""
        try:
            text = reading.ocmf.decode("ascii")
            ocmf.parse(text)  # unsigned or malformed says so before any key is looked at
            ocmf.verify(text, self._key(reading))
        except UnicodeDecodeError:
            return "malformed: not ASCII"
        except ocmf.OcmfError as exc:
            return str(exc)
        return None

    async def finish(self, ev: SupplyFinished) -> SupplyFinished:
        """``ev`` with the supply's signed readings; its energy from them when they check;
        with ``require``, reason ``fault`` when they do not."""
        ident = _ident(ev)
        begin_task = self._begins.pop(ident, None)
        begin = MeterSignedReading()
        if begin_task is not None and not begin_task.cancelled():
            begin = await begin_task  # popped: nothing else cancels it now
        end = await self._ask(MeterTransaction.END, ident)
        texts = [r.ocmf.decode("ascii", "replace")[: ocmf.MAX_OCMF_LEN] for r in (begin, end)]
        key_hex = (end.public_key or begin.public_key).hex()[:512]
        changes: dict[str, Any] = {"ocmf_begin": texts[0], "ocmf_end": texts[1], "meter_public_key": key_hex}
        problem: str | None = None
        try:
            for text in texts:
                ocmf.parse(text)  # unsigned or malformed says so before any key is looked at
            pair = ocmf.check_pair(texts[0], texts[1], self._key(begin, end))
        except ocmf.OcmfError as exc:
            problem = str(exc)
        else:
            changes["energy_kwh"] = pair.energy_kwh
            changes["amount_eur"] = pair.energy_kwh * ev.price_eur_kwh
        if problem is not None:
            if self.require:
                log.error("supply %s: signed meter values required, %s: it ends as a fault", ev.session_id, problem)
                changes["reason"] = EndReason.FAULT.token
            elif self.read_signed is not None and (texts[0] or texts[1]):
                log.warning("supply %s: its signed meter values do not check (%s)", ev.session_id, problem)
        try:
            return dataclasses.replace(ev, **changes)
        except (TypeError, ValueError) as exc:  # pragma: no cover - the schemas are checked when it is sent
            log.error("supply %s: cannot attach its signed readings: %s", ev.session_id, exc)
            return ev
