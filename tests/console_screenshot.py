"""A screenshot of the web console at 50 CPs, for docs/ (not a test).

    .venv/bin/python tests/console_screenshot.py docs/console-50-cps.png

Central's real HTTP application over a real core (tests/consoleharness.py) holding 50 CPs in
every state: supplies in progress, an operator's stop, a weather stop at one location, a
location whose temperature is unknown, a faulty engine, monitors gone. An admin logs in
in Debian's Chromium (headless) and the page is captured at 1440 px wide.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from browsers import CHROMIUM, CHROMIUM_ARGS
from consoleharness import now_ms, start_console

from evproto.daemons.tokens import TokenRole
from evproto.domain.central.records import HealthReport
from evproto.messages import FaultCode

TOWNS = ["Alicante", "Elche", "Madrid Centro", "Murcia", "Valencia", "Teruel", "Burgos"]


async def main(out: Path) -> None:
    cps = [(f"CP{i:03d}", TOWNS[i % len(TOWNS)], round(0.28 + (i % 5) * 0.03, 2)) for i in range(1, 51)]
    with tempfile.TemporaryDirectory() as tmp:
        server = await start_console(Path(tmp), cps)
        backend, core = server.backend, server.backend.core
        for n, i in enumerate((2, 9, 17, 23, 31, 40, 44)):
            backend.supply(f"CP{i:03d}", f"D{n + 1:03d}", energy_kwh=1.2 + n * 0.7, power_kw=7.2 + n * 3)
        await backend.stop("CP005", actor="screenshot", source="local")
        backend._take(core.weather("Teruel", -4.0, now_ms()))  # CP006, CP013, ...: stopped, weather
        backend._take(core.weather("Burgos", None, now_ms()))  # weather unknown there
        backend._take(core.engine_health("CP011", HealthReport(False, FaultCode.METER_LOST), now_ms()))
        for cp_id in ("CP027", "CP038"):
            backend._take(core.monitor_lost(cp_id, False, "link lost", now_ms()))
        backend.finish("CP044", energy_kwh=9.4)
        try:
            from playwright.async_api import async_playwright

            async with async_playwright() as p:
                browser = await p.chromium.launch(
                    executable_path=CHROMIUM,
                    args=CHROMIUM_ARGS,
                )
                page = await browser.new_page(viewport={"width": 1440, "height": 900})
                await page.goto(f"{server.url}/login")
                await page.get_by_label("API token").fill(server.token(TokenRole.ADMIN, "ana"))
                await page.get_by_role("button", name="Log in").click()
                await page.wait_for_url(f"{server.url}/")
                await page.locator("#grid [data-cp-id]").nth(49).wait_for()
                await page.get_by_role("button", name="Refresh audit log").click()
                await page.locator("#audit tbody tr").first.wait_for()
                await page.screenshot(path=str(out), full_page=True)
                await browser.close()
        finally:
            await server.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "console-50-cps.png")))
