"""Starting, growing and stopping a network: the broker, the registry, Central, CPs and drivers.

Ports are chosen by the processes themselves (port 0) and reported through ready
files; the first port each got is then pinned in its command line, so that a
restarted instance comes back where the others know it. Release 2's secrets (CA,
certificates, tokens, credentials) live under ``RUN/secrets`` (:mod:`..netsecrets`).
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import click

from ..common import EXIT_UNAVAILABLE
from ..files import makedirs, open_private
from .demodata import LOCATIONS, next_free_id, write_requests_file
from .processes import Instance, Registry, stop_in_order, wait_port
from .stopping import STOP_SIGNALS, mute_dead_outputs, mute_output, say

__all__ = [
    "DEFAULT_HTTP_PORT",
    "Unavailable",
    "central_ports",
    "daemon_argv",
    "db_path",
    "is_secure",
    "api_base",
    "api_client",
    "open_network",
    "start_network",
    "shutdown",
    "add_cp",
    "add_cps",
    "add_driver",
    "add_drivers",
    "add_new_cp",
    "add_new_driver",
]

#: Central's HTTP API port when none is asked for, unless it is taken (docs/central.md).
DEFAULT_HTTP_PORT = 8000


class Unavailable(click.ClickException):
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


def central_ports(central_port: int, http_port: int | None) -> tuple[int, int]:
    """The ports to give Central, checked before anything starts: an explicit port that is
    taken is an error (nothing is left running); the default HTTP port, if taken, gives way
    to a free one (0), and we say so."""
    for option, port in (("--port", central_port), ("--http-port", http_port)):
        if port and (problem := _port_problem(port)):
            raise Unavailable(
                f"{option} {port}: Central cannot listen there ({problem}); choose another port, or 0 for a free one"
            )
    if central_port and central_port == http_port:
        raise click.BadParameter("Central needs two different ports", param_hint="'--port' / '--http-port'")
    if http_port is not None:
        return central_port, http_port
    if _port_problem(DEFAULT_HTTP_PORT) is None:
        return central_port, DEFAULT_HTTP_PORT
    say(f"port {DEFAULT_HTTP_PORT} is taken: Central's HTTP API gets a free port instead (see below)")
    return central_port, 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon_argv(module: str, *args: str) -> list[str]:
    """The command line of one of our programs (``evproto.daemons.<module>``) in this interpreter."""
    return [sys.executable, "-m", f"evproto.daemons.{module}", *args]


# -- what the registry's meta says about the network ------------------------------------------


def db_path(reg: Registry) -> str:
    """Central's database in this run directory."""
    return os.path.join(reg.run_dir, "central", "central.db")


def is_secure(reg: Registry) -> bool:
    """Release 2's network (TLS, credentials, tokens), not an --insecure one."""
    return bool(reg.meta.get("secure"))


def _security_args(reg: Registry) -> list[str]:
    return [] if is_secure(reg) else ["--insecure"]


def _kafka_args(reg: Registry) -> list[str]:
    path = reg.meta.get("kafka_config_file")
    return ["--kafka-config-file", path] if path else []


def api_base(reg: Registry) -> str:
    """Central's API root, ``http(s)://HOST:PORT/api/v1``."""
    return f"{'https' if is_secure(reg) else 'http'}://{reg.meta['http']}/api/v1"


def api_client(reg: Registry) -> tuple[dict[str, str], Any]:
    """Headers and TLS context for Central's API: the network's operator token and CA."""
    if not is_secure(reg):
        return {}, None
    from ..netsecrets import NetworkSecrets
    from ..tokens import TokenRole

    secrets = NetworkSecrets(reg.run_dir)
    return {"Authorization": f"Bearer {secrets.token(db_path(reg), TokenRole.OPERATOR)}"}, secrets.tls()


def open_network(run_dir: str) -> Registry:
    """The registry of a network started in ``run_dir``; a ClickException when there is none."""
    reg = Registry(run_dir)
    if not reg.meta.get("kafka") or not reg.meta.get("central"):
        raise click.ClickException(f"no network in {reg.run_dir}: start one with `evcharging up --detach`")
    return reg


# -- up and down ------------------------------------------------------------------------------


def start_network(
    reg: Registry,
    *,
    kafka: str | None,
    kafka_settings: dict[str, str],
    central_port: int,
    http_port: int,
    cps: int,
    drivers: int,
    requests_per_driver: int,
    time_scale: float,
    power_kw: float,
    insecure: bool,
    rng: random.Random,
) -> None:
    """Start every piece in order (broker, secrets and registry, Central, CPs, drivers), each
    phase waiting until its processes are ready, and say where the network is."""
    bootstrap = kafka or _start_broker(reg)
    reg.meta = {
        "kafka": bootstrap,
        "started_at": time.time(),
        "time_scale": time_scale,
        "power_kw": power_kw,
        "secure": not insecure,
    }
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
    add_cps(
        reg,
        [(cp_id, LOCATIONS[n % len(LOCATIONS)], round(rng.uniform(0.25, 0.55), 2)) for n, cp_id in enumerate(cp_ids)],
    )
    from .weather_cmd import start_weather  # (it uses this module)

    start_weather(reg)
    add_drivers(reg, driver_ids, rng, requests_per_driver, cp_ids)
    say(
        f"network up: Kafka {bootstrap}, Central {central_addr}, HTTP {api_base(reg)}/cps, "
        f"{cps} CPs, {drivers} drivers; logs under {reg.run_dir}"
    )
    console = api_base(reg).removesuffix("/api/v1") + "/"
    if insecure:
        say("WARNING: --insecure: plaintext, nothing authenticated; anyone who reaches it can act on it")
        say(f"web console: {console}")
    else:
        say(
            f'the API needs a token: eval "$(evcharging env --run-dir {reg.run_dir})" then curl --cacert '
            '"$EVPROTO_CA" -H "Authorization: Bearer $EVPROTO_TOKEN" "$EVPROTO_API/api/v1/cps"'
        )
        say(f"web console: {console} (log in with $EVPROTO_TOKEN; the browser must trust $EVPROTO_CA)")


def shutdown(reg: Registry) -> None:
    """Stop a foreground network in order. Nothing cuts this short: more signals are ignored,
    and a dead terminal or pipe is muted rather than allowed to raise (the panel's screen
    may be gone: that is often why we stop)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    mute_dead_outputs()
    say(f"stopping the network ({len(reg.alive())} processes)...")
    stopped = stop_in_order(reg)
    say(f"stopped {len(stopped)} processes")
    try:
        sys.stdout.flush()
    except OSError:
        mute_output(1)


def _start_broker(reg: Registry) -> str:
    from evproto.bus.broker import find_broker_binary

    binary = find_broker_binary()
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    inst = Instance(
        name="broker",
        role="broker",
        id=None,
        log=os.path.join(reg.run_dir, "broker", "broker.log"),
        argv=[
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
    )
    reg.start(inst)
    wait_port("127.0.0.1", port, 15.0)
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


def _ensure_topics(bootstrap: str, extra: dict[str, str] | None = None) -> None:
    from evproto.bus.kafka import BusError, KafkaSettings, ensure_topics

    try:
        asyncio.run(
            ensure_topics(KafkaSettings(bootstrap=bootstrap, client_id="evcharging", extra=extra or {}), timeout_s=20.0)
        )
    except BusError as exc:
        raise click.ClickException(str(exc)) from None


def _secure_setup(reg: Registry, driver_ids: list[str]) -> None:
    """The CA, certificates, tokens and the registry; drivers' keys."""
    from ..netsecrets import NetworkSecrets
    from ..tokens import TokenRole

    secrets = NetworkSecrets(reg.run_dir)
    secrets.ensure_pki()
    makedirs(os.path.dirname(db_path(reg)))
    for role in (TokenRole.ADMIN, TokenRole.OPERATOR, TokenRole.INSTALLER):
        secrets.token(db_path(reg), role)
    if driver_ids:
        _issue_driver_keys(reg, driver_ids)
    _start_registry(reg)


def _issue_driver_keys(reg: Registry, driver_ids: list[str]) -> None:
    from ..netsecrets import NetworkSecrets

    out = subprocess.run(
        daemon_argv(
            "central",
            "--db",
            db_path(reg),
            "drivers",
            "add",
            *driver_ids,
            "--credentials",
            NetworkSecrets(reg.run_dir).driver_credentials_dir(),
        ),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise click.ClickException(f"cannot register drivers: {out.stderr.strip()}")


def _start_registry(reg: Registry) -> dict[str, Any]:
    from ..netsecrets import NetworkSecrets

    cert = NetworkSecrets(reg.run_dir).server_cert("registry")
    base = os.path.join(reg.run_dir, "registry")
    ready = os.path.join(base, "ready.json")
    inst = Instance(
        name="registry",
        role="registry",
        id=None,
        log=os.path.join(base, "registry.log"),
        ready=ready,
        argv=daemon_argv(
            "registry",
            "--db",
            db_path(reg),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--cert",
            str(cert.cert),
            "--key",
            str(cert.key),
            "--ready-file",
            ready,
        ),
    )
    reg.start(inst)
    info = reg.wait_ready(inst)
    _pin(inst, "--port", info["url"].rsplit(":", 1)[1])
    reg.meta["registry"] = info["url"]
    reg.save()
    return info


def _start_central(reg: Registry, bootstrap: str, port: int, http_port: int, driver_ids: list[str]) -> dict[str, Any]:
    base = os.path.join(reg.run_dir, "central")
    args = [
        "--db",
        db_path(reg),
        "--kafka",
        bootstrap,
        "--port",
        str(port),
        "--http-port",
        str(http_port),
        "--no-panel",
        "--ready-file",
        os.path.join(base, "ready.json"),
        # Every CP of this network is ours and registers at once: no pacing needed.
        "--registrations-per-min",
        "1000000",
        *_security_args(reg),
        *_kafka_args(reg),
        # Under the launcher everything binds to this machine only.
        "--host",
        "127.0.0.1",
    ]
    if is_secure(reg):
        from ..netsecrets import NetworkSecrets

        cert = NetworkSecrets(reg.run_dir).server_cert("central")
        args += ["--tls-cert", str(cert.cert), "--tls-key", str(cert.key)]
    for d in driver_ids:
        args += ["--register-driver", d]
    inst = Instance(
        name="central",
        role="central",
        id=None,
        argv=daemon_argv("central", *args),
        log=os.path.join(base, "central.log"),
        ready=os.path.join(base, "ready.json"),
    )
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


# -- charge points and drivers ----------------------------------------------------------------


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
            name=f"engine-{cp_id}",
            role="engine",
            id=cp_id,
            log=os.path.join(base, "engine.log"),
            ready=os.path.join(base, "engine.ready.json"),
            argv=daemon_argv(
                "engine",
                "--kafka",
                reg.meta["kafka"],
                "--listen",
                "127.0.0.1:0",
                "--auto",
                "--time-scale",
                str(reg.meta.get("time_scale", 1.0)),
                "--power-kw",
                str(reg.meta.get("power_kw", 22.0)),
                "--state-dir",
                os.path.join(base, "engine-state"),
                "--ready-file",
                os.path.join(base, "engine.ready.json"),
                *_security_args(reg),
                *_kafka_args(reg),
            ),
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
            name=f"monitor-{cp_id}",
            role="monitor",
            id=cp_id,
            log=os.path.join(base, "monitor.log"),
            ready=os.path.join(base, "monitor.ready.json"),
            argv=daemon_argv(
                "monitor",
                "--engine",
                listen,
                "--central",
                reg.meta["central"],
                "--id",
                cp_id,
                "--location",
                location,
                "--price",
                str(price),
                "--ready-file",
                os.path.join(base, "monitor.ready.json"),
                *_monitor_security(reg, cp_id, location),
            ),
        )
        monitors.append(reg.start(monitor))
    for monitor in monitors:
        reg.wait_ready(monitor)


def _monitor_security(reg: Registry, cp_id: str, location: str) -> list[str]:
    """--insecure, or the CP's credentials (registered at the registry now if need be) and the CA."""
    if not is_secure(reg):
        return ["--insecure"]
    from ..netsecrets import NetworkSecrets, RegistryError
    from ..tokens import TokenRole

    secrets = NetworkSecrets(reg.run_dir)
    try:
        creds = secrets.register_cp(
            reg.meta["registry"], secrets.token(db_path(reg), TokenRole.INSTALLER), cp_id, location
        )
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
            name=f"driver-{driver_id}",
            role="driver",
            id=driver_id,
            log=os.path.join(base, "driver.log"),
            ready=os.path.join(base, "ready.json"),
            argv=daemon_argv(
                "driver",
                "--kafka",
                reg.meta["kafka"],
                "--id",
                driver_id,
                "--requests",
                requests,
                "--stay",
                "--state-dir",
                os.path.join(base, "state"),
                "--ready-file",
                os.path.join(base, "ready.json"),
                *_driver_security(reg, driver_id),
                *_kafka_args(reg),
            ),
        )
        started.append(reg.start(inst))
    for inst in started:
        reg.wait_ready(inst)


def _driver_security(reg: Registry, driver_id: str) -> list[str]:
    if not is_secure(reg):
        return ["--insecure"]
    from ..netsecrets import NetworkSecrets

    return ["--credentials", os.path.join(NetworkSecrets(reg.run_dir).driver_credentials_dir(), f"{driver_id}.json")]


def add_new_cp(reg: Registry, cp_id: str | None, location: str | None, price: float | None) -> str:
    """``evcharging add cp``: a CP not in the network yet (default: the next free CPnnn, a demo
    city, a random price) started in it; its id."""
    known = sorted(i.id for i in reg.instances.values() if i.role == "engine" and i.id)
    if cp_id is None:
        cp_id = next_free_id("CP", known)
    elif cp_id in known:
        raise click.ClickException(f"{cp_id} already exists in this network")
    rng = random.Random()
    add_cp(
        reg, cp_id, location or rng.choice(LOCATIONS), price if price is not None else round(rng.uniform(0.25, 0.55), 2)
    )
    return cp_id


def add_new_driver(reg: Registry, driver_id: str | None, requests_file: str | None) -> str:
    """``evcharging add driver``: a driver registered at Central (default id: the next free
    Dnnn) and started with ``requests_file`` or a generated one; its id."""
    known = sorted(i.id for i in reg.instances.values() if i.role == "driver" and i.id)
    if driver_id is None:
        driver_id = next_free_id("D", known)
    elif driver_id in known:
        raise click.ClickException(f"{driver_id} already exists in this network")
    central = reg.instances["central"]
    db = central.argv[central.argv.index("--db") + 1]
    if is_secure(reg):
        _issue_driver_keys(reg, [driver_id])
    else:
        subprocess.run(daemon_argv("central", "--db", db, "drivers", "add", driver_id), check=True, capture_output=True)
    base = os.path.join(reg.run_dir, "drivers", driver_id)
    makedirs(base)
    if requests_file:
        with open(requests_file, encoding="utf-8") as src, open_private(os.path.join(base, "requests.txt"), "w") as dst:
            dst.write(src.read())
    cps = sorted(i.id for i in reg.instances.values() if i.role == "engine" and i.id)
    time.sleep(1.5)  # Central picks up new registrations every second
    add_driver(reg, driver_id, random.Random(), 12, cps or ["CP001"])
    return driver_id
