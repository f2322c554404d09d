"""``ev-central`` / ``EV_Central``: Central's command line (its subcommands are in admin.py)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sys

import click

from evproto import __version__
from evproto.bus.kafka import BusError, KafkaSettings
from evproto.domain.central import Rules
from evproto.errors import TransportError

from ..common import EXIT_UNAVAILABLE, setup_logging, shutdown_event
from ..files import keep_files_private
from ..options import daemon_options, kafka_config_options, kafka_extra
from ..runtime import raise_fd_limit, tune_gc
from .admin import CLI_SETTINGS, audit_group, certs, cps, drivers, open_store, tokens


@click.group(invoke_without_command=True, context_settings=CLI_SETTINGS)
@click.option(
    "--db",
    envvar="EVPROTO_DB",
    default="central.db",
    show_default=True,
    metavar="PATH",
    help="SQLite database (created if missing). [env EVPROTO_DB]",
)
@click.option(
    "--port",
    envvar="EVPROTO_CENTRAL_PORT",
    type=click.IntRange(0, 65535),
    default=7000,
    show_default=True,
    help="Port for the monitors' sockets (0: pick a free one). [env EVPROTO_CENTRAL_PORT]",
)
@click.option(
    "--host",
    envvar="EVPROTO_CENTRAL_HOST",
    default="0.0.0.0",
    show_default=True,
    help="Address to listen on for monitors and HTTP. [env EVPROTO_CENTRAL_HOST]",
)
@click.option(
    "--kafka",
    envvar="EVPROTO_KAFKA",
    default=None,
    metavar="HOST:PORT",
    help="Kafka bootstrap server(s); required to run. [env EVPROTO_KAFKA]",
)
@click.option(
    "--http-port",
    envvar="EVPROTO_HTTP_PORT",
    type=click.IntRange(-1, 65535),
    default=8000,
    show_default=True,
    help="Port of the HTTP API (0: pick a free one, -1: no HTTP). [env EVPROTO_HTTP_PORT]",
)
@click.option(
    "--panel/--no-panel",
    default=None,
    help="The monitoring panel (default: on when stdout is a terminal; plain log lines otherwise).",
)
@click.option(
    "--auto-register/--no-auto-register",
    default=True,
    show_default=True,
    help="Register a new CP the first time its monitor connects with a location and a price.",
)
@click.option(
    "--register-driver",
    "register_drivers",
    multiple=True,
    metavar="ID",
    help="Register this driver before starting (repeatable).",
)
@click.option(
    "--answer-timeout-s",
    type=click.FloatRange(min=1, max=3600),
    default=10.0,
    show_default=True,
    help="How long a CP has to answer an authorisation.",
)
@click.option(
    "--plug-timeout-s",
    type=click.FloatRange(min=1, max=3600),
    default=60.0,
    show_default=True,
    help="How long a driver has to plug in once authorised.",
)
@click.option(
    "--registrations-per-min",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    metavar="N",
    help="New CPs one address may register per minute (all addresses together: 5 x N); "
    "more are answered BUSY and their monitors retry. Known CPs reconnecting are never limited.",
)
@click.option(
    "--max-cps",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="Registered CPs at most; a registration beyond is refused.",
)
@click.option("--topic-prefix", envvar="EVPROTO_TOPIC_PREFIX", default="evcharging.", show_default=True)
@kafka_config_options
@click.option(
    "--tls-cert",
    envvar="EVPROTO_CENTRAL_CERT",
    default=None,
    metavar="PEM",
    help="Central's TLS certificate (chain) for the monitors' socket and the HTTP API. [env EVPROTO_CENTRAL_CERT]",
)
@click.option(
    "--tls-key",
    envvar="EVPROTO_CENTRAL_KEY",
    default=None,
    metavar="PEM",
    help="Its private key. [env EVPROTO_CENTRAL_KEY]",
)
@click.option("--audit-log", default=None, metavar="PATH", help="The security audit log (default: DB.audit.jsonl).")
@click.option(
    "--weather-stale-s",
    envvar="EVPROTO_WEATHER_STALE_S",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="A location the weather service (ev-weather) has not reported for this long shows "
    '"weather unknown" (it never stops a CP). [env EVPROTO_WEATHER_STALE_S]',
)
@click.option(
    "--insecure",
    is_flag=True,
    envvar="EVPROTO_INSECURE",
    help="Release 1's plaintext mode: no TLS, monitors not authenticated, records neither sealed nor "
    "signed. Only on a network you trust. [env EVPROTO_INSECURE]",
)
@click.option(
    "--log-file",
    default=None,
    metavar="PATH",
    help="Where logs go while the panel owns the terminal (default: next to the database).",
)
@daemon_options("Write a JSON file with the chosen ports once up.")
@click.version_option(__version__, prog_name="ev-central")
@click.pass_context
def main(
    ctx: click.Context,
    db: str,
    port: int,
    host: str,
    kafka: str | None,
    http_port: int,
    panel: bool | None,
    auto_register: bool,
    register_drivers: tuple[str, ...],
    answer_timeout_s: float,
    plug_timeout_s: float,
    registrations_per_min: float,
    max_cps: int,
    topic_prefix: str,
    kafka_config: tuple[str, ...],
    kafka_config_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    audit_log: str | None,
    weather_stale_s: float,
    insecure: bool,
    ready_file: str | None,
    log_file: str | None,
    log_format: str,
    log_level: str,
) -> None:
    """Central (EV_Central): the control centre of the charging network.

    Without a subcommand, runs Central: the socket server for monitors, the Kafka
    side (driver requests, CP events, tickets), the HTTP API and the monitoring
    panel. Subcommands manage the registry:

    \b
      ev-central drivers add D001 D002     register drivers
      ev-central drivers remove D002
      ev-central drivers list
      ev-central cps add CP001 --location Alicante --price 0.35
      ev-central cps remove CP009
      ev-central cps list
      ev-central tokens create --role operator --name alice
      ev-central audit verify
    """
    keep_files_private()
    ctx.obj = db
    if ctx.invoked_subcommand is not None:
        return
    if not kafka:
        raise click.UsageError("--kafka HOST:PORT (or EVPROTO_KAFKA) is required to run Central")
    if insecure and (tls_cert or tls_key):
        raise click.UsageError("--insecure is plaintext: leave out --tls-cert/--tls-key")
    if not insecure and not (tls_cert and tls_key):
        raise click.UsageError(
            "Central speaks TLS: give --tls-cert and --tls-key (evcharging up makes them), "
            "or --insecure for release 1's plaintext mode"
        )
    from .app import Central, CentralOptions

    show_panel = sys.stdout.isatty() if panel is None else panel
    if show_panel and sys.stdout.isatty():
        path = log_file or os.path.join(os.path.dirname(os.path.abspath(db)), "central.log")
        setup_logging("central", level=log_level, fmt="json" if log_format == "auto" else log_format)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.getLogger().handlers[0].formatter)
        logging.getLogger().handlers[:] = [handler]
    else:
        setup_logging("central", level=log_level, fmt=log_format)
    store = open_store(db)
    for d in register_drivers:
        store.add_driver(d)
    store.close()
    opts = CentralOptions(
        db=db,
        kafka=KafkaSettings(
            bootstrap=kafka,
            client_id="ev-central",
            prefix=topic_prefix,
            extra=kafka_extra(kafka_config, kafka_config_file),
        ),
        listen=f"{host}:{port}",
        http=f"{host}:{http_port}" if http_port >= 0 else None,
        rules=Rules(
            auto_register_cps=auto_register,
            answer_timeout_s=answer_timeout_s,
            plug_timeout_s=plug_timeout_s,
            registrations_per_min=registrations_per_min,
            max_cps=max_cps,
        ),
        ready_file=ready_file,
        panel=show_panel,
        secure=not insecure,
        tls=(tls_cert, tls_key) if tls_cert and tls_key else None,
        audit_log=audit_log,
        weather_stale_s=weather_stale_s,
    )
    if insecure:
        click.echo(
            "ev-central: WARNING: --insecure: no TLS, monitors are not authenticated and records are "
            "neither sealed nor signed; anyone who reaches the network can act on it",
            err=True,
        )

    tune_gc()  # thousands of links: see GC_YOUNG_THRESHOLD
    fds = raise_fd_limit()
    if fds < 4096:
        logging.getLogger("evproto.central").warning(
            "open files limited to %d: Central can hold about %d monitor links (raise with ulimit -n)", fds, fds - 100
        )

    async def run() -> int:
        return await Central(opts).run(shutdown_event())

    try:
        sys.exit(asyncio.run(run()))
    except (BusError, TransportError) as exc:
        click.echo(f"ev-central: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    except OSError as exc:  # a port taken or not ours to bind: one line, not a traceback
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        click.echo(
            f"ev-central: cannot listen on {host} (--port {port}, --http-port {http_port}): {exc.strerror}", err=True
        )
        sys.exit(EXIT_UNAVAILABLE)


# The registry and administration subcommands (admin.py).
for _command in (drivers, cps, tokens, audit_group, certs):
    main.add_command(_command)


if __name__ == "__main__":
    main()
