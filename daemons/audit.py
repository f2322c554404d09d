"""Check a network's books: every supply billed once, bills equal what the engines metered.

Reads, without disturbing anything: Central's database (sessions, tickets, outbox),
every engine's state file (its ledger of finished supplies, the supply in progress,
its outbox) and every driver's state file. Where those are (:class:`AuditSources`):
a launcher's run directory, or files named one by one, for a network started by
hand across several hosts. Used by ``evcharging audit``, by the chaos test and by
the soak benchmark. The invariants (docs/resilience.md):

1. every session that started and ended has exactly one ticket, and no other session has one;
2. every supply an engine finished and reported has exactly one ticket, with the same energy,
   and the sum of ticket energy equals the sum the engines metered;
3. no CP is SUPPLYING at Central without a supply running at its engine;
4. no driver waits forever: once the network is quiet, no driver has a request pending.
"""

from __future__ import annotations

import json
import os
import sqlite3
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from evproto.errors import EvprotoError

from .files import StateFileError, load_json

__all__ = ["AuditReport", "AuditSourceError", "AuditSources", "audit", "audit_sources"]

_LIVE = ("requested", "authorized", "supplying")

#: The state file in an engine's and in a driver's ``--state-dir``.
ENGINE_STATE_FILE = "engine-state.json"
DRIVER_STATE_FILE = "driver-state.json"


class AuditSourceError(EvprotoError, ValueError):
    """A file named for the audit is missing, unreadable, or claims an id another file claims."""


@dataclass(frozen=True, kw_only=True)
class AuditSources:
    """Where a network's books are: Central's database, and the state file of each engine
    (by CP id) and of each driver (by driver id)."""

    db: str
    engines: dict[str, str] = field(default_factory=dict)
    drivers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_run_dir(cls, run_dir: str) -> AuditSources:
        """The layout ``evcharging up`` makes: RUN/central/central.db, RUN/cp/ID/engine-state/,
        RUN/drivers/ID/state/ (a state file not written yet counts as empty)."""
        cp_dir, drivers_dir = os.path.join(run_dir, "cp"), os.path.join(run_dir, "drivers")
        return cls(
            db=os.path.join(run_dir, "central", "central.db"),
            engines={
                cp_id: os.path.join(cp_dir, cp_id, "engine-state", ENGINE_STATE_FILE)
                for cp_id in (sorted(os.listdir(cp_dir)) if os.path.isdir(cp_dir) else [])
            },
            drivers={
                d: os.path.join(drivers_dir, d, "state", DRIVER_STATE_FILE)
                for d in (sorted(os.listdir(drivers_dir)) if os.path.isdir(drivers_dir) else [])
            },
        )

    @classmethod
    def from_paths(cls, db: str, engine_states: Sequence[str] = (), driver_states: Sequence[str] = ()) -> AuditSources:
        """Files gathered from anywhere, e.g. copied from several hosts. Each state path is a
        ``--state-dir`` or the state file in it; the ids are read from the files, so folders
        may be named anyhow."""
        if not os.path.isfile(db):
            raise AuditSourceError(f"{db}: no such database file")
        return cls(
            db=db,
            engines=_by_id(engine_states, ENGINE_STATE_FILE, "cp_id"),
            drivers=_by_id(driver_states, DRIVER_STATE_FILE, "driver_id"),
        )


def _state(path: str, rep: Any) -> dict[str, Any]:
    """A state file's object; an unreadable one is a violation, not a crash of the audit."""
    try:
        state = load_json(path) or {}
    except StateFileError as exc:
        rep.violations.append(str(exc))
        return {}
    if not isinstance(state, dict):
        rep.violations.append(f"{path} is not a state file (a JSON {type(state).__name__})")
        return {}
    return state


def _by_id(paths: Sequence[str], name: str, id_key: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in paths:
        file = os.path.join(path, name) if os.path.isdir(path) else path
        try:
            state = load_json(file)
        except (OSError, ValueError, StateFileError) as exc:
            raise AuditSourceError(f"{file}: cannot read it ({exc})") from None
        if state is None:
            raise AuditSourceError(f"{file}: no such file (is {path} a --state-dir?)")
        ident = state.get(id_key) if isinstance(state, dict) else None
        if not isinstance(ident, str) or not ident:
            raise AuditSourceError(f"{file}: no {id_key} in it: not a {name}")
        if ident in found and os.path.realpath(found[ident]) != os.path.realpath(file):
            raise AuditSourceError(f"{found[ident]} and {file} are both {ident}'s")
        found[ident] = file
    return found


@dataclass
class AuditReport:
    sessions: int = 0
    started: int = 0
    tickets: int = 0
    ticket_energy_kwh: float = 0.0
    metered_energy_kwh: float = 0.0
    engine_supplies: int = 0
    live_sessions: list[int] = field(default_factory=list)
    undelivered_reports: int = 0
    pending_drivers: list[str] = field(default_factory=list)
    #: What was read: engine and driver state files, and CP states from Central (None: not asked).
    engine_files: int = 0
    driver_files: int = 0
    cp_states_compared: int | None = None
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["ok"] = self.ok
        return d

    def text(self) -> str:
        compared = (
            "not compared with Central's (no --central-http, or no answer)"
            if self.cp_states_compared is None
            else f"{self.cp_states_compared} compared with Central's"
        )
        lines = [
            f"read: Central's database, {self.engine_files} engine state file(s), "
            f"{self.driver_files} driver state file(s); CP states {compared}",
            f"sessions {self.sessions}, started {self.started}, tickets {self.tickets}",
            f"energy: tickets {self.ticket_energy_kwh:.6f} kWh, engines metered {self.metered_energy_kwh:.6f} kWh "
            f"over {self.engine_supplies} supplies",
            f"in progress: {len(self.live_sessions)} session(s), "
            f"{self.undelivered_reports} report(s) not yet at Kafka, "
            f"{len(self.pending_drivers)} driver(s) waiting",
        ]
        lines += [f"VIOLATION: {v}" for v in self.violations] or ["all invariants hold"]
        return "\n".join(lines)


def audit(run_dir: str, *, quiesced: bool = True, cp_states: dict[str, str] | None = None) -> AuditReport:
    """Audit the network in launcher run directory ``run_dir`` (see :func:`audit_sources`)."""
    return audit_sources(AuditSources.from_run_dir(run_dir), quiesced=quiesced, cp_states=cp_states)


def cp_states_from(http: str, *, timeout_s: float = 3.0, token: str | None = None, tls: Any = None) -> dict[str, str]:
    """Central's CP states (``GET /api/v1/cps``) from its HTTP API at ``http`` (HOST:PORT or a URL),
    with a viewer ``token`` and the network's CA (``tls``) under release 2.
    Raises OSError (URLError) when Central does not answer."""
    base = http if "://" in http else f"{'https' if tls is not None else 'http'}://{http}"
    request = urllib.request.Request(f"{base.rstrip('/')}/api/v1/cps")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout_s, context=tls) as resp:
        return {c["id"]: c["state"] for c in json.load(resp)}


def audit_sources(
    sources: AuditSources, *, quiesced: bool = True, cp_states: dict[str, str] | None = None
) -> AuditReport:
    """Audit the books in ``sources``. ``quiesced``: the network is quiet, so anything still
    in progress counts as a violation. ``cp_states``: Central's view (GET /api/v1/cps), if known."""
    rep = AuditReport(cp_states_compared=None if cp_states is None else len(cp_states))
    db = sqlite3.connect(f"file:{urllib.request.pathname2url(os.path.abspath(sources.db))}?mode=ro", uri=True)
    try:
        sessions = db.execute(
            "SELECT id, cp_id, driver_id, request_id, status, started_ts_ms, energy_kwh FROM sessions"
        ).fetchall()
        tickets = {r[0]: r[1] for r in db.execute("SELECT session_id, energy_kwh FROM tickets")}
        central_outbox = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    finally:
        db.close()
    rep.sessions = len(sessions)
    rep.tickets = len(tickets)
    rep.ticket_energy_kwh = sum(tickets.values())
    by_request = {s[3]: s for s in sessions}
    by_id = {s[0]: s for s in sessions}
    for sid, cp_id, driver_id, _rid, status, started, _energy in sessions:
        if status in _LIVE:
            rep.live_sessions.append(sid)
            continue
        if started is not None and status in ("completed", "interrupted"):
            rep.started += 1
            if sid not in tickets:
                rep.violations.append(f"session {sid} ({driver_id} at {cp_id}) started and ended without a ticket")
        elif sid in tickets:
            rep.violations.append(f"session {sid} has a ticket but never started ({status})")

    # The engines' own records.
    engines: dict[str, dict[str, Any]] = {}
    for cp_id, path in sorted(sources.engines.items()):
        state = _state(path, rep)
        engines[cp_id] = state
        rep.engine_files += bool(state)
        seen: set[tuple[str, Any]] = set()
        for entry in state.get("finished", []):
            key = ("request", entry["request_id"]) if entry.get("offline") else ("session", entry["session_id"])
            if key in seen:
                continue
            seen.add(key)
            rep.engine_supplies += 1
            rep.metered_energy_kwh += entry["energy_kwh"]
            session = by_request.get(entry["request_id"]) if entry.get("offline") else by_id.get(entry["session_id"])
            undelivered = any(
                json.loads(o["value"]).get("type") == "supply_finished"
                and json.loads(o["value"]).get("request_id") == entry["request_id"]
                for o in state.get("outbox", [])
            )
            if session is None or session[0] not in tickets:
                if undelivered and not quiesced:
                    rep.undelivered_reports += 1
                    continue
                rep.violations.append(
                    f"{cp_id} metered {entry['energy_kwh']:.6f} kWh for {entry['driver_id']} "
                    f"(session {entry['session_id'] or 'offline'}) but Central billed nothing"
                )
                continue
            billed = tickets[session[0]]
            if abs(billed - entry["energy_kwh"]) > 1e-9:
                rep.violations.append(
                    f"session {session[0]}: {cp_id} metered {entry['energy_kwh']:.6f} kWh, the ticket says {billed:.6f}"
                )
        if quiesced and state.get("outbox"):
            rep.violations.append(f"{cp_id} still holds {len(state['outbox'])} event(s) Kafka never acknowledged")
    unread = sorted({by_id[sid][1] for sid in tickets if sid in by_id} - set(engines))
    if unread:  # their tickets cannot be checked against anything
        rep.violations.append(
            f"Central billed supplies at {', '.join(unread)} but no engine state file covers "
            "them (evcharging audit --engine-state)"
        )
    if abs(rep.ticket_energy_kwh - rep.metered_energy_kwh) > 1e-6 and not rep.undelivered_reports:
        rep.violations.append(
            f"tickets sum to {rep.ticket_energy_kwh:.6f} kWh, the engines metered {rep.metered_energy_kwh:.6f} kWh"
        )
    if quiesced and central_outbox:
        rep.violations.append(f"Central still owes the bus {central_outbox} event(s)")

    # Central's picture against the engines'.
    for cp_id, state in sorted((cp_states or {}).items()):
        phase = ((engines.get(cp_id) or {}).get("cp") or {}).get("phase")
        if state == "SUPPLYING" and phase != "supplying":
            rep.violations.append(f"Central shows {cp_id} SUPPLYING but its engine is {phase or 'unknown'}")
    if quiesced and rep.live_sessions:
        rep.violations.append(f"session(s) still in progress on a quiet network: {rep.live_sessions}")

    # Drivers.
    for driver_id, path in sorted(sources.drivers.items()):
        state = _state(path, rep)
        rep.driver_files += bool(state)
        if state.get("pending"):
            rep.pending_drivers.append(driver_id)
            if quiesced:
                rep.violations.append(
                    f"driver {driver_id} still waits for request {state['pending']['request_id'][:8]} "
                    f"at {state['pending']['cp_id']}"
                )
    return rep
