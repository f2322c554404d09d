"""``evweather-sim``: a simulated OpenWeather current-weather API for tests and the demo.

Same shape as the real one (``GET /data/2.5/weather?q=CITY&appid=KEY&units=metric``):
401 for a wrong key, 404 for a city it does not know, the temperature in ``main.temp``
(°C with ``units=metric``, °F with ``imperial``, kelvin otherwise). Its admin endpoints,
which take the same key as ``Authorization: Bearer KEY``, set the weather and break it:

=========  ============================  ==========================================
``GET``    ``/admin/cities``             ``{"cities": {CITY: °C}, "fail": MODE}``
``PUT``    ``/admin/cities/{city}``      ``{"celsius": N}``: set (or add) a city
``DELETE`` ``/admin/cities/{city}``      forget it (the API answers 404 for it)
``PUT``    ``/admin/fail``               ``{"mode": M}``: ``none``, ``500``, ``503``,
                                         ``hang`` (never answers), ``garbage`` (not
                                         JSON), ``huge`` (a 1 MB answer)
=========  ============================  ==========================================

State lives in memory and, with ``--state FILE``, in that JSON file (a restarted
simulator keeps the temperatures it was given).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import os
import sys
from typing import Any

import click
from aiohttp import web

from evproto import __version__

from ..common import EXIT_UNAVAILABLE, setup_logging, shutdown_event
from ..files import StateFileError, keep_files_private, load_json, save_json_atomic, write_ready_file
from ..options import daemon_options
from ..webjson import BadRequest, HttpError, json_errors, json_response, read_json, start_http

__all__ = ["DEFAULT_CELSIUS", "FAIL_MODES", "WeatherSimulator", "make_app", "main"]

log = logging.getLogger("evproto.weather.sim")

#: The demo's cities (daemons/launcher/demodata.py) and a mild temperature for each.
DEFAULT_CELSIUS: dict[str, float] = {
    "Alicante": 18.0,
    "Valencia": 17.0,
    "Murcia": 19.0,
    "Elche": 18.5,
    "Benidorm": 19.5,
    "Madrid": 11.0,
    "Sevilla": 20.0,
    "Bilbao": 13.0,
    "Girona": 9.0,
    "Teruel": 4.0,
}
FAIL_MODES = ("none", "500", "503", "hang", "garbage", "huge")
MAX_CITIES = 10_000
#: Longest a "hang" answer waits.
HANG_MAX_S = 60.0


class Unauthorized(HttpError):
    http_status = 401


class NotFound(HttpError):
    http_status = 404


class WeatherSimulator:
    """The simulator's state: temperatures per city (case-insensitive) and a failure mode."""

    def __init__(self, api_key: str, *, state_file: str | None = None) -> None:
        self.api_key = api_key
        self.state_file = state_file
        self.cities: dict[str, tuple[str, float]] = {k.casefold(): (k, v) for k, v in DEFAULT_CELSIUS.items()}
        self.fail = "none"
        #: What a "hang" answer waits for: set when the mode changes (or the server stops).
        self.released = asyncio.Event()
        if state_file and os.path.exists(state_file):
            saved = load_json(state_file) or {}
            self.cities = {k.casefold(): (k, float(v)) for k, v in dict(saved.get("cities", {})).items()}
            self.fail = saved.get("fail", "none") if saved.get("fail") in FAIL_MODES else "none"

    def key_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.api_key.encode())

    def set(self, city: str, celsius: float) -> None:
        if city.casefold() not in self.cities and len(self.cities) >= MAX_CITIES:
            raise BadRequest(f"at most {MAX_CITIES} cities")
        self.cities[city.casefold()] = (city, celsius)
        self._save()

    def remove(self, city: str) -> bool:
        found = self.cities.pop(city.casefold(), None) is not None
        self._save()
        return found

    def set_fail(self, mode: str) -> None:
        self.fail = mode
        self.released.set()
        if mode == "hang":
            self.released = asyncio.Event()
        self._save()

    def snapshot(self) -> dict[str, Any]:
        return {"cities": {name: c for name, c in sorted(self.cities.values())}, "fail": self.fail}

    def _save(self) -> None:
        if self.state_file:
            save_json_atomic(self.state_file, self.snapshot())


SIM = web.AppKey("evproto_weather_sim", WeatherSimulator)


def _answer(city: str, celsius: float, units: str) -> dict[str, Any]:
    temp = celsius if units == "metric" else celsius * 9 / 5 + 32 if units == "imperial" else celsius + 273.15
    return {
        "weather": [{"main": "Clear" if celsius >= 0 else "Snow", "description": "simulated"}],
        "main": {"temp": round(temp, 2), "feels_like": round(temp, 2), "humidity": 50},
        "name": city,
        "cod": 200,
    }


async def _weather(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM]
    if sim.fail == "hang":
        # Until the mode changes, the server stops or HANG_MAX_S pass: a client that gave up
        # does not cancel us, so a hang must end by itself.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(sim.released.wait(), HANG_MAX_S)
        return json_response({"cod": 503, "message": "simulated hang"}, status=503)
    if sim.fail in ("500", "503"):
        return json_response({"cod": sim.fail, "message": "simulated failure"}, status=int(sim.fail))
    if not sim.key_ok(request.query.get("appid", "")):
        return json_response({"cod": 401, "message": "Invalid API key."}, status=401)
    city = request.query.get("q", "").split(",", 1)[0].strip()
    found = sim.cities.get(city.casefold())
    if found is None:
        return json_response({"cod": "404", "message": "city not found"}, status=404)
    if sim.fail == "garbage":
        return web.Response(text="<html>bad gateway, but 200</html>", content_type="text/html")
    if sim.fail == "huge":
        return web.Response(body=b"{" + b" " * (1 << 20) + b"}", content_type="application/json")
    name, celsius = found
    return json_response(_answer(name, celsius, request.query.get("units", "standard")))


def _admin(request: web.Request) -> WeatherSimulator:
    sim = request.app[SIM]
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not sim.key_ok(given.strip()):
        raise Unauthorized("admin endpoints need Authorization: Bearer API_KEY")
    return sim


def _city(request: web.Request) -> str:
    city = request.match_info["city"].strip()
    if not city or len(city) > 64 or not city.isprintable():
        raise BadRequest("a city is 1-64 printable characters")
    return city


async def _list(request: web.Request) -> web.Response:
    return json_response(_admin(request).snapshot())


async def _set(request: web.Request) -> web.Response:
    sim = _admin(request)
    city = _city(request)
    celsius = (await read_json(request)).get("celsius")
    if isinstance(celsius, bool) or not isinstance(celsius, (int, float)) or not math.isfinite(celsius):
        raise BadRequest('the body must be {"celsius": number}')
    if not -100 <= celsius <= 100:
        raise BadRequest("celsius must be between -100 and 100")
    sim.set(city, float(celsius))
    log.info("%s is now %.1f °C", city, celsius)
    return json_response({"ok": True, "city": city, "celsius": float(celsius)})


async def _remove(request: web.Request) -> web.Response:
    sim = _admin(request)
    city = _city(request)
    if not sim.remove(city):
        raise NotFound(f"{city!r} is not a city here")
    return json_response({"ok": True, "removed": city})


async def _fail(request: web.Request) -> web.Response:
    sim = _admin(request)
    mode = (await read_json(request)).get("mode")
    if mode not in FAIL_MODES:
        raise BadRequest(f"mode must be one of {', '.join(FAIL_MODES)}")
    sim.set_fail(mode)
    log.info("failure mode: %s", mode)
    return json_response({"ok": True, "fail": mode})


def make_app(sim: WeatherSimulator) -> web.Application:
    """The simulator's aiohttp application."""
    app = web.Application(middlewares=[json_errors(log)], client_max_size=64 * 1024)
    app[SIM] = sim

    async def release(app: web.Application) -> None:
        app[SIM].released.set()

    app.on_shutdown.append(release)
    app.router.add_get("/data/2.5/weather", _weather)
    app.router.add_get("/admin/cities", _list)
    app.router.add_put("/admin/cities/{city}", _set)
    app.router.add_delete("/admin/cities/{city}", _remove)
    app.router.add_put("/admin/fail", _fail)
    return app


async def _serve(sim: WeatherSimulator, host: str, port: int, ready_file: str | None) -> int:
    runner, actual = await start_http(make_app(sim), host, port, log=log)
    url = f"http://{host}:{actual}"
    log.info("simulated weather provider on %s (%d cities, failure mode %s)", url, len(sim.cities), sim.fail)
    write_ready_file(ready_file, role="weather-sim", url=url)
    try:
        await shutdown_event().wait()
    finally:
        await runner.cleanup()
    return 0


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8090, show_default=True, help="HTTP port (0: a free one)."
)
@click.option(
    "--api-key",
    envvar="OPENWEATHER_API_KEY",
    default=None,
    metavar="KEY",
    help="The key clients must send as appid (and the admin endpoints as a Bearer token). [env OPENWEATHER_API_KEY]",
)
@click.option(
    "--api-key-file",
    envvar="EVPROTO_WEATHER_API_KEY_FILE",
    default=None,
    metavar="FILE",
    help="Read the key from this file instead (kept out of `ps`). [env EVPROTO_WEATHER_API_KEY_FILE]",
)
@click.option(
    "--state", "state_file", default=None, metavar="FILE", help="Keep the cities and the mode in this JSON file."
)
@daemon_options("Write a JSON file with the URL once up.")
@click.version_option(__version__, prog_name="evweather-sim")
def main(
    host: str,
    port: int,
    api_key: str | None,
    api_key_file: str | None,
    state_file: str | None,
    ready_file: str | None,
    log_format: str,
    log_level: str,
) -> None:
    """A simulated OpenWeather provider (current weather) for tests and the demo.

    \b
      evweather-sim --api-key demo --port 8090
      curl 'http://127.0.0.1:8090/data/2.5/weather?q=Madrid&appid=demo&units=metric'
      curl -X PUT -H 'Authorization: Bearer demo' -H 'Content-Type: application/json' \\
           -d '{"celsius": -3}' http://127.0.0.1:8090/admin/cities/Madrid
    """
    from .keys import read_secret_option

    keep_files_private()
    setup_logging("weather-sim", level=log_level, fmt=log_format)
    key = read_secret_option("evweather-sim", "--api-key", api_key, api_key_file)
    try:
        sim = WeatherSimulator(key, state_file=state_file)
    except (StateFileError, ValueError, TypeError) as exc:
        raise click.ClickException(f"--state {state_file}: {exc}") from None
    try:
        sys.exit(asyncio.run(_serve(sim, host, port, ready_file)))
    except OSError as exc:
        click.echo(f"evweather-sim: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)


if __name__ == "__main__":
    main()
