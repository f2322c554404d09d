"""Pure rate limits for Central (time passed in): token buckets, per key and in total.

Used for registrations of new charge points (per source address and overall) and
for damping what a flapping CP produces. Bounded: at most ``max_keys`` keys are
tracked; the least recently used is forgotten first.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

__all__ = ["TokenBucket", "KeyedLimiter", "Coalescer"]


@dataclass(slots=True)
class TokenBucket:
    """``capacity`` actions at once, refilled at ``rate_per_s``; ``take(now_s)`` spends one."""

    capacity: float
    rate_per_s: float
    tokens: float = -1.0
    at_s: float = 0.0

    def take(self, now_s: float, cost: float = 1.0) -> bool:
        if self.tokens < 0:  # first use: full
            self.tokens, self.at_s = self.capacity, now_s
        self.tokens = min(self.capacity, self.tokens + max(0.0, now_s - self.at_s) * self.rate_per_s)
        self.at_s = now_s
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def wait_s(self, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are there (after a refused take)."""
        return 0.0 if self.rate_per_s <= 0 else max(0.0, (cost - self.tokens) / self.rate_per_s)


class KeyedLimiter:
    """A token bucket per key plus one for all keys together."""

    def __init__(
        self,
        *,
        capacity: float,
        rate_per_s: float,
        total_capacity: float,
        total_rate_per_s: float,
        max_keys: int = 4096,
    ) -> None:
        self.capacity = capacity
        self.rate_per_s = rate_per_s
        self.total = TokenBucket(total_capacity, total_rate_per_s)
        self.max_keys = max_keys
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def allow(self, key: str, now_s: float) -> float:
        """0.0 when ``key`` may act now (spending a token); else the seconds to wait."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.capacity, self.rate_per_s)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        if not bucket.take(now_s):
            return max(bucket.wait_s(), 0.001)
        if not self.total.take(now_s):
            bucket.tokens += 1  # not this source's fault: give its token back
            return max(self.total.wait_s(), 0.001)
        return 0.0


class Coalescer:
    """At most one item per key per ``interval_s``: the first goes at once; later ones
    within the interval replace each other and the latest goes when it ends.

    For records that only say "the state now is X" (a CP's state): a CP flapping a
    thousand times a second costs its readers one record per interval, and the last
    word is always the current state.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, object] = {}
        #: Items replaced by a later one before they went out.
        self.coalesced = 0

    def offer(self, key: str, item: object, now_s: float) -> object | None:
        """``item`` if it may go now; None if it is held (until :meth:`due`)."""
        last = self._last.get(key)
        if last is None or now_s - last >= self.interval_s:
            self._last[key] = now_s
            if self._held.pop(key, None) is not None:
                self.coalesced += 1
            return item
        if key in self._held:
            self.coalesced += 1
        self._held[key] = item
        return None

    def due(self, now_s: float) -> list[tuple[str, object]]:
        """Held items whose interval has ended (each key's latest)."""
        out = []
        for key in [k for k in self._held if now_s - self._last[k] >= self.interval_s]:
            out.append((key, self._held.pop(key)))
            self._last[key] = now_s
        if len(self._last) > 4 * max(1, len(self._held)) + 100_000:  # bounded: forget quiet keys
            self._last = {k: v for k, v in self._last.items() if now_s - v < self.interval_s or k in self._held}
        return out
