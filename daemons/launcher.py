"""``evcharging``: start, list and stop a whole charging network on one machine.

``evcharging up`` starts the embedded Kafka broker (unless ``--kafka`` names one),
Central, N charge points (engine + monitor each) and M drivers, every one a
separate OS process with its own log and state under the run directory, then
shows Central's panel. Ports are chosen by the processes themselves (port 0)
and reported through ready files, so nothing is juggled by hand. The registry
(``RUN/instances.json``) lets ``ps`` and ``down`` work from any terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import click

from evproto import __version__

from .common import (EXIT_UNAVAILABLE, StateFileError, kafka_config_options, kafka_extra, keep_files_private, load_json,
                     makedirs, open_private, save_json_atomic)

__all__ = ["main", "Registry", "Instance"]

_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_LOCATIONS = ["Alicante", "Valencia", "Murcia", "Elche", "Benidorm", "Madrid", "Sevilla", "Bilbao", "Girona", "Teruel"]
ROLES = ("broker", "registry", "central", "engine", "monitor", "driver")


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


def _alive(pid: int | None) -> bool:
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


#: What stops a foreground network: Ctrl+C, `kill`, and its terminal closing.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _StopRequest:
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
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        for sig in _STOP_SIGNALS:
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


_STOP = _StopRequest()


def _mute(fd: int) -> None:
    """Send ``fd`` to /dev/null: what is still buffered for it, and all later writes, go nowhere."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def _mute_dead_outputs() -> None:
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
            _mute(fd)


def _say(text: str) -> None:
    """``click.echo`` that never raises: a stdout that fails is muted (see _mute_dead_outputs)."""
    try:
        click.echo(text)
    except OSError:
        _mute(1)


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
            raise click.ClickException(f"{self.path} is not a registry this launcher can read ({exc}); "
                                       "stop what it started by hand, then remove it") from None

    def save(self) -> None:
        save_json_atomic(self.path, {"meta": self.meta, "instances": {n: asdict(i) for n, i in self.instances.items()}})

    def alive(self) -> list[Instance]:
        return [i for i in self.instances.values() if _alive(i.pid)]

    def start(self, inst: Instance, *, env: dict[str, str] | None = None) -> Instance:
        """Start ``inst`` as a new session: Ctrl+C in our terminal, or the terminal closing, does
        not reach it directly, so a foreground ``up`` stops it in order itself (``_shutdown``)."""
        makedirs(os.path.dirname(inst.log))
        if inst.ready and os.path.exists(inst.ready):
            os.unlink(inst.ready)
        log = open_private(inst.log, "ab")
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(inst.argv)}\n".encode())
        log.flush()
        with _STOP.deferred():  # from fork to registry: a stop now would miss this instance
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
            if not _alive(inst.pid):
                raise click.ClickException(f"{inst.name} exited during start-up; last lines of {inst.log}:\n{_tail(inst.log)}")
            time.sleep(0.05)
        raise click.ClickException(f"{inst.name} not ready after {timeout_s:g} s; see {inst.log}:\n{_tail(inst.log)}")

    def stop(self, names: list[str] | None = None, *, timeout_s: float = 8.0, sig: int = signal.SIGTERM) -> list[str]:
        """Signal instances (all when None), wait for them to exit, SIGKILL the stubborn ones."""
        targets = [self.instances[n] for n in (names or list(self.instances)) if n in self.instances]
        live = [i for i in targets if _alive(i.pid)]
        for inst in live:
            try:
                os.kill(inst.pid, sig)  # type: ignore[arg-type]
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(_alive(i.pid) for i in live):
            time.sleep(0.05)
            _reap()
        for inst in live:
            if _alive(inst.pid):
                try:
                    os.kill(inst.pid, signal.SIGKILL)  # type: ignore[arg-type]
                except ProcessLookupError:
                    pass
        _reap()
        return [i.name for i in live]


def _reap() -> None:
    # Children we started exit as zombies until waited for.
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, "rb") as fh:
            return b"\n".join(fh.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError:
        return "(no log)"


#: Central's HTTP API port when none is asked for, unless it is taken (docs/central.md).
DEFAULT_HTTP_PORT = 8000


class _Unavailable(click.ClickException):
    """Something the network needs is not there (a port): one line, exit 69 (EX_UNAVAILABLE)."""

    exit_code = EXIT_UNAVAILABLE


def _port_problem(port: int) -> str | None:
    """Why Central could not listen on ``port``, or None. Central listens on every address,
    so any listener on the port is in its way; TIME_WAIT leftovers are not (SO_REUSEADDR,
    as asyncio's servers set it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as exc:
            return "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
    return None


def _central_ports(central_port: int, http_port: int | None) -> tuple[int, int]:
    """The ports to give Central, checked before anything starts: an explicit port that is
    taken is an error (nothing is left running); the default HTTP port, if taken, gives way
    to a free one (0), and we say so."""
    for option, port in (("--port", central_port), ("--http-port", http_port)):
        if port and (problem := _port_problem(port)):
            raise _Unavailable(f"{option} {port}: Central cannot listen there ({problem}); "
                               "choose another port, or 0 for a free one")
    if central_port and central_port == http_port:
        raise click.BadParameter("Central needs two different ports", param_hint="'--port' / '--http-port'")
    if http_port is not None:
        return central_port, http_port
    if _port_problem(DEFAULT_HTTP_PORT) is None:
        return central_port, DEFAULT_HTTP_PORT
    _say(f"port {DEFAULT_HTTP_PORT} is taken: Central's HTTP API gets a free port instead (see below)")
    return central_port, 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _daemon(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"evproto.daemons.{module}", *args]


def _wait_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise click.ClickException(f"nothing listens on {host}:{port} after {timeout_s:g} s")


def write_requests_file(path: str, cp_ids: list[str], count: int, rng: random.Random) -> None:
    """A demo requests file: ``count`` supplies at random CPs, some with an energy or time target."""
    lines = [f"# {count} supplies for the demo: CP_ID [TARGET]"]
    for _ in range(count):
        cp = rng.choice(cp_ids)
        roll = rng.random()
        if roll < 0.3:
            lines.append(f"{cp} {rng.choice([0.8, 1.2, 2.0])}kWh")
        elif roll < 0.6:
            lines.append(f"{cp} {rng.choice([6, 8, 12])}s")
        else:
            lines.append(cp)
    with open_private(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


# -- commands --------------------------------------------------------------------------------


@click.group(context_settings=_SETTINGS)
@click.version_option(__version__, prog_name="evcharging")
def main() -> None:
    """Start, list, grow, break and stop a whole EV charging network on this machine.

    \b
      evcharging up                 broker + Central + 4 CPs + 3 drivers, with Central's panel
      evcharging up --cps 10 --drivers 5 --detach
      evcharging ps                 what runs, with pids and logs
      evcharging add cp             a new charge point (engine + monitor) in the running network
      evcharging add driver         a new driver (registered at Central)
      evcharging kill engine-CP002  SIGKILL one instance (--signal TERM for an orderly stop)
      evcharging start engine-CP002 restart it with the same identity and state
      evcharging chaos --duration 120
      eval "$(evcharging env)"      EVPROTO_API, EVPROTO_TOKEN, EVPROTO_CA for curl and scripts
      evcharging down               stop everything

    Every process logs to RUN/<role>/<id>/*.log (RUN: --run-dir, default ./evcharging-run).
    """
    keep_files_private()  # what the launcher writes (secrets, registry, logs) is its owner's only


@main.command()
@click.option("--cps", type=click.IntRange(1, 500), default=4, show_default=True, help="Charge points (engine + monitor).")
@click.option("--drivers", type=click.IntRange(0, 500), default=3, show_default=True, help="Driver apps.")
@click.option("--requests", "requests_per_driver", type=click.IntRange(1, 1000), default=12, show_default=True,
              help="Supplies in each driver's requests file.")
@click.option("--kafka", default=None, metavar="HOST:PORT", help="Use this Kafka instead of starting the embedded broker.")
@click.option("--port", "central_port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Central's port for monitors (0: pick a free one).")
@click.option("--http-port", type=click.IntRange(0, 65535), default=None,
              help=f"Central's HTTP API port (0: pick a free one).  [default: {DEFAULT_HTTP_PORT}, or a free one "
              f"when {DEFAULT_HTTP_PORT} is taken]")
@click.option("--run-dir", default="evcharging-run", show_default=True, help="Where logs, state and the registry go.")
@click.option("--time-scale", type=click.FloatRange(min=0.01, max=3600), default=30.0, show_default=True,
              help="Speed-up of the simulated meters (energy only; supplies still last seconds).")
@click.option("--power-kw", type=click.FloatRange(min=0.1, max=1000), default=22.0, show_default=True)
@click.option("--seed", type=int, default=None, help="Seed for the demo's request files.")
@click.option("--detach", is_flag=True, help="Start everything and return; stop later with `evcharging down`.")
@click.option("--insecure", is_flag=True,
              help="Release 1's plaintext network: no registry, no TLS, no credentials, nothing sealed.")
@kafka_config_options
def up(cps: int, drivers: int, requests_per_driver: int, kafka: str | None, central_port: int, http_port: int | None,
       run_dir: str, time_scale: float, power_kw: float, seed: int | None, detach: bool, insecure: bool,
       kafka_config: tuple[str, ...], kafka_config_file: str | None) -> None:
    """Start a network: broker, Central, CPs and drivers, then show Central's panel (Ctrl+C stops all).

    By default it is release 2's secure network: a CA and certificates, the registry
    (ev-registry) that issues each CP its credentials, tokens for operators, TLS
    everywhere, records sealed per CP and driver, all under RUN/secrets (0600).
    `eval "$(evcharging env)"` then gives a shell the API's URL, an operator token
    and the CA. --insecure starts release 1's plaintext network instead.
    """
    reg = Registry(run_dir)
    if reg.alive():
        raise click.ClickException(f"a network already runs from {reg.run_dir} ({len(reg.alive())} processes); "
                                   "`evcharging down` first, or use another --run-dir")
    kafka_settings = kafka_extra(kafka_config, kafka_config_file)
    if kafka_settings and not kafka:
        raise click.UsageError("--kafka-config is for a Kafka given with --kafka (the embedded broker is plaintext)")
    central_port, http_port = _central_ports(central_port, http_port)
    reg.instances.clear()
    rng = random.Random(seed)
    makedirs(reg.run_dir)
    # `kill`, Ctrl+C, or the terminal closed, while starting or showing the panel: stop the network.
    _STOP.install()
    detached = panel_shown = False
    try:
        try:
            bootstrap = kafka or _start_broker(reg)
            reg.meta = {"kafka": bootstrap, "started_at": time.time(), "time_scale": time_scale, "power_kw": power_kw,
                        "secure": not insecure}
            if kafka_settings:
                reg.meta["kafka_config_file"] = _write_kafka_config(reg, kafka_settings)
            _ensure_topics(bootstrap, kafka_settings)
            driver_ids = [f"D{i:03d}" for i in range(1, drivers + 1)]
            if not insecure:
                _secure_setup(reg, driver_ids)
            central = _start_central(reg, bootstrap, central_port, http_port, driver_ids)
            central_addr = central["listen"].replace("0.0.0.0", "127.0.0.1")
            http_addr = central["http"].replace("0.0.0.0", "127.0.0.1")
            reg.meta.update(central=central_addr, http=http_addr)
            reg.save()
            cp_ids = [f"CP{i:03d}" for i in range(1, cps + 1)]
            add_cps(reg, [(cp_id, _LOCATIONS[n % len(_LOCATIONS)], round(rng.uniform(0.25, 0.55), 2))
                          for n, cp_id in enumerate(cp_ids)])
            add_drivers(reg, driver_ids, rng, requests_per_driver, cp_ids)
            _say(f"network up: Kafka {bootstrap}, Central {central_addr}, HTTP {_api_base(reg)}/cps, "
                 f"{cps} CPs, {drivers} drivers; logs under {reg.run_dir}")
            if insecure:
                _say("WARNING: --insecure: plaintext, nothing authenticated; anyone who reaches it can act on it")
            else:
                _say(f'the API needs a token: eval "$(evcharging env --run-dir {reg.run_dir})" then curl --cacert '
                     '"$EVPROTO_CA" -H "Authorization: Bearer $EVPROTO_TOKEN" "$EVPROTO_API/api/v1/cps"')
            if detach:
                detached = True
                return
            panel_shown = True
            asyncio.run(_show_panel(reg))
        finally:
            if not detached:
                _shutdown(reg)
    except KeyboardInterrupt:
        if not panel_shown:  # interrupted while starting: say so (exit 1); during the panel it is the way out
            raise click.Abort() from None


def _shutdown(reg: Registry) -> None:
    """Stop a foreground network in order. Nothing cuts this short: more signals are ignored,
    and a dead terminal or pipe is muted rather than allowed to raise (the panel's screen
    may be gone: that is often why we stop)."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    _mute_dead_outputs()
    _say(f"stopping the network ({len(reg.alive())} processes)...")
    stopped = _stop_in_order(reg)
    _say(f"stopped {len(stopped)} processes")
    try:
        sys.stdout.flush()
    except OSError:
        _mute(1)


def _start_broker(reg: Registry) -> str:
    from evproto.bus.broker import find_broker_binary

    binary = find_broker_binary()
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    inst = Instance(name="broker", role="broker", id=None, log=os.path.join(reg.run_dir, "broker", "broker.log"),
                    argv=[binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                          "--storage-engine", "memory://tansu/"])
    reg.start(inst)
    _wait_port("127.0.0.1", port, 15.0)
    inst.info = {"bootstrap": f"127.0.0.1:{port}"}
    reg.save()
    return f"127.0.0.1:{port}"


def _write_kafka_config(reg: Registry, settings: dict[str, str]) -> str:
    """Keep the Kafka client settings (passwords among them) in RUN/secrets/kafka.conf, 0600,
    and hand every daemon the file: a setting on a command line is readable in `ps`."""
    path = os.path.join(reg.run_dir, "secrets", "kafka.conf")
    makedirs(os.path.dirname(path))
    with open_private(path) as fh:
        fh.write("# librdkafka settings given to `evcharging up --kafka-config`\n")
        fh.writelines(f"{key}={value}\n" for key, value in settings.items())
    return path


def _kafka_args(reg: Registry) -> list[str]:
    path = reg.meta.get("kafka_config_file")
    return ["--kafka-config-file", path] if path else []


def _ensure_topics(bootstrap: str, extra: dict[str, str] | None = None) -> None:
    from evproto.bus.kafka import BusError, KafkaSettings, ensure_topics

    try:
        asyncio.run(ensure_topics(KafkaSettings(bootstrap=bootstrap, client_id="evcharging", extra=extra or {}),
                                  timeout_s=20.0))
    except BusError as exc:
        raise click.ClickException(str(exc)) from None


def _db(reg: Registry) -> str:
    return os.path.join(reg.run_dir, "central", "central.db")


def _secure(reg: Registry) -> bool:
    return bool(reg.meta.get("secure"))


def _security_args(reg: Registry) -> list[str]:
    return [] if _secure(reg) else ["--insecure"]


def _api_base(reg: Registry) -> str:
    return f"{'https' if _secure(reg) else 'http'}://{reg.meta['http']}/api/v1"


def _secure_setup(reg: Registry, driver_ids: list[str]) -> None:
    """The CA, certificates, tokens and the registry; drivers' keys."""
    from .netsecrets import NetworkSecrets
    from .tokens import TokenRole

    secrets = NetworkSecrets(reg.run_dir)
    secrets.ensure_pki()
    makedirs(os.path.dirname(_db(reg)))
    for role in (TokenRole.ADMIN, TokenRole.OPERATOR, TokenRole.INSTALLER):
        secrets.token(_db(reg), role)
    if driver_ids:
        _issue_driver_keys(reg, driver_ids)
    _start_registry(reg)


def _issue_driver_keys(reg: Registry, driver_ids: list[str]) -> None:
    from .netsecrets import NetworkSecrets

    out = subprocess.run(_daemon("central", "--db", _db(reg), "drivers", "add", *driver_ids, "--credentials",
                                 NetworkSecrets(reg.run_dir).driver_credentials_dir()),
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise click.ClickException(f"cannot register drivers: {out.stderr.strip()}")


def _start_registry(reg: Registry) -> dict[str, Any]:
    from .netsecrets import NetworkSecrets

    cert = NetworkSecrets(reg.run_dir).server_cert("registry")
    base = os.path.join(reg.run_dir, "registry")
    ready = os.path.join(base, "ready.json")
    inst = Instance(name="registry", role="registry", id=None, log=os.path.join(base, "registry.log"), ready=ready,
                    argv=_daemon("registry", "--db", _db(reg), "--host", "127.0.0.1", "--port", "0",
                                 "--cert", str(cert.cert), "--key", str(cert.key), "--ready-file", ready))
    reg.start(inst)
    info = reg.wait_ready(inst)
    _pin(inst, "--port", info["url"].rsplit(":", 1)[1])
    reg.meta["registry"] = info["url"]
    reg.save()
    return info


def _start_central(reg: Registry, bootstrap: str, port: int, http_port: int, driver_ids: list[str]) -> dict[str, Any]:
    base = os.path.join(reg.run_dir, "central")
    args = ["--db", _db(reg), "--kafka", bootstrap, "--port", str(port),
            "--http-port", str(http_port), "--no-panel", "--ready-file", os.path.join(base, "ready.json"),
            # Every CP of this network is ours and registers at once: no pacing needed.
            "--registrations-per-min", "1000000", *_security_args(reg), *_kafka_args(reg),
            # Under the launcher everything binds to this machine only.
            "--host", "127.0.0.1"]
    if _secure(reg):
        from .netsecrets import NetworkSecrets

        cert = NetworkSecrets(reg.run_dir).server_cert("central")
        args += ["--tls-cert", str(cert.cert), "--tls-key", str(cert.key)]
    for d in driver_ids:
        args += ["--register-driver", d]
    inst = Instance(name="central", role="central", id=None, argv=_daemon("central", *args),
                    log=os.path.join(base, "central.log"), ready=os.path.join(base, "ready.json"))
    reg.start(inst)
    info = reg.wait_ready(inst)
    # A restart (evcharging start central) must come back on the same ports: monitors know them.
    _pin(inst, "--port", info["listen"].rsplit(":", 1)[1])
    _pin(inst, "--http-port", info["http"].rsplit(":", 1)[1])
    reg.save()
    return info


def _pin(inst: Instance, option: str, value: str) -> None:
    """Replace ``option``'s value in the instance's command line (ports chosen at first start)."""
    i = inst.argv.index(option)
    inst.argv[i + 1] = value


def add_cp(reg: Registry, cp_id: str, location: str, price: float) -> None:
    """Start an engine (on a free port) and its monitor for ``cp_id``."""
    add_cps(reg, [(cp_id, location, price)])


def add_cps(reg: Registry, cps: list[tuple[str, str, float]]) -> None:
    """Start an engine and a monitor for each (id, location, price): every engine at once,
    then (their ports known) every monitor at once; each phase waits for all of them."""
    engines = []
    for cp_id, _, _ in cps:
        base = os.path.join(reg.run_dir, "cp", cp_id)
        engine = Instance(
            name=f"engine-{cp_id}", role="engine", id=cp_id, log=os.path.join(base, "engine.log"),
            ready=os.path.join(base, "engine.ready.json"),
            argv=_daemon("engine", "--kafka", reg.meta["kafka"], "--listen", "127.0.0.1:0", "--auto",
                         "--time-scale", str(reg.meta.get("time_scale", 1.0)),
                         "--power-kw", str(reg.meta.get("power_kw", 22.0)),
                         "--state-dir", os.path.join(base, "engine-state"),
                         "--ready-file", os.path.join(base, "engine.ready.json"), *_security_args(reg),
                         *_kafka_args(reg)),
        )
        engines.append(reg.start(engine))
    listens = []
    for engine in engines:
        listen = reg.wait_ready(engine)["listen"]
        _pin(engine, "--listen", listen)  # a restarted engine keeps the port its monitor knows
        listens.append(listen)
    reg.save()
    monitors = []
    for (cp_id, location, price), listen in zip(cps, listens):
        base = os.path.join(reg.run_dir, "cp", cp_id)
        monitor = Instance(
            name=f"monitor-{cp_id}", role="monitor", id=cp_id, log=os.path.join(base, "monitor.log"),
            ready=os.path.join(base, "monitor.ready.json"),
            argv=_daemon("monitor", "--engine", listen, "--central", reg.meta["central"], "--id", cp_id,
                         "--location", location, "--price", str(price),
                         "--ready-file", os.path.join(base, "monitor.ready.json"), *_monitor_security(reg, cp_id, location)),
        )
        monitors.append(reg.start(monitor))
    for monitor in monitors:
        reg.wait_ready(monitor)


def _monitor_security(reg: Registry, cp_id: str, location: str) -> list[str]:
    """--insecure, or the CP's credentials (registered at the registry now if need be) and the CA."""
    if not _secure(reg):
        return ["--insecure"]
    from .netsecrets import NetworkSecrets, RegistryError
    from .tokens import TokenRole

    secrets = NetworkSecrets(reg.run_dir)
    try:
        creds = secrets.register_cp(reg.meta["registry"], secrets.token(_db(reg), TokenRole.INSTALLER), cp_id, location)
    except RegistryError as exc:
        raise click.ClickException(f"cannot register {cp_id}: {exc}") from None
    return ["--credentials", creds, "--ca", secrets.ca_path]


def add_driver(reg: Registry, driver_id: str, rng: random.Random, count: int, cp_ids: list[str]) -> None:
    """Start driver ``driver_id`` with a fresh requests file of ``count`` supplies."""
    add_drivers(reg, [driver_id], rng, count, cp_ids)


def add_drivers(reg: Registry, driver_ids: list[str], rng: random.Random, count: int, cp_ids: list[str]) -> None:
    """Start every driver at once, each with a fresh requests file of ``count`` supplies; wait for all."""
    started = []
    for driver_id in driver_ids:
        base = os.path.join(reg.run_dir, "drivers", driver_id)
        makedirs(base)
        requests = os.path.join(base, "requests.txt")
        if not os.path.exists(requests):
            write_requests_file(requests, cp_ids, count, rng)
        inst = Instance(
            name=f"driver-{driver_id}", role="driver", id=driver_id, log=os.path.join(base, "driver.log"),
            ready=os.path.join(base, "ready.json"),
            argv=_daemon("driver", "--kafka", reg.meta["kafka"], "--id", driver_id, "--requests", requests, "--stay",
                         "--state-dir", os.path.join(base, "state"), "--ready-file", os.path.join(base, "ready.json"),
                         *_driver_security(reg, driver_id), *_kafka_args(reg)),
        )
        started.append(reg.start(inst))
    for inst in started:
        reg.wait_ready(inst)


def _driver_security(reg: Registry, driver_id: str) -> list[str]:
    if not _secure(reg):
        return ["--insecure"]
    from .netsecrets import NetworkSecrets

    return ["--credentials", os.path.join(NetworkSecrets(reg.run_dir).driver_credentials_dir(), f"{driver_id}.json")]


def _stop_in_order(reg: Registry) -> list[str]:
    stopped = []
    for role in ("driver", "monitor", "engine", "central", "registry", "broker"):
        stopped += reg.stop([n for n, i in reg.instances.items() if i.role == role])
    return stopped


def _api_client(reg: Registry) -> tuple[dict[str, str], Any]:
    """Headers and TLS context for Central's API: the network's operator token and CA."""
    if not _secure(reg):
        return {}, None
    from .netsecrets import NetworkSecrets
    from .tokens import TokenRole

    secrets = NetworkSecrets(reg.run_dir)
    return {"Authorization": f"Bearer {secrets.token(_db(reg), TokenRole.OPERATOR)}"}, secrets.tls()


async def _show_panel(reg: Registry) -> None:
    """Central's panel, drawn here from its HTTP API (Central itself runs without a terminal)."""
    import aiohttp

    from .central.panel import Command
    from .central.terminal import run_panel
    from evproto.domain.central.view import CentralView, CpView, MessageView, SessionView

    base = _api_base(reg)
    http_addr = base.removesuffix("/api/v1")  # what the panel says it connects to (with its scheme)
    headers, tls = _api_client(reg)
    # No timestamp: nothing from Central yet; the panel says it is connecting, with no date.
    latest = {"view": CentralView(central_id="", http=http_addr)}
    reachable: bool | None = None  # the last poll's outcome, once there was one

    def parse_iso(text: str | None) -> int | None:
        if not text:
            return None
        import datetime as dt

        return int(dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp() * 1000)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2), headers=headers,
                                     connector=aiohttp.TCPConnector(ssl=tls if tls is not None else True)) as http:

        async def poll() -> None:
            nonlocal reachable
            while True:
                try:
                    cps = await (await http.get(f"{base}/cps")).json()
                    reqs = await (await http.get(f"{base}/requests")).json()
                    msgs = await (await http.get(f"{base}/messages")).json()
                    status = await (await http.get(f"{base}/status")).json()
                    latest["view"] = CentralView(
                        cps=tuple(CpView(**{**c, "alerts": tuple(c.get("alerts") or ())}) for c in cps),
                        requests=tuple(
                            SessionView(id=r["id"], cp_id=r["cp_id"], driver_id=r["driver_id"], status=r["status"],
                                        requested_ts_ms=parse_iso(r.get("requested_at")) or 0,
                                        energy_kwh=r["energy_kwh"], amount_eur=r["amount_eur"],
                                        started_ts_ms=parse_iso(r["started_at"]), ended_ts_ms=parse_iso(r["ended_at"]),
                                        end_reason=r["end_reason"])
                            for r in reqs
                        ),
                        messages=tuple(MessageView(ts_ms=parse_iso(m["ts"]) or 0, level=m["level"], text=m["text"]) for m in msgs),
                        central_id=status.get("central_id", ""), listen=status.get("listen", ""),
                        http=status.get("http", ""), kafka=status.get("kafka", ""), kafka_ok=status.get("kafka_ok", False),
                        now_ts_ms=int(time.time() * 1000), counters=status.get("counters", {}),
                    )
                    reachable = True
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError):
                    old = latest["view"]
                    notes = () if reachable is False else (  # said once per outage, not every poll
                        MessageView(ts_ms=int(time.time() * 1000), level="error",
                                    text=f"cannot reach Central's HTTP API at {base}"),)
                    reachable = False
                    if not old.now_ts_ms:  # never reached yet: still connecting, nothing else is known
                        latest["view"] = dataclasses.replace(old, messages=old.messages[-20:] + notes)
                    else:
                        latest["view"] = CentralView(
                            cps=tuple(dataclasses.replace(c, state="DISCONNECTED") for c in old.cps),
                            messages=old.messages[-20:] + notes, central_id=old.central_id,
                            kafka=old.kafka, kafka_ok=False, now_ts_ms=int(time.time() * 1000))
                await asyncio.sleep(0.5)

        async def on_command(cmd: Command) -> str:
            if cmd.action == "quit":
                return "bye"
            if cmd.action == "help":
                return "s CP|all: stop · r CP|all: resume · v CP: revoke its key · q: quit (stops the network)"
            url = f"{base}/cps/{cmd.target}/{cmd.action}" if cmd.target else f"{base}/cps/{cmd.action}"
            try:
                async with http.post(url) as resp:
                    body = await resp.json()
                    if resp.status != 200:
                        return str(body.get("error", "failed"))
                    if cmd.action == "revoke":
                        return f"{cmd.target}: keys revoked; it must authenticate again"
                    return f"{cmd.action.upper()} sent to {', '.join(body.get('cps', []))}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                return f"cannot reach Central: {exc}"

        poller = asyncio.ensure_future(poll())
        try:
            await run_panel(lambda: latest["view"], on_command)
        finally:
            poller.cancel()


@main.command()
@click.option("--run-dir", default="evcharging-run", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array: name, role, id, pid, alive, log.")
def ps(run_dir: str, as_json: bool) -> None:
    """List the instances of a network: name, role, id, pid, alive."""
    reg = Registry(run_dir)
    rows = [
        {"name": i.name, "role": i.role, "id": i.id, "pid": i.pid, "alive": _alive(i.pid), "log": i.log,
         "address": i.info.get("listen") or i.info.get("bootstrap") or i.info.get("url")}
        for i in sorted(reg.instances.values(), key=lambda i: (ROLES.index(i.role), i.name))
    ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo(f"no network in {reg.run_dir}")
        return
    click.echo(f"{'NAME':<18} {'ROLE':<8} {'ID':<8} {'PID':>7}  {'STATE':<6} ADDRESS")
    for r in rows:
        click.echo(f"{r['name']:<18} {r['role']:<8} {r['id'] or '-':<8} {r['pid'] or '-':>7}  "
                   f"{'up' if r['alive'] else 'down':<6} {r['address'] or ''}")


@main.command()
@click.option("--run-dir", default="evcharging-run", show_default=True)
@click.option("--role", type=click.Choice(["operator", "admin", "viewer"]), default="operator", show_default=True,
              help="Whose token EVPROTO_TOKEN holds (viewer: a read-only token made on first use).")
def env(run_dir: str, role: str) -> None:
    """Shell exports for the running network: `eval "$(evcharging env)"`.

    \b
      EVPROTO_API    Central's HTTP base URL (the API is under /api/v1)
      EVPROTO_TOKEN  an operator token (send it as Authorization: Bearer ...)
      EVPROTO_CA     the network's CA certificate (curl --cacert "$EVPROTO_CA")
      EVPROTO_KAFKA  the Kafka bootstrap address
    Then: curl --cacert "$EVPROTO_CA" -H "Authorization: Bearer $EVPROTO_TOKEN" "$EVPROTO_API/api/v1/cps"
    """
    import shlex

    reg = _network(run_dir)
    exports = {"EVPROTO_API": _api_base(reg).removesuffix("/api/v1"), "EVPROTO_KAFKA": reg.meta["kafka"]}
    if reg.meta.get("kafka_config_file"):
        exports["EVPROTO_KAFKA_CONFIG_FILE"] = os.path.abspath(reg.meta["kafka_config_file"])
    if _secure(reg):
        from .netsecrets import NetworkSecrets
        from .tokens import TokenRole

        secrets = NetworkSecrets(reg.run_dir)
        exports["EVPROTO_TOKEN"] = secrets.token(_db(reg), TokenRole(role))
        exports["EVPROTO_CA"] = secrets.ca_path
    else:
        click.echo("# --insecure network: no token or CA needed (plain HTTP)", err=True)
    for name, value in exports.items():
        click.echo(f"export {name}={shlex.quote(value)}")


@main.command()
@click.option("--run-dir", default="evcharging-run", show_default=True)
def down(run_dir: str) -> None:
    """Stop every instance of a network (SIGTERM, then SIGKILL after a grace period)."""
    reg = Registry(run_dir)
    stopped = _stop_in_order(reg)
    click.echo(f"stopped {len(stopped)} process(es)" if stopped else "nothing was running")


def _network(run_dir: str) -> Registry:
    reg = Registry(run_dir)
    if not reg.meta.get("kafka") or not reg.meta.get("central"):
        raise click.ClickException(f"no network in {reg.run_dir}: start one with `evcharging up --detach`")
    return reg


@main.group(context_settings=_SETTINGS)
def add() -> None:
    """Add a charge point or a driver to a running network (nothing else is disturbed)."""


@add.command("cp")
@click.option("--id", "cp_id", default=None, help="The CP's id (default: the next free CPnnn).")
@click.option("--location", default=None, help="Default: a city from the demo list.")
@click.option("--price", type=click.FloatRange(min=0, max=100), default=None, help="EUR/kWh (default: random 0.25-0.55).")
@click.option("--run-dir", default="evcharging-run", show_default=True)
def add_cp_cmd(cp_id: str | None, location: str | None, price: float | None, run_dir: str) -> None:
    """Start an engine and a monitor for a new charge point."""
    reg = _network(run_dir)
    known = sorted(i.id for i in reg.instances.values() if i.role == "engine" and i.id)
    if cp_id is None:
        n = len(known) + 1
        while f"CP{n:03d}" in known:
            n += 1
        cp_id = f"CP{n:03d}"
    elif cp_id in known:
        raise click.ClickException(f"{cp_id} already exists in this network")
    rng = random.Random()
    add_cp(reg, cp_id, location or rng.choice(_LOCATIONS), price if price is not None else round(rng.uniform(0.25, 0.55), 2))
    click.echo(f"added {cp_id}: engine-{cp_id}, monitor-{cp_id}")


@add.command("driver")
@click.option("--id", "driver_id", default=None, help="The driver's id (default: the next free Dnnn).")
@click.option("--requests", "requests_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Its requests file (default: a generated one over the network's CPs).")
@click.option("--run-dir", default="evcharging-run", show_default=True)
def add_driver_cmd(driver_id: str | None, requests_file: str | None, run_dir: str) -> None:
    """Register a new driver at Central and start its app."""
    reg = _network(run_dir)
    known = sorted(i.id for i in reg.instances.values() if i.role == "driver" and i.id)
    if driver_id is None:
        n = len(known) + 1
        while f"D{n:03d}" in known:
            n += 1
        driver_id = f"D{n:03d}"
    elif driver_id in known:
        raise click.ClickException(f"{driver_id} already exists in this network")
    central = reg.instances["central"]
    db = central.argv[central.argv.index("--db") + 1]
    if _secure(reg):
        _issue_driver_keys(reg, [driver_id])
    else:
        subprocess.run(_daemon("central", "--db", db, "drivers", "add", driver_id), check=True, capture_output=True)
    base = os.path.join(reg.run_dir, "drivers", driver_id)
    makedirs(base)
    if requests_file:
        with open(requests_file, encoding="utf-8") as src, open_private(os.path.join(base, "requests.txt"), "w") as dst:
            dst.write(src.read())
    cps = sorted(i.id for i in reg.instances.values() if i.role == "engine" and i.id)
    time.sleep(1.5)  # Central picks up new registrations every second
    add_driver(reg, driver_id, random.Random(), 12, cps or ["CP001"])
    click.echo(f"added {driver_id}: driver-{driver_id}")


_SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}


@main.command()
@click.argument("name")
@click.option("--signal", "sig", type=click.Choice(list(_SIGNALS), case_sensitive=False), default="KILL",
              show_default=True, help="KILL: a crash, no goodbye; TERM/INT: an orderly stop.")
@click.option("--run-dir", default="evcharging-run", show_default=True)
def kill(name: str, sig: str, run_dir: str) -> None:
    """Send a signal to one instance (by name, see `evcharging ps`)."""
    reg = Registry(run_dir)
    inst = reg.instances.get(name)
    if inst is None:
        raise click.ClickException(f"no instance {name!r}; `evcharging ps` lists them")
    if not _alive(inst.pid):
        raise click.ClickException(f"{name} is not running")
    os.kill(inst.pid, _SIGNALS[sig.upper()])  # type: ignore[arg-type]
    click.echo(f"sent SIG{sig.upper()} to {name} (pid {inst.pid})")


@main.command()
@click.argument("name")
@click.option("--run-dir", default="evcharging-run", show_default=True)
def start(name: str, run_dir: str) -> None:
    """Restart a dead instance with the same identity, ports and state directory."""
    reg = Registry(run_dir)
    inst = reg.instances.get(name)
    if inst is None:
        raise click.ClickException(f"no instance {name!r}; `evcharging ps` lists them")
    if _alive(inst.pid):
        raise click.ClickException(f"{name} is already running (pid {inst.pid})")
    restart(reg, inst)
    click.echo(f"started {name} (pid {inst.pid})")


def restart(reg: Registry, inst: Instance) -> None:
    """Start ``inst`` again as it was and wait until it is up."""
    reg.start(inst)
    if inst.ready:
        reg.wait_ready(inst)
    elif inst.role == "broker":
        host, port = inst.info["bootstrap"].rsplit(":", 1)
        _wait_port(host, int(port), 15.0)


@main.command()
@click.option("--interval", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds between kills.")
@click.option("--duration", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds of chaos; then every killed instance is restarted and chaos ends.")
@click.option("--roles", default="central,engine,monitor,driver", show_default=True,
              help="Comma-separated roles to pick victims from (broker too, but an in-memory broker "
              "loses everything it held: see docs/resilience.md).")
@click.option("--down-min", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Shortest time a victim stays dead.")
@click.option("--down-max", type=click.FloatRange(min=0), default=6.0, show_default=True,
              help="Longest time a victim stays dead.")
@click.option("--seed", type=int, default=None, help="Make the sequence of victims repeatable.")
@click.option("--run-dir", default="evcharging-run", show_default=True)
def chaos(interval: float, duration: float, roles: str, down_min: float, down_max: float, seed: int | None,
          run_dir: str) -> None:
    """Kill random instances with SIGKILL and restart each after a random delay; ends by itself.

    Every action is printed and appended to RUN/chaos.log.
    """
    reg = _network(run_dir)
    wanted = {r.strip() for r in roles.split(",") if r.strip()}
    unknown = wanted - set(ROLES)
    if unknown:
        raise click.UsageError(f"unknown role(s): {', '.join(sorted(unknown))} (roles: {', '.join(ROLES)})")
    if down_max < down_min:
        raise click.UsageError("--down-max must be >= --down-min")
    rng = random.Random(seed)
    log_path = os.path.join(reg.run_dir, "chaos.log")

    def note(text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        click.echo(line)
        with open_private(log_path, "a") as fh:
            fh.write(line + "\n")

    dead: dict[str, float] = {}  # name -> time to restart it
    end = time.monotonic() + duration
    next_kill = time.monotonic()
    kills = restarts = 0
    note(f"chaos for {duration:g} s: a SIGKILL every {interval:g} s among {', '.join(sorted(wanted))}")
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            for name, when in sorted(dead.items(), key=lambda kv: kv[1]):
                if now >= when:
                    restart(reg, reg.instances[name])
                    del dead[name]
                    restarts += 1
                    note(f"restarted {name} (pid {reg.instances[name].pid})")
            if now >= next_kill:
                next_kill = now + interval
                candidates = [i for i in reg.instances.values() if i.role in wanted and i.name not in dead and _alive(i.pid)]
                if candidates:
                    victim = rng.choice(candidates)
                    os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
                    _reap()
                    delay = rng.uniform(down_min, down_max)
                    dead[victim.name] = time.monotonic() + delay
                    kills += 1
                    note(f"killed {victim.name} (pid {victim.pid}); back in {delay:.1f} s")
            time.sleep(0.1)
    finally:
        for name in list(dead):
            restart(reg, reg.instances[name])
            restarts += 1
            note(f"restarted {name} (pid {reg.instances[name].pid})")
        note(f"chaos over: {kills} kills, {restarts} restarts")


@main.command()
@click.option("--run-dir", default=None, metavar="DIR",
              help="A network started by `evcharging up` (its run directory).  [default: evcharging-run]")
@click.option("--db", default=None, metavar="FILE",
              help="Central's database (its --db): audit a network not started by `evcharging up`, "
              "with --engine-state and --driver-state.")
@click.option("--engine-state", "engine_states", multiple=True, metavar="DIR",
              help="An engine's --state-dir, or the engine-state.json in it; once per CP.")
@click.option("--driver-state", "driver_states", multiple=True, metavar="DIR",
              help="A driver's --state-dir (default ./driver-state-ID where it ran), or the "
              "driver-state.json in it; once per driver.")
@click.option("--central-http", default=None, metavar="HOST:PORT|URL",
              help="Central's HTTP API, to compare its CP states with the engines'  "
              "[default with a run directory: the network's]")
@click.option("--ca", envvar="EVPROTO_CA", default=None, metavar="PEM",
              help="With --central-http over HTTPS: the network's CA. [env EVPROTO_CA]")
@click.option("--token", envvar="EVPROTO_TOKEN", default=None, metavar="TOKEN",
              help="With --central-http over HTTPS: a viewer (or better) token. [env EVPROTO_TOKEN]")
@click.option("--in-progress", is_flag=True, help="The network is still busy: in-flight work is not a violation.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def audit(run_dir: str | None, db: str | None, engine_states: tuple[str, ...], driver_states: tuple[str, ...],
          central_http: str | None, ca: str | None, token: str | None, in_progress: bool, as_json: bool) -> None:
    """Check the books: one ticket per supply, tickets equal what the engines metered.

    \b
    A network started here:     evcharging audit [--run-dir DIR]
    One started by hand (files copied from its hosts, or shared):
      evcharging audit --db central.db --engine-state cp001/ --engine-state cp002/ \\
                       --driver-state driver-state-D001/ [--central-http HOST:8000]

    Exit status 1 when an invariant is violated (docs/resilience.md lists them).
    """
    from .audit import AuditSourceError, AuditSources, audit_sources, cp_states_from

    # Exit 1 means violations: a wrong path is a usage error (2), not a failed audit.
    asked_http = central_http is not None
    if db is None:
        if engine_states or driver_states:
            raise click.UsageError("--engine-state and --driver-state go with --db (Central's database)")
        reg = Registry(run_dir or "evcharging-run")
        sources = AuditSources.from_run_dir(reg.run_dir)
        if not os.path.isfile(sources.db):
            raise click.UsageError(f"no network in {reg.run_dir} (no {sources.db}); for a network not started "
                                   "by `evcharging up`: --db, --engine-state, --driver-state")
        central_http = central_http or reg.meta.get("http")
        api_headers, api_tls = _api_client(reg) if reg.meta.get("http") else ({}, None)
    else:
        api_headers = {"Authorization": f"Bearer {token}"} if token else {}
        api_tls = None
        if ca:
            from evproto.aio import tls_client_context

            api_tls = tls_client_context(ca=ca)
        if run_dir is not None:
            raise click.UsageError("--run-dir or --db, not both")
        try:
            sources = AuditSources.from_paths(db, engine_states, driver_states)
        except AuditSourceError as exc:
            raise click.UsageError(str(exc)) from None
    states = None
    if central_http:
        try:
            token = api_headers.get("Authorization", "").removeprefix("Bearer ") or None
            states = cp_states_from(central_http, token=token, tls=api_tls)
        except (OSError, ValueError, KeyError) as exc:
            if asked_http:  # a run directory's own address may be gone with its network: then skip it
                raise _Unavailable(f"--central-http {central_http}: no answer from Central ({exc})") from None
    report = audit_sources(sources, quiesced=not in_progress, cp_states=states)
    click.echo(json.dumps(report.as_dict()) if as_json else report.text())
    if not report.ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
