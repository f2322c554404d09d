"""Meter driver 3: Modbus RTU DIN-rail meters (Eastron SDM630/SDM72, ABB B23) through pymodbus.

pymodbus does the framing (its RTU framer and CRC-16) and the serial port; this
module knows the register maps (:mod:`.modbus_map`) and turns what goes wrong into
our errors:

- no answer (a stalled meter, a wrong unit id, a wrong baud rate) -> MeterTimeout;
- bytes came back but no valid frame (bad CRC, garbled) -> MeterProtocolError;
- a Modbus exception response -> MeterProtocolError naming the exception code;
- the device missing or vanished -> MeterGone.

Several meters on one RS-485 line: drivers of the same port in one process share one
pymodbus client (:class:`ModbusLine`), whose lock makes each reading of one meter a
single run of requests that no other meter's requests interleave with. Two processes
cannot share a port (pymodbus opens it exclusively): read all meters of a bus from one
process.

Needs the ``modbus`` extra (``pip install 'evproto[modbus]'``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import termios
import time
from dataclasses import dataclass, field
from typing import Any

from evproto.endpoint import parse_endpoint
from evproto.errors import TransportError
from evproto.messages import MeterStatus

from .base import MeterGone, MeterProtocolError, MeterReading, MeterTimeout
from .modbus_map import FUNCTIONS, MeterMap, Quantity, ReadBlock, decode, load_map, read_plan

try:
    from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
    from pymodbus.exceptions import ConnectionException, ModbusException
    from pymodbus.framer import FramerType
except ImportError as exc:  # pragma: no cover - the bare library has no pymodbus
    raise ImportError("the Modbus meter driver needs pymodbus: pip install 'evproto[modbus]'") from exc

__all__ = ["ModbusMeter", "ModbusLine", "EXCEPTION_NAMES"]

log = logging.getLogger("evproto.hw")

# pymodbus logs every unanswered request at ERROR with a dump of the last frames: a meter that
# is absent would fill the log. The supervisor reports failures itself, rate-limited (the EVerest
# lesson), so pymodbus is quieted unless the application has set its level already.
if logging.getLogger("pymodbus").level == logging.NOTSET:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

#: Modbus exception codes, as the standard names them.
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


@dataclass(frozen=True, slots=True)
class _LineKey:
    kind: str  # "serial" or "tcp"
    where: str  # device path, or host:port
    baudrate: int
    parity: str
    stopbits: int


@dataclass(eq=False)
class ModbusLine:
    """One pymodbus client for one port, shared by every meter on it in this event loop."""

    key: _LineKey
    client: Any
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    #: Bytes received since the last request went out (pymodbus hides a frame it discarded).
    received: int = 0
    loop: asyncio.AbstractEventLoop | None = None

    def trace(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self.received = 0
        else:
            self.received += len(data)
        return data


_LINES: dict[tuple[int, _LineKey], ModbusLine] = {}


def _is_pty(path: str) -> bool:
    """Whether ``path`` is a pseudo-terminal's slave (Linux: Unix98 ptys have majors 136..143)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and 136 <= os.major(st.st_rdev) <= 143


class ModbusMeter:
    """A Modbus RTU meter with unit id ``unit`` on ``port``.

    ``port``: ``/dev/ttyUSB0``, ``serial:///dev/ttyUSB0?baudrate=19200&parity=E``, or
    ``tcp://host:port`` for RTU frames through a serial-to-Ethernet converter (and the
    simulator). ``model`` names a built-in map, ``map_path`` a map file. Line settings:
    ``baudrate`` and ``parity`` when given, else the URL's, else the map's factory ones.
    """

    protocol = "modbus"

    def __init__(
        self,
        port: str,
        *,
        model: str | None = None,
        map_path: str | None = None,
        unit: int = 1,
        baudrate: int | None = None,
        parity: str | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        if not 1 <= unit <= 247:
            raise ValueError(f"Modbus unit id {unit} is outside 1..247")
        self.map: MeterMap = load_map(model, path=map_path) if map_path else load_map(model or "sdm630")
        self.plan: list[ReadBlock] = read_plan(self.map)
        self.unit = unit
        self.timeout_s = timeout_s
        try:
            ep = parse_endpoint(port)
        except TransportError as exc:
            raise ValueError(str(exc)) from None
        if ep.scheme == "tcp":
            key = _LineKey("tcp", f"{ep.host}:{ep.port}", 0, "N", 1)
        elif ep.scheme == "serial" and "://" not in ep.path:
            given = port.partition("?")[2]
            baud = baudrate or (int(ep.options["baudrate"]) if "baudrate=" in given else self.map.baudrate)  # type: ignore[call-overload]
            par = (parity or (str(ep.options["parity"]) if "parity=" in given else self.map.parity)).upper()
            if par not in ("N", "E", "O"):
                raise ValueError(f"parity {par!r}: use N, E or O")
            stop = int(ep.options["stopbits"]) if "stopbits=" in given else self.map.stopbits  # type: ignore[call-overload]
            key = _LineKey("serial", ep.path, baud, par, stop)
        else:
            raise ValueError(f"{port}: the Modbus driver reads a serial device or tcp://host:port")
        self.key = key
        self.port = port
        self._line: ModbusLine | None = None
        #: Every quantity of the last good reading, in the units its name says (per-phase values too).
        self.last_values: dict[Quantity, float] = {}
        #: Bad frames and exception responses seen (the supervisor counts failed readings).
        self.counters = {"garbled": 0, "exceptions": 0, "timeouts": 0}

    def __repr__(self) -> str:
        return f"ModbusMeter({self.port!r}, model={self.map.model!r}, unit={self.unit})"

    async def open(self) -> None:
        await self.close()
        loop = asyncio.get_running_loop()
        loop_key = (id(loop), self.key)
        line = _LINES.get(loop_key)
        if line is None or line.loop is not loop:  # none yet, or left by a loop that has ended
            line = await self._connect()
            line.loop = loop
            _LINES[loop_key] = line
        line.users += 1
        self._line = line

    async def _connect(self) -> ModbusLine:
        key = self.key
        line = ModbusLine(key=key, client=None)
        # Retries are the supervisor's job (one quick retry per cycle), and so is reconnecting
        # with backoff: pymodbus does neither here.
        common: dict[str, Any] = {
            "framer": FramerType.RTU,
            "timeout": self.timeout_s,
            "retries": 0,
            "reconnect_delay": 0,
            "trace_packet": line.trace,
        }
        if key.kind == "tcp":
            host, _, port = key.where.rpartition(":")
            line.client = AsyncModbusTcpClient(host, port=int(port), **common)
        else:
            if not os.path.exists(key.where):
                raise MeterGone(f"{key.where}: no such device")
            if key.parity != "N" and _is_pty(key.where):
                # A pty (the simulator) refuses parity, and pyserial then keeps the port locked:
                # use none, and say so. A real line must have the meter's parity.
                log.warning("%s is a pty: parity %s not possible, using none", key.where, key.parity)
                key = _LineKey(key.kind, key.where, key.baudrate, "N", key.stopbits)
            line.client = self._serial_client(key, common)
        try:
            connected = await line.client.connect()
        except termios.error as exc:
            raise MeterGone(f"{key.where}: the port refuses {key.baudrate} baud, parity {key.parity}: {exc}") from exc
        if not connected:
            line.client.close()
            raise MeterGone(f"{self.port}: cannot open the Modbus line")
        return line

    @staticmethod
    def _serial_client(key: _LineKey, common: dict[str, Any]) -> Any:
        return AsyncModbusSerialClient(
            key.where, baudrate=key.baudrate, parity=key.parity, stopbits=key.stopbits, bytesize=8, **common
        )

    async def read(self) -> MeterReading:
        line = self._line
        if line is None:
            raise MeterGone(f"{self.port}: not open")
        values: dict[Quantity, float] = {}
        # One meter's reading is one run of requests: another meter on the line waits for it
        # (each holder is bounded by its own timeout), and the wait is not counted against ours.
        async with line.lock:
            deadline = time.monotonic() + self.timeout_s
            for block in self.plan:
                registers = await self._read_block(line, block, deadline)
                for spec in block.specs:
                    offset = spec.address - block.address
                    values[spec.quantity] = decode(spec, registers[offset : offset + spec.count])
        self.last_values = values
        power = values.get(Quantity.POWER_W, 0.0)
        return MeterReading(
            energy_wh=values[Quantity.ENERGY_IMPORT_WH],
            power_w=power,
            voltage_v=values.get(Quantity.VOLTAGE_L1_V),
            current_a=values.get(Quantity.CURRENT_L1_A),
            status=MeterStatus.LOAD_ON if power > 0 else MeterStatus.NONE,
            timestamp_ms=int(time.time() * 1000),
        )

    async def probe(self) -> float:
        """Read the energy register alone (what ``evcp-meter scan`` asks each unit id): its value in Wh."""
        line = self._line
        if line is None:
            raise MeterGone(f"{self.port}: not open")
        spec = self.map.registers[Quantity.ENERGY_IMPORT_WH]
        block = ReadBlock(function=spec.function, address=spec.address, count=spec.count, specs=(spec,))
        async with line.lock:
            registers = await self._read_block(line, block, time.monotonic() + self.timeout_s)
        return decode(spec, registers)

    async def _read_block(self, line: ModbusLine, block: ReadBlock, deadline: float) -> list[int]:
        client = line.client
        if not client.connected:
            raise MeterGone(f"{self.port}: the device went away")
        request = client.read_input_registers if FUNCTIONS[block.function] == 4 else client.read_holding_registers
        what = f"unit {self.unit} {block.function} registers {block.address:#06x}+{block.count}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MeterTimeout(f"no complete reading within {self.timeout_s:g} s")
        try:
            answer = await asyncio.wait_for(request(block.address, count=block.count, device_id=self.unit), remaining)
        except asyncio.TimeoutError:
            raise self._silence(line, what) from None
        except ConnectionException as exc:
            raise MeterGone(f"{self.port}: {exc}") from exc
        except ModbusException as exc:  # pymodbus's own timeout ("No response received ...")
            if not client.connected:
                raise MeterGone(f"{self.port}: the device went away") from exc
            raise self._silence(line, what) from None
        except OSError as exc:
            raise MeterGone(f"{self.port}: {exc}") from exc
        if answer.isError():
            code = int(getattr(answer, "exception_code", 0))
            self.counters["exceptions"] += 1
            raise MeterProtocolError(f"{what}: Modbus exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})")
        registers = list(answer.registers)
        if len(registers) != block.count:
            self.counters["garbled"] += 1
            raise MeterProtocolError(f"{what}: {len(registers)} registers in the answer")
        return registers

    def _silence(self, line: ModbusLine, what: str) -> MeterTimeout | MeterProtocolError:
        if line.received:
            self.counters["garbled"] += 1
            return MeterProtocolError(f"{what}: {line.received} bytes came back but no valid frame (bad CRC?)")
        self.counters["timeouts"] += 1
        return MeterTimeout(f"{what}: no answer within {self.timeout_s:g} s (stalled, wrong unit id or baud rate?)")

    async def close(self) -> None:
        line, self._line = self._line, None
        if line is None:
            return
        line.users -= 1
        if line.users <= 0:
            for k, v in list(_LINES.items()):
                if v is line:
                    del _LINES[k]
            line.client.close()
