"""The driver's screen on a terminal: rich's Live at a bounded rate, keys in cbreak mode.

:func:`run_screen` draws :func:`.screen.render` ``refresh_hz`` times a second whatever
the rate of Kafka records (and at once after a key), reads keys through
:class:`.keys.KeyLine` and hands hot keys and command lines to the app. The terminal's
settings are restored on every way out: ``q``, SIGINT/SIGTERM (the app's stop event),
an exception, or cancellation. :class:`ScreenNotes` shows the app's warnings on it.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import sys
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.live import Live

from ..common import stdin_lines
from .keys import HotKey, KeyLine
from .screen import DriverScreen, render

try:  # POSIX only; elsewhere the keys are read as lines
    import termios
except ImportError:  # pragma: no cover
    termios = None  # type: ignore[assignment]

__all__ = ["run_screen", "cbreak", "ScreenNotes", "DEFAULT_REFRESH_HZ"]

log = logging.getLogger("evproto.driver")

#: Redraws a second: live figures look live, and a burst of records costs no more.
DEFAULT_REFRESH_HZ = 4.0


@contextlib.contextmanager
def cbreak(fd: int) -> Iterator[None]:
    """Keys one by one, without echo, while inside; the terminal as it was afterwards.

    ISIG stays on: Ctrl+C still raises SIGINT, which stops the app like ``q``.
    """
    saved = termios.tcgetattr(fd)
    attrs = termios.tcgetattr(fd)
    attrs[3] &= ~(termios.ECHO | termios.ICANON)
    attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    try:
        yield
    finally:
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class ScreenNotes(logging.Handler):
    """Log records of WARNING and above, as notes at the bottom of the screen."""

    def __init__(self, screen: DriverScreen) -> None:
        super().__init__(logging.WARNING)
        self.screen = screen

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.screen.note(f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.getMessage()}")
        except Exception:  # a log call must never break the app
            self.handleError(record)


def _tty_fd(stream: object) -> int | None:
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None
    return fd if termios is not None and os.isatty(fd) else None


def _quietly(action: Callable[[], object]) -> None:
    with contextlib.suppress(OSError):  # the terminal may be gone: the rest must still be undone
        action()


async def run_screen(
    screen: DriverScreen,
    *,
    stop: asyncio.Event,
    on_command: Callable[[str], None],
    console: Console | None = None,
    stdin: object = None,
    refresh_hz: float = DEFAULT_REFRESH_HZ,
    clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
) -> None:
    """Show ``screen`` until cancelled or ``stop`` is set (``q`` sets it).

    Hot keys and submitted lines go to ``on_command`` as text ("l", "q", "r CP001 30s").
    With ``stdin`` a terminal, keys are read one by one; otherwise line by line. The last
    frame stays on the terminal after the screen ends.
    """
    if refresh_hz <= 0:
        raise ValueError("refresh_hz must be positive")
    console = console if console is not None else Console()
    source = sys.stdin if stdin is None else stdin
    period_s = 1.0 / refresh_hz
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    keys = KeyLine()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    fd = _tty_fd(source)

    def command(text: str) -> None:
        try:
            on_command(text)
        except Exception:  # the screen goes on; the log says what failed
            log.exception("command %r failed", text)
        wake.set()

    def on_readable() -> None:
        assert fd is not None
        try:
            data = os.read(fd, 1024)
        except BlockingIOError:
            return
        except OSError:  # EIO: the terminal is gone
            data = b""
        if not data:
            loop.remove_reader(fd)
            return
        for action in keys.feed(decoder.decode(data)):
            command(action.key if isinstance(action, HotKey) else action.line)
        screen.typed = keys.buffer
        wake.set()

    async def read_lines() -> None:
        async for line in stdin_lines():
            command(line)

    def draw(live: Live) -> None:
        try:
            live.update(render(screen, now_ms=clock_ms()), refresh=True)
        except OSError as exc:  # the terminal is gone (EIO) or nobody reads it (EPIPE): nobody to show
            if not stop.is_set():
                log.warning("the driver's screen is gone (%s): stopping", exc.strerror or exc)
            stop.set()

    with contextlib.ExitStack() as undo:
        reader: asyncio.Future[None] | None = None
        if fd is not None:
            undo.enter_context(cbreak(fd))
            loop.add_reader(fd, on_readable)
            undo.callback(loop.remove_reader, fd)
        elif source is not None:
            reader = asyncio.ensure_future(read_lines())
            undo.callback(reader.cancel)
        live = Live(console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False)
        live.start()
        undo.callback(_quietly, live.stop)  # undone before the terminal's settings: the last frame stays
        undo.callback(lambda: draw(live))
        while not stop.is_set():
            draw(live)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), period_s)
            wake.clear()
