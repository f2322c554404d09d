"""Example counts of the property tests, scaled by the loaded Hypothesis profile.

A test that asks for ``examples(300)`` runs 300 examples under the default profile
(Hypothesis' default ``max_examples`` is 100: the scale is 1) and 30 under the "fast"
profile that ``make test-fast`` loads (``max_examples=10``, registered in conftest.py).
An explicit ``@settings(max_examples=...)`` would override any profile; this keeps each
test's own proportion while letting one switch shrink them all.
"""

from __future__ import annotations

from hypothesis import settings

#: Hypothesis' own default ``max_examples``: the profile value that means "as written".
_AS_WRITTEN = 100


def examples(n: int) -> int:
    """``n`` scaled by the current profile's ``max_examples`` (per cent of Hypothesis' default)."""
    return max(1, n * settings.default.max_examples // _AS_WRITTEN)
