"""`ev-driver` on a real terminal: the live screen, its keys, and the terminal as it was after.

The driver runs as the session leader of a real pseudo-terminal (Python's ``pty``), as in
a terminal window, against a real network (Central, a CP, the embedded broker). The test
reads the screen's bytes, types keys, and checks the terminal's line discipline (echo,
canonical mode) through the master side, which reports the slave's settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import pty
import re
import select
import signal
import sys
import termios
import time

import pytest
from netharness import Network, wait_for
from rich.console import Console

from evproto.daemons.driver.live import run_screen
from evproto.daemons.driver.screen import DriverScreen

GUARD_S = 60.0  # only stops a hang; never a timing assertion
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


class DriverTerminal:
    """``ev-driver`` in a terminal window of its own."""

    def __init__(self, net: Network, driver_id: str, *args: str, columns: int = 110, lines: int = 60) -> None:
        self.ready_file = os.path.join(net.tmp, f"tty-{driver_id}.ready.json")
        self.state_dir = os.path.join(net.tmp, f"tty-state-{driver_id}")
        argv = [
            sys.executable,
            "-m",
            "evproto.daemons.driver",
            "--kafka",
            net.bootstrap,
            "--id",
            driver_id,
            "--state-dir",
            self.state_dir,
            "--ready-file",
            self.ready_file,
            "--insecure",
            *args,
        ]
        pid, fd = pty.fork()
        if pid == 0:  # the child: the slave is its stdin, stdout, stderr and controlling terminal
            try:
                os.chdir(net.tmp)
                os.environ.update(
                    COLUMNS=str(columns),
                    LINES=str(lines),
                    TERM="xterm-256color",
                    PYTHONUNBUFFERED="1",
                    EVPROTO_TOPIC_PREFIX=net.prefix,
                )
                os.environ.pop("NO_COLOR", None)
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.raw = bytearray()
        self.wait_status: int | None = None

    def read(self) -> str:
        """Everything shown so far, escape sequences taken out. Reading also keeps the
        driver from blocking on a full terminal, so the tests read while they wait."""
        while select.select([self.fd], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: nothing holds the slave side any more
                break
            if not chunk:
                break
            self.raw += chunk
        return _ANSI.sub(b"", bytes(self.raw)).decode("utf-8", "replace")

    def shows(self, pattern: str) -> bool:
        return re.search(pattern, self.read()) is not None

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def modes(self) -> tuple[bool, bool]:
        """(echo, canonical) of the terminal now."""
        lflag = termios.tcgetattr(self.fd)[3]
        return bool(lflag & termios.ECHO), bool(lflag & termios.ICANON)

    def exited(self) -> bool:
        self.read()
        if self.wait_status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.wait_status = status
        return self.wait_status is not None

    def exit_code(self) -> int:
        assert self.wait_status is not None
        return os.waitstatus_to_exitcode(self.wait_status)

    def close(self) -> None:
        if not self.exited():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.wait_status = os.waitpid(self.pid, 0)[1]
        with contextlib.suppress(OSError):
            os.close(self.fd)


@pytest.fixture
def terminals():
    opened: list[DriverTerminal] = []

    def open_terminal(*args, **kw) -> DriverTerminal:
        opened.append(DriverTerminal(*args, **kw))
        return opened[-1]

    yield open_terminal
    for t in opened:
        t.close()


def _started(term: DriverTerminal) -> None:
    wait_for(lambda: (term.read(), os.path.exists(term.ready_file))[1], "the driver to start", GUARD_S)
    wait_for(lambda: term.shows(r"Driver D00\d"), "the live screen", GUARD_S)
    wait_for(lambda: term.modes() == (False, False), "keys one by one, without echo", GUARD_S)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_live_screen_shows_the_supply_its_ticket_and_the_cps_and_q_restores_the_terminal(
    net: Network, terminals
) -> None:
    net.start_central("D001")
    net.start_cp("CP001", price=0.42, auto=True, engine_args=("--plug-delay-s", "0.5", "--time-scale", "60"))
    net.wait_state("CP001", "ACTIVATED")
    term = terminals(net, "D001")
    assert term.modes() == (True, True), "a fresh terminal echoes and edits lines"
    _started(term)
    wait_for(lambda: term.shows("Central reachable"), "Central's heartbeat on the screen", GUARD_S)

    term.type(b"r CP001 4s")
    wait_for(lambda: term.shows("> r CP001 4s"), "the command being typed", GUARD_S)
    term.type(b"\r")
    for step in ("SENT", "REQUESTED", "AUTHORIZED", "SUPPLYING"):
        wait_for(lambda: term.shows(step), f"the {step} step", GUARD_S)
    # A live reading: CP, kW, kWh, EUR and the time elapsed, in the supply's box.
    wait_for(lambda: term.shows(r"CP001\s+\d+\.\d\s+\d+\.\d{3}\s+\d+\.\d{2}\s+\d\d:\d\d"), "the live figures", GUARD_S)
    wait_for(lambda: term.shows(r"Tickets \(1\)"), "the ticket", GUARD_S)
    assert term.shows(r"CP001\s+\d+\.\d{3}\s+0\.42\s+\d+\.\d{2}\s+[\d.]+\s+completed")
    assert term.shows("COMPLETED")

    assert not term.shows(r"Charge points \(")
    term.type(b"l")
    wait_for(lambda: term.shows(r"Charge points \(1 available of 1\)"), "the list of charge points", GUARD_S)
    assert term.shows(r"CP001\s+Alicante\s+0\.42\s+ACTIVATED available")
    assert term.modes() == (False, False)

    term.type(b"q")
    wait_for(term.exited, "the driver to quit on q", GUARD_S)
    assert term.exit_code() == 0
    assert term.modes() == (True, True), "the terminal was left without echo or line editing"
    with open(os.path.join(term.state_dir, "driver.log"), encoding="utf-8") as fh:
        assert "TICKET session" in fh.read(), "the log went to its file while the screen owned the terminal"


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_leave_the_terminal_as_it_was(net: Network, terminals, how: str) -> None:
    net.start_central("D001")
    term = terminals(net, "D001")
    _started(term)
    if how == "ctrl-c":
        term.type(b"\x03")  # the terminal sends SIGINT to the driver, as it would to any program
    else:
        os.kill(term.pid, signal.SIGTERM)
    wait_for(term.exited, f"the driver to stop on {how}", GUARD_S)
    assert term.exit_code() == 0
    assert term.modes() == (True, True)


@pytest.mark.slow
def test_without_a_terminal_the_driver_writes_plain_lines_even_with_panel(net: Network) -> None:
    net.start_central("D001")
    app = net.start_driver("D001", "CP404\n", "--panel", "--exit-when-done")
    wait_for(lambda: not app.alive(), "the driver to finish its file")
    assert app.popen.returncode == 0
    with open(app.log, "rb") as fh:
        out = fh.read()
    assert b"CP404: DENIED: charge point CP404 does not exist" in out
    assert b"\x1b" not in out, "escape codes in plain output"
    assert not os.path.exists(os.path.join(net.tmp, "dstate-D001", "driver.log"))


# -- the adapter in this process, on a pty ----------------------------------------------------


def _echo_and_canonical(fd: int) -> tuple[bool, bool]:
    lflag = termios.tcgetattr(fd)[3]
    return bool(lflag & termios.ECHO), bool(lflag & termios.ICANON)


def test_the_terminal_is_restored_when_drawing_raises(cooked_pty_pair) -> None:
    pair = cooked_pty_pair
    calls = 0

    def clock_ms() -> int:
        nonlocal calls
        calls += 1
        if calls > 3:
            raise RuntimeError("the clock broke")
        assert _echo_and_canonical(pair.slave) == (False, False)
        return 1_700_000_000_000

    async def main() -> None:
        with open(pair.slave, "rb", buffering=0, closefd=False) as stdin:
            console = Console(file=io.StringIO(), width=80, force_terminal=True)
            await run_screen(
                DriverScreen("D1"),
                stop=asyncio.Event(),
                on_command=lambda _: None,
                console=console,
                stdin=stdin,
                refresh_hz=50,
                clock_ms=clock_ms,
            )

    assert _echo_and_canonical(pair.slave) == (True, True)
    with pytest.raises(RuntimeError, match="the clock broke"):
        asyncio.run(main())
    assert calls > 3
    assert _echo_and_canonical(pair.slave) == (True, True)


def test_keys_typed_on_the_terminal_reach_the_app_and_cancelling_restores_it(cooked_pty_pair) -> None:
    pair = cooked_pty_pair
    commands: list[str] = []
    screen = DriverScreen("D1")

    async def main() -> None:
        stop = asyncio.Event()
        with open(pair.slave, "rb", buffering=0, closefd=False) as stdin:
            console = Console(file=io.StringIO(), width=80, force_terminal=True)
            task = asyncio.ensure_future(
                run_screen(screen, stop=stop, on_command=commands.append, console=console, stdin=stdin)
            )
            deadline = time.monotonic() + GUARD_S
            while _echo_and_canonical(pair.slave) != (False, False):
                assert time.monotonic() < deadline, "cbreak mode never came"
                await asyncio.sleep(0.01)
            os.write(pair.master, b"lr CP001 30s\rq")
            while len(commands) < 3:
                assert time.monotonic() < deadline, f"keys not delivered: {commands}"
                await asyncio.sleep(0.01)
            assert console.file.getvalue()  # type: ignore[attr-defined]
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())
    assert commands == ["l", "r CP001 30s", "q"]
    assert _echo_and_canonical(pair.slave) == (True, True)
