"""A chaos soak in CI: a network under `evcharging chaos`, then its books must balance."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from netharness import wait_for

pytestmark = pytest.mark.slow

BIN = os.path.dirname(sys.executable)
EV = os.path.join(BIN, "evcharging")


def quiet(run_dir: str, requests: int) -> bool:
    """Every driver has worked through its file and waits for nothing."""
    drivers = os.path.join(run_dir, "drivers")
    for d in os.listdir(drivers):
        try:
            with open(os.path.join(drivers, d, "state", "driver-state.json"), encoding="utf-8") as fh:
                state = json.load(fh)
        except (OSError, ValueError):
            return False
        if state.get("pending") or state.get("next_line", 0) < requests:
            return False
    return True


@pytest.mark.timeout(300)  # 40 s of chaos plus start, catch-up and audit: ~100 s here
def test_chaos_then_every_invariant_holds(tmp_path) -> None:
    run_dir = str(tmp_path / "run")
    requests = 5
    up = subprocess.run(
        [
            EV,
            "up",
            "--detach",
            "--cps",
            "5",
            "--drivers",
            "3",
            "--requests",
            str(requests),
            "--run-dir",
            run_dir,
            "--http-port",
            "0",
            "--seed",
            "11",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert up.returncode == 0, up.stderr
    try:
        chaos = subprocess.run(
            [
                EV,
                "chaos",
                "--duration",
                "40",
                "--interval",
                "1.8",
                "--down-max",
                "4",
                "--run-dir",
                run_dir,
                "--seed",
                "12",
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert chaos.returncode == 0, chaos.stderr
        killed = {line.split()[2] for line in chaos.stdout.splitlines() if " killed " in line}
        assert "central" in killed or len(killed) >= 10, chaos.stdout  # every role gets its share over 40 s
        wait_for(lambda: quiet(run_dir, requests), "the drivers to finish their files", timeout_s=240, interval_s=1)
        # Give the last reports time to reach Central and the outboxes time to drain.
        wait_for(
            lambda: subprocess.run([EV, "audit", "--run-dir", run_dir], capture_output=True).returncode == 0,
            "the books to balance",
            timeout_s=60,
            interval_s=2,
        )
        report = json.loads(
            subprocess.run([EV, "audit", "--run-dir", run_dir, "--json"], capture_output=True, text=True).stdout
        )
        assert report["ok"] and report["started"] == report["tickets"] and report["tickets"] > 0
        assert report["ticket_energy_kwh"] == pytest.approx(report["metered_energy_kwh"], abs=1e-6)
        ps = json.loads(
            subprocess.run([EV, "ps", "--run-dir", run_dir, "--json"], capture_output=True, text=True).stdout
        )
        assert all(r["alive"] for r in ps), "chaos restarts everything it kills"
    finally:
        subprocess.run([EV, "down", "--run-dir", run_dir], capture_output=True, timeout=120)
