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

    def log(self, level: int, message: str, *, key: str | None = None) -> None:
        """Log ``message`` unless one like it (or with the same ``key``) was logged within the interval."""
        if not self.logger.isEnabledFor(level):
            return
        shown = self.admit(message, key=key, level=level)
        if shown is not None:
            self.logger.log(level, "%s", shown)

    def admit(self, message: str, *, key: str | None = None, level: int = 0) -> str | None:
        """``message`` (with a count of what was held back since) if it may be shown now, else None.

        Messages are alike when they differ only in numbers, or when they share ``key``.
        """
        ident = (level, key if key is not None else _NUMBERS.sub("#", message))
        now = self._clock()
        with self._lock:
            entry = self._seen.get(ident)
            if entry is not None and now - entry[0] < self.interval_s:
                entry[1] += 1
                return None
            held_back = int(entry[1]) if entry is not None else 0
            if len(self._seen) >= 256:  # bounded: forget old keys
                self._seen.clear()
            self._seen[ident] = [now, 0]
        if held_back:
            message += f" ({held_back} similar in the last {self.interval_s:g} s not shown)"
        return message
