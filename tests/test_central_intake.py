"""Central's intake of Kafka records (daemons/central/intake.py) over a real SQLite store and the
real core: a batch is one transaction; a failure inside it costs only the record at fault."""

from __future__ import annotations

import collections
import json
import sqlite3

import pytest

from evproto.bus.consumer import Record
from evproto.bus.events import encode_event
from evproto.bus.topics import Topic
from evproto.daemons.central.intake import RecordIntake
from evproto.daemons.central.store import Store
from evproto.daemons.quarantine import CrashGuard
from evproto.domain.central import CentralCore, Publish, Rules
from evproto.domain.events import AuthorizeCommand, SupplyRequest

T0 = 1_764_295_200_000


class Harness:
    """The intake wired as Central wires it, with one way to make the core fail: a request
    whose id starts with "bug" raises inside the core after the core has changed its memory."""

    def __init__(self, tmp_path) -> None:
        self.db = str(tmp_path / "central.db")
        self.store = Store(self.db)
        self.counters: collections.Counter[str] = collections.Counter()
        self.published: list[Publish] = []
        self.core = self._core()
        for cp_id in ("CP1", "CP2", "CP3"):
            self.store.apply(self.core.hello(cp_id, "Elche", 0.3, T0)[1])
            self.core.monitor_connected(cp_id, T0)
        self.guard = CrashGuard(self.db + ".applying")
        self.intake = RecordIntake(
            guard=self.guard, decide=self._decide, commit=self._commit, recover=self._recover, counters=self.counters
        )

    def _core(self) -> CentralCore:
        loaded = self.store.load()
        return CentralCore(
            cps=loaded.cps,
            drivers={"D1", "D2", "D3"},
            sessions=loaded.live_sessions,
            next_session_id=loaded.next_session_id,
            rules=Rules(),
            history=self.store,
        )

    def _decide(self, event, now_ms):
        fx = self.core.on_event(event, now_ms)
        if isinstance(event, SupplyRequest) and event.request_id.startswith("bug"):
            raise RuntimeError("a bug after the core changed its memory")
        return fx

    def _commit(self, effects, offsets, dead) -> None:
        self.store.apply(effects, offsets, dead)
        self.published += [fx for fx in effects if isinstance(fx, Publish)]

    def _recover(self) -> None:
        old, self.core = self.core, self._core()
        self.core.carry_over(old)

    def records(self, *specs: tuple[str, str, str]) -> list[Record]:
        return [
            Record(
                topic=Topic.DRIVER_REQUESTS,
                partition=0,
                offset=n,
                key=driver,
                timestamp_ms=T0,
                value=encode_event(SupplyRequest(request_id=rid, driver_id=driver, cp_id=cp, ts_ms=T0)),
            )
            for n, (rid, driver, cp) in enumerate(specs)
        ]

    def sql(self, query: str) -> list[tuple]:
        with sqlite3.connect(self.db) as db:
            return db.execute(query).fetchall()


def test_a_failure_inside_a_batch_costs_only_the_record_at_fault(tmp_path) -> None:
    h = Harness(tmp_path)
    batch = h.records(("r1", "D1", "CP1"), ("bug-2", "D2", "CP2"), ("r3", "D3", "CP3"))
    h.intake.apply(batch, T0 + 10)
    # r1 and r3 made sessions and authorisations, once each; bug-2 is a dead letter.
    assert h.sql("SELECT request_id FROM sessions ORDER BY id") == [("r1",), ("r3",)]
    asked = [fx.event.request_id for fx in h.published if isinstance(fx.event, AuthorizeCommand)]
    assert asked == ["r1", "r3"]
    ((offset, reason),) = h.sql("SELECT offset, reason FROM dead_letters")
    assert offset == 1 and reason == "applying it failed: RuntimeError: a bug after the core changed its memory"
    assert h.sql("SELECT next_offset FROM offsets WHERE topic = 'driver-requests'") == [(3,)]
    assert h.counters["batches_retried"] == 1 and h.counters["quarantined"] == 1
    # The half-changed memory was thrown away: CP2 is free, not held by a session that never was.
    assert h.core.cps["CP2"].session_id is None and h.core.cps["CP1"].connected
    assert h.guard.suspect is None


def test_a_batch_that_the_database_refuses_is_applied_record_by_record(tmp_path) -> None:
    h = Harness(tmp_path)
    with sqlite3.connect(h.db) as db:  # a constraint the core does not know about
        db.execute(
            "CREATE TRIGGER no_cp3 BEFORE INSERT ON sessions WHEN NEW.cp_id = 'CP3' "
            "BEGIN SELECT RAISE(ABORT, 'CP3 is closed'); END"
        )
    h.intake.apply(h.records(("r1", "D1", "CP1"), ("r2", "D2", "CP3"), ("r3", "D3", "CP2")), T0 + 10)
    assert h.sql("SELECT request_id FROM sessions ORDER BY id") == [("r1",), ("r3",)]
    ((reason,),) = h.sql("SELECT reason FROM dead_letters")
    assert "IntegrityError: CP3 is closed" in reason
    assert h.core.cps["CP3"].session_id is None


def test_a_crash_mark_left_by_a_dead_run_makes_its_batch_go_one_record_at_a_time(tmp_path) -> None:
    h = Harness(tmp_path)
    with open(h.db + ".applying", "w", encoding="utf-8") as fh:
        json.dump({"ranges": [["driver-requests", 0, 0, 2]], "crashes": 0}, fh)
    h.guard = CrashGuard(h.db + ".applying")
    h.intake.guard = h.guard
    h.intake.apply(h.records(("r1", "D1", "CP1"), ("r2", "D2", "CP2"), ("r3", "D3", "CP3")), T0 + 10)
    assert h.sql("SELECT COUNT(*) FROM sessions") == [(3,)]
    assert h.counters["quarantined"] == 0


@pytest.mark.parametrize("value", [b"{", b"", None])
def test_records_that_do_not_decode_are_dead_letters_in_the_same_transaction(tmp_path, value) -> None:
    h = Harness(tmp_path)
    batch = h.records(("r1", "D1", "CP1"))
    batch.append(Record(topic=Topic.DRIVER_REQUESTS, partition=0, offset=1, key="x", value=value, timestamp_ms=T0))
    h.intake.apply(batch, T0 + 10)
    assert h.sql("SELECT offset FROM dead_letters") == [(1,)]
    assert h.sql("SELECT next_offset FROM offsets") == [(2,)]
    assert h.counters["batches_retried"] == 0
