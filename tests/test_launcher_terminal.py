"""`evcharging up` and its panel when the terminal or the pipe it writes to goes away.

A terminal here is a real pseudo-terminal (Python's ``pty``; no tmux needed): the program
runs as the session leader on the slave side, as a shell does in a terminal window.
Closing the master is exactly what closing the window does: the kernel sends SIGHUP to
the session leader, and every later write to the terminal fails with EIO. A pipe whose
reader died (``| tee`` after Ctrl+C) fails writes with EPIPE. Neither may keep the
launcher from stopping every instance it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import pty
import select
import shlex
import signal
import subprocess
import sys
import time

import pytest
from netharness import wait_for
from rich.console import Console

from evproto.daemons.central.panel import render
from evproto.daemons.central.terminal import PlainReporter, run_panel
from evproto.daemons.launcher import Registry
from evproto.domain.central.view import CentralView, CpView, MessageView

BIN = os.path.dirname(sys.executable)
EV = os.path.join(BIN, "evcharging")
GUARD_S = 10.0  # only stops a hang; never a timing assertion


class Terminal:
    """A terminal window running ``argv`` as its session leader (its shell, say)."""

    def __init__(self, argv: list[str], *, columns: int = 100, lines: int = 40) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: the slave is its stdin, stdout, stderr and controlling terminal
            try:
                os.environ.update(COLUMNS=str(columns), LINES=str(lines), PYTHONUNBUFFERED="1")
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        self.pid = pid
        self.fd: int | None = fd
        self.screen = bytearray()
        self.wait_status: int | None = None  # as os.waitpid gives it, once the program exited

    def read(self, wait_s: float = 0.2) -> bytes:
        """What the program wrote so far. Reading is also what keeps it from blocking on a
        full terminal, so the tests call this while they wait."""
        if self.fd is not None and select.select([self.fd], [], [], wait_s)[0]:
            with contextlib.suppress(OSError):  # EIO once nothing holds the slave side
                self.screen += os.read(self.fd, 65536)
        return bytes(self.screen)

    def run_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.read()

    def shows(self, text: bytes) -> bool:
        return text in self.read()

    def type(self, keys: bytes) -> None:
        assert self.fd is not None
        os.write(self.fd, keys)

    def close_window(self) -> None:
        """What closing a terminal window does: the master side goes away."""
        assert self.fd is not None
        os.close(self.fd)
        self.fd = None

    def exited(self) -> bool:
        if self.wait_status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.wait_status = status
        return self.wait_status is not None

    def close(self) -> None:
        if not self.exited():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.wait_status = os.waitpid(self.pid, 0)[1]
        if self.fd is not None:
            self.close_window()


def alive(run_dir: str) -> list[str]:
    """Names of the registered instances still running."""
    return sorted(i.name for i in Registry(run_dir).alive())


def tidy(run_dir: str) -> None:
    """Whatever a failed test left running: `evcharging down`, then SIGKILL by registered pid."""
    subprocess.run([EV, "down", "--run-dir", run_dir], capture_output=True, timeout=90)
    for inst in Registry(run_dir).alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(inst.pid, signal.SIGKILL)  # type: ignore[arg-type]


# -- the whole launcher in a real terminal ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_closing_the_terminal_stops_every_instance(tmp_path) -> None:
    """The report: `evcharging up` (4 CPs, 3 drivers) for about 10 s, then the window closes."""
    run_dir = str(tmp_path / "run")
    term = Terminal([EV, "up", "--run-dir", run_dir, "--http-port", "0"])
    try:
        wait_for(
            # broker, registry, Central, 4 engines, 4 monitors, 3 drivers, the weather provider and service
            lambda: term.shows(b"EV Charging Network") and len(alive(run_dir)) == 16,
            "16 instances (with the registry and the weather service) and the panel",
            timeout_s=150,
        )
        term.run_for(4)
        term.close_window()
        wait_for(term.exited, "the launcher to exit", timeout_s=120)
        assert alive(run_dir) == [], "still running after the terminal closed"
        assert len(Registry(run_dir).instances) == 16
    finally:
        term.close()
        tidy(run_dir)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_on_up_piped_into_tee_stops_every_instance(tmp_path) -> None:
    """`make demo 2>&1 | tee demo.log`, Ctrl+C: tee dies first, every later write to the pipe
    fails, and still the whole network stops."""
    run_dir, log = str(tmp_path / "run"), str(tmp_path / "demo.log")
    line = (
        f"{shlex.quote(EV)} up --cps 2 --drivers 1 --run-dir {shlex.quote(run_dir)} --http-port 0 "
        f"2>&1 | tee {shlex.quote(log)}"
    )
    term = Terminal(["/bin/sh", "-c", line])
    try:
        wait_for(
            lambda: term.shows(b"CP CP002") and len(alive(run_dir)) == 10,
            "the network and its plain panel",
            timeout_s=120,
        )
        term.run_for(2)
        term.type(b"\x03")  # Ctrl+C: SIGINT to the terminal's foreground process group

        def stopped() -> bool:
            term.read()  # the terminal stays open and read, as a user's would
            return not alive(run_dir)

        wait_for(stopped, "every instance to stop", timeout_s=120)
        wait_for(term.exited, "the shell to exit", timeout_s=60)
        assert len(Registry(run_dir).instances) == 10
    finally:
        term.close()
        tidy(run_dir)
    with open(log, encoding="utf-8", errors="replace") as fh:
        seen = fh.read()
    # What the user kept in demo.log: the plain panel, with no date before Central answered.
    assert "network up:" in seen and "connecting to Central at https://127.0.0.1:" in seen
    assert "1970-01-01" not in seen, seen[:2000]


# -- the panel, whose screen goes away -------------------------------------------------------


class Commands:
    async def __call__(self, command: object) -> str:
        return "ok"


def a_view() -> CentralView:
    return CentralView(
        cps=(CpView(id="CP001", location="Elche", price_eur_kwh=0.3, state="ACTIVATED"),),
        central_id="c1",
        listen="0.0.0.0:7000",
        http="0.0.0.0:8000",
        kafka="k:9092",
        now_ts_ms=int(time.time() * 1000),
    )


async def test_full_screen_panel_ends_quietly_when_its_terminal_closes() -> None:
    master, slave = os.openpty()
    out = os.fdopen(os.dup(slave), "w", encoding="utf-8")
    console = Console(file=out, width=80, height=24, force_terminal=True)
    loop = asyncio.get_running_loop()
    drawn = bytearray()

    def drain() -> None:
        with contextlib.suppress(OSError):
            drawn.extend(os.read(master, 65536))

    loop.add_reader(master, drain)
    try:
        task = asyncio.ensure_future(run_panel(a_view, Commands(), console=console, stdin=slave, refresh_hz=20))
        while b"CP001" not in drawn:
            await asyncio.wait_for(asyncio.sleep(0.05), GUARD_S)
        loop.remove_reader(master)
        os.close(master)  # the window closes: writes to the terminal now fail with EIO
        await asyncio.wait_for(task, GUARD_S)  # ends as if q was typed, without raising
    finally:
        loop.remove_reader(master)
        with contextlib.suppress(OSError):
            os.close(master)
        with contextlib.suppress(OSError):
            out.close()
        os.close(slave)


async def test_plain_panel_ends_quietly_when_nobody_reads_its_pipe() -> None:
    read_fd, write_fd = os.pipe()
    stdin_r, stdin_w = os.pipe()
    out = os.fdopen(write_fd, "w", encoding="utf-8")
    news: list[MessageView] = []

    def get_view() -> CentralView:  # a new message at each refresh: always something to write
        news.append(MessageView(ts_ms=int(time.time() * 1000), level="info", text=f"news {len(news)}"))
        return dataclasses.replace(a_view(), messages=tuple(news[-5:]))

    try:
        task = asyncio.ensure_future(
            run_panel(get_view, Commands(), console=Console(file=out), stdin=stdin_r, refresh_hz=20)
        )
        loop = asyncio.get_running_loop()
        first = await asyncio.wait_for(loop.run_in_executor(None, os.read, read_fd, 4096), GUARD_S)
        assert b"CENTRAL c1" in first
        os.close(read_fd)  # tee died: the next write fails with EPIPE
        read_fd = -1
        await asyncio.wait_for(task, GUARD_S)  # ends as if q was typed, without raising
    finally:
        for fd in (read_fd, stdin_r, stdin_w):
            if fd >= 0:
                os.close(fd)
        with contextlib.suppress(OSError):
            out.close()


# -- the remote panel before Central answers -------------------------------------------------


def test_plain_view_before_central_answers_says_so_without_a_date() -> None:
    reporter = PlainReporter()
    waiting = CentralView(central_id="", http="127.0.0.1:8000")  # no figures yet: no timestamp
    lines = reporter.update(waiting)
    assert lines == ["connecting to Central at http://127.0.0.1:8000 ..."]
    assert reporter.update(waiting) == []  # said once
    failed = CentralView(
        central_id="",
        http="127.0.0.1:8000",
        messages=(MessageView(ts_ms=1_795_832_400_000, level="error", text="cannot reach it"),),
    )
    assert [line.split(" ", 2)[2] for line in reporter.update(failed)] == ["MSG error: cannot reach it"]
    live = reporter.update(a_view())
    assert live[0].split(" ", 2)[2].startswith("CENTRAL c1 socket 0.0.0.0:7000")
    assert not any("1970" in line for line in lines + live)


def test_full_screen_header_before_central_answers_says_so_without_a_date() -> None:
    console = Console(file=io.StringIO(), width=100, height=30, color_system=None)
    console.print(render(CentralView(central_id="", http="127.0.0.1:8000"), width=100, height=30))
    screen = console.file.getvalue()
    assert "connecting to Central at http://127.0.0.1:8000" in screen
    assert "No figures from Central yet" in screen and "registered" not in screen
    assert "1970" not in screen and "reachable" not in screen
