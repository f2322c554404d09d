"""The web console's server side, without a browser: login sessions and their cookie, the
refusals, the static files from the installed package, and the live stream's broadcaster.

Central's real HTTP application on 127.0.0.1 (port 0) over a real core (tests/consoleharness.py).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from consoleharness import ConsoleServer, CoreBackend, start_console

import evproto.daemons.central
from evproto.aio import tls_server_context
from evproto.daemons.auditlog import read_entries
from evproto.daemons.central.console import BROADCASTER_KEY, SESSION_COOKIE, SESSIONS_KEY, WEB_DIR, ConsoleSessions
from evproto.daemons.central.stream import Broadcaster, TooManySubscribers
from evproto.daemons.pki import CertificateAuthority
from evproto.daemons.tokens import TokenRole, TokenStore

CPS = [("CP001", "Madrid", 0.35), ("CP002", "Alicante", 0.4), ("CP003", "Elche", 0.3)]
GUARD_S = 10.0


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[ConsoleServer]:
    server = await start_console(tmp_path, CPS)
    try:
        yield server
    finally:
        await server.close()


def _client(**kwargs: Any) -> aiohttp.ClientSession:
    # unsafe=True: keep cookies of an IP-address host (127.0.0.1), as a browser does.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), **kwargs)


async def _login(http: aiohttp.ClientSession, url: str, token: str) -> aiohttp.ClientResponse:
    answer = await http.post(f"{url}/login", data={"token": token}, allow_redirects=False)
    await answer.read()
    return answer


def _session_cookie(answer: aiohttp.ClientResponse) -> str:
    cookies = [c for c in answer.headers.getall("Set-Cookie", []) if c.startswith(f"{SESSION_COOKIE}=")]
    assert len(cookies) == 1, answer.headers
    return cookies[0]


async def _event(stream: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next ``data:`` event of a Server-Sent Events answer (comments skipped)."""
    while True:
        block = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), GUARD_S)
        data = [line[6:] for line in block.decode().splitlines() if line.startswith("data: ")]
        if data:
            return json.loads("".join(data))


# -- login and sessions ----------------------------------------------------------------------


async def test_login_sets_an_httponly_samesite_strict_cookie_and_the_session_carries_the_role(
    console: ConsoleServer,
) -> None:
    async with _client() as http:
        answer = await _login(http, console.url, console.token(TokenRole.OPERATOR, "olga"))
        assert answer.status == 303 and answer.headers["Location"] == "/"
        cookie = _session_cookie(answer)
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
        async with http.get(f"{console.url}/api/v1/whoami") as who:
            assert await who.json() == {
                "role": "operator",
                "name": "olga",
                "may": ["operator", "viewer"],
                "login": True,
            }
        async with http.get(f"{console.url}/") as page:
            assert page.status == 200 and "text/html" in page.headers["Content-Type"]
            assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        # The role checks are the API's: an operator stops a CP but may not read the audit log.
        async with http.post(f"{console.url}/api/v1/cps/CP001/stop", json={}) as stop:
            assert stop.status == 200
        async with http.get(f"{console.url}/api/v1/audit") as audit:
            assert audit.status == 403
    assert {cp.id: cp.state for cp in console.backend.view().cps}["CP001"] == "STOPPED"


async def test_under_tls_the_session_cookie_is_secure(tmp_path: Path) -> None:
    ca = CertificateAuthority.ensure(tmp_path / "ca")
    cert = ca.issue("central", tmp_path / "certs", hosts=("127.0.0.1",))
    server = await start_console(tmp_path, CPS, tls=tls_server_context(cert=str(cert.cert), key=str(cert.key)))
    try:
        client_tls = ssl.create_default_context(cafile=str(ca.cert_path))
        async with _client(connector=aiohttp.TCPConnector(ssl=client_tls)) as http:
            answer = await _login(http, server.url, server.token(TokenRole.VIEWER))
            assert answer.status == 303
            cookie = _session_cookie(answer)
            assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
            async with http.get(f"{server.url}/api/v1/cps") as cps:
                assert cps.status == 200
    finally:
        await server.close()


async def test_without_a_valid_session_pages_redirect_and_the_api_answers_401(console: ConsoleServer) -> None:
    async with _client() as http:
        for cookie in (None, "forged-" + "A" * 43, "x" * 500):
            headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}
            for path in ("/", "/app.js", "/index.html"):
                async with http.get(f"{console.url}{path}", headers=headers, allow_redirects=False) as page:
                    assert (page.status, page.headers.get("Location")) == (303, "/login"), (path, cookie)
            for path in ("/api/v1/cps", "/api/v1/stream", "/api/v1/whoami"):
                async with http.get(f"{console.url}{path}", headers=headers) as api:
                    assert api.status == 401, (path, cookie)
        # The login form and its style sheet are open; nothing else of web/ is served by other names.
        async with http.get(f"{console.url}/login") as form:
            assert form.status == 200 and 'name="token"' in await form.text()
        async with http.get(f"{console.url}/style.css") as css:
            assert css.status == 200
    async with _client() as http:
        await _login(http, console.url, console.token(TokenRole.ADMIN))
        for path in ("/..%2Fconsole.py", "/.hidden.js", "/nothing-here.js"):
            async with http.get(f"{console.url}{path}") as missing:
                assert missing.status == 404, path


async def test_a_bad_token_is_refused_audited_and_never_echoed_or_logged(console: ConsoleServer) -> None:
    secret = "evp_deadbeef_" + "s3cr3t" * 6
    installer = console.token(TokenRole.INSTALLER, "ian")
    async with _client() as http:
        answer = await http.post(f"{console.url}/login", data={"token": secret}, allow_redirects=False)
        body = await answer.text()
        assert answer.status == 401 and "not valid" in body and "s3cr3t" not in body
        assert SESSION_COOKIE not in answer.headers.get("Set-Cookie", "")
        # A live token whose role cannot read Central's state opens no session either.
        answer = await http.post(f"{console.url}/login", data={"token": installer}, allow_redirects=False)
        assert answer.status == 403 and SESSION_COOKIE not in answer.headers.get("Set-Cookie", "")
        # Another site's page cannot log a browser in (login CSRF): the Origin is checked.
        answer = await http.post(
            f"{console.url}/login",
            data={"token": console.token(TokenRole.VIEWER)},
            headers={"Origin": "https://evil.example"},
            allow_redirects=False,
        )
        assert answer.status == 403
        ok = await _login(http, console.url, console.token(TokenRole.VIEWER, "vera"))
        assert ok.status == 303
    assert console.audit is not None
    entries = read_entries(console.audit.path)
    logins = [e for e in entries if e["action"] == "console:login"]
    # Refusals from one address are coalesced (a second apart at most): a flood writes little.
    assert [e["outcome"] for e in logins] == ["refused", "ok"]
    assert logins[-1]["actor"].startswith("viewer:vera")
    text = Path(console.audit.path).read_text()
    assert "s3cr3t" not in text and installer not in text


async def test_logout_ends_the_session_and_a_revoked_token_ends_its_sessions(console: ConsoleServer) -> None:
    assert console.tokens is not None
    async with _client() as http:
        await _login(http, console.url, console.token(TokenRole.VIEWER))
        async with http.post(f"{console.url}/logout", json={}) as out:
            assert out.status == 200
        async with http.get(f"{console.url}/api/v1/cps") as api:
            assert api.status == 401
    async with _client() as http:
        answer = await _login(http, console.url, console.token(TokenRole.VIEWER, "rita"))
        value = _session_cookie(answer).split(";")[0].split("=", 1)[1]
        async with http.get(f"{console.url}/api/v1/cps") as api:
            assert api.status == 200
        token_id = next(t["id"] for t in console.tokens.list() if t["name"] == "rita")
        assert console.tokens.revoke(token_id)
        async with http.get(f"{console.url}/api/v1/cps") as api:
            assert api.status == 401
        assert console.runner.app[SESSIONS_KEY].principal(value) is None


async def test_a_state_changing_call_with_a_session_must_send_json_from_this_site(console: ConsoleServer) -> None:
    async with _client() as http:
        await _login(http, console.url, console.token(TokenRole.OPERATOR))
        async with http.post(f"{console.url}/api/v1/cps/CP001/stop", data={"a": "b"}) as form:
            assert form.status == 403
        async with http.post(
            f"{console.url}/api/v1/cps/CP001/stop", json={}, headers={"Origin": "https://evil.example"}
        ) as foreign:
            assert foreign.status == 403
        async with http.post(f"{console.url}/logout", data={"a": "b"}) as form_logout:
            assert form_logout.status == 403
    assert all(cp.state == "ACTIVATED" for cp in console.backend.view().cps)


async def test_sessions_expire_and_are_bounded_in_number(tmp_path: Path) -> None:
    tokens = TokenStore(str(tmp_path / "tokens.db"))
    try:
        now = [1000.0]
        sessions = ConsoleSessions(tokens, api_prefix="/api/v1", max_sessions=3, lifetime_s=60.0, clock=lambda: now[0])
        _, alice = tokens.create(TokenRole.VIEWER, "alice")
        first = sessions.open(alice)
        now[0] += 59.0
        assert sessions.principal(first) == alice
        now[0] += 1.0
        assert sessions.principal(first) is None and len(sessions) == 0
        ids = [sessions.open(alice) for _ in range(5)]
        assert len(sessions) == 3
        assert [sessions.principal(i) is not None for i in ids] == [False, False, True, True, True]
        assert sessions.close(ids[-1]) and not sessions.close(ids[-1])
        assert sessions.principal(ids[-1]) is None
    finally:
        tokens.close()


async def test_an_expired_session_is_refused_over_http(console: ConsoleServer) -> None:
    sessions = console.runner.app[SESSIONS_KEY]
    now = [5000.0]
    sessions.clock = lambda: now[0]
    async with _client() as http:
        await _login(http, console.url, console.token(TokenRole.VIEWER))
        async with http.get(f"{console.url}/api/v1/cps") as api:
            assert api.status == 200
        now[0] += sessions.lifetime_s
        async with http.get(f"{console.url}/api/v1/cps") as api:
            assert api.status == 401
        async with http.get(f"{console.url}/", allow_redirects=False) as page:
            assert page.headers.get("Location") == "/login"


async def test_under_insecure_the_console_needs_no_login(tmp_path: Path) -> None:
    server = await start_console(tmp_path, CPS, secure=False)
    try:
        async with _client() as http:
            async with http.get(f"{server.url}/", allow_redirects=False) as page:
                assert page.status == 200
            async with http.get(f"{server.url}/api/v1/whoami") as who:
                assert {k: v for k, v in (await who.json()).items() if k != "may"} == {
                    "role": "admin",
                    "name": "anonymous",
                    "login": False,
                }
            async with http.get(f"{server.url}/login", allow_redirects=False) as form:
                assert (form.status, form.headers.get("Location")) == (303, "/")
    finally:
        await server.close()


def test_the_static_files_are_found_in_the_installed_package() -> None:
    # The files are served from the package (evproto.daemons.central, as installed), where the
    # wheel's package data (network/setup.cfg) puts them.
    installed = Path(evproto.daemons.central.__file__).resolve().parent / "web"
    assert WEB_DIR == installed
    for name in ("index.html", "app.js", "style.css", "login.html"):
        assert (installed / name).is_file(), name
    setup = (Path(__file__).resolve().parents[1] / "network" / "setup.cfg").read_text()
    assert "evproto.daemons.central = web/*" in setup


# -- the live stream -------------------------------------------------------------------------


async def test_the_stream_sends_a_snapshot_then_only_what_changed(console: ConsoleServer) -> None:
    async with _client() as http:
        await _login(http, console.url, console.token(TokenRole.VIEWER))
        async with http.get(f"{console.url}/api/v1/stream") as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            snapshot = await _event(stream)
            assert snapshot["type"] == "snapshot"
            assert {cp["id"]: cp["state"] for cp in snapshot["cps"]} == dict.fromkeys(
                ("CP001", "CP002", "CP003"), "ACTIVATED"
            )
            assert [look["state"] for look in snapshot["looks"]][:2] == ["ACTIVATED", "STOPPED"]
            await console.backend.stop("CP002", actor="test", source="test")
            diff = await _event(stream)
            assert diff["type"] == "diff"
            assert [(cp["id"], cp["state"]) for cp in diff["cps"]] == [("CP002", "STOPPED")]
            assert [m["text"] for m in diff["messages"]] == ["STOP sent to CP002"]
            await console.backend.remove_cp("CP003")
            diff = await _event(stream)
            assert diff["removed"] == ["CP003"] and "cps" not in diff


async def test_every_subscriber_gets_the_same_bytes_from_one_serialization() -> None:
    broadcaster = Broadcaster(CoreBackend(CPS))
    subscribers = [broadcaster.subscribe() for _ in range(20)]
    snapshots = [await s.take(0) for s in subscribers]
    assert all(len(s) == 1 for s in snapshots)
    before = broadcaster.serializations
    broadcaster.tick()
    assert broadcaster.serializations == before  # nothing changed: nothing sent
    await broadcaster.backend.stop("CP001", actor="test", source="test")  # type: ignore[attr-defined]
    broadcaster.tick()
    assert broadcaster.serializations == before + 1
    chunks = [await s.take(0) for s in subscribers]
    assert all(len(c) == 1 for c in chunks)
    assert all(c[0] is chunks[0][0] for c in chunks)  # one object, not 20 equal copies
    assert b'"state":"STOPPED"' in chunks[0][0] and b"CP002" not in chunks[0][0]


async def test_at_5000_cps_a_tick_carries_and_serializes_only_the_cp_that_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import evproto.daemons.central.stream as stream

    broadcaster = Broadcaster(CoreBackend([(f"CP{i:04d}", "Town", 0.3) for i in range(5000)]))
    sub = broadcaster.subscribe()
    (snapshot,) = await sub.take(0)
    first = json.loads(snapshot.split(b"data: ", 1)[1])
    assert [cp["state"] for cp in first["cps"]] == ["ACTIVATED"] * 5000
    dumped: list[Any] = []
    real_dumps = stream.orjson.dumps
    monkeypatch.setattr(stream.orjson, "dumps", lambda obj, *a: dumped.append(obj) or real_dumps(obj, *a))
    await broadcaster.backend.stop("CP4321", actor="test", source="test")  # type: ignore[attr-defined]
    broadcaster.tick()
    (diff,) = await sub.take(0)
    event = json.loads(diff.removeprefix(b"data: "))
    assert [cp["id"] for cp in event["cps"]] == ["CP4321"]
    assert [d["id"] for d in dumped if isinstance(d, dict) and "price_eur_kwh" in d] == ["CP4321"]


async def test_over_http_several_browsers_receive_identical_diffs_built_once(console: ConsoleServer) -> None:
    broadcaster = console.runner.app[BROADCASTER_KEY]
    token = console.token(TokenRole.VIEWER)
    async with _client(headers={"Authorization": f"Bearer {token}"}) as http:
        streams = [await http.get(f"{console.url}/api/v1/stream") for _ in range(3)]
        try:
            for s in streams:
                assert (await _event(s))["type"] == "snapshot"
            before = broadcaster.serializations
            await console.backend.stop("CP003", actor="test", source="test")
            blocks = [await asyncio.wait_for(s.content.readuntil(b"\n\n"), GUARD_S) for s in streams]
            assert blocks[0] == blocks[1] == blocks[2]
            assert b'"id":"CP003"' in blocks[0]
            assert broadcaster.serializations == before + 1
        finally:
            for s in streams:
                s.close()


async def test_a_slow_subscriber_is_dropped_and_never_holds_up_the_others() -> None:
    broadcaster = Broadcaster(CoreBackend(CPS), max_chunks=3)
    slow, fast = broadcaster.subscribe(), broadcaster.subscribe()
    await fast.take(0)
    for i in range(6):
        call = broadcaster.backend.stop if i % 2 == 0 else broadcaster.backend.resume  # type: ignore[attr-defined]
        await call("CP001", actor="test", source="test")
        broadcaster.tick()
        assert len(await fast.take(0)) == 1  # the reader that keeps up gets every diff
    assert slow.dropped and slow not in broadcaster.subscribers and broadcaster.dropped == 1
    assert await slow.take(0) == []  # nothing more is queued for it
    again = broadcaster.subscribe()  # the browser reconnects: a fresh snapshot
    (snapshot,) = await again.take(0)
    assert b'"type":"snapshot"' in snapshot


async def test_a_browser_that_stops_reading_is_dropped_while_central_keeps_serving(tmp_path: Path) -> None:
    # Enough CPs that the diffs fill the socket buffers of a client that never reads.
    cps = [(f"CP{i:04d}", "L" * 60 + str(i), 0.3) for i in range(3000)]
    server = await start_console(tmp_path, cps)
    broadcaster = server.runner.app[BROADCASTER_KEY]
    broadcaster.max_chunks = 4
    token = server.token(TokenRole.VIEWER)
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET /api/v1/stream HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    await writer.drain()
    try:
        async with _client(headers={"Authorization": f"Bearer {token}"}, read_bufsize=1 << 23) as http:
            async with http.get(f"{server.url}/api/v1/stream") as fast:
                await _event(fast)
                stop = True
                for _ in range(200):  # bounded: each round is one tick's diff of every CP
                    call = server.backend.stop if stop else server.backend.resume
                    await call(None, actor="test", source="test")
                    stop = not stop
                    event = await _event(fast)
                    assert event["type"] == "diff" and len(event["cps"]) == len(cps)
                    if broadcaster.dropped:
                        break
                assert broadcaster.dropped == 1 and len(broadcaster.subscribers) == 1
                await server.backend.stop("CP0001", actor="test", source="test")
                while True:  # the reader that keeps up still gets what changes
                    event = await _event(fast)
                    if any(cp["id"] == "CP0001" for cp in event.get("cps", ())):
                        break
    finally:
        writer.close()
        await server.close()


async def test_the_number_of_streams_is_bounded() -> None:
    broadcaster = Broadcaster(CoreBackend(CPS), max_subscribers=2)
    broadcaster.subscribe()
    broadcaster.subscribe()
    with pytest.raises(TooManySubscribers):
        broadcaster.subscribe()


async def test_an_open_stream_does_not_hold_up_stopping_the_server(tmp_path: Path) -> None:
    server = await start_console(tmp_path, CPS)
    token = server.token(TokenRole.VIEWER)
    async with _client(headers={"Authorization": f"Bearer {token}"}) as http:
        stream = await http.get(f"{server.url}/api/v1/stream")
        assert (await _event(stream))["type"] == "snapshot"
        # aiohttp would wait up to a minute for a handler still running: the stream must end first.
        await asyncio.wait_for(server.close(), GUARD_S)
        assert not server.runner.app[BROADCASTER_KEY].subscribers
        stream.close()


async def test_one_token_logging_in_again_and_again_cannot_push_out_other_sessions(tmp_path: Path) -> None:
    tokens = TokenStore(str(tmp_path / "tokens.db"))
    try:
        sessions = ConsoleSessions(tokens, api_prefix="/api/v1", max_sessions=10, max_per_token=3)
        _, operator = tokens.create(TokenRole.OPERATOR, "olga")
        _, flooder = tokens.create(TokenRole.VIEWER, "mallory")
        kept = sessions.open(operator)
        flood = [sessions.open(flooder) for _ in range(50)]
        assert sessions.principal(kept) == operator
        assert [sessions.principal(i) is not None for i in flood[-4:]] == [False, True, True, True]
        assert len(sessions) == 4
    finally:
        tokens.close()


async def test_one_owner_cannot_take_every_stream() -> None:
    broadcaster = Broadcaster(CoreBackend(CPS), max_subscribers=10, max_per_owner=2)
    broadcaster.subscribe("token:aaaa")
    broadcaster.subscribe("token:aaaa")
    with pytest.raises(TooManySubscribers):
        broadcaster.subscribe("token:aaaa")
    assert broadcaster.subscribe("token:bbbb").owner == "token:bbbb"
