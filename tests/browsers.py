"""The system's Chromium for the browser tests (the web console, the events page).

Playwright never downloads a browser here: Debian's Chromium is launched by path, and its
absence fails the test (``make browser`` installs it) rather than skipping it, so a CI
machine without it cannot pass by testing nothing. Tests that use it carry the ``browser``
marker (left out of ``make test-fast``).
"""

from __future__ import annotations

import os

import pytest

CHROMIUM = "/usr/bin/chromium"
#: Headless as root in a sandboxed machine; no background traffic (the network is closed).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def need_chromium() -> None:
    """Fail (not skip) when the system's Chromium is missing."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (installs Debian's chromium) and test again")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
