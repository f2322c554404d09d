"""The long chaos soak: a network under `evcharging chaos` for many minutes, then an audit.

    python benchmarks/soak.py [--minutes 15] [--cps 5] [--drivers 3] [--interval 5] [--broker-kills 3]
                              [--write docs/resilience.md]

Starts a network with the launcher, lets `evcharging chaos` kill random instances
(Central included) with SIGKILL and restart them, and between chaos rounds kills
the in-memory broker (`evcharging kill broker`, then `evcharging start broker` a
few seconds later: every log is lost, nothing else is restarted). Then it waits
until every driver has worked through its file and runs `evcharging audit`: every
started supply has exactly one ticket, tickets equal what the engines metered,
nothing is left in progress, no driver waits. Prints the figures and, with
--write, puts them between ``<!-- bench:soak -->`` markers in the given file.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import write_section  # benchmarks/_report.py

EV = os.path.join(os.path.dirname(sys.executable), "evcharging")


def drivers_done(run_dir: str, requests: int) -> bool:
    base = os.path.join(run_dir, "drivers")
    for d in os.listdir(base):
        try:
            state = json.loads(Path(base, d, "state", "driver-state.json").read_text())
        except (OSError, ValueError):
            return False
        if state.get("pending") or state.get("next_line", 0) < requests:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--cps", type=int, default=5)
    ap.add_argument("--drivers", type=int, default=3)
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between kills")
    ap.add_argument("--requests", type=int, default=0, help="per driver (default: enough for the whole soak)")
    ap.add_argument(
        "--broker-kills",
        type=int,
        default=3,
        help="broker SIGKILLs, evenly spread between chaos rounds (0: the broker is left alone)",
    )
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--write", metavar="FILE")
    args = ap.parse_args(argv)

    requests = args.requests or max(10, int(args.minutes * 60 / 14))
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="evsoak-")
    t0 = time.monotonic()
    subprocess.run(
        [
            EV,
            "up",
            "--detach",
            "--cps",
            str(args.cps),
            "--drivers",
            str(args.drivers),
            "--requests",
            str(requests),
            "--run-dir",
            run_dir,
            "--http-port",
            "0",
            "--seed",
            str(args.seed),
        ],
        check=True,
    )
    try:
        print(
            f"network up in {run_dir}; chaos for {args.minutes:g} min, a kill every {args.interval:g} s, "
            f"{args.broker_kills} broker kill(s)",
            flush=True,
        )
        kills: collections.Counter[str] = collections.Counter()
        rng = random.Random(args.seed)
        rounds = args.broker_kills + 1
        for n in range(rounds):
            # One writer of the launcher's registry at a time: chaos rounds and broker kills take turns.
            chaos = subprocess.run(
                [
                    EV,
                    "chaos",
                    "--duration",
                    str(args.minutes * 60 / rounds),
                    "--interval",
                    str(args.interval),
                    "--run-dir",
                    run_dir,
                    "--seed",
                    str(args.seed + 1 + n),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            kills.update(
                re.sub(r"-(CP|D)\d+$", "", line.split()[2]) for line in chaos.stdout.splitlines() if " killed " in line
            )
            if n + 1 < rounds:
                subprocess.run([EV, "kill", "broker", "--run-dir", run_dir], check=True, capture_output=True)
                kills["broker"] += 1
                time.sleep(rng.uniform(1.0, 6.0))  # as long as chaos keeps a victim down
                subprocess.run([EV, "start", "broker", "--run-dir", run_dir], check=True, capture_output=True)
                print(f"broker killed and started again ({kills['broker']} of {args.broker_kills})", flush=True)
        print(f"chaos over: {sum(kills.values())} kills {dict(kills)}", flush=True)
        quiesce_start = time.monotonic()
        while not drivers_done(run_dir, requests):
            if time.monotonic() - quiesce_start > 1800:
                print("drivers did not finish within 30 min", flush=True)
                break
            time.sleep(2)
        quiesce_s = time.monotonic() - quiesce_start
        report = None
        for _ in range(60):  # the last reports need a moment to reach Central
            out = subprocess.run([EV, "audit", "--run-dir", run_dir, "--json"], capture_output=True, text=True)
            report = json.loads(out.stdout)
            if report["ok"]:
                break
            time.sleep(2)
        assert report is not None
        sessions = subprocess.run(
            [
                sys.executable,
                "-c",
                f"""
import sqlite3, collections, json
db = sqlite3.connect('file:{run_dir}/central/central.db?mode=ro', uri=True)
print(json.dumps(dict(collections.Counter(r[0] for r in db.execute('select status from sessions')))))""",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        statuses = json.loads(sessions.stdout)
        total_s = time.monotonic() - t0
    finally:
        subprocess.run([EV, "down", "--run-dir", run_dir], capture_output=True)

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} (2 cores, shared), Python "
        f"{platform.python_version()}: `python benchmarks/soak.py --minutes {args.minutes:g} --cps {args.cps} "
        f"--drivers {args.drivers} --interval {args.interval:g} --broker-kills {args.broker_kills}` "
        f"({requests} requests per driver).",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| chaos | {args.minutes:g} min, {sum(kills.values())} SIGKILLs: "
        + ", ".join(f"{role} {n}" for role, n in sorted(kills.items()))
        + " |",
        f"| sessions at Central | {report['sessions']} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
        + ") |",
        f"| supplies started / tickets | {report['started']} / {report['tickets']} |",
        f"| energy billed / metered by the engines | {report['ticket_energy_kwh']:.6f} kWh / "
        f"{report['metered_energy_kwh']:.6f} kWh |",
        f"| time for the drivers to finish after the chaos | {quiesce_s:.0f} s |",
        f"| audit | {'all invariants hold' if report['ok'] else 'VIOLATIONS: ' + '; '.join(report['violations'])} |",
        f"| total run time | {total_s / 60:.1f} min |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(Path(args.write), "soak", text)
        print(f"updated {args.write}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
