"""The engine's state file and outbox, and the charge point's dispatch table.

- The writer (daemons/engine/statefile.py) writes off the event loop, one snapshot at a
  time, newest last: a later state is never overwritten by an earlier one, and a writer
  killed with SIGKILL mid-write leaves the old state or the new one, never a torn one.
- An event owed to Central survives a SIGKILL of the engine and is billed once after the
  restart; a supply's energy after a crash is what the meter's register says.
- ChargePoint's table is resolved once at import against its actions; every pair walks.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading

import pytest

from evproto.daemons.engine.app import progress_interval_ms
from evproto.daemons.engine.meter import SimulatedMeter
from evproto.daemons.engine.statefile import StateWriter
from evproto.daemons.files import load_state
from evproto.domain import chargepoint
from evproto.domain.chargepoint import (
    CP_ACTIONS,
    CP_TABLE,
    ChargePoint,
    CpInput,
    Emit,
    Phase,
    render_markdown,
)
from evproto.domain.events import AuthorizeCommand, SupplyFinished, SupplyProgress

CP_ID = "CP001"
T0 = 1_700_000_000_000


# =============================================================================================
# The writer: order, coalescing, failures
# =============================================================================================


async def test_snapshots_are_written_in_order_and_the_newest_last() -> None:
    written: list[int] = []
    started, gate = threading.Event(), threading.Event()

    def save(path: str, obj: dict) -> None:
        started.set()
        gate.wait(10)  # the first write is slow: the others queue up meanwhile
        written.append(obj["n"])

    writer = StateWriter("unused", save=save)
    first = writer.submit({"n": 1})
    assert await asyncio.to_thread(started.wait, 10)
    rest = [writer.submit({"n": n}) for n in range(2, 50)]
    assert writer.durable() is rest[-1]
    gate.set()
    await asyncio.gather(first, *rest)
    # Everything handed in while the first was written was coalesced into its newest.
    assert written == [1, 49]
    assert writer.durable() is None and writer.writes == 2


async def test_a_failed_write_is_told_and_the_next_one_still_goes() -> None:
    outcomes = iter([OSError("disk full"), None])
    written: list[int] = []

    def save(path: str, obj: dict) -> None:
        exc = next(outcomes)
        if exc is not None:
            raise exc
        written.append(obj["n"])

    writer = StateWriter("unused", save=save)
    with pytest.raises(OSError):
        await writer.submit({"n": 1})
    await writer.submit({"n": 2})
    assert written == [2]


async def test_the_writes_run_off_the_event_loop_thread(tmp_path) -> None:
    threads: list[int] = []
    writer = StateWriter(str(tmp_path / "s.json"), save=lambda path, obj: threads.append(threading.get_ident()))
    await writer.submit({"n": 1})
    assert threads and threads[0] != threading.get_ident()


WRITER = r"""
import asyncio, sys
from evproto.daemons.engine.statefile import StateWriter

async def main():
    writer = StateWriter(sys.argv[1])
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        # State n: an outbox and a ledger that all say n (a torn file would mix or cut them).
        await writer.submit({"n": n, "outbox": [{"id": i, "n": n} for i in range(200)],
                             "finished": [{"session_id": i, "n": n, "pad": "x" * 100} for i in range(1000)]})
        print(n, flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize("writes", [1, 5, 20])
def test_a_writer_killed_mid_write_leaves_the_old_state_or_the_new_one(tmp_path, writes: int) -> None:
    path = str(tmp_path / "engine-state.json")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    durable = 0
    for _ in range(writes):
        durable = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)  # it writes without pause: most likely mid-write
    proc.wait(10)
    state = load_state(path)
    n = state["n"]
    assert n >= durable  # never older than what was reported on disk (the writer may be further on)
    assert [e["n"] for e in state["outbox"]] == [n] * 200
    assert [e["n"] for e in state["finished"]] == [n] * 1000


# =============================================================================================
# Recovery: the meter's register is the truth
# =============================================================================================


def _supplying_snapshot() -> dict:
    cp = ChargePoint(cp_id=CP_ID)
    cp.monitor_connected(T0)
    cp.central_reachable(True, T0)
    cp.authorize(
        AuthorizeCommand(
            cp_id=CP_ID,
            session_id=1,
            driver_id="D1",
            request_id="r1",
            price_eur_kwh=0.5,
            expires_ts_ms=T0 + 60_000,
            ts_ms=T0,
        ),
        T0,
    )
    cp.meter(1000.0, 0.0, T0 + 100)
    cp.plug(T0 + 200)
    cp.meter(1040.0, 7000.0, T0 + 1200)
    cp.tick(T0 + 1200)  # the checkpoint: 40 Wh at T0 + 1.2 s
    return json.loads(json.dumps(cp.snapshot()))


def _finished(fx: list) -> SupplyFinished:
    (fin,) = [e.event for e in fx if isinstance(e, Emit) and isinstance(e.event, SupplyFinished)]
    return fin


def test_after_a_crash_the_register_counts_what_the_checkpoint_missed() -> None:
    fin = _finished(ChargePoint(cp_id=CP_ID).restore(_supplying_snapshot(), T0 + 60_000, register=(1100.0, T0 + 9000)))
    assert fin.reason == "power_loss"
    assert fin.energy_kwh == pytest.approx(0.100)  # 1100 - 1000 Wh, not the checkpoint's 40
    assert fin.amount_eur == pytest.approx(0.100 * 0.5)
    assert (fin.started_ts_ms, fin.ended_ts_ms, fin.ts_ms) == (T0 + 200, T0 + 9000, T0 + 60_000)


def test_after_a_crash_a_register_that_went_back_or_jumped_is_not_counted() -> None:
    reset = _finished(ChargePoint(cp_id=CP_ID).restore(_supplying_snapshot(), T0 + 60_000, register=(3.0, T0 + 9000)))
    assert reset.energy_kwh == pytest.approx(0.040)
    jumped = _finished(ChargePoint(cp_id=CP_ID).restore(_supplying_snapshot(), T0 + 60_000, register=(1e9, T0 + 9000)))
    assert jumped.energy_kwh == pytest.approx(0.040)


def test_after_a_crash_without_a_newer_register_the_checkpoint_counts() -> None:
    for register in (None, (1100.0, T0 + 1200)):
        fin = _finished(ChargePoint(cp_id=CP_ID).restore(_supplying_snapshot(), T0 + 60_000, register=register))
        assert fin.energy_kwh == pytest.approx(0.040) and fin.ended_ts_ms == T0 + 1200


def test_the_simulated_meter_keeps_its_register_across_a_restart(tmp_path) -> None:
    clock = iter(itertools.count(0.0, 1.0))
    path = str(tmp_path / "state" / "register.json")
    meter = SimulatedMeter(power_kw=3.6, clock=lambda: next(clock), register_path=path)
    meter.set_load(True)
    reading = asyncio.run(meter.read())
    asyncio.run(meter.close())
    assert reading.energy_wh > 0
    again = SimulatedMeter(power_kw=3.6, register_path=path)
    assert again.last_register() == (reading.energy_wh, reading.timestamp_ms)
    assert asyncio.run(again.read()).energy_wh == reading.energy_wh


# =============================================================================================
# Progress goes out with the reading that makes it due
# =============================================================================================


@pytest.mark.parametrize("meter_interval_s", [0.2, 0.3, 1.0, 2.0])
def test_progress_goes_out_with_readings_at_most_once_a_second(meter_interval_s: float) -> None:
    cp = ChargePoint(
        cp_id=CP_ID, progress_interval_ms=progress_interval_ms(meter_interval_s), progress_with_reading=True
    )
    cp.monitor_connected(T0)
    cp.central_reachable(True, T0)
    cp.authorize(
        AuthorizeCommand(
            cp_id=CP_ID,
            session_id=1,
            driver_id="D1",
            request_id="r1",
            price_eur_kwh=0.5,
            expires_ts_ms=T0 + 60_000,
            ts_ms=T0,
        ),
        T0,
    )
    cp.meter(0.0, 0.0, T0)
    cp.plug(T0)
    interval_ms = meter_interval_s * 1000
    sent: list[int] = []
    for k in range(1, 61):
        # Readings on their schedule, each a few ms late by a varying amount (never early).
        now = T0 + int(k * interval_ms) + (k * 7) % 23
        # Ticks in between (the engine's, every 0.2 s) never report an older reading.
        assert not any(isinstance(e, Emit) for e in cp.tick(now - int(interval_ms / 2)) + cp.tick(now - 1))
        fx = cp.meter(k * 10.0, 7000.0, now) + cp.tick(now)  # what the engine does as a reading arrives
        sent += [now for e in fx if isinstance(e, Emit) and isinstance(e.event, SupplyProgress)]
    every = math.ceil(1000 / interval_ms)  # readings per report: each k-th, never a reading left waiting
    assert len(sent) == 60 // every
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert min(gaps) >= max(1000, interval_ms) - 23  # at most once a second, up to the readings' jitter


# =============================================================================================
# The charge point's table: resolved at import, every pair walked
# =============================================================================================


def test_every_pair_resolves_to_an_action_that_takes_what_its_input_carries() -> None:
    assert set(chargepoint._DISPATCH) == set(itertools.product(Phase, CpInput))
    for (phase, inp), name in CP_TABLE.items():
        assert chargepoint._DISPATCH[(phase, inp)] is getattr(ChargePoint, "_a_" + name)
    assert set(CP_TABLE.values()) == set(CP_ACTIONS)  # every documented action is used


def test_a_table_naming_a_missing_action_or_arguments_it_cannot_take_fails_at_import(monkeypatch) -> None:
    monkeypatch.setitem(CP_TABLE, (Phase.IDLE, CpInput.TICK), "no_such_action")
    with pytest.raises(AssertionError, match="no_such_action"):
        chargepoint._resolve()
    monkeypatch.setitem(CP_TABLE, (Phase.IDLE, CpInput.TICK), "ignore")
    monkeypatch.setitem(CP_TABLE, (Phase.IDLE, CpInput.METER), "plug")  # _a_plug takes no reading
    with pytest.raises(AssertionError, match="METER"):
        chargepoint._resolve()


def test_the_rendered_table_has_every_pair() -> None:
    text = render_markdown()
    for inp in CpInput:
        transitions = text.split("\n\n")[0]
        (row,) = [line for line in transitions.splitlines() if line.startswith(f"| {inp.value} |")]
        assert [cell.strip() for cell in row.split("|")[2:-1]] == [CP_TABLE[(p, inp)] for p in Phase]


# =============================================================================================
# An owed event survives a SIGKILL of the engine (a real network on the embedded broker)
# =============================================================================================


@pytest.mark.slow
def test_an_owed_event_survives_a_sigkill_of_the_engine_and_is_billed_once(net, broker) -> None:
    from netharness import KafkaDriver, wait_for

    from evproto.domain.events import DriverTelemetry

    def state() -> dict:
        return load_state(os.path.join(net.tmp, "state-CP001", "engine-state.json"))

    net.start_central("D001")
    engine, _ = net.start_cp("CP001", engine_args=("--time-scale", "60"))
    net.wait_state("CP001", "ACTIVATED")
    driver = KafkaDriver(net, "D001")
    rid = driver.request("CP001")
    driver.wait_status(rid, "authorized")
    engine.send("p")
    wait_for(lambda: any(isinstance(e, DriverTelemetry) and e.energy_kwh > 0 for e in driver.events()), "energy")

    os.kill(broker.pid, signal.SIGSTOP)  # the broker acknowledges nothing: the supply's end stays owed
    try:
        engine.send("u")
        owed = wait_for(
            lambda: (s := state())["outbox"] and len(s["finished"]) == 1 and s,
            "the supply's end written ahead into the outbox",
        )
        net.kill(engine)
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    assert owed["cp"]["phase"] == "idle"

    engine = net.restart(engine)
    driver.wait_status(rid, "completed")
    wait_for(lambda: not state()["outbox"], "the broker to acknowledge the owed event")
    # Killed and restarted again: nothing is owed, nothing is sent or billed twice.
    net.kill(engine)
    net.restart(engine)
    net.wait_state("CP001", "ACTIVATED")
    (ticket,) = driver.tickets()
    assert [f["session_id"] for f in state()["finished"]] == [ticket.session_id]
    assert ticket.energy_kwh == pytest.approx(state()["finished"][0]["energy_kwh"], abs=1e-9)
    assert [(s["status"], s["end_reason"]) for s in net.get("/api/v1/sessions")] == [("completed", "unplugged")]
