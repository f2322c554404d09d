"""``evcp-monitor`` / ``EV_CP_M``: the monitor's command line."""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from evproto import (
    TransportError,
    __version__,
)
from evproto.domain.events import MAX_PRICE_EUR_KWH
from evproto.endpoint import parse_endpoint
from evproto.idents import MAX_ID_LEN, MAX_TEXT_LEN, InvalidTextError, check_id, check_text

from ..common import EXIT_UNAVAILABLE, EXIT_USAGE, engine_link_problem, setup_logging, shutdown_event
from ..credentials_file import credentials_for_cli, read_cp_credentials
from ..files import keep_files_private
from ..options import daemon_options
from .app import Monitor

__all__ = ["main", "tls_address"]

log = logging.getLogger("evproto.monitor")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--engine",
    "engine",
    envvar="EVPROTO_ENGINE",
    required=True,
    metavar="HOST:PORT",
    help="Where this CP's engine listens. The monitor hands the engine its record key over this "
    "link, so in release 2 HOST is a loopback address, or the link is mutual TLS: "
    "tls://HOST:PORT?ca=CA.pem&cert=MONITOR.pem&key=MONITOR.key (ev-central certs --cp; "
    "docs/security.md). [env EVPROTO_ENGINE]",
)
@click.option(
    "--central",
    envvar="EVPROTO_CENTRAL",
    required=True,
    metavar="HOST:PORT",
    help="Central's socket for monitors. [env EVPROTO_CENTRAL]",
)
@click.option(
    "--id",
    "cp_id",
    envvar="EVPROTO_CP_ID",
    required=True,
    metavar="CP_ID",
    help=f"The charge point's id: 1-{MAX_ID_LEN} printable characters, no spaces. [env EVPROTO_CP_ID]",
)
@click.option(
    "--location",
    envvar="EVPROTO_LOCATION",
    default="",
    metavar="TEXT",
    help=f"Where the CP is (needed to register a new CP): printable text, at most {MAX_TEXT_LEN} characters. "
    "[env EVPROTO_LOCATION]",
)
@click.option(
    "--price",
    envvar="EVPROTO_PRICE",
    type=click.FloatRange(min=0, max=MAX_PRICE_EUR_KWH),
    default=None,
    metavar="EUR",
    help="Price in EUR/kWh (needed to register a new CP). [env EVPROTO_PRICE]",
)
@click.option(
    "--interval-s",
    type=click.FloatRange(min=0.1, max=60),
    default=1.0,
    show_default=True,
    help="Seconds between health checks of the engine.",
)
@click.option(
    "--credentials",
    "credentials_path",
    envvar="EVPROTO_CREDENTIALS",
    default=None,
    metavar="FILE",
    help="The CP's credentials as the registry issued them (JSON with the secret, 0600). [env EVPROTO_CREDENTIALS]",
)
@click.option(
    "--ca",
    envvar="EVPROTO_CA",
    default=None,
    metavar="PEM",
    help="The network's CA certificate: Central's TLS certificate is checked against it "
    "(default: the system's CAs). [env EVPROTO_CA]",
)
@click.option(
    "--insecure",
    is_flag=True,
    envvar="EVPROTO_INSECURE",
    help="Release 1's plaintext mode: no TLS, no authentication. Only on a network you trust. [env EVPROTO_INSECURE]",
)
@daemon_options("Write a JSON file once started.")
@click.version_option(__version__, prog_name="evcp-monitor")
def main(
    engine: str,
    central: str,
    cp_id: str,
    location: str,
    price: float | None,
    interval_s: float,
    credentials_path: str | None,
    ca: str | None,
    insecure: bool,
    ready_file: str | None,
    log_format: str,
    log_level: str,
) -> None:
    """The monitor of a charge point (EV_CP_M).

    Registers the CP with Central (a new id needs --location and --price) or
    authenticates a known one, passes the confirmed id to the engine, checks the
    engine's health every second and reports faults and recoveries to Central.
    Exit status 64 when Central refuses the id or its credentials for good, or when
    --id or --location could not be registered at all.

    \b
    Release 2 (the default): Central is reached over TLS and the CP proves the
    credentials the registry issued (--credentials FILE), then hands its engine the
    record key Central grants. --insecure: release 1's plaintext.
    """
    # Checked here, once: an id nobody can type or tell apart must not reach Central.
    try:
        check_id(cp_id, what="--id")
        check_text(location, what="--location")
    except InvalidTextError as exc:
        click.echo(f"evcp-monitor: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    try:
        problem = None if insecure else engine_link_problem(parse_endpoint(engine), listening=False)
    except TransportError as exc:
        problem = str(exc)
    if problem is not None:
        click.echo(f"evcp-monitor: --engine {engine}: {problem}", err=True)
        sys.exit(EXIT_USAGE)
    credentials = credentials_for_cli(
        "evcp-monitor",
        insecure=insecure,
        path=credentials_path,
        read=lambda p: read_cp_credentials(p, cp_id),
        missing="Central authenticates charge points: give --credentials FILE (from the registry)",
        plaintext="plaintext, not authenticated",
    )
    if credentials is not None:
        central = tls_address(central, ca)
    keep_files_private()
    setup_logging(cp_id, level=log_level, fmt=log_format)

    async def run() -> int:
        return await Monitor(
            cp_id=cp_id,
            central=central,
            engine=engine,
            location=location,
            price=price,
            interval_s=interval_s,
            ready_file=ready_file,
            credentials=credentials,
        ).run(shutdown_event())

    try:
        sys.exit(asyncio.run(run()))
    except TransportError as exc:
        click.echo(f"evcp-monitor: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)


def tls_address(address: str, ca: str | None) -> str:
    """``host:port`` (or ``tcp://``) as ``tls://host:port?ca=...``; a tls:// URL is kept."""
    if address.startswith("tls://"):
        return address
    hostport = address.removeprefix("tcp://")
    return f"tls://{hostport}" + (f"?ca={ca}" if ca else "")
