"""What a demo network is made of: where its CPs stand, what its drivers ask for, new ids."""

from __future__ import annotations

import random
from collections.abc import Collection

from ..files import open_private

__all__ = ["LOCATIONS", "write_requests_file", "next_free_id"]

#: Where demo CPs stand (the n-th CP at the n-th city, round the list).
LOCATIONS = ["Alicante", "Valencia", "Murcia", "Elche", "Benidorm", "Madrid", "Sevilla", "Bilbao", "Girona", "Teruel"]


def write_requests_file(path: str, cp_ids: list[str], count: int, rng: random.Random) -> None:
    """A demo requests file: ``count`` supplies at random CPs, some with an energy or time target."""
    lines = [f"# {count} supplies for the demo: CP_ID [TARGET]"]
    for _ in range(count):
        cp = rng.choice(cp_ids)
        roll = rng.random()
        if roll < 0.3:
            lines.append(f"{cp} {rng.choice([0.8, 1.2, 2.0])}kWh")
        elif roll < 0.6:
            lines.append(f"{cp} {rng.choice([6, 8, 12])}s")
        else:
            lines.append(cp)
    with open_private(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def next_free_id(prefix: str, known: Collection[str]) -> str:
    """``prefix`` and three digits (``CP005``), counting on from how many ids are ``known``
    to the first one not taken."""
    n = len(known) + 1
    while f"{prefix}{n:03d}" in known:
        n += 1
    return f"{prefix}{n:03d}"
