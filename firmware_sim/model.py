"""The simulated meter's physics: an energy register integrating power while a load is on."""

from __future__ import annotations

import time
from typing import Callable

from evproto.messages import MeterStatus

__all__ = ["MeterModel"]


class MeterModel:
    """Energy (Wh) integrates ``power_kw`` over time while ``load_on``; ``reset()`` zeroes it
    (a spurious reset, as a meter that rebooted). ``time_scale`` speeds up the energy only."""

    def __init__(
        self,
        *,
        power_kw: float = 7.4,
        load_on: bool = True,
        energy_wh: float = 0.0,
        voltage_v: float = 230.0,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.power_kw = power_kw
        self.voltage_v = voltage_v
        self.time_scale = time_scale
        self._clock = clock
        self._load = load_on
        self._energy_wh = energy_wh
        self._last = clock()
        self.resets = 0
        self._reset_flag = False

    def _advance(self) -> None:
        now = self._clock()
        if self._load:
            self._energy_wh += self.power_kw * 1000.0 * (now - self._last) * self.time_scale / 3600.0
        self._last = now

    @property
    def load_on(self) -> bool:
        return self._load

    def set_load(self, on: bool, power_kw: float | None = None) -> None:
        self._advance()
        self._load = on
        if power_kw is not None:
            self.power_kw = power_kw

    def reset(self) -> None:
        """The register restarts from zero (the next reading carries COUNTER_RESET)."""
        self._advance()
        self._energy_wh = 0.0
        self.resets += 1
        self._reset_flag = True

    def read(self) -> tuple[float, float, float | None, float | None, MeterStatus]:
        """(energy_wh, power_w, voltage_v, current_a, status) now."""
        self._advance()
        power_w = self.power_kw * 1000.0 if self._load else 0.0
        status = MeterStatus.LOAD_ON if self._load else MeterStatus.NONE
        if self._reset_flag:
            status |= MeterStatus.COUNTER_RESET
            self._reset_flag = False
        current = power_w / self.voltage_v if self.voltage_v else None
        return self._energy_wh, power_w, self.voltage_v, current, status
