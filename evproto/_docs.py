"""Generated sections of docs/protocol.md, so the document cannot drift from the code.

``python -m evproto._docs docs/protocol.md`` rewrites every block between
``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``; a test fails when
the file differs from what this module renders.
"""

from __future__ import annotations

import enum
import re
import sys
from dataclasses import fields

from . import messages as m
from .link_table import render_markdown as render_link_table

__all__ = ["SECTIONS", "sync", "render"]


def render_catalogue() -> str:
    lines = ["| type | message | fields after the header |", "| --- | --- | --- |"]
    for t, cls in m.MESSAGE_CLASSES.items():
        parts = []
        for f in fields(cls):  # type: ignore[arg-type]
            wire = f.metadata["wire"]
            parts.append(f"`{f.name}` {wire.doc}")
        lines.append(f"| 0x{int(t):02x} | {cls.__name__} | {', '.join(parts) or '(none)'} |")
    return "\n".join(lines) + "\n"


_ENUMS: tuple[type[enum.Enum], ...] = (
    m.Flags,
    m.Role,
    m.ReasonCode,
    m.HealthState,
    m.FaultCode,
    m.CpState,
    m.CommandAction,
    m.EndReason,
    m.ErrorCode,
    m.MeterStatus,
    m.MeterTransaction,
)


def render_enums() -> str:
    lines = ["| enum | values |", "| --- | --- |"]
    for e in _ENUMS:
        # __members__ lists the same names on every Python (flag iteration changed in 3.11)
        fmt = "{}={:#x}" if issubclass(e, enum.IntFlag) else "{}={}"
        values = ", ".join(fmt.format(name, int(member.value)) for name, member in e.__members__.items())
        lines.append(f"| {e.__name__} | {values} |")
    return "\n".join(lines) + "\n"


SECTIONS = {
    "catalogue": render_catalogue,
    "enums": render_enums,
    "link-table": render_link_table,
}


def render(text: str) -> str:
    """``text`` with every generated section replaced by its current rendering."""
    for name, fn in SECTIONS.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n)(.*?)(<!-- /generated:{name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"section {name!r} markers missing")
        text = pattern.sub(lambda mt: mt.group(1) + fn() + mt.group(3), text)
    return text


def sync(path: str) -> bool:
    """Rewrite the generated sections of ``path``; True if the file changed."""
    with open(path, encoding="utf-8") as fh:
        old = fh.read()
    new = render(old)
    if new != old:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(new)
    return new != old


if __name__ == "__main__":  # pragma: no cover
    for p in sys.argv[1:] or ["docs/protocol.md"]:
        print(p, "updated" if sync(p) else "up to date")
