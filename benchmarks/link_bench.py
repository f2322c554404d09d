"""Link throughput and round-trip time, TCP and pty, this tree against an earlier commit.

    python benchmarks/link_bench.py [--baseline d068c7f] [--rounds 3] [--messages 2000] [--write docs/performance.md]

Each round runs the same worker twice, in fresh interpreters: once on this tree and
once on a git worktree of ``--baseline`` (the code before the library's changes),
alternating so that a noisy neighbour hurts both alike. The worker opens an
evproto.aio server and client in one process, over TCP on 127.0.0.1 and over a
pseudo-terminal pair, and measures acknowledged one-way messages per second
(``send`` waits for the ACK: stop-and-wait) and request round trips (p50/p99).
It uses only API both versions have. The figures that matter are the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import write_section  # benchmarks/_report.py

ROOT = Path(__file__).resolve().parent.parent

WORKER = r"""
import asyncio, json, os, pty, sys, time, tty
from evproto import CpState, CpStatus, HealthCheck, HealthState, HealthStatus, Hello, RequestReceived, Role
from evproto.aio import open_fd_stream, open_link, serve, serve_stream

N = int(sys.argv[1])
HELLO = Hello(role=Role.MONITOR, node_id="CP001", keepalive_ms=5000)

async def handler(link):
    async for event in link.messages:
        if isinstance(event, RequestReceived):
            await link.respond(event, HealthStatus(state=HealthState.OK))

async def measure(link):
    msg = CpStatus(state=CpState.SUPPLYING, session_id=1)
    for _ in range(50):
        await link.send(msg)
    t = time.perf_counter()
    for _ in range(N):
        await link.send(msg)
    rate = N / (time.perf_counter() - t)
    rtts = []
    for _ in range(N // 2):
        t = time.perf_counter()
        await link.request(HealthCheck(), timeout_s=5.0)
        rtts.append((time.perf_counter() - t) * 1e6)
    rtts.sort()
    return {"msgs_per_s": rate, "rtt_p50_us": rtts[len(rtts) // 2], "rtt_p99_us": rtts[int(len(rtts) * 0.99) - 1]}

async def tcp():
    async with await serve("tcp://127.0.0.1:0", handler, node_id="srv") as server:
        link = await open_link(f"tcp://127.0.0.1:{server.port}", hello=HELLO)
        try:
            return await measure(link)
        finally:
            await link.close()

async def pty_pair():
    master, slave = pty.openpty()
    tty.setraw(master); tty.setraw(slave)
    reader, writer = await open_fd_stream(master)
    device = asyncio.create_task(serve_stream(reader, writer, handler, node_id="meter"))
    link = await open_link(f"serial://{os.ttyname(slave)}?baudrate=115200", hello=HELLO)
    try:
        return await measure(link)
    finally:
        await link.close()
        await asyncio.wait_for(device, 10)
        os.close(master); os.close(slave)

print(json.dumps({"tcp": asyncio.run(tcp()), "pty": asyncio.run(pty_pair())}))
"""


def run_worker(tree: Path, messages: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", WORKER, str(messages)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
        timeout=600,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="d068c7f", help="the commit to compare against")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--write", metavar="FILE", help="put the table between <!-- bench:link --> markers")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            results: dict[str, list[dict]] = {"before": [], "after": []}
            for n in range(args.rounds):
                for label, tree in (
                    (("before", base), ("after", ROOT)) if n % 2 == 0 else (("after", ROOT), ("before", base))
                ):
                    results[label].append(run_worker(tree, args.messages))
                    print(f"round {n + 1} {label}: {json.dumps(results[label][-1])}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)

    def best(label: str, transport: str, key: str, high: bool) -> float:
        values = [r[transport][key] for r in results[label]]
        return max(values) if high else min(values)

    rows = []
    for transport in ("tcp", "pty"):
        for key, name, high in (
            ("msgs_per_s", "acknowledged messages/s", True),
            ("rtt_p50_us", "request round trip p50 (µs)", False),
            ("rtt_p99_us", "request round trip p99 (µs)", False),
        ):
            before, after = best("before", transport, key, high), best("after", transport, key, high)
            ratio = after / before
            verdict = "same" if abs(ratio - 1) <= 0.03 else "better" if (ratio > 1) == high else "worse"
            rows.append(f"| {transport} | {name} | {before:,.0f} | {after:,.0f} | {ratio:.2f} ({verdict}) |")
    table = "\n".join(
        [
            "| transport | figure | before | after | after / before |",
            "| --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    text = (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, Python {platform.python_version()}: "
        f"`python benchmarks/link_bench.py --baseline {args.baseline} --rounds {args.rounds} --messages "
        f"{args.messages}` (best of {args.rounds} rounds each, alternating; one process holds both ends).\n\n"
        + table
        + "\n"
    )
    print(text)
    if args.write:
        write_section(Path(args.write), "link", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
