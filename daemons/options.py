"""Command-line options every daemon shares (click decorators) and the Kafka client settings they take."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["parse_kafka_config", "daemon_options", "kafka_config_options", "kafka_extra"]


_KAFKA_KEY = __import__("re").compile(r"[a-z][a-z0-9._-]{0,120}")


def parse_kafka_config(pairs: tuple[str, ...] | list[str], file: str | None = None) -> dict[str, str]:
    """librdkafka client settings from ``KEY=VALUE`` pairs and a properties file (one
    ``key=value`` per line, ``#`` comments), the pairs winning. ValueError names the
    bad line or key, never a value (values are often passwords)."""
    out: dict[str, str] = {}
    lines: list[tuple[str, str]] = []
    if file:
        try:
            with open(file, encoding="utf-8") as f:
                text = f.read(1 << 20)
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--kafka-config-file {file}: {getattr(exc, 'strerror', None) or exc}") from None
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append((f"{file}:{n}", line))
    lines += [("--kafka-config", p) for p in pairs]
    for where, line in lines:
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _KAFKA_KEY.fullmatch(key):
            raise ValueError(f"{where}: expected KEY=VALUE with a librdkafka property name, got {key[:40]!r}")
        if key == "bootstrap.servers":
            raise ValueError(f"{where}: give the brokers with --kafka, not bootstrap.servers")
        out[key] = value.strip()
    return out


def daemon_options(ready_help: str) -> Any:
    """``--ready-file``, ``--log-format`` and ``--log-level``, as every daemon takes them;
    ``ready_help`` says what its ready file holds. The command receives ``ready_file``,
    ``log_format`` and ``log_level``."""
    import click

    def deco(command: Any) -> Any:
        command = click.option(
            "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
        )(command)
        command = click.option(
            "--log-format",
            type=click.Choice(["auto", "text", "json"]),
            default="auto",
            show_default=True,
            help="auto: readable text on a terminal, one JSON object a line otherwise.",
        )(command)
        return click.option("--ready-file", default=None, metavar="PATH", help=ready_help)(command)

    return deco


def kafka_config_options(command: Any) -> Any:
    """The Kafka client-settings options every Kafka-using daemon takes (``--kafka-config``
    KEY=VALUE, repeatable, and ``--kafka-config-file``); the command receives them as
    ``kafka_config`` (a tuple) and ``kafka_config_file``."""
    import click

    command = click.option(
        "--kafka-config-file",
        envvar="EVPROTO_KAFKA_CONFIG_FILE",
        default=None,
        metavar="FILE",
        help="librdkafka settings, one key=value per line (security.protocol, sasl.*, ssl.*). "
        "[env EVPROTO_KAFKA_CONFIG_FILE]",
    )(command)
    return click.option(
        "--kafka-config",
        multiple=True,
        metavar="KEY=VALUE",
        help="One librdkafka setting for every Kafka client of this program, e.g. security.protocol=SASL_SSL, "
        "sasl.mechanism=SCRAM-SHA-512, ssl.ca.location=ca.pem (repeatable; wins over the file).",
    )(command)


def kafka_extra(pairs: tuple[str, ...], file: str | None) -> dict[str, str]:
    """:func:`parse_kafka_config` for a command line: a usage error (exit 2) when wrong."""
    import click

    try:
        extra = parse_kafka_config(pairs, file)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if extra:
        # librdkafka checks names and values when a client is made: make one now (it connects
        # to nothing), so a bad setting is one clear line here, not a traceback later.
        import confluent_kafka

        try:
            confluent_kafka.Producer(
                {"bootstrap.servers": "127.0.0.1:9", "logger": logging.getLogger("nowhere"), **extra}
            )
        except confluent_kafka.KafkaException as exc:
            text = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
            for key, value in extra.items():
                if value and any(w in key for w in ("password", "secret", "key")):
                    text = text.replace(value, "***")
            raise click.UsageError(f"--kafka-config: {text}") from None
    return extra
