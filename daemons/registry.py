"""``ev-registry`` / ``EV_Registry``: registers charge points and issues their credentials.

Its own process, HTTPS REST (aiohttp), installer or admin tokens only:

=========  ==========================  ================================================
``POST``   ``/api/v1/cps``             ``{"id", "location"}`` -> 201 ``{"id", "location",
                                       "secret", "registered_at"}``: the secret is shown
                                       this once; 409 if the id is registered
``GET``    ``/api/v1/cps``             every registered CP (never a secret)
``GET``    ``/api/v1/cps/{id}``        one, 404 when not registered
``DELETE`` ``/api/v1/cps/{id}``        unregister: it can no longer authenticate
=========  ==========================  ================================================

It shares the network's database with Central (docs/security.md says why), writes the
``cp_credentials`` table and appends to the same audit log.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sys

import click
from aiohttp import web

from evproto import __version__
from evproto.auth import SCRYPT_DEFAULT
from evproto.idents import InvalidTextError

from .auditlog import AuditLog
from .common import EXIT_UNAVAILABLE, setup_logging, shutdown_event
from .credentials import AlreadyRegistered, CredentialStore
from .files import keep_files_private, write_ready_file
from .options import daemon_options
from .tokens import TokenRole, TokenStore
from .webauth import PRINCIPAL, token_auth
from .webjson import BadRequest, HttpError, json_errors, json_response, read_json, start_http

__all__ = ["make_app", "main"]

log = logging.getLogger("evproto.registry")
API = "/api/v1"
CREDS = web.AppKey("creds", CredentialStore)
AUDIT = web.AppKey("audit", AuditLog)


class NotRegistered(HttpError):
    http_status = 404


class Conflict(HttpError):
    http_status = 409


def _iso(ts_ms: object) -> str:
    from evproto.domain.central.view import iso_utc

    return iso_utc(int(ts_ms))  # type: ignore[call-overload]


def _public(row: dict[str, object]) -> dict[str, object]:
    return {
        "id": row["id"],
        "location": row["location"],
        "registered_at": _iso(row["registered_ts_ms"]),
        "registered_by": row["registered_by"],
    }


async def _register(request: web.Request) -> web.Response:
    body = await read_json(request)
    cp_id, location = body.get("id"), body.get("location")
    principal = request[PRINCIPAL]
    try:
        secret = await asyncio.to_thread(
            request.app[CREDS].register,
            cp_id,
            location,  # type: ignore[arg-type]
            by=principal.label,
        )
    except InvalidTextError as exc:
        raise BadRequest(str(exc)) from None
    except AlreadyRegistered as exc:
        request.app[AUDIT].record(
            actor=principal.label,
            source=request.remote or "",
            action="register",
            obj=f"cp:{cp_id}",
            outcome="refused",
            reason="already registered",
        )
        raise Conflict(str(exc)) from None
    request.app[AUDIT].record(
        actor=principal.label,
        source=request.remote or "",
        action="register",
        obj=f"cp:{cp_id}",
        outcome="ok",
        location=location,
    )
    log.info("registered %s at %s (by %s)", cp_id, location, principal.label)
    row = request.app[CREDS].get(str(cp_id))
    assert row is not None
    return json_response({**_public(row), "secret": secret}, status=201, headers={"Cache-Control": "no-store"})


async def _list(request: web.Request) -> web.Response:
    return json_response([_public(r) for r in request.app[CREDS].list()])


async def _one(request: web.Request) -> web.Response:
    row = request.app[CREDS].get(request.match_info["id"])
    if row is None:
        raise NotRegistered(f"{request.match_info['id'][:64]!r} is not registered")
    return json_response(_public(row))


async def _unregister(request: web.Request) -> web.Response:
    cp_id = request.match_info["id"]
    principal = request[PRINCIPAL]
    done = request.app[CREDS].unregister(cp_id)
    request.app[AUDIT].record(
        actor=principal.label,
        source=request.remote or "",
        action="unregister",
        obj=f"cp:{cp_id[:64]}",
        outcome="ok" if done else "refused",
        **({} if done else {"reason": "not registered"}),
    )
    if not done:
        raise NotRegistered(f"{cp_id[:64]!r} is not registered")
    log.info("unregistered %s (by %s)", cp_id, principal.label)
    return json_response({"ok": True, "unregistered": cp_id})


def make_app(creds: CredentialStore, tokens: TokenStore, audit: AuditLog) -> web.Application:
    """The registry's aiohttp application: every endpoint needs an installer (or admin) token."""
    app = web.Application(
        middlewares=[
            json_errors(log),
            token_auth(tokens, lambda request: TokenRole.INSTALLER, audit=audit, service="registry"),
        ],
        client_max_size=64 * 1024,
    )
    app[CREDS] = creds
    app[AUDIT] = audit
    app.router.add_post(f"{API}/cps", _register)
    app.router.add_get(f"{API}/cps", _list)
    app.router.add_get(f"{API}/cps/{{id}}", _one)
    app.router.add_delete(f"{API}/cps/{{id}}", _unregister)
    return app


async def _serve(app: web.Application, host: str, port: int, tls: object, ready_file: str | None) -> int:
    runner, actual = await start_http(app, host, port, log=log, tls=tls)  # type: ignore[arg-type]
    scheme = "https" if tls is not None else "http"
    log.info("registry up on %s://%s:%d%s", scheme, host, actual, API)
    write_ready_file(ready_file, role="registry", url=f"{scheme}://{host}:{actual}")
    try:
        await shutdown_event().wait()
    finally:
        await runner.cleanup()
    return 0


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--db",
    envvar="EVPROTO_DB",
    default="central.db",
    show_default=True,
    metavar="PATH",
    help="The network's database, shared with Central. [env EVPROTO_DB]",
)
@click.option(
    "--host",
    envvar="EVPROTO_REGISTRY_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. [env EVPROTO_REGISTRY_HOST]",
)
@click.option(
    "--port",
    envvar="EVPROTO_REGISTRY_PORT",
    type=click.IntRange(0, 65535),
    default=7443,
    show_default=True,
    help="HTTPS port (0: a free one). [env EVPROTO_REGISTRY_PORT]",
)
@click.option(
    "--cert",
    envvar="EVPROTO_REGISTRY_CERT",
    metavar="PEM",
    default=None,
    help="The registry's TLS certificate (chain). [env EVPROTO_REGISTRY_CERT]",
)
@click.option(
    "--key",
    envvar="EVPROTO_REGISTRY_KEY",
    metavar="PEM",
    default=None,
    help="Its private key. [env EVPROTO_REGISTRY_KEY]",
)
@click.option("--insecure", is_flag=True, help="Plain HTTP (release 1 style, only on a network you trust).")
@click.option(
    "--audit-log", metavar="PATH", default=None, help="The audit log shared with Central (default: DB.audit.jsonl)."
)
@click.option(
    "--scrypt-cost",
    type=click.IntRange(10, 17),
    default=SCRYPT_DEFAULT[0],
    show_default=True,
    metavar="LOG2N",
    help="scrypt cost of new credentials (N = 2^LOG2N, r=8, p=1).",
)
@daemon_options("Write a JSON file with the URL once up.")
@click.version_option(__version__, prog_name="ev-registry")
def main(
    db: str,
    host: str,
    port: int,
    cert: str | None,
    key: str | None,
    insecure: bool,
    audit_log: str | None,
    scrypt_cost: int,
    ready_file: str | None,
    log_format: str,
    log_level: str,
) -> None:
    """The registry (EV_Registry): registers charge points and issues their credentials.

    \b
    Tokens are made with ev-central on the same database:
      ev-central --db central.db tokens create --role installer --name alice
    Then:
      curl --cacert ca.pem -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
           -d '{"id": "CP001", "location": "Alicante"}' https://127.0.0.1:7443/api/v1/cps
    """
    keep_files_private()
    setup_logging("registry", level=log_level, fmt=log_format)
    if insecure:
        if cert or key:
            raise click.UsageError("--insecure serves plain HTTP: leave out --cert/--key")
        tls = None
        click.echo("ev-registry: WARNING: --insecure: plain HTTP, tokens and secrets travel in clear text", err=True)
    else:
        if not (cert and key):
            raise click.UsageError("HTTPS needs --cert and --key (or --insecure for plain HTTP)")
        from evproto.aio import tls_server_context
        from evproto.errors import TransportError

        try:
            tls = tls_server_context(cert=cert, key=key)
        except TransportError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        creds = CredentialStore(db, params=(scrypt_cost, SCRYPT_DEFAULT[1], SCRYPT_DEFAULT[2]))
        tokens = TokenStore(db)
        audit = AuditLog(audit_log or db + ".audit.jsonl")
    except Exception as exc:
        raise click.ClickException(f"cannot open database {db}: {exc}") from None
    app = make_app(creds, tokens, audit)
    try:
        sys.exit(asyncio.run(_serve(app, host, port, tls, ready_file)))
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        click.echo(f"ev-registry: cannot listen on {host}:{port}: {exc.strerror or os.strerror(exc.errno)}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    finally:
        creds.close()
        tokens.close()
        audit.close()


if __name__ == "__main__":
    main()
