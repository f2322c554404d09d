"""``ev-weather``'s loop: every interval, the temperature at every location, told to Central.

Locations are those of the locations file and those Central knows (its CPs'), read
from Central's ``GET /api/v1/weather``. Each is asked of the provider (bounded
concurrency, bounded time and size) and the answer, or ``null`` when the provider could
not say, is posted to ``POST /api/v1/weather``. Central decides; we only report.

When to post (:func:`needs_report`): when the answer changes what Central does (below
0, 0 or above, unknown), when it moved by a degree or more, when Central shows no
report for the location (it restarted), and at least every ``reassert_s``: Central
takes a location it has not heard of for a while as "weather unknown", so silence is
how a dead weather service shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from evproto.errors import EvprotoError
from evproto.ratelog import RateLimitedLog

from ..files import write_ready_file
from .locations import MAX_LOCATIONS, LocationsFile
from .provider import DEFAULT_API_BASE, ProviderError, ProviderProblem, WeatherProvider, redact

__all__ = ["WeatherOptions", "WeatherService", "CentralError", "Reported", "needs_report", "band"]

log = logging.getLogger("evproto.weather")

#: A temperature that moved this much (°C) is worth telling even in the same band.
REPORT_DELTA_C = 1.0
MAX_CENTRAL_ANSWER_BYTES = 4 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class WeatherOptions:
    #: Central's HTTP base (``https://HOST:PORT``; the API is under /api/v1).
    central: str
    api_key: str
    token: str = ""
    api_base: str = DEFAULT_API_BASE
    locations_file: str | None = None
    interval_s: float = 5.0
    reassert_s: float = 30.0
    concurrency: int = 8
    timeout_s: float = 5.0
    #: The CA that signed Central's certificate (None: the system's CAs).
    central_ca: str | None = None
    ready_file: str | None = None


class CentralError(EvprotoError):
    """Central could not be asked or told (unreachable, refused, a bad answer)."""


def band(celsius: float | None) -> str:
    """What a temperature means to Central: "below" 0, "above" (0 or warmer), "unknown"."""
    if celsius is None:
        return "unknown"
    return "below" if celsius < 0 else "above"


@dataclass(frozen=True, slots=True)
class Reported:
    """What we last told Central about a location, when (monotonic seconds), and the CPs
    Central said were there."""

    celsius: float | None
    at_s: float
    cps: tuple[str, ...] = ()


def needs_report(
    last: Reported | None,
    celsius: float | None,
    now_s: float,
    *,
    reassert_s: float,
    central_knows: bool = True,
    cps: tuple[str, ...] | None = None,
) -> bool:
    """Whether to post ``celsius`` for a location we last told ``last``; ``central_knows``:
    Central shows a report for it; ``cps``: the CPs Central lists there now (None: not known)."""
    if last is None or not central_knows or band(last.celsius) != band(celsius):
        return True
    if cps is not None and cps != last.cps:
        return True  # a CP came (or went): it must hear the weather now, not at the next re-assert
    if celsius is not None and last.celsius is not None and abs(celsius - last.celsius) >= REPORT_DELTA_C:
        return True
    return now_s - last.at_s >= reassert_s


class CentralApi:
    """Central's weather endpoints, as the service identity (a Bearer token)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str, tls: ssl.SSLContext | None) -> None:
        self._session = session
        self._url = base.rstrip("/") + "/api/v1/weather"
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._tls = tls

    async def locations(self) -> list[dict[str, Any]]:
        answer = await self._call("GET")
        if not isinstance(answer, list):
            raise CentralError("Central's weather list is not a list")
        return [p for p in answer if isinstance(p, dict) and isinstance(p.get("location"), str)]

    async def report(self, location: str, celsius: float | None) -> list[str]:
        answer = await self._call("POST", {"location": location, "celsius": celsius})
        cps = answer.get("cps") if isinstance(answer, dict) else None
        return [c for c in cps if isinstance(c, str)] if isinstance(cps, list) else []

    async def _call(self, method: str, body: Any = None) -> Any:
        try:
            async with self._session.request(
                method, self._url, json=body, headers=self._headers, ssl=self._tls if self._tls is not None else True
            ) as resp:
                data = await resp.content.read(MAX_CENTRAL_ANSWER_BYTES + 1)
                if len(data) > MAX_CENTRAL_ANSWER_BYTES:
                    raise CentralError("Central's answer is too large")
                if resp.status != 200:
                    why = _error_text(data)
                    hint = " (check --token: a service or admin token)" if resp.status in (401, 403) else ""
                    raise CentralError(f"Central answered {resp.status}: {why}{hint}")
                try:
                    return json.loads(data)
                except ValueError:
                    raise CentralError("Central's answer is not JSON") from None
        except asyncio.TimeoutError:
            raise CentralError("Central did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise CentralError(f"cannot reach Central: {type(exc).__name__}") from None


def _error_text(data: bytes) -> str:
    try:
        return str(json.loads(data).get("error", ""))[:200]
    except (ValueError, AttributeError):
        return "(no JSON error)"


class WeatherService:
    """One ``ev-weather``; ``await WeatherService(opts).run(stop)``."""

    def __init__(self, opts: WeatherOptions) -> None:
        self.opts = opts
        self.file = LocationsFile(opts.locations_file) if opts.locations_file else None
        self.reported: dict[str, Reported] = {}
        self.cycles = 0
        self._warn = RateLimitedLog(log, interval_s=60.0)

    async def run(self, stop: asyncio.Event) -> int:
        tls = None
        if self.opts.central.startswith("https://"):
            from evproto.aio import tls_client_context

            tls = tls_client_context(ca=self.opts.central_ca)
        timeout = aiohttp.ClientTimeout(total=self.opts.timeout_s)
        async with contextlib.AsyncExitStack() as stack:
            provider = await stack.enter_async_context(
                WeatherProvider(self.opts.api_base, self.opts.api_key, timeout_s=self.opts.timeout_s)
            )
            session = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
            central = CentralApi(session, self.opts.central, self.opts.token, tls)
            log.info(
                "weather service up: provider %s, Central %s, every %g s%s",
                provider.url,
                self.opts.central,
                self.opts.interval_s,
                f", locations from {self.opts.locations_file}" if self.opts.locations_file else "",
            )
            write_ready_file(self.opts.ready_file, role="weather", central=self.opts.central)
            stopped = asyncio.ensure_future(stop.wait())
            stack.callback(stopped.cancel)
            while not stop.is_set():
                started = time.monotonic()
                # A round in progress is dropped on a stop: its answers only matter to a
                # running service, and a stop must not wait for a slow provider.
                cycle = asyncio.ensure_future(self.cycle(provider, central))
                await asyncio.wait({cycle, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not cycle.done():
                    cycle.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await cycle
                    break
                if cycle.exception() is not None:  # one bad round must not end the service
                    exc = cycle.exception()
                    log.error("weather round failed: %s", redact(f"{type(exc).__name__}: {exc}", self.opts.api_key))
                self.cycles += 1
                left = self.opts.interval_s - (time.monotonic() - started)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, left))
        log.info("weather service stopped")
        return 0

    async def cycle(self, provider: WeatherProvider, central: CentralApi) -> None:
        """Ask the provider about every location and tell Central what it needs to hear."""
        if self.file is not None:
            problems = self.file.refresh()
            for problem in problems or ():
                log.warning("%s", problem)
            if problems is not None:
                log.info("locations file: %d location(s)", len(self.file.locations))
        places: dict[str, str] = {}
        for city in self.file.locations if self.file is not None else ():
            places.setdefault(city.casefold(), city)
        known: set[str] | None = None
        cps_at: dict[str, tuple[str, ...]] = {}
        try:
            at_central = await central.locations()
        except CentralError as exc:
            self._warn.log(logging.WARNING, f"{exc}; reporting the file's locations only", key="central")
        else:
            known = {p["location"].casefold() for p in at_central if p.get("at")}
            for p in at_central:
                places.setdefault(p["location"].casefold(), p["location"])
                found = p.get("cps")
                if isinstance(found, list):
                    cps_at[p["location"].casefold()] = tuple(sorted(c for c in found if isinstance(c, str)))
        cities = list(places.values())[:MAX_LOCATIONS]
        gate = asyncio.Semaphore(self.opts.concurrency)

        async def ask(city: str) -> float | None:
            async with gate:
                try:
                    return await provider.celsius(city)
                except ProviderError as exc:
                    level = logging.ERROR if exc.problem is ProviderProblem.WRONG_KEY else logging.WARNING
                    hint = " (check --api-key)" if exc.problem is ProviderProblem.WRONG_KEY else ""
                    self._warn.log(level, redact(f"{exc}{hint} → weather unknown", self.opts.api_key), key=city)
                    return None

        # Forget what we told about places no longer watched (bounded, and a place that
        # comes back is told afresh).
        self.reported = {k: v for k, v in self.reported.items() if k in places}
        answers = await asyncio.gather(*(ask(c) for c in cities))
        now = time.monotonic()
        for city, celsius in zip(cities, answers):
            key = city.casefold()
            last = self.reported.get(key)
            central_knows = known is None or key in known
            if not needs_report(
                last,
                celsius,
                now,
                reassert_s=self.opts.reassert_s,
                central_knows=central_knows,
                cps=cps_at.get(key) if known is not None else None,
            ):
                continue
            try:
                cps = await central.report(city, celsius)
            except CentralError as exc:
                self._warn.log(logging.WARNING, f"{city}: not told to Central: {exc}", key="central-post")
                self.reported.pop(key, None)  # tell it again next cycle
                continue
            self.reported[key] = Reported(celsius, now, tuple(sorted(cps)))
            if last is None or band(last.celsius) != band(celsius):
                self._say(city, celsius, cps, last)

    @staticmethod
    def _say(city: str, celsius: float | None, cps: list[str], last: Reported | None) -> None:
        where = ", ".join(cps)
        if celsius is None:
            log.warning("%s: temperature unknown → weather unknown%s", city, f" at {where}" if cps else "")
        elif celsius < 0:
            what = f"Central stopped {where}" if cps else "no CP there"
            log.warning("%s: %.1f °C → below 0: %s", city, celsius, what)
        elif last is not None and last.celsius is not None and last.celsius < 0:
            log.info("%s: %.1f °C → 0 or above: Central lifted the weather stop at %s", city, celsius, where or "-")
        else:
            log.info("%s: %.1f °C → 0 or above%s", city, celsius, f" ({where})" if cps else "")
