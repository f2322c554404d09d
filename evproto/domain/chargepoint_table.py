"""The engine's charge point as a table: every (phase, input) pair and its action.

Pure data, in the pattern of :mod:`evproto.link_table` (see there): the phases, the
inputs, the actions as enums; ``CP_TABLE[(phase, input)] -> CpAction``, complete;
what each input carries (``INPUT_ARGS``, the keyword arguments its action receives).
:class:`evproto.domain.chargepoint.ChargePoint` resolves every action to its method
once, at import, and checks it takes what its inputs carry. Unlike the link's,
these rows name no next phase: where a supply goes depends on its data (a target
reached, a refusal), so the actions move it; docs/resilience.md embeds
:func:`render_markdown` (a test keeps the two identical).
"""

from __future__ import annotations

import enum

__all__ = ["Phase", "CpInput", "CpAction", "INPUT_ARGS", "CP_ACTIONS", "CP_TABLE", "render_markdown"]


class Phase(enum.Enum):
    """Where the charge point is in a supply."""

    IDLE = "idle"
    AUTHORIZED = "authorized"
    SUPPLYING = "supplying"


class CpInput(enum.Enum):
    """Everything that can happen to a charge point."""

    MONITOR_UP = "monitor_up"
    MONITOR_DOWN = "monitor_down"
    CENTRAL_UP = "central_up"
    CENTRAL_DOWN = "central_down"
    AUTHORIZE = "authorize"
    CANCEL = "cancel"
    STOP = "stop"
    RESUME = "resume"
    KO = "ko"
    RECOVER = "recover"
    PLUG = "plug"
    UNPLUG = "unplug"
    METER = "meter"
    TICK = "tick"
    MANUAL_REQUEST = "manual_request"


class CpAction(str, enum.Enum):
    """What the charge point does for an input. The value is the name the rendered table
    shows (a str enum, so it also compares equal to that name); ``ChargePoint._a_<value>``
    carries it out."""

    IGNORE = "ignore"
    MONITOR_UP = "monitor_up"
    MONITOR_DOWN = "monitor_down"
    CENTRAL_UP = "central_up"
    CENTRAL_DOWN = "central_down"
    RESUME = "resume"
    RECOVER = "recover"
    METER = "meter"
    WITHDRAW = "withdraw"
    FINISH = "finish"
    AUTHORIZE = "authorize"
    REFUSE_BUSY = "refuse_busy"
    CANCEL = "cancel"
    STOP = "stop"
    KO = "ko"
    PLUG_REFUSED = "plug_refused"
    PLUG = "plug"
    TICK_AUTHORIZED = "tick_authorized"
    TICK_SUPPLYING = "tick_supplying"
    MANUAL_REQUEST = "manual_request"
    MANUAL_BUSY = "manual_busy"


P = Phase
I = CpInput  # noqa: E741
A = CpAction

#: What each input carries: the keyword arguments its action receives (checked at import).
INPUT_ARGS: dict[CpInput, tuple[str, ...]] = {
    I.AUTHORIZE: ("cmd",),
    I.CANCEL: ("session_id",),
    I.KO: ("source", "detail"),
    I.RECOVER: ("source",),
    I.METER: ("energy_wh", "power_w"),
    I.MANUAL_REQUEST: ("driver_id", "request_id"),
}

#: Action name -> what it does (the documentation column). ``ChargePoint._a_<name>`` carries it out.
CP_ACTIONS: dict[CpAction, str] = {
    A.IGNORE: "nothing",
    A.MONITOR_UP: "note the monitor is linked (said once)",
    A.MONITOR_DOWN: "note the monitor is lost: refuse every supply until it is back",
    A.CENTRAL_UP: "note Central is heard (said once)",
    A.CENTRAL_DOWN: "note Central is silent: no new supplies (said once)",
    A.RESUME: "clear STOP, persist",
    A.RECOVER: "clear the fault from its source; OK once none is left",
    A.METER: "count the reading's positive increment (resets and impossible jumps are not counted); with "
    "progress_with_reading, report progress when due",
    A.WITHDRAW: "set the flag, answer the authorisation withdrawn, persist &rarr; idle",
    A.FINISH: "set the flag, report SupplyFinished with the metered energy, persist &rarr; idle",
    A.AUTHORIZE: "accept (answer, persist &rarr; authorized) unless refused (answer with why)",
    A.REFUSE_BUSY: "answer a repeated command again, refuse another as busy",
    A.CANCEL: "drop the authorisation Central cancelled, persist &rarr; idle",
    A.STOP: "set STOP (out of order), persist",
    A.KO: "note the fault from its source; health checks answer KO",
    A.PLUG_REFUSED: "say no supply is authorised",
    A.PLUG: "report SupplyStarted, persist &rarr; supplying",
    A.TICK_AUTHORIZED: "withdraw once expired (&rarr; idle); plug in by itself in auto mode",
    A.TICK_SUPPLYING: "finish at the target (&rarr; idle); else report progress from a fresh reading at most "
    "once per progress interval (unless progress goes with readings), persist",
    A.MANUAL_REQUEST: "ask Central for a supply (or serve it offline when allowed), unless refused",
    A.MANUAL_BUSY: "say a supply is already authorised or running",
}

#: (phase, input) -> action. Every pair is listed; a test walks them all.
CP_TABLE: dict[tuple[Phase, CpInput], CpAction] = {}
for _phase in Phase:
    CP_TABLE.update(
        {
            (_phase, I.MONITOR_UP): A.MONITOR_UP,
            (_phase, I.CENTRAL_UP): A.CENTRAL_UP,
            (_phase, I.CENTRAL_DOWN): A.CENTRAL_DOWN,
            (_phase, I.RESUME): A.RESUME,
            (_phase, I.RECOVER): A.RECOVER,
            (_phase, I.METER): A.METER,
        }
    )
CP_TABLE.update(
    {
        (P.IDLE, I.MONITOR_DOWN): A.MONITOR_DOWN,
        (P.AUTHORIZED, I.MONITOR_DOWN): A.WITHDRAW,
        (P.SUPPLYING, I.MONITOR_DOWN): A.FINISH,
        (P.IDLE, I.AUTHORIZE): A.AUTHORIZE,
        (P.AUTHORIZED, I.AUTHORIZE): A.REFUSE_BUSY,
        (P.SUPPLYING, I.AUTHORIZE): A.REFUSE_BUSY,
        (P.IDLE, I.CANCEL): A.IGNORE,
        (P.AUTHORIZED, I.CANCEL): A.CANCEL,
        (P.SUPPLYING, I.CANCEL): A.IGNORE,
        (P.IDLE, I.STOP): A.STOP,
        (P.AUTHORIZED, I.STOP): A.WITHDRAW,
        (P.SUPPLYING, I.STOP): A.FINISH,
        (P.IDLE, I.KO): A.KO,
        (P.AUTHORIZED, I.KO): A.WITHDRAW,
        (P.SUPPLYING, I.KO): A.FINISH,
        (P.IDLE, I.PLUG): A.PLUG_REFUSED,
        (P.AUTHORIZED, I.PLUG): A.PLUG,
        (P.SUPPLYING, I.PLUG): A.IGNORE,
        (P.IDLE, I.UNPLUG): A.IGNORE,
        (P.AUTHORIZED, I.UNPLUG): A.IGNORE,
        (P.SUPPLYING, I.UNPLUG): A.FINISH,
        (P.IDLE, I.TICK): A.IGNORE,
        (P.AUTHORIZED, I.TICK): A.TICK_AUTHORIZED,
        (P.SUPPLYING, I.TICK): A.TICK_SUPPLYING,
        (P.IDLE, I.MANUAL_REQUEST): A.MANUAL_REQUEST,
        (P.AUTHORIZED, I.MANUAL_REQUEST): A.MANUAL_BUSY,
        (P.SUPPLYING, I.MANUAL_REQUEST): A.MANUAL_BUSY,
    }
)


def render_markdown() -> str:
    """The table as Markdown, one row per input and one column per phase, then the actions."""
    lines = [
        "| input | " + " | ".join(p.value for p in Phase) + " |",
        "| --- | " + " | ".join("---" for _ in Phase) + " |",
    ]
    for inp in CpInput:
        lines.append(f"| {inp.value} | " + " | ".join(CP_TABLE[(p, inp)].value for p in Phase) + " |")
    lines += ["", "| action | what it does |", "| --- | --- |"]
    lines += [f"| {action.value} | {text} |" for action, text in CP_ACTIONS.items()]
    return "\n".join(lines) + "\n"
