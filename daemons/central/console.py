"""The operator's web console on Central's HTTP server: its pages, login sessions and live stream.

- ``GET /`` the console (web/index.html, app.js, style.css: plain files shipped in the
  package, no build step); other files of web/ by name (``/events.html``...).
- ``GET /login`` a form; ``POST /login`` (form field ``token``) opens a server-side session
  named by an HttpOnly, SameSite=Strict cookie (Secure under TLS); ``POST /logout`` ends it.
  The auth middleware (daemons/webauth.py) takes the cookie as it takes a Bearer token,
  with the role of the token that logged in. Under ``--insecure`` (no token store) there
  is no login.
- ``GET /api/v1/whoami``: the caller's role and name (the page shows buttons by role).
- ``GET /api/v1/stream``: Server-Sent Events from one broadcaster (stream.py): a snapshot
  on connect, then every tick what changed, serialized once for every open console.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import re
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from aiohttp import web

from ..auditlog import AuditLog
from ..tokens import ROLE_GRANTS, Principal, TokenRole, TokenStore
from ..webauth import BROWSER_SESSIONS, PRINCIPAL, Forbidden, foreign_origin, stream_owner
from ..webjson import json_response
from .stream import KEEPALIVE, Broadcaster

if TYPE_CHECKING:
    from .http_api import CentralBackend

__all__ = [
    "WEB_DIR",
    "SESSION_COOKIE",
    "ConsoleSessions",
    "BROADCASTER_KEY",
    "SESSIONS_KEY",
    "OPEN_PATHS",
    "add_console",
]

#: The console's static files (shipped as package data of evproto.daemons.central).
WEB_DIR = Path(__file__).resolve().with_name("web")
SESSION_COOKIE = "evproto_console"
#: A file of web/ is served by its bare name only: no directories, no dot files.
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.(?:html|js|css|svg|png|ico|txt)")
#: What a page may load: only this server's own files, never framed.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    # "no-referrer" would make a browser send "Origin: null" with the login form, refused as foreign.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
#: Paths open without a session: the login form and the style sheet it uses.
OPEN_PATHS = frozenset({"/login", "/style.css"})


# -- sessions --------------------------------------------------------------------------------


class ConsoleSessions:
    """Logged-in browsers: session id -> principal, in memory, bounded in number and in age.

    A session ends at logout, after ``lifetime_s``, when its token is revoked, or when
    ``max_sessions`` newer ones push it out (the oldest goes first). One token holds at
    most ``max_per_token`` sessions, its own oldest going first: whoever holds one token
    cannot log in over and over to push everybody else's sessions out. Only a hash of
    the session id is kept: a memory dump names no live cookie.
    """

    cookie_name = SESSION_COOKIE
    login_path = "/login"

    def __init__(
        self,
        tokens: TokenStore,
        *,
        api_prefix: str,
        max_sessions: int = 1000,
        max_per_token: int = 20,
        lifetime_s: float = 8 * 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tokens = tokens
        self._api_prefix = api_prefix
        self.max_sessions = max_sessions
        self.max_per_token = max_per_token
        self.lifetime_s = lifetime_s
        #: Seconds, monotonic (a test moves it).
        self.clock = clock
        #: sha256(session id) -> (principal, expires at), oldest first.
        self._live: collections.OrderedDict[bytes, tuple[Principal, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._live)

    @staticmethod
    def _key(session_id: str) -> bytes:
        return hashlib.sha256(session_id.encode(errors="replace")).digest()

    def open(self, principal: Principal) -> str:
        """A new session for ``principal``: its id (the cookie's value)."""
        now = self.clock()
        self._purge(now)
        same = [k for k, (p, _) in self._live.items() if p.token_id == principal.token_id]
        for key in same[: max(0, len(same) - self.max_per_token + 1)]:
            del self._live[key]
        while len(self._live) >= self.max_sessions:
            self._live.popitem(last=False)
        session_id = secrets.token_urlsafe(32)
        self._live[self._key(session_id)] = (principal, now + self.lifetime_s)
        return session_id

    def principal(self, session_id: str) -> Principal | None:
        if len(session_id) > 100:
            return None
        key = self._key(session_id)
        entry = self._live.get(key)
        if entry is None:
            return None
        principal, expires = entry
        if self.clock() >= expires or not self._tokens.is_live(principal.token_id):
            del self._live[key]
            return None
        return principal

    def close(self, session_id: str) -> bool:
        """End a session (logout); whether it was live."""
        return self._live.pop(self._key(session_id), None) is not None

    def wants_login_page(self, request: web.Request) -> bool:
        return request.method in ("GET", "HEAD") and not request.path.startswith(self._api_prefix)

    def _purge(self, now: float) -> None:
        for key in [k for k, (_, expires) in self._live.items() if expires <= now]:
            del self._live[key]


# -- handlers --------------------------------------------------------------------------------

#: Where :func:`add_console` keeps its parts in the application.
BROADCASTER_KEY = web.AppKey("evproto_console_broadcaster", Broadcaster)
SESSIONS_KEY = web.AppKey("evproto_console_sessions", ConsoleSessions)
_TOKENS_KEY = web.AppKey("evproto_console_tokens", TokenStore)
_AUDIT_KEY = web.AppKey("evproto_console_audit", AuditLog)


def _file(name: str) -> web.StreamResponse:
    path = WEB_DIR / name
    if not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers=_PAGE_HEADERS)


async def _index(request: web.Request) -> web.StreamResponse:
    return _file("index.html")


async def _static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if not _FILE_NAME.fullmatch(name):
        raise web.HTTPNotFound()
    return _file(name)


_LOGIN_ERROR = '<p id="login-error" class="error" role="alert" hidden>'


def _login_page(error: str | None, status: int) -> web.Response:
    html = (WEB_DIR / "login.html").read_text(encoding="utf-8")
    if error is not None:
        # The message is ours (never the token or anything else the browser sent).
        html = html.replace(_LOGIN_ERROR, _LOGIN_ERROR.replace(" hidden>", ">") + error)
    return web.Response(text=html, status=status, content_type="text/html", headers=_PAGE_HEADERS)


async def _get_login(request: web.Request) -> web.StreamResponse:
    if _TOKENS_KEY not in request.app:
        raise web.HTTPSeeOther("/")  # --insecure: nothing to log in to
    return _login_page(None, 200)


def _audit_login(request: web.Request, actor: str, outcome: str, **details: Any) -> None:
    audit = request.app.get(_AUDIT_KEY)
    if audit is not None:
        audit.record(
            actor=actor,
            source=request.remote or "",
            action="console:login",
            obj="/login",
            outcome=outcome,
            coalesce=f"{request.remote}:login" if outcome != "ok" else None,
            **details,
        )


async def _post_login(request: web.Request) -> web.StreamResponse:
    tokens = request.app.get(_TOKENS_KEY)
    if tokens is None:
        raise web.HTTPSeeOther("/")
    # Open to anyone (that is the point of a login), but not from another site's page.
    problem = foreign_origin(request)
    if problem is not None:
        _audit_login(request, "anonymous", "refused", reason=problem)
        raise Forbidden(problem)
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return _login_page("Send the form.", 400)
    form = await request.post()
    token = form.get("token")
    principal = tokens.verify(token.strip()) if isinstance(token, str) else None
    if principal is None:
        _audit_login(request, "anonymous", "refused", reason="not a valid token")
        return _login_page("That token is not valid.", 401)
    if not principal.may(TokenRole.VIEWER):
        _audit_login(request, principal.label, "refused", reason=f"role {principal.role.value} may not view")
        return _login_page(f"A {principal.role.value} token cannot use the console.", 403)
    session_id = request.app[SESSIONS_KEY].open(principal)
    _audit_login(request, principal.label, "ok")
    resp = web.HTTPSeeOther("/")
    resp.set_cookie(SESSION_COOKIE, session_id, httponly=True, secure=request.secure, samesite="Strict", path="/")
    raise resp


async def _post_logout(request: web.Request) -> web.StreamResponse:
    sessions = request.app.get(SESSIONS_KEY)
    session_id = request.cookies.get(SESSION_COOKIE)
    if sessions is not None and session_id:
        sessions.close(session_id)
    resp = json_response({"ok": True})
    resp.del_cookie(SESSION_COOKIE, path="/", secure=request.secure, samesite="Strict", httponly=True)
    return resp


def _role_json(role: TokenRole, name: str, *, login: bool) -> dict[str, Any]:
    # "may": the roles whose rights it has (tokens.py ROLE_GRANTS), so the page needs no copy;
    # "login": whether there is a session to log out of (not under --insecure).
    return {"role": role.value, "name": name, "may": sorted(r.value for r in ROLE_GRANTS[role]), "login": login}


async def _whoami(request: web.Request) -> web.Response:
    principal = request.get(PRINCIPAL)
    if principal is None:  # --insecure: whoever reaches Central may do everything
        return json_response(_role_json(TokenRole.ADMIN, "anonymous", login=False))
    return json_response(_role_json(principal.role, principal.name, login=True))


def _still_allowed(request: web.Request) -> Callable[[], bool]:
    """Whether the credentials the stream was opened with still hold (checked now and then:
    a logout, an expiry or a revoked token ends an open stream too)."""
    tokens = request.app.get(_TOKENS_KEY)
    if tokens is None:
        return lambda: True
    header = request.headers.get("Authorization")
    if header is not None:
        token = header.partition(" ")[2].strip()
        return lambda: tokens.verify(token) is not None
    session_id = request.cookies.get(SESSION_COOKIE, "")
    sessions = request.app[SESSIONS_KEY]
    return lambda: sessions.principal(session_id) is not None


async def _stream(request: web.Request) -> web.StreamResponse:
    broadcaster = request.app[BROADCASTER_KEY]
    allowed = _still_allowed(request)
    sub = broadcaster.subscribe(stream_owner(request))
    try:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        await resp.prepare(request)
        sub.transport = request.transport
        checked = time.monotonic()
        while not sub.dropped:
            chunks = await sub.take(broadcaster.keepalive_s)
            if sub.dropped:
                break
            if time.monotonic() - checked >= broadcaster.keepalive_s:
                # A logout, an expiry or a revoked token ends an open stream too.
                if not allowed():
                    break
                checked = time.monotonic()
            for chunk in chunks or [KEEPALIVE]:
                await resp.write(chunk)
    except ConnectionError:
        pass  # the browser went away (or was dropped): it reconnects and gets a snapshot
    finally:
        broadcaster.unsubscribe(sub)
    return resp


async def _broadcast(app: web.Application) -> AsyncIterator[None]:
    broadcaster = app[BROADCASTER_KEY]
    task = asyncio.ensure_future(broadcaster.run())
    yield
    task.cancel()
    broadcaster.close_all()
    await asyncio.gather(task, return_exceptions=True)


async def _end_streams(app: web.Application) -> None:
    # Before the server waits for handlers to finish: open streams would hold it up.
    app[BROADCASTER_KEY].close_all()


def add_console(
    app: web.Application,
    backend: CentralBackend,
    *,
    api_prefix: str,
    tokens: TokenStore | None,
    audit: AuditLog | None = None,
    broadcaster: Broadcaster | None = None,
    sessions: ConsoleSessions | None = None,
) -> None:
    """Serve the console from ``app`` (Central's API application, before it starts).

    With ``tokens`` the pages need a session (or a Bearer token) except :data:`OPEN_PATHS`;
    the auth middleware finds the sessions in ``app[BROWSER_SESSIONS]``."""
    app[BROADCASTER_KEY] = broadcaster if broadcaster is not None else Broadcaster(backend)
    if tokens is not None:
        console_sessions = sessions if sessions is not None else ConsoleSessions(tokens, api_prefix=api_prefix)
        app[SESSIONS_KEY] = console_sessions
        app[BROWSER_SESSIONS] = console_sessions
        app[_TOKENS_KEY] = tokens
        if audit is not None:
            app[_AUDIT_KEY] = audit
    app.cleanup_ctx.append(_broadcast)
    app.on_shutdown.append(_end_streams)
    app.router.add_get("/", _index)
    app.router.add_get("/login", _get_login)
    app.router.add_post("/login", _post_login)
    app.router.add_post("/logout", _post_logout)
    app.router.add_get(f"{api_prefix}/whoami", _whoami)
    app.router.add_get(f"{api_prefix}/stream", _stream)
    app.router.add_get("/{name}", _static)
