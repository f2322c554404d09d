"""What one refresh of Central's panel costs as the network grows.

    python benchmarks/panel_cost.py [--sizes 50,500,5000,20000] [--rounds 20]

The panel redraws on a timer (4 Hz, daemons/central/terminal.py), never per
message, so its cost cannot follow the message rate; this measures how it
follows the number of CPs, and what the pacing (at most PANEL_CPU_SHARE of a
core spent drawing) makes of it. Each refresh renders a full-screen panel (200 x 50
cells, true colour) for a network of N CPs in every state, the view built the
way Central builds it (one CpView per CP). Printed as milliseconds per refresh
and as the ratio to the baseline, a 50-CP network measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import sys
import time

from rich.console import Console

from evproto.daemons.central.panel import render
from evproto.daemons.central.terminal import redraw_wait
from evproto.domain.central.view import CP_STATES, CentralView, CpView


def network(n: int) -> CentralView:
    cps = []
    for i in range(n):
        state = CP_STATES[i % len(CP_STATES)]
        figures = {}
        if state == "SUPPLYING":
            figures = dict(driver_id=f"D{i:05d}", power_kw=7.2, energy_kwh=3.456, amount_eur=1.21)
        cps.append(CpView(id=f"CP{i:05d}", location=f"Street {i}", price_eur_kwh=0.35, state=state, **figures))
    return CentralView(cps=tuple(cps), central_id="bench", now_ts_ms=int(time.time() * 1000))


def refresh_ms(n: int, rounds: int) -> float:
    console = Console(file=io.StringIO(), width=200, height=50, force_terminal=True, color_system="truecolor")
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        console.print(render(network(n), width=200, height=50))  # build the view too, as each refresh does
        best = min(best, time.perf_counter() - t0)
        console.file = io.StringIO()
    return best * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="50,500,5000,20000")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args(argv)
    base = refresh_ms(50, args.rounds)
    print(
        "| CPs | ms per refresh (best of %d) | vs 50 CPs | refreshes/s (4 Hz asked) | share of a core |" % args.rounds
    )
    print("| --- | --- | --- | --- | --- |")
    for n in (int(x) for x in args.sizes.split(",")):
        ms = base if n == 50 else refresh_ms(n, args.rounds)
        hz = 1.0 / (ms / 1000 + redraw_wait(0.25, ms / 1000))
        print(f"| {n} | {ms:.1f} | {ms / base:.2f}x | {hz:.1f} | {ms / 1000 * hz:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
