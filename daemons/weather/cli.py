"""``ev-weather`` / ``EV_W``: the weather service's command line."""

from __future__ import annotations

import asyncio
import sys
from urllib.parse import urlsplit

import click

from evproto import __version__

from ..common import setup_logging, shutdown_event
from ..files import keep_files_private
from ..options import daemon_options
from .keys import read_secret_option
from .provider import DEFAULT_API_BASE

__all__ = ["main"]


def _http_url(value: str, option: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.username:
        raise click.UsageError(f"{option} must be an http(s)://HOST[:PORT] URL without credentials or a query")
    return value.rstrip("/")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--central",
    envvar="EVPROTO_WEATHER_CENTRAL",
    required=True,
    metavar="URL",
    help="Central's HTTP base, e.g. https://127.0.0.1:8000 (the API is under /api/v1). [env EVPROTO_WEATHER_CENTRAL]",
)
@click.option(
    "--token",
    envvar="EVPROTO_WEATHER_TOKEN",
    default=None,
    metavar="TOKEN",
    help="Central's API token for this service (role service: ev-central tokens create --role service). "
    "[env EVPROTO_WEATHER_TOKEN]",
)
@click.option(
    "--token-file",
    envvar="EVPROTO_WEATHER_TOKEN_FILE",
    default=None,
    metavar="FILE",
    help="Read the token from this file instead (out of `ps`). [env EVPROTO_WEATHER_TOKEN_FILE]",
)
@click.option(
    "--ca",
    envvar="EVPROTO_WEATHER_CA",
    default=None,
    metavar="PEM",
    help="The CA of Central's certificate (the network's ca.pem; default: the system's CAs). [env EVPROTO_WEATHER_CA]",
)
@click.option(
    "--api-base",
    envvar="EVPROTO_WEATHER_API_BASE",
    default=DEFAULT_API_BASE,
    show_default=True,
    metavar="URL",
    help="An OpenWeather-compatible API (evweather-sim's URL for the simulator). [env EVPROTO_WEATHER_API_BASE]",
)
@click.option(
    "--api-key",
    envvar="OPENWEATHER_API_KEY",
    default=None,
    metavar="KEY",
    help="The provider's API key (appid); never logged. [env OPENWEATHER_API_KEY]",
)
@click.option(
    "--api-key-file",
    envvar="EVPROTO_WEATHER_API_KEY_FILE",
    default=None,
    metavar="FILE",
    help="Read the key from this file instead (out of `ps`). [env EVPROTO_WEATHER_API_KEY_FILE]",
)
@click.option(
    "--locations",
    "locations_file",
    envvar="EVPROTO_WEATHER_LOCATIONS",
    default=None,
    metavar="FILE",
    help="More locations: one city per line, # comments; re-read when it changes. Central's CP "
    "locations are always watched. [env EVPROTO_WEATHER_LOCATIONS]",
)
@click.option(
    "--interval-s",
    envvar="EVPROTO_WEATHER_INTERVAL_S",
    type=click.FloatRange(min=0.1, max=86_400),
    default=5.0,
    show_default=True,
    help="Seconds between two rounds of questions. [env EVPROTO_WEATHER_INTERVAL_S]",
)
@click.option(
    "--reassert-s",
    envvar="EVPROTO_WEATHER_REASSERT_S",
    type=click.FloatRange(min=0.1, max=86_400),
    default=30.0,
    show_default=True,
    help="Tell Central an unchanged temperature again after this long (keep it below Central's "
    "--weather-stale-s). [env EVPROTO_WEATHER_REASSERT_S]",
)
@click.option(
    "--timeout-s",
    type=click.FloatRange(min=0.1, max=120),
    default=5.0,
    show_default=True,
    help="Longest wait for one answer (provider or Central).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="Questions to the provider in flight at once.",
)
@daemon_options("Write a JSON file once started.")
@click.version_option(__version__, prog_name="ev-weather")
def main(
    central: str,
    token: str | None,
    token_file: str | None,
    ca: str | None,
    api_base: str,
    api_key: str | None,
    api_key_file: str | None,
    locations_file: str | None,
    interval_s: float,
    reassert_s: float,
    timeout_s: float,
    concurrency: int,
    ready_file: str | None,
    log_format: str,
    log_level: str,
) -> None:
    """The weather service (EV_W): stops the CPs where it freezes, through Central.

    Every --interval-s it asks the provider for the temperature at every location
    (Central's CPs' and the --locations file's) and tells Central, which stops the CPs
    of a location below 0 °C and resumes them at 0 °C or above (unless an operator
    stopped them too). A provider that fails is reported as "weather unknown": it never
    stops a CP. See docs/weather.md.

    \b
      ev-weather --central https://127.0.0.1:8000 --ca secrets/pki/ca.pem \\
                 --token-file service.token --api-key-file openweather.key --locations cities.txt
    """
    keep_files_private()
    setup_logging("weather", level=log_level, fmt=log_format)
    central = _http_url(central, "--central")
    api_base = _http_url(api_base, "--api-base")
    key = read_secret_option("ev-weather", "--api-key", api_key, api_key_file)
    service_token = read_secret_option("ev-weather", "--token", token, token_file, required=False)
    if central.startswith("https://") and not service_token:
        raise click.UsageError("ev-weather: Central over HTTPS needs --token (or --token-file): a service token")
    from .app import WeatherOptions, WeatherService

    opts = WeatherOptions(
        central=central,
        api_key=key,
        token=service_token,
        api_base=api_base,
        locations_file=locations_file,
        interval_s=interval_s,
        reassert_s=reassert_s,
        concurrency=concurrency,
        timeout_s=timeout_s,
        central_ca=ca,
        ready_file=ready_file,
    )

    async def run() -> int:
        return await WeatherService(opts).run(shutdown_event())

    sys.exit(asyncio.run(run()))


if __name__ == "__main__":
    main()
