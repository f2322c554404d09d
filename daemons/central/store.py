"""Central's SQLite database (WAL): CPs, drivers, sessions, tickets, Kafka offsets, outbox.

One transaction applies a batch of core effects together with the Kafka offsets
that produced them and the durable events they publish (the outbox). After a
crash Central therefore resumes exactly where its database says: nothing it
decided is lost, nothing is decided twice, and every durable event it owed is
still in the outbox, to be sent again (readers de-duplicate by session id).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Iterable, NamedTuple

from evproto.bus.events import encode_event
from evproto.domain.central import (
    CpRecord,
    Effect,
    Forget,
    Publish,
    SaveCp,
    SaveSession,
    SessionRecord,
)
from evproto.domain.central.view import SessionView
from evproto.domain.events import Ticket
from evproto.domain.session import SessionStatus

from ..quarantine import DeadLetter

__all__ = ["Store", "OutboxRow", "Loaded", "Position", "MAX_DEAD_LETTERS"]

SCHEMA_VERSION = 4
#: Ended sessions reloaded at start-up (duplicate requests, late CP reports).
RECENT_SESSIONS = 5000
#: Dead letters kept (the oldest are dropped); each keeps at most MAX_KEPT_BYTES of its value.
MAX_DEAD_LETTERS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS drivers (
    id TEXT PRIMARY KEY,
    registered_ts_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cps (
    id TEXT PRIMARY KEY,
    location TEXT NOT NULL,
    price_eur_kwh REAL NOT NULL,
    stopped INTEGER NOT NULL DEFAULT 0,
    registered_ts_ms INTEGER NOT NULL,
    weather_stopped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    cp_id TEXT NOT NULL,
    driver_id TEXT NOT NULL,
    request_id TEXT NOT NULL UNIQUE,
    origin TEXT NOT NULL,
    status TEXT NOT NULL,
    requested_ts_ms INTEGER NOT NULL,
    price_eur_kwh REAL NOT NULL,
    deadline_ts_ms INTEGER NOT NULL,
    target_energy_kwh REAL,
    target_duration_s REAL,
    authorized_ts_ms INTEGER,
    started_ts_ms INTEGER,
    ended_ts_ms INTEGER,
    energy_kwh REAL NOT NULL DEFAULT 0,
    amount_eur REAL NOT NULL DEFAULT 0,
    end_reason TEXT,
    ocmf_begin TEXT NOT NULL DEFAULT '',
    ocmf_end TEXT NOT NULL DEFAULT '',
    meter_public_key TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS sessions_status ON sessions(status);
CREATE TABLE IF NOT EXISTS tickets (
    session_id INTEGER PRIMARY KEY REFERENCES sessions(id),
    driver_id TEXT NOT NULL,
    cp_id TEXT NOT NULL,
    energy_kwh REAL NOT NULL,
    amount_eur REAL NOT NULL,
    issued_ts_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    topic_id TEXT,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    created_ts_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS record_counters (
    slot TEXT PRIMARY KEY,
    counter INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    key TEXT,
    reason TEXT NOT NULL,
    size INTEGER NOT NULL,
    value BLOB
);
"""

_SESSION_COLUMNS = (
    "id",
    "cp_id",
    "driver_id",
    "request_id",
    "origin",
    "status",
    "requested_ts_ms",
    "price_eur_kwh",
    "deadline_ts_ms",
    "target_energy_kwh",
    "target_duration_s",
    "authorized_ts_ms",
    "started_ts_ms",
    "ended_ts_ms",
    "energy_kwh",
    "amount_eur",
    "end_reason",
    "ocmf_begin",
    "ocmf_end",
    "meter_public_key",
)


class Position(NamedTuple):
    """Where Central reads a partition next, and the log that offset belongs to.

    ``topic_id`` None: not known (a database from before topic ids were stored),
    so only the log's end can tell a replaced log.
    """

    offset: int
    topic_id: str | None = None


def _add_weather_stopped(db: sqlite3.Connection) -> None:
    # A database from before CPs were kept may have no cps table yet: the schema makes it whole.
    if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='cps'").fetchone():
        db.execute("ALTER TABLE cps ADD COLUMN weather_stopped INTEGER NOT NULL DEFAULT 0")


def _add_signed_meter(db: sqlite3.Connection) -> None:
    # The sessions table may be missing in a very old database: the schema then makes it whole.
    if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='sessions'").fetchone():
        for column in ("ocmf_begin", "ocmf_end", "meter_public_key"):
            db.execute(f"ALTER TABLE sessions ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")


# Schema changes, each from the version before it: (version reached, statements or steps).
_MIGRATIONS: tuple[tuple[int, tuple[str | Callable[[sqlite3.Connection], None], ...]], ...] = (
    # 2: each offset names its log, so a restart can tell the same log from a new one.
    (2, ("ALTER TABLE offsets ADD COLUMN topic_id TEXT",)),
    # 3: a CP stopped for the weather stays stopped across a restart of Central.
    (3, (_add_weather_stopped,)),
    # 4: a session keeps its meter's signed begin/end readings (OCMF) and the meter's key.
    (4, (_add_signed_meter,)),
)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A durable event Central owes the bus (``topic`` is the logical Topic value)."""

    id: int
    topic: str
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Loaded:
    """Everything Central rebuilds itself from at start-up."""

    cps: list[CpRecord]
    drivers: set[str]
    live_sessions: list[SessionRecord]
    next_session_id: int
    offsets: dict[tuple[str, int], Position]


def _now_ms() -> int:
    return int(time.time() * 1000)


class Store:
    """The database; every method is a short synchronous transaction."""

    def __init__(self, path: str) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not os.path.exists(path):  # private from its first byte, whatever the umask
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        row = self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        found = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() if row else None
        if found is not None and int(found[0]) < SCHEMA_VERSION:
            self._migrate(int(found[0]))
        self._db.executescript(_SCHEMA)
        self._data_version = -1  # the first look counts as a change
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError(f"{path}: database schema {row[0]}, this Central expects {SCHEMA_VERSION}")

    def _migrate(self, version: int) -> None:
        """Bring a database of an older schema up to this one, one transaction per step."""
        for reached, statements in _MIGRATIONS:
            if reached <= version:
                continue
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for step in statements:
                    if isinstance(step, str):
                        self._db.execute(step)
                    else:
                        step(self._db)
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(reached),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._db.close()

    def changed_elsewhere(self) -> bool:
        """True when another connection (the command line) committed since the last call.

        SQLite's data_version moves only for other connections' commits, so Central's
        own writes never make it look."""
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        changed = version != self._data_version
        self._data_version = version
        return changed

    # -- registry (operators' CLI) ---------------------------------------------------------

    def add_driver(self, driver_id: str) -> bool:
        """Register a driver; False when it already was."""
        cur = self._db.execute("INSERT OR IGNORE INTO drivers VALUES (?, ?)", (driver_id, _now_ms()))
        return cur.rowcount == 1

    def remove_driver(self, driver_id: str) -> bool:
        return self._db.execute("DELETE FROM drivers WHERE id = ?", (driver_id,)).rowcount == 1

    def add_cp(self, cp_id: str, location: str, price_eur_kwh: float) -> bool:
        """Register (or update) a CP; True when it was new."""
        existed = self._db.execute("SELECT 1 FROM cps WHERE id = ?", (cp_id,)).fetchone() is not None
        self._db.execute(
            "INSERT INTO cps (id, location, price_eur_kwh, registered_ts_ms) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET location = excluded.location, price_eur_kwh = excluded.price_eur_kwh",
            (cp_id, location, price_eur_kwh, _now_ms()),
        )
        return not existed

    def remove_cp(self, cp_id: str) -> bool:
        """Unregister a CP (command line); its sessions stay. RuntimeError while it has a live session."""
        live = [st.value for st in SessionStatus if st.live]
        busy = self._db.execute(
            f"SELECT id FROM sessions WHERE cp_id = ? AND status IN ({','.join('?' * len(live))})", (cp_id, *live)
        ).fetchone()
        if busy is not None:
            raise RuntimeError(f"{cp_id} has session {busy[0]} in progress; stop it first")
        return self._db.execute("DELETE FROM cps WHERE id = ?", (cp_id,)).rowcount == 1

    def drivers(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT id FROM drivers ORDER BY id")]

    def cps(self) -> list[tuple[str, str, float, bool]]:
        return [
            (r[0], r[1], r[2], bool(r[3]))
            for r in self._db.execute("SELECT id, location, price_eur_kwh, stopped FROM cps ORDER BY id")
        ]

    # -- start-up --------------------------------------------------------------------------

    def load(self) -> Loaded:
        cps = [
            CpRecord(id=r[0], location=r[1], price_eur_kwh=r[2], stopped=bool(r[3]), weather_stopped=bool(r[4]))
            for r in self._db.execute("SELECT id, location, price_eur_kwh, stopped, weather_stopped FROM cps")
        ]
        drivers = {r[0] for r in self._db.execute("SELECT id FROM drivers")}
        live = [s.value for s in SessionStatus if s.live]
        cols = ", ".join(f"s.{c}" for c in _SESSION_COLUMNS)
        rows = self._db.execute(
            f"SELECT {cols}, t.session_id IS NOT NULL FROM sessions s LEFT JOIN tickets t ON t.session_id = s.id "
            f"WHERE s.status IN ({','.join('?' * len(live))}) "
            "OR s.id > (SELECT COALESCE(MAX(id), 0) FROM sessions) - ?",
            [*live, RECENT_SESSIONS],
        ).fetchall()
        sessions = [self._session(r[:-1], ticketed=bool(r[-1])) for r in rows]
        (max_id,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM sessions").fetchone()
        offsets = {
            (r[0], r[1]): Position(r[2], r[3])
            for r in self._db.execute("SELECT topic, partition, next_offset, topic_id FROM offsets")
        }
        return Loaded(cps, drivers, sessions, max_id + 1, offsets)

    @staticmethod
    def _session(r: tuple, *, ticketed: bool = False) -> SessionRecord:
        d = dict(zip(_SESSION_COLUMNS, r))
        d["status"] = SessionStatus(d["status"])
        return SessionRecord(**d, ticketed=ticketed)

    # -- the hot path ----------------------------------------------------------------------

    def apply(
        self,
        effects: Iterable[Effect],
        offsets: dict[tuple[str, int], Position | int] | None = None,
        dead: Iterable[DeadLetter] = (),
        counters: dict[str, int] | None = None,
    ) -> list[OutboxRow]:
        """Apply saves, queue durable publishes, keep dead letters and record offsets (and
        the sealed records' counters read up to them: the replay window), all in one
        transaction (nothing at all when there is nothing to write).

        Returns the outbox rows just added, for the caller to send right away.
        """
        effects = [fx for fx in effects if not isinstance(fx, Publish) or fx.durable]
        effects = [fx for fx in effects if isinstance(fx, (SaveCp, SaveSession, Publish, Forget))]
        dead = list(dead)
        if not effects and not offsets and not dead and not counters:
            return []
        now = _now_ms()
        added: list[OutboxRow] = []
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for fx in effects:
                if isinstance(fx, SaveSession):
                    s = fx.record
                    values = [getattr(s, c) for c in _SESSION_COLUMNS]
                    values[_SESSION_COLUMNS.index("status")] = s.status.value
                    # An upsert by id: a clash on request_id raises instead of deleting a session.
                    db.execute(
                        f"INSERT INTO sessions ({', '.join(_SESSION_COLUMNS)}) "
                        f"VALUES ({', '.join('?' * len(_SESSION_COLUMNS))}) ON CONFLICT(id) DO UPDATE SET "
                        + ", ".join(f"{c} = excluded.{c}" for c in _SESSION_COLUMNS[1:]),
                        values,
                    )
                elif isinstance(fx, SaveCp):
                    c = fx.record
                    db.execute(
                        "INSERT INTO cps (id, location, price_eur_kwh, stopped, registered_ts_ms, weather_stopped) "
                        "VALUES (?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET location = excluded.location, "
                        "price_eur_kwh = excluded.price_eur_kwh, stopped = excluded.stopped, "
                        "weather_stopped = excluded.weather_stopped",
                        (c.id, c.location, c.price_eur_kwh, int(c.stopped), now, int(c.weather_stopped)),
                    )
                elif isinstance(fx, Forget):
                    if fx.cp_id is not None:
                        db.execute("DELETE FROM cps WHERE id = ?", (fx.cp_id,))
                    if fx.driver_id is not None:
                        db.execute("DELETE FROM drivers WHERE id = ?", (fx.driver_id,))
                elif isinstance(fx, Publish) and fx.durable:
                    value = encode_event(fx.event)
                    if isinstance(fx.event, Ticket):
                        t = fx.event
                        db.execute(
                            "INSERT INTO tickets VALUES (?, ?, ?, ?, ?, ?)",
                            (t.session_id, t.driver_id, t.cp_id, t.energy_kwh, t.amount_eur, now),
                        )
                    cur = db.execute(
                        "INSERT INTO outbox (topic, key, value, created_ts_ms) VALUES (?, ?, ?, ?)",
                        (fx.topic.value, fx.key, value, now),
                    )
                    added.append(OutboxRow(int(cur.lastrowid or 0), fx.topic.value, fx.key, value))
            if dead:
                self._keep_dead(dead)
            if counters:
                db.executemany(
                    "INSERT INTO record_counters VALUES (?, ?) ON CONFLICT(slot) DO UPDATE SET "
                    "counter = MAX(counter, excluded.counter)",
                    list(counters.items()),
                )
            for (topic, partition), pos in (offsets or {}).items():
                # A bare offset keeps the log's id as stored; a Position names the log.
                nxt, topic_id = (pos, None) if isinstance(pos, int) else pos
                db.execute(
                    "INSERT INTO offsets VALUES (?, ?, ?, ?) ON CONFLICT(topic, partition) DO UPDATE SET "
                    "next_offset = excluded.next_offset, topic_id = COALESCE(excluded.topic_id, topic_id)",
                    (topic, partition, nxt, topic_id),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return added

    def forget_counters(self, live_key_ids: set[str]) -> int:
        """Drop the replay counters of keys that no longer exist (``slot`` is ``topic|key id``)."""
        stale = [
            slot
            for (slot,) in self._db.execute("SELECT slot FROM record_counters")
            if slot.split("|", 1)[-1] not in live_key_ids
        ]
        if stale:
            self._db.executemany("DELETE FROM record_counters WHERE slot = ?", [(x,) for x in stale])
        return len(stale)

    def record_counters(self) -> dict[str, int]:
        """The replay window as stored with the offsets."""
        return {slot: counter for slot, counter in self._db.execute("SELECT slot, counter FROM record_counters")}

    def _keep_dead(self, dead: list[DeadLetter]) -> None:
        db = self._db
        cur = None
        for d in dead:
            cur = db.execute(
                "INSERT INTO dead_letters (ts_ms, topic, partition, offset, key, reason, size, value) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (d.ts_ms, d.topic, d.partition, d.offset, d.key, d.reason, d.size, d.kept),
            )
        if cur is not None and cur.lastrowid and cur.lastrowid > MAX_DEAD_LETTERS:
            db.execute("DELETE FROM dead_letters WHERE id <= ?", (cur.lastrowid - MAX_DEAD_LETTERS,))

    def dead_letters(self, limit: int = 100) -> list[dict[str, object]]:
        """The newest dead letters first: where, why, size (not the value)."""
        rows = self._db.execute(
            "SELECT id, ts_ms, topic, partition, offset, key, reason, size FROM dead_letters ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        names = ("id", "ts_ms", "topic", "partition", "offset", "key", "reason", "size")
        return [dict(zip(names, r)) for r in rows]

    def dead_letter_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])

    def outbox_dead(self, row: OutboxRow, reason: str) -> None:
        """An owed event the broker refuses for good: keep it as a dead letter, stop sending it."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._keep_dead(
                [
                    DeadLetter.of(
                        topic=row.topic,
                        partition=-1,
                        offset=-1,
                        key=row.key,
                        reason=f"outbox: {reason}",
                        value=row.value,
                    )
                ]
            )
            db.execute("DELETE FROM outbox WHERE id = ?", (row.id,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- history beyond what the core keeps in memory (core.SessionHistory) ----------------

    def session(self, session_id: int) -> SessionRecord | None:
        cols = ", ".join(f"s.{c}" for c in _SESSION_COLUMNS)
        r = self._db.execute(
            f"SELECT {cols}, t.session_id IS NOT NULL FROM sessions s LEFT JOIN tickets t ON t.session_id = s.id "
            "WHERE s.id = ?",
            (session_id,),
        ).fetchone()
        return None if r is None else self._session(r[:-1], ticketed=bool(r[-1]))

    def session_by_request(self, request_id: str) -> SessionRecord | None:
        r = self._db.execute("SELECT id FROM sessions WHERE request_id = ?", (request_id,)).fetchone()
        return None if r is None else self.session(int(r[0]))

    def outbox(self, limit: int = 1000) -> list[OutboxRow]:
        """Durable events not yet acknowledged by the broker, oldest first."""
        return [
            OutboxRow(r[0], r[1], r[2], bytes(r[3]))
            for r in self._db.execute("SELECT id, topic, key, value FROM outbox ORDER BY id LIMIT ?", (limit,))
        ]

    def outbox_done(self, ids: Iterable[int]) -> None:
        self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    # -- queries for the API ---------------------------------------------------------------

    def sessions(
        self, *, status: str | None = None, cp_id: str | None = None, driver_id: str | None = None, limit: int = 500
    ) -> list[SessionView]:
        where, args = [], []
        for column, value in (("status", status), ("cp_id", cp_id), ("driver_id", driver_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = f"SELECT {', '.join(_SESSION_COLUMNS)} FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [self._session(r).view() for r in self._db.execute(sql, args)]

    def ticket_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM tickets").fetchone()[0])
