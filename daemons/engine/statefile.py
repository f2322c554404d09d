"""The engine's state file writer: durable writes off the event loop, in order, newest wins.

Each write is a whole snapshot (temporary file, fsync, rename, fsync of the folder:
``save_json_atomic``), so a crash at any instant leaves the previous snapshot or the
new one. The file system work runs in a worker thread; one write at a time, so a
later snapshot is never overwritten by an earlier one. Snapshots handed over while a
write is running are coalesced: only the newest is written next, and everyone who
handed one in is told once a snapshot at least as new is on disk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..files import save_json_atomic

__all__ = ["StateWriter"]

log = logging.getLogger("evproto.engine")


class StateWriter:
    """Writes snapshots of one state file in the background. See the module docstring."""

    def __init__(self, path: str, *, save: Callable[[str, Any], None] = save_json_atomic) -> None:
        self.path = path
        self._save = save
        self._pending: Any = None
        self._has_pending = False
        #: Resolved once the pending snapshot (or a newer one) is on disk.
        self._pending_done: asyncio.Future[None] | None = None
        #: The future of the snapshot being written now, if any.
        self._writing: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        #: Snapshots written (each one file fsync and one folder fsync).
        self.writes = 0

    def submit(self, snapshot: Any) -> asyncio.Future[None]:
        """Queue ``snapshot`` (it must not be changed afterwards); resolved once it is on disk,
        with the write's exception if it failed."""
        loop = asyncio.get_running_loop()
        self._pending = snapshot
        self._has_pending = True
        if self._pending_done is None:
            self._pending_done = loop.create_future()
        done = self._pending_done
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        return done

    def durable(self) -> asyncio.Future[None] | None:
        """The future of the newest snapshot not yet on disk (None: everything handed in is)."""
        return self._pending_done or self._writing

    async def _run(self) -> None:
        while self._has_pending:
            snapshot, done = self._pending, self._pending_done
            assert done is not None
            self._pending, self._has_pending, self._pending_done = None, False, None
            self._writing = done
            try:
                await asyncio.to_thread(self._save, self.path, snapshot)
            except Exception as exc:  # noqa: BLE001 - a disk error: told to whoever waits
                log.error("cannot write the state file %s: %s", self.path, exc)
                if not done.done():
                    done.set_exception(exc)
                    done.exception()  # retrieved: nobody may be waiting for it
            else:
                self.writes += 1
                if not done.done():
                    done.set_result(None)
            finally:
                self._writing = None

    async def flush(self) -> None:
        """Wait until everything handed in is on disk (or failed)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def save_now(self, snapshot: Any) -> None:
        """Write synchronously (at shutdown, after :meth:`flush`, when no loop work is left)."""
        self._save(self.path, snapshot)
        self.writes += 1
