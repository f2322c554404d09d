"""The weather in a launched network: the simulated provider and ``ev-weather`` started by
``evcharging up``, and ``evcharging weather [set LOCATION CELSIUS]``.

``up`` starts ``evweather-sim`` (state in ``RUN/weather/sim-state.json``, its key in
``RUN/secrets/weather/api.key``) and ``ev-weather`` pointed at it and at Central, with a
service token of its own under release 2 (``RUN/secrets/tokens/service.token``).
"""

from __future__ import annotations

import json
import os
import secrets as random_secrets
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import click

from ..files import makedirs, open_private
from ..httpcall import call_json
from .network import api_base, api_client, daemon_argv, db_path, is_secure, open_network
from .processes import Instance, Registry

__all__ = ["weather", "start_weather", "WEATHER_INTERVAL_S"]

#: As every launcher command has it (cli.DEFAULT_RUN_DIR; not imported: cli imports us).
DEFAULT_RUN_DIR = "evcharging-run"
_run_dir_option = click.option(
    "--run-dir", default=None, metavar="DIR", help="The network's run directory.  [default: evcharging-run]"
)

#: How often the demo's ev-weather asks (the daemon's default): a `weather set` shows within seconds.
WEATHER_INTERVAL_S = 2.0


def _dir(reg: Registry) -> str:
    return os.path.join(reg.run_dir, "weather")


def _key_path(reg: Registry) -> str:
    return os.path.join(reg.run_dir, "secrets", "weather", "api.key")


def _api_key(reg: Registry) -> str:
    """The simulated provider's key (made on first use, 0600): what ev-weather sends as appid."""
    path = _key_path(reg)
    if not os.path.exists(path):
        makedirs(os.path.dirname(path))
        with open_private(path) as fh:
            fh.write(random_secrets.token_hex(16) + "\n")
    with open(path, encoding="ascii") as fh:
        return fh.read().strip()


def start_weather(reg: Registry) -> None:
    """Start the simulated provider, then ev-weather against it and Central; wait for both."""
    base = _dir(reg)
    makedirs(base)
    _api_key(reg)
    sim_ready = os.path.join(base, "sim.ready.json")
    sim = Instance(
        name="weather-sim",
        role="weather-sim",
        id=None,
        log=os.path.join(base, "sim.log"),
        ready=sim_ready,
        argv=daemon_argv(
            "weather.simulator",
            "--port",
            "0",
            "--api-key-file",
            _key_path(reg),
            "--state",
            os.path.join(base, "sim-state.json"),
            "--ready-file",
            sim_ready,
        ),
    )
    reg.start(sim)
    url = reg.wait_ready(sim)["url"]
    sim.argv[sim.argv.index("--port") + 1] = url.rsplit(":", 1)[1]  # a restart keeps its port
    reg.meta["weather_sim"] = url
    reg.save()
    locations = os.path.join(base, "locations.txt")
    if not os.path.exists(locations):
        with open_private(locations) as fh:
            fh.write(
                "# More places for ev-weather to watch, one city per line (the CPs' own are always\n"
                "# watched); edit while it runs.\n"
            )
    ready = os.path.join(base, "weather.ready.json")
    args = [
        "--central",
        api_base(reg).removesuffix("/api/v1"),
        "--api-base",
        url,
        "--api-key-file",
        _key_path(reg),
        "--locations",
        locations,
        "--interval-s",
        str(WEATHER_INTERVAL_S),
        "--ready-file",
        ready,
    ]
    if is_secure(reg):
        from ..netsecrets import NetworkSecrets
        from ..tokens import TokenRole

        net = NetworkSecrets(reg.run_dir)
        net.token(db_path(reg), TokenRole.SERVICE)
        args += ["--token-file", str(net.dir / "tokens" / "service.token"), "--ca", net.ca_path]
    service = Instance(
        name="weather",
        role="weather",
        id=None,
        log=os.path.join(base, "weather.log"),
        ready=ready,
        argv=daemon_argv("weather", *args),
    )
    reg.start(service)
    reg.wait_ready(service)


def _sim_call(reg: Registry, method: str, path: str, body: Any = None) -> Any:
    url = reg.meta.get("weather_sim")
    if not url:
        raise click.ClickException("this network has no simulated weather provider (started before it existed?)")
    request = urllib.request.Request(
        url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {_api_key(reg)}", "Content-Type": "application/json"},
    )
    return call_json(
        request,
        peer=f"the weather simulator at {url}",
        error=click.ClickException,
        hint=" (`evcharging ps`; `evcharging start weather-sim`)",
    )


def _central_weather(reg: Registry) -> list[dict[str, Any]]:
    headers, tls = api_client(reg)
    request = urllib.request.Request(api_base(reg) + "/weather", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=tls) as resp:
            return list(json.load(resp))
    except (urllib.error.URLError, OSError, ValueError):
        return []


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@_run_dir_option
@click.pass_context
def weather(ctx: click.Context, run_dir: str | None) -> None:
    """The weather of a running network: list it, or set a location's temperature.

    \b
      evcharging weather                    every location: provider °C, Central's view, CPs
      evcharging weather set Madrid -3      freeze Madrid: Central stops its CPs ("weather")
      evcharging weather set Madrid 12      they resume (unless an operator stopped them)
      evcharging weather fail 503           the provider breaks (none: it works again)
    """
    ctx.obj = run_dir
    if ctx.invoked_subcommand is not None:
        return
    reg = open_network(run_dir or DEFAULT_RUN_DIR)
    sim = _sim_call(reg, "GET", "/admin/cities")
    central = {p["location"].casefold(): p for p in _central_weather(reg) if isinstance(p, dict)}
    click.echo(f"provider: {reg.meta.get('weather_sim')} (failure mode: {sim.get('fail', 'none')})")
    click.echo(f"{'LOCATION':<16} {'PROVIDER °C':>11} {'CENTRAL °C':>10}  {'STOPPED':<7} CPS")
    names = {name.casefold(): name for name in sim.get("cities", {})}
    names.update({k: p["location"] for k, p in central.items() if k not in names})
    for key, name in sorted(names.items()):
        told = central.get(key, {})
        provider_c = sim.get("cities", {}).get(name)
        central_c = told.get("celsius")
        click.echo(
            f"{name:<16} {'-' if provider_c is None else f'{provider_c:.1f}':>11} "
            f"{'-' if central_c is None else f'{central_c:.1f}':>10}  "
            f"{'yes' if told.get('stopped') else 'no':<7} {', '.join(told.get('cps', [])) or '-'}"
        )


@weather.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("location")
@click.argument("celsius", type=click.FloatRange(-100, 100))
@_run_dir_option
@click.pass_obj
def set_cmd(group_run_dir: str | None, location: str, celsius: float, run_dir: str | None) -> None:
    """Set LOCATION's temperature (°C) in the simulated provider; ev-weather tells Central."""
    reg = open_network(run_dir or group_run_dir or DEFAULT_RUN_DIR)
    path = "/admin/cities/" + urllib.parse.quote(location, safe="")
    answer = _sim_call(reg, "PUT", path, {"celsius": celsius})
    effect = "below 0: its CPs stop" if celsius < 0 else "0 or above: its CPs may charge"
    click.echo(f"{answer['city']}: {answer['celsius']:.1f} °C ({effect} once ev-weather reports it)")


@weather.command("fail")
@click.argument("mode", type=click.Choice(["none", "500", "503", "hang", "garbage", "huge"]))
@_run_dir_option
@click.pass_obj
def fail_cmd(group_run_dir: str | None, mode: str, run_dir: str | None) -> None:
    """Break the simulated provider (none: mend it); CPs then show "weather unknown"."""
    _sim_call(open_network(run_dir or group_run_dir or DEFAULT_RUN_DIR), "PUT", "/admin/fail", {"mode": mode})
    click.echo(f"weather provider failure mode: {mode}")
