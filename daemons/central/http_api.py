"""Central's JSON HTTP API: the pinned ``/api/v1`` endpoints over a small backend interface.

Pinned (other tools depend on them; docs/central.md):

========  ==========================  ==================================================
``GET``   ``/api/v1/cps``             list of :meth:`CpView.to_json` objects
``GET``   ``/api/v1/sessions``        list of :meth:`SessionView.to_json` objects; optional
                                      ``status``, ``cp_id``, ``driver_id``, ``limit``
``POST``  ``/api/v1/cps/{id}/stop``   ``{"ok": true, "cps": [id]}``; 404 for an unknown id
``POST``  ``/api/v1/cps/{id}/resume`` same
``POST``  ``/api/v1/cps/stop``        every CP: ``{"ok": true, "cps": [...]}``
``POST``  ``/api/v1/cps/resume``      same
``DELETE`` ``/api/v1/cps/{id}``       ``{"ok": true, "removed": id}``; 404 unknown, 409 supplying
``DELETE`` ``/api/v1/drivers/{id}``   same for a driver (409 while it has a supply in progress)
``GET``   ``/api/v1/drivers``         list of registered driver ids
``POST``  ``/api/v1/cps/{id}/revoke`` ``{"ok": true, "revoked": id}``: its keys stop working
``GET``   ``/api/v1/audit``           the newest audit log entries (admin); ``limit``
``POST``  ``/api/v1/weather``         ``{"location", "celsius"}`` (a number, or null: unknown)
                                      from the weather service -> ``{"ok": true, "cps": [...]}``
``GET``   ``/api/v1/weather``         every location: ``location``, ``celsius``, ``at``,
                                      ``cps``, ``stopped`` (viewer or the service role)
========  ==========================  ==================================================

The web console (daemons/central/console.py) is served from the same application: ``/``,
``/login``, ``/api/v1/whoami`` and the live ``/api/v1/stream``.

Under TLS (release 2) every call needs ``Authorization: Bearer`` with a token whose role
grants it (docs/security.md): 401 without, 403 for a role that does not.

Not pinned (the launcher draws the panel remotely with them): ``GET /api/v1/messages``,
``GET /api/v1/status``, ``GET /api/v1/requests`` and ``GET /api/v1/dead-letters`` (records
quarantined: where, why, size).

Every answer is ``application/json``; every error is ``{"error": "..."}`` with its status
(400 bad query, 404 unknown route, CP or driver, 405 wrong method, 409 not now, 500 internal
error). A 500
never carries a traceback: the exception is logged on the ``evproto.central`` logger.
"""

from __future__ import annotations

import logging
import re
import ssl
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import web

from evproto.daemons.auditlog import AuditLog
from evproto.daemons.central.console import OPEN_PATHS, add_console
from evproto.daemons.tokens import TokenRole, TokenStore
from evproto.daemons.webauth import PRINCIPAL, token_auth
from evproto.daemons.webjson import BadRequest, HttpError, json_errors, json_response, read_json, stop_http
from evproto.daemons.webjson import start_http as serve_json
from evproto.domain.central import UnknownCpError
from evproto.domain.central.view import CentralView, SessionView, iso_utc
from evproto.domain.session import SessionStatus

from .events_api import add_events_api
from .weather import weather_problem

__all__ = [
    "API_PREFIX",
    "SESSION_STATUSES",
    "DEFAULT_SESSIONS_LIMIT",
    "MAX_SESSIONS_LIMIT",
    "BACKEND_KEY",
    "CentralBackend",
    "Conflict",
    "make_app",
    "start_http",
    "stop_http",
]

log = logging.getLogger("evproto.central")

API_PREFIX = "/api/v1"

#: Session statuses accepted by ``GET /api/v1/sessions?status=`` (SessionStatus values, as
#: the Kafka events spell them).
SESSION_STATUSES = tuple(s.value for s in SessionStatus)

DEFAULT_SESSIONS_LIMIT = 500
#: A larger ``limit`` is clamped to this: one answer stays bounded.
MAX_SESSIONS_LIMIT = 10_000

_DIGITS = re.compile(r"[0-9]{1,9}")


class Conflict(HttpError):
    """The command cannot be carried out now (answered 409), e.g. removing a CP that is supplying."""

    http_status = 409


class CentralBackend(Protocol):
    """What the HTTP API needs from Central's core."""

    def view(self) -> CentralView:
        """The current snapshot."""
        ...

    def live_view(self) -> CentralView:
        """The snapshot without its counters, as the console's stream takes it several times a second."""
        ...

    def sessions(
        self,
        *,
        status: str | None = None,
        cp_id: str | None = None,
        driver_id: str | None = None,
        limit: int = DEFAULT_SESSIONS_LIMIT,
    ) -> list[SessionView]:
        """Sessions matching every given filter, at most ``limit`` of them."""
        ...

    def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        """The newest quarantined records: where, why, size (never their content)."""
        ...

    def drivers(self) -> list[str]:
        """Registered drivers' ids."""
        ...

    async def remove_cp(self, cp_id: str) -> None:
        """Unregister a CP. Raises :class:`UnknownCpError` or :class:`Conflict`."""
        ...

    async def remove_driver(self, driver_id: str) -> None:
        """Unregister a driver. Raises :class:`UnknownDriverError` or :class:`Conflict`."""
        ...

    async def stop(self, cp_id: str | None, *, actor: str, source: str) -> list[str]:
        """Send STOP to one CP (None: all); the affected CP ids. Raises :class:`UnknownCpError`."""
        ...

    async def resume(self, cp_id: str | None, *, actor: str, source: str) -> list[str]:
        """Send RESUME to one CP (None: all); the affected CP ids. Raises :class:`UnknownCpError`."""
        ...

    async def revoke(self, cp_id: str, *, actor: str, source: str) -> None:
        """Revoke a CP's keys. Raises :class:`UnknownCpError`, :class:`Conflict` (no keys: --insecure)."""
        ...

    def audit_entries(self, limit: int) -> list[dict[str, Any]]:
        """The newest audit log entries, oldest first."""
        ...

    async def weather(self, location: str, celsius: float | None, *, actor: str, source: str) -> list[str]:
        """The weather service's report for ``location`` (checked); the CP ids there."""
        ...

    def weather_view(self) -> list[dict[str, Any]]:
        """Every known location: last temperature, when, its CPs, stopped for the weather."""
        ...


#: Where :func:`make_app` keeps the backend in the application.
BACKEND_KEY = web.AppKey("evproto_central_backend", CentralBackend)


_json = json_response
_BadQuery = BadRequest


# -- handlers --------------------------------------------------------------------------------


def _backend(request: web.Request) -> CentralBackend:
    return request.app[BACKEND_KEY]


def _text_param(request: web.Request, name: str) -> str | None:
    # An empty value is the same as leaving the parameter out.
    value = request.query.get(name)
    return value or None


def _limit_param(request: web.Request) -> int:
    raw = request.query.get("limit")
    if not raw:
        return DEFAULT_SESSIONS_LIMIT
    if not _DIGITS.fullmatch(raw):
        if raw.isascii() and raw.isdigit():  # more than 9 digits: huge, clamp
            return MAX_SESSIONS_LIMIT
        raise _BadQuery(f"limit must be a non-negative integer, got {raw[:40]!r}")
    return min(int(raw), MAX_SESSIONS_LIMIT)


async def _get_cps(request: web.Request) -> web.Response:
    return _json([cp.to_json() for cp in _backend(request).view().cps])


async def _get_sessions(request: web.Request) -> web.Response:
    status = _text_param(request, "status")
    if status is not None and status not in SESSION_STATUSES:
        raise _BadQuery(f"status must be one of {', '.join(SESSION_STATUSES)}; got {status[:40]!r}")
    sessions = _backend(request).sessions(
        status=status,
        cp_id=_text_param(request, "cp_id"),
        driver_id=_text_param(request, "driver_id"),
        limit=_limit_param(request),
    )
    return _json([s.to_json() for s in sessions])


async def _get_messages(request: web.Request) -> web.Response:
    return _json([m.to_json() for m in _backend(request).view().messages])


async def _get_status(request: web.Request) -> web.Response:
    return _json(_backend(request).view().status_json())


async def _get_dead_letters(request: web.Request) -> web.Response:
    letters = _backend(request).dead_letters(min(_limit_param(request), 1000))
    return _json([{**{k: v for k, v in d.items() if k != "ts_ms"}, "at": iso_utc(d["ts_ms"])} for d in letters])


async def _get_requests(request: web.Request) -> web.Response:
    return _json([s.to_request_json() for s in _backend(request).view().requests])


async def _get_drivers(request: web.Request) -> web.Response:
    return _json(_backend(request).drivers())


async def _delete_cp(request: web.Request) -> web.Response:
    cp_id = request.match_info["id"]
    await _backend(request).remove_cp(cp_id)
    return _json({"ok": True, "removed": cp_id})


async def _delete_driver(request: web.Request) -> web.Response:
    driver_id = request.match_info["id"]
    await _backend(request).remove_driver(driver_id)
    return _json({"ok": True, "removed": driver_id})


def _who(request: web.Request) -> tuple[str, str]:
    principal = request.get(PRINCIPAL)
    return (principal.label if principal is not None else "anonymous"), (request.remote or "")


async def _post_revoke(request: web.Request) -> web.Response:
    cp_id = request.match_info["id"]
    actor, source = _who(request)
    await _backend(request).revoke(cp_id, actor=actor, source=source)
    return _json({"ok": True, "revoked": cp_id})


async def _get_audit(request: web.Request) -> web.Response:
    return _json(_backend(request).audit_entries(min(_limit_param(request), 10_000)))


async def _post_weather(request: web.Request) -> web.Response:
    body = await read_json(request)
    extra = sorted(set(body) - {"location", "celsius"})
    if extra or "celsius" not in body:
        raise BadRequest('the body must be {"location": str, "celsius": number or null}')
    location, celsius = body.get("location"), body["celsius"]
    problem = weather_problem(location, celsius)
    if problem is not None:
        raise BadRequest(problem)
    actor, source = _who(request)
    cps = await _backend(request).weather(location, celsius, actor=actor, source=source)  # type: ignore[arg-type]
    return _json({"ok": True, "cps": list(cps)})


async def _get_weather(request: web.Request) -> web.Response:
    return _json(_backend(request).weather_view())


def _command(action: str, *, one: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        cp_id = request.match_info["id"] if one else None
        backend = _backend(request)
        call = backend.stop if action == "stop" else backend.resume
        actor, source = _who(request)
        try:
            cps = await call(cp_id, actor=actor, source=source)
        except UnknownCpError:
            # The pinned wording names the id that was asked for.
            raise UnknownCpError(cp_id if cp_id is not None else "*") from None
        return _json({"ok": True, "cps": list(cps)})

    handler.__name__ = f"_post_{action}_{'one' if one else 'all'}"
    return handler


# -- application -----------------------------------------------------------------------------


#: Who may read the weather: people who may read, and the weather service (it learns the
#: CPs' locations there).
_WEATHER_READERS = frozenset({TokenRole.VIEWER, TokenRole.SERVICE})


#: Endpoint -> the token role it needs, or roles any of which will do (Central's API under
#: TLS; anyone under --insecure).
def _needed_role(request: web.Request) -> TokenRole | frozenset[TokenRole] | None:
    path = request.path
    if not path.startswith(API_PREFIX):
        # The console's pages; its login form (and the style sheet it uses) is open to all.
        return None if path in OPEN_PATHS else TokenRole.VIEWER
    if path == f"{API_PREFIX}/weather":
        return _WEATHER_READERS if request.method in ("GET", "HEAD") else TokenRole.SERVICE
    if path == f"{API_PREFIX}/audit":
        return TokenRole.ADMIN
    if request.method in ("GET", "HEAD"):
        return TokenRole.VIEWER
    if request.method == "DELETE":
        return TokenRole.ADMIN
    return TokenRole.OPERATOR


def make_app(
    backend: CentralBackend, *, tokens: TokenStore | None = None, audit: AuditLog | None = None
) -> web.Application:
    """The aiohttp application serving the ``/api/v1`` endpoints and the web console
    (daemons/central/console.py) from ``backend``; with ``tokens``, every call needs a
    Bearer token or a console session whose role grants it (reads: viewer; stop, resume,
    revoke: operator; removals and the audit log: admin)."""
    middlewares = [json_errors(log)]
    if tokens is not None:
        middlewares.append(token_auth(tokens, _needed_role, audit=audit, service="api"))
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)
    app[BACKEND_KEY] = backend
    p = API_PREFIX
    app.router.add_get(f"{p}/cps", _get_cps)
    app.router.add_get(f"{p}/sessions", _get_sessions)
    app.router.add_get(f"{p}/messages", _get_messages)
    app.router.add_get(f"{p}/status", _get_status)
    app.router.add_get(f"{p}/requests", _get_requests)
    app.router.add_get(f"{p}/dead-letters", _get_dead_letters)
    app.router.add_get(f"{p}/drivers", _get_drivers)
    app.router.add_delete(f"{p}/cps/{{id}}", _delete_cp)
    app.router.add_delete(f"{p}/drivers/{{id}}", _delete_driver)
    app.router.add_post(f"{p}/cps/{{id}}/revoke", _post_revoke)
    app.router.add_get(f"{p}/audit", _get_audit)
    app.router.add_get(f"{p}/weather", _get_weather)
    app.router.add_post(f"{p}/weather", _post_weather)
    for action in ("stop", "resume"):
        app.router.add_post(f"{p}/cps/{action}", _command(action, one=False))
        app.router.add_post(f"{p}/cps/{{id}}/{action}", _command(action, one=True))
    add_events_api(app, backend)  # /api/v1/events and its stream: the event inspector (events_api.py)
    add_console(app, backend, api_prefix=p, tokens=tokens, audit=audit)
    return app


async def start_http(
    backend: CentralBackend,
    host: str,
    port: int,
    *,
    access_log: logging.Logger | None = None,
    tls: ssl.SSLContext | None = None,
    tokens: TokenStore | None = None,
    audit: AuditLog | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve :func:`make_app` on ``host:port`` (port 0: a free one), over TLS when given.

    Returns the runner (give it to :func:`stop_http`) and the port actually bound.
    Access logging is off unless ``access_log`` is given: the launcher polls often.
    """
    return await serve_json(
        make_app(backend, tokens=tokens, audit=audit), host, port, log=log, access_log=access_log, tls=tls
    )
