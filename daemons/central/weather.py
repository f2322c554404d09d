"""Central's side of the weather service (EV_W): its reports, what they did, and their age.

A part of :class:`~.app.Central` (its state is set up there). The rules themselves are
the core's (:meth:`~evproto.domain.central.registry.RegistryRules.weather`); this keeps
what the HTTP API shows (the last temperature per location, when it came) and turns
silence into "weather unknown": a report older than ``weather_stale_s`` counts as no
report at all, which never stops a CP (a dead weather service must not shut a network).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any

from evproto.domain.central.view import iso_utc

from ..common import now_ms

__all__ = ["WeatherDesk", "WeatherReport", "MAX_LOCATION_CHARS", "CELSIUS_RANGE", "weather_problem"]

log = logging.getLogger("evproto.central")

#: A location is a city name as a CP's monitor gives it (and OpenWeather takes it).
MAX_LOCATION_CHARS = 64
#: Temperatures Central takes (°C); anything outside is a broken sensor or a forged body.
CELSIUS_RANGE = (-100.0, 100.0)
#: Locations Central remembers reports for beyond its CPs' (bounded: a client cannot grow it).
MAX_REPORTED_LOCATIONS = 1000
#: How often the age of the reports is looked at.
WATCH_INTERVAL_S = 1.0


def weather_problem(location: object, celsius: object) -> str | None:
    """Why ``{"location", "celsius"}`` is not a weather report Central takes, or None."""
    if not isinstance(location, str) or not location.strip():
        return "location must be a non-empty string"
    if len(location) > MAX_LOCATION_CHARS:
        return f"location longer than {MAX_LOCATION_CHARS} characters"
    if not location.isprintable():
        return "location must be printable text"
    if celsius is None:
        return None
    if isinstance(celsius, bool) or not isinstance(celsius, (int, float)):
        return "celsius must be a number or null"
    low, high = CELSIUS_RANGE
    if not math.isfinite(celsius) or not low <= celsius <= high:
        return f"celsius must be between {low:g} and {high:g}"
    return None


@dataclass(slots=True)
class WeatherReport:
    """The last word of the weather service about one location."""

    location: str
    celsius: float | None
    at_ms: int
    #: It went stale (no news for ``weather_stale_s``): celsius is then None.
    stale: bool = False


class WeatherDesk:
    """The weather service's reports and their effects."""

    weather_reports: dict[str, WeatherReport]

    def report_weather(self, location: str, celsius: float | None, *, actor: str, source: str) -> list[str]:
        """Take a report (checked by :func:`weather_problem`): apply the core's rules,
        remember it, audit it; the ids of the CPs at ``location``."""
        location = location.strip()
        key = location.casefold()
        if key not in self.weather_reports and len(self.weather_reports) >= MAX_REPORTED_LOCATIONS:
            # Forget the oldest report of a location without CPs (those with CPs stay).
            known = {cp.location.casefold() for cp in self.core.cps.values()}
            spare = sorted((r.at_ms, k) for k, r in self.weather_reports.items() if k not in known)
            if spare:
                del self.weather_reports[spare[0][1]]
        ids, fx = self.core.weather(location, None if celsius is None else float(celsius), now_ms())
        self._apply(fx)
        self.weather_reports[key] = WeatherReport(location, None if celsius is None else float(celsius), now_ms())
        self._audit(actor, source, "weather", f"location:{location}", "ok", celsius=celsius, cps=len(ids))
        return ids

    def weather_view(self) -> list[dict[str, Any]]:
        """Every location Central knows (its CPs') or was told about: the last temperature,
        when, the CPs there and whether the weather stops them."""
        places: dict[str, dict[str, Any]] = {}
        for cp in sorted(self.core.cps.values(), key=lambda c: c.id):
            key = cp.location.casefold()
            place = places.setdefault(
                key, {"location": cp.location, "celsius": None, "at": None, "cps": [], "stopped": False}
            )
            place["cps"].append(cp.id)
            place["stopped"] = place["stopped"] or cp.weather_stopped
        for key, report in self.weather_reports.items():
            place = places.setdefault(
                key, {"location": report.location, "celsius": None, "at": None, "cps": [], "stopped": False}
            )
            place["celsius"] = report.celsius
            place["at"] = iso_utc(report.at_ms)
        return sorted(places.values(), key=lambda p: p["location"].casefold())

    async def _weather_watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            self.expire_weather(now_ms())

    def expire_weather(self, now: int) -> None:
        """A location not reported for ``weather_stale_s`` becomes "weather unknown" (a
        weather service that died says nothing more: its silence must show, never stop)."""
        limit_ms = int(self.opts.weather_stale_s * 1000)
        for report in list(self.weather_reports.values()):
            if report.stale or now - report.at_ms < limit_ms:
                continue
            report.stale, report.celsius = True, None
            _, fx = self.core.weather(report.location, None, now)
            self._apply(fx)
            self._note(
                f"weather at {report.location}: no report for {self.opts.weather_stale_s:g} s, now unknown",
                "warning",
                key=f"weather-stale:{report.location.casefold()}",
            )
