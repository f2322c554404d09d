"""What stops a foreground ``evcharging up``, and output that may outlive its reader.

The first of SIGINT, SIGTERM or SIGHUP becomes a KeyboardInterrupt (:data:`STOP`); the
launcher then stops its network in order, writing to a terminal or a pipe that may be
gone by then: :func:`say` and :func:`mute_dead_outputs` make such writes go nowhere
instead of raising.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Iterator

import click

__all__ = ["STOP_SIGNALS", "StopRequest", "STOP", "mute_output", "mute_dead_outputs", "say"]

#: What stops a foreground network: Ctrl+C, `kill`, and its terminal closing.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequest:
    """The first of SIGINT, SIGTERM or SIGHUP, raised as KeyboardInterrupt; the rest are ignored.

    Closing a terminal may deliver SIGHUP twice (the kernel, then the shell), and users press
    Ctrl+C again when a stop takes seconds: none of that may cut the stop sequence short, and
    it need not, since the stop is bounded (SIGKILL after a grace period). While a process just
    started is written into the registry (:meth:`deferred`) the interrupt waits, so that no
    instance runs on unrecorded, out of reach of the stop.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._depth = 0
        self._pending = False

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if self._depth:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._pending:
                self._pending = False
                raise KeyboardInterrupt


#: The launcher's one stop request (signal handlers are per process).
STOP = StopRequest()


def mute_output(fd: int) -> None:
    """Send ``fd`` to /dev/null: what is still buffered for it, and all later writes, go nowhere."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def mute_dead_outputs() -> None:
    """Mute stdout and stderr if nobody can read them any more: a closed terminal (POLLHUP, and
    EIO on write) or a pipe whose reader died (POLLERR, and EPIPE on write: ``| tee`` after
    Ctrl+C). Later writes, ours, click's or Python's last flush at exit, then cannot fail."""
    for fd in (1, 2):
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        try:
            events = poller.poll(0)
        except OSError:
            continue
        if any(ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, ev in events):
            mute_output(fd)


def say(text: str) -> None:
    """``click.echo`` that never raises: a stdout that fails is muted (see mute_dead_outputs)."""
    try:
        click.echo(text)
    except OSError:
        mute_output(1)
