"""The simulated Modbus RTU meter: pymodbus's own server plays the meter, we play the cable.

pymodbus's serial server runs on a pty of its own (the meter's RS-485 transceiver);
each client session (the simulator's pty, or a TCP connection) is relayed to it byte
for byte through the existing fault injection (:class:`~.faults.Faults`): a stall is
silence, ``corrupt N`` damages the CRC of the next N answers, drop/garbage/split damage
the bytes. The registers are filled from the meter model (:class:`~.model.MeterModel`)
at each request, through the register map of the chosen model, so the energy register
advances as the other protocols' does. Faults of the meter itself: ``exception N
[CODE]`` answers the next N requests with a Modbus exception; a client at another baud
rate than the meter's (pty only, where the line's speed can be seen) or asking another
unit id gets no answer, as on a real bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
import tty
from typing import Callable

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from evproto.aio import open_fd_stream
from evproto.hw.modbus_map import FUNCTIONS, MeterMap, Quantity, encode

from .faults import Faults, FaultyWriter
from .model import MeterModel

__all__ = ["ModbusBackend", "pty_baudrate"]

log = logging.getLogger("evproto.firmware_sim")
# pymodbus logs every request for another unit id and every frame at length: ours says what matters.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

#: termios speed constants -> baud rate.
_SPEEDS = {
    getattr(termios, f"B{b}"): b
    for b in (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
    if hasattr(termios, f"B{b}")
}


def pty_baudrate(master_fd: int) -> int | None:
    """The speed the client set on the pty's other end (a pty master reports its slave's settings)."""
    try:
        return _SPEEDS.get(termios.tcgetattr(master_fd)[4])
    except termios.error:
        return None


class ModbusBackend:
    """pymodbus's server for one meter (``unit``) with ``meter_map``'s registers."""

    def __init__(
        self, model: MeterModel, faults: Faults, *, meter_map: MeterMap, unit: int = 1, baudrate: int | None = None
    ) -> None:
        self.model = model
        self.faults = faults
        self.map = meter_map
        self.unit = unit
        self.baudrate = baudrate or meter_map.baudrate
        #: The next N requests are answered with Modbus exception ``exception_code``.
        self.exceptions_next = 0
        self.exception_code = ExcCodes.DEVICE_FAILURE
        self.counts = {"requests": 0, "exceptions": 0, "wrong_baud": 0}
        self._lock = asyncio.Lock()
        self._master = self._slave = -1
        self._server: ModbusSerialServer | None = None
        self._request_unit: int | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def _device(self) -> SimDevice:
        blocks: dict[str, list[SimData]] = {"holding": [], "input": []}
        for spec in self.map.registers.values():
            blocks[spec.function].append(SimData(spec.address, values=[0] * spec.count, datatype=DataType.REGISTERS))
        # pymodbus wants every block non-empty; a lone invalid register stands in for an unused one.
        for name, block in blocks.items():
            if not block:
                block.append(SimData(0xFFFE, datatype=DataType.INVALID))
        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        return SimDevice(
            id=self.unit, simdata=(bits, list(bits), blocks["holding"], blocks["input"]), action=self._action
        )

    async def start(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._master)
        tty.setraw(self._slave)
        self._server = ModbusSerialServer(
            self._device(),
            framer=FramerType.RTU,
            port=os.ttyname(self._slave),
            baudrate=self.baudrate,
            trace_packet=self._trace,
        )
        await self._server.serve_forever(background=True)
        self._reader, self._writer = await open_fd_stream(self._master)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        # A meter on a bus stays silent to requests for other unit ids. pymodbus 3.16's server
        # answers them with an exception (its ignore_missing_devices does not reach its SimDevice
        # core), so the answer is swallowed here, through its documented packet hook.
        if not sending:
            if data:
                self._request_unit = data[0]
            return data
        if self._request_unit not in (self.unit, None):
            return b""
        return data

    async def close(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.shutdown()
        if self._writer is not None:
            self._writer.close()
        for fd in (self._slave, self._master):
            with contextlib.suppress(OSError):
                os.close(fd)

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        self.counts["requests"] += 1
        if self.exceptions_next > 0:
            self.exceptions_next -= 1
            self.counts["exceptions"] += 1
            return self.exception_code
        energy, power, voltage, current, _status = self.model.read()
        # One vehicle on a three-phase meter: all of it on L1 (a single-phase charge).
        values = {
            Quantity.ENERGY_IMPORT_WH: energy,
            Quantity.ENERGY_IMPORT_L1_WH: energy,
            Quantity.ENERGY_IMPORT_L2_WH: 0.0,
            Quantity.ENERGY_IMPORT_L3_WH: 0.0,
            Quantity.ENERGY_EXPORT_WH: 0.0,
            Quantity.POWER_W: power,
            Quantity.VOLTAGE_L1_V: voltage or 0.0,
            Quantity.VOLTAGE_L2_V: voltage or 0.0,
            Quantity.VOLTAGE_L3_V: voltage or 0.0,
            Quantity.CURRENT_L1_A: current or 0.0,
            Quantity.CURRENT_L2_A: 0.0,
            Quantity.CURRENT_L3_A: 0.0,
            Quantity.FREQUENCY_HZ: 50.0,
        }
        for spec in self.map.registers.values():
            if FUNCTIONS[spec.function] != function_code:
                continue
            offset = spec.address - start_address
            registers[offset : offset + spec.count] = encode(spec, values[spec.quantity])
        return None

    def command(self, verb: str, args: list[str]) -> str | None:
        """A Modbus fault command, or None if ``verb`` is not one."""
        if verb == "exception":
            self.exceptions_next = int(args[0]) if args else 1
            if len(args) > 1:
                self.exception_code = ExcCodes(int(args[1]))
            return f"the next {self.exceptions_next} request(s) get Modbus exception {int(self.exception_code)}"
        return None

    def status(self) -> str:
        return f"unit {self.unit} at {self.baudrate} baud; {self.counts}"

    async def session(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        line_baudrate: Callable[[], int | None] | None = None,
    ) -> None:
        """Relay one client's bytes to the meter and its answers back through the faults."""
        assert self._reader is not None and self._writer is not None
        out = FaultyWriter(writer, self.faults)
        async with self._lock:  # one client on the meter's line at a time
            back = asyncio.ensure_future(self._answers(out))
            try:
                while True:
                    data = await reader.read(512)
                    if not data:
                        return
                    baud = line_baudrate() if line_baudrate is not None else None
                    if baud is not None and baud != self.baudrate:
                        self.counts["wrong_baud"] += 1  # at another speed the meter hears only noise
                        continue
                    self._writer.write(data)
            except OSError:
                return
            finally:
                back.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await back
                out.close()
                await out.wait_closed()

    async def _answers(self, out: FaultyWriter) -> None:
        assert self._reader is not None
        while True:
            data = await self._reader.read(512)
            if not data:
                return
            if self.faults.stalled:
                self.faults.counts["stalled"] += 1
                continue
            if self.faults.corrupt_next > 0:
                self.faults.corrupt_next -= 1
                self.faults.counts["corrupted"] += 1
                data = data[:-1] + bytes([data[-1] ^ 0x5A])  # the CRC's last byte
            out.write(data)
