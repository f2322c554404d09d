"""What every daemon shares: logging, shutdown on signals, stdin commands, ready files.

Daemons log human-readable lines to a terminal and JSON lines otherwise (a file,
a pipe, the launcher's logs); SIGTERM and SIGINT set an asyncio Event so the
daemon can finish its work in order, flush Kafka and exit 0.

Files the programs write (state, ready files, logs, the launcher's registry) hold
drivers' charging history: they are created private, 0600 in 0700 folders,
whatever the umask (:func:`open_private`, :func:`makedirs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import IO, Any

from evproto.endpoint import Endpoint
from evproto.errors import EvprotoError

__all__ = [
    "daemon_options",
    "engine_link_problem",
    "is_loopback_host",
    "setup_logging",
    "shutdown_event",
    "stdin_lines",
    "write_ready_file",
    "makedirs",
    "keep_files_private",
    "open_private",
    "connect_private_db",
    "parse_kafka_config",
    "kafka_config_options",
    "kafka_extra",
    "PRIVATE_FILE_MODE",
    "PRIVATE_DIR_MODE",
    "now_ms",
    "save_json_atomic",
    "load_json",
    "tune_gc",
    "raise_fd_limit",
    "GC_PAUSES",
    "GC_YOUNG_THRESHOLD",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_DATAERR",
    "EXIT_UNAVAILABLE",
    "StateFileError",
    "load_state",
    "EXIT_SOFTWARE",
]

# Exit codes (sysexits.h): scripts and the launcher tell failures apart by them.
EXIT_OK = 0
EXIT_USAGE = 64
EXIT_DATAERR = 65  # our own state file cannot be read
EXIT_UNAVAILABLE = 69  # a service we need (broker, Central, port) is not there
EXIT_SOFTWARE = 70


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds (what events carry)."""
    return int(time.time() * 1000)


class _TextFormatter(logging.Formatter):
    _COLOURS = {logging.WARNING: "\033[33m", logging.ERROR: "\033[31m", logging.CRITICAL: "\033[1;31m"}

    def __init__(self, name: str, colour: bool) -> None:
        super().__init__()
        self._name = name
        self._colour = colour

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        line = f"{stamp} {self._name} {text}"
        colour = self._COLOURS.get(record.levelno) if self._colour else None
        return f"{colour}{line}\033[0m" if colour else line


class _JsonFormatter(logging.Formatter):
    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "daemon": self._name,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False)


def setup_logging(name: str, *, level: str = "info", fmt: str = "auto") -> None:
    """Configure the root logger for a daemon called ``name`` (e.g. "CP001" or "central").

    ``fmt`` is "text", "json" or "auto" (text on a terminal, JSON lines otherwise).
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(name) if use_json else _TextFormatter(name, sys.stderr.isatty()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def shutdown_event() -> asyncio.Event:
    """An Event set by SIGTERM or SIGINT (a second signal exits at once)."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()

    def on_signal(signum: int) -> None:
        if event.is_set():
            logging.getLogger("evproto").warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        event.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
    return event


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address (``127.0.0.1``, ``::1``, bracketed or not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def engine_link_problem(endpoint: Endpoint, *, listening: bool) -> str | None:
    """Why release 2 must not run the monitor-engine link on ``endpoint``, or None.

    The monitor hands the engine its CP's record key over this link, and whoever
    holds the link is the engine's monitor. On a loopback address only this host
    reaches it; anywhere else it takes mutual TLS: the engine's certificate checked
    by the monitor, the monitor's (naming its CP) by the engine, both from the
    network's CA (``ev-central certs --cp``).
    """
    if endpoint.scheme == "tls":
        wanted = ("ca",) if listening else ("ca", "cert", "key")
        missing = [name for name in wanted if not endpoint.options.get(name)]
        if missing:
            return (f"a tls:// address here needs {', '.join(f'{m}=' for m in missing)} too (mutual TLS: "
                    + ("only a monitor with a certificate from the network's CA may connect)" if listening
                       else "the engine checks this monitor's certificate, this monitor the engine's)"))
        return None
    if endpoint.scheme != "tcp":
        return "the monitor and its engine talk over tcp:// or tls://"
    if is_loopback_host(endpoint.host):
        return None
    return ("the monitor hands the engine its record key over this link: use a loopback address "
            "(127.0.0.1:PORT, engine and monitor on one host) or mutual TLS (docs/security.md, "
            "\"Monitor and engine on different hosts\"), or --insecure")


async def stdin_lines() -> AsyncIterator[str]:
    """Lines typed (or piped) on stdin, stripped; ends quietly at EOF (e.g. stdin is /dev/null).

    Works the same for a terminal and a pipe, so every interactive key is also
    scriptable: ``echo plug | evcp-engine ...``.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=64)

    def reader() -> None:
        try:
            for raw in sys.stdin:
                fut = asyncio.run_coroutine_threadsafe(queue.put(raw.strip()), loop)
                fut.result()
        except (OSError, ValueError, RuntimeError):
            pass
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(queue.put(None), loop)

    if sys.stdin is None or sys.stdin.closed:
        return
    threading.Thread(target=reader, name="stdin", daemon=True).start()
    while True:
        line = await queue.get()
        if line is None:
            return
        if line:
            yield line


#: Allocations between young collections for a daemon that holds thousands of links.
#: CPython's default (700) promotes every record still in flight (queued, awaiting
#: its delivery report) into the old generation; at 5,000 messages/s that forced a
#: full collection of ~500,000 objects (about 250 ms, the whole p99 budget) every
#: 3.5 s. At 10,000 in-flight objects mostly die young, as they should; see
#: docs/performance.md.
GC_YOUNG_THRESHOLD = 10_000


class _GcPauses:
    """The collector's pauses, measured by a gc callback: how long the process stood still."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.worst_ms = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        gen = info["generation"]
        ms = (time.perf_counter() - self._started) * 1000.0
        self.collections[gen] += 1
        if ms > self.worst_ms[gen]:
            self.worst_ms[gen] = ms

    def counters(self) -> dict[str, int]:
        """For a status API: collections of the oldest generation and the worst pauses (ms)."""
        return {
            "gc_full_collections": self.collections[2],
            "gc_full_pause_max_ms": round(self.worst_ms[2]),
            "gc_young_pause_max_ms": round(max(self.worst_ms[0], self.worst_ms[1])),
        }


#: Filled in once ``tune_gc()`` has run; all zeros otherwise.
GC_PAUSES = _GcPauses()


def tune_gc(young_threshold: int = GC_YOUNG_THRESHOLD) -> None:
    """Set up the garbage collector for a long-running daemon; call once, after startup.

    Freezes what startup built (modules, classes: never garbage) so full
    collections do not walk it again, collects the young generation less often,
    and starts measuring pauses into ``GC_PAUSES``.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)
    if GC_PAUSES not in gc.callbacks:
        gc.callbacks.append(GC_PAUSES)


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to the hard limit; return the new soft limit.

    Every monitor link is a socket: with the usual soft limit of 1,024 a Central
    would refuse CPs past about a thousand ("Too many open files") while the
    hard limit allows far more.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # e.g. above fs.nr_open: keep what we have
        return soft
    return target


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


_KAFKA_KEY = __import__("re").compile(r"[a-z][a-z0-9._-]{0,120}")


def parse_kafka_config(pairs: tuple[str, ...] | list[str], file: str | None = None) -> dict[str, str]:
    """librdkafka client settings from ``KEY=VALUE`` pairs and a properties file (one
    ``key=value`` per line, ``#`` comments), the pairs winning. ValueError names the
    bad line or key, never a value (values are often passwords)."""
    out: dict[str, str] = {}
    lines: list[tuple[str, str]] = []
    if file:
        try:
            with open(file, encoding="utf-8") as f:
                text = f.read(1 << 20)
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--kafka-config-file {file}: {getattr(exc, 'strerror', None) or exc}") from None
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append((f"{file}:{n}", line))
    lines += [("--kafka-config", p) for p in pairs]
    for where, line in lines:
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _KAFKA_KEY.fullmatch(key):
            raise ValueError(f"{where}: expected KEY=VALUE with a librdkafka property name, got {key[:40]!r}")
        if key == "bootstrap.servers":
            raise ValueError(f"{where}: give the brokers with --kafka, not bootstrap.servers")
        out[key] = value.strip()
    return out


def daemon_options(ready_help: str) -> Any:
    """``--ready-file``, ``--log-format`` and ``--log-level``, as every daemon takes them;
    ``ready_help`` says what its ready file holds. The command receives ``ready_file``,
    ``log_format`` and ``log_level``."""
    import click

    def deco(command: Any) -> Any:
        command = click.option(
            "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
            show_default=True)(command)
        command = click.option(
            "--log-format", type=click.Choice(["auto", "text", "json"]), default="auto", show_default=True,
            help="auto: readable text on a terminal, one JSON object a line otherwise.")(command)
        return click.option("--ready-file", default=None, metavar="PATH", help=ready_help)(command)

    return deco


def kafka_config_options(command: Any) -> Any:
    """The Kafka client-settings options every Kafka-using daemon takes (``--kafka-config``
    KEY=VALUE, repeatable, and ``--kafka-config-file``); the command receives them as
    ``kafka_config`` (a tuple) and ``kafka_config_file``."""
    import click

    command = click.option(
        "--kafka-config-file", envvar="EVPROTO_KAFKA_CONFIG_FILE", default=None, metavar="FILE",
        help="librdkafka settings, one key=value per line (security.protocol, sasl.*, ssl.*). "
             "[env EVPROTO_KAFKA_CONFIG_FILE]")(command)
    return click.option(
        "--kafka-config", multiple=True, metavar="KEY=VALUE",
        help="One librdkafka setting for every Kafka client of this program, e.g. security.protocol=SASL_SSL, "
             "sasl.mechanism=SCRAM-SHA-512, ssl.ca.location=ca.pem (repeatable; wins over the file).")(command)


def kafka_extra(pairs: tuple[str, ...], file: str | None) -> dict[str, str]:
    """:func:`parse_kafka_config` for a command line: a usage error (exit 2) when wrong."""
    import click

    try:
        extra = parse_kafka_config(pairs, file)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if extra:
        # librdkafka checks names and values when a client is made: make one now (it connects
        # to nothing), so a bad setting is one clear line here, not a traceback later.
        import confluent_kafka

        try:
            confluent_kafka.Producer({"bootstrap.servers": "127.0.0.1:9", "logger": logging.getLogger("nowhere"),
                                      **extra})
        except confluent_kafka.KafkaException as exc:
            text = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
            for key, value in extra.items():
                if value and any(w in key for w in ("password", "secret", "key")):
                    text = text.replace(value, "***")
            raise click.UsageError(f"--kafka-config: {text}") from None
    return extra


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
