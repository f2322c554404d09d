"""What an identifier or a display text may contain: one rule for the wire, the bus and the screen.

Ids (charge points, drivers, requests) are 1-64 printable characters with no
whitespace. "Printable" excludes control characters, format characters
(bidi overrides such as U+202E, zero-width characters such as U+200B, U+FEFF),
surrogates, private-use and unassigned code points, so that two ids that look
the same on a screen are the same id (``CP001\\u200b`` is refused, not shown as
CP001). Display texts (a CP's location, a reason) follow the same rule but may
hold single spaces inside.

Pure: no I/O. Used by the Kafka event schemas (``evproto.bus.events``), by
Central for a monitor's Hello, and by the programs for their own arguments.
"""

from __future__ import annotations

import re

from .errors import EvprotoError

__all__ = [
    "MAX_ID_LEN",
    "MAX_TEXT_LEN",
    "WHITESPACE",
    "InvalidTextError",
    "id_problem",
    "text_problem",
    "check_id",
    "check_text",
]

#: Longest id, in characters.
MAX_ID_LEN = 64
#: Longest display text (a location), in characters.
MAX_TEXT_LEN = 128
#: Any whitespace character: never in an id (the bus's fast validators search with it too).
WHITESPACE = re.compile(r"\s")


class InvalidTextError(EvprotoError, ValueError):
    """An id or a display text that breaks the rules above; the message says which rule."""


def _shown(value: str) -> str:
    # Never echo a hostile value whole: bounded, and with invisible characters made visible.
    return ascii(value[:40]) + ("..." if len(value) > 40 else "")


def id_problem(value: object, *, max_len: int = MAX_ID_LEN) -> str | None:
    """Why ``value`` is not a valid id, or None when it is."""
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if not value:
        return "is empty"
    if len(value) > max_len:
        return f"is {len(value)} characters long (at most {max_len})"
    if not value.isprintable() or WHITESPACE.search(value) is not None:
        return f"{_shown(value)} holds a space, control, invisible or unassigned character"
    return None


def text_problem(value: object, *, max_len: int = MAX_TEXT_LEN, allow_empty: bool = True) -> str | None:
    """Why ``value`` is not a valid display text, or None when it is.

    Printable characters and inner single spaces; no leading or trailing space.
    """
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if not value:
        return None if allow_empty else "is empty"
    if len(value) > max_len:
        return f"is {len(value)} characters long (at most {max_len})"
    if not value.isprintable() or value != value.strip() or "  " in value:
        return f"{_shown(value)} holds a control, invisible or unassigned character, or stray spaces"
    return None


def check_id(value: object, *, what: str = "id", max_len: int = MAX_ID_LEN) -> str:
    """``value`` if it is a valid id; InvalidTextError naming ``what`` otherwise."""
    problem = id_problem(value, max_len=max_len)
    if problem is not None:
        raise InvalidTextError(f"{what} {problem}")
    return value  # type: ignore[return-value]


def check_text(value: object, *, what: str = "text", max_len: int = MAX_TEXT_LEN, allow_empty: bool = True) -> str:
    """``value`` if it is a valid display text; InvalidTextError naming ``what`` otherwise."""
    problem = text_problem(value, max_len=max_len, allow_empty=allow_empty)
    if problem is not None:
        raise InvalidTextError(f"{what} {problem}")
    return value  # type: ignore[return-value]
