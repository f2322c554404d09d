"""Fault injection on the meter's side of the line: corrupt, drop, split, garbage, stall.

:class:`FaultyWriter` stands in for an asyncio StreamWriter and applies the
current :class:`Faults` to everything the meter sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Faults", "FaultyWriter"]


@dataclass
class Faults:
    """What goes wrong, changeable at run time (``evmeter-sim`` reads commands on stdin)."""

    #: Damage the checksum (LRC/BCC, the last byte) of the next N frames sent.
    corrupt_next: int = 0
    #: Frames to send intact before ``corrupt_next`` starts (damage the second block, not the first).
    corrupt_after: int = 0
    #: Probability that a write loses one random byte.
    drop: float = 0.0
    #: Send every write in pieces of 1-3 bytes with tiny pauses.
    split: bool = False
    #: Probability of random garbage bytes before a write.
    garbage: float = 0.0
    #: Until this monotonic time the meter sends nothing at all (stalled).
    stalled_until: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    #: What was done, for the operator and the tests.
    counts: dict[str, int] = field(default_factory=lambda: {"corrupted": 0, "dropped": 0, "garbage": 0, "stalled": 0})

    @property
    def stalled(self) -> bool:
        return time.monotonic() < self.stalled_until

    def stall(self, seconds: float) -> None:
        self.stalled_until = time.monotonic() + seconds

    def apply(self, data: bytes) -> list[bytes]:
        """The pieces actually sent for ``data`` (possibly none)."""
        if self.stalled:
            self.counts["stalled"] += 1
            return []
        buf = bytearray(data)
        if self.corrupt_next > 0 and 0x02 in buf and self.corrupt_after > 0:
            self.corrupt_after -= 1
        elif self.corrupt_next > 0 and 0x02 in buf:
            self.corrupt_next -= 1
            self.counts["corrupted"] += 1
            buf[-1] ^= 0x5A
        if self.drop and buf and self.rng.random() < self.drop:
            del buf[self.rng.randrange(len(buf))]
            self.counts["dropped"] += 1
        if self.garbage and self.rng.random() < self.garbage:
            junk = bytes(self.rng.choice(b"\x00\x7f\xff\x13\x11?#ABCxyz") for _ in range(self.rng.randint(1, 8)))
            buf[0:0] = junk
            self.counts["garbage"] += 1
        if not self.split:
            return [bytes(buf)] if buf else []
        pieces, i = [], 0
        while i < len(buf):
            n = self.rng.randint(1, 3)
            pieces.append(bytes(buf[i : i + n]))
            i += n
        return pieces


class FaultyWriter:
    """A StreamWriter look-alike that sends through ``faults`` (in order, pacing split pieces)."""

    def __init__(self, writer: asyncio.StreamWriter, faults: Faults) -> None:
        self._writer = writer
        self._faults = faults
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._task = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        while True:
            data = await self._queue.get()
            if data is None:
                return
            pieces = self._faults.apply(data)
            for piece in pieces:
                if self._writer.is_closing():
                    return
                self._writer.write(piece)
                if len(pieces) > 1:
                    await asyncio.sleep(0.002)

    def write(self, data: bytes) -> None:
        self._queue.put_nowait(bytes(data))

    async def drain(self) -> None:
        await self._writer.drain()

    def is_closing(self) -> bool:
        return self._writer.is_closing()

    def close(self) -> None:
        self._queue.put_nowait(None)
        self._task.add_done_callback(lambda _t: self._writer.close())

    async def wait_closed(self) -> None:
        with contextlib.suppress(Exception):
            await self._task
            await self._writer.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._writer.get_extra_info(name, default)

    @property
    def transport(self) -> Any:
        return self._writer.transport
