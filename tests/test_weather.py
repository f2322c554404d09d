"""The weather service (EV_W): the provider client against the simulated provider over real
HTTP, Central's weather endpoints and their roles, the service's reporting, and the whole
chain with real processes (docs/weather.md)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from netharness import Network, wait_for

from evproto.daemons.central.http_api import make_app as central_app
from evproto.daemons.central.weather import WeatherDesk
from evproto.daemons.launcher.demodata import LOCATIONS
from evproto.daemons.tokens import TokenRole, TokenStore
from evproto.daemons.weather.app import CentralApi, Reported, WeatherOptions, WeatherService, needs_report
from evproto.daemons.weather.locations import LocationsFile, parse_locations
from evproto.daemons.weather.provider import ProviderError, ProviderProblem, WeatherProvider, redact
from evproto.daemons.weather.simulator import DEFAULT_CELSIUS, WeatherSimulator
from evproto.daemons.weather.simulator import make_app as sim_app
from evproto.daemons.webjson import start_http
from evproto.domain.central import CentralCore, Rules

KEY = "k3y-0f-the-test-4242"
BIN = os.path.dirname(sys.executable)


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner, port = await start_http(app, "127.0.0.1", 0, log=logging.getLogger("test"))
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def sim() -> AsyncIterator[tuple[WeatherSimulator, str]]:
    state = WeatherSimulator(KEY)
    runner, url = await serve(sim_app(state))
    yield state, url
    await runner.cleanup()


async def problem_of(url: str, city: str, *, key: str = KEY, timeout_s: float = 5.0) -> ProviderProblem:
    async with WeatherProvider(url, key, timeout_s=timeout_s) as provider:
        with pytest.raises(ProviderError) as caught:
            await provider.celsius(city)
    assert key not in str(caught.value)
    return caught.value.problem


# -- the provider client against the simulator -------------------------------------------------


def test_the_simulator_knows_every_demo_city() -> None:
    assert set(LOCATIONS) <= set(DEFAULT_CELSIUS)


async def test_the_provider_reads_main_temp_in_celsius(sim) -> None:
    state, url = sim
    async with WeatherProvider(url, KEY) as provider:
        assert await provider.celsius("Madrid") == DEFAULT_CELSIUS["Madrid"]
        state.set("Madrid", -3.5)
        assert await provider.celsius("madrid") == -3.5  # cities are case-insensitive, as OpenWeather's


async def test_the_provider_tells_each_failure_apart(sim) -> None:
    state, url = sim
    assert await problem_of(url, "Madrid", key="wrong-key") is ProviderProblem.WRONG_KEY
    assert await problem_of(url, "Atlantis") is ProviderProblem.UNKNOWN_CITY
    for mode, problem in (("500", ProviderProblem.UNAVAILABLE), ("503", ProviderProblem.UNAVAILABLE)):
        state.set_fail(mode)
        assert await problem_of(url, "Madrid") is problem
    state.set_fail("garbage")
    assert await problem_of(url, "Madrid") is ProviderProblem.BAD_ANSWER
    state.set_fail("huge")
    assert await problem_of(url, "Madrid") is ProviderProblem.BAD_ANSWER
    state.set_fail("hang")
    assert await problem_of(url, "Madrid", timeout_s=0.3) is ProviderProblem.UNAVAILABLE
    state.set_fail("none")
    assert await problem_of("http://127.0.0.1:9", "Madrid") is ProviderProblem.UNAVAILABLE  # nothing listens


async def test_an_answer_without_a_plausible_temperature_is_a_bad_answer(sim) -> None:
    bodies = [{"main": {}}, {"main": {"temp": "cold"}}, {"main": {"temp": True}}, {"main": {"temp": 1e9}}, [1]]
    app = web.Application()

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(bodies[int(request.query["q"])])

    app.router.add_get("/data/2.5/weather", answer)
    runner, url = await serve(app)
    try:
        for n in range(len(bodies)):
            assert await problem_of(url, str(n)) is ProviderProblem.BAD_ANSWER
    finally:
        await runner.cleanup()


def test_redact_hides_the_key_and_leaves_other_text_alone() -> None:
    assert redact(f"GET /x?appid={KEY}&q=a", KEY) == "GET /x?appid=***&q=a"
    assert redact("nothing", "") == "nothing"


# -- the locations file --------------------------------------------------------------------------


def test_locations_file_lines_comments_and_bad_lines() -> None:
    text = "# cities\nMadrid\n  teruel  # cold\n\nMADRID\n" + "x" * 80 + "\nbad\x07line\nGirona\n"
    cities, problems = parse_locations(text, "f.txt")
    assert cities == ["Madrid", "teruel", "Girona"]
    assert [p.split(":")[1] for p in problems] == ["6", "7"]


def test_the_locations_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "cities.txt"
    watched = LocationsFile(str(path))
    assert watched.refresh() and watched.locations == []  # missing: said once
    assert watched.refresh() is None
    path.write_text("Madrid\n")
    assert watched.refresh() == [] and watched.locations == ["Madrid"]
    assert watched.refresh() is None
    path.write_text("Madrid\nBilbao\n")
    assert watched.refresh() == [] and watched.locations == ["Madrid", "Bilbao"]
    path.unlink()
    assert watched.refresh() and watched.locations == ["Madrid", "Bilbao"]  # kept while it is gone


# -- when the service reports --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "celsius", "now", "expected"),
    [
        (None, 5.0, 0.0, True),  # never told
        (Reported(5.0, 0.0), 5.4, 1.0, False),  # nothing worth saying
        (Reported(5.0, 0.0), 6.0, 1.0, True),  # moved a degree
        (Reported(0.5, 0.0), -0.1, 1.0, True),  # crossed 0
        (Reported(-1.0, 0.0), 0.0, 1.0, True),  # 0 is "0 or above"
        (Reported(5.0, 0.0), None, 1.0, True),  # now unknown
        (Reported(None, 0.0), None, 1.0, False),
        (Reported(5.0, 0.0), 5.0, 30.0, True),  # re-asserted
    ],
)
def test_needs_report(last: Reported | None, celsius: float | None, now: float, expected: bool) -> None:
    assert needs_report(last, celsius, now, reassert_s=30.0) is expected


def test_a_central_that_forgot_the_location_is_told_at_once() -> None:
    assert needs_report(Reported(5.0, 0.0), 5.0, 1.0, reassert_s=30.0, central_knows=False)


def test_a_new_cp_at_a_location_hears_the_weather_at_once() -> None:
    last = Reported(-2.0, 0.0, ("CP1",))
    assert not needs_report(last, -2.0, 1.0, reassert_s=30.0, cps=("CP1",))
    assert needs_report(last, -2.0, 1.0, reassert_s=30.0, cps=("CP1", "CP2"))


class FakeCentral:
    """Central's weather endpoints, recording what the service posts."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.places = [{"location": "Teruel", "celsius": None, "at": None, "cps": ["CP9"], "stopped": False}]
        self.app = web.Application()
        self.app.router.add_get("/api/v1/weather", self._get)
        self.app.router.add_post("/api/v1/weather", self._post)

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(self.places)

    async def _post(self, request: web.Request) -> web.Response:
        self.posts.append(await request.json())
        # As Central does: a reported location is listed from then on, with its time.
        place = {"location": self.posts[-1]["location"], "celsius": self.posts[-1]["celsius"], "at": "now"}
        self.places = [p for p in self.places if p["location"] != place["location"]] + [place]
        return web.json_response({"ok": True, "cps": ["CP9"] if self.posts[-1]["location"] == "Teruel" else []})


async def test_a_cycle_reports_file_and_central_locations_and_never_logs_the_key(sim, tmp_path, caplog) -> None:
    state, url = sim
    central = FakeCentral()
    runner, central_url = await serve(central.app)
    cities = tmp_path / "cities.txt"
    cities.write_text("Madrid\nAtlantis\n")
    caplog.set_level(logging.DEBUG)
    service = WeatherService(
        WeatherOptions(central=central_url, api_key=KEY, api_base=url, locations_file=str(cities), reassert_s=3600)
    )
    try:
        async with WeatherProvider(url, KEY) as provider, aiohttp.ClientSession() as session:
            api = CentralApi(session, central_url, "", None)
            state.set("Teruel", -2.0)
            await service.cycle(provider, api)
            assert sorted((p["location"], p["celsius"]) for p in central.posts) == [
                ("Atlantis", None),
                ("Madrid", DEFAULT_CELSIUS["Madrid"]),
                ("Teruel", -2.0),
            ]
            assert "Teruel: -2.0 °C → below 0: Central stopped CP9" in caplog.text
            central.posts.clear()
            await service.cycle(provider, api)
            assert central.posts == []  # nothing changed: nothing said
            state.set_fail("503")
            await service.cycle(provider, api)
            assert sorted(p["location"] for p in central.posts if p["celsius"] is None) == ["Madrid", "Teruel"]
            state.set_fail("none")
            central.posts.clear()
            await service.cycle(provider, api)
            assert sorted(p["location"] for p in central.posts) == ["Madrid", "Teruel"]
        async with WeatherProvider(url, "wrong-" + KEY) as provider, aiohttp.ClientSession() as session:
            # A wrong key is said (and what to check) but the key itself never is.
            other = WeatherService(WeatherOptions(central=central_url, api_key="wrong-" + KEY, api_base=url))
            await other.cycle(provider, CentralApi(session, central_url, "", None))
        assert "wrong API key" in caplog.text and "check --api-key" in caplog.text
        assert KEY not in caplog.text
    finally:
        await runner.cleanup()


# -- Central's endpoints: validation and roles ---------------------------------------------------


class WeatherBackend:
    def __init__(self) -> None:
        self.reports: list[tuple[str, float | None, str]] = []

    async def weather(self, location: str, celsius: float | None, *, actor: str, source: str) -> list[str]:
        self.reports.append((location, celsius, actor))
        return ["CP001"]

    def weather_view(self) -> list[dict[str, Any]]:
        return [{"location": "Madrid", "celsius": None, "at": None, "cps": ["CP001"], "stopped": False}]


@pytest.fixture
async def central_api(tmp_path) -> AsyncIterator[tuple[str, WeatherBackend, dict[str, str]]]:
    store = TokenStore(str(tmp_path / "tokens.db"))
    tokens = {role.value: store.create(role, f"t-{role.value}")[0] for role in TokenRole}
    backend = WeatherBackend()
    runner, url = await serve(central_app(backend, tokens=store))  # type: ignore[arg-type]
    yield url, backend, tokens
    await runner.cleanup()
    store.close()


async def call(url: str, method: str, token: str | None, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url + "/api/v1/weather", data=data, headers=headers) as resp:
            return resp.status, await resp.json()


async def test_only_the_service_and_admin_may_report_weather(central_api) -> None:
    url, backend, tokens = central_api
    body = {"location": "Madrid", "celsius": -3}
    assert await call(url, "POST", tokens["service"], body) == (200, {"ok": True, "cps": ["CP001"]})
    assert (await call(url, "POST", tokens["admin"], {"location": "Madrid", "celsius": None}))[0] == 200
    for role in ("viewer", "operator", "installer"):
        assert (await call(url, "POST", tokens[role], body))[0] == 403, role
    assert (await call(url, "POST", None, body))[0] == 401
    assert [(r[0], r[1], r[2].split(":")[0]) for r in backend.reports] == [
        ("Madrid", -3, "service"),
        ("Madrid", None, "admin"),
    ]


async def test_people_who_read_and_the_service_may_list_the_weather(central_api) -> None:
    url, _, tokens = central_api
    for role in ("viewer", "operator", "admin", "service"):
        status, places = await call(url, "GET", tokens[role])
        assert status == 200 and places[0]["location"] == "Madrid", role
    assert (await call(url, "GET", tokens["installer"]))[0] == 403
    async with aiohttp.ClientSession() as session:  # the service role reads the weather, nothing else
        headers = {"Authorization": f"Bearer {tokens['service']}"}
        async with session.get(url + "/api/v1/cps", headers=headers) as resp:
            assert resp.status == 403


async def test_under_insecure_anyone_may_report_and_read_the_weather() -> None:
    backend = WeatherBackend()
    runner, url = await serve(central_app(backend))  # type: ignore[arg-type]
    try:
        answer = await call(url, "POST", None, {"location": "Teruel", "celsius": -0.5})
        assert answer == (200, {"ok": True, "cps": ["CP001"]})
        assert (await call(url, "GET", None))[0] == 200
    finally:
        await runner.cleanup()
    assert backend.reports == [("Teruel", -0.5, "anonymous")]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"location": "Madrid"}',  # celsius missing
        b'{"location": "Madrid", "celsius": "cold"}',
        b'{"location": "Madrid", "celsius": true}',
        b'{"location": "Madrid", "celsius": 1000}',
        b'{"location": "Madrid", "celsius": NaN}',
        b'{"location": "Madrid", "celsius": Infinity}',
        b'{"location": "", "celsius": 1}',
        b'{"location": "   ", "celsius": 1}',
        b'{"location": 7, "celsius": 1}',
        b'{"location": "Ma\\u001bdrid", "celsius": 1}',
        b'{"location": "' + b"x" * 65 + b'", "celsius": 1}',
        b'{"location": "Madrid", "celsius": 1, "extra": 1}',
        b'["Madrid", 1]',
        b"not json",
    ],
)
async def test_a_bad_weather_report_is_refused_with_400(central_api, raw: bytes) -> None:
    url, backend, tokens = central_api
    status, answer = await call(url, "POST", tokens["service"], raw=raw)
    assert status == 400 and answer["error"]
    assert backend.reports == []


# -- programs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("program", ["ev-weather", "EV_W", "evweather-sim"])
def test_the_programs_answer_help_and_version(program: str) -> None:
    for flag in ("--help", "--version"):
        done = subprocess.run([os.path.join(BIN, program), flag], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout, done.stderr


def test_a_missing_key_is_a_usage_error_that_shows_no_secret(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENWEATHER_API_KEY"}
    done = subprocess.run(
        [os.path.join(BIN, "ev-weather"), "--central", "http://127.0.0.1:9"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2 and "--api-key" in done.stderr
    done = subprocess.run(
        [os.path.join(BIN, "ev-weather"), "--central", "https://127.0.0.1:9", "--api-key", KEY],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2 and "--token" in done.stderr and KEY not in done.stderr


# -- end to end: real processes ------------------------------------------------------------------


def sim_admin(url: str, method: str, path: str, body: Any) -> Any:
    import urllib.request

    request = urllib.request.Request(
        url + path,
        method=method,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.load(resp)


def cps(net: Network) -> dict[str, tuple[str, list[str]]]:
    return {c["id"]: (c["state"], c["alerts"]) for c in net.get("/api/v1/cps")}


def test_weather_stops_and_resumes_cps_end_to_end(secure_net: Network, tmp_path: Path) -> None:
    """Real Central (TLS, tokens), monitors, engines, the simulator and ev-weather."""
    net = secure_net
    central = net.start_central(extra=("--weather-stale-s", "5"))  # reports come every 0.5 s
    for cp_id, city in (("CP1", "Madrid"), ("CP2", "Madrid"), ("CP3", "Teruel")):
        net.start_cp(cp_id, location=city)
    for cp_id in ("CP1", "CP2", "CP3"):
        net.wait_state(cp_id, "ACTIVATED")
    key_file = tmp_path / "api.key"
    key_file.write_text(KEY + "\n")
    token_file = tmp_path / "service.token"
    token_file.write_text(net.make_token("service", "weather") + "\n")
    sim = net.spawn("weather-sim", "weather.simulator", "--port", "0", "--api-key-file", str(key_file))
    sim_url = sim.ready["url"]
    cities = tmp_path / "cities.txt"
    cities.write_text("# watched besides the CPs' locations\nBilbao\n")
    weather_args = (
        "--central",
        net.http,
        "--ca",
        str(net.ca.cert_path),
        "--token-file",
        str(token_file),
        "--api-base",
        sim_url,
        "--api-key-file",
        str(key_file),
        "--locations",
        str(cities),
        "--interval-s",
        "0.2",
        "--reassert-s",
        "0.5",
    )
    weather = net.spawn("weather", "weather", *weather_args)

    def places() -> dict[str, Any]:
        return {p["location"]: p for p in net.get("/api/v1/weather")}

    wait_for(lambda: {"Madrid", "Teruel", "Bilbao"} <= {k for k, p in places().items() if p["at"]}, "first reports")
    assert places()["Madrid"]["cps"] == ["CP1", "CP2"] and places()["Bilbao"]["celsius"] == DEFAULT_CELSIUS["Bilbao"]

    # Below 0: Madrid's CPs stop for the weather, Teruel's does not.
    sim_admin(sim_url, "PUT", "/admin/cities/Madrid", {"celsius": -3})
    wait_for(lambda: cps(net)["CP1"] == ("STOPPED", ["weather"]) and cps(net)["CP2"][0] == "STOPPED", "weather stop")
    assert cps(net)["CP3"] == ("ACTIVATED", []) and places()["Madrid"]["stopped"] is True
    assert net.log_has(weather, "Madrid: -3.0 °C → below 0: Central stopped CP1, CP2")

    # An operator stops CP1 too: warm again, CP2 resumes, CP1 waits for its operator.
    assert net.post("/api/v1/cps/CP1/stop")[0] == 200
    sim_admin(sim_url, "PUT", "/admin/cities/Madrid", {"celsius": 4})
    wait_for(lambda: cps(net)["CP2"] == ("ACTIVATED", []), "CP2 to resume")
    assert cps(net)["CP1"] == ("STOPPED", [])
    assert net.post("/api/v1/cps/CP1/resume")[0] == 200
    net.wait_state("CP1", "ACTIVATED")

    # The provider goes down: nothing stops, every CP shows "weather unknown".
    sim_admin(sim_url, "PUT", "/admin/fail", {"mode": "503"})
    wait_for(lambda: all(c == ("ACTIVATED", ["weather_unknown"]) for c in cps(net).values()), "weather unknown")
    sim_admin(sim_url, "PUT", "/admin/fail", {"mode": "none"})
    wait_for(lambda: all(c == ("ACTIVATED", []) for c in cps(net).values()), "the provider back")

    # The locations file is edited while it runs.
    cities.write_text("Bilbao\nGirona\n")
    wait_for(lambda: places().get("Girona", {}).get("celsius") == DEFAULT_CELSIUS["Girona"], "Girona reported")

    # Central restarts (a crash): it keeps the weather stop it stored and hears the weather again.
    sim_admin(sim_url, "PUT", "/admin/cities/Teruel", {"celsius": -1})
    wait_for(lambda: cps(net)["CP3"] == ("STOPPED", ["weather"]), "Teruel frozen")
    net.kill(central, signal.SIGKILL)
    net.start_central(extra=("--weather-stale-s", "5"), same_ports=True)
    wait_for(lambda: places()["Teruel"]["celsius"] == -1.0, "a restarted Central told again")
    wait_for(lambda: cps(net)["CP3"] == ("STOPPED", ["weather"]), "CP3 back, still stopped for the weather")
    sim_admin(sim_url, "PUT", "/admin/cities/Teruel", {"celsius": 2})
    wait_for(lambda: cps(net)["CP3"] == ("ACTIVATED", []), "Teruel warm again")

    # ev-weather dies: after --weather-stale-s the CPs show weather unknown and keep running.
    net.kill(weather, signal.SIGKILL)
    wait_for(lambda: all(c == ("ACTIVATED", ["weather_unknown"]) for c in cps(net).values()), "stale reports")
    assert places()["Madrid"]["celsius"] is None
    token = token_file.read_text().strip()
    for proc in (weather, sim):
        with open(proc.log, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        assert KEY not in text and token not in text, proc.name


@pytest.mark.network  # real daemons, started as programs
def test_the_launcher_runs_the_weather_and_sets_it(tmp_path: Path) -> None:
    """`evcharging up` starts the simulated provider and ev-weather (a service token of its
    own); `evcharging weather set` freezes a city and its CP stops; kill and start work."""
    from netharness import launcher_api

    ev = os.path.join(BIN, "evcharging")
    run_dir = str(tmp_path / "run")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ev, *args, "--run-dir", run_dir], capture_output=True, text=True, timeout=120)

    up = run("up", "--cps", "2", "--drivers", "0", "--http-port", "0", "--detach")
    assert up.returncode == 0, up.stderr
    try:
        rows = {r["name"]: r for r in json.loads(run("ps", "--json").stdout)}
        assert rows["weather-sim"]["alive"] and rows["weather"]["alive"]

        def cp001() -> tuple[str, list[str]]:
            cp = next(c for c in launcher_api(run_dir, "/api/v1/cps") if c["id"] == "CP001")
            return cp["state"], cp["alerts"]

        said = run("weather", "set", "Alicante", "-5")  # CP001 stands in the first demo city
        assert said.returncode == 0 and "-5.0 °C" in said.stdout, said.stderr
        wait_for(lambda: cp001() == ("STOPPED", ["weather"]), "CP001 stopped for the weather")
        listing = run("weather").stdout
        assert any(line.split()[:4] == ["Alicante", "-5.0", "-5.0", "yes"] for line in listing.splitlines()), listing
        assert run("kill", "weather").returncode == 0
        assert run("start", "weather").returncode == 0
        assert run("weather", "set", "Alicante", "7").returncode == 0
        wait_for(lambda: cp001() == ("ACTIVATED", []), "CP001 to resume")
        with open(os.path.join(run_dir, "weather", "weather.log"), encoding="utf-8") as fh:
            log_text = fh.read()
        with open(os.path.join(run_dir, "secrets", "weather", "api.key"), encoding="ascii") as fh:
            assert fh.read().strip() not in log_text
        with open(os.path.join(run_dir, "secrets", "tokens", "service.token"), encoding="ascii") as fh:
            assert fh.read().strip() not in log_text
    finally:
        run("down")


# -- Central's weather desk (in memory: the core's rules, the reports, their age) -----------------


class DeskHost(WeatherDesk):
    """What WeatherDesk needs of Central: a real core; effects applied nowhere, audit
    entries and notes recorded."""

    def __init__(self) -> None:
        self.core = CentralCore(drivers=set(), rules=Rules())
        for cp_id, city in (("CP1", "Madrid"), ("CP2", "madrid"), ("CP3", "Teruel")):
            assert self.core.hello(cp_id, city, 0.3, 1)[0] is None
            self.core.monitor_connected(cp_id, 1)
        self.opts = SimpleNamespace(weather_stale_s=60.0)
        self.weather_reports = {}
        self.audited: list[tuple[Any, ...]] = []
        self.notes: list[str] = []

    def _apply(self, fx: list[Any]) -> None:
        pass

    def _audit(self, *args: Any, **details: Any) -> None:
        self.audited.append((*args, details))

    def _note(self, text: str, level: str = "info", key: str | None = None) -> None:
        self.notes.append(text)


def test_the_desk_lists_cp_locations_and_reported_ones_and_audits_each_report() -> None:
    desk = DeskHost()
    assert desk.report_weather("MADRID", -2, actor="service:w", source="10.0.0.1") == ["CP1", "CP2"]
    assert desk.report_weather("Bilbao", 8.5, actor="service:w", source="10.0.0.1") == []
    view = {p["location"]: p for p in desk.weather_view()}
    assert view["Madrid"]["cps"] == ["CP1", "CP2"] and view["Madrid"]["celsius"] == -2.0 and view["Madrid"]["stopped"]
    assert view["Teruel"] == {"location": "Teruel", "celsius": None, "at": None, "cps": ["CP3"], "stopped": False}
    assert view["Bilbao"]["cps"] == [] and view["Bilbao"]["at"].endswith("Z")
    assert [(a[0], a[2], a[3], a[5]) for a in desk.audited] == [
        ("service:w", "weather", "location:MADRID", {"celsius": -2, "cps": 2}),
        ("service:w", "weather", "location:Bilbao", {"celsius": 8.5, "cps": 0}),
    ]


def test_a_report_gone_stale_is_weather_unknown_and_never_lifts_or_makes_a_stop() -> None:
    desk = DeskHost()
    desk.report_weather("Madrid", -2, actor="s", source="")
    desk.report_weather("Teruel", 3, actor="s", source="")
    at = desk.weather_reports["madrid"].at_ms
    desk.expire_weather(at + 59_000)
    assert {v.id: v.alerts for v in desk.core.cp_views()} == {"CP1": ("weather",), "CP2": ("weather",), "CP3": ()}
    desk.expire_weather(at + 61_000)
    views = {v.id: (v.state, v.alerts) for v in desk.core.cp_views()}
    assert views == {
        "CP1": ("STOPPED", ("weather", "weather_unknown")),
        "CP2": ("STOPPED", ("weather", "weather_unknown")),
        "CP3": ("ACTIVATED", ("weather_unknown",)),
    }
    assert {p["location"]: p["celsius"] for p in desk.weather_view()} == {"Madrid": None, "Teruel": None}
    assert len(desk.notes) == 2
    desk.expire_weather(at + 120_000)
    assert len(desk.notes) == 2  # said once
    desk.report_weather("Teruel", 4, actor="s", source="")
    assert {v.id: v.alerts for v in desk.core.cp_views()}["CP3"] == ()


@pytest.mark.network  # real daemons, started as programs
def test_ev_weather_stops_cleanly_on_sigterm_and_keeps_its_secrets(tmp_path: Path) -> None:
    """Nothing to talk to (no provider, no Central): it says so, without the key, and a
    SIGTERM ends it with exit 0."""
    ready = tmp_path / "ready.json"
    log_path = tmp_path / "weather.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [
                os.path.join(BIN, "ev-weather"),
                "--central",
                "http://127.0.0.1:9",
                "--api-base",
                "http://127.0.0.1:9",
                "--api-key",
                KEY,
                "--locations",
                str(tmp_path / "none.txt"),
                "--interval-s",
                "0.2",
                "--timeout-s",
                "0.5",
                "--log-format",
                "text",
                "--ready-file",
                str(ready),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        wait_for(lambda: "cannot reach Central" in log_path.read_text(errors="replace"), "a round to fail")
        (tmp_path / "none.txt").write_text("Madrid\n")
        wait_for(lambda: "Madrid: provider unavailable" in log_path.read_text(errors="replace"), "Madrid asked")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text(errors="replace")
    assert "weather service stopped" in text and KEY not in text


@pytest.mark.network  # real daemons, started as programs
def test_a_stop_does_not_wait_for_a_provider_that_never_answers(tmp_path: Path) -> None:
    """A provider that accepts and never answers, a 120 s timeout: SIGTERM still ends
    ev-weather at once (the round in progress is dropped), well within the test's wait."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    cities = tmp_path / "cities.txt"
    cities.write_text("Madrid\n")
    log_path = tmp_path / "weather.log"
    try:
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [
                    os.path.join(BIN, "ev-weather"),
                    "--central",
                    "http://127.0.0.1:9",
                    "--api-base",
                    f"http://127.0.0.1:{silent.getsockname()[1]}",
                    "--api-key",
                    KEY,
                    "--locations",
                    str(cities),
                    "--timeout-s",
                    "120",
                    "--log-format",
                    "text",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        # Central is asked first (and fails at once); the provider's question then hangs.
        wait_for(lambda: "cannot reach Central" in log_path.read_text(errors="replace"), "the round to start")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        silent.close()
    assert "weather service stopped" in log_path.read_text(errors="replace")
