"""Nearest-rank percentiles: one definition for Central's status counters and the benchmarks."""

from __future__ import annotations

import math
import random

from evproto.daemons.stats import nearest_rank


def test_nearest_rank_is_one_of_the_values() -> None:
    assert nearest_rank([30, 10, 20], 50) == 20
    assert nearest_rank(list(range(1, 21)), 99) == 20  # 20 samples: p99 is the slowest
    assert nearest_rank(list(range(1, 101)), 99) == 99
    assert nearest_rank([7], 1) == 7
    assert math.isnan(nearest_rank([], 50))


def test_it_is_the_rank_centrals_status_always_reported() -> None:
    """Central's telemetry_age_p50_ms/p99_ms used ages[ceil(0.50 n) - 1] and ages[ceil(0.99 n) - 1]."""
    rng = random.Random(13)
    for n in range(1, 300):
        ages = sorted(rng.randrange(-50, 5000) for _ in range(n))
        assert nearest_rank(ages, 50) == ages[math.ceil(0.50 * n) - 1]
        assert nearest_rank(ages, 99) == ages[math.ceil(0.99 * n) - 1]
