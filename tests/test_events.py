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
    EVENT_TYPES,
    EVENT_VERSION,
    Event,
    EventDecodeError,
    EventEncodeError,
    SupplyProgress,
    decode_event,
    encode_event,
)

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


def _strategy_for(cls: type[Event]) -> st.SearchStrategy[Event]:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, st.SearchStrategy[typing.Any]] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        optional = type(None) in typing.get_args(hint)
        base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        strat: st.SearchStrategy[typing.Any] = {
            bool: st.booleans(),
            int: st.integers(min_value=-(2**63), max_value=2**63 - 1),
            float: st.floats(allow_nan=False, allow_infinity=False),
            str: st.text(st.characters(exclude_categories=("Cs",))),
        }[base]
        kwargs[f.name] = st.none() | strat if optional else strat
    return st.builds(cls, **kwargs)


@given(st.sampled_from(sorted(EVENT_TYPES.values(), key=lambda c: c.TYPE)).flatmap(_strategy_for))
def test_every_event_roundtrips(event: Event) -> None:
    wire = encode_event(event)
    assert decode_event(wire) == event
    # Any JSON reader agrees: the standard library reads the same values, in field order.
    obj = json.loads(wire)
    assert list(obj) == ["v", "type", *(f.name for f in dataclasses.fields(event))]
    assert obj == {"v": EVENT_VERSION, "type": event.TYPE, **dataclasses.asdict(event)}


GOOD = {"v": 1, "type": "supply_progress", "cp_id": "CP1", "session_id": 3, "driver_id": "D1",
        "energy_kwh": 1, "amount_eur": 0.5, "power_kw": 11.0, "elapsed_s": 2.0, "ts_ms": 5}


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
        (b"{\"v\":1", "not JSON"),
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
