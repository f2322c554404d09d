"""JSON over HTTP for our daemons (Central's API, the registry): one place for how an
answer and an error look, how a handler's exception becomes a status, and how a server
is started (plain or TLS).

Every answer is ``application/json``; every error is ``{"error": "..."}`` with its
status. An exception that carries ``http_status`` (see :class:`HttpError`) is answered
with that status and its message; anything else unexpected is a 500 that never carries
a traceback (it is logged instead). What fails before routing (a 10 kB URL, a broken
request line) is answered the same way, logged once per kind (rate-limited).
"""

from __future__ import annotations

import json
import logging
import ssl
from http import HTTPStatus
from typing import Any, Awaitable, Callable

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import LineTooLong

from evproto.errors import EvprotoError
from evproto.ratelog import RateLimitedLog

__all__ = [
    "HttpError",
    "BadRequest",
    "json_response",
    "error_response",
    "json_errors",
    "start_http",
    "stop_http",
    "read_json",
]

#: A request body larger than this is refused (413) before it is read.
MAX_BODY_BYTES = 64 * 1024


class HttpError(EvprotoError):
    """An error answered with ``http_status`` and its message as ``{"error": ...}``."""

    http_status = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers


class BadRequest(HttpError):
    """A query parameter or body that is not what the endpoint takes (400)."""

    http_status = 400


def _dumps(data: Any) -> str:
    # NaN/Infinity are not JSON: refuse them (a 500, logged) rather than emit invalid JSON.
    return json.dumps(data, allow_nan=False)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": message}, status=status, headers=headers)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body; BadRequest for anything else (size, type, syntax)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadRequest(f"body larger than {MAX_BODY_BYTES} bytes")
    if request.content_type != "application/json":
        raise BadRequest("the body must be application/json")
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def json_errors(log: logging.Logger) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware turning every error, including the router's 404/405, into a JSON answer."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if isinstance(exc, web.HTTPMethodNotAllowed):
                allowed = sorted(exc.allowed_methods)
                text = f"method {request.method} not allowed on {request.path} (allowed: {', '.join(allowed)})"
                return error_response(exc.status, text, headers={"Allow": ",".join(allowed)})
            if isinstance(exc, web.HTTPNotFound):
                return error_response(exc.status, f"no such endpoint: {request.method} {request.path}")
            if isinstance(exc, web.HTTPRequestEntityTooLarge):
                return error_response(exc.status, "request body too large")
            return error_response(exc.status, exc.reason)
        except Exception as exc:
            status = getattr(exc, "http_status", None)
            if isinstance(status, int) and 400 <= status < 600:
                return error_response(status, str(exc), headers=getattr(exc, "headers", None))
            log.exception("HTTP %s %s failed", request.method, request.path)
            return error_response(500, "internal error")

    return middleware


class _JsonErrorHandler(web_protocol.RequestHandler):
    """Answers what fails before routing as JSON like every other error, and logs one
    line for it (rate-limited), never a traceback: a peer sending garbage must not fill
    the log."""

    errors: RateLimitedLog

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        what = {400: "bad request", 413: "request too large", 431: "request headers too large"}.get(
            status, HTTPStatus(status).phrase.lower() if status in HTTPStatus._value2member_map_ else "error"
        )
        if isinstance(exc, LineTooLong):
            what = "request line or header too long"
        self.errors.log(
            logging.WARNING,
            f"HTTP {status} to {request.remote}: {what} ({type(exc).__name__})",
            key=f"http:{status}:{type(exc).__name__}",
        )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started: the connection is closed")
        resp = error_response(status, what)
        resp.force_close()
        return resp


class _JsonErrorServer(web.Server):
    errors: RateLimitedLog

    def __call__(self) -> web_protocol.RequestHandler:
        handler = _JsonErrorHandler(self, loop=self._loop, **self._kwargs)
        handler.errors = self.errors
        return handler


class _Runner(web.AppRunner):
    def __init__(self, app: web.Application, *, errors: RateLimitedLog, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._errors = errors

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same server, with our answer for requests that fail before routing. Checked by
        # tests/test_central_http.py (a 10 kB URL gets JSON), so an aiohttp change shows.
        server.__class__ = _JsonErrorServer
        server.errors = self._errors  # type: ignore[attr-defined]
        return server


async def start_http(
    app: web.Application,
    host: str,
    port: int,
    *,
    log: logging.Logger,
    tls: ssl.SSLContext | None = None,
    access_log: logging.Logger | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (port 0: a free one), over TLS when ``tls`` is given.

    Returns the runner (give it to :func:`stop_http`) and the port actually bound.
    Access logging is off unless ``access_log`` is given.
    """
    runner = _Runner(app, errors=RateLimitedLog(log), access_log=access_log, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=tls)
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
