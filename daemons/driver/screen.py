"""The driver's live screen, without I/O: what it shows (:class:`DriverScreen`) and how (:func:`render`).

The app tells the screen what happens (a request sent, each update Central sends about
it, the live readings chosen by :class:`.figures.LiveFigures`, tickets, CP states); the
terminal adapter (:mod:`.live`) draws :func:`render` a few times a second. Times are
epoch milliseconds passed in, so a test renders any moment it likes.
"""

from __future__ import annotations

import collections
import heapq
from dataclasses import dataclass, field

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from evproto.domain.events import CpStateRecord, DriverTelemetry, RequestUpdate, Ticket
from evproto.domain.session import SessionStatus
from evproto.messages import CpState, EndReason

from ..central.panel import STATE_LOOKS, local_time_text, price_text, safe_text
from .requests import RequestLine

__all__ = [
    "StepView",
    "RequestView",
    "SupplyView",
    "DriverScreen",
    "render",
    "ticket_text",
    "elapsed_text",
    "KEYS_HINT",
    "MAX_REQUESTS_SHOWN",
    "MAX_TICKETS_SHOWN",
    "MAX_NOTES",
    "MAX_CPS_SHOWN",
]

#: Requests kept on the screen (the newest; older ones have their tickets).
MAX_REQUESTS_SHOWN = 3
#: Tickets listed (the newest); the count covers them all.
MAX_TICKETS_SHOWN = 5
#: Charge points listed by ``l`` (available ones first).
MAX_CPS_SHOWN = 20
#: Warnings kept at the bottom of the screen (Central silent, a bad record skipped...).
MAX_NOTES = 3
#: Steps kept per request (a supply has at most five; a restart may repeat some).
_MAX_STEPS = 8

KEYS_HINT = "l charge points · r CP_ID [2.5kWh|30s] Enter: request · q quit"

_STATUS_STYLES = {
    SessionStatus.REQUESTED: "yellow",
    SessionStatus.AUTHORIZED: "cyan",
    SessionStatus.SUPPLYING: "bold green",
    SessionStatus.COMPLETED: "bold green",
    SessionStatus.INTERRUPTED: "bold yellow",
    SessionStatus.DENIED: "bold red",
}
assert set(_STATUS_STYLES) == set(SessionStatus), "every session status needs its colour on the driver's screen"


def ticket_text(ev: Ticket) -> str:
    """The one-line ticket, as the driver's log and screen show it."""
    minutes = max(0.0, (ev.ended_ts_ms - ev.started_ts_ms) / 60000)
    return (
        f"TICKET session {ev.session_id} at {ev.cp_id}: {ev.energy_kwh:.3f} kWh x {ev.price_eur_kwh:.2f} "
        f"EUR/kWh = {ev.amount_eur:.2f} EUR, {minutes:.1f} min, {ev.status} "
        f"({EndReason.from_token(ev.end_reason).label})"
    )


def elapsed_text(seconds: float) -> str:
    """``75`` -> ``"01:15"``; an hour or more -> ``"1:02:03"``; never negative."""
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


@dataclass(frozen=True, slots=True, kw_only=True)
class StepView:
    """One step of a request: sent by this app (``status`` None), or an update from Central."""

    status: SessionStatus | None
    ts_ms: int
    #: Central's words for the step (for a denial: why).
    text: str = ""
    #: The reason token of a denial or an early end ("cp_busy", "not_plugged"...).
    reason: str = ""


@dataclass(slots=True, kw_only=True)
class RequestView:
    """A request and its steps so far."""

    request_id: str
    cp_id: str
    target: str
    steps: list[StepView] = field(default_factory=list)

    @property
    def status(self) -> SessionStatus | None:
        """The latest status Central gave (None: not answered yet)."""
        for step in reversed(self.steps):
            if step.status is not None:
                return step.status
        return None


@dataclass(slots=True, kw_only=True)
class SupplyView:
    """The supply in progress and its latest reading."""

    session_id: int
    cp_id: str
    #: When Central said it started (None: the app came in after that, e.g. restarted).
    started_ts_ms: int | None = None
    power_kw: float = 0.0
    energy_kwh: float = 0.0
    amount_eur: float = 0.0


@dataclass(slots=True)
class DriverScreen:
    """Everything the driver's screen shows, updated by the app's events."""

    driver_id: str
    requests: collections.deque[RequestView] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_REQUESTS_SHOWN)
    )
    supply: SupplyView | None = None
    tickets: collections.deque[Ticket] = field(default_factory=lambda: collections.deque(maxlen=MAX_TICKETS_SHOWN))
    tickets_total: int = 0
    #: CP id -> its latest state record (from the cp-state topic).
    cps: dict[str, CpStateRecord] = field(default_factory=dict)
    show_cps: bool = False
    #: Heartbeats from Central arrive (None: too early to say, see CentralWatch.state).
    central_reachable: bool | None = None
    notes: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=MAX_NOTES))
    #: The command line being typed.
    typed: str = ""

    # -- what happens ----------------------------------------------------------------------

    def request_sent(self, *, request_id: str, line: RequestLine, ts_ms: int) -> None:
        """This app handed a request to Kafka."""
        view = self._request(request_id, line.cp_id, line.describe())
        view.steps.append(StepView(status=None, ts_ms=ts_ms, text=f"request sent for {line.describe()}"))

    def request_update(self, ev: RequestUpdate) -> None:
        """Central's news about a request: the next step, and the end of its supply when final."""
        view = self._request(ev.request_id, ev.cp_id, ev.cp_id)
        status = SessionStatus(ev.status)
        if len(view.steps) < _MAX_STEPS:
            view.steps.append(StepView(status=status, ts_ms=ev.ts_ms, text=ev.message, reason=ev.reason))
        if ev.session_id is None:
            return
        if status is SessionStatus.SUPPLYING:
            if self.supply is None or self.supply.session_id != ev.session_id:
                self.supply = SupplyView(session_id=ev.session_id, cp_id=ev.cp_id, started_ts_ms=ev.ts_ms)
            elif self.supply.started_ts_ms is None:
                self.supply.started_ts_ms = ev.ts_ms
        elif status.final:
            self._ended(ev.session_id)

    def reading(self, ev: DriverTelemetry) -> None:
        """A live reading to show (chosen by LiveFigures: never stale, never after the end)."""
        if self.supply is None or self.supply.session_id != ev.session_id:
            self.supply = SupplyView(session_id=ev.session_id, cp_id=ev.cp_id)
        self.supply.power_kw, self.supply.energy_kwh, self.supply.amount_eur = ev.power_kw, ev.energy_kwh, ev.amount_eur

    def ticket(self, ev: Ticket) -> None:
        """A new ticket (the app drops repeats)."""
        self.tickets.append(ev)
        self.tickets_total += 1
        self._ended(ev.session_id)

    def cp_state(self, ev: CpStateRecord) -> None:
        """A CP's state as Central published it."""
        self.cps[ev.cp_id] = ev

    def cp_removed(self, cp_id: str) -> None:
        """A CP left the network."""
        self.cps.pop(cp_id, None)

    def toggle_cps(self) -> None:
        """Show or hide the list of charge points."""
        self.show_cps = not self.show_cps

    def note(self, text: str) -> None:
        """A warning for the bottom of the screen."""
        self.notes.append(text)

    def _request(self, request_id: str, cp_id: str, target: str) -> RequestView:
        for view in self.requests:
            if view.request_id == request_id:
                return view
        view = RequestView(request_id=request_id, cp_id=cp_id, target=target)
        self.requests.append(view)
        return view

    def _ended(self, session_id: int) -> None:
        if self.supply is not None and self.supply.session_id == session_id:
            self.supply = None


# -- rendering -------------------------------------------------------------------------------


def _clock(ts_ms: int) -> str:
    return local_time_text(ts_ms)[-8:]  # the time of day: the date is today's


def _supply(screen: DriverScreen, now_ms: int) -> RenderableType:
    s = screen.supply
    if s is None:
        return Text("no supply in progress", style="dim")
    elapsed = "–" if s.started_ts_ms is None else elapsed_text((now_ms - s.started_ts_ms) / 1000)
    grid = Table.grid(padding=(0, 3))
    for _ in range(5):
        grid.add_column(justify="right")
    grid.add_row(*(Text(h, style="dim") for h in ("CP", "kW", "kWh", "EUR", "elapsed")))
    grid.add_row(
        Text(safe_text(s.cp_id), style="bold"),
        f"{s.power_kw:.1f}",
        f"{s.energy_kwh:.3f}",
        f"{s.amount_eur:.2f}",
        elapsed,
    )
    return grid


def _step_line(step: StepView) -> Text:
    line = Text(f"{_clock(step.ts_ms)}  ")
    if step.status is None:
        line.append("SENT", style="dim")
    else:
        line.append(step.status.name, style=_STATUS_STYLES[step.status])
    if step.status is SessionStatus.DENIED:
        line.append(f": {safe_text(step.text or step.reason or step.status.value)}", style="red")
    elif step.text:
        line.append(f"  {safe_text(step.text)}")
    return line


def _requests(screen: DriverScreen) -> RenderableType:
    if not screen.requests:
        return Text("no request yet", style="dim")
    parts: list[RenderableType] = []
    for view in screen.requests:
        parts.append(Text(f"{safe_text(view.target)}  ", style="bold").append(view.request_id[:8], style="dim"))
        parts += [Text("  ").append_text(_step_line(step)) for step in view.steps]
    return Group(*parts)


def _end_text(t: Ticket) -> str:
    label = EndReason.from_token(t.end_reason).label
    return label if label == t.status else f"{t.status} ({label})"


def _tickets(screen: DriverScreen) -> RenderableType:
    if not screen.tickets:
        return Text("no ticket yet", style="dim")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name, justify in (
        ("session", "right"),
        ("CP", "left"),
        ("kWh", "right"),
        ("EUR/kWh", "right"),
        ("EUR", "right"),
        ("min", "right"),
        ("end", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for t in reversed(screen.tickets):
        minutes = max(0.0, (t.ended_ts_ms - t.started_ts_ms) / 60000)
        table.add_row(
            str(t.session_id),
            safe_text(t.cp_id),
            f"{t.energy_kwh:.3f}",
            price_text(t.price_eur_kwh),
            f"{t.amount_eur:.2f}",
            f"{minutes:.1f}",
            Text(_end_text(t), style=_STATUS_STYLES[SessionStatus(t.status)]),
        )
    return table


def _cps(screen: DriverScreen) -> RenderableType:
    if not screen.cps:
        return Text("no charge point known yet", style="dim")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("CP")
    table.add_column("location")
    table.add_column("EUR/kWh", justify="right")
    table.add_column("state")
    # Available ones first: they are the ones a driver can ask for. A big network's list is
    # cut: the screen is redrawn 4 times a second and a terminal shows a few dozen lines.
    order = heapq.nsmallest(
        MAX_CPS_SHOWN, screen.cps.values(), key=lambda c: (c.state != CpState.ACTIVATED.name, c.cp_id)
    )
    for c in order:
        look = STATE_LOOKS.get(CpState[c.state]) if c.state in CpState.__members__ else None
        detail = f" {look.detail}" if look is not None and look.detail else ""
        table.add_row(
            safe_text(c.cp_id),
            safe_text(c.location),
            price_text(c.price_eur_kwh),
            Text(f" {c.state}{detail} ", style=look.style if look is not None else ""),
        )
    if len(screen.cps) > len(order):
        table.add_row(Text(f"… and {len(screen.cps) - len(order)} more", style="dim"))
    return table


def render(screen: DriverScreen, *, now_ms: int) -> RenderableType:
    """The whole screen at ``now_ms``."""
    central = (
        ("Central: waiting for its heartbeat", "yellow")
        if screen.central_reachable is None
        else ("Central reachable", "green")
        if screen.central_reachable
        else ("Central NOT reachable", "bold red")
    )
    title = Text.assemble(("Driver ", "bold"), (safe_text(screen.driver_id), "bold"), "  ", central)
    parts: list[RenderableType] = [
        Panel(_supply(screen, now_ms), title="Supply", title_align="left", box=box.ROUNDED),
        Panel(_requests(screen), title="Requests", title_align="left", box=box.ROUNDED),
        Panel(_tickets(screen), title=f"Tickets ({screen.tickets_total})", title_align="left", box=box.ROUNDED),
    ]
    if screen.show_cps:
        available = sum(c.state == CpState.ACTIVATED.name for c in screen.cps.values())
        parts.append(
            Panel(
                _cps(screen),
                title=f"Charge points ({available} available of {len(screen.cps)})",
                title_align="left",
                box=box.ROUNDED,
            )
        )
    parts += [Text(safe_text(n), style="yellow") for n in screen.notes]
    footer = Text(KEYS_HINT, style="dim")
    if screen.typed:
        footer = Text("> ", style="bold").append(safe_text(screen.typed)).append("▏", style="blink")
    parts.append(footer)
    return Panel(Group(*parts), title=title, title_align="left", box=box.HEAVY)
