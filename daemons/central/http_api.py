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
========  ==========================  ==================================================

Not pinned (the launcher draws the panel remotely with them): ``GET /api/v1/messages``,
``GET /api/v1/status``, ``GET /api/v1/requests`` and ``GET /api/v1/dead-letters`` (records
quarantined: where, why, size).

Every answer is ``application/json``; every error is ``{"error": "..."}`` with its status
(400 bad query, 404 unknown route, CP or driver, 405 wrong method, 409 not now, 500 internal
error). A 500
never carries a traceback: the exception is logged on the ``evproto.central`` logger.
"""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import LineTooLong

from evproto.errors import EvprotoError
from evproto.ratelog import RateLimitedLog
from evproto.daemons.central.view import CentralView, SessionView, iso_utc

__all__ = [
    "API_PREFIX",
    "SESSION_STATUSES",
    "DEFAULT_SESSIONS_LIMIT",
    "MAX_SESSIONS_LIMIT",
    "BACKEND_KEY",
    "CentralBackend",
    "UnknownCp",
    "UnknownDriver",
    "Conflict",
    "make_app",
    "start_http",
    "stop_http",
]

log = logging.getLogger("evproto.central")

API_PREFIX = "/api/v1"

#: Session statuses accepted by ``GET /api/v1/sessions?status=`` (same spelling as the
#: Kafka events' ``SESSION_STATUSES``).
SESSION_STATUSES = ("requested", "authorized", "supplying", "completed", "interrupted", "denied")

DEFAULT_SESSIONS_LIMIT = 500
#: A larger ``limit`` is clamped to this: one answer stays bounded.
MAX_SESSIONS_LIMIT = 10_000

_DIGITS = re.compile(r"[0-9]{1,9}")


class UnknownCp(EvprotoError, LookupError):
    """A command named a charge point Central does not know."""

    def __init__(self, cp_id: str) -> None:
        super().__init__(f"unknown charge point '{cp_id}'")
        self.cp_id = cp_id


class UnknownDriver(EvprotoError, LookupError):
    """A command named a driver Central does not know."""

    def __init__(self, driver_id: str) -> None:
        super().__init__(f"unknown driver '{driver_id}'")
        self.driver_id = driver_id


class Conflict(EvprotoError):
    """The command cannot be carried out now (answered 409), e.g. removing a CP that is supplying."""


class CentralBackend(Protocol):
    """What the HTTP API needs from Central's core."""

    def view(self) -> CentralView:
        """The current snapshot."""
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
        """Unregister a CP. Raises :class:`UnknownCp` or :class:`Conflict`."""
        ...

    async def remove_driver(self, driver_id: str) -> None:
        """Unregister a driver. Raises :class:`UnknownDriver` or :class:`Conflict`."""
        ...

    async def stop(self, cp_id: str | None) -> list[str]:
        """Send STOP to one CP (None: all); the affected CP ids. Raises :class:`UnknownCp`."""
        ...

    async def resume(self, cp_id: str | None) -> list[str]:
        """Send RESUME to one CP (None: all); the affected CP ids. Raises :class:`UnknownCp`."""
        ...


#: Where :func:`make_app` keeps the backend in the application.
BACKEND_KEY = web.AppKey("evproto_central_backend", CentralBackend)


def _dumps(data: Any) -> str:
    # NaN/Infinity are not JSON: refuse them (a 500, logged) rather than emit invalid JSON.
    return json.dumps(data, allow_nan=False)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"error": message}, status=status, headers=headers)


class _BadQuery(Exception):
    """A query parameter with a bad value (answered 400)."""


# -- middleware ------------------------------------------------------------------------------


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every error, including the router's 404/405, into a JSON answer."""
    try:
        return await handler(request)
    except _BadQuery as exc:
        return _error(400, str(exc))
    except (UnknownCp, UnknownDriver) as exc:
        return _error(404, str(exc))
    except Conflict as exc:
        return _error(409, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = sorted(exc.allowed_methods)
            text = (f"method {request.method} not allowed on {request.path}"
                    f" (allowed: {', '.join(allowed)})")
            return _error(exc.status, text, headers={"Allow": ",".join(allowed)})
        if isinstance(exc, web.HTTPNotFound):
            return _error(exc.status, f"no such endpoint: {request.method} {request.path}")
        return _error(exc.status, exc.reason)
    except Exception:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return _error(500, "internal error")


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
        raise _BadQuery(
            f"status must be one of {', '.join(SESSION_STATUSES)}; got {status[:40]!r}"
        )
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
    view = _backend(request).view()
    return _json(
        {
            "central_id": view.central_id,
            "listen": view.listen,
            "http": view.http,
            "kafka": view.kafka,
            "kafka_ok": view.kafka_ok,
            "now": iso_utc(view.now_ts_ms),
            "counters": dict(view.counters),
        }
    )


async def _get_dead_letters(request: web.Request) -> web.Response:
    letters = _backend(request).dead_letters(min(_limit_param(request), 1000))
    return _json([{**{k: v for k, v in d.items() if k != "ts_ms"}, "at": iso_utc(d["ts_ms"])} for d in letters])


def _request_json(session: SessionView) -> dict[str, Any]:
    return {**session.to_json(), "requested_at": iso_utc(session.requested_ts_ms)}


async def _get_requests(request: web.Request) -> web.Response:
    return _json([_request_json(s) for s in _backend(request).view().requests])


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


def _command(action: str, *, one: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        cp_id = request.match_info["id"] if one else None
        backend = _backend(request)
        call = backend.stop if action == "stop" else backend.resume
        try:
            cps = await call(cp_id)
        except UnknownCp:
            # The pinned wording names the id that was asked for.
            raise UnknownCp(cp_id if cp_id is not None else "*") from None
        return _json({"ok": True, "cps": list(cps)})

    handler.__name__ = f"_post_{action}_{'one' if one else 'all'}"
    return handler


# -- application -----------------------------------------------------------------------------


def make_app(backend: CentralBackend) -> web.Application:
    """The aiohttp application serving the ``/api/v1`` endpoints from ``backend``."""
    app = web.Application(middlewares=[_json_errors])
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
    for action in ("stop", "resume"):
        app.router.add_post(f"{p}/cps/{action}", _command(action, one=False))
        app.router.add_post(f"{p}/cps/{{id}}/{action}", _command(action, one=True))
    return app


_http_errors = RateLimitedLog(log)


class _JsonErrorHandler(web_protocol.RequestHandler):
    """Answers what fails before routing (a 10 kB URL, a 20 kB header, a broken request
    line) as JSON like every other error, and logs one line for it (rate-limited), never
    a traceback: a peer sending garbage must not fill the log."""

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        what = {400: "bad request", 413: "request too large", 431: "request headers too large"}.get(
            status, HTTPStatus(status).phrase.lower() if status in HTTPStatus._value2member_map_ else "error")
        if isinstance(exc, LineTooLong):
            what = "request line or header too long"
        _http_errors.log(logging.WARNING, f"HTTP {status} to {request.remote}: {what} ({type(exc).__name__})",
                         key=f"http:{status}:{type(exc).__name__}")
        if request.writer.output_size > 0:
            raise ConnectionError("response already started: the connection is closed")
        resp = _error(status, what)
        resp.force_close()
        return resp


class _JsonErrorServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same server, with our answer for requests that fail before routing. Checked by
        # tests/test_central_http.py (a 10 kB URL gets JSON), so an aiohttp change shows.
        server.__class__ = _JsonErrorServer
        return server


async def start_http(
    backend: CentralBackend,
    host: str,
    port: int,
    *,
    access_log: logging.Logger | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve :func:`make_app` on ``host:port`` (port 0: a free one).

    Returns the runner (give it to :func:`stop_http`) and the port actually bound.
    Access logging is off unless ``access_log`` is given: the launcher polls often.
    """
    runner = _Runner(make_app(backend), access_log=access_log, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    addresses = runner.addresses
    actual_port = int(addresses[0][1]) if addresses else port
    return runner, actual_port


async def stop_http(runner: web.AppRunner) -> None:
    """Stop serving: close the listening sockets and finish the requests in progress."""
    await runner.cleanup()
