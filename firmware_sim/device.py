"""The simulated meter's port: a pseudo-terminal whose "cable" can be pulled and plugged back.

The engine opens the pty's slave path (or a stable symlink to it, like a udev
``/dev/serial/by-id/...`` name). Pulling the cable closes the pty and removes the
symlink: the engine's reads fail and reopening finds no device, as when a USB
adapter is unplugged. Plugging it back makes a new pty behind the same symlink.
"""

from __future__ import annotations

import contextlib
import os
import tty

__all__ = ["PtyDevice"]


class PtyDevice:
    """A pty pair; ``master`` is the meter's end, ``path`` what the engine opens."""

    def __init__(self, link: str | None = None) -> None:
        self.link = link
        self.master = -1
        self._slave = -1
        self.slave_path = ""
        self.plug()

    @property
    def path(self) -> str:
        return self.link or self.slave_path

    @property
    def plugged(self) -> bool:
        return self.master >= 0

    def plug(self) -> None:
        if self.plugged:
            return
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no line discipline: every byte (0x03, 0x04, 0x15...) passes as is
        tty.setraw(self.master)
        self.slave_path = os.ttyname(self._slave)
        if self.link:
            tmp = f"{self.link}.tmp{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(self.slave_path, tmp)
            os.replace(tmp, self.link)

    def unplug(self) -> None:
        if not self.plugged:
            return
        if self.link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)
        os.close(self.master)
        os.close(self._slave)
        self.master = self._slave = -1

    def close(self) -> None:
        self.unplug()
