"""Central's monitoring panel: rendering, commands, the key reader (real pty), plain output
and the panel loop in both modes."""

from __future__ import annotations

import asyncio
import io
import os
import re
import sys
import termios
import time
from typing import Iterator

import pytest
from rich.color import ColorTriplet
from rich.console import Console
from rich.segment import Segment

from evproto.daemons.central.panel import HELP_TEXT, Command, parse_command, render
from evproto.daemons.central.terminal import PANEL_CPU_SHARE, KeyReader, PlainReporter, redraw_wait, run_panel
from evproto.domain.central.view import CP_STATES, CentralView, CpView, MessageView, SessionView

T0 = 1_795_832_400_000  # 2026-11-28 02:20:00 UTC
GUARD_S = 10.0  # only stops a hang; never a timing assertion
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Panel times are local: pin the zone so the expected strings hold anywhere."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


# -- views -----------------------------------------------------------------------------------


def make_cp(i: int, state: str) -> CpView:
    figures = {}
    if state == "SUPPLYING":
        figures = dict(driver_id=f"D{i:03d}", power_kw=7.2, energy_kwh=3.456, amount_eur=1.21)
    return CpView(id=f"CP{i:03d}", location=f"Street {i}", price_eur_kwh=0.35, state=state, **figures)


def make_view(n_cps: int, *, messages: int = 4, **overrides) -> CentralView:
    if n_cps == 3:
        cps = (make_cp(1, "ACTIVATED"), make_cp(2, "SUPPLYING"), make_cp(3, "STOPPED"))
    else:
        cps = tuple(make_cp(i + 1, CP_STATES[i % len(CP_STATES)]) for i in range(n_cps))
    fields = dict(
        cps=cps,
        requests=(
            SessionView(
                id=7,
                cp_id="CP002",
                driver_id="D002",
                status="supplying",
                requested_ts_ms=T0 - 65_000,
                started_ts_ms=T0 - 60_000,
            ),
            SessionView(id=8, cp_id="CP001", driver_id="D777", status="requested", requested_ts_ms=T0 - 2_000),
        ),
        messages=tuple(
            MessageView(
                ts_ms=T0 - 1000 * (messages - i), level=("info", "warning", "error")[i % 3], text=f"message {i}"
            )
            for i in range(messages)
        ),
        central_id="central-1",
        listen="0.0.0.0:7001",
        http="127.0.0.1:8001",
        kafka="127.0.0.1:9092",
        kafka_ok=True,
        now_ts_ms=T0,
    )
    fields.update(overrides)
    return CentralView(**fields)


def console(width: int, height: int = 25) -> Console:
    return Console(
        record=True, width=width, height=height, force_terminal=True, color_system="truecolor", file=io.StringIO()
    )


def text_of(view: CentralView, width: int, **kwargs) -> str:
    c = console(width)
    c.print(render(view, width=width, **kwargs))
    return c.export_text()


def lines_of(view: CentralView, width: int, **kwargs) -> list[list[Segment]]:
    c = console(width)
    return c.render_lines(render(view, width=width, **kwargs), c.options, pad=False)


def style_of(lines: list[list[Segment]], needle: str):
    """The style of the first segment whose text contains ``needle``."""
    for line in lines:
        for seg in line:
            if needle in seg.text:
                return seg.style
    raise AssertionError(f"{needle!r} not rendered")


def rgb(color) -> ColorTriplet:
    return color.get_truecolor()


def looks(state: str, c: ColorTriplet) -> bool:
    """The spec's colour names, loosely: green, orange, red, grey."""
    r, g, b = c
    return {
        "ACTIVATED": g > 100 and g > 1.3 * r and g > 1.3 * b,
        "SUPPLYING": g > 100 and g > 1.3 * r and g > 1.3 * b,
        "STOPPED": r > 200 and 90 < g < 200 and b < 90,
        "BROKEN": r > 150 and g < 90 and b < 90,
        "DISCONNECTED": max(c) - min(c) < 30 and 50 < r < 200,
    }[state]


# -- render ----------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [80, 160])
def test_three_cps_show_id_location_price_state_and_supply(width):
    text = text_of(make_view(3), width)
    for i in (1, 2, 3):
        assert f"CP00{i}" in text and f"Street {i}" in text
    assert text.count("0.35 EUR/kWh") == 3
    for state in ("ACTIVATED", "SUPPLYING", "STOPPED"):
        assert state in text
    assert "Out of Order" in text
    assert "D002" in text and "7.2 kW" in text and "3.46 kWh" in text and "1.21 EUR" in text
    assert max(len(line) for line in text.splitlines()) <= width


def test_header_shows_title_addresses_kafka_and_time():
    text = text_of(make_view(3), 120)
    first, second = text.splitlines()[:2]
    assert "EV Charging Network: Central" in first and "central-1" in first
    assert "2026-11-28 02:20:00" in first
    for part in ("0.0.0.0:7001", "127.0.0.1:8001", "127.0.0.1:9092", "reachable"):
        assert part in second
    down = text_of(make_view(3, kafka_ok=False), 80)
    assert "UNREACHABLE" in down


@pytest.mark.parametrize("width", [80, 160])
@pytest.mark.parametrize("n_cps", [3, 50])
def test_tile_colours_follow_the_spec(width, n_cps):
    view = make_view(n_cps)
    lines = lines_of(view, width)
    seen = set()
    for cp in view.cps:
        style = style_of(lines, cp.id)
        assert style is not None and style.bgcolor is not None, cp
        assert looks(cp.state, rgb(style.bgcolor)), (cp.state, rgb(style.bgcolor))
        seen.add(cp.state)
    assert seen == ({"ACTIVATED", "SUPPLYING", "STOPPED"} if n_cps == 3 else set(CP_STATES))


@pytest.mark.parametrize("width", [80, 160])
def test_fifty_cps_render_compact_with_every_id(width):
    view = make_view(50)
    text = text_of(view, width)
    for cp in view.cps:
        assert cp.id in text
    assert "50 CPs" in text and "10 disconnected" in text
    assert len(text.splitlines()) < 45  # 50 bordered tiles would take 70+ lines
    assert max(len(line) for line in text.splitlines()) <= width


@pytest.mark.parametrize(("width", "height"), [(80, 24), (160, 24), (80, 50), (160, 50)])
@pytest.mark.parametrize("n_cps", [0, 3, 50])
def test_fixed_height_fills_the_screen_exactly(width, height, n_cps):
    view = make_view(n_cps, messages=100)
    c = console(width, height)
    c.print(render(view, width=width, height=height, input_line="s CP0"))
    lines = c.export_text().splitlines()
    assert len(lines) == height
    assert "> s CP0" in lines[-1] and "commands:" in lines[-1]
    assert "EV Charging Network: Central" in lines[0]
    text = "\n".join(lines)
    assert "message 99" in text and "message 0 " not in text  # only the latest fit
    if n_cps == 50 and height == 50:
        assert all(cp.id in text for cp in view.cps)
    if n_cps == 50 and (width, height) == (80, 24):
        assert "CP001" in text
    if n_cps == 3:
        assert "Out of Order" in text and "D777" in text


def test_too_many_cps_for_the_screen_say_how_many_are_hidden():
    view = make_view(200)
    c = console(80, 24)
    c.print(render(view, width=80, height=24))
    lines = c.export_text().splitlines()
    assert len(lines) == 24
    assert "CP001" in lines[3] and "200 CPs" in lines[2]
    hidden = [line for line in lines if "more" in line and "+" in line]
    assert hidden and hidden[0].split("+")[1].split()[0].isdigit()


def test_no_cps():
    text = text_of(make_view(0, requests=(), messages=0), 80)
    assert "No charge points registered yet" in text
    assert "Driver requests in progress: none" in text
    assert "no messages yet" in text


def test_requests_table():
    text = text_of(make_view(3), 80)
    assert "Driver requests in progress (2)" in text
    rows = [line for line in text.splitlines() if line.startswith("2026-11-28")]
    assert len(rows) == 2
    assert rows[0].split() == ["2026-11-28", "02:18:55", "D002", "CP002", "supplying"]
    assert rows[1].split() == ["2026-11-28", "02:19:58", "D777", "CP001", "requested"]


def test_messages_pane_shows_latest_with_level_colours():
    view = make_view(3, messages=20)
    text = text_of(view, 80)
    assert "message 19" in text and "02:19:59" in text
    assert "message 0 " not in text  # bounded without a height too
    lines = lines_of(view, 80)
    assert style_of(lines, "message 18").color is None  # 18 % 3 == 0: info
    assert style_of(lines, "message 19").color.name == "yellow"  # warning
    error = style_of(lines, "message 17")  # error
    assert error.color.name == "red" and error.bold
    assert not style_of(lines, "02:19:59").color and style_of(lines, "02:19:59").dim


def test_footer_shows_hint_input_and_notice():
    text = text_of(make_view(3), 80, input_line="s CP0", notice="STOP sent to CP001")
    last = text.splitlines()[-1]
    assert last.startswith("commands: s <CP|all> stop · r <CP|all> resume · q quit")
    assert last.rstrip().endswith("> s CP0")
    assert "STOP sent to CP001" in text.splitlines()[-2]
    long = text_of(make_view(3), 80, input_line="s " + "X" * 100 + "END")
    assert "END" in long.splitlines()[-1]


def test_text_from_the_network_cannot_inject_escape_sequences():
    cp = CpView(id="CP\x1b[2J1", location="\x1b]0;owned\x07", price_eur_kwh=0.3, state="ACTIVATED")
    view = make_view(
        3,
        cps=(cp,),
        messages=0,
        requests=(SessionView(id=1, cp_id="CP\x1b1", driver_id="D\x9b1", status="requested", requested_ts_ms=T0),),
    )
    c = console(80)
    c.print(render(view, width=80))
    text = c.export_text()
    assert "\x1b" not in text and "\x9b" not in text and "\x07" not in text
    assert "CP?[2J1" in text and "D?1" in text


# -- parse_command ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("s CP001", Command("stop", "CP001")),
        ("stop CP001", Command("stop", "CP001")),
        ("S cp001", Command("stop", "cp001")),
        ("  STOP   CP001  ", Command("stop", "CP001")),
        ("s all", Command("stop", None)),
        ("s ALL", Command("stop", None)),
        ("r CP001", Command("resume", "CP001")),
        ("Resume all", Command("resume", None)),
        ("q", Command("quit")),
        ("QUIT", Command("quit")),
        ("?", Command("help")),
        ("help", Command("help")),
        ("", None),
        ("   ", None),
    ],
)
def test_parse_command(line, command):
    assert parse_command(line) == command


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("x CP001", "unknown command 'x'"),
        ("stp CP001", "unknown command"),
        ("s", "stop needs one CP id or 'all'"),
        ("r", "resume needs one CP id or 'all'"),
        ("s CP1 CP2", "stop needs one CP id"),
        ("q now", "quit takes no argument"),
        ("? me", "help takes no argument"),
    ],
)
def test_parse_command_rejects(line, message):
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        parse_command(line)


# -- PlainReporter ---------------------------------------------------------------------------


def test_plain_reporter_emits_only_changes():
    reporter = PlainReporter()
    m1 = MessageView(ts_ms=T0 - 500, level="info", text="Central up")
    m2 = MessageView(ts_ms=T0 + 1500, level="warning", text="CP002 slow")
    m3 = MessageView(ts_ms=T0 + 3500, level="error", text="CP001 fault")
    cp1, cp2 = make_cp(1, "ACTIVATED"), make_cp(2, "DISCONNECTED")
    supplying = make_cp(1, "SUPPLYING")
    request = SessionView(id=7, cp_id="CP001", driver_id="D001", status="authorized", requested_ts_ms=T0)
    base = dict(central_id="central-1", listen="0.0.0.0:7001", http="127.0.0.1:8001", kafka="127.0.0.1:9092")
    views = [
        CentralView(cps=(cp1, cp2), messages=(m1,), now_ts_ms=T0, **base),
        CentralView(cps=(cp1, cp2), messages=(m1,), now_ts_ms=T0 + 1000, **base),
        CentralView(
            cps=(supplying, cp2), requests=(request,), messages=(m1, m2), kafka_ok=False, now_ts_ms=T0 + 2000, **base
        ),
        CentralView(
            cps=(CpView(**{**supplying.to_json(), "energy_kwh": 9.0}), cp2),
            requests=(request,),
            messages=(m1, m2),
            kafka_ok=False,
            now_ts_ms=T0 + 3000,
            **base,
        ),
        CentralView(
            cps=(cp1, make_cp(2, "STOPPED"), make_cp(3, "BROKEN")), messages=(m2, m3), now_ts_ms=T0 + 4000, **base
        ),
    ]
    out = [reporter.update(v) for v in views]
    assert out == [
        [
            "2026-11-28 02:20:00 CENTRAL central-1 socket 0.0.0.0:7001 HTTP 127.0.0.1:8001 "
            "Kafka 127.0.0.1:9092 reachable",
            "2026-11-28 02:20:00 CP CP001 ACTIVATED at Street 1, 0.35 EUR/kWh",
            "2026-11-28 02:20:00 CP CP002 DISCONNECTED at Street 2, 0.35 EUR/kWh",
            "2026-11-28 02:19:59 MSG info: Central up",
        ],
        [],
        [
            "2026-11-28 02:20:02 KAFKA 127.0.0.1:9092 UNREACHABLE",
            "2026-11-28 02:20:02 CP CP001 ACTIVATED -> SUPPLYING (driver D001)",
            "2026-11-28 02:20:02 REQ 7 driver D001 at CP001: authorized",
            "2026-11-28 02:20:01 MSG warning: CP002 slow",
        ],
        [],  # only the supply figures changed
        [
            "2026-11-28 02:20:04 KAFKA 127.0.0.1:9092 reachable again",
            "2026-11-28 02:20:04 CP CP001 SUPPLYING -> ACTIVATED",
            "2026-11-28 02:20:04 CP CP002 DISCONNECTED -> STOPPED (Out of Order)",
            "2026-11-28 02:20:04 CP CP003 BROKEN at Street 3, 0.35 EUR/kWh",
            "2026-11-28 02:20:04 REQ 7 driver D001 at CP001: ended",
            "2026-11-28 02:20:03 MSG error: CP001 fault",
        ],
    ]


def test_plain_reporter_request_status_change_and_removed_cp():
    reporter = PlainReporter()
    r = SessionView(id=9, cp_id="CP001", driver_id="D001", status="requested", requested_ts_ms=T0)
    reporter.update(CentralView(cps=(make_cp(1, "ACTIVATED"), make_cp(2, "BROKEN")), requests=(r,), now_ts_ms=T0))
    r2 = SessionView(id=9, cp_id="CP001", driver_id="D001", status="authorized", requested_ts_ms=T0)
    lines = reporter.update(CentralView(cps=(make_cp(1, "ACTIVATED"),), requests=(r2,), now_ts_ms=T0 + 1000))
    assert lines == [
        "2026-11-28 02:20:01 CP CP002 removed",
        "2026-11-28 02:20:01 REQ 9 driver D001 at CP001: requested -> authorized",
    ]
    assert all("\x1b" not in line for line in lines)


# -- KeyReader -------------------------------------------------------------------------------


@pytest.fixture
def pty() -> Iterator[tuple[int, int]]:
    """(master, slave) of a fresh pseudo-terminal in its default cooked mode."""
    master, slave = os.openpty()
    try:
        yield master, slave
    finally:
        for fd in (slave, master):
            try:
                os.close(fd)
            except OSError:
                pass


async def next_line(reader: KeyReader) -> str:
    return await asyncio.wait_for(reader.lines.get(), GUARD_S)


async def until(predicate) -> None:
    deadline = time.monotonic() + GUARD_S
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


async def test_key_reader_edits_lines_on_a_pty_and_restores_the_terminal(pty):
    master, slave = pty
    before = termios.tcgetattr(slave)
    changes = []
    async with KeyReader(slave, on_change=lambda: changes.append(1)) as reader:
        assert reader.is_tty
        during = termios.tcgetattr(slave)
        assert not during[3] & termios.ECHO and not during[3] & termios.ICANON
        assert during[3] & termios.ISIG  # Ctrl+C still interrupts

        os.write(master, b"s CP0X\x7f1\r")  # Backspace removes the X
        assert await next_line(reader) == "s CP01"

        os.write(master, b"s CP0")
        await until(lambda: reader.buffer == "s CP0")
        assert changes

        os.write(master, b"\x1b")  # Esc alone clears the line being typed
        await until(lambda: reader.buffer == "")
        os.write(master, b"r al\x1b[D\x1b[Cl\n")  # arrow keys are swallowed, not typed
        assert await next_line(reader) == "r all"

        os.write(master, "q \u00e9\x01\r\r\n".encode())  # UTF-8, a control char, empty lines
        assert await next_line(reader) == "q \u00e9"
        assert reader.lines.empty()
    assert termios.tcgetattr(slave) == before


async def test_key_reader_restores_the_terminal_on_exceptions(pty):
    master, slave = pty
    before = termios.tcgetattr(slave)
    with pytest.raises(RuntimeError):
        async with KeyReader(slave):
            assert termios.tcgetattr(slave) != before
            raise RuntimeError("boom")
    assert termios.tcgetattr(slave) == before


async def test_key_reader_leaves_a_tty_cooked_when_not_interactive(pty):
    master, slave = pty
    before = termios.tcgetattr(slave)
    async with KeyReader(slave, interactive=False) as reader:
        assert not reader.is_tty
        assert termios.tcgetattr(slave) == before
        os.write(master, b"s CP001\n")
        assert await next_line(reader) == "s CP001"


async def test_key_reader_reads_plain_lines_from_a_pipe():
    read_fd, write_fd = os.pipe()
    try:
        async with KeyReader(read_fd) as reader:
            assert not reader.is_tty
            os.write(write_fd, b"s CP001\n\n  r all  \nq")
            assert await next_line(reader) == "s CP001"
            assert await next_line(reader) == "r all"
            os.close(write_fd)
            write_fd = -1
            assert await next_line(reader) == "q"  # the unterminated last line counts
            await until(lambda: reader.eof)
            assert reader.buffer == ""
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


async def test_key_reader_reads_a_stream_without_a_descriptor():
    async with KeyReader(io.StringIO("s CP001\nresume all\n")) as reader:
        assert await next_line(reader) == "s CP001"
        assert await next_line(reader) == "resume all"
        await until(lambda: reader.eof)


async def test_key_reader_reads_a_regular_file_in_a_thread(tmp_path):
    path = tmp_path / "commands.txt"
    path.write_bytes("s CP\u00e9\nq\n".encode())
    fd = os.open(path, os.O_RDONLY)  # epoll refuses regular files: the thread path
    try:
        async with KeyReader(fd) as reader:
            assert await next_line(reader) == "s CP\u00e9"
            assert await next_line(reader) == "q"
            await until(lambda: reader.eof)
    finally:
        os.close(fd)


async def test_key_reader_without_any_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)
    async with KeyReader() as reader:
        assert reader.eof and not reader.is_tty and reader.buffer == ""


async def test_key_reader_bounds_lines_and_queue():
    text = "x" * 1000 + "\n" + "".join(f"l{i}\n" for i in range(10))
    async with KeyReader(io.StringIO(text), max_line_chars=50, max_queued=4) as reader:
        await until(lambda: reader.eof)
        assert reader.lines.get_nowait() == "x" * 50
        assert reader.lines.qsize() == 3 and reader.dropped == 7


# -- run_panel -------------------------------------------------------------------------------


class Recorder:
    """on_command that records what it is given."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    async def __call__(self, command: Command) -> str:
        self.commands.append(command)
        if command.target == "BOOM":
            raise RuntimeError("engine on fire")
        return f"{command.action.upper()} sent to {command.target or 'every CP'}"


async def test_run_panel_plain_mode_takes_commands_from_stdin():
    out = io.StringIO()
    recorder = Recorder()
    stdin = io.StringIO("s CP001\nbogus\n?\nr BOOM\nq\n")
    view = make_view(3)
    await asyncio.wait_for(
        run_panel(lambda: view, recorder, console=Console(file=out, width=80), stdin=stdin, refresh_hz=50), GUARD_S
    )
    assert recorder.commands == [Command("stop", "CP001"), Command("resume", "BOOM")]
    text = out.getvalue()
    assert "\x1b" not in text
    assert "2026-11-28 02:20:00 CENTRAL central-1" in text
    assert "CP CP003 STOPPED (Out of Order) at Street 3" in text
    assert "2026-11-28 02:20:00 CMD s CP001: STOP sent to CP001" in text
    assert "CMD bogus: unknown command 'bogus'" in text
    assert f"CMD ?: {HELP_TEXT}" in text
    assert "CMD r BOOM: failed: engine on fire" in text
    assert text.count("CENTRAL central-1") == 1  # change-only, however many refreshes


async def test_run_panel_plain_mode_from_a_pipe():
    read_fd, write_fd = os.pipe()
    recorder = Recorder()
    try:
        task = asyncio.ensure_future(
            run_panel(lambda: make_view(3), recorder, console=Console(file=io.StringIO()), stdin=read_fd)
        )
        os.write(write_fd, b"s CP001\n")
        await until(lambda: recorder.commands)
        assert recorder.commands == [Command("stop", "CP001")]
        os.write(write_fd, b"quit\n")
        await asyncio.wait_for(task, GUARD_S)
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def test_run_panel_full_screen_on_a_pty(pty):
    master, slave = pty
    before = termios.tcgetattr(slave)
    out = io.StringIO()
    term = Console(file=out, width=80, height=24, force_terminal=True, color_system="truecolor")
    recorder = Recorder()
    views = 0

    def screen() -> str:
        return ANSI.sub("", out.getvalue())

    def get_view() -> CentralView:
        nonlocal views
        views += 1
        return make_view(3)

    task = asyncio.ensure_future(run_panel(get_view, recorder, console=term, stdin=slave, refresh_hz=20))
    await until(lambda: views > 0)
    os.write(master, b"s CP001\r")
    await until(lambda: recorder.commands)
    await until(lambda: "STOP sent to CP001" in screen())
    os.write(master, b"r al")
    await until(lambda: "> r al" in screen())
    os.write(master, b"\x1bq\r")
    await asyncio.wait_for(task, GUARD_S)
    assert recorder.commands == [Command("stop", "CP001")]
    assert "\x1b[?1049h" in out.getvalue() and "\x1b[?1049l" in out.getvalue()  # alt screen
    assert termios.tcgetattr(slave) == before


async def test_run_panel_refresh_rate_does_not_follow_the_message_rate():
    calls = 0
    messages: list[MessageView] = []

    def get_view() -> CentralView:
        nonlocal calls
        calls += 1
        return CentralView(messages=tuple(messages[-50:]))

    async def flood() -> None:
        i = 0
        while True:
            messages.append(MessageView(ts_ms=T0 + i, level="info", text=f"m{i}"))
            i += 1
            await asyncio.sleep(0)

    read_fd, write_fd = os.pipe()
    flooder = asyncio.ensure_future(flood())
    try:
        task = asyncio.ensure_future(
            run_panel(get_view, Recorder(), stdin=read_fd, refresh_hz=10, console=Console(file=io.StringIO()))
        )

        async def flooded() -> None:  # the panel has refreshed under a flood of messages
            while not (len(messages) > 100 and calls >= 2):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(flooded(), GUARD_S)
        os.write(write_fd, b"q\n")
        await asyncio.wait_for(task, GUARD_S)
    finally:
        flooder.cancel()
        os.close(read_fd)
        os.close(write_fd)
    assert len(messages) > 100
    assert 1 <= calls <= 10  # a few at 10 Hz while over 100 messages came; a bound, not a timing check


async def test_run_panel_rejects_a_bad_refresh_rate():
    with pytest.raises(ValueError):
        await run_panel(lambda: make_view(0), Recorder(), refresh_hz=0)


def test_redraw_pacing_bounds_the_panels_share_of_a_core():
    period = 0.25  # 4 Hz
    assert redraw_wait(period, 0.0) == period
    assert redraw_wait(period, 0.01) == pytest.approx(0.24)  # cheap: the refresh rate rules
    for cost in (0.03, 0.046, 0.08, 0.5):  # costly: at most PANEL_CPU_SHARE of the time drawing
        wait = redraw_wait(period, cost)
        assert cost / (cost + wait) == pytest.approx(min(PANEL_CPU_SHARE, cost / period))


def test_header_shows_how_fresh_the_telemetry_is():
    assert "telemetry age" not in text_of(make_view(3), 160)
    view = make_view(3, counters={"telemetry_age_p50_ms": 40, "telemetry_age_p99_ms": 87})
    assert "telemetry age p99 87 ms" in text_of(view, 160)
