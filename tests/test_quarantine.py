"""Quarantine: a record that kills its reader is applied alone after the first crash and set aside
after max_crashes (real processes killed with real signals); dead letters are bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

from evproto.daemons.quarantine import CrashGuard, DeadLetter, DeadLetterFile, Verdict

# A reader of 10 records (offsets 0-9) in batches of 5; the record at offset 7 kills it with
# SIGKILL while it is being applied. It prints what it applied and what it quarantined.
READER = textwrap.dedent(
    """
    import json, os, signal, sys
    import logging; logging.basicConfig()
    from evproto.daemons.quarantine import CrashGuard, Verdict
    state_path, mark_path = sys.argv[1], sys.argv[2]
    state = json.load(open(state_path)) if os.path.exists(state_path) else {"next": 0, "applied": [], "quarantined": []}
    guard = CrashGuard(mark_path, max_crashes=3)
    records = list(range(10))
    def save():
        with open(state_path + ".tmp", "w") as fh:
            json.dump(state, fh)
        os.replace(state_path + ".tmp", state_path)
    while state["next"] < len(records):
        batch = records[state["next"]:state["next"] + 5]
        verdicts = [guard.verdict("t", 0, o) for o in batch]
        if any(v is not Verdict.APPLY for v in verdicts):
            batch = batch[:1]  # a suspect range: one record at a time
        o = batch[0]
        if guard.verdict("t", 0, o) is Verdict.QUARANTINE:
            state["quarantined"].append(o)
            state["next"] = o + 1
            save()
            continue
        guard.applying([("t", 0, batch[0], batch[-1])])
        for o in batch:
            if o == 7:
                os.kill(os.getpid(), signal.SIGKILL)
            state["applied"].append(o)
        state["next"] = batch[-1] + 1
        save()
        guard.applied()
    print(json.dumps(state))
    """
)


def test_a_record_that_kills_its_reader_is_quarantined_after_max_crashes(tmp_path) -> None:
    state, mark = str(tmp_path / "state.json"), str(tmp_path / "mark")
    deaths = 0
    for _ in range(10):
        run = subprocess.run([sys.executable, "-c", READER, state, mark], capture_output=True, text=True, timeout=60)
        if run.returncode == -signal.SIGKILL:
            deaths += 1
            continue
        assert run.returncode == 0, run.stderr
        break
    result = json.loads(run.stdout)
    # One death in a batch of 5, then three applying offset 7 alone: set aside at the fifth start.
    assert deaths == 4
    assert result["quarantined"] == [7]
    assert result["applied"] == [0, 1, 2, 3, 4, 5, 6, 8, 9]
    assert "died while applying t[0]@7 (3 time(s))" in run.stderr


def test_a_clean_run_leaves_no_suspicion(tmp_path) -> None:
    mark = str(tmp_path / "mark")
    guard = CrashGuard(mark)
    guard.applying([("t", 0, 0, 4)])
    guard.applied()
    guard.close()
    assert CrashGuard(mark).suspect is None
    assert oct(os.stat(mark).st_mode & 0o777) == "0o600"


def test_a_torn_mark_is_ignored(tmp_path) -> None:
    mark = tmp_path / "mark"
    mark.write_text('{"ranges": [["t", 0, 1')
    guard = CrashGuard(str(mark))
    assert guard.suspect is None and guard.verdict("t", 0, 1) is Verdict.APPLY


def test_dead_letters_are_bounded_and_keep_where_and_why(tmp_path) -> None:
    path = str(tmp_path / "dead-letters.jsonl")
    letters = DeadLetterFile(path, max_bytes=20_000)
    huge = b"x" * 900_000
    for offset in range(40):
        letters.add(
            DeadLetter.of(
                topic="cp-commands",
                partition=3,
                offset=offset,
                key="CP001\u200b" * 100,
                reason="cp_id holds an invisible character",
                value=huge,
            )
        )
    kept = letters.read()
    assert letters.count == 40
    assert sum(os.path.getsize(p) for p in (path, path + ".1")) <= 2 * 20_000
    last = kept[-1]
    assert last["offset"] == 39 and last["partition"] == 3 and last["size"] == 900_000
    assert len(last["key"]) == 256 and last["reason"].startswith("cp_id")
    assert len(last["value_b64"]) < 6000
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
