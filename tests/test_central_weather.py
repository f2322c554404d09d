"""Central's weather rules (pure): below 0 °C the CPs at a location stop, and they resume
only when both the weather and the operator allow it; an unknown temperature stops nothing."""

from __future__ import annotations

import pytest

from evproto.domain.central import CentralCore, Publish, Rules
from evproto.domain.events import CpStateRecord, ResumeCommand, StopCommand

T0 = 1_700_000_000_000
CPS = {"CP1": "Alicante", "CP2": "Alicante", "CP3": "Teruel"}


@pytest.fixture
def core() -> CentralCore:
    core = CentralCore(drivers={"D1"}, rules=Rules())
    for cp_id, location in CPS.items():
        reject, _ = core.hello(cp_id, location, 0.3, T0)
        assert reject is None
        core.monitor_connected(cp_id, T0)
    return core


def commands(fx: list) -> list[tuple[str, str]]:
    return [
        (p.key, type(p.event).__name__)
        for p in fx
        if isinstance(p, Publish) and isinstance(p.event, (StopCommand, ResumeCommand))
    ]


def states(core: CentralCore) -> dict[str, str]:
    return {v.id: v.state for v in core.cp_views()}


def alerts(core: CentralCore, cp_id: str) -> tuple[str, ...]:
    return next(v.alerts for v in core.cp_views() if v.id == cp_id)


def test_below_zero_stops_every_cp_at_the_location_and_only_there(core: CentralCore) -> None:
    ids, fx = core.weather("alicante", -2.5, T0 + 1)
    assert sorted(ids) == ["CP1", "CP2"]
    assert sorted(commands(fx)) == [("CP1", "StopCommand"), ("CP2", "StopCommand")]
    assert states(core) == {"CP1": "STOPPED", "CP2": "STOPPED", "CP3": "ACTIVATED"}
    assert alerts(core, "CP1") == ("weather",)
    assert [e.event.state for e in fx if isinstance(e, Publish) and isinstance(e.event, CpStateRecord)] == [
        "STOPPED",
        "STOPPED",
    ]


def test_zero_or_warmer_resumes_them(core: CentralCore) -> None:
    core.weather("Alicante", -1.0, T0 + 1)
    _, fx = core.weather("Alicante", 0.0, T0 + 2)
    assert sorted(commands(fx)) == [("CP1", "ResumeCommand"), ("CP2", "ResumeCommand")]
    assert states(core)["CP1"] == "ACTIVATED" and alerts(core, "CP1") == ()


def test_the_same_news_twice_changes_nothing(core: CentralCore) -> None:
    core.weather("Alicante", -1.0, T0 + 1)
    _, fx = core.weather("Alicante", -3.0, T0 + 2)
    assert fx == []


def test_an_operator_stop_and_a_weather_stop_must_both_clear(core: CentralCore) -> None:
    core.stop("CP1", T0 + 1)
    _, fx = core.weather("Alicante", -4.0, T0 + 2)
    assert commands(fx) == [("CP2", "StopCommand")]  # CP1's engine is already stopped
    # The weather clears first: CP1 stays stopped for the operator.
    _, fx = core.weather("Alicante", 3.0, T0 + 3)
    assert commands(fx) == [("CP2", "ResumeCommand")]
    assert states(core)["CP1"] == "STOPPED"
    _, fx = core.resume("CP1", T0 + 4)
    assert commands(fx) == [("CP1", "ResumeCommand")] and states(core)["CP1"] == "ACTIVATED"


def test_an_operator_resume_under_a_weather_stop_keeps_the_cp_stopped(core: CentralCore) -> None:
    core.stop("CP1", T0 + 1)
    core.weather("Alicante", -4.0, T0 + 2)
    _, fx = core.resume("CP1", T0 + 3)
    assert commands(fx) == [] and states(core)["CP1"] == "STOPPED" and alerts(core, "CP1") == ("weather",)
    _, fx = core.weather("Alicante", 1.0, T0 + 4)
    assert ("CP1", "ResumeCommand") in commands(fx) and states(core)["CP1"] == "ACTIVATED"


def test_an_unknown_temperature_never_stops_a_cp(core: CentralCore) -> None:
    _, fx = core.weather("Teruel", None, T0 + 1)
    assert commands(fx) == [] and states(core)["CP3"] == "ACTIVATED"
    assert alerts(core, "CP3") == ("weather_unknown",)
    # Nor does it clear a weather stop already in force: only a reading does.
    core.weather("Teruel", -6.0, T0 + 2)
    _, fx = core.weather("Teruel", None, T0 + 3)
    assert commands(fx) == [] and states(core)["CP3"] == "STOPPED"
    assert alerts(core, "CP3") == ("weather", "weather_unknown")
    core.weather("Teruel", -6.0, T0 + 4)
    assert alerts(core, "CP3") == ("weather",)


def test_a_weather_stop_survives_a_restart_of_central(tmp_path) -> None:
    from evproto.daemons.central.store import Store

    store = Store(str(tmp_path / "central.db"))
    try:
        core = CentralCore(drivers={"D1"}, rules=Rules())
        core.hello("CP1", "Alicante", 0.3, T0)
        _, fx = core.weather("Alicante", -2.0, T0 + 1)
        store.apply(fx, {})
        loaded = store.load()
        again = CentralCore(cps=loaded.cps, drivers=loaded.drivers, rules=Rules())
        again.monitor_connected("CP1", T0 + 2)
        assert alerts(again, "CP1") == ("weather",) and states(again)["CP1"] == "STOPPED"
    finally:
        store.close()


def test_a_database_from_before_weather_stops_is_migrated(tmp_path) -> None:
    import sqlite3

    from evproto.daemons.central.store import SCHEMA_VERSION, Store

    path = str(tmp_path / "central.db")
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '2');
        CREATE TABLE cps (id TEXT PRIMARY KEY, location TEXT NOT NULL, price_eur_kwh REAL NOT NULL,
                          stopped INTEGER NOT NULL DEFAULT 0, registered_ts_ms INTEGER NOT NULL);
        INSERT INTO cps VALUES ('CP7', 'Soria', 0.3, 1, 1700000000000);
    """)
    db.commit()
    db.close()
    store = Store(path)
    try:
        (cp,) = store.load().cps
        assert (cp.id, cp.stopped, cp.weather_stopped) == ("CP7", True, False)
    finally:
        store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    finally:
        db.close()
