"""The simulated meter (``evmeter-sim``) as a real process for tests."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time


class Sim:
    """``evmeter-sim --pty`` as a real process: ``send`` types a command on its stdin,
    ``energy_wh()`` asks it for its register (from its ``status`` answer)."""

    def __init__(self, protocol: str, *args: str, link: str | None = None) -> None:
        argv = [sys.executable, "-m", "evproto.firmware_sim", "--pty", "--protocol", protocol, *args]
        if link:
            argv += ["--link", link]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        self.path = self.proc.stdout.readline().decode().strip()
        assert self.path.startswith("/"), self.path
        self.lines: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._lock:
                self.lines.append(raw.decode(errors="replace").rstrip())

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((command + "\n").encode())
        self.proc.stdin.flush()

    def energy_wh(self, timeout_s: float = 10.0) -> float:
        """The register now, as the simulator itself reports it."""
        with self._lock:
            seen = len(self.lines)
        self.send("status")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                new = self.lines[seen:]
            for line in new:
                m = re.search(r": ([0-9.]+) Wh, ", line)
                if m:
                    return float(m.group(1))
            time.sleep(0.05)
        raise AssertionError("the simulator did not answer status")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
