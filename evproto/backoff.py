"""Exponential backoff with jitter for reconnect loops (pure: the caller sleeps)."""

from __future__ import annotations

import random
from typing import Callable

__all__ = ["Backoff"]


class Backoff:
    """Delays of ``initial_s * factor**n``, capped at ``max_s``, each spread by +-``jitter``.

    Typical use, in the caller's own reconnect loop::

        backoff = Backoff()
        while True:
            try:
                async with evproto.aio.connect(url, hello=hello) as link:
                    backoff.reset()
                    ...
            except (LinkDownError, TransportError):
                await asyncio.sleep(backoff.next_delay())
    """

    def __init__(
        self,
        *,
        initial_s: float = 0.5,
        factor: float = 2.0,
        max_s: float = 30.0,
        jitter: float = 0.2,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not (initial_s > 0 and factor >= 1 and max_s >= initial_s and 0 <= jitter < 1):
            raise ValueError("need initial_s > 0, factor >= 1, max_s >= initial_s, 0 <= jitter < 1")
        self.initial_s = initial_s
        self.factor = factor
        self.max_s = max_s
        self.jitter = jitter
        self._rng = rng
        self.attempts = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one failed attempt."""
        base = min(self.max_s, self.initial_s * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        spread = base * self.jitter * (2.0 * self._rng() - 1.0)
        return max(0.0, base + spread)

    def reset(self) -> None:
        """Start again from ``initial_s`` (call after a connection succeeded)."""
        self.attempts = 0
