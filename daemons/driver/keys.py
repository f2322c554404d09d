"""What keys typed on the driver's screen mean, without I/O (:class:`KeyLine`).

On an empty line a hot key acts at once (``l`` charge points, ``q`` quit); any other key
starts a command line (``r CP001 2.5kWh``), edited in place and submitted with Enter.
Escape sequences (arrow keys and the like) are swallowed whole, even split across
reads, so their final byte (``l`` or ``q`` can be one) never passes for a hot key; a
lone Esc clears the line when the next key comes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["HotKey", "Submitted", "KeyLine", "HOT_KEYS"]

#: Keys that act at once on an empty line.
HOT_KEYS = frozenset("lq")


@dataclass(frozen=True, slots=True, kw_only=True)
class HotKey:
    """A hot key was pressed."""

    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Submitted:
    """A command line was submitted with Enter (stripped, never empty)."""

    line: str


class _Esc(enum.Enum):
    NONE = enum.auto()
    START = enum.auto()  # after ESC
    CSI = enum.auto()  # ESC [ ... up to a final byte
    SS3 = enum.auto()  # ESC O and one more


class KeyLine:
    """A one-line editor with hot keys: :meth:`feed` text as read, get what it means."""

    def __init__(self, *, hot_keys: frozenset[str] = HOT_KEYS, max_chars: int = 200) -> None:
        self.hot_keys = hot_keys
        self.max_chars = max_chars
        self._chars: list[str] = []
        self._esc = _Esc.NONE

    @property
    def buffer(self) -> str:
        """The line being typed."""
        return "".join(self._chars)

    def feed(self, text: str) -> list[HotKey | Submitted]:
        """Apply keys; the hot keys pressed and lines submitted, in order."""
        out: list[HotKey | Submitted] = []
        chars = self._chars
        for ch in text:
            if self._esc is _Esc.CSI:
                if "\x40" <= ch <= "\x7e":
                    self._esc = _Esc.NONE
                continue
            if self._esc is _Esc.SS3:
                self._esc = _Esc.NONE
                continue
            if self._esc is _Esc.START:
                self._esc = {"[": _Esc.CSI, "O": _Esc.SS3}.get(ch, _Esc.NONE)
                if self._esc is not _Esc.NONE:
                    continue
                chars.clear()  # a lone Esc clears the line; this key is read as itself
            if ch in "\r\n":
                line = "".join(chars).strip()
                chars.clear()
                if line:
                    out.append(Submitted(line=line))
            elif ch in "\x7f\x08":
                if chars:
                    chars.pop()
            elif ch == "\x1b":
                self._esc = _Esc.START
            elif ch == "\x15":  # Ctrl+U
                chars.clear()
            elif not chars and ch.lower() in self.hot_keys:
                out.append(HotKey(key=ch.lower()))
            elif ch.isprintable() and len(chars) < self.max_chars:
                if chars or not ch.isspace():
                    chars.append(ch)
        return out
