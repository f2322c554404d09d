"""A driver's requests file: one CP id per line, optionally with a target (``CP001 7kWh``, ``CP002 15min``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from evproto.domain.events import (
    MAX_TARGET_DURATION_S,
    MAX_TARGET_ENERGY_KWH,
)
from evproto.idents import id_problem

__all__ = ["RequestLine", "parse_target", "parse_requests", "MAX_REQUESTS_FILE_BYTES"]


#: Largest requests file read (about 10,000 lines of supplies).
MAX_REQUESTS_FILE_BYTES = 1 << 20

_TARGET = re.compile(r"^(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>kwh|wh|s|sec|min|m)$", re.I)


@dataclass(frozen=True, slots=True)
class RequestLine:
    """One supply to ask for: a CP and, optionally, when to stop."""

    cp_id: str
    target_energy_kwh: float | None = None
    target_duration_s: float | None = None

    def describe(self) -> str:
        if self.target_energy_kwh is not None:
            return f"{self.cp_id} ({self.target_energy_kwh:g} kWh)"
        if self.target_duration_s is not None:
            return f"{self.cp_id} ({self.target_duration_s:g} s)"
        return self.cp_id


def _brief(text: str) -> str:
    """``text`` fit for an error message: bounded, invisible characters made visible."""
    return ascii(text[:40]) + ("..." if len(text) > 40 else "")


def parse_target(text: str) -> tuple[float | None, float | None]:
    """``"2.5kWh"`` -> (2.5, None); ``"30s"`` / ``"2min"`` -> (None, seconds).

    Energy must be above 0 and at most MAX_TARGET_ENERGY_KWH, a duration above 0 and
    at most MAX_TARGET_DURATION_S (what Central accepts); ValueError otherwise.
    """
    m = _TARGET.match(text.strip())
    if not m:
        raise ValueError(f"target {_brief(text)} is not like 2.5kWh, 800Wh, 30s or 2min")
    num, unit = float(m.group("num")), m.group("unit").lower()  # 400 digits make inf: refused below
    if unit in ("kwh", "wh"):
        energy_kwh = num if unit == "kwh" else num / 1000.0
        if not 0 < energy_kwh <= MAX_TARGET_ENERGY_KWH:
            raise ValueError(f"target {_brief(text)} must be above 0 and at most {MAX_TARGET_ENERGY_KWH:g} kWh")
        return energy_kwh, None
    duration_s = num * 60.0 if unit in ("min", "m") else num
    if not 0 < duration_s <= MAX_TARGET_DURATION_S:
        raise ValueError(
            f"target {_brief(text)} must be above 0 and at most {MAX_TARGET_DURATION_S:g} s "
            f"({MAX_TARGET_DURATION_S / 3600:g} h)"
        )
    return None, duration_s


def parse_requests(text: str, *, source: str = "requests") -> list[RequestLine]:
    """Parse a requests file: one ``CP_ID [TARGET]`` per line; blank lines and ``#`` comments ignored.

    ValueError naming ``source`` and the line for a line that is not valid (CP ids
    follow the id rule of evproto.idents, targets the bounds of :func:`parse_target`).
    """
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) > 2:
            raise ValueError(f"{source}:{n}: expected 'CP_ID [TARGET]', got {_brief(raw.strip())}")
        problem = id_problem(parts[0])
        if problem is not None:
            raise ValueError(f"{source}:{n}: CP id {problem}")
        energy = duration = None
        if len(parts) == 2:
            try:
                energy, duration = parse_target(parts[1])
            except ValueError as exc:
                raise ValueError(f"{source}:{n}: {exc}") from None
        out.append(RequestLine(parts[0], energy, duration))
    return out
