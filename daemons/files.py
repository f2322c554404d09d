"""Files the programs write: private (0600 in 0700 folders, whatever the umask), ready files,
and state files written atomically and read back with a clear error."""

from __future__ import annotations

import json
import os
from typing import IO, Any

from evproto.errors import EvprotoError

__all__ = [
    "PRIVATE_FILE_MODE",
    "PRIVATE_DIR_MODE",
    "open_private",
    "connect_private_db",
    "keep_files_private",
    "makedirs",
    "write_ready_file",
    "save_json_atomic",
    "StateFileError",
    "load_json",
    "load_state",
]


#: Only the owner reads what the programs write: it holds drivers' charging history.
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700

_OPEN_FLAGS = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND}


def open_private(path: str, mode: str = "w") -> IO[Any]:
    """``open(path, mode)`` for "w", "a", "wb" or "ab" (text is UTF-8), on a file only its owner
    may read: created 0600 whatever the umask, and an existing file of ours made 0600."""
    if mode not in ("w", "a", "wb", "ab"):
        raise ValueError(f"open_private mode must be w, a, wb or ab, not {mode!r}")
    fd = os.open(path, _OPEN_FLAGS[mode[0]] | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077 and st.st_uid == os.geteuid():  # an older file, made before this rule
            os.fchmod(fd, PRIVATE_FILE_MODE)
        return os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8")
    except BaseException:
        os.close(fd)
        raise


def connect_private_db(path: str) -> Any:
    """A SQLite connection to ``path``, the file created 0600 (and its folder 0700) whatever
    the umask when it does not exist yet: the network's database holds keys and hashes."""
    import sqlite3

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        makedirs(directory)
    if not os.path.exists(path):
        open_private(path, "ab").close()
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout=5000")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses nothing committed
    return db


def keep_files_private() -> None:
    """From now on every file this process creates is 0600 and every folder 0700 (umask 077).

    Daemons call it first thing: their databases, state files and logs hold drivers'
    charging history (and soon secrets), whatever library code creates them.
    """
    os.umask(0o077)


def makedirs(path: str) -> None:
    """Create folder ``path`` and its missing parents, each 0700 whatever the umask (``os.makedirs``
    gives parents the umask's mode). Folders that exist already are left as they are."""
    missing: list[str] = []
    path = os.path.abspath(path)
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_DIR_MODE)
        except FileExistsError:
            if os.path.isdir(folder):  # made by someone else meanwhile: theirs to set
                continue
            raise
        os.chmod(folder, PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask


def write_ready_file(path: str | None, **info: Any) -> None:
    """Atomically write ``info`` (plus the pid) as JSON to ``path``, a private file: tells a
    launcher we are up."""
    if not path:
        return
    info = {"pid": os.getpid(), **info}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open_private(tmp, "w") as fh:
        json.dump(info, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_json_atomic(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON so that a crash at any instant leaves the old or the new file.

    Temporary file, fsync, rename over the old one, fsync the directory. The file is private
    (0600), and so are the folders made for it (0700).
    """
    directory = os.path.dirname(os.path.abspath(path))
    makedirs(directory)
    tmp = f"{path}.tmp"
    with open_private(tmp, "w") as fh:
        json.dump(obj, fh, separators=(",", ":"))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateFileError(EvprotoError):
    """A daemon's own state file cannot be read (hand-edited, from another program, a
    disk error). The daemon refuses to start (exit 65) rather than guess: the file may
    hold a supply in progress or events owed to Central."""


def load_json(path: str) -> Any:
    """The JSON at ``path``, or None when there is no such file; StateFileError if it is not JSON."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8
        raise StateFileError(f"{path} cannot be read: {exc}") from None


def load_state(path: str) -> dict[str, Any]:
    """A state file's JSON object ({} when there is none yet); StateFileError otherwise."""
    data = load_json(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise StateFileError(f"{path} holds a JSON {type(data).__name__}, not the object this program writes")
    return data
