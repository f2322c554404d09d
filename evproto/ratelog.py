"""Logging that cannot flood a disk: each distinct message at most once per interval.

Used wherever a broken peer or device could otherwise log the same complaint many
times a second (a broker that is down, a meter sending corrupted frames).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Callable

__all__ = ["RateLimitedLog", "DEFAULT_INTERVAL_S"]

#: At most one identical message per this many seconds.
DEFAULT_INTERVAL_S = 10.0
_NUMBERS = re.compile(r"\d+")


class RateLimitedLog:
    """Logs each distinct message (numbers ignored) at most once per interval, counting the rest."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._seen: dict[tuple[int, str], list[float]] = {}
        self._lock = threading.Lock()

    def log(self, level: int, message: str) -> None:
        if not self.logger.isEnabledFor(level):
            return
        key = (level, _NUMBERS.sub("#", message))
        now = self._clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.interval_s:
                entry[1] += 1
                return
            held_back = int(entry[1]) if entry is not None else 0
            if len(self._seen) >= 256:  # bounded: forget old keys
                self._seen.clear()
            self._seen[key] = [now, 0]
        if held_back:
            message += f" ({held_back} similar in the last {self.interval_s:g} s not shown)"
        self.logger.log(level, "%s", message)
