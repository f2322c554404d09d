"""The ``evcharging`` command line: one click command per verb, each a few lines over the
modules that do the work (processes, network, remote_panel, chaos, auditing)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from typing import Any, Callable

import click
from click.core import ParameterSource

from evproto import __version__

from ..files import keep_files_private, makedirs
from ..options import kafka_config_options, kafka_extra
from .auditing import audit_network
from .chaos import chaos_roles, run_chaos
from .network import (
    DEFAULT_HTTP_PORT,
    add_new_cp,
    add_new_driver,
    api_base,
    central_ports,
    db_path,
    is_secure,
    open_network,
    shutdown,
    start_network,
)
from .processes import ROLES, Registry, pid_alive, restart, stop_in_order
from .remote_panel import show_panel
from .stopping import STOP
from .weather_cmd import weather

__all__ = ["main", "run_dir_option", "DEFAULT_RUN_DIR"]

_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
#: Where a network lives when no --run-dir is given (relative to the working directory).
DEFAULT_RUN_DIR = "evcharging-run"


def run_dir_option(help_text: str = "The network's run directory (`evcharging up --run-dir`).") -> Callable[[Any], Any]:
    """``--run-dir``, as every command takes it (``help_text`` says what it is to this command);
    the command receives ``run_dir``."""
    return click.option("--run-dir", default=DEFAULT_RUN_DIR, show_default=True, metavar="DIR", help=help_text)


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
      evcharging weather set Madrid -3   freeze a city (simulated provider): its CPs stop
      eval "$(evcharging env)"      EVPROTO_API, EVPROTO_TOKEN, EVPROTO_CA for curl and scripts
      evcharging down               stop everything

    Every process logs to RUN/<role>/<id>/*.log (RUN: --run-dir, default ./evcharging-run).
    """
    keep_files_private()  # what the launcher writes (secrets, registry, logs) is its owner's only


@main.command()
@click.option(
    "--cps", type=click.IntRange(1, 500), default=4, show_default=True, help="Charge points (engine + monitor)."
)
@click.option("--drivers", type=click.IntRange(0, 500), default=3, show_default=True, help="Driver apps.")
@click.option(
    "--requests",
    "requests_per_driver",
    type=click.IntRange(1, 1000),
    default=12,
    show_default=True,
    help="Supplies in each driver's requests file.",
)
@click.option(
    "--kafka", default=None, metavar="HOST:PORT", help="Use this Kafka instead of starting the embedded broker."
)
@click.option(
    "--port",
    "central_port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Central's port for monitors (0: pick a free one).",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=None,
    help=f"Central's HTTP API port (0: pick a free one).  [default: {DEFAULT_HTTP_PORT}, or a free one "
    f"when {DEFAULT_HTTP_PORT} is taken]",
)
@run_dir_option(help_text="Where logs, state and the registry go.")
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0.01, max=3600),
    default=30.0,
    show_default=True,
    help="Speed-up of the simulated meters (energy only; supplies still last seconds).",
)
@click.option("--power-kw", type=click.FloatRange(min=0.1, max=1000), default=22.0, show_default=True)
@click.option("--seed", type=int, default=None, help="Seed for the demo's request files.")
@click.option("--detach", is_flag=True, help="Start everything and return; stop later with `evcharging down`.")
@click.option(
    "--insecure",
    is_flag=True,
    help="Release 1's plaintext network: no registry, no TLS, no credentials, nothing sealed.",
)
@kafka_config_options
def up(
    cps: int,
    drivers: int,
    requests_per_driver: int,
    kafka: str | None,
    central_port: int,
    http_port: int | None,
    run_dir: str,
    time_scale: float,
    power_kw: float,
    seed: int | None,
    detach: bool,
    insecure: bool,
    kafka_config: tuple[str, ...],
    kafka_config_file: str | None,
) -> None:
    """Start a network: broker, Central, CPs, the weather service and drivers, then show Central's panel.

    Ctrl+C stops all. The weather service (ev-weather) asks a simulated provider
    (evweather-sim): `evcharging weather set CITY CELSIUS` changes a city's temperature.

    By default it is release 2's secure network: a CA and certificates, the registry
    (ev-registry) that issues each CP its credentials, tokens for operators, TLS
    everywhere, records sealed per CP and driver, all under RUN/secrets (0600).
    `eval "$(evcharging env)"` then gives a shell the API's URL, an operator token
    and the CA. --insecure starts release 1's plaintext network instead.
    """
    reg = Registry(run_dir)
    if reg.alive():
        raise click.ClickException(
            f"a network already runs from {reg.run_dir} ({len(reg.alive())} processes); "
            "`evcharging down` first, or use another --run-dir"
        )
    kafka_settings = kafka_extra(kafka_config, kafka_config_file)
    if kafka_settings and not kafka:
        raise click.UsageError("--kafka-config is for a Kafka given with --kafka (the embedded broker is plaintext)")
    central_port, http_port = central_ports(central_port, http_port)
    reg.instances.clear()
    rng = random.Random(seed)
    makedirs(reg.run_dir)
    # `kill`, Ctrl+C, or the terminal closed, while starting or showing the panel: stop the network.
    STOP.install()
    detached = panel_shown = False
    try:
        try:
            start_network(
                reg,
                kafka=kafka,
                kafka_settings=kafka_settings,
                central_port=central_port,
                http_port=http_port,
                cps=cps,
                drivers=drivers,
                requests_per_driver=requests_per_driver,
                time_scale=time_scale,
                power_kw=power_kw,
                insecure=insecure,
                rng=rng,
            )
            if detach:
                detached = True
                return
            panel_shown = True
            asyncio.run(show_panel(reg))
        finally:
            if not detached:
                shutdown(reg)
    except KeyboardInterrupt:
        if not panel_shown:  # interrupted while starting: say so (exit 1); during the panel it is the way out
            raise click.Abort() from None


@main.command()
@run_dir_option()
@click.option("--json", "as_json", is_flag=True, help="One JSON array: name, role, id, pid, alive, log.")
def ps(run_dir: str, as_json: bool) -> None:
    """List the instances of a network: name, role, id, pid, alive."""
    reg = Registry(run_dir)
    rows = [
        {
            "name": i.name,
            "role": i.role,
            "id": i.id,
            "pid": i.pid,
            "alive": pid_alive(i.pid),
            "log": i.log,
            "address": i.info.get("listen") or i.info.get("bootstrap") or i.info.get("url"),
        }
        for i in sorted(reg.instances.values(), key=lambda i: (ROLES.index(i.role), i.name))
    ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo(f"no network in {reg.run_dir}")
        return
    click.echo(f"{'NAME':<18} {'ROLE':<11} {'ID':<8} {'PID':>7}  {'STATE':<6} ADDRESS")
    for r in rows:
        click.echo(
            f"{r['name']:<18} {r['role']:<11} {r['id'] or '-':<8} {r['pid'] or '-':>7}  "
            f"{'up' if r['alive'] else 'down':<6} {r['address'] or ''}"
        )


@main.command()
@run_dir_option()
@click.option(
    "--role",
    type=click.Choice(["operator", "admin", "viewer"]),
    default="operator",
    show_default=True,
    help="Whose token EVPROTO_TOKEN holds (viewer: a read-only token made on first use).",
)
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

    reg = open_network(run_dir)
    exports = {"EVPROTO_API": api_base(reg).removesuffix("/api/v1"), "EVPROTO_KAFKA": reg.meta["kafka"]}
    if reg.meta.get("kafka_config_file"):
        exports["EVPROTO_KAFKA_CONFIG_FILE"] = os.path.abspath(reg.meta["kafka_config_file"])
    if is_secure(reg):
        from ..netsecrets import NetworkSecrets
        from ..tokens import TokenRole

        secrets = NetworkSecrets(reg.run_dir)
        exports["EVPROTO_TOKEN"] = secrets.token(db_path(reg), TokenRole(role))
        exports["EVPROTO_CA"] = secrets.ca_path
    else:
        click.echo("# --insecure network: no token or CA needed (plain HTTP)", err=True)
    for name, value in exports.items():
        click.echo(f"export {name}={shlex.quote(value)}")


@main.command()
@run_dir_option()
def down(run_dir: str) -> None:
    """Stop every instance of a network (SIGTERM, then SIGKILL after a grace period)."""
    reg = Registry(run_dir)
    stopped = stop_in_order(reg)
    click.echo(f"stopped {len(stopped)} process(es)" if stopped else "nothing was running")


@main.group(context_settings=_SETTINGS)
def add() -> None:
    """Add a charge point or a driver to a running network (nothing else is disturbed)."""


@add.command("cp")
@click.option("--id", "cp_id", default=None, help="The CP's id (default: the next free CPnnn).")
@click.option("--location", default=None, help="Default: a city from the demo list.")
@click.option(
    "--price", type=click.FloatRange(min=0, max=100), default=None, help="EUR/kWh (default: random 0.25-0.55)."
)
@run_dir_option()
def add_cp_cmd(cp_id: str | None, location: str | None, price: float | None, run_dir: str) -> None:
    """Start an engine and a monitor for a new charge point."""
    cp_id = add_new_cp(open_network(run_dir), cp_id, location, price)
    click.echo(f"added {cp_id}: engine-{cp_id}, monitor-{cp_id}")


@add.command("driver")
@click.option("--id", "driver_id", default=None, help="The driver's id (default: the next free Dnnn).")
@click.option(
    "--requests",
    "requests_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Its requests file (default: a generated one over the network's CPs).",
)
@run_dir_option()
def add_driver_cmd(driver_id: str | None, requests_file: str | None, run_dir: str) -> None:
    """Register a new driver at Central and start its app."""
    driver_id = add_new_driver(open_network(run_dir), driver_id, requests_file)
    click.echo(f"added {driver_id}: driver-{driver_id}")


_SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}


@main.command()
@click.argument("name")
@click.option(
    "--signal",
    "sig",
    type=click.Choice(list(_SIGNALS), case_sensitive=False),
    default="KILL",
    show_default=True,
    help="KILL: a crash, no goodbye; TERM/INT: an orderly stop.",
)
@run_dir_option()
def kill(name: str, sig: str, run_dir: str) -> None:
    """Send a signal to one instance (by name, see `evcharging ps`)."""
    reg = Registry(run_dir)
    inst = reg.instances.get(name)
    if inst is None:
        raise click.ClickException(f"no instance {name!r}; `evcharging ps` lists them")
    if not pid_alive(inst.pid):
        raise click.ClickException(f"{name} is not running")
    os.kill(inst.pid, _SIGNALS[sig.upper()])  # type: ignore[arg-type]
    click.echo(f"sent SIG{sig.upper()} to {name} (pid {inst.pid})")


@main.command()
@click.argument("name")
@run_dir_option()
def start(name: str, run_dir: str) -> None:
    """Restart a dead instance with the same identity, ports and state directory."""
    reg = Registry(run_dir)
    inst = reg.instances.get(name)
    if inst is None:
        raise click.ClickException(f"no instance {name!r}; `evcharging ps` lists them")
    if pid_alive(inst.pid):
        raise click.ClickException(f"{name} is already running (pid {inst.pid})")
    restart(reg, inst)
    click.echo(f"started {name} (pid {inst.pid})")


@main.command()
@click.option(
    "--interval", type=click.FloatRange(min=0.1), default=5.0, show_default=True, help="Seconds between kills."
)
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds of chaos; then every killed instance is restarted and chaos ends.",
)
@click.option(
    "--roles",
    default="central,engine,monitor,driver",
    show_default=True,
    help="Comma-separated roles to pick victims from (broker too, but an in-memory broker "
    "loses everything it held: see docs/resilience.md).",
)
@click.option(
    "--down-min",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Shortest time a victim stays dead.",
)
@click.option(
    "--down-max", type=click.FloatRange(min=0), default=6.0, show_default=True, help="Longest time a victim stays dead."
)
@click.option("--seed", type=int, default=None, help="Make the sequence of victims repeatable.")
@run_dir_option()
def chaos(
    interval: float, duration: float, roles: str, down_min: float, down_max: float, seed: int | None, run_dir: str
) -> None:
    """Kill random instances with SIGKILL and restart each after a random delay; ends by itself.

    Every action is printed and appended to RUN/chaos.log.
    """
    reg = open_network(run_dir)
    wanted = chaos_roles(roles)
    if down_max < down_min:
        raise click.UsageError("--down-max must be >= --down-min")
    run_chaos(reg, wanted=wanted, interval=interval, duration=duration, down_min=down_min, down_max=down_max, seed=seed)


@main.command()
@run_dir_option(help_text="A network started by `evcharging up` (its run directory).")
@click.option(
    "--db",
    default=None,
    metavar="FILE",
    help="Central's database (its --db): audit a network not started by `evcharging up`, "
    "with --engine-state and --driver-state.",
)
@click.option(
    "--engine-state",
    "engine_states",
    multiple=True,
    metavar="DIR",
    help="An engine's --state-dir, or the engine-state.json in it; once per CP.",
)
@click.option(
    "--driver-state",
    "driver_states",
    multiple=True,
    metavar="DIR",
    help="A driver's --state-dir (default ./driver-state-ID where it ran), or the "
    "driver-state.json in it; once per driver.",
)
@click.option(
    "--central-http",
    default=None,
    metavar="HOST:PORT|URL",
    help="Central's HTTP API, to compare its CP states with the engines'  "
    "[default with a run directory: the network's]",
)
@click.option(
    "--ca",
    envvar="EVPROTO_CA",
    default=None,
    metavar="PEM",
    help="With --central-http over HTTPS: the network's CA. [env EVPROTO_CA]",
)
@click.option(
    "--token",
    envvar="EVPROTO_TOKEN",
    default=None,
    metavar="TOKEN",
    help="With --central-http over HTTPS: a viewer (or better) token. [env EVPROTO_TOKEN]",
)
@click.option("--in-progress", is_flag=True, help="The network is still busy: in-flight work is not a violation.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def audit(
    run_dir: str,
    db: str | None,
    engine_states: tuple[str, ...],
    driver_states: tuple[str, ...],
    central_http: str | None,
    ca: str | None,
    token: str | None,
    in_progress: bool,
    as_json: bool,
) -> None:
    """Check the books: one ticket per supply, tickets equal what the engines metered.

    \b
    A network started here:     evcharging audit [--run-dir DIR]
    One started by hand (files copied from its hosts, or shared):
      evcharging audit --db central.db --engine-state cp001/ --engine-state cp002/ \\
                       --driver-state driver-state-D001/ [--central-http HOST:8000]

    Exit status 1 when an invariant is violated (docs/resilience.md lists them).
    """
    run_dir_given = click.get_current_context().get_parameter_source("run_dir") is not ParameterSource.DEFAULT
    report = audit_network(
        run_dir=run_dir,
        run_dir_given=run_dir_given,
        db=db,
        engine_states=engine_states,
        driver_states=driver_states,
        central_http=central_http,
        ca=ca,
        token=token,
        in_progress=in_progress,
    )
    click.echo(json.dumps(report.as_dict()) if as_json else report.text())
    if not report.ok:
        sys.exit(1)


main.add_command(weather)
