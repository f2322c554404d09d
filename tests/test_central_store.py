"""Central's Store, the crash-safety core: a batch's effects, its outbox rows and its Kafka
offsets are one transaction. A failure inside rolls all of it back; a process killed
with SIGKILL in the middle of writing leaves every batch either whole or absent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from evproto.bus.topics import Topic
from evproto.daemons.central.store import Position, Store
from evproto.domain.central import Publish, SaveSession, SessionRecord
from evproto.domain.events import RequestUpdate
from evproto.domain.session import SessionStatus

NOW = int(time.time() * 1000)


def _update(n: int) -> Publish:
    return Publish(
        Topic.DRIVER_EVENTS,
        "D001",
        RequestUpdate(driver_id="D001", request_id=f"r{n}", cp_id="CP001", status="requested", ts_ms=NOW),
    )


def _session(session_id: int, request_id: str) -> SaveSession:
    return SaveSession(
        SessionRecord(
            id=session_id,
            cp_id="CP001",
            driver_id="D001",
            request_id=request_id,
            origin="driver",
            status=SessionStatus.REQUESTED,
            requested_ts_ms=NOW,
            price_eur_kwh=0.3,
            deadline_ts_ms=NOW + 60_000,
        )
    )


def _setup(path: str) -> Store:
    store = Store(path)
    store.add_cp("CP001", "Alicante", 0.3)
    store.add_driver("D001")
    return store


def test_a_batch_is_one_transaction_with_its_outbox_and_offsets(tmp_path) -> None:
    store = _setup(str(tmp_path / "c.db"))
    added = store.apply([_session(1, "r1"), _update(1)], offsets={("cp-events", 0): Position(11, "log-a")})
    assert [row.key for row in added] == ["D001"] and len(store.outbox()) == 1
    loaded = store.load()
    assert loaded.offsets == {("cp-events", 0): Position(11, "log-a")}
    assert [s.request_id for s in loaded.live_sessions] == ["r1"]
    # A bare offset moves the position and keeps the log's id.
    store.apply([], offsets={("cp-events", 0): 12})
    assert store.load().offsets == {("cp-events", 0): Position(12, "log-a")}
    store.close()


def test_a_failure_inside_a_batch_rolls_back_its_effects_outbox_and_offsets(tmp_path) -> None:
    store = _setup(str(tmp_path / "c.db"))
    store.apply([_session(1, "r1")], offsets={("cp-events", 0): 5})
    # Session 2 reuses request r1: the database refuses it after session 3, a publish and
    # the offsets were already written in the same transaction.
    with pytest.raises(Exception):
        store.apply([_session(3, "r3"), _update(3), _session(2, "r1")], offsets={("cp-events", 0): 9})
    loaded = store.load()
    assert [s.id for s in loaded.live_sessions] == [1]
    assert loaded.offsets[("cp-events", 0)].offset == 5
    assert store.outbox() == []
    # The store is usable afterwards.
    store.apply([_session(2, "r2")], offsets={("cp-events", 0): 10})
    assert sorted(s.id for s in store.load().live_sessions) == [1, 2]
    store.close()


def test_delivered_outbox_rows_go_and_the_rest_stay_in_order(tmp_path) -> None:
    store = _setup(str(tmp_path / "c.db"))
    rows = store.apply([_update(n) for n in range(5)])
    store.outbox_done([rows[0].id, rows[2].id])
    assert [r.id for r in store.outbox()] == [rows[1].id, rows[3].id, rows[4].id]
    store.close()
    again = Store(str(tmp_path / "c.db"))  # what is owed survives a restart
    assert [r.id for r in again.outbox()] == [rows[1].id, rows[3].id, rows[4].id]
    again.close()


WRITER = r"""
import sys, time
from evproto.domain.events import RequestUpdate
from evproto.bus.topics import Topic
from evproto.domain.central import Publish
from evproto.daemons.central.store import Store
store = Store(sys.argv[1])
now = int(time.time() * 1000)
n = 0
print("ready", flush=True)
while True:
    n += 1
    # Batch n: 20 outbox rows and the offset n, together.
    store.apply([Publish(Topic.DRIVER_EVENTS, "D001", RequestUpdate(driver_id="D001", request_id=f"r{n}-{i}",
                                                                     cp_id="CP001", status="requested", ts_ms=now))
                 for i in range(20)], offsets={("cp-events", 0): n})
"""


@pytest.mark.parametrize("after_s", [0.3, 0.7, 1.1])
def test_a_central_killed_mid_write_leaves_every_batch_whole_or_absent(tmp_path, after_s: float) -> None:
    path = str(tmp_path / "c.db")
    _setup(path).close()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(after_s)  # the test: SIGKILL at some moment of the writer's run, wherever it is
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    store = Store(path)
    offset = store.load().offsets.get(("cp-events", 0))
    rows = store.outbox(limit=1_000_000)
    assert offset is not None and offset.offset > 0, "the writer never committed a batch"
    # Exactly the committed batches' rows: 20 per batch up to the stored offset, no half batch.
    assert len(rows) == 20 * offset.offset
    store.close()
