"""What the benchmarks share: their sections in docs/ (percentiles: evproto.daemons.stats).

Each benchmark's ``--write FILE`` replaces the text between
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in FILE, leaving the prose
around it alone.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["write_section"]


def write_section(path: Path, name: str, body: str, *, append: bool = True, intro: str = "") -> bool:
    """Put ``body`` between the ``bench:name`` markers of ``path``.

    Without the markers: with ``append``, add ``intro`` and the marked section at
    the end (creating the file if need be) and return True; otherwise change
    nothing and return False.
    """
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(start) + r"\n(.*?)" + re.escape(end), re.S)
    block = f"{start}\n{body}{end}"
    if pattern.search(text):
        text = pattern.sub(lambda m: block, text, count=1)
    elif append:
        text = (text.rstrip("\n") + "\n\n" if text else "") + intro + block + "\n"
    else:
        return False
    path.write_text(text, encoding="utf-8")
    return True
