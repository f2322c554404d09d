"""What the web console costs: the browser at 5,000 CPs, and Central with 1 and 20 consoles open.

    python benchmarks/console_cost.py [--cps 5000] [--window 20] [--consoles 20]
    python benchmarks/console_cost.py --write docs/performance.md

Starts the embedded broker, a real Central (``--insecure``: the console needs no
login, and the stream costs the same either way) and the capacity benchmark's load:
N real monitor links and N simulated engines that all supply and report a reading a
second each (benchmarks/capacity.py). Then three windows of the same length, one
after the other in this run:

1. no console open: Central's CPU, the baseline;
2. one console, a real page in Debian's Chromium (headless, driven by Playwright):
   Central's CPU, and the page's main-thread time from Chromium's own counters
   (CDP ``Performance.getMetrics``: task, script, layout and style time), per second
   of telemetry;
3. twenty consoles: that page plus 19 more subscribers of the same stream (plain
   HTTP clients in another process, reading every byte, as a browser does; twenty
   Chromium pages of 5,000 tiles would measure the two cores' contention, not Central).

Ratios are against window 1 of the same run. Figures depend on the machine: compare
runs, not machines.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from _report import write_section  # benchmarks/_report.py
from capacity import Child, Engines, _monitors_main, central_argv, machine_busy, proc_cpu_s, proc_rss_mb

from evproto.bus.broker import EmbeddedBroker
from evproto.bus.kafka import KafkaSettings, ensure_topics
from evproto.daemons.stats import nearest_rank

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _streams_main(url: str, n: int, conn: Connection) -> None:
    """``n`` subscribers of Central's console stream, reading every byte until told to stop."""
    import aiohttp

    async def run() -> None:
        counts = [0] * n
        async with aiohttp.ClientSession() as http:

            async def one(i: int) -> None:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as resp:
                    resp.raise_for_status()
                    async for chunk in resp.content.iter_any():
                        counts[i] += len(chunk)

            tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
            await asyncio.sleep(1.0)
            conn.send("open")
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "stop"
            alive = sum(1 for t in tasks if not t.done())
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            conn.send((alive, sum(counts)))

    asyncio.run(run())


#: The page's own count of its drawing work (daemons/central/web/app.js).
PAGE_STATS = "({...window.evprotoConsole})"


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.load(resp)


def _post(url: str) -> Any:
    request = urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.load(resp)


async def _metrics(cdp: Any) -> dict[str, float]:
    return {m["name"]: m["value"] for m in (await cdp.send("Performance.getMetrics"))["metrics"]}


async def _window(central: subprocess.Popen[bytes], engines: Engines, seconds: float) -> dict[str, float]:
    cpu0, w0, busy0, produced0 = proc_cpu_s(central.pid), time.monotonic(), machine_busy(), engines.produced
    rss = []
    end = w0 + seconds
    while time.monotonic() < end:
        await asyncio.sleep(1.0)
        rss.append(proc_rss_mb(central.pid))
    window = time.monotonic() - w0
    busy1 = machine_busy()
    return {
        "window_s": round(window, 1),
        "central_cpu_percent": round((proc_cpu_s(central.pid) - cpu0) / window * 100, 1),
        "central_rss_mb": round(max(rss), 1),
        "telemetry_per_s": round((engines.produced - produced0) / window, 1),
        "machine_busy_percent": round((busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * 100, 1),
    }


async def measure(args: argparse.Namespace, bootstrap: str, workdir: str) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    prefix = f"con{random.getrandbits(24):06x}."
    settings = KafkaSettings(bootstrap=bootstrap, client_id="console-cost", prefix=prefix)
    partitions = await ensure_topics(settings)
    db = os.path.join(workdir, f"{prefix}central.db")
    drivers = [f"D{i:05d}" for i in range(args.cps)]
    subprocess.run(
        [sys.executable, "-m", "evproto.daemons.central", "--db", db, "drivers", "add", *drivers],
        check=True,
        capture_output=True,
    )
    ready = os.path.join(workdir, f"{prefix}ready.json")
    log = open(os.path.join(workdir, f"{prefix}central.log"), "wb")
    central = subprocess.Popen(
        central_argv(db, bootstrap, ready, ["--insecure"]),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "EVPROTO_TOPIC_PREFIX": prefix},
    )
    children: list[Child] = []
    tasks: list[asyncio.Future[Any]] = []
    engines: Engines | None = None
    try:
        while not os.path.exists(ready):
            if central.poll() is not None:
                raise RuntimeError(f"Central exited; see {log.name}")
            await asyncio.sleep(0.05)
        info = json.loads(Path(ready).read_text())
        base = f"http://{info['http']}"
        cp_ids = [f"CP{i:05d}" for i in range(args.cps)]
        engines = Engines(settings, cp_ids, partitions)
        await engines.producer.start()
        monitors = Child(_monitors_main, info["listen"], cp_ids, None)
        children.append(monitors)
        say(args, f"{await monitors.recv(300)} monitors connected")
        tasks = [asyncio.ensure_future(engines.run_engines()), asyncio.ensure_future(engines.telemetry())]
        await asyncio.sleep(1.0)
        await engines.request_supplies(args.cps)
        deadline = time.monotonic() + 120
        while len(engines.supplying) < args.cps and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
        engines.measuring = True
        say(args, f"{len(engines.supplying)} supplying; settling")
        await asyncio.sleep(args.settle)

        say(args, f"window 1: no console ({args.window:g} s)")
        none = await _window(central, engines, args.window)

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1600, "height": 1000})
            t0 = time.monotonic()
            await page.goto(base + "/")
            tiles = "document.querySelectorAll('[data-cp-id]').length"
            while await page.evaluate(tiles) < args.cps:  # polled: the page's CSP forbids eval
                if time.monotonic() - t0 > 120:
                    raise RuntimeError("the console did not show every CP within 120 s")
                await asyncio.sleep(0.1)
            load_s = time.monotonic() - t0
            heap_mb = await page.evaluate("performance.memory ? performance.memory.usedJSHeapSize / 1048576 : null")
            cdp = await page.context.new_cdp_session(page)
            await cdp.send("Performance.enable")
            await asyncio.sleep(2.0)  # the snapshot's layout done; then measure the steady updates
            say(args, f"window 2: one console in Chromium ({args.window:g} s)")
            m0, s0 = await _metrics(cdp), await page.evaluate(PAGE_STATS)
            one = await _window(central, engines, args.window)
            m1, s1 = await _metrics(cdp), await page.evaluate(PAGE_STATS)
            # Does the page keep up? Its tiles against Central's API at the end of the window.
            supplying_tiles = await page.evaluate("document.querySelectorAll('#grid [data-state=SUPPLYING]').length")
            api_cps = await asyncio.to_thread(_get_json, base + "/api/v1/cps")
            supplying_api = sum(1 for cp in api_cps if cp["state"] == "SUPPLYING")
            states_api = dict(collections.Counter(cp["state"] for cp in api_cps))
            per_s = {
                k: round((m1[k] - m0[k]) / one["window_s"] * 1000, 1)
                for k in ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")
            }
            browser_figures = {
                "first_load_s": round(load_s, 2),
                "js_heap_mb": round(heap_mb, 1) if heap_mb else None,
                "main_thread_ms_per_s": per_s["TaskDuration"],
                "script_ms_per_s": per_s["ScriptDuration"],
                "layout_ms_per_s": per_s["LayoutDuration"],
                "style_ms_per_s": per_s["RecalcStyleDuration"],
                "update_ms_per_s": round((s1["applyMs"] - s0["applyMs"]) / one["window_s"], 1),
                "diffs_per_s": round((s1["diffs"] - s0["diffs"]) / one["window_s"], 2),
                "snapshots_in_window": s1["snapshots"] - s0["snapshots"],
                "tiles_drawn_per_s": round((s1["tilesDrawn"] - s0["tilesDrawn"]) / one["window_s"]),
                "tiles_deferred_per_s": round((s1["tilesDeferred"] - s0["tilesDeferred"]) / one["window_s"]),
                "supplying_tiles": supplying_tiles,
                "supplying_api": supplying_api,
                "states_api": states_api,
            }

            # A state change's way to the page: STOP / RESUME through the API until the tile says so.
            delays = []
            for i in range(args.commands):
                cp_id = cp_ids[i % len(cp_ids)]
                for action, state in (("stop", "STOPPED"), ("resume", "")):
                    t0 = time.monotonic()
                    await asyncio.to_thread(_post, f"{base}/api/v1/cps/{cp_id}/{action}")
                    tile = f"document.querySelector('[data-cp-id=\"{cp_id}\"]').dataset.state"
                    while True:
                        shown = await page.evaluate(tile)
                        if (shown == state) if state else (shown != "STOPPED"):
                            break
                        if time.monotonic() - t0 > 30:
                            raise RuntimeError(f"{cp_id}'s tile did not follow {action} within 30 s")
                        await asyncio.sleep(0.01)
                    delays.append((time.monotonic() - t0) * 1000)
            browser_figures["command_to_tile_ms"] = {
                "p50": round(nearest_rank(delays, 50)),
                "max": round(max(delays)),
                "n": len(delays),
            }

            extra = args.consoles - 1
            streams = Child(_streams_main, base + "/api/v1/stream", extra)
            children.append(streams)
            await streams.recv(60)
            say(args, f"window 3: {args.consoles} consoles ({args.window:g} s)")
            twenty = await _window(central, engines, args.window)
            streams.conn.send("stop")
            alive, streamed = await streams.recv(60)
            await browser.close()
        return {
            "cps": args.cps,
            "supplying": len(engines.supplying),
            "none": none,
            "one": one,
            "many": twenty,
            "consoles": args.consoles,
            "streams_alive": alive + 1,
            "stream_kb_per_s_each": round(streamed / max(1, extra) / twenty["window_s"] / 1024, 1),
            "browser": browser_figures,
        }
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if engines is not None:
            await engines.producer.close(timeout_s=2.0)
        for child in children:
            child.stop()
        if central.poll() is None:
            central.send_signal(signal.SIGTERM)
            try:
                central.wait(15)
            except subprocess.TimeoutExpired:
                central.kill()
        log.close()


def say(args: argparse.Namespace, text: str) -> None:
    print(f"[console {args.cps} CPs] {text}", file=sys.stderr, flush=True)


def report(args: argparse.Namespace, r: dict[str, Any]) -> str:
    base = r["none"]["central_cpu_percent"]
    b = r["browser"]

    def ratio(x: float) -> str:
        return f"{x / base:.2f}" if base else "-"

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} (2 cores, shared; broker, load, Central "
        f"and Chromium on the same machine), Python {platform.python_version()}: "
        f"`python benchmarks/console_cost.py --cps {args.cps} --window {args.window:g} --consoles {args.consoles}`. "
        f"{r['supplying']} of {r['cps']} CPs supplying, each reporting once a second.",
        "",
        "| consoles open | Central CPU | ratio to none | Central RSS | telemetry/s | machine busy |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, w in (("none", r["none"]), ("1 (Chromium)", r["one"]), (f"{r['consoles']}", r["many"])):
        lines.append(
            f"| {label} | {w['central_cpu_percent']:.1f} % | {ratio(w['central_cpu_percent'])} | "
            f"{w['central_rss_mb']:.0f} MB | {w['telemetry_per_s']:,.0f} | {w['machine_busy_percent']:.0f} % |"
        )
    lines += [
        "",
        f"Each console's stream: {r['stream_kb_per_s_each']:,} KiB/s ({r['streams_alive']} of {r['consoles']} "
        "still open at the end of the window).",
        "",
        "The page in Chromium, per second of telemetry at this rate (Chromium's own counters):",
        "",
        "| updating the page (its own count) | main thread busy | script | layout | style | "
        "tiles drawn / deferred | first load | JS heap |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {b['update_ms_per_s']} ms/s | {b['main_thread_ms_per_s']} ms/s | {b['script_ms_per_s']} ms/s | "
        f"{b['layout_ms_per_s']} ms/s | {b['style_ms_per_s']} ms/s | "
        f"{b['tiles_drawn_per_s']:,} / {b['tiles_deferred_per_s']:,} per s | {b['first_load_s']} s | "
        f"{b['js_heap_mb']} MB |",
        "",
        f"At the end of the window the page showed {b['supplying_tiles']:,} tiles SUPPLYING and Central's API "
        f"{b['supplying_api']:,}; the page took {b['diffs_per_s']} updates a second and "
        f"{b['snapshots_in_window']} new snapshot(s) (a reconnection) in the window. A STOP or RESUME "
        f"sent to the API showed on its tile in {b['command_to_tile_ms']['p50']} ms (median; slowest "
        f"{b['command_to_tile_ms']['max']} ms, {b['command_to_tile_ms']['n']} commands). CPs per state (API): "
        + ", ".join(f"{state} {n:,}" for state, n in sorted(b["states_api"].items()))
        + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cps", type=int, default=5000)
    ap.add_argument("--window", type=float, default=20.0, help="seconds per window")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds after the ramp before window 1")
    ap.add_argument("--commands", type=int, default=5, help="STOP+RESUME pairs timed from the API to the tile")
    ap.add_argument("--consoles", type=int, default=20, help="consoles open in window 3 (>= 2)")
    ap.add_argument("--write", metavar="FILE", help="put the tables between <!-- bench:console --> markers")
    args = ap.parse_args(argv)
    if args.cps < 1 or args.window <= 0 or args.consoles < 2:
        ap.error("--cps >= 1, --window > 0, --consoles >= 2")
    if not os.access(CHROMIUM, os.X_OK):
        ap.error(f"{CHROMIUM} is missing: make browser")
    workdir = tempfile.mkdtemp(prefix="evconsole-")
    broker = EmbeddedBroker(log_path=os.path.join(workdir, "broker.log"))
    broker.start()
    try:
        r = asyncio.run(measure(args, broker.bootstrap, workdir))
    finally:
        broker.stop()
    print(json.dumps(r), file=sys.stderr)
    text = report(args, r)
    print(text)
    if args.write:
        write_section(Path(args.write), "console", text, intro="## The web console\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
