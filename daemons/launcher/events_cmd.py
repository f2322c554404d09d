"""``evcharging events``: the network's Kafka records, decoded, one line each (or JSON Lines).

The broker comes from the run directory (``evcharging up``) or ``--bootstrap``. Sealed
records are opened when this machine holds what opens them: the launcher's operator owns
the network, and Central's database in the run directory (or ``--db``) has every CP's
and driver's key; they are read from it without writing to it. ``--no-open`` shows them
sealed. docs/events.md says why and lists the fields.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from evproto.bus.topics import DEFAULT_PREFIX, Topic

from ..options import kafka_config_options, kafka_extra

if TYPE_CHECKING:  # the Kafka client and the keys are loaded when the command runs, not for `evcharging --help`
    from ..gate import KeyBook
    from ..inspector import InspectedRecord

__all__ = ["events", "record_line", "parse_since"]

#: Records of each partition searched for the newest --limit matching ones (without --from-beginning).
DEFAULT_SCAN = 10_000
DEFAULT_LIMIT = 20

_RELATIVE = re.compile(r"([0-9]{1,9})([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _safe(text: str) -> str:
    # A record's key and fields come from anyone who can write to the broker: no terminal
    # escapes, no bidi overrides or line separators (all unprintable to str.isprintable).
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else ascii(c)[1:-1] for c in text)


def parse_since(text: str, now_ms: int) -> int:
    """``--since``: ``10m`` (s, m, h, d ago), an ISO 8601 time (UTC unless it says), or epoch ms."""
    m = _RELATIVE.fullmatch(text.strip())
    if m:
        return now_ms - int(m.group(1)) * _UNIT_S[m.group(2)] * 1000
    if text.isdigit():
        return int(text)
    try:
        t = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("expected 10m, 2h, an ISO 8601 time or epoch milliseconds", param_hint="--since")
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return int(t.timestamp() * 1000)


def _flag(record: InspectedRecord) -> str:
    if record.error:
        return "error"
    if record.sealed:
        return "opened" if record.opened else "sealed"
    if record.signed:
        return "signed" if record.verified else "signed?"
    return "plain"


_COLOURS = {"error": "red", "sealed": "yellow", "opened": "green", "signed": "cyan", "signed?": "cyan", "plain": None}


def record_line(record: InspectedRecord, *, colour: bool = False) -> str:
    """One record as a line: time, topic[partition]@offset, key, type, sealed/opened, summary."""
    from ..inspector import summary

    flag = _flag(record)
    where = f"{record.topic}[{record.partition}]@{record.offset}"
    key = _safe(record.key) if record.key is not None else "-"
    kind = _safe(record.event_type or "?")
    text = _safe(summary(record, width=140))
    flag_text, where = f"{flag:<7}", f"{where:<24}"  # padded before styling: escapes take no room
    if colour:
        flag_text = click.style(flag_text, fg=_COLOURS[flag])
        where = click.style(where, dim=True)
    return f"{record.time or '-':<24} {where} {key:<10} {kind:<22} {flag_text} {text}".rstrip()


def _network(run_dir: str) -> tuple[str, str | None, bool, str | None]:
    """The run directory's broker, Kafka settings file, whether it is secure, Central's database."""
    from .network import db_path, is_secure, open_network

    reg = open_network(run_dir)
    return reg.meta["kafka"], reg.meta.get("kafka_config_file"), is_secure(reg), db_path(reg)


def _keys(db: str | None) -> KeyBook | None:
    if db is None:
        return None
    from ..centraldb import StoredKeys

    if not os.path.exists(db) or not os.path.exists(db + ".signing.pub"):
        click.echo(f"# no keys in {db}: sealed records stay sealed", err=True)
        return None
    try:
        return StoredKeys(db)
    except OSError as exc:
        click.echo(f"# cannot read the keys ({exc}): sealed records stay sealed", err=True)
        return None


@click.command("events", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--topic",
    "topics",
    multiple=True,
    type=click.Choice([t.value for t in Topic]),
    help="Only this topic (repeatable). [default: every topic]",
)
@click.option(
    "--partition",
    "partitions",
    multiple=True,
    type=click.IntRange(0),
    metavar="P",
    help="Only this partition (repeatable; with --topic, usually).",
)
@click.option("--cp", "cp_id", default=None, metavar="ID", help="Only records about this charge point.")
@click.option("--driver", "driver_id", default=None, metavar="ID", help="Only records about this driver.")
@click.option("--follow", "-f", is_flag=True, help="Then keep showing new records until Ctrl+C.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (JSON Lines) with every field.")
@click.option(
    "--topics",
    "list_topics",
    is_flag=True,
    help="Instead of records: each partition's first and end offset, records, and Central's lag.",
)
@click.option(
    "--limit",
    type=click.IntRange(0, 1_000_000),
    default=None,
    help=f"Records of the history shown: the newest N [default: {DEFAULT_LIMIT}]; "
    "with --from-beginning, --since or --offset, the first N [default: all].",
)
@click.option("--from-beginning", is_flag=True, help="From the oldest record each partition keeps.")
@click.option("--since", default=None, metavar="TIME", help="From this time: 10m, 2h, 1d ago, ISO 8601, epoch ms.")
@click.option(
    "--offset",
    "from_offset",
    type=click.IntRange(0),
    default=None,
    metavar="N",
    help="From offset N of each partition (with --topic, usually).",
)
@click.option(
    "--scan",
    type=click.IntRange(1, 1_000_000),
    default=DEFAULT_SCAN,
    show_default=True,
    help="Without --from-beginning/--since/--offset: how many of each partition's last records are searched.",
)
@click.option(
    "--no-open", is_flag=True, help="Show sealed records sealed even when Central's keys are on this machine."
)
@click.option(
    "--bootstrap",
    default=None,
    metavar="HOST:PORT",
    help="A broker to read instead of the run directory's network.",
)
@click.option("--db", default=None, metavar="FILE", help="Central's database: open sealed records with its keys.")
@click.option(
    "--connect-timeout",
    type=click.FloatRange(0.1, 600),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the broker before giving up.",
)
@click.option(
    "--topic-prefix",
    envvar="EVPROTO_TOPIC_PREFIX",
    default=DEFAULT_PREFIX,
    show_default=True,
    help="[env EVPROTO_TOPIC_PREFIX]",
)
@click.option(
    "--run-dir", default="evcharging-run", show_default=True, metavar="DIR", help="The network's run directory."
)
@kafka_config_options
def events(
    topics: tuple[str, ...],
    partitions: tuple[int, ...],
    cp_id: str | None,
    driver_id: str | None,
    follow: bool,
    as_json: bool,
    list_topics: bool,
    limit: int | None,
    from_beginning: bool,
    since: str | None,
    from_offset: int | None,
    scan: int,
    no_open: bool,
    bootstrap: str | None,
    db: str | None,
    connect_timeout: float,
    topic_prefix: str,
    run_dir: str,
    kafka_config: tuple[str, ...],
    kafka_config_file: str | None,
) -> None:
    """The network's Kafka records, decoded: time, topic[partition]@offset, key, type, fields.

    \b
      evcharging events                      the newest 20 records
      evcharging events --cp CP001 -f        CP001's records, then live (Ctrl+C ends)
      evcharging events --topic cp-state --from-beginning
      evcharging events --driver D001 --json | jq .event
      evcharging events --topics             partitions, offsets and Central's lag
    Sealed records are opened with Central's keys when its database is on this machine
    (the run directory's, or --db); otherwise they are shown sealed (type and key only).
    """
    from evproto.bus.kafka import BusError, KafkaSettings

    from ..eventreader import EventReader
    from ..gate import PLAIN_POLICY, SECURE_POLICY, Policy
    from ..inspector import CAUGHT_UP, EventFilter, InspectedRecord, StartAt, newest

    policy: dict[Topic, Policy] | None = None
    central_db = db
    if bootstrap is None:
        bootstrap, net_config_file, secure, net_db = _network(run_dir)
        kafka_config_file = kafka_config_file or net_config_file
        policy = SECURE_POLICY if secure else PLAIN_POLICY
        central_db = db or net_db
        db = db or (net_db if secure else None)
    settings = KafkaSettings(
        bootstrap=bootstrap,
        client_id="evcharging-events",
        prefix=topic_prefix,
        extra=kafka_extra(kafka_config, kafka_config_file),
    )
    wanted = tuple(Topic(t) for t in topics) or tuple(Topic)
    if list_topics:
        _show_topics(settings, wanted, central_db, as_json=as_json, timeout_s=connect_timeout)
        return
    keys = _keys(db)
    if sum((since is not None, from_offset is not None, from_beginning)) > 1:
        raise click.UsageError("--from-beginning, --since and --offset each say where to start: give one")
    if since is not None:
        start = StartAt.time(parse_since(since, int(time.time() * 1000)))
    elif from_offset is not None:
        start = StartAt.offset(from_offset)
    elif from_beginning:
        start = StartAt.beginning()
    else:
        start = StartAt.last(scan)
    newest_first = start.kind.value == "last"
    shown_limit = limit if limit is not None else (DEFAULT_LIMIT if newest_first else None)
    reader = EventReader(
        settings,
        filter=EventFilter(
            topics=wanted,
            partitions=tuple(sorted(set(partitions))),
            cp_id=cp_id,
            driver_id=driver_id,
        ),
        start=start,
        follow=follow,
        keys=keys,
        open_sealed=not no_open,
        policy=policy,
        keep=shown_limit if newest_first else None,
        connect_timeout_s=connect_timeout,
    )
    colour = not as_json and sys.stdout.isatty()

    def show(record: InspectedRecord) -> None:
        line = json.dumps(record.to_json()) if as_json else record_line(record, colour=colour)
        sys.stdout.write(line + "\n")

    # Ctrl+C or SIGTERM ends a follow cleanly: the reader stops after its current poll.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: reader.stop())
    records = reader.records()
    try:
        if newest_first:
            for record in newest(records, shown_limit or 0):
                show(record)
        else:
            shown = 0
            for item in records:
                if item is CAUGHT_UP:
                    break
                if shown_limit is None or shown < shown_limit:
                    assert isinstance(item, InspectedRecord)
                    show(item)
                    shown += 1
        sys.stdout.flush()
        if follow:
            for item in records:
                if isinstance(item, InspectedRecord):
                    show(item)
                    sys.stdout.flush()
    except BrokenPipeError:  # `evcharging events | head`: the reader left, so do we
        _quiet_stdout()
    except BusError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        reader.stop()
        records.close()


def _quiet_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _show_topics(
    settings: Any, topics: tuple[Topic, ...], central_db: str | None, *, as_json: bool, timeout_s: float
) -> None:
    """``--topics``: one line per partition (or a JSON object each)."""
    from evproto.bus.kafka import BusError

    from ..centraldb import central_offsets
    from ..eventreader import partition_infos

    central = None
    if central_db is not None and os.path.exists(central_db):
        try:
            central = central_offsets(central_db)
        except OSError as exc:
            click.echo(f"# {exc}: no lag shown", err=True)
    try:
        infos = partition_infos(settings, topics, central=central, timeout_s=timeout_s)
    except BusError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        for info in infos:
            click.echo(json.dumps(info.to_json()))
        return
    click.echo(f"{'TOPIC':<18} {'PART':>4} {'FIRST':>9} {'END':>9} {'RECORDS':>9} {'CENTRAL AT':>10} {'LAG':>6}")
    for i in infos:
        at = "-" if i.central_offset is None else str(i.central_offset)
        lag = "-" if i.lag is None else str(i.lag)
        click.echo(
            f"{i.topic:<18} {i.partition:>4} {i.first_offset:>9} {i.end_offset:>9} {i.records:>9} {at:>10} {lag:>6}"
        )
