"""Keeps a meter read, and says when it is faulty: the engine's view of its meter.

Lessons from EVerest's meter drivers (docs/hardware.md): fail fast on a timeout
and retry quickly; after two failed read cycles raise a communication fault,
and clear it automatically on the next good reading; never hand out a stale
reading as if it were fresh; reopen a device that disappeared with backoff; and
do not flood the log while a device is absent.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from evproto.backoff import Backoff
from evproto.messages import FaultCode
from evproto.ratelog import RateLimitedLog

from .base import MeterDriver, MeterError, MeterGone, MeterProtocolError, MeterReading, MeterTimeout

__all__ = ["MeterSupervisor", "MeterHealth"]

log = logging.getLogger("evproto.hw")


@dataclass
class MeterHealth:
    """The meter's condition as the engine should report it."""

    #: None when fine; else METER_TIMEOUT (not answering, or answering garbage) or METER_LOST (device gone).
    fault: FaultCode | None = None
    #: What the last failure said (for logs and the fault report).
    detail: str = ""
    failed_cycles: int = 0
    counters: dict[str, int] = field(
        default_factory=lambda: {"readings": 0, "timeouts": 0, "protocol_errors": 0, "gone": 0, "reopened": 0}
    )


class MeterSupervisor:
    """Reads ``driver`` every ``interval_s``; :meth:`take` hands out each fresh reading once.

    A read cycle is one reading attempt plus ``retries`` quick retries; after
    ``fault_after_cycles`` failed cycles :attr:`health` reports a fault.
    """

    def __init__(
        self,
        driver: MeterDriver,
        *,
        interval_s: float = 1.0,
        retries: int = 1,
        retry_delay_s: float = 0.1,
        fault_after_cycles: int = 2,
        backoff: Backoff | None = None,
    ) -> None:
        self.driver = driver
        self.interval_s = interval_s
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self.fault_after_cycles = fault_after_cycles
        self.backoff = backoff or Backoff(initial_s=0.5, max_s=10.0)
        self.health = MeterHealth()
        self._fresh: MeterReading | None = None
        self._open = False
        self._warn = RateLimitedLog(log)
        self._task: asyncio.Task[None] | None = None

    def take(self) -> MeterReading | None:
        """The reading taken since the last call, or None: never the same reading twice."""
        reading, self._fresh = self._fresh, None
        return reading

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.driver.close()

    async def read_once(self) -> MeterReading:
        """One read cycle now (opening the device if needed); raises the last MeterError."""
        if not self._open:
            await self._reopen_once()
        last: MeterError | None = None
        for attempt in range(self.retries + 1):
            try:
                reading = await self.driver.read()
            except MeterGone as exc:
                self._open = False
                raise exc
            except MeterTimeout as exc:
                self.health.counters["timeouts"] += 1
                last = exc
            except MeterProtocolError as exc:
                self.health.counters["protocol_errors"] += 1
                self._warn.log(logging.WARNING, f"meter sent garbage: {exc}")
                last = exc
            else:
                self.health.counters["readings"] += 1
                return reading
            if attempt < self.retries:
                await asyncio.sleep(self.retry_delay_s)
        assert last is not None
        # A link that ended needs a new session (and tells us whether the device is still there).
        self._open = False
        raise last

    async def _reopen_once(self) -> None:
        await self.driver.close()
        await self.driver.open()
        self._open = True
        self.health.counters["reopened"] += 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                reading = await self.read_once()
            except MeterGone as exc:
                self.health.counters["gone"] += 1
                self._failed(FaultCode.METER_LOST, f"device gone: {exc}")
                delay = self.backoff.next_delay()
                self._warn.log(logging.WARNING, f"meter unavailable ({exc}); retrying in {delay:.1f} s")
                await asyncio.sleep(delay)
                next_at = loop.time()
                continue
            except MeterError as exc:
                self._failed(
                    FaultCode.METER_TIMEOUT,
                    f"timeout: {exc}" if isinstance(exc, MeterTimeout) else f"bad answers: {exc}",
                )
            else:
                self.backoff.reset()
                self._fresh = reading
                if self.health.fault is not None:
                    log.info("meter readings resumed: fault cleared")
                self.health.fault = None
                self.health.detail = ""
                self.health.failed_cycles = 0
            next_at += self.interval_s
            now = loop.time()
            if next_at < now:
                next_at = now
            await asyncio.sleep(next_at - now)

    def _failed(self, fault: FaultCode, why: str) -> None:
        health = self.health
        health.failed_cycles += 1
        health.detail = why
        if health.failed_cycles >= self.fault_after_cycles and health.fault is None:
            health.fault = fault
            log.error("meter fault after %d failed read cycles: %s", health.failed_cycles, why)
        elif health.fault is not None:
            health.fault = fault  # a stalled meter may turn out gone, and a reopened one stalled
