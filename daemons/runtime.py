"""A daemon process's tuning: the garbage collector's thresholds and pauses, the open-file limit."""

from __future__ import annotations

import gc
import time

__all__ = ["GC_YOUNG_THRESHOLD", "GC_PAUSES", "tune_gc", "raise_fd_limit"]


#: Allocations between young collections for a daemon that holds thousands of links.
#: CPython's default (700) promotes every record still in flight (queued, awaiting
#: its delivery report) into the old generation; at 5,000 messages/s that forced a
#: full collection of ~500,000 objects (about 250 ms, the whole p99 budget) every
#: 3.5 s. At 10,000 in-flight objects mostly die young, as they should; see
#: docs/performance.md.
GC_YOUNG_THRESHOLD = 10_000


class _GcPauses:
    """The collector's pauses, measured by a gc callback: how long the process stood still."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.worst_ms = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        gen = info["generation"]
        ms = (time.perf_counter() - self._started) * 1000.0
        self.collections[gen] += 1
        if ms > self.worst_ms[gen]:
            self.worst_ms[gen] = ms

    def counters(self) -> dict[str, int]:
        """For a status API: collections of the oldest generation and the worst pauses (ms)."""
        return {
            "gc_full_collections": self.collections[2],
            "gc_full_pause_max_ms": round(self.worst_ms[2]),
            "gc_young_pause_max_ms": round(max(self.worst_ms[0], self.worst_ms[1])),
        }


#: Filled in once ``tune_gc()`` has run; all zeros otherwise.
GC_PAUSES = _GcPauses()


def tune_gc(young_threshold: int = GC_YOUNG_THRESHOLD) -> None:
    """Set up the garbage collector for a long-running daemon; call once, after startup.

    Freezes what startup built (modules, classes: never garbage) so full
    collections do not walk it again, collects the young generation less often,
    and starts measuring pauses into ``GC_PAUSES``.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)
    if GC_PAUSES not in gc.callbacks:
        gc.callbacks.append(GC_PAUSES)


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to the hard limit; return the new soft limit.

    Every monitor link is a socket: with the usual soft limit of 1,024 a Central
    would refuse CPs past about a thousand ("Too many open files") while the
    hard limit allows far more.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # e.g. above fs.nr_open: keep what we have
        return soft
    return target
