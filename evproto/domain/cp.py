"""A charge point's state as Central shows it, derived from what Central knows.

The spec's truth table: monitor down -> DISCONNECTED whatever the engine says;
monitor up and engine KO or silent -> BROKEN; otherwise the operator's STOP wins,
then a supply in progress, then ACTIVATED.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..messages import CpState

__all__ = ["CpFacts", "cp_state", "TRUTH_TABLE"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CpFacts:
    """What Central knows about one CP."""

    #: Its monitor holds an open link to Central.
    monitor_connected: bool
    #: The monitor's last report says the engine answers health checks with OK.
    engine_ok: bool
    #: The operator sent STOP and no RESUME since.
    stopped: bool
    #: A supply is running (Central heard it start and not end).
    supplying: bool


def cp_state(facts: CpFacts) -> CpState:
    """The state shown for ``facts`` (see the module docstring)."""
    return TRUTH_TABLE[(facts.monitor_connected, facts.engine_ok, facts.stopped, facts.supplying)]


def _derive(connected: bool, ok: bool, stopped: bool, supplying: bool) -> CpState:
    if not connected:
        return CpState.DISCONNECTED
    if not ok:
        return CpState.BROKEN
    if stopped:
        return CpState.STOPPED
    if supplying:
        return CpState.SUPPLYING
    return CpState.ACTIVATED


#: (monitor_connected, engine_ok, stopped, supplying) -> state, for all 16 combinations.
TRUTH_TABLE: dict[tuple[bool, bool, bool, bool], CpState] = {
    (c, o, s, p): _derive(c, o, s, p)
    for c in (False, True)
    for o in (False, True)
    for s in (False, True)
    for p in (False, True)
}
