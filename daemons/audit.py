"""Check a network's books: every supply billed once, bills equal what the engines metered.

Reads, without disturbing anything: Central's database (sessions, tickets, outbox),
every engine's state file (its ledger of finished supplies, the supply in progress,
its outbox) and every driver's state file. Used by ``evcharging audit``, by the chaos
test and by the soak benchmark. The invariants (docs/resilience.md):

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
from dataclasses import dataclass, field
from typing import Any

from .common import load_json

__all__ = ["AuditReport", "audit"]

_LIVE = ("requested", "authorized", "supplying")


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
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["ok"] = self.ok
        return d

    def text(self) -> str:
        lines = [
            f"sessions {self.sessions}, started {self.started}, tickets {self.tickets}",
            f"energy: tickets {self.ticket_energy_kwh:.6f} kWh, engines metered {self.metered_energy_kwh:.6f} kWh "
            f"over {self.engine_supplies} supplies",
            f"in progress: {len(self.live_sessions)} session(s), {self.undelivered_reports} report(s) not yet at Kafka, "
            f"{len(self.pending_drivers)} driver(s) waiting",
        ]
        lines += [f"VIOLATION: {v}" for v in self.violations] or ["all invariants hold"]
        return "\n".join(lines)


def audit(run_dir: str, *, quiesced: bool = True, cp_states: dict[str, str] | None = None) -> AuditReport:
    """Audit the network in ``run_dir``. ``quiesced``: the network is quiet, so anything still
    in progress counts as a violation. ``cp_states``: Central's view (GET /api/v1/cps), if known."""
    rep = AuditReport()
    db = sqlite3.connect(f"file:{os.path.join(run_dir, 'central', 'central.db')}?mode=ro", uri=True)
    try:
        sessions = db.execute(
            "SELECT id, cp_id, driver_id, request_id, status, started_ts_ms, energy_kwh FROM sessions").fetchall()
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
    cp_dir = os.path.join(run_dir, "cp")
    engines: dict[str, dict[str, Any]] = {}
    for cp_id in sorted(os.listdir(cp_dir)) if os.path.isdir(cp_dir) else []:
        state = load_json(os.path.join(cp_dir, cp_id, "engine-state", "engine-state.json")) or {}
        engines[cp_id] = state
        seen: set[tuple[str, Any]] = set()
        for entry in state.get("finished", []):
            key = ("request", entry["request_id"]) if entry.get("offline") else ("session", entry["session_id"])
            if key in seen:
                continue
            seen.add(key)
            rep.engine_supplies += 1
            rep.metered_energy_kwh += entry["energy_kwh"]
            session = by_request.get(entry["request_id"]) if entry.get("offline") else by_id.get(entry["session_id"])
            undelivered = any(json.loads(o["value"]).get("type") == "supply_finished"
                              and json.loads(o["value"]).get("request_id") == entry["request_id"]
                              for o in state.get("outbox", []))
            if session is None or session[0] not in tickets:
                if undelivered and not quiesced:
                    rep.undelivered_reports += 1
                    continue
                rep.violations.append(
                    f"{cp_id} metered {entry['energy_kwh']:.6f} kWh for {entry['driver_id']} "
                    f"(session {entry['session_id'] or 'offline'}) but Central billed nothing")
                continue
            billed = tickets[session[0]]
            if abs(billed - entry["energy_kwh"]) > 1e-9:
                rep.violations.append(f"session {session[0]}: {cp_id} metered {entry['energy_kwh']:.6f} kWh, "
                                      f"the ticket says {billed:.6f}")
        if quiesced and state.get("outbox"):
            rep.violations.append(f"{cp_id} still holds {len(state['outbox'])} event(s) Kafka never acknowledged")
    if abs(rep.ticket_energy_kwh - rep.metered_energy_kwh) > 1e-6 and not rep.undelivered_reports:
        rep.violations.append(f"tickets sum to {rep.ticket_energy_kwh:.6f} kWh, the engines metered "
                              f"{rep.metered_energy_kwh:.6f} kWh")
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
    drivers_dir = os.path.join(run_dir, "drivers")
    for driver_id in sorted(os.listdir(drivers_dir)) if os.path.isdir(drivers_dir) else []:
        state = load_json(os.path.join(drivers_dir, driver_id, "state", "driver-state.json")) or {}
        if state.get("pending"):
            rep.pending_drivers.append(driver_id)
            if quiesced:
                rep.violations.append(f"driver {driver_id} still waits for request {state['pending']['request_id'][:8]} "
                                      f"at {state['pending']['cp_id']}")
    return rep
