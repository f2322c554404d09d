"""``ev-driver`` / ``EV_Driver``: the driver app's command line."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import click

from evproto import __version__
from evproto.bus.kafka import (
    BusError,
    KafkaSettings,
)
from evproto.idents import InvalidTextError, check_id

from ..common import EXIT_DATAERR, EXIT_UNAVAILABLE, EXIT_USAGE, setup_logging, shutdown_event
from ..credentials_file import credentials_for_cli, read_driver_credentials
from ..files import StateFileError, keep_files_private
from ..options import daemon_options, kafka_config_options, kafka_extra
from .app import Driver
from .live import ScreenNotes
from .requests import MAX_REQUESTS_FILE_BYTES, parse_requests
from .screen import DriverScreen

__all__ = ["main"]


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--kafka",
    envvar="EVPROTO_KAFKA",
    required=True,
    metavar="HOST:PORT",
    help="Kafka bootstrap server(s). [env EVPROTO_KAFKA]",
)
@click.option(
    "--id",
    "driver_id",
    envvar="EVPROTO_DRIVER_ID",
    required=True,
    metavar="DRIVER_ID",
    help="This driver's id (must be registered at Central). [env EVPROTO_DRIVER_ID]",
)
@click.option(
    "--requests",
    "requests_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    metavar="FILE",
    help="Supplies to request in order: one 'CP_ID [TARGET]' per line, TARGET like "
    "2.5kWh or 30s; blank lines and # comments ignored.",
)
@click.option(
    "--pause-s",
    type=click.FloatRange(min=0),
    default=4.0,
    show_default=True,
    help="Pause after each supply ends, success or not, before the next request.",
)
@click.option(
    "--state-dir",
    envvar="EVPROTO_STATE_DIR",
    default=None,
    metavar="DIR",
    help="Where the app remembers its progress (default ./driver-state-ID). [env EVPROTO_STATE_DIR]",
)
@click.option("--topic-prefix", envvar="EVPROTO_TOPIC_PREFIX", default="evcharging.", show_default=True)
@click.option(
    "--exit-when-done/--stay",
    default=None,
    help="After the requests file: exit (default when stdin is not a terminal) or keep running.",
)
@click.option(
    "--panel/--no-panel",
    default=None,
    help="The live screen: the supply, each request's steps, tickets; keys l (charge points) and q "
    "(default: on when stdout is a terminal; plain log lines otherwise).",
)
@click.option(
    "--log-file",
    default=None,
    metavar="PATH",
    help="Where logs go while the live screen owns the terminal (default: driver.log in --state-dir).",
)
@kafka_config_options
@click.option(
    "--credentials",
    "credentials_path",
    envvar="EVPROTO_CREDENTIALS",
    default=None,
    metavar="FILE",
    help="This driver's key file (ev-central drivers add ID --credentials DIR writes it; 0600). "
    "[env EVPROTO_CREDENTIALS]",
)
@click.option(
    "--insecure",
    is_flag=True,
    envvar="EVPROTO_INSECURE",
    help="Release 1's plaintext mode: requests not sealed, news not checked. Only on a network you "
    "trust. [env EVPROTO_INSECURE]",
)
@daemon_options("Write a JSON file once started.")
@click.version_option(__version__, prog_name="ev-driver")
def main(
    kafka: str,
    driver_id: str,
    requests_file: str | None,
    pause_s: float,
    state_dir: str | None,
    topic_prefix: str,
    exit_when_done: bool | None,
    panel: bool | None,
    log_file: str | None,
    kafka_config: tuple[str, ...],
    kafka_config_file: str | None,
    credentials_path: str | None,
    insecure: bool,
    ready_file: str | None,
    log_format: str,
    log_level: str,
) -> None:
    """A driver's app (EV_Driver).

    Requests supplies from Central and shows each step, the live figures and the
    ticket. With --requests it works through the file, pausing --pause-s after
    each supply. Commands (type them; on a pipe, one per line): r CP_ID [TARGET]
    request a supply, l list the available charge points, q quit.

    On a terminal it shows a live screen instead of log lines (--no-panel: lines): the
    supply in progress, each request's steps, the tickets; l shows or hides the charge
    points with their prices, q quits, and r CP_ID [TARGET] Enter requests a supply.
    Logs then go to --log-file.

    \b
    Release 2 (the default): requests are sealed with this driver's key (--credentials)
    and only what Central sealed or signed is believed. --insecure: release 1's plaintext.
    """
    try:
        check_id(driver_id, what="--id")
    except InvalidTextError as exc:
        click.echo(f"ev-driver: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    keep_files_private()
    state_dir = state_dir or os.path.join(os.getcwd(), f"driver-state-{driver_id}")
    # Like ev-central's panel: --panel asks for the screen, a terminal makes it possible.
    wanted = sys.stdout.isatty() if panel is None else panel
    screen = DriverScreen(driver_id) if wanted and sys.stdout.isatty() else None
    setup_logging(driver_id, level=log_level, fmt="json" if screen is not None and log_format == "auto" else log_format)
    if screen is not None:
        # The screen owns the terminal: logs go to a file, warnings to the screen too.
        os.makedirs(state_dir, exist_ok=True)
        handler = logging.FileHandler(log_file or os.path.join(state_dir, "driver.log"))
        handler.setFormatter(logging.getLogger().handlers[0].formatter)
        logging.getLogger().handlers[:] = [handler, ScreenNotes(screen)]
    requests = None
    if requests_file is not None:
        try:
            with open(requests_file, encoding="utf-8") as fh:
                text = fh.read(MAX_REQUESTS_FILE_BYTES + 1)
            if len(text) > MAX_REQUESTS_FILE_BYTES:
                raise ValueError(
                    f"{requests_file}: more than {MAX_REQUESTS_FILE_BYTES} characters; "
                    "a requests file holds one short line per supply"
                )
            requests = parse_requests(text, source=requests_file)
        except (ValueError, OSError) as exc:  # UnicodeDecodeError is a ValueError
            click.echo(f"ev-driver: {exc}", err=True)
            sys.exit(EXIT_USAGE)
    credentials = credentials_for_cli(
        "ev-driver",
        insecure=insecure,
        path=credentials_path,
        read=lambda p: read_driver_credentials(p, driver_id),
        missing="Central only serves drivers with a key: give --credentials FILE (ev-central drivers add ID "
        "--credentials DIR)",
        plaintext="requests are not sealed, news not checked",
    )
    stay = not exit_when_done if exit_when_done is not None else (sys.stdin is not None and sys.stdin.isatty())
    driver = Driver(
        driver_id=driver_id,
        kafka=KafkaSettings(
            bootstrap=kafka,
            client_id=f"ev-driver-{driver_id}",
            prefix=topic_prefix,
            extra=kafka_extra(kafka_config, kafka_config_file),
        ),
        requests=requests,
        requests_source=os.path.abspath(requests_file) if requests_file else "",
        state_dir=state_dir,
        pause_s=pause_s,
        interactive=stay or requests is None,
        ready_file=ready_file,
        credentials=credentials,
        screen=screen,
    )

    async def run() -> int:
        return await driver.run(shutdown_event())

    try:
        sys.exit(asyncio.run(run()))
    except BusError as exc:
        click.echo(f"ev-driver: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    except StateFileError as exc:
        click.echo(
            f"ev-driver: {exc}; it holds the request in progress and the tickets shown: "
            "repair it, or move it aside to start afresh",
            err=True,
        )
        sys.exit(EXIT_DATAERR)


if __name__ == "__main__":
    main()
