"""pyserial ports that have no file descriptor to watch (``rfc2217://``, ``loop://``,
``spy://`` and the other pyserial URL handlers) as asyncio streams.

pyserial-asyncio-fast needs a descriptor for the event loop to watch; these ports
have none, so two threads do the blocking reads and writes and hand the bytes to
the loop. Everything above sees the same (reader, writer) pair as for a device.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

__all__ = ["open_threaded_serial"]

#: How long a blocking read waits before it looks whether the port is closing.
_READ_TIMEOUT_S = 0.05
_READ_SIZE = 4096


class _ThreadedSerialTransport(asyncio.Transport):
    def __init__(self, loop: asyncio.AbstractEventLoop, port: Any, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._loop = loop
        self._port = port
        self._protocol = protocol
        self._closing = False
        self._lost = False
        self._writes: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._pending = 0
        self._reader = threading.Thread(target=self._read_loop, name="evproto-serial-read", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="evproto-serial-write", daemon=True)

    def start(self) -> None:
        self._protocol.connection_made(self)
        self._reader.start()
        self._writer.start()

    # -- threads ---------------------------------------------------------------------------

    def _read_loop(self) -> None:
        port = self._port
        while not self._closing:
            try:
                data = port.read(max(1, min(port.in_waiting, _READ_SIZE)))
            except Exception as exc:  # the port went away: the link learns it as a lost connection
                self._call(self._connection_lost, exc)
                return
            if data:
                self._call(self._protocol.data_received, data)

    def _write_loop(self) -> None:
        while True:
            data = self._writes.get()
            if data is None:
                return
            try:
                self._port.write(data)
            except Exception as exc:
                self._call(self._connection_lost, exc)
                return
            finally:
                self._pending -= len(data)

    def _call(self, fn: Any, *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    # -- asyncio.Transport -----------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        chunk = bytes(data)
        self._pending += len(chunk)
        self._writes.put(chunk)

    def get_write_buffer_size(self) -> int:
        return max(self._pending, 0)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._writes.put(None)
        self._loop.run_in_executor(None, self._shutdown)

    def abort(self) -> None:
        self.close()

    def _shutdown(self) -> None:
        self._writer.join()
        self._reader.join()
        try:
            self._port.close()
        finally:
            self._call(self._connection_lost, None)

    def _connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._writes.put(None)
        self._protocol.connection_lost(exc if isinstance(exc, Exception) or exc is None else None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"serial": self._port}.get(name, default)

    def pause_reading(self) -> None:  # reads are never paused: the link always reads
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return not self._closing


async def open_threaded_serial(url: str, **options: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open ``url`` with pyserial (in an executor: opening may block) and return
    (reader, writer) driven by two threads."""
    import serial

    loop = asyncio.get_running_loop()
    port = await loop.run_in_executor(None, lambda: serial.serial_for_url(url, timeout=_READ_TIMEOUT_S, **options))
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    transport = _ThreadedSerialTransport(loop, port, protocol)
    transport.start()
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer
