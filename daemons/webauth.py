"""Who may call an HTTP endpoint: Bearer tokens with roles, and no cross-site requests.

One middleware for every HTTP server of the network (the registry, Central's API):

- ``Authorization: Bearer evp_...`` must name a live token (:mod:`daemons.tokens`):
  401 without one or with a bad one, 403 when its role does not grant what the
  endpoint needs. The principal is put on the request (``request[PRINCIPAL]``).
- An application that keeps browser sessions (``app[BROWSER_SESSIONS]``, Central's web
  console) also takes its session cookie, carrying the role of the token that logged in;
  a browser asking for a page without one is sent to the login page instead of a 401.
- A request that carries an ``Origin`` (a browser) must come from the server's own
  origin, and state-changing methods must send JSON: a page on another site cannot
  drive the API with a ``text/plain`` form POST (403, whatever the token).
- Refusals are audited (coalesced per source, so a flood writes a line a second).

Secrets never reach an answer, a log line or the audit log: the token is named by
its id only.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Protocol
from urllib.parse import urlsplit

from aiohttp import web

from .auditlog import AuditLog
from .tokens import Principal, TokenRole, TokenStore
from .webjson import HttpError

__all__ = [
    "PRINCIPAL",
    "BROWSER_SESSIONS",
    "BrowserSessions",
    "Unauthorized",
    "Forbidden",
    "token_auth",
    "foreign_origin",
    "stream_owner",
]

PRINCIPAL = web.RequestKey("evproto_principal", Principal)
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


class Unauthorized(HttpError):
    http_status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="evproto"'})


class Forbidden(HttpError):
    http_status = 403


class BrowserSessions(Protocol):
    """Sessions a browser holds by cookie after logging in with a token."""

    #: The cookie naming the session.
    cookie_name: str
    #: Where a browser without a session is sent.
    login_path: str

    def principal(self, session_id: str) -> Principal | None:
        """Who the live session ``session_id`` belongs to; None when it is unknown or over."""
        ...

    def wants_login_page(self, request: web.Request) -> bool:
        """Whether ``request`` is a browser's page load (redirected to the login page
        when refused) rather than an API call (answered 401)."""
        ...


#: Where an application keeps its :class:`BrowserSessions` (none: Bearer tokens only).
BROWSER_SESSIONS = web.AppKey("evproto_browser_sessions", BrowserSessions)


def foreign_origin(request: web.Request) -> str | None:
    """Why ``request`` comes from another site's page (its ``Origin`` is not this server), or None."""
    origin = request.headers.get("Origin")
    if origin is not None:
        parts = urlsplit(origin)
        if origin == "null" or parts.netloc.lower() != request.host.lower():
            return f"cross-origin request from {origin[:80]!r}"
    return None


def _cross_site(request: web.Request) -> str | None:
    problem = foreign_origin(request)
    if problem is not None:
        return problem
    if request.method in _UNSAFE and request.body_exists and request.content_type != "application/json":
        return "a state-changing request must send application/json"
    return None


def token_auth(
    tokens: TokenStore,
    needs: Callable[[web.Request], TokenRole | frozenset[TokenRole] | None],
    *,
    audit: AuditLog | None,
    service: str,
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: ``needs(request)`` says which role the endpoint needs, or a set of roles
    any one of which will do (None: open)."""

    def refuse(request: web.Request, exc: HttpError, actor: str) -> HttpError:
        if audit is not None:
            audit.record(
                actor=actor,
                source=request.remote or "",
                action=f"{service}:{request.method}",
                obj=request.path[:200],
                outcome="refused",
                coalesce=f"{request.remote}:{exc.http_status}",
                reason=str(exc),
                status=exc.http_status,
            )
        return exc

    def _authenticate(request: web.Request, sessions: BrowserSessions | None) -> Principal:
        # A Bearer header wins over a cookie: a script's explicit credentials are what it meant.
        header = request.headers.get("Authorization")
        if header is None and sessions is not None:
            session_id = request.cookies.get(sessions.cookie_name)
            if session_id:
                principal = sessions.principal(session_id)
                if principal is None:
                    raise Unauthorized("the console session is not valid or has expired: log in again")
                return principal
            raise Unauthorized("a Bearer token or a console session is required")
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("a Bearer token is required")
        principal = tokens.verify(token.strip())
        if principal is None:
            raise Unauthorized("the token is not valid")
        return principal

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        needed = needs(request)
        if needed is None:
            return await handler(request)
        problem = _cross_site(request)
        if problem is not None:
            raise refuse(request, Forbidden(problem), "anonymous")
        sessions = request.app.get(BROWSER_SESSIONS)
        try:
            principal = _authenticate(request, sessions)
        except Unauthorized as exc:
            refuse(request, exc, "anonymous")
            if sessions is not None and sessions.wants_login_page(request):
                raise web.HTTPSeeOther(sessions.login_path) from None
            raise
        wanted = needed if isinstance(needed, frozenset) else frozenset({needed})
        if not any(principal.may(role) for role in wanted):
            names = " or ".join(sorted(role.value for role in wanted))
            raise refuse(
                request, Forbidden(f"role {principal.role.value} may not do this (needs {names})"), principal.label
            )
        request[PRINCIPAL] = principal
        return await handler(request)

    return middleware


def stream_owner(request: web.Request) -> str:
    """Whom an open stream counts against: the token (through its session or Bearer), or the
    address under ``--insecure``. The live streams bound how many each may hold, so that one
    token or one address cannot take every slot."""
    principal = request.get(PRINCIPAL)
    return f"token:{principal.token_id}" if principal is not None else f"address:{request.remote or ''}"
