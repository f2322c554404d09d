"""The engine's built-in simulated meter (real hardware: evproto.hw drivers), and the
wrapper that tells the engine the moment any meter's reading arrives."""

from __future__ import annotations

import asyncio
import json
import os
import time

from evproto.hw.base import MeterDriver, MeterReading
from evproto.messages import MeterStatus

from ..files import makedirs

__all__ = ["ReadingSignal", "SimulatedMeter"]

#: Bytes of the simulated register's record: one write() of a fixed size, overwritten in place.
_REGISTER_RECORD = 96


class SimulatedMeter:
    """A meter driver whose energy integrates a constant power while the load is on.

    ``time_scale`` speeds the simulation up for demos (60: a minute of charging
    per second); it never changes how anything else in the network behaves.

    ``register_path``: where the simulated device keeps its register, as a real meter
    keeps its own in non-volatile memory: an engine that is killed and restarted finds
    the register (and when it was last read) where it was. One small write per changed
    reading, in place and without fsync: it survives the engine's process, not a power
    cut of the host (then the engine's last checkpoint is what is known).
    """

    protocol = "simulated"

    def __init__(
        self, *, power_kw: float = 22.0, time_scale: float = 1.0, clock=time.monotonic, register_path: str | None = None
    ) -> None:
        if power_kw <= 0 or time_scale <= 0:
            raise ValueError("power_kw and time_scale must be positive")
        self.power_w = power_kw * 1000.0
        self.time_scale = time_scale
        self._clock = clock
        self._load = False
        self._energy_wh = 0.0
        self._last = clock()
        self._register_path = register_path
        self._register_fd: int | None = None
        self._written_wh: float | None = None
        self._saved = self._load_register()
        if self._saved is not None:
            self._energy_wh = self._written_wh = self._saved[0]

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

    def last_register(self) -> tuple[float, int] | None:
        """The register and when it was read (epoch ms) before this process started, if kept."""
        return self._saved

    def _load_register(self) -> tuple[float, int] | None:
        if self._register_path is None:
            return None
        try:
            with open(self._register_path, encoding="ascii") as fh:
                data = json.loads(fh.read())
            return float(data["energy_wh"]), int(data["ts_ms"])
        except (OSError, ValueError, TypeError, KeyError):
            return None  # none yet, or torn by a power cut: the engine's checkpoint is what is known

    def _keep_register(self, energy_wh: float, ts_ms: int) -> None:
        if self._register_path is None or energy_wh == self._written_wh:
            return
        if self._register_fd is None:
            makedirs(os.path.dirname(os.path.abspath(self._register_path)))
            self._register_fd = os.open(self._register_path, os.O_WRONLY | os.O_CREAT, 0o600)
        record = json.dumps({"energy_wh": energy_wh, "ts_ms": ts_ms}).encode().ljust(_REGISTER_RECORD)
        os.pwrite(self._register_fd, record, 0)
        self._written_wh = energy_wh

    async def open(self) -> None:
        return None

    async def read(self) -> MeterReading:
        self._advance()
        power = self.power_w if self._load else 0.0
        ts_ms = int(time.time() * 1000)
        self._keep_register(self._energy_wh, ts_ms)
        return MeterReading(
            energy_wh=self._energy_wh,
            power_w=power,
            timestamp_ms=ts_ms,
            status=MeterStatus.LOAD_ON if self._load else MeterStatus.NONE,
        )

    async def close(self) -> None:
        if self._register_fd is not None:
            os.close(self._register_fd)
            self._register_fd = None


class ReadingSignal:
    """Wraps the driver the meter supervisor reads: :attr:`arrived` is set as each reading
    comes back, so the engine handles it at once instead of at its next tick."""

    def __init__(self, driver: MeterDriver) -> None:
        self.driver = driver
        self.protocol = driver.protocol
        self.arrived = asyncio.Event()

    async def open(self) -> None:
        await self.driver.open()

    async def read(self) -> MeterReading:
        reading = await self.driver.read()
        # The supervisor stores it before it next yields, so it is there when the engine wakes.
        self.arrived.set()
        return reading

    async def close(self) -> None:
        await self.driver.close()
