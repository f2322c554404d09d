"""``evcharging audit``: where the books are (a run directory, or files named one by one) and
how to ask Central for its CP states; the checks themselves are :mod:`evproto.daemons.audit`'s."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from .network import Unavailable, api_client
from .processes import Registry

if TYPE_CHECKING:
    from ..audit import AuditReport

__all__ = ["audit_network"]


def audit_network(
    *,
    run_dir: str,
    run_dir_given: bool,
    db: str | None,
    engine_states: Sequence[str],
    driver_states: Sequence[str],
    central_http: str | None,
    ca: str | None,
    token: str | None,
    in_progress: bool,
) -> AuditReport:
    """The audit report of a network started in ``run_dir``, or
    (with ``db``) of one started by hand. A wrong path is a usage error (exit 2), Central not
    answering at an address given on purpose exit 69: exit 1 is kept for violations."""
    from ..audit import AuditSourceError, AuditSources, audit_sources, cp_states_from

    asked_http = central_http is not None
    if db is None:
        if engine_states or driver_states:
            raise click.UsageError("--engine-state and --driver-state go with --db (Central's database)")
        reg = Registry(run_dir)
        sources = AuditSources.from_run_dir(reg.run_dir)
        if not os.path.isfile(sources.db):
            raise click.UsageError(
                f"no network in {reg.run_dir} (no {sources.db}); for a network not started "
                "by `evcharging up`: --db, --engine-state, --driver-state"
            )
        central_http = central_http or reg.meta.get("http")
        api_headers, api_tls = api_client(reg) if reg.meta.get("http") else ({}, None)
    else:
        api_headers = {"Authorization": f"Bearer {token}"} if token else {}
        api_tls = None
        if ca:
            from evproto.aio import tls_client_context

            api_tls = tls_client_context(ca=ca)
        if run_dir_given:
            raise click.UsageError("--run-dir or --db, not both")
        try:
            sources = AuditSources.from_paths(db, engine_states, driver_states)
        except AuditSourceError as exc:
            raise click.UsageError(str(exc)) from None
    states = None
    if central_http:
        try:
            token = api_headers.get("Authorization", "").removeprefix("Bearer ") or None
            states = cp_states_from(central_http, token=token, tls=api_tls)
        except (OSError, ValueError, KeyError) as exc:
            if asked_http:  # a run directory's own address may be gone with its network: then skip it
                raise Unavailable(f"--central-http {central_http}: no answer from Central ({exc})") from None
    return audit_sources(sources, quiesced=not in_progress, cp_states=states)
