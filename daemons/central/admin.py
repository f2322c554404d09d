"""``ev-central``'s registry and administration subcommands: drivers, cps, tokens, audit, certs.

They work on the database (and files beside it) directly, so they run whether
Central runs or not; a running Central takes in what they changed within a second.
"""

from __future__ import annotations

import os
import sys

import click

from evproto.idents import InvalidTextError

from ..auditlog import AuditLog, read_entries
from ..auditlog import verify as verify_audit
from ..tokens import TokenRole, TokenStore
from .store import Store

__all__ = ["drivers", "cps", "tokens", "audit_group", "certs", "open_store", "CLI_SETTINGS"]

CLI_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def open_store(db: str) -> Store:
    """Central's database, or a clear error for the command line (no traceback)."""
    try:
        return Store(db)
    except Exception as exc:  # a clear message, not a traceback
        raise click.ClickException(f"cannot open database {db}: {exc}") from None


@click.group(context_settings=CLI_SETTINGS)
def drivers() -> None:
    """Register and list drivers (only registered drivers are served)."""


@drivers.command("add")
@click.argument("ids", nargs=-1, required=True)
@click.option(
    "--credentials",
    "cred_dir",
    default=None,
    metavar="DIR",
    help="Also issue each driver a key and write it to DIR/ID.json (0600) for its app "
    "(ev-driver --credentials DIR/ID.json); issuing again replaces the old key.",
)
@click.pass_obj
def drivers_add(db: str, ids: tuple[str, ...], cred_dir: str | None) -> None:
    """Register one or more drivers."""
    # Keys first, then the drivers: a running Central that sees a new driver (it looks
    # once a second) already finds its key, so the driver's first request is opened.
    issued: list[str] = []
    if cred_dir:
        from pathlib import Path

        from ..credentials_file import write_driver_credentials
        from .keyring import KeyRing

        ring = KeyRing(db)
        try:
            for d in ids:
                grant = ring.issue_driver_key(d)
                path = write_driver_credentials(
                    Path(cred_dir) / f"{d}.json", d, grant.key_id, grant.key, ring.verify_bytes
                )
                _audit(db).record(
                    actor="cli", source="cli", action="key-issue", obj=f"driver:{d}", outcome="ok", key_id=grant.key_id
                )
                issued.append(f"{d}: credentials in {path}")
        finally:
            ring.close()
    store = open_store(db)
    for d in ids:
        click.echo(f"{d}: {'registered' if store.add_driver(d) else 'already registered'}")
    store.close()
    for line in issued:
        click.echo(line)


@drivers.command("remove")
@click.argument("ids", nargs=-1, required=True)
@click.pass_obj
def drivers_remove(db: str, ids: tuple[str, ...]) -> None:
    """Unregister drivers (their past sessions stay)."""
    store = open_store(db)
    for d in ids:
        click.echo(f"{d}: {'removed' if store.remove_driver(d) else 'was not registered'}")
    store.close()


@drivers.command("list")
@click.pass_obj
def drivers_list(db: str) -> None:
    """List registered drivers."""
    store = open_store(db)
    for d in store.drivers():
        click.echo(d)
    store.close()


@click.group(context_settings=CLI_SETTINGS)
def cps() -> None:
    """Register and list charge points (monitors can also register new ones themselves)."""


@cps.command("add")
@click.argument("cp_id")
@click.option("--location", required=True)
@click.option("--price", type=click.FloatRange(min=0, max=100), required=True, help="EUR/kWh")
@click.pass_obj
def cps_add(db: str, cp_id: str, location: str, price: float) -> None:
    """Register (or update) a charge point."""
    store = open_store(db)
    click.echo(f"{cp_id}: {'registered' if store.add_cp(cp_id, location, price) else 'updated'}")
    store.close()


@cps.command("remove")
@click.argument("ids", nargs=-1, required=True)
@click.pass_obj
def cps_remove(db: str, ids: tuple[str, ...]) -> None:
    """Unregister charge points (their past sessions stay). A running Central drops them
    within a second and closes their monitors' links; one with a supply in progress is refused."""
    store = open_store(db)
    failed = False
    for cp_id in ids:
        try:
            click.echo(f"{cp_id}: {'removed' if store.remove_cp(cp_id) else 'was not registered'}")
        except RuntimeError as exc:
            click.echo(f"{cp_id}: not removed: {exc}", err=True)
            failed = True
    store.close()
    if failed:
        sys.exit(1)


@cps.command("list")
@click.pass_obj
def cps_list(db: str) -> None:
    """List charge points: id, location, price, stopped."""
    store = open_store(db)
    for cp_id, location, price, stopped in store.cps():
        flag = "\tSTOPPED" if stopped else ""
        click.echo(f"{cp_id}\t{location}\t{price:.2f} EUR/kWh{flag}")
    store.close()


@click.group(context_settings=CLI_SETTINGS)
def tokens() -> None:
    """API tokens for people and services (shown once; only a hash is kept).

    \b
    Roles: viewer (read), operator (+ stop/resume, revoke CP keys), installer (the
    registry only), service (a machine client such as the weather service), admin (all,
    and the audit log).
    """


@tokens.command("create")
@click.option("--role", type=click.Choice([r.value for r in TokenRole]), required=True)
@click.option("--name", required=True, help="Who or what holds it (shown in the audit log).")
@click.pass_obj
def tokens_create(db: str, role: str, name: str) -> None:
    """Create a token and print it (this is the only time it is shown)."""
    store = _open_tokens(db)
    try:
        token, principal = store.create(TokenRole(role), name)
    except InvalidTextError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from None
    finally:
        store.close()
    _audit(db).record(actor="cli", source="cli", action="token-create", obj=principal.label, outcome="ok")
    click.echo(token)


@tokens.command("list")
@click.pass_obj
def tokens_list(db: str) -> None:
    """List tokens: id, role, name, created, revoked (never the token itself)."""
    from evproto.domain.central.view import iso_utc

    store = _open_tokens(db)
    for t in store.list():
        click.echo(
            f"{t['id']}\t{t['role']}\t{t['name']}\t{iso_utc(int(t['created_ts_ms']))}"  # type: ignore[call-overload]
            + ("\tREVOKED" if t["revoked"] else "")
        )
    store.close()


@tokens.command("revoke")
@click.argument("token_id")
@click.pass_obj
def tokens_revoke(db: str, token_id: str) -> None:
    """Revoke a token by its id (the 8 hex digits after ``evp_``); it stops working at once."""
    store = _open_tokens(db)
    done = store.revoke(token_id)
    store.close()
    _audit(db).record(
        actor="cli",
        source="cli",
        action="token-revoke",
        obj=f"tok {token_id[:16]}",
        outcome="ok" if done else "refused",
    )
    if not done:
        raise click.ClickException(f"no live token {token_id!r}")
    click.echo(f"{token_id}: revoked")


def _open_tokens(db: str) -> TokenStore:
    try:
        return TokenStore(db)
    except Exception as exc:
        raise click.ClickException(f"cannot open database {db}: {exc}") from None


def _audit(db: str) -> AuditLog:
    return AuditLog(db + ".audit.jsonl")


@click.group("audit", context_settings=CLI_SETTINGS)
def audit_group() -> None:
    """The security audit log (DB.audit.jsonl): hash-chained JSON lines."""


@audit_group.command("verify")
@click.option("--log", "path", default=None, metavar="PATH", help="The audit log (default: DB.audit.jsonl).")
@click.pass_obj
def audit_verify(db: str, path: str | None) -> None:
    """Check the chain: exit 0 and print its head when no line was edited, inserted or
    deleted; exit 1 naming the first line that breaks it."""
    path = path or db + ".audit.jsonl"
    if not os.path.exists(path):
        raise click.ClickException(f"no audit log at {path}")
    result = verify_audit(path)
    if not result.ok:
        click.echo(
            f"{path}: BROKEN at line {result.bad_line}: {result.reason} ({result.entries} entries verified before it)",
            err=True,
        )
        sys.exit(1)
    click.echo(f"{path}: OK, {result.entries} entries; head #{result.head_seq} {result.head_hash}")


@audit_group.command("show")
@click.option("--log", "path", default=None, metavar="PATH", help="The audit log (default: DB.audit.jsonl).")
@click.option("-n", "--lines", "limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.pass_obj
def audit_show(db: str, path: str | None, limit: int) -> None:
    """The newest entries, one per line: time, outcome, actor, source, action, object."""
    path = path or db + ".audit.jsonl"
    if not os.path.exists(path):
        raise click.ClickException(f"no audit log at {path}")
    for e in read_entries(path, limit=limit):
        click.echo(
            f"{e.get('ts')}  {e.get('outcome', ''):8} {e.get('actor')}  {e.get('source')}  "
            f"{e.get('action')}  {e.get('object')}"
        )


@click.command("certs", context_settings=CLI_SETTINGS)
@click.option(
    "--dir",
    "directory",
    required=True,
    metavar="DIR",
    help="Where the CA and the certificates go (created 0700; keys 0600). An existing CA there is reused.",
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    required=True,
    metavar="NAME|IP",
    help="A name or address clients use to reach the server (repeatable): Central and the registry, "
    "or with --cp the engine.",
)
@click.option(
    "--cp",
    "cp_ids",
    multiple=True,
    metavar="CP_ID",
    help="Instead: certificates for a CP whose monitor reaches its engine from another host "
    "(repeatable): engine-CP_ID (server, for --host) and monitor-CP_ID (client, names the CP).",
)
def certs(directory: str, hosts: tuple[str, ...], cp_ids: tuple[str, ...]) -> None:
    """Make the network's CA (once) and certificates for Central and the registry.

    \b
    Copy DIR/ca.pem to every host that reaches Central (monitors: --ca) or the
    registry (curl --cacert); the .key files stay on Central's host.
      ev-central certs --dir pki --host 192.168.1.20 --host central.example

    \b
    A monitor on another host than its engine talks to it over mutual TLS:
      ev-central certs --dir pki --host 192.168.1.31 --cp CP001
      evcp-engine --listen 'tls://0.0.0.0:7100?cert=engine-CP001.pem&key=engine-CP001.key&ca=ca.pem' ...
      evcp-monitor --engine 'tls://192.168.1.31:7100?ca=ca.pem&cert=monitor-CP001.pem&key=monitor-CP001.key' ...
    """
    from evproto.idents import id_problem

    from ..pki import CertificateAuthority

    for cp_id in cp_ids:
        problem = id_problem(cp_id) or (
            "it names a file here: no '/' or '\\'" if "/" in cp_id or "\\" in cp_id else None
        )
        if problem is not None:
            raise click.BadParameter(f"{cp_id!r}: {problem}", param_hint="--cp")
    ca = CertificateAuthority.ensure(directory, name="evcharging network CA")
    click.echo(f"CA: {ca.cert_path}")
    if cp_ids:
        for cp_id in cp_ids:
            engine = ca.issue(cp_id, directory, hosts=tuple(hosts), stem=f"engine-{cp_id}")
            monitor = ca.issue(cp_id, directory, client=True, stem=f"monitor-{cp_id}")
            click.echo(
                f"{cp_id}: engine {engine.cert} (key {engine.key}), valid for {', '.join(hosts)}; "
                f"monitor {monitor.cert} (key {monitor.key})"
            )
        return
    for name in ("central", "registry"):
        issued = ca.issue(name, directory, hosts=tuple(hosts))
        click.echo(f"{name}: {issued.cert} (key {issued.key}), valid for {', '.join(hosts)}")
