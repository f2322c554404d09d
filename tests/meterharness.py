"""The simulated meter (``evmeter-sim``) as a real process for tests."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

#: The register in the simulator's answer to ``status``.
_STATUS = re.compile(r": ([0-9.]+) Wh, ")


class Sim:
    """``evmeter-sim --pty`` as a real process: ``send`` types a command on its stdin,
    ``command`` does so and returns once the simulator has carried it out, ``energy_wh()``
    asks it for its register (from its ``status`` answer)."""

    def __init__(self, protocol: str, *args: str, link: str | None = None) -> None:
        argv = [sys.executable, "-m", "evproto.firmware_sim", "--pty", "--protocol", protocol, *args]
        if link:
            argv += ["--link", link]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        self.path = self.proc.stdout.readline().decode().strip()
        assert self.path.startswith("/"), self.path
        self.lines: list[str] = []
        self._lock = threading.Condition()
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._lock:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._lock.notify_all()

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((command + "\n").encode())
        self.proc.stdin.flush()

    def command(self, *commands: str, timeout_s: float = 10.0) -> str:
        """Type ``commands``, then ``status``; return the status line once it is printed.

        The simulator reads its stdin one line at a time, in order, so by the time it
        answers ``status`` every command before it has taken effect.
        """
        with self._lock:
            seen = len(self.lines)
        for command in commands:
            self.send(command)
        self.send("status")

        def answered() -> str | None:
            return next((line for line in self.lines[seen:] if _STATUS.search(line)), None)

        with self._lock:
            line = self._lock.wait_for(answered, timeout_s)
        if line is None:
            raise AssertionError(f"the simulator did not answer status after {commands}")
        return line

    def energy_wh(self, timeout_s: float = 10.0) -> float:
        """The register now, as the simulator itself reports it."""
        m = _STATUS.search(self.command(timeout_s=timeout_s))
        assert m is not None
        return float(m.group(1))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
