"""The typed example of a third party's program (tests/typecheck/library_use.py, checked by
`mypy --strict` in make test) also runs, against a real server on 127.0.0.1."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "typecheck"))

import library_use  # noqa: E402

from evproto import CpState, HealthState  # noqa: E402


def test_the_typed_example_runs() -> None:
    state, health, delay, version = library_use.main()
    assert state is CpState.SUPPLYING and health is HealthState.OK
    assert 0 < delay <= 10.0 and version
