"""The processes of a network: ``RUN/instances.json``, and starting, waiting for, stopping them.

Every instance is a separate OS process with its own log, started in its own session
(Ctrl+C in the launcher's terminal does not reach it directly). The registry lets
``ps``, ``down``, ``kill`` and ``start`` work from any terminal.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import click

from ..files import StateFileError, load_json, makedirs, open_private, save_json_atomic
from .stopping import STOP

__all__ = ["ROLES", "Instance", "Registry", "pid_alive", "reap", "tail", "wait_port", "restart", "stop_in_order"]

#: Every role, in the order `ps` lists them.
ROLES = ("broker", "registry", "central", "engine", "monitor", "driver", "weather-sim", "weather")


@dataclass(slots=True, kw_only=True)
class Instance:
    """One process of the network, as the registry remembers it."""

    name: str
    role: str
    id: str | None
    argv: list[str]
    log: str
    ready: str | None = None
    pid: int | None = None
    started_at: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def pid_alive(pid: int | None) -> bool:
    """True when ``pid`` runs and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class Registry:
    """``RUN/instances.json``: every instance started in a run directory."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = os.path.abspath(run_dir)
        self.path = os.path.join(self.run_dir, "instances.json")
        try:
            data = load_json(self.path) or {}
            self.meta: dict[str, Any] = data.get("meta", {})
            self.instances: dict[str, Instance] = {n: Instance(**d) for n, d in data.get("instances", {}).items()}
        except (StateFileError, AttributeError, TypeError) as exc:
            raise click.ClickException(
                f"{self.path} is not a registry this launcher can read ({exc}); "
                "stop what it started by hand, then remove it"
            ) from None

    def save(self) -> None:
        save_json_atomic(self.path, {"meta": self.meta, "instances": {n: asdict(i) for n, i in self.instances.items()}})

    def alive(self) -> list[Instance]:
        return [i for i in self.instances.values() if pid_alive(i.pid)]

    def start(self, inst: Instance, *, env: dict[str, str] | None = None) -> Instance:
        """Start ``inst`` as a new session: Ctrl+C in our terminal, or the terminal closing, does
        not reach it directly, so a foreground ``up`` stops it in order itself (``shutdown``)."""
        makedirs(os.path.dirname(inst.log))
        if inst.ready and os.path.exists(inst.ready):
            os.unlink(inst.ready)
        log = open_private(inst.log, "ab")
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(inst.argv)}\n".encode())
        log.flush()
        with STOP.deferred():  # from fork to registry: a stop now would miss this instance
            proc = subprocess.Popen(
                inst.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                cwd=self.run_dir,
            )
            log.close()
            inst.pid = proc.pid
            inst.started_at = time.time()
            self.instances[inst.name] = inst
            self.save()
        return inst

    def wait_ready(self, inst: Instance, timeout_s: float = 30.0) -> dict[str, Any]:
        """Wait for the instance's ready file; a clear error (with its log's tail) if it died first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if inst.ready and os.path.exists(inst.ready):
                try:
                    info = load_json(inst.ready) or {}
                except StateFileError:  # being written right now: look again
                    time.sleep(0.05)
                    continue
                inst.info = info
                self.save()
                return info
            if not pid_alive(inst.pid):
                raise click.ClickException(
                    f"{inst.name} exited during start-up; last lines of {inst.log}:\n{tail(inst.log)}"
                )
            time.sleep(0.05)
        raise click.ClickException(f"{inst.name} not ready after {timeout_s:g} s; see {inst.log}:\n{tail(inst.log)}")

    def stop(self, names: list[str] | None = None, *, timeout_s: float = 8.0, sig: int = signal.SIGTERM) -> list[str]:
        """Signal instances (all when None), wait for them to exit, SIGKILL the stubborn ones."""
        targets = [self.instances[n] for n in (names or list(self.instances)) if n in self.instances]
        live = [i for i in targets if pid_alive(i.pid)]
        for inst in live:
            try:
                os.kill(inst.pid, sig)  # type: ignore[arg-type]
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(pid_alive(i.pid) for i in live):
            time.sleep(0.05)
            reap()
        for inst in live:
            if pid_alive(inst.pid):
                try:
                    os.kill(inst.pid, signal.SIGKILL)  # type: ignore[arg-type]
                except ProcessLookupError:
                    pass
        reap()
        return [i.name for i in live]


def reap() -> None:
    """Wait for every child of ours that has exited (they stay zombies until waited for)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def tail(path: str, lines: int = 15) -> str:
    """The last ``lines`` lines of the log at ``path``, for an error message."""
    try:
        with open(path, "rb") as fh:
            return b"\n".join(fh.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError:
        return "(no log)"


def wait_port(host: str, port: int, timeout_s: float) -> None:
    """Wait until something accepts connections on ``host:port``; a ClickException after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise click.ClickException(f"nothing listens on {host}:{port} after {timeout_s:g} s")


def restart(reg: Registry, inst: Instance) -> None:
    """Start ``inst`` again as it was and wait until it is up."""
    reg.start(inst)
    if inst.ready:
        reg.wait_ready(inst)
    elif inst.role == "broker":
        host, port = inst.info["bootstrap"].rsplit(":", 1)
        wait_port(host, int(port), 15.0)


def stop_in_order(reg: Registry) -> list[str]:
    """Stop every instance, users of a service before the service: drivers first, the broker last."""
    stopped = []
    # ev-weather before Central: a weather service outliving Central only logs that it is gone.
    for role in ("driver", "weather", "weather-sim", "monitor", "engine", "central", "registry", "broker"):
        stopped += reg.stop([n for n, i in reg.instances.items() if i.role == role])
    return stopped
