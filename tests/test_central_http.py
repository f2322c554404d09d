"""Central's HTTP API, served on a real loopback socket over an in-memory backend."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any, AsyncIterator
from urllib.parse import quote

import aiohttp
import pytest

from evproto.daemons.central.http_api import (
    MAX_SESSIONS_LIMIT,
    SESSION_STATUSES,
    start_http,
    stop_http,
)
from evproto.domain.central import UnknownCpError
from evproto.domain.central.view import (
    CP_STATES,
    CentralView,
    CpView,
    MessageView,
    SessionView,
)
from evproto.errors import EvprotoError

T0 = 1_795_832_400_000  # 2026-11-28T02:20:00Z

CP_KEYS = {"id", "location", "price_eur_kwh", "state", "driver_id", "power_kw", "energy_kwh", "amount_eur", "alerts"}
SESSION_KEYS = {
    "id",
    "cp_id",
    "driver_id",
    "status",
    "energy_kwh",
    "amount_eur",
    "started_at",
    "ended_at",
    "end_reason",
    "signed_meter",
}


class FakeBackend:
    """In-memory Central: a fixed view and session list; records queries and commands."""

    def __init__(self) -> None:
        self.cps = (
            CpView(
                id="CP001",
                location="Madrid Centro",
                price_eur_kwh=0.35,
                state="SUPPLYING",
                driver_id="D001",
                power_kw=7.2,
                energy_kwh=3.456,
                amount_eur=1.21,
            ),
            CpView(id="CP002", location="Alicante", price_eur_kwh=0.4, state="ACTIVATED"),
            CpView(id="CP 3", location="Elche", price_eur_kwh=0.3, state="STOPPED"),
        )
        self.all_sessions = [
            SessionView(
                id=1,
                cp_id="CP002",
                driver_id="D002",
                status="completed",
                requested_ts_ms=T0 - 9000,
                energy_kwh=5.0,
                amount_eur=2.0,
                started_ts_ms=T0 - 8000,
                ended_ts_ms=T0 - 1000,
                end_reason="unplugged",
            ),
            SessionView(
                id=2,
                cp_id="CP003",
                driver_id="D002",
                status="denied",
                requested_ts_ms=T0 - 5000,
                end_reason="CP not ACTIVATED",
            ),
            SessionView(
                id=3,
                cp_id="CP001",
                driver_id="D001",
                status="supplying",
                requested_ts_ms=T0 - 3000,
                energy_kwh=3.456,
                amount_eur=1.21,
                started_ts_ms=T0 - 2000,
            ),
        ]
        self.messages = (
            MessageView(ts_ms=T0 - 500, level="info", text="Central up"),
            MessageView(ts_ms=T0 - 100, level="warning", text="CP004 unknown"),
        )
        self.queries: list[dict[str, Any]] = []
        self.calls: list[tuple[str, str | None]] = []
        self.fail: BaseException | None = None

    def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        return [
            {
                "id": 1,
                "ts_ms": T0,
                "topic": "cp-events",
                "partition": 2,
                "offset": 7,
                "key": "CP9",
                "reason": "CP9 is not a registered charge point",
                "size": 250,
            }
        ][:limit]

    def view(self) -> CentralView:
        if self.fail is not None:
            raise self.fail
        return CentralView(
            cps=self.cps,
            requests=(self.all_sessions[2],),
            messages=self.messages,
            central_id="central-1",
            listen="0.0.0.0:7001",
            http="127.0.0.1:8001",
            kafka="127.0.0.1:9092",
            kafka_ok=False,
            now_ts_ms=T0,
            counters={"frames_in": 12, "sessions": 3},
        )

    live_view = view

    def sessions(
        self, *, status: str | None = None, cp_id: str | None = None, driver_id: str | None = None, limit: int = 500
    ) -> list[SessionView]:
        self.queries.append(dict(status=status, cp_id=cp_id, driver_id=driver_id, limit=limit))
        rows = [
            s
            for s in self.all_sessions
            if (status is None or s.status == status)
            and (cp_id is None or s.cp_id == cp_id)
            and (driver_id is None or s.driver_id == driver_id)
        ]
        return rows[:limit]

    async def stop(self, cp_id: str | None, *, actor: str = "", source: str = "") -> list[str]:
        return self._command("stop", cp_id)

    async def resume(self, cp_id: str | None, *, actor: str = "", source: str = "") -> list[str]:
        return self._command("resume", cp_id)

    def _command(self, action: str, cp_id: str | None) -> list[str]:
        if self.fail is not None:
            raise self.fail
        self.calls.append((action, cp_id))
        ids = [cp.id for cp in self.cps]
        if cp_id is None:
            return ids
        if cp_id not in ids:
            raise UnknownCpError(cp_id)
        return [cp_id]


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def api(backend: FakeBackend) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """A client session and the base URL of the API served on 127.0.0.1, port 0."""
    runner, port = await start_http(backend, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            yield session, f"http://127.0.0.1:{port}/api/v1"
    finally:
        await stop_http(runner)


async def call(
    api: tuple[aiohttp.ClientSession, str], method: str, path: str, **params: str
) -> tuple[int, Any, aiohttp.ClientResponse]:
    session, base = api
    async with session.request(method, base + path, params=params or None) as resp:
        assert resp.content_type == "application/json", (resp.status, await resp.text())
        return resp.status, await resp.json(), resp


def is_optional(value: Any, kind: type) -> bool:
    return value is None or isinstance(value, kind)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- GET /api/v1/cps -------------------------------------------------------------------------


async def test_cps_lists_every_cp_with_the_pinned_keys_and_types(api, backend):
    status, body, _ = await call(api, "GET", "/cps")
    assert status == 200
    assert isinstance(body, list) and len(body) == 3
    for item, cp in zip(body, backend.cps, strict=True):
        assert set(item) == CP_KEYS
        assert item == cp.to_json()
        assert isinstance(item["id"], str) and isinstance(item["location"], str)
        assert is_number(item["price_eur_kwh"])
        assert item["state"] in CP_STATES
        assert is_optional(item["driver_id"], str)
        for key in ("power_kw", "energy_kwh", "amount_eur"):
            assert item[key] is None or is_number(item[key])
    supplying = body[0]
    assert (supplying["driver_id"], supplying["power_kw"], supplying["energy_kwh"], supplying["amount_eur"]) == (
        "D001",
        7.2,
        3.456,
        1.21,
    )
    assert body[1]["driver_id"] is None and body[1]["energy_kwh"] is None


# -- GET /api/v1/sessions --------------------------------------------------------------------


async def test_sessions_default_query_and_shape(api, backend):
    status, body, _ = await call(api, "GET", "/sessions")
    assert status == 200
    assert backend.queries == [query()]
    assert [s["id"] for s in body] == [1, 2, 3]
    for item in body:
        assert set(item) == SESSION_KEYS
        assert isinstance(item["id"], int)
        assert isinstance(item["cp_id"], str) and isinstance(item["driver_id"], str)
        assert item["status"] in SESSION_STATUSES
        assert is_number(item["energy_kwh"]) and is_number(item["amount_eur"])
        for key in ("started_at", "ended_at", "end_reason"):
            assert is_optional(item[key], str)
    assert body[0]["started_at"] == "2026-11-28T02:19:52.000Z"
    assert body[0]["ended_at"] == "2026-11-28T02:19:59.000Z"
    assert body[1]["started_at"] is None and body[1]["end_reason"] == "CP not ACTIVATED"


def query(*, status=None, cp_id=None, driver_id=None, limit=500) -> dict[str, Any]:
    """The backend.sessions() keywords the API should pass."""
    return {"status": status, "cp_id": cp_id, "driver_id": driver_id, "limit": limit}


@pytest.mark.parametrize(
    ("params", "expected", "ids"),
    [
        ({"status": "completed"}, query(status="completed"), [1]),
        ({"cp_id": "CP001"}, query(cp_id="CP001"), [3]),
        ({"driver_id": "D002"}, query(driver_id="D002"), [1, 2]),
        ({"driver_id": "D002", "limit": "1"}, query(driver_id="D002", limit=1), [1]),
        ({"limit": "0"}, query(limit=0), []),
        ({"status": "", "cp_id": ""}, query(), [1, 2, 3]),  # empty = absent
        ({"limit": "99999999999"}, query(limit=MAX_SESSIONS_LIMIT), [1, 2, 3]),  # clamped
    ],
)
async def test_sessions_filters_reach_the_backend(api, backend, params, expected, ids):
    status, body, _ = await call(api, "GET", "/sessions", **params)
    assert status == 200
    assert backend.queries == [expected]
    assert [s["id"] for s in body] == ids


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"status": "bogus"}, "status"),
        ({"status": "COMPLETED"}, "status"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": "+3"}, "limit"),
    ],
)
async def test_sessions_bad_query_is_400_json(api, backend, params, word):
    status, body, _ = await call(api, "GET", "/sessions", **params)
    assert status == 400
    assert set(body) == {"error"} and word in body["error"]
    assert backend.queries == []


# -- stop / resume ---------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["stop", "resume"])
async def test_command_one_cp(api, backend, action):
    status, body, _ = await call(api, "POST", f"/cps/CP002/{action}")
    assert (status, body) == (200, {"ok": True, "cps": ["CP002"]})
    assert backend.calls == [(action, "CP002")]


async def test_command_cp_id_is_url_decoded(api, backend):
    status, body, _ = await call(api, "POST", f"/cps/{quote('CP 3')}/stop")
    assert (status, body) == (200, {"ok": True, "cps": ["CP 3"]})
    assert backend.calls == [("stop", "CP 3")]


@pytest.mark.parametrize("action", ["stop", "resume"])
async def test_command_unknown_cp_is_404(api, backend, action):
    status, body, _ = await call(api, "POST", f"/cps/CP999/{action}")
    assert (status, body) == (404, {"error": "unknown charge point 'CP999'"})
    assert backend.calls == [(action, "CP999")]


@pytest.mark.parametrize("action", ["stop", "resume"])
async def test_command_all_cps(api, backend, action):
    status, body, _ = await call(api, "POST", f"/cps/{action}")
    assert (status, body) == (200, {"ok": True, "cps": ["CP001", "CP002", "CP 3"]})
    assert backend.calls == [(action, None)]


# -- the launcher's endpoints ----------------------------------------------------------------


async def test_messages(api):
    status, body, _ = await call(api, "GET", "/messages")
    assert status == 200
    assert body == [
        {"ts": "2026-11-28T02:19:59.500Z", "level": "info", "text": "Central up"},
        {"ts": "2026-11-28T02:19:59.900Z", "level": "warning", "text": "CP004 unknown"},
    ]


async def test_status(api):
    status, body, _ = await call(api, "GET", "/status")
    assert status == 200
    assert body == {
        "central_id": "central-1",
        "listen": "0.0.0.0:7001",
        "http": "127.0.0.1:8001",
        "kafka": "127.0.0.1:9092",
        "kafka_ok": False,
        "now": "2026-11-28T02:20:00.000Z",
        "counters": {"frames_in": 12, "sessions": 3},
    }


async def test_requests(api, backend):
    status, body, _ = await call(api, "GET", "/requests")
    assert status == 200
    assert len(body) == 1
    assert set(body[0]) == SESSION_KEYS | {"requested_at"}
    assert body[0]["requested_at"] == "2026-11-28T02:19:57.000Z"
    session = {k: v for k, v in body[0].items() if k != "requested_at"}
    assert session == backend.all_sessions[2].to_json()


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/cps/CP001/explode", "/drivers/D1/x", "/../etc"])
async def test_unknown_route_is_404_json(api, path):
    status, body, _ = await call(api, "GET", path)
    assert status == 404
    assert set(body) == {"error"} and "no such endpoint" in body["error"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/cps/stop", "POST"),
        ("GET", "/cps/CP001/resume", "POST"),
        ("POST", "/cps", "GET"),
        ("DELETE", "/sessions", "GET"),
        ("PUT", "/cps/resume", "POST"),
    ],
)
async def test_wrong_method_is_405_json(api, backend, method, path, allowed):
    status, body, resp = await call(api, method, path)
    assert status == 405
    assert set(body) == {"error"} and method in body["error"]
    assert allowed in resp.headers["Allow"]
    assert backend.calls == []


async def test_backend_failure_is_500_json_without_traceback(api, backend, caplog):
    backend.fail = RuntimeError("secret detail")
    with caplog.at_level(logging.ERROR, logger="evproto.central"):
        for method, path in [("GET", "/cps"), ("GET", "/status"), ("POST", "/cps/CP001/stop")]:
            session, base = api
            async with session.request(method, base + path) as resp:
                text = await resp.text()
                assert resp.status == 500
                assert resp.content_type == "application/json"
                assert await resp.json() == {"error": "internal error"}
                assert "Traceback" not in text and "secret" not in text
    failures = [r for r in caplog.records if r.name == "evproto.central" and r.exc_info]
    assert len(failures) == 3
    assert "secret detail" in str(failures[0].exc_info[1])


async def test_non_finite_number_is_500_not_invalid_json(api, backend):
    backend.cps = (CpView(id="CP001", location="x", price_eur_kwh=math.nan, state="ACTIVATED"),)
    status, body, _ = await call(api, "GET", "/cps")
    assert (status, body) == (500, {"error": "internal error"})


# -- serving ---------------------------------------------------------------------------------


async def test_start_http_picks_a_port_and_stop_http_closes_it(backend):
    runner, port = await start_http(backend, "127.0.0.1", 0)
    assert port > 0
    url = f"http://127.0.0.1:{port}/api/v1/status"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert resp.status == 200
        await stop_http(runner)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(url) as resp:
                pass


def test_unknown_cp_is_a_lookup_error_in_our_tree():
    exc = UnknownCpError("CP9")
    assert isinstance(exc, LookupError) and isinstance(exc, EvprotoError)
    assert str(exc) == "unknown charge point 'CP9'" and exc.cp_id == "CP9"


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /api/v1/cps?" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # a 10 kB URL
        b"GET /api/v1/cps HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n",  # a 20 kB header
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",  # TLS to a plain port
    ],
    ids=["long-url", "long-header", "tls-hello"],
)
async def test_requests_broken_before_routing_get_json_errors_and_no_traceback(backend, raw, caplog) -> None:
    runner, port = await start_http(backend, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 10)
        writer.close()
    finally:
        await stop_http(runner)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0]
    assert b"application/json" in head
    assert "error" in json.loads(body)
    assert "Traceback" not in caplog.text
