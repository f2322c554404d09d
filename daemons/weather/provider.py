"""A client of an OpenWeather-compatible current-weather API: one city's temperature in °C.

``GET {base}/data/2.5/weather?q=CITY&appid=KEY&units=metric``, answered with
``{"main": {"temp": -3.0, ...}, ...}``. Every way it can go wrong is a
:class:`ProviderError` with a :class:`ProviderProblem` (wrong key, unknown city,
unavailable, a bad answer): never a crash, and never the key. The key travels in the
query string, so a message must never show a URL: every message here is built from
the city and the status, and :func:`redact` scrubs the key from anything else.
"""

from __future__ import annotations

import asyncio
import enum
import json
import math
import ssl
from typing import Any

import aiohttp

from evproto.errors import EvprotoError

__all__ = [
    "DEFAULT_API_BASE",
    "MAX_ANSWER_BYTES",
    "ProviderProblem",
    "ProviderError",
    "WeatherProvider",
    "redact",
    "parse_celsius",
]

DEFAULT_API_BASE = "https://api.openweathermap.org"
WEATHER_PATH = "/data/2.5/weather"
#: A current-weather answer is under 1 kB; anything past this is not one.
MAX_ANSWER_BYTES = 64 * 1024
#: Temperatures believed (°C): the same bounds as Central's.
PLAUSIBLE_CELSIUS = (-100.0, 100.0)


class ProviderProblem(enum.Enum):
    """Why the provider gave no temperature."""

    WRONG_KEY = "wrong API key"  # 401
    UNKNOWN_CITY = "unknown city"  # 404
    UNAVAILABLE = "provider unavailable"  # cannot connect, timeout, 5xx, 429
    BAD_ANSWER = "bad answer"  # not JSON, too large, no main.temp


class ProviderError(EvprotoError):
    """The provider gave no temperature for ``city``; ``problem`` says why."""

    def __init__(self, city: str, problem: ProviderProblem, detail: str = "") -> None:
        self.city = city
        self.problem = problem
        self.detail = detail
        super().__init__(f"{city}: {problem.value}" + (f" ({detail})" if detail else ""))


def redact(text: str, secret: str) -> str:
    """``text`` with ``secret`` replaced by ``***`` (an empty secret changes nothing)."""
    return text.replace(secret, "***") if secret else text


def parse_celsius(city: str, body: bytes) -> float:
    """``main.temp`` of an answer body; ProviderError(BAD_ANSWER) when there is none."""
    try:
        obj: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ProviderError(city, ProviderProblem.BAD_ANSWER, "not JSON") from None
    main = obj.get("main") if isinstance(obj, dict) else None
    temp = main.get("temp") if isinstance(main, dict) else None
    if isinstance(temp, bool) or not isinstance(temp, (int, float)):
        raise ProviderError(city, ProviderProblem.BAD_ANSWER, "no main.temp number")
    low, high = PLAUSIBLE_CELSIUS
    if not math.isfinite(temp) or not low <= temp <= high:
        raise ProviderError(city, ProviderProblem.BAD_ANSWER, f"main.temp {temp!r} is not a plausible °C")
    return float(temp)


class WeatherProvider:
    """``async with WeatherProvider(base, key) as p: await p.celsius("Madrid")``."""

    def __init__(
        self,
        api_base: str,
        api_key: str,
        *,
        timeout_s: float = 5.0,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.url = api_base.rstrip("/") + WEATHER_PATH
        self._key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max = max_answer_bytes
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> WeatherProvider:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def celsius(self, city: str) -> float:
        """The temperature at ``city`` now (°C); ProviderError when the provider cannot say."""
        assert self._session is not None, "use `async with WeatherProvider(...)`"
        params = {"q": city, "appid": self._key, "units": "metric"}
        try:
            async with self._session.get(
                self.url, params=params, ssl=self._tls if self._tls is not None else True, allow_redirects=False
            ) as resp:
                if resp.status == 401:
                    raise ProviderError(city, ProviderProblem.WRONG_KEY, "401")
                if resp.status == 404:
                    raise ProviderError(city, ProviderProblem.UNKNOWN_CITY, "404")
                if resp.status != 200:
                    problem = ProviderProblem.UNAVAILABLE if resp.status >= 429 else ProviderProblem.BAD_ANSWER
                    raise ProviderError(city, problem, f"HTTP {resp.status}")
                if resp.content_length is not None and resp.content_length > self._max:
                    raise ProviderError(city, ProviderProblem.BAD_ANSWER, f"answer over {self._max} bytes")
                body = await resp.content.read(self._max + 1)
                if len(body) > self._max:
                    raise ProviderError(city, ProviderProblem.BAD_ANSWER, f"answer over {self._max} bytes")
        except asyncio.TimeoutError:
            raise ProviderError(city, ProviderProblem.UNAVAILABLE, "timed out") from None
        except aiohttp.ClientError as exc:
            # aiohttp's messages may carry the URL, and so the key: keep only the kind.
            raise ProviderError(city, ProviderProblem.UNAVAILABLE, type(exc).__name__) from None
        return parse_celsius(city, body)
