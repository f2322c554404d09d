"""What the benchmarks share: nearest-rank percentiles and their sections in docs/.

Each benchmark's ``--write FILE`` replaces the text between
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in FILE, leaving the prose
around it alone.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

__all__ = ["nearest_rank", "write_section"]


def nearest_rank(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 < q <= 100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


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
