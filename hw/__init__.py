"""Real meter drivers over serial lines (installed as ``evproto.hw``).

A driver opens a device, takes readings (:class:`~.base.MeterReading`) and closes;
:class:`~.supervisor.MeterSupervisor` keeps one read and reports faults. Drivers:

- ``evproto``: our framed protocol over serial (MeterReadRequest -> MeterValues);
- ``iec62056-21``: mode C readout, as most European electricity meters speak on their
  optical port or RS-485.

- ``modbus``: Modbus RTU DIN-rail meters (Eastron SDM630/SDM72, ABB B23) through
  pymodbus, register maps as data (the ``modbus`` extra).

More plug in through :data:`PROTOCOLS` without touching the engine.
"""

from __future__ import annotations

from typing import Callable

from .base import MeterDriver, MeterError, MeterGone, MeterProtocolError, MeterReading, MeterTimeout

__all__ = [
    "PROTOCOLS",
    "make_driver",
    "MeterDriver",
    "MeterReading",
    "MeterError",
    "MeterTimeout",
    "MeterProtocolError",
    "MeterGone",
]


def _evproto(port: str, *, baudrate: int | None, address: str, timeout_s: float) -> MeterDriver:
    from .evproto_meter import EvprotoMeter

    return EvprotoMeter(port, baudrate=baudrate or 9600, timeout_s=timeout_s)


def _iec(port: str, *, baudrate: int | None, address: str, timeout_s: float) -> MeterDriver:
    from .iec_driver import Iec62056Meter

    return Iec62056Meter(port, address=address, max_baud=baudrate, timeout_s=timeout_s)


def _modbus(port: str, *, baudrate: int | None, address: str, timeout_s: float, **options: object) -> MeterDriver:
    from .modbus_meter import ModbusMeter  # imports pymodbus: only when asked for

    unit = options.pop("unit", None) or (int(address) if address else 1)
    return ModbusMeter(port, baudrate=baudrate, unit=int(unit), timeout_s=timeout_s, **options)  # type: ignore[arg-type]


#: Protocol name -> factory(port, baudrate=, address=, timeout_s=, **protocol options).
PROTOCOLS: dict[str, Callable[..., MeterDriver]] = {"evproto": _evproto, "iec62056-21": _iec, "modbus": _modbus}


def make_driver(
    protocol: str,
    port: str,
    *,
    baudrate: int | None = None,
    address: str = "",
    timeout_s: float = 2.0,
    **options: object,
) -> MeterDriver:
    """A driver for ``protocol`` on ``port`` (a device path, ``serial://...`` or ``tcp://host:port``).

    ``options`` are the protocol's own (modbus: ``model``, ``map_path``, ``unit``, ``parity``)."""
    try:
        factory = PROTOCOLS[protocol]
    except KeyError:
        raise ValueError(f"unknown meter protocol {protocol!r} (known: {', '.join(PROTOCOLS)})") from None
    return factory(port, baudrate=baudrate, address=address, timeout_s=timeout_s, **options)
