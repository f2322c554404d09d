"""What every daemon shares: exit codes, the clock, logging, shutdown on signals, stdin commands.

Daemons log human-readable lines to a terminal and JSON lines otherwise (a file,
a pipe, the launcher's logs); SIGTERM and SIGINT set an asyncio Event so the
daemon can finish its work in order, flush Kafka and exit 0.

Files are :mod:`.files`' job, shared command-line options :mod:`.options`', and a
process's tuning (GC, file limits) :mod:`.runtime`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from evproto.endpoint import Endpoint

__all__ = [
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_DATAERR",
    "EXIT_UNAVAILABLE",
    "EXIT_SOFTWARE",
    "now_ms",
    "setup_logging",
    "shutdown_event",
    "is_loopback_host",
    "engine_link_problem",
    "stdin_lines",
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
            return f"a tls:// address here needs {', '.join(f'{m}=' for m in missing)} too (mutual TLS: " + (
                "only a monitor with a certificate from the network's CA may connect)"
                if listening
                else "the engine checks this monitor's certificate, this monitor the engine's)"
            )
        return None
    if endpoint.scheme != "tcp":
        return "the monitor and its engine talk over tcp:// or tls://"
    if is_loopback_host(endpoint.host):
        return None
    return (
        "the monitor hands the engine its record key over this link: use a loopback address "
        "(127.0.0.1:PORT, engine and monitor on one host) or mutual TLS (docs/security.md, "
        '"Monitor and engine on different hosts"), or --insecure'
    )


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
