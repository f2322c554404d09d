"""What every meter driver offers: open, read values, close; and the errors it raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from evproto.errors import EvprotoError
from evproto.messages import MeterStatus

__all__ = [
    "MeterReading",
    "MeterDriver",
    "MeterError",
    "MeterTimeout",
    "MeterProtocolError",
    "MeterGone",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterReading:
    """One reading. Energy is the meter's import register; optional values are None when
    the meter does not report them. ``timestamp_ms`` is the meter's clock when it has one,
    else the time the reading arrived (epoch ms)."""

    energy_wh: float
    power_w: float
    timestamp_ms: int
    voltage_v: float | None = None
    current_a: float | None = None
    status: MeterStatus = MeterStatus.NONE
    meter_clock: bool = False

    def as_json(self) -> dict[str, object]:
        return {
            "energy_wh": self.energy_wh,
            "power_w": self.power_w,
            "voltage_v": self.voltage_v,
            "current_a": self.current_a,
            "status": int(self.status),
            "timestamp": self.timestamp_ms,
            "meter_clock": self.meter_clock,
        }


class MeterError(EvprotoError):
    """A reading could not be taken."""


class MeterTimeout(MeterError):
    """The meter did not answer in time (it may be busy, stalled or gone)."""


class MeterProtocolError(MeterError):
    """The meter answered with something that is not a valid reading (bad checksum, bad format)."""


class MeterGone(MeterError):
    """The device is not there: unplugged, USB adapter removed, permission denied."""


class MeterDriver(Protocol):
    """A meter on a serial line (or TCP). Drivers are async and own their transport."""

    #: Short protocol name, e.g. "evproto" or "iec62056-21".
    protocol: str

    async def open(self) -> None:
        """Open the device; MeterGone if it is not there."""

    async def read(self) -> MeterReading:
        """Take one reading within the driver's timeout; MeterError subclasses on failure."""

    async def close(self) -> None:
        """Release the device (idempotent)."""
