"""Central's monitoring panel: a rich rendering of a :class:`CentralView`, its commands and loop.

- :func:`render`: header, one coloured tile per CP, driver requests in progress, application
  messages and a command footer. Tiles shrink (bordered, 3-line, 1-line) as CPs multiply.
- :func:`parse_command`: ``s CP001``, ``r all``, ``q``... into a :class:`Command`.
- :func:`safe_text`, :func:`local_time_text`, :func:`price_text`, :func:`central_url`: how a
  view's values are written on a screen, here and in the plain reporter (terminal.py).
- :class:`KeyReader`: a small line editor on a TTY in cbreak mode; plain lines otherwise.
- :class:`PlainReporter`: change-only plain log lines, for when stdout is not a terminal.
- :func:`run_panel`: the refresh loop tying these together.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import re
from dataclasses import dataclass
from typing import Sequence

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.constrain import Constrain
from rich.layout import Layout
from rich.padding import Padding
from rich.panel import Panel
from rich.style import Style
from rich.table import Table
from rich.text import Text

from evproto.domain.central.view import CP_STATES, CentralView, CpView, MessageView, SessionView
from evproto.messages import CpState

__all__ = [
    "STATE_STYLES",
    "STATE_LOOKS",
    "StateLook",
    "COMMAND_HINT",
    "HELP_TEXT",
    "Command",
    "parse_command",
    "render",
    "safe_text",
    "local_time_text",
    "price_text",
    "central_url",
]

log = logging.getLogger("evproto.central")


@dataclass(frozen=True, slots=True)
class StateLook:
    """How one CP state looks on the panel."""

    #: Tile colours (the spec's table: green, orange, green, red, grey).
    style: Style
    #: The tile's words under the id ("" for SUPPLYING, whose tile shows the live figures).
    detail: str
    #: The word in the compact grid of a large network.
    mini: str


#: One row per CpState: adding a state without its look fails at import.
STATE_LOOKS: dict[CpState, StateLook] = {
    CpState.ACTIVATED: StateLook(Style.parse("#ffffff on #2e7d32"), "available", "ready"),
    CpState.STOPPED: StateLook(Style.parse("#000000 on #ff9800"), "Out of Order", "stopped"),
    CpState.SUPPLYING: StateLook(Style.parse("#000000 on #4cd964"), "", "supplying"),
    CpState.BROKEN: StateLook(Style.parse("#ffffff on #d32f2f"), "fault reported", "broken"),
    CpState.DISCONNECTED: StateLook(Style.parse("#ffffff on #616161"), "no contact", "offline"),
}
assert set(STATE_LOOKS) == set(CpState), "every CP state needs its look on the panel"
#: Tile colours by the state's API spelling.
STATE_STYLES: dict[str, Style] = {state.name: look.style for state, look in STATE_LOOKS.items()}
_UNKNOWN_STYLE = Style.parse("#ffffff on #37474f")
_DETAIL = {state.name: look.detail for state, look in STATE_LOOKS.items() if look.detail}
_MINI_LABEL = {state.name: look.mini for state, look in STATE_LOOKS.items()}
_LEVEL_STYLES = {"info": Style(), "warning": Style.parse("yellow"), "error": Style.parse("bold red")}
_STATUS_STYLES = {"requested": "yellow", "authorized": "cyan", "supplying": "green"}

COMMAND_HINT = "commands: s <CP|all> stop · r <CP|all> resume · q quit"
_SHORT_HINT = "s|r <CP|all> · q quit"
HELP_TEXT = (
    "s <CP|all>: stop (Out of Order) · r <CP|all>: resume · v <CP>: revoke its key · q: quit the panel · ?: help"
)

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def safe_text(value: object) -> str:
    """Text from the network, with control characters (escape sequences...) neutralised."""
    return _CONTROL_CHARS.sub("?", str(value))


def _when(ts_ms: int) -> _dt.datetime:
    try:
        return _dt.datetime.fromtimestamp(ts_ms / 1000)  # local time: the operator's clock
    except (OverflowError, OSError, ValueError):  # a corrupt timestamp must not kill the panel
        return _dt.datetime.fromtimestamp(0)


def local_time_text(ts_ms: int) -> str:
    """Epoch milliseconds as the operator's local date and time, to the second."""
    return _when(ts_ms).strftime("%Y-%m-%d %H:%M:%S")


def price_text(eur_kwh: float) -> str:
    """A price per kWh with two or three decimals (``0.35``, ``0.349``)."""
    text = f"{eur_kwh:.3f}"
    return text[:-1] if text.endswith("0") else text


def _fig(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _cut(text: str, width: int) -> str:
    t = Text(text)
    t.truncate(max(0, width), overflow="ellipsis")
    return t.plain


def _line(left: str, right: str, width: int, *, keep_left: bool = True, left_style: str | Style = "") -> Text:
    """``left`` and ``right`` on one line of ``width`` cells, shortening one of them to fit."""
    if right and cell_len(left) + 1 + cell_len(right) > width:
        if keep_left:
            right = _cut(right, width - cell_len(left) - 1)
        else:
            left = _cut(left, width - cell_len(right) - 1)
    text = Text().append(left, style=left_style)
    if right:
        text.append(" " * max(1, width - cell_len(left) - cell_len(right)))
        text.append(right)
    text.truncate(width, overflow="ellipsis")
    return text


# -- tiles -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TileSize:
    lines: int
    row_gap: int
    min_w: int
    max_w: int

    def columns(self, width: int, n: int) -> tuple[int, int]:
        """(columns, tile width) for ``n`` tiles in ``width`` cells (1-cell column gap)."""
        cols = max(1, min(max(n, 1), (width + 1) // (self.min_w + 1)))
        return cols, max(1, min(self.max_w, (width - (cols - 1)) // cols))

    def grid_lines(self, rows: int) -> int:
        return rows * self.lines + max(0, rows - 1) * self.row_gap


_FULL = _TileSize(lines=7, row_gap=0, min_w=26, max_w=32)
_COMPACT = _TileSize(lines=3, row_gap=1, min_w=20, max_w=26)
_MINI = _TileSize(lines=1, row_gap=0, min_w=15, max_w=22)
#: Tile lines allowed when the height is unknown (natural-height rendering).
_NATURAL_TILE_LINES = 30


def _style(state: str) -> Style:
    return STATE_STYLES.get(state, _UNKNOWN_STYLE)


def _full_tile(cp: CpView, width: int) -> RenderableType:
    inner = width - 4
    state = safe_text(cp.state)
    if cp.state == "SUPPLYING":
        detail = _line(f"driver {safe_text(cp.driver_id or '–')}", f"{_fig(cp.power_kw, '.1f')} kW", inner)
        extra = _line(f"{_fig(cp.energy_kwh, '.2f')} kWh", f"{_fig(cp.amount_eur, '.2f')} EUR", inner)
    else:
        detail = Text(_DETAIL.get(cp.state, ""), style="bold")
        extra = Text(", ".join(a.replace("_", " ") for a in cp.alerts))
    body = Text("\n", no_wrap=True, overflow="ellipsis").join(
        [
            Text(safe_text(cp.location)),
            Text(f"{price_text(cp.price_eur_kwh)} EUR/kWh"),
            Text(state, style="bold"),
            detail,
            extra,
        ]
    )
    style = _style(cp.state)
    return Panel(
        body,
        title=Text(safe_text(cp.id), style="bold"),
        title_align="left",
        box=box.ROUNDED,
        style=style,
        border_style=style,
        width=width,
        height=7,
        padding=(0, 1),
    )


def _compact_tile(cp: CpView, width: int) -> RenderableType:
    inner = width - 2
    cp_id = safe_text(cp.id)
    if cp.state == "SUPPLYING":
        top = _line(cp_id, f"{_fig(cp.power_kw, '.1f')} kW", inner, left_style="bold")
        last = _line(
            safe_text(cp.driver_id or "–"), f"{_fig(cp.energy_kwh, '.2f')}kWh {_fig(cp.amount_eur, '.2f')}€", inner
        )
    else:
        top = _line(cp_id, safe_text(cp.state), inner, left_style="bold")
        last = Text(_DETAIL.get(cp.state, ""), style="bold")
    mid = _line(safe_text(cp.location), f"{price_text(cp.price_eur_kwh)}€/kWh", inner, keep_left=False)
    body = Text("\n", no_wrap=True, overflow="ellipsis").join([top, mid, last])
    return Padding(body, (0, 1), style=_style(cp.state), expand=True)


def _mini_tile(cp: CpView, width: int) -> RenderableType:
    if cp.state == "SUPPLYING":
        label = f"{_fig(cp.power_kw, '.1f')} kW"
    else:
        label = _MINI_LABEL.get(cp.state, safe_text(cp.state).lower())
    text = _line(safe_text(cp.id), label, width - 2, left_style="bold")
    return Padding(text, (0, 1), style=_style(cp.state), expand=True)


_BUILDERS = {_FULL: _full_tile, _COMPACT: _compact_tile, _MINI: _mini_tile}


def _plan_tiles(n: int, width: int, budget: int, *, truncate: bool) -> tuple[_TileSize, int, int, int]:
    """(size, columns, tile width, tiles shown) for ``n`` CPs in ``budget`` lines."""
    for size in (_FULL, _COMPACT, _MINI):
        cols, tile_w = size.columns(width, n)
        if size.grid_lines(math.ceil(n / cols)) <= budget:
            return size, cols, tile_w, n
    size = _MINI
    cols, tile_w = size.columns(width, n)
    shown = n if not truncate else min(n, max(1, budget) * cols)
    if shown < n:
        shown -= 1  # one cell says how many are not shown
    return size, cols, tile_w, shown


def _summary(cps: Sequence[CpView], *, waiting: bool = False) -> Text:
    if waiting and not cps:
        return Text("No figures from Central yet", style="dim", no_wrap=True)
    if not cps:
        return Text("No charge points registered yet", style="dim", no_wrap=True)
    text = Text(no_wrap=True, overflow="ellipsis").append(f"{len(cps)} CPs ", style="bold")
    for state in CP_STATES:
        count = sum(1 for cp in cps if cp.state == state)
        text.append(f" {count} {state.lower()} ", style=STATE_STYLES[state])
        text.append(" ")
    text.rstrip()
    return text


def _tiles(
    cps: Sequence[CpView], width: int, budget: int, *, truncate: bool, waiting: bool = False
) -> tuple[RenderableType, int]:
    """The summary line and the tile grid, and how many lines they take (``waiting``: the
    view holds nothing from Central yet)."""
    if not cps:
        return _summary(cps, waiting=waiting), 1
    size, cols, tile_w, shown = _plan_tiles(len(cps), width, budget, truncate=truncate)
    build = _BUILDERS[size]
    grid = Table.grid(padding=(0, 1, 0, 0), pad_edge=False)
    for _ in range(cols):
        grid.add_column(width=tile_w, no_wrap=True)
    cells: list[RenderableType] = [build(cp, tile_w) for cp in cps[:shown]]
    if shown < len(cps):
        cells.append(Padding(Text(f"+{len(cps) - shown} more", style="bold"), (0, 1), style="reverse", expand=True))
    rows = [cells[i : i + cols] for i in range(0, len(cells), cols)]
    for i, row in enumerate(rows):
        if i and size.row_gap:
            grid.add_row()
        grid.add_row(*row)
    return Group(_summary(cps), grid), 1 + size.grid_lines(len(rows))


# -- the other sections ----------------------------------------------------------------------


def _header(view: CentralView, width: int) -> tuple[RenderableType, int]:
    bar = Style.parse("bold #ffffff on #1f3a5f")
    title = Text("EV Charging Network: Central", style=bar)
    title.append(f"  {safe_text(view.central_id)}", style=Style.parse("#9ecbff on #1f3a5f"))
    top = Table.grid(expand=True, padding=(0, 1), pad_edge=True)
    top.style = bar
    top.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
    top.add_column(justify="right", no_wrap=True)
    top.add_row(title, Text(local_time_text(view.now_ts_ms) if view.now_ts_ms else "", style=bar))
    if not view.now_ts_ms:  # nothing from Central yet (a remote panel): no addresses or states to show
        waiting = Text(
            f" connecting to Central at {central_url(view.http)} ...", style="dim", no_wrap=True, overflow="ellipsis"
        )
        return Group(top, waiting), 2
    addresses = Text(no_wrap=True, overflow="ellipsis")
    addresses.append("socket ", style="dim").append(safe_text(view.listen or "–"))
    addresses.append(" · HTTP ", style="dim").append(safe_text(view.http or "–"))
    kafka = Text().append("Kafka ", style="dim").append(safe_text(view.kafka or "–"))
    kafka.append(" ● reachable" if view.kafka_ok else " ● UNREACHABLE", style="green" if view.kafka_ok else "bold red")
    if "telemetry_age_p99_ms" in view.counters:  # how fresh the figures below are
        kafka.append(f" · telemetry age p99 {view.counters['telemetry_age_p99_ms']} ms", style="dim")
    kafka.no_wrap, kafka.overflow = True, "ellipsis"
    if addresses.cell_len + 3 + kafka.cell_len <= width - 1:
        return Group(top, Text(" ").append_text(addresses).append(" · ", style="dim").append_text(kafka)), 2
    return Group(top, Text(" ").append_text(addresses), Text(" ").append_text(kafka)), 3


def _requests(requests: Sequence[SessionView], max_rows: int | None) -> RenderableType:
    title = f"Driver requests in progress ({len(requests)})"
    if not requests:
        return Text("Driver requests in progress: none", style="dim")
    if max_rows is not None and max_rows < 1:
        return Text(f"{title}: enlarge the terminal to list them", style="bold")
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        header_style="bold dim",
    )
    for name in ("Date", "Start", "Driver", "CP", "Status"):
        table.add_column(name, no_wrap=True, overflow="ellipsis")
    shown = list(requests)
    if max_rows is not None and len(shown) > max_rows:
        shown = shown[: max_rows - 1]
    for s in shown:
        when = _when(s.requested_ts_ms)
        status = Text(safe_text(s.status), style=_STATUS_STYLES.get(s.status, ""))
        table.add_row(
            when.strftime("%Y-%m-%d"), when.strftime("%H:%M:%S"), safe_text(s.driver_id), safe_text(s.cp_id), status
        )
    if len(shown) < len(requests):
        table.add_row("", "", Text(f"+{len(requests) - len(shown)} more", style="dim"))
    return table


class _MessageLines:
    """The latest messages, as many as fit in the height rich gives (``default`` if none)."""

    def __init__(self, messages: Sequence[MessageView], default: int) -> None:
        self.messages, self.default = messages, default

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        room = options.height if options.height is not None else self.default
        if not self.messages:
            yield Text("no messages yet", style="dim")
            return
        lines = []
        for m in self.messages[-room:] if room > 0 else ():
            line = Text().append(_when(m.ts_ms).strftime("%H:%M:%S "), style="dim")
            line.append(safe_text(m.text), style=_LEVEL_STYLES.get(m.level, ""))
            lines.append(line)
        yield Text("\n", no_wrap=True, overflow="ellipsis").join(lines)


def _messages(messages: Sequence[MessageView], default: int = 8) -> RenderableType:
    return Panel(
        _MessageLines(messages, default),
        title="Application messages",
        title_align="left",
        border_style="grey50",
        box=box.ROUNDED,
        padding=(0, 1),
    )


def _footer(input_line: str, notice: str | Text, width: int) -> RenderableType:
    note = notice if isinstance(notice, Text) else Text(safe_text(notice), style="bold cyan")
    note.no_wrap, note.overflow = True, "ellipsis"
    hint = next((h for h in (COMMAND_HINT, _SHORT_HINT) if len(h) + 24 <= width), "")
    prompt = Text(no_wrap=True).append(hint, style="dim")
    prompt.append("   > " if hint else "> ", style="bold")
    room = max(1, width - prompt.cell_len - 1)
    typed = safe_text(input_line)
    if cell_len(typed) > room:  # keep the end of a long line visible, where the typing is
        typed = "…" + typed[-(room - 1) :]
    prompt.append(typed, style="bold").append(" ", style="reverse")
    return Group(note, prompt)


class _Sized:
    """Renders ``renderable`` at exactly ``width`` x ``height``."""

    def __init__(self, renderable: RenderableType, width: int, height: int) -> None:
        self.renderable, self.width, self.height = renderable, width, height

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from console.render(
            self.renderable, options.update_dimensions(min(self.width, options.max_width), self.height)
        )


def render(
    view: CentralView, *, width: int = 120, input_line: str = "", notice: str | Text = "", height: int | None = None
) -> RenderableType:
    """The monitoring panel for ``view``, ``width`` cells wide.

    With ``height`` the panel fills exactly that many lines (the footer on the last two,
    tiles shrinking and messages trimmed to fit); without, it takes its natural height.
    ``notice`` is the feedback line shown above the command prompt.
    """
    width = max(20, width)
    header, header_h = _header(view, width)
    footer = _footer(input_line, notice, width)
    if height is None:
        tiles, _ = _tiles(view.cps, width, _NATURAL_TILE_LINES, truncate=False, waiting=not view.now_ts_ms)
        return Constrain(Group(header, tiles, _requests(view.requests, 10), _messages(view.messages), footer), width)
    avail = max(0, height - header_h - 2)
    req_full = 3 + len(view.requests) if view.requests else 1
    msg_min = 3
    tiles, tiles_h = _tiles(
        view.cps, width, avail - 1 - min(req_full, 6) - msg_min, truncate=True, waiting=not view.now_ts_ms
    )
    rest = max(0, avail - tiles_h)
    req_h = max(0, min(req_full, rest - msg_min))
    msg_h = rest - req_h
    layout = Layout()
    parts = [Layout(header, size=header_h), Layout(tiles, size=tiles_h)]
    if req_h:
        parts.append(Layout(_requests(view.requests, req_h - 3), size=req_h))
    if msg_h >= msg_min:
        parts.append(Layout(_messages(view.messages), size=msg_h))
    elif msg_h:
        parts.append(Layout(Text(""), size=msg_h))
    parts.append(Layout(footer, size=2))
    layout.split_column(*parts)
    return _Sized(layout, width, height)


# -- commands --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """An operator command: ``action`` is stop, resume, revoke, quit or help; ``target`` a
    CP id (as typed) or None for every CP (not for revoke)."""

    action: str
    target: str | None = None


_VERBS = {
    "s": "stop",
    "stop": "stop",
    "r": "resume",
    "resume": "resume",
    "v": "revoke",
    "revoke": "revoke",
    "q": "quit",
    "quit": "quit",
    "exit": "quit",
    "?": "help",
    "h": "help",
    "help": "help",
}


def parse_command(line: str) -> Command | None:
    """The command typed on ``line``, None for a blank line; ValueError says what is wrong."""
    words = line.split()
    if not words:
        return None
    verb, args = words[0].lower(), words[1:]
    action = _VERBS.get(verb)
    if action is None:
        raise ValueError(f"unknown command {safe_text(words[0])!r}: try s <CP|all>, r <CP|all>, v <CP>, q or ?")
    if action in ("quit", "help"):
        if args:
            raise ValueError(f"{action} takes no argument")
        return Command(action)
    if action == "revoke":
        if len(args) != 1 or args[0].lower() == "all":
            raise ValueError(f"revoke needs one CP id, e.g. '{verb} CP001'")
        return Command(action, args[0])
    if len(args) != 1:
        raise ValueError(f"{action} needs one CP id or 'all', e.g. '{verb} CP001' or '{verb} all'")
    return Command(action, None if args[0].lower() == "all" else args[0])


# -- keyboard --------------------------------------------------------------------------------


def central_url(http: str | None) -> str:
    """Central's HTTP address as a URL (``https://...`` when the view names its scheme)."""
    text = safe_text(http or "?")
    return text if "://" in text else f"http://{text}"
