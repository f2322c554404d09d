"""Failure detection times: a kill or a pulled cable -> the state change on Central's HTTP API.

    python benchmarks/detection.py [--trials 20] [--cases engine,monitor,cable] [--write docs/performance.md]

Real processes (Central, one engine, one monitor, the embedded broker), the
same harness as the end-to-end tests (tests/netharness.py). Each trial waits
until Central shows the CP ACTIVATED, waits a random 0..1 s (so the failure
lands anywhere in the 1 s keepalive / health-check cycle), then:

- engine: SIGKILL the engine; time until Central shows BROKEN. The engine is
  restarted on the same port between trials (the monitor reconnects by itself).
- monitor: SIGKILL the monitor; time until Central shows DISCONNECTED. A new
  monitor is started between trials.
- cable (tests/netns.py; skipped with the reason when network namespaces are
  unavailable): Central and the broker on one simulated host, the monitor on a
  second, the engine on a third. Pull the monitor's cable: time until
  DISCONNECTED; pull the engine's cable: time until BROKEN. The cable stays out
  until the far ends noticed too (their logs say so), then goes back in and the
  CP must be ACTIVATED again before the next trial, with no process restarted.

Central's API is polled every 20 ms from the moment just before the kill or
pull; a detection time is the time of the first answer showing the new state.
p50 and p99 are nearest-rank percentiles (with 20 trials p99 is the slowest
trial). Logs of every process stay in the printed directory.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from _report import write_section  # benchmarks/_report.py
from netharness import Network, Proc, wait_for
from netns import Broker, Hosts, unavailable_reason

from evproto.bus.broker import EmbeddedBroker
from evproto.daemons.stats import nearest_rank

CP = "CP001"
POLL_S = 0.02
DETECT_GUARD_S = 15.0
RECOVER_GUARD_S = 60.0


@dataclass
class Row:
    key: str
    label: str
    target_s: float
    samples: list[float] = field(default_factory=list)
    misses: int = 0
    skipped: str = ""

    def pct(self, p: float) -> float:
        return nearest_rank(self.samples, p)

    def verdict(self) -> str:
        if self.skipped:
            return "skipped"
        if not self.samples or self.misses:
            return f"**no** ({self.misses} trial(s) never changed state within {DETECT_GUARD_S:g} s)"
        return "yes" if self.pct(99) <= self.target_s else "**no**"


# -- measuring -------------------------------------------------------------------------------


def detect(net: Network, state: str, t0: float) -> float | None:
    """Seconds from ``t0`` until Central's API shows the CP in ``state`` (polled every 20 ms)."""
    next_at = time.monotonic()
    while True:
        try:
            seen = net.cp_state(CP)
        except (OSError, ValueError):
            seen = None
        now = time.monotonic()
        if seen == state:
            return now - t0
        if now - t0 > DETECT_GUARD_S:
            return None
        next_at += POLL_S
        time.sleep(max(0.0, next_at - time.monotonic()))


def settle() -> None:
    time.sleep(random.uniform(0.0, 1.0))


def count(proc: Proc, text: str) -> int:
    with open(proc.log, encoding="utf-8", errors="replace") as fh:
        return fh.read().count(text)


def record(row: Row, i: int, trials: int, value: float | None, net: Network) -> None:
    if value is None:
        row.misses += 1
        print(
            f"  {row.key} trial {i + 1}/{trials}: no state change within {DETECT_GUARD_S:g} s "
            f"(Central shows {net.cp_state(CP)}); logs in {net.tmp}",
            flush=True,
        )
    else:
        row.samples.append(value)
        print(f"  {row.key} trial {i + 1}/{trials}: {value:.3f} s", flush=True)


def reap(net: Network, proc: Proc) -> None:
    if proc.alive():
        proc.popen.kill()
    proc.popen.wait(10)
    if proc.popen.stdin:
        proc.popen.stdin.close()
    if proc in net.procs:
        net.procs.remove(proc)


def run_kills(rows: dict[str, Row], trials: int, tmp: str) -> None:
    """Engine and monitor SIGKILLed, everything on 127.0.0.1."""
    with EmbeddedBroker(log_path=os.path.join(tmp, "broker.log")) as broker:
        net = Network(tmp, broker.bootstrap)
        try:
            net.start_central()
            engine = net.start_engine(CP)
            engine_addr = engine.ready["listen"]
            monitor = net.start_monitor(CP, engine_addr)
            net.wait_state(CP, "ACTIVATED", RECOVER_GUARD_S)
            if "engine" in rows:
                row = rows["engine"]
                for i in range(trials):
                    settle()
                    t0 = time.monotonic()
                    os.kill(engine.popen.pid, signal.SIGKILL)
                    record(row, i, trials, detect(net, "BROKEN", t0), net)
                    reap(net, engine)
                    engine = net.start_engine(CP, listen=engine_addr)
                    net.wait_state(CP, "ACTIVATED", RECOVER_GUARD_S)
            if "monitor" in rows:
                row = rows["monitor"]
                for i in range(trials):
                    settle()
                    t0 = time.monotonic()
                    os.kill(monitor.popen.pid, signal.SIGKILL)
                    record(row, i, trials, detect(net, "DISCONNECTED", t0), net)
                    reap(net, monitor)
                    monitor = net.start_monitor(CP, engine_addr)
                    net.wait_state(CP, "ACTIVATED", RECOVER_GUARD_S)
        finally:
            net.close()


def run_cables(rows: dict[str, Row], trials: int, tmp: str) -> None:
    """Cables pulled between simulated hosts (network namespaces)."""
    with (
        Hosts(["central", "monitors", "engines"]) as hosts,
        Broker(hosts.addr("central"), wrap=hosts.wrap("central"), log_path=os.path.join(tmp, "broker.log")) as broker,
    ):
        net = Network(tmp, broker.bootstrap)
        try:
            net.start_central(host=hosts.addr("central"), wrap=hosts.wrap("central"))
            engine = net.start_engine(CP, listen=f"{hosts.addr('engines')}:0", wrap=hosts.wrap("engines"))
            monitor = net.start_monitor(CP, engine.ready["listen"], wrap=hosts.wrap("monitors"))
            net.wait_state(CP, "ACTIVATED", RECOVER_GUARD_S)
            pids = [p.popen.pid for p in net.procs]
            plan: list[tuple[Row, str, str, Callable[[], int]]] = [
                # (row, cable, state, "the far ends noticed" counter)
                (
                    rows["cable-monitor"],
                    "monitors",
                    "DISCONNECTED",
                    lambda: min(count(monitor, "lost Central"), count(engine, "monitor link lost")),
                ),
                (rows["cable-engine"], "engines", "BROKEN", lambda: count(engine, "monitor link lost")),
            ]
            for row, cable, state, noticed in plan:
                for i in range(trials):
                    settle()
                    before = noticed()
                    with hosts.pulled(cable):
                        t0 = time.monotonic()
                        hosts.pull(cable)
                        record(row, i, trials, detect(net, state, t0), net)
                        wait_for(
                            lambda n=noticed, b=before: n() > b,
                            f"the far ends to notice the {cable} cable",
                            RECOVER_GUARD_S,
                        )
                    net.wait_state(CP, "ACTIVATED", RECOVER_GUARD_S)
            if [p.popen.pid for p in net.procs] != pids or not all(p.alive() for p in net.procs):
                raise AssertionError(f"a process died or was restarted during the cable trials; logs in {tmp}")
        finally:
            net.close()


# -- reporting -------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    out = [
        "| failure -> state on Central's API | trials | min | p50 | p99 | max | target (p99) | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r.skipped:
            out.append(f"| {r.label} | - | - | - | - | - | <= {r.target_s:g} s | skipped: {r.skipped} |")
        elif not r.samples:
            out.append(f"| {r.label} | 0/{r.misses} | - | - | - | - | <= {r.target_s:g} s | {r.verdict()} |")
        else:
            n = len(r.samples) + r.misses
            out.append(
                f"| {r.label} | {len(r.samples)}/{n} | {min(r.samples):.3f} s | {r.pct(50):.3f} s | "
                f"{r.pct(99):.3f} s | {max(r.samples):.3f} s | <= {r.target_s:g} s | {r.verdict()} |"
            )
    return "\n".join(out) + "\n"


INTRO = """## Failure detection

`benchmarks/detection.py` kills an engine or a monitor (SIGKILL), or pulls a
simulated host's network cable (Linux network namespaces, `tests/netns.py`), and
measures the time until Central's HTTP API shows the new state (polled every
20 ms). Each trial starts from ACTIVATED after a random 0..1 s wait, so the
failure lands anywhere in the 1 s keepalive and health-check cycle. The
resolution is one poll: about 0.02 s means "seen at the first poll after the
one that started with the kill".

What detects each failure:

- **engine killed**: the kernel closes the engine's socket, the monitor's link
  to it ends at once (`connection_lost`), the monitor reports the fault: BROKEN.
- **monitor killed**: same at Central (`connection_lost`): DISCONNECTED.
- **monitor's cable pulled**: no FIN, no RST; Central declares the monitor dead
  after 2.5 s without hearing anything (`peer_silent`, docs/protocol.md section 3).
  Something is heard about every second, so this lands 1.5 to 2.5 s after the pull.
- **engine's cable pulled**: the monitor's next health check (one per second)
  gets no answer within 0.8 s: the monitor reports `ENGINE_SILENT`, BROKEN,
  0.8 to 1.8 s after the pull, before the link's own 2.5 s limit.

"""


def section(rows: list[Row], trials: int, cases: str) -> str:
    return (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} ({os.cpu_count()} cores, shared), "
        f"Python {platform.python_version()}, `python benchmarks/detection.py --trials {trials} --cases {cases}` "
        f"(nearest-rank percentiles{'; p99 is the slowest trial' if trials < 100 else ''}):\n\n" + table(rows)
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20, help="trials per case (default 20)")
    ap.add_argument("--cases", default="engine,monitor,cable", help="comma-separated: engine, monitor, cable")
    ap.add_argument("--write", metavar="FILE", help="replace the detection section of this Markdown file")
    args = ap.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - {"engine", "monitor", "cable"}
    if unknown or not cases or args.trials < 1:
        ap.error(f"--cases takes engine, monitor, cable (got {args.cases!r}); --trials must be >= 1")

    all_rows = {
        "engine": Row("engine", "engine killed (SIGKILL) -> BROKEN", 1.5),
        "monitor": Row("monitor", "monitor killed (SIGKILL) -> DISCONNECTED", 3.0),
        "cable-monitor": Row("cable-monitor", "monitor's cable pulled -> DISCONNECTED", 3.0),
        "cable-engine": Row("cable-engine", "engine's cable pulled -> BROKEN", 3.0),
    }
    rows = {k: r for k, r in all_rows.items() if k in cases or (k.startswith("cable") and "cable" in cases)}
    tmp = tempfile.mkdtemp(prefix="evproto-detection-")
    print(f"logs in {tmp}", flush=True)
    started = time.monotonic()
    kills = {k: rows[k] for k in ("engine", "monitor") if k in rows}
    if kills:
        os.makedirs(os.path.join(tmp, "kill"))
        run_kills(kills, args.trials, os.path.join(tmp, "kill"))
    if "cable" in cases:
        reason = unavailable_reason()
        if reason is not None:
            print(f"cable pull skipped: {reason}", flush=True)
            for k in ("cable-monitor", "cable-engine"):
                rows[k].skipped = f"network namespaces unavailable ({reason})"
        else:
            os.makedirs(os.path.join(tmp, "cable"))
            run_cables(rows, args.trials, os.path.join(tmp, "cable"))
    print(f"\n{args.trials} trials per case in {time.monotonic() - started:.0f} s\n")
    ordered = [rows[k] for k in all_rows if k in rows]
    print(table(ordered))
    if args.write:
        write_section(Path(args.write), "detection", section(ordered, args.trials, ",".join(cases)), intro=INTRO)
        print(f"updated {args.write}")
    return 0 if all(r.verdict() in ("yes", "skipped") for r in ordered) else 1


if __name__ == "__main__":
    sys.exit(main())
