"""Meters the engine reads: the built-in simulation (real hardware lives in evproto.hw)."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Meter", "SimulatedMeter"]


class Meter(Protocol):
    """Anything that reports an energy register (Wh) and the present power (W)."""

    async def read(self) -> tuple[float, float]:
        """(energy_wh, power_w) now; raises on a failed reading."""

    def set_load(self, on: bool) -> None:
        """Whether a vehicle is drawing power (only a simulation needs telling)."""

    def restore_register(self, energy_wh: float) -> None:
        """After an engine restart: the register value last seen (a real meter keeps its own)."""

    async def close(self) -> None: ...


class SimulatedMeter:
    """Energy integrates from a constant power while the load is on.

    ``time_scale`` speeds the simulation up for demos (60: a minute of charging
    per second); it never changes how anything else in the network behaves.
    """

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
        self._advance()
        self._load = on

    async def read(self) -> tuple[float, float]:
        self._advance()
        return self._energy_wh, (self.power_w if self._load else 0.0)

    def restore_register(self, energy_wh: float) -> None:
        # A real meter's register survives an engine restart; the simulated one carries on from it.
        self._advance()
        self._energy_wh = max(self._energy_wh, energy_wh)

    async def close(self) -> None:
        return None
