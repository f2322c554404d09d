"""The locations file: one city per line, ``#`` comments, edited while ``ev-weather`` runs.

Read again whenever its modification time or size changes. A bad line is reported and
skipped, never fatal; a file that vanishes keeps the last list (an editor saving by
rename must not empty it for a cycle).
"""

from __future__ import annotations

import os

__all__ = ["MAX_LOCATIONS", "MAX_LOCATION_CHARS", "MAX_FILE_BYTES", "parse_locations", "LocationsFile"]

#: Locations watched at most (file and Central's together).
MAX_LOCATIONS = 1000
#: As Central takes them (daemons/central/weather.py).
MAX_LOCATION_CHARS = 64
MAX_FILE_BYTES = 256 * 1024


def parse_locations(text: str, source: str) -> tuple[list[str], list[str]]:
    """The cities in ``text`` (first spelling of each, case-insensitively) and a line per problem."""
    cities: dict[str, str] = {}
    problems = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if len(line) > MAX_LOCATION_CHARS or not line.isprintable():
            problems.append(f"{source}:{n}: not a city name (1-{MAX_LOCATION_CHARS} printable characters): skipped")
            continue
        if len(cities) >= MAX_LOCATIONS:
            problems.append(f"{source}:{n}: more than {MAX_LOCATIONS} locations: the rest is skipped")
            break
        cities.setdefault(line.casefold(), line)
    return list(cities.values()), problems


class LocationsFile:
    """``refresh()`` re-reads the file when it changed; ``locations`` is the current list."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.locations: list[str] = []
        self._stamp: tuple[int, int] | None = None
        self._missing_told = False

    def refresh(self) -> list[str] | None:
        """Re-read the file if it changed: the problems found (an empty list: read, all
        good); None when nothing changed."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if self._missing_told:
                return None
            self._missing_told = True
            return [f"{self.path}: {exc.strerror or exc}; keeping {len(self.locations)} location(s)"]
        self._missing_told = False
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                text = fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            return [f"{self.path}: {exc.strerror or exc}; keeping {len(self.locations)} location(s)"]
        problems = []
        if len(text) > MAX_FILE_BYTES:
            text = text[:MAX_FILE_BYTES].rsplit("\n", 1)[0]
            problems.append(f"{self.path}: larger than {MAX_FILE_BYTES} bytes: only the start is read")
        self.locations, more = parse_locations(text, self.path)
        return problems + more
