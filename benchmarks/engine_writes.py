"""The engine's state writes and its reading-to-driver latency, this tree against an earlier commit.

    python benchmarks/engine_writes.py [--baseline 0d4d86e] [--rounds 1] [--supply-s 60] [--write docs/performance.md]

Each round runs one real supply twice on the embedded broker, once with the engine of
this tree and once with the engine of a git worktree of ``--baseline`` (alternating);
Central, the monitor and the driver (a Kafka consumer in this process) are this tree's.
The engine starts with a ledger of ``--ledger`` finished supplies, as a charger that has
served for a while has, on a simulated meter (read every 0.2 s, ``--time-scale`` 10 so
that readings are far apart in Wh). The engine runs under a small probe
(``PROBE`` below, in its own process) that counts every ``os.fsync``/``os.fdatasync``,
the bytes of every state file written, and notes the moment each meter reading came back
to the engine. The driver's consumer notes the moment each telemetry record arrives and
finds the reading it carries by its energy. Figures:

- fsyncs per minute per supplying CP: fsyncs from the plug-in to the ticket, per minute
  of supply (the start and end writes are in it);
- state bytes written per minute of supply;
- reading-to-driver latency p50/p99: from the reading's return in the engine to the
  driver's consumer (engine -> cp-events -> Central -> driver-events -> driver), and the
  engine's part of it: from the reading to the progress record handed to the Kafka client.

The figures that matter are the ratios after / before.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _report import write_section  # benchmarks/_report.py
from netharness import KafkaDriver, Network  # tests/netharness.py

from evproto.bus.broker import EmbeddedBroker
from evproto.bus.kafka import OFFSET_BEGINNING, BusConsumer, ensure_topics
from evproto.bus.topics import Topic, partition_for
from evproto.daemons.stats import nearest_rank
from evproto.domain.events import DriverTelemetry

#: Runs ``python -m evproto.daemons.engine ...`` from the tree given, with counters: argv is
#: TREE OUT python -m evproto.daemons.engine ARGS (netharness's ``wrap`` prefix).
PROBE = r"""
import importlib.util, os, runpy, sys, time
tree, out_path = sys.argv[1], sys.argv[2]
rest = sys.argv[3:]
module, args = rest[rest.index("-m") + 1], rest[rest.index("-m") + 2:]
sys.path.insert(0, tree)

def package(name, path):
    # The installed (editable) evproto maps some packages to the tree it was installed from:
    # load them from TREE explicitly.
    spec = importlib.util.spec_from_file_location(name, os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)

package("evproto", os.path.join(tree, "evproto"))
for sub in ("bus", "domain"):
    package(f"evproto.{sub}", os.path.join(tree, "evproto", sub))
package("evproto.daemons", os.path.join(tree, "daemons"))

out = open(out_path, "a", buffering=1, encoding="ascii")
real_fsync, real_fdatasync = os.fsync, os.fdatasync

def fsync(fd):
    out.write(f"F {time.time():.6f}\n")
    return real_fsync(fd)

def fdatasync(fd):
    out.write(f"F {time.time():.6f}\n")
    return real_fdatasync(fd)

os.fsync, os.fdatasync = fsync, fdatasync
import evproto.daemons.common as common
real_save = common.save_json_atomic

def save(path, obj):
    real_save(path, obj)
    out.write(f"W {time.time():.6f} {os.path.getsize(path)}\n")

common.save_json_atomic = save
import evproto.daemons.engine.meter as meter
real_read = meter.SimulatedMeter.read

async def read(self):
    reading = await real_read(self)
    out.write(f"R {time.time():.6f} {reading.energy_wh!r}\n")
    return reading

meter.SimulatedMeter.read = read
import json
import evproto.bus.producer as producer
real_post = producer.BusProducer.post

def post(self, topic, key, value, *, partition=None):
    # Progress is the engine's only best-effort record: note when it was handed to the client.
    try:
        out.write(f"P {time.time():.6f} {json.loads(value)['energy_kwh']!r}\n")
    except (ValueError, KeyError, TypeError):
        pass
    return real_post(self, topic, key, value, partition=partition)

producer.BusProducer.post = post
out.write(f"T {tree}\n")
sys.argv = [module, *args]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


class TimedDriver(KafkaDriver):
    """The driver's consumer, noting when each telemetry record arrives (time.time())."""

    def __init__(self, net: Network, driver_id: str) -> None:
        self.arrivals: list[tuple[float, float]] = []  # (arrival, energy_kwh)
        super().__init__(net, driver_id)

    async def _read(self) -> None:
        partitions = await ensure_topics(self.net.settings)
        partition = partition_for(self.driver_id, partitions[Topic.DRIVER_EVENTS])
        async with BusConsumer(self.net.settings, [(Topic.DRIVER_EVENTS, partition, OFFSET_BEGINNING)]) as consumer:
            while not self._stop.is_set():
                try:
                    record = await asyncio.wait_for(consumer.__anext__(), 0.2)
                except asyncio.TimeoutError:
                    continue
                arrived = time.time()
                if record.key != self.driver_id:
                    continue
                ev = self._gate.decode(record, int(arrived * 1000))
                with self._lock:
                    self._events.append(ev)
                    if isinstance(ev, DriverTelemetry):
                        self.arrivals.append((arrived, ev.energy_kwh))


def ledger_state(entries: int) -> dict[str, Any]:
    """An idle engine's state file holding ``entries`` finished supplies."""
    t = int(time.time() * 1000) - 86_400_000
    finished = [
        {
            "session_id": 100_000 + i,
            "request_id": f"{i:032x}",
            "driver_id": "D999",
            "energy_kwh": 12.345678,
            "amount_eur": 3.703703,
            "reason": "completed",
            "offline": False,
            "ended_ts_ms": t + i * 60_000,
        }
        for i in range(entries)
    ]
    return {
        "cp_id": "CP001",
        "cp": {
            "cp_id": "CP001",
            "stopped": False,
            "phase": "idle",
            "supply": None,
            "meter_energy_wh": None,
            "offline_price_eur_kwh": 0.30,
        },
        "commands_offset": None,
        "commands_topic_id": None,
        "outbox": [],
        "finished": finished,
    }


def run_once(label: str, tree: Path, bootstrap: str, work: Path, probe: Path, args: argparse.Namespace) -> dict:
    tmp = work / f"{label}-{time.monotonic_ns()}"
    tmp.mkdir()
    state_dir = tmp / "state-CP001"
    state_dir.mkdir(mode=0o700)
    (state_dir / "engine-state.json").write_text(json.dumps(ledger_state(args.ledger)), encoding="utf-8")
    out = tmp / "probe.txt"
    net = Network(str(tmp), bootstrap)
    try:
        net.start_central("D001")
        engine = net.start_engine(
            "CP001",
            engine_args=("--time-scale", str(args.time_scale)),
            wrap=(sys.executable, str(probe), str(tree), str(out)),
        )
        net.start_monitor("CP001", engine.ready["listen"])
        net.wait_state("CP001", "ACTIVATED", timeout_s=60)
        driver = TimedDriver(net, "D001")
        rid = driver.request("CP001")
        driver.wait_status(rid, "authorized")
        plugged = time.time()
        engine.send("p")
        # A benchmark, not a test: the supply simply lasts this long.
        time.sleep(args.supply_s)
        unplugged = time.time()
        engine.send("u")
        driver.wait_status(rid, "completed")
        done = time.time()
        arrivals = list(driver.arrivals)
    finally:
        net.close()
    lines = out.read_text(encoding="ascii").splitlines()
    assert lines[0] == f"T {tree}", f"the probe ran {lines[0]!r}, not {tree}"
    fsyncs = [float(x.split()[1]) for x in lines if x.startswith("F ")]
    writes = [(float(x.split()[1]), int(x.split()[2])) for x in lines if x.startswith("W ")]
    readings = [(float(x.split()[1]), float(x.split()[2])) for x in lines if x.startswith("R ")]
    minutes = (unplugged - plugged) / 60.0
    in_supply = [t for t in fsyncs if plugged <= t <= done]
    written = [n for t, n in writes if plugged <= t <= done]
    posts = [(float(x.split()[1]), float(x.split()[2])) for x in lines if x.startswith("P ")]
    latencies, unmatched, in_engine = [], 0, []
    for posted, energy_kwh in posts:
        t_read, register = min(readings, key=lambda r: abs(r[1] - energy_kwh * 1000))
        if abs(register - energy_kwh * 1000) <= 2.0 and t_read <= posted:
            in_engine.append((posted - t_read) * 1000)
    for arrived, energy_kwh in arrivals:
        # The supply's energy is the register's gain since the plug-in; a fresh meter starts at 0.
        t_read, register = min(readings, key=lambda r: abs(r[1] - energy_kwh * 1000))
        if abs(register - energy_kwh * 1000) > 2.0 or t_read > arrived:
            unmatched += 1
            continue
        latencies.append((arrived - t_read) * 1000)
    return {
        "fsyncs_per_min": len(in_supply) / minutes,
        "state_writes_per_min": len(written) / minutes,
        "state_kb_per_min": sum(written) / 1024 / minutes,
        "latency_p50_ms": nearest_rank(latencies, 50),
        "latency_p99_ms": nearest_rank(latencies, 99),
        "engine_p50_ms": nearest_rank(in_engine, 50),
        "engine_p99_ms": nearest_rank(in_engine, 99),
        "telemetry": len(latencies),
        "unmatched": unmatched,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="0d4d86e", help="the commit to compare against")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--supply-s", type=float, default=60.0, help="length of each measured supply")
    ap.add_argument("--ledger", type=int, default=1000, help="finished supplies already in the engine's ledger")
    ap.add_argument("--time-scale", type=float, default=10.0)
    ap.add_argument("--write", metavar="FILE", help="put the table between <!-- bench:engine-writes --> markers")
    args = ap.parse_args(argv)

    results: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        work = Path(tmp)
        probe = work / "probe.py"
        probe.write_text(PROBE, encoding="utf-8")
        base = work / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            for n in range(args.rounds):
                order = (("before", base), ("after", ROOT)) if n % 2 == 0 else (("after", ROOT), ("before", base))
                for label, tree in order:
                    results[label].append(run_once(label, tree, broker.bootstrap, work, probe, args))
                    print(f"round {n + 1} {label}: {json.dumps(results[label][-1])}", flush=True)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True, check=False
            )

    def median(label: str, key: str) -> float:
        values = sorted(r[key] for r in results[label])
        return values[len(values) // 2]

    rows = []
    for key, name, fmt in (
        ("fsyncs_per_min", "fsyncs per minute per supplying CP", ",.1f"),
        ("state_writes_per_min", "state file writes per minute of supply", ",.1f"),
        ("state_kb_per_min", "state file KiB written per minute of supply", ",.0f"),
        ("latency_p50_ms", "reading to driver, p50 (ms)", ",.0f"),
        ("latency_p99_ms", "reading to driver, p99 (ms)", ",.0f"),
        ("engine_p50_ms", "of which reading to produce in the engine, p50 (ms)", ",.1f"),
        ("engine_p99_ms", "of which reading to produce in the engine, p99 (ms)", ",.1f"),
    ):
        before, after = median("before", key), median("after", key)
        rows.append(f"| {name} | {before:{fmt}} | {after:{fmt}} | {after / before:.2f} |")
    table = "\n".join(["| figure | before | after | after / before |", "| --- | --- | --- | --- |", *rows])
    counted = ", ".join(
        f"{label} {sum(r['telemetry'] for r in results[label])} telemetry records matched "
        f"({sum(r['unmatched'] for r in results[label])} not)"
        for label in ("before", "after")
    )
    text = (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}: `python benchmarks/engine_writes.py --baseline {args.baseline} --rounds "
        f"{args.rounds} --supply-s {args.supply_s:g} --ledger {args.ledger}` (median of the rounds; {counted}).\n\n"
        + table
        + "\n"
    )
    print(text)
    if args.write:
        write_section(Path(args.write), "engine-writes", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
