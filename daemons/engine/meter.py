"""The engine's built-in simulated meter (real hardware: evproto.hw drivers)."""

from __future__ import annotations

import time

from evproto.hw.base import MeterReading
from evproto.messages import MeterStatus

__all__ = ["SimulatedMeter"]


class SimulatedMeter:
    """A meter driver whose energy integrates a constant power while the load is on.

    ``time_scale`` speeds the simulation up for demos (60: a minute of charging
    per second); it never changes how anything else in the network behaves.
    """

    protocol = "simulated"

    def __init__(self, *, power_kw: float = 22.0, time_scale: float = 1.0, clock=time.monotonic) -> None:
        if power_kw <= 0 or time_scale <= 0:
            raise ValueError("power_kw and time_scale must be positive")
        self.power_w = power_kw * 1000.0
        self.time_scale = time_scale
        self._clock = clock
        self._load = False
        self._energy_wh = 0.0
        self._last = clock()

    def _advance(self) -> None:
        now = self._clock()
        if self._load:
            self._energy_wh += self.power_w * (now - self._last) * self.time_scale / 3600.0
        self._last = now

    def set_load(self, on: bool) -> None:
        """Whether a vehicle draws power (a real meter just measures it)."""
        self._advance()
        self._load = on

    def restore_register(self, energy_wh: float) -> None:
        """After an engine restart: carry on from the register last seen (a real meter keeps its own)."""
        self._advance()
        self._energy_wh = max(self._energy_wh, energy_wh)

    async def open(self) -> None:
        return None

    async def read(self) -> MeterReading:
        self._advance()
        power = self.power_w if self._load else 0.0
        return MeterReading(energy_wh=self._energy_wh, power_w=power, timestamp_ms=int(time.time() * 1000),
                            status=MeterStatus.LOAD_ON if self._load else MeterStatus.NONE)

    async def close(self) -> None:
        return None
