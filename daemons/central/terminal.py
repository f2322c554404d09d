"""Running the panel on a terminal: key input, the live screen, and plain mode without a terminal.

:mod:`.panel` draws a view; this module reads what the operator types
(:class:`KeyReader`), refreshes the screen at a fixed rate (:func:`run_panel`)
and, when stdout is not a terminal, reports changes as plain log lines
(:class:`PlainReporter`) while still taking commands from stdin.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Awaitable, Callable, Sequence

from rich.console import Console
from rich.live import Live
from rich.text import Text

from evproto.domain.central.view import CentralView, CpView, MessageView, SessionView

from .panel import HELP_TEXT, Command, central_url, local_time_text, parse_command, price_text, render, safe_text

try:  # POSIX only; elsewhere KeyReader reads plain lines.
    import termios
except ImportError:  # pragma: no cover
    termios = None  # type: ignore[assignment]

__all__ = ["KeyReader", "PlainReporter", "run_panel"]

log = logging.getLogger("evproto.central")

#: The share of one core the full-screen panel may take: after a redraw that cost c
#: seconds, the next timed one waits at least c / PANEL_CPU_SHARE. A small network
#: redraws at refresh_hz; a 5,000-CP one (about 45 ms a redraw) about twice a second.
PANEL_CPU_SHARE = 0.1


def redraw_wait(period_s: float, cost_s: float, share: float = PANEL_CPU_SHARE) -> float:
    """Seconds to wait after a redraw that took ``cost_s`` before the next timed one."""
    return max(period_s, cost_s / share) - cost_s if cost_s > 0 else period_s


# States of the escape-sequence parser of KeyReader.
_ESC_NONE, _ESC_START, _ESC_CSI, _ESC_SS3 = range(4)


class KeyReader:
    """Submitted command lines from stdin, as an asyncio queue (:attr:`lines`).

    On a TTY (and ``interactive``) the terminal goes to cbreak mode without echo and the
    reader is a small line editor: printable keys append, Backspace deletes, Enter submits,
    Esc (or Ctrl+U) clears; :attr:`buffer` is the line being typed. Otherwise stdin is read
    line by line, untouched. Use ``async with`` (or :meth:`start` / :meth:`close`): the
    terminal settings are restored on close, whatever happened.
    """

    def __init__(
        self,
        stdin: int | IO[str] | None = None,
        *,
        interactive: bool = True,
        on_change: Callable[[], None] | None = None,
        max_line_chars: int = 200,
        max_queued: int = 64,
    ) -> None:
        self._stream: int | IO[str] | None = sys.stdin if stdin is None else stdin
        self._fd = self._stream if isinstance(self._stream, int) else _fileno(self._stream)
        self.is_tty = bool(interactive and termios is not None and self._fd is not None and os.isatty(self._fd))
        self.on_change = on_change
        self.max_line_chars = max_line_chars
        #: Submitted lines, stripped, never empty. Lines beyond ``max_queued`` are dropped.
        self.lines: asyncio.Queue[str] = asyncio.Queue(maxsize=max_queued)
        self.dropped = 0
        self.eof = False
        self._chars: list[str] = []
        self._esc = _ESC_NONE
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._saved_attrs: list | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader_fd: int | None = None
        self._closed = False

    @property
    def buffer(self) -> str:
        """The line being typed (TTY mode; empty otherwise)."""
        return "".join(self._chars) if self.is_tty else ""

    async def __aenter__(self) -> KeyReader:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Start reading (from a coroutine: it needs the running loop)."""
        self._loop = loop = asyncio.get_running_loop()
        if self._stream is None:  # no stdin at all (closed, or a GUI launcher)
            self.eof = True
            return
        if self._fd is not None:
            if self.is_tty:
                try:
                    self._enter_cbreak(self._fd)
                except termios.error:  # a TTY that refuses: fall back to plain lines
                    self.is_tty = False
            try:
                loop.add_reader(self._fd, self._on_readable)
                self._reader_fd = self._fd
                return
            except (OSError, ValueError, NotImplementedError):
                pass  # e.g. a regular file or /dev/null: epoll refuses them
        threading.Thread(target=self._read_blocking, name="evproto-keyreader", daemon=True).start()

    def close(self) -> None:
        """Stop reading and restore the terminal settings; safe to call twice."""
        self._closed = True
        if self._reader_fd is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._reader_fd)
            self._reader_fd = None
        if self._saved_attrs is not None and self._fd is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved_attrs)
            self._saved_attrs = None

    def _enter_cbreak(self, fd: int) -> None:
        self._saved_attrs = termios.tcgetattr(fd)
        attrs = termios.tcgetattr(fd)
        attrs[3] &= ~(termios.ECHO | termios.ICANON)  # ISIG stays: Ctrl+C still interrupts
        attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:  # EIO: the terminal went away
            data = b""
        if not data:
            self._at_eof()
        else:
            self._feed(self._decoder.decode(data))

    def _read_blocking(self) -> None:
        """Thread body for inputs the event loop cannot watch (files, StringIO...)."""
        loop = self._loop
        assert loop is not None
        while not self._closed:
            try:
                if self._fd is not None:
                    data = os.read(self._fd, 4096)
                    chunk = self._decoder.decode(data) if data else None
                else:
                    chunk = self._stream.readline() or None  # type: ignore[union-attr]
            except (OSError, ValueError):
                chunk = None
            try:
                if chunk is None:
                    loop.call_soon_threadsafe(self._at_eof)
                    return
                loop.call_soon_threadsafe(self._feed, chunk)
            except RuntimeError:  # the loop is closed
                return

    def _at_eof(self) -> None:
        self.eof = True
        if self._reader_fd is not None and self._loop is not None:
            self._loop.remove_reader(self._reader_fd)
            self._reader_fd = None
        if not self.is_tty and self._chars:
            self._submit()

    def _feed(self, text: str) -> None:
        if self._closed:
            return
        if self.is_tty:
            self._edit(text)
            if self.on_change is not None:
                self.on_change()
            return
        for ch in text:
            if ch == "\n":
                self._submit()
            elif len(self._chars) < self.max_line_chars:
                self._chars.append(ch)

    def _edit(self, text: str) -> None:
        chars = self._chars
        for ch in text:
            if self._esc == _ESC_CSI:  # swallow arrow keys & co up to their final byte
                if "\x40" <= ch <= "\x7e":
                    self._esc = _ESC_NONE
                continue
            if self._esc == _ESC_SS3:
                self._esc = _ESC_NONE
                continue
            if self._esc == _ESC_START:
                self._esc = {"[": _ESC_CSI, "O": _ESC_SS3}.get(ch, _ESC_NONE)
                if self._esc != _ESC_NONE:
                    continue
                chars.clear()  # a lone Esc
            if ch in "\r\n":
                self._submit()
            elif ch in "\x7f\x08":
                if chars:
                    chars.pop()
            elif ch == "\x1b":
                self._esc = _ESC_START
            elif ch == "\x15":  # Ctrl+U
                chars.clear()
            elif ch.isprintable() and len(chars) < self.max_line_chars:
                chars.append(ch)
        if self._esc == _ESC_START:  # a lone Esc at the end of a read: a key, not a sequence
            self._esc = _ESC_NONE
            chars.clear()

    def _submit(self) -> None:
        line = "".join(self._chars).strip()
        self._chars.clear()
        if not line:
            return
        try:
            self.lines.put_nowait(line)
        except asyncio.QueueFull:
            self.dropped += 1


def _fileno(stream: object) -> int | None:
    try:
        return stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # io.StringIO raises UnsupportedOperation
        return None


# -- plain output ----------------------------------------------------------------------------


class PlainReporter:
    """Plain log lines (no colours, no escape codes) for what changed between views:
    CP states, requests in progress, new application messages, Kafka reachability."""

    def __init__(self) -> None:
        self._cps: dict[str, CpView] | None = None
        self._requests: dict[int, SessionView] = {}
        self._last_message: MessageView | None = None
        self._kafka_ok = True
        self._said_connecting = False

    def update(self, view: CentralView) -> list[str]:
        """The lines for ``view``; the first view taken from Central reports the initial state.

        A view without a timestamp holds nothing from Central yet (a remote panel still
        connecting): it is said once, with no made-up date, and only its messages follow."""
        if not view.now_ts_ms:
            said = [] if self._said_connecting else [f"connecting to Central at {central_url(view.http)} ..."]
            self._said_connecting = True
            return said + self._message_lines(view.messages)
        now = local_time_text(view.now_ts_ms)
        out: list[str] = []
        if self._cps is None:
            out.append(
                f"{now} CENTRAL {safe_text(view.central_id)}"
                f" socket {safe_text(view.listen or '-')}"
                f" HTTP {safe_text(view.http or '-')} Kafka {safe_text(view.kafka or '-')}"
                f" {'reachable' if view.kafka_ok else 'UNREACHABLE'}"
            )
        elif view.kafka_ok != self._kafka_ok:
            out.append(f"{now} KAFKA {safe_text(view.kafka)} {'reachable again' if view.kafka_ok else 'UNREACHABLE'}")
        self._kafka_ok = view.kafka_ok
        out += self._cp_lines(now, view.cps)
        out += self._request_lines(now, view.requests)
        out += self._message_lines(view.messages)
        return out

    def _cp_lines(self, now: str, cps: Sequence[CpView]) -> list[str]:
        old, out = self._cps or {}, []
        for cp in cps:
            prev = old.get(cp.id)
            extra = (
                f" (driver {safe_text(cp.driver_id)})"
                if cp.state == "SUPPLYING" and cp.driver_id
                else " (Out of Order)"
                if cp.state == "STOPPED"
                else ""
            )
            if prev is None:
                out.append(
                    f"{now} CP {safe_text(cp.id)} {safe_text(cp.state)}{extra} at "
                    f"{safe_text(cp.location)}, {price_text(cp.price_eur_kwh)} EUR/kWh"
                )
            elif prev.state != cp.state:
                out.append(f"{now} CP {safe_text(cp.id)} {safe_text(prev.state)} -> {safe_text(cp.state)}{extra}")
        self._cps = {cp.id: cp for cp in cps}
        out += [f"{now} CP {safe_text(cp_id)} removed" for cp_id in old if cp_id not in self._cps]
        return out

    def _request_lines(self, now: str, requests: Sequence[SessionView]) -> list[str]:
        old, out = self._requests, []

        def who(s: SessionView) -> str:
            return f"{now} REQ {s.id} driver {safe_text(s.driver_id)} at {safe_text(s.cp_id)}:"

        for s in requests:
            prev = old.get(s.id)
            if prev is None:
                out.append(f"{who(s)} {safe_text(s.status)}")
            elif prev.status != s.status:
                out.append(f"{who(s)} {safe_text(prev.status)} -> {safe_text(s.status)}")
        self._requests = {s.id: s for s in requests}
        out += [f"{who(s)} ended" for sid, s in old.items() if sid not in self._requests]
        return out

    def _message_lines(self, messages: Sequence[MessageView]) -> list[str]:
        start = 0
        if self._last_message is not None:
            # Messages only get appended (and old ones dropped): resume after the last seen.
            for i in range(len(messages) - 1, -1, -1):
                if messages[i] == self._last_message:
                    start = i + 1
                    break
        if messages:
            self._last_message = messages[-1]
        return [f"{local_time_text(m.ts_ms)} MSG {safe_text(m.level)}: {safe_text(m.text)}" for m in messages[start:]]


# -- the loop --------------------------------------------------------------------------------


@dataclass
class _Feedback:
    """The footer's notice and until when (event-loop time) it shows."""

    text: Text = field(default_factory=Text)
    until: float = 0.0


async def run_panel(
    get_view: Callable[[], CentralView],
    on_command: Callable[[Command], Awaitable[str]],
    *,
    refresh_hz: float = 4,
    console: Console | None = None,
    stdin: int | IO[str] | None = None,
    notice_s: float = 5.0,
) -> None:
    """Show the panel until the operator types ``q``, or until its screen is gone.

    When ``console`` is a terminal: a full-screen rich display redrawn ``refresh_hz`` times a
    second (fewer when a redraw is costly, see PANEL_CPU_SHARE; and on each key), whatever
    the message rate, with a line editor when ``stdin`` is
    a TTY too. Otherwise: :class:`PlainReporter` lines on the console's file, and commands
    read line by line. Each submitted line is parsed; stop/resume go to ``on_command``, whose
    answer (or the error) shows in the footer for ``notice_s`` seconds (plain mode: a ``CMD``
    line). ``stdin`` defaults to sys.stdin; quit and help are handled here.

    The screen is gone when writing to the console fails: the terminal was closed (EIO) or
    nobody reads the pipe any more (EPIPE, ``| tee`` after Ctrl+C). Nobody is left to watch
    or to type ``q``, so the panel returns as if ``q`` had been typed, never raising: the
    caller's orderly shutdown must not be cut short by a dead screen.
    """
    if refresh_hz <= 0:
        raise ValueError("refresh_hz must be positive")
    console = console if console is not None else Console()
    source = sys.stdin if stdin is None else stdin
    full_screen = console.is_terminal
    loop = asyncio.get_running_loop()
    period = 1.0 / refresh_hz
    wake, done = asyncio.Event(), asyncio.Event()
    feedback = _Feedback()

    def on_screen(draw: Callable[[], object]) -> None:
        """Run ``draw``; a failed write ends the panel (see above) instead of raising."""
        try:
            draw()
        except OSError as exc:
            if not done.is_set():
                log.info("the panel's screen is gone (%s): leaving the panel", exc.strerror or exc)
            done.set()

    def write(line: str) -> None:
        on_screen(lambda: print(line, file=console.file, flush=True))

    async def execute(line: str) -> tuple[str, bool] | None:
        """Run one submitted line: (feedback, is_error), None if there is nothing to say."""
        try:
            command = parse_command(line)
        except ValueError as exc:
            return str(exc), True
        if command is None:
            return None
        if command.action == "quit":
            done.set()
            return None
        if command.action == "help":
            return HELP_TEXT, False
        try:
            return await on_command(command), False
        except Exception as exc:  # shown to the operator; the panel goes on
            log.warning("panel command %r failed", line, exc_info=True)
            return f"failed: {exc}", True

    async def serve(keys: KeyReader) -> None:
        while not done.is_set():
            line = await keys.lines.get()
            result = await execute(line)
            if result is None:
                continue
            text, is_error = result
            said = f"{safe_text(line)}: {safe_text(text)}"
            if full_screen:
                feedback.text = Text(said, style="bold red" if is_error else "bold cyan")
                feedback.until = loop.time() + notice_s
                wake.set()
            else:
                now_ts_ms = get_view().now_ts_ms  # no date rather than a made-up one
                write(f"{local_time_text(now_ts_ms)} CMD {said}" if now_ts_ms else f"CMD {said}")

    async def tick(event: asyncio.Event, wait_s: float = period) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, wait_s))

    # Keys are edited in place only under the full-screen panel; elsewhere a TTY stays cooked.
    async with KeyReader(source, interactive=full_screen, on_change=wake.set) as keys:
        worker = asyncio.ensure_future(serve(keys))
        worker.add_done_callback(lambda _: (done.set(), wake.set()))
        try:
            if full_screen:
                live = Live(
                    console=console, screen=True, auto_refresh=False, redirect_stdout=False, redirect_stderr=False
                )
                on_screen(live.start)
                try:
                    while not done.is_set():
                        started = time.perf_counter()
                        size = console.size
                        shown = feedback.text if loop.time() < feedback.until else ""
                        frame = render(
                            get_view(), width=size.width, height=size.height, input_line=keys.buffer, notice=shown
                        )
                        on_screen(functools.partial(live.update, frame, refresh=True))
                        if done.is_set():
                            break
                        # Bounded cost on a big network: keys still redraw at once.
                        await tick(wake, redraw_wait(period, time.perf_counter() - started))
                        wake.clear()
                finally:
                    on_screen(live.stop)  # leaves the alternate screen, if there still is one
            else:
                reporter = PlainReporter()
                while not done.is_set():
                    for line in reporter.update(get_view()):
                        write(line)
                    await tick(done)
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
