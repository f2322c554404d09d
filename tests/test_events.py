"""The Kafka event codec (pure): the examples in docs/kafka.md are golden vectors, every
event type round-trips, and malformed records raise EventDecodeError saying what is wrong."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evproto.bus.events import (
    EVENT_VERSION,
    EventDecodeError,
    EventEncodeError,
    decode_event,
    encode_event,
)
from evproto.domain import events
from evproto.domain.events import EVENT_TYPES, Event, SupplyProgress

DOC = Path(__file__).resolve().parents[1] / "docs" / "kafka.md"


def _doc_examples() -> list[bytes]:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"## Events.*?```json\n(.*?)```", text, re.S)
    assert block is not None, "docs/kafka.md lost its event examples"
    return [line.encode("utf-8") for line in block.group(1).splitlines() if line.strip()]


@pytest.mark.parametrize("wire", _doc_examples(), ids=lambda w: json.loads(w)["type"])
def test_documented_examples_are_exact(wire: bytes) -> None:
    # The examples are what we write, byte for byte (field order, compact separators).
    assert encode_event(decode_event(wire)) == wire


def _field_strategy(hint: typing.Any) -> st.SearchStrategy[typing.Any]:
    """Values that satisfy the field's declared rule (events.py's Annotated rules)."""
    optional = type(None) in typing.get_args(hint) and typing.get_origin(hint) is not typing.Annotated
    if optional:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    rule = None
    if typing.get_origin(hint) is typing.Annotated:
        hint, rule = typing.get_args(hint)[:2]
    if isinstance(rule, events._Ident):
        ident = st.text(
            st.characters(exclude_categories=("Cs", "Cc", "Cf", "Co", "Cn", "Zs", "Zl", "Zp")),
            min_size=1,
            max_size=rule.max_len,
        ).filter(lambda v: not any(c.isspace() for c in v))
        strat = (st.just("") | ident) if rule.empty_ok else ident
    elif isinstance(rule, events._Text):
        strat = st.text(
            st.characters(exclude_categories=("Cs", "Cc", "Cf", "Co", "Cn", "Zs", "Zl", "Zp")),
            max_size=rule.max_len // 2,
        ).filter(lambda v: not any(c.isspace() for c in v))
    elif isinstance(rule, events._OneOf):
        strat = st.sampled_from(rule.values)
    elif isinstance(rule, events._Time):
        strat = st.integers(min_value=events.MIN_TS_MS, max_value=events.MAX_TS_MS)
    elif isinstance(rule, events._Range):
        if hint is int:
            strat = st.integers(min_value=int(rule.lo) + int(rule.lo_open), max_value=int(rule.hi))
        else:
            strat = st.floats(min_value=rule.lo, max_value=rule.hi, exclude_min=rule.lo_open)
    else:
        strat = {bool: st.booleans(), int: st.integers(), float: st.floats(), str: st.text()}[hint]
    return st.none() | strat if optional else strat


def _consistent(event: Event) -> Event:
    """Make a generated supply's figures agree: ends after it starts, energy within the
    highest power over its duration, amount = energy x price."""
    changes: dict[str, typing.Any] = {}
    if hasattr(event, "ended_ts_ms"):
        start, end = sorted((event.started_ts_ms, event.ended_ts_ms))
        hours = (end - start) / 3_600_000
        energy = min(event.energy_kwh, events.MAX_POWER_KW * hours)
        changes = dict(started_ts_ms=start, ended_ts_ms=end, energy_kwh=energy, amount_eur=energy * event.price_eur_kwh)
    elif hasattr(event, "elapsed_s"):
        changes = dict(energy_kwh=min(event.energy_kwh, events.MAX_POWER_KW * event.elapsed_s / 3600))
    return dataclasses.replace(event, **changes) if changes else event


def _strategy_for(cls: type[Event]) -> st.SearchStrategy[Event]:
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs = {f.name: _field_strategy(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.builds(cls, **kwargs).map(_consistent)


@given(st.sampled_from(sorted(EVENT_TYPES.values(), key=lambda c: c.TYPE)).flatmap(_strategy_for))
def test_every_valid_event_roundtrips(event: Event) -> None:
    wire = encode_event(event)
    assert decode_event(wire) == event
    # Any JSON reader agrees: the standard library reads the same values, in field order.
    obj = json.loads(wire)
    assert list(obj) == ["v", "type", *(f.name for f in dataclasses.fields(event))]
    assert obj == {"v": EVENT_VERSION, "type": event.TYPE, **dataclasses.asdict(event)}


_ANY_VALUE = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80)


@given(
    st.sampled_from(sorted(EVENT_TYPES)),
    st.dictionaries(st.text(max_size=20), _ANY_VALUE, max_size=12),
    st.dictionaries(
        st.sampled_from(
            [
                "cp_id",
                "driver_id",
                "session_id",
                "energy_kwh",
                "amount_eur",
                "price_eur_kwh",
                "ts_ms",
                "started_ts_ms",
                "ended_ts_ms",
                "state",
                "status",
                "reason",
                "request_id",
            ]
        ),
        _ANY_VALUE,
    ),
)
def test_any_record_is_an_event_that_writes_back_or_a_decode_error(type_name: str, extra: dict, fields: dict) -> None:
    # Whatever a peer writes, a reader gets a valid event or EventDecodeError: never another
    # exception, and never an event that we could not write again (it would poison a reader).
    wire = json.dumps({**extra, **fields, "v": 1, "type": type_name}).encode()
    try:
        event = decode_event(wire)
    except EventDecodeError:
        return
    assert decode_event(encode_event(event)) == event


NOW_MS = 1_764_295_207_000
GOOD = {
    "v": 1,
    "type": "supply_progress",
    "cp_id": "CP1",
    "session_id": 3,
    "driver_id": "D1",
    "energy_kwh": 1,
    "amount_eur": 0.5,
    "power_kw": 11.0,
    "elapsed_s": 2.0,
    "ts_ms": NOW_MS,
}


def _with(**changes: typing.Any) -> bytes:
    obj = {**GOOD, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


def test_integers_are_accepted_for_numbers() -> None:
    ev = decode_event(_with())
    assert isinstance(ev, SupplyProgress) and ev.energy_kwh == 1.0 and type(ev.energy_kwh) is float


@pytest.mark.parametrize(
    ("wire", "says"),
    [
        (None, "empty record"),
        (b"", "not JSON"),
        (b'{"v":1', "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (b'{"v":1,"type":"supply_progress","energy_kwh":NaN}', "not JSON"),
        (b"[1,2]", "expected a JSON object, got list"),
        (_with(v=2), "unsupported event version 2"),
        (_with(v=...), "unsupported event version None"),
        (_with(type="teleport"), "unknown event type 'teleport'"),
        (_with(type=7), "unknown event type 7"),
        (_with(session_id="3"), "session_id: expected an integer"),
        (_with(session_id=True), "session_id: expected an integer"),
        (_with(energy_kwh="1"), "energy_kwh: expected a number"),
        (_with(cp_id=None), "cp_id: expected a string"),
        (_with(ts_ms=...), "ts_ms"),
    ],
)
def test_malformed_records_say_what_is_wrong(wire: bytes | None, says: str) -> None:
    with pytest.raises(EventDecodeError, match=re.escape(says)):
        decode_event(wire)


def test_unknown_fields_are_ignored() -> None:
    assert decode_event(_with(added_later="x")) == decode_event(_with())


@pytest.mark.parametrize(
    "bad", [{"cp_id": "\ud800"}, {"session_id": 2**64}, {"power_kw": float("nan")}, {"energy_kwh": float("-inf")}]
)
def test_unwritable_events_raise_encode_error(bad: dict[str, typing.Any]) -> None:
    ev = dataclasses.replace(decode_event(_with()), **bad)
    with pytest.raises(EventEncodeError):
        encode_event(ev)


def test_documented_field_table_matches_the_schemas() -> None:
    rows = re.findall(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)? \| (.+?) \|$", DOC.read_text(encoding="utf-8"), re.M)
    documented: dict[str, list[str]] = {}
    for first, second, cells in rows:
        names = [re.sub(r"[?\s].*$", "", c.strip()) for c in cells.split(", ")]
        for type_name in filter(None, (first, second)):
            documented[type_name] = names
    assert set(documented) == set(EVENT_TYPES)
    for type_name, cls in EVENT_TYPES.items():
        assert documented[type_name] == [f.name for f in dataclasses.fields(cls)], type_name


FINISHED = {
    "v": 1,
    "type": "supply_finished",
    "cp_id": "CP002",
    "session_id": 17,
    "driver_id": "D001",
    "energy_kwh": 2.0,
    "amount_eur": 0.84,
    "price_eur_kwh": 0.42,
    "started_ts_ms": 1764295201600,
    "ended_ts_ms": 1764295211400,
    "reason": "completed",
    "ts_ms": 1764295211400,
    "offline": False,
    "request_id": "9f1c",
}


def _finished(**changes: typing.Any) -> bytes:
    return json.dumps({**FINISHED, **changes}).encode()


@pytest.mark.parametrize(
    ("wire", "says"),
    [
        # Values a forger (or a bug) could write, each refused at the boundary with its reason.
        (_finished(started_ts_ms=18446744073709551615), "started_ts_ms 18446744073709551615 is out of range"),
        (_finished(started_ts_ms=10**15), "started_ts_ms 1000000000000000 is out of range"),
        (_finished(ts_ms=0), "ts_ms 0 is out of range"),
        (_finished(energy_kwh=-50.0, amount_eur=-1000.0), "energy_kwh -50.0 is out of range"),
        (_finished(amount_eur=-1000.0), "amount_eur -1000.0 is out of range"),
        (_finished(amount_eur=5.0), "amount_eur 5 is not energy x price"),
        (_finished(energy_kwh=500.0, amount_eur=210.0), "more than 4000 kW could deliver in 9.8 s"),
        (_finished(ended_ts_ms=1764295201000), "ended_ts_ms 1764295201000 is before started_ts_ms"),
        (_finished(price_eur_kwh=1e9), "price_eur_kwh 1000000000.0 is out of range"),
        (_finished(cp_id=""), "cp_id is empty"),
        (_finished(cp_id="CP001\u200b"), "cp_id 'CP001\\u200b' holds"),
        (_finished(driver_id="D" * 65), "driver_id is 65 characters long"),
        (_finished(session_id=-1), "session_id -1 is out of range"),
        (_finished(reason="a reason\nwith lines"), "reason must be one of completed, unplugged"),
        (_finished(reason="overheated"), "reason must be one of"),
        (_with(type="cp_state", location="x" * 200, price_eur_kwh=0.3, state="ACTIVATED"), "location is 200"),
        (_with(type="cp_state", location="Elche", price_eur_kwh=0.3, state="HACKED"), "state must be one of"),
        (_with(type="supply_request", request_id="r1", target_energy_kwh=1e26), "target_energy_kwh 1e+26"),
        (_with(type="supply_request", request_id="r1", target_duration_s=0), "target_duration_s 0.0 is out"),
        (_with(type="supply_request", request_id="r1", origin="elsewhere"), "origin must be one of"),
        (_with(energy_kwh=100.0), "more than 4000 kW could deliver in 2 s"),
        (b'{"v":1,"type":"supply_request","request_id":"' + b"x" * 900_000 + b'"}', "record of 900"),
    ],
)
def test_out_of_range_fields_are_refused_with_the_rule(wire: bytes, says: str) -> None:
    with pytest.raises(EventDecodeError, match=re.escape(says)):
        decode_event(wire)


def test_times_far_ahead_of_the_readers_clock_are_refused() -> None:
    wire = _finished()
    ended = FINISHED["ts_ms"]
    assert decode_event(wire, now_ms=ended).session_id == 17
    assert decode_event(wire, now_ms=ended - events.FUTURE_SLACK_MS).session_id == 17
    with pytest.raises(EventDecodeError, match="ended_ts_ms 1764295211400 is more than a day ahead"):
        decode_event(wire, now_ms=ended - events.FUTURE_SLACK_MS - 1)


def test_writers_refuse_what_readers_would_refuse() -> None:
    ev = decode_event(_finished())
    for bad in ({"energy_kwh": -1.0}, {"cp_id": "CP 1"}, {"amount_eur": 9.0}, {"request_id": "r" * 900_000}):
        with pytest.raises(EventEncodeError):
            encode_event(dataclasses.replace(ev, **bad))
