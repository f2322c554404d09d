"""The one rule for ids and display texts (evproto.idents)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evproto.errors import EvprotoError
from evproto.idents import MAX_ID_LEN, InvalidTextError, check_id, check_text, id_problem, text_problem


@pytest.mark.parametrize("value", ["CP001", "D1", "a" * MAX_ID_LEN, "Café-7", "cp_01.x"])
def test_valid_ids(value: str) -> None:
    assert id_problem(value) is None and check_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",  # no way to address it
        "a" * (MAX_ID_LEN + 1),
        "CP001\u200b",  # zero-width space: looks exactly like CP001
        "CP\u202e100",  # right-to-left override
        "\ufeffCP001",  # byte-order mark
        "CP 001",
        "CP001\n",
        "D\x00",
        "\ud800",  # lone surrogate
        "\ue000",  # private use
    ],
)
def test_invalid_ids_are_refused_with_a_reason(value: str) -> None:
    assert id_problem(value) is not None
    with pytest.raises(InvalidTextError) as info:
        check_id(value, what="cp_id")
    assert str(info.value).startswith("cp_id ")
    assert isinstance(info.value, EvprotoError) and isinstance(info.value, ValueError)
    assert len(str(info.value)) < 200  # a hostile value is never echoed whole


def test_non_strings_are_refused() -> None:
    assert id_problem(7) == "expected a string, got int"
    assert text_problem(None) == "expected a string, got NoneType"


def test_texts_allow_inner_spaces_only() -> None:
    assert check_text("Alicante Centre", what="location") == "Alicante Centre"
    assert text_problem("") is None and text_problem("", allow_empty=False) == "is empty"
    for bad in (" Alicante", "Alicante ", "A  B", "Ali\u200bcante", "x" * 129):
        assert text_problem(bad) is not None


@given(st.text(max_size=80))
def test_a_valid_id_is_visible_and_bounded(value: str) -> None:
    if id_problem(value) is None:
        assert 1 <= len(value) <= MAX_ID_LEN
        assert value.isprintable() and not any(c.isspace() for c in value)
