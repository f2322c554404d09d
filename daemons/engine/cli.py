"""``evcp-engine`` / ``EV_CP_E``: command line of the engine daemon."""

from __future__ import annotations

import asyncio
import os
import sys

import click

from evproto import __version__
from evproto.bus.kafka import BusError, KafkaSettings
from evproto.domain.chargepoint import AutoMode
from evproto.domain.events import MAX_POWER_KW
from evproto.endpoint import parse_endpoint
from evproto.errors import TransportError

from ..common import EXIT_DATAERR, EXIT_UNAVAILABLE, EXIT_USAGE, engine_link_problem, setup_logging, shutdown_event
from ..files import StateFileError, keep_files_private
from ..options import daemon_options, kafka_config_options, kafka_extra
from .app import Engine, EngineOptions
from .meter import SimulatedMeter


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--kafka",
    envvar="EVPROTO_KAFKA",
    required=True,
    metavar="HOST:PORT",
    help="Kafka bootstrap server(s). [env EVPROTO_KAFKA]",
)
@click.option(
    "--listen",
    envvar="EVPROTO_ENGINE_LISTEN",
    default=None,
    metavar="HOST:PORT",
    help="Where the monitor reaches this engine (port 0: pick a free one). The monitor hands the "
    "engine its record key over this link, so in release 2 a plain HOST:PORT must be a loopback "
    "address (default 127.0.0.1:7100); from another host use mutual TLS, "
    "tls://HOST:PORT?cert=ENGINE.pem&key=ENGINE.key&ca=CA.pem (the monitor's certificate must name "
    "its CP; docs/security.md). --insecure: default 0.0.0.0:7100. [env EVPROTO_ENGINE_LISTEN]",
)
@click.option(
    "--port",
    "meter_port",
    envvar="EVPROTO_METER_PORT",
    default=None,
    metavar="DEVICE",
    help="The meter's serial device (/dev/ttyUSB0, serial:///dev/ttyS1?baudrate=9600, or "
    "tcp://host:port for a networked meter). Without it the engine simulates its meter. "
    "[env EVPROTO_METER_PORT]",
)
@click.option(
    "--meter-protocol",
    type=click.Choice(["evproto", "iec62056-21", "modbus"]),
    default="evproto",
    show_default=True,
    help="What the meter speaks (docs/hardware.md).",
)
@click.option(
    "--meter-model",
    envvar="EVPROTO_METER_MODEL",
    default="sdm630",
    show_default=True,
    help="modbus: the meter's built-in register map (sdm630, sdm72, abb-b23). [env EVPROTO_METER_MODEL]",
)
@click.option(
    "--meter-map",
    envvar="EVPROTO_METER_MAP",
    default=None,
    metavar="FILE",
    help="modbus: a register map file of your own instead of a built-in model. [env EVPROTO_METER_MAP]",
)
@click.option(
    "--meter-unit",
    envvar="EVPROTO_METER_UNIT",
    type=click.IntRange(1, 247),
    default=None,
    help="modbus: the meter's unit id (default 1; --meter-address is taken too). [env EVPROTO_METER_UNIT]",
)
@click.option(
    "--meter-baud",
    envvar="EVPROTO_METER_BAUD",
    type=int,
    default=None,
    help="modbus: the line speed (default: --baudrate, else the model's factory setting). [env EVPROTO_METER_BAUD]",
)
@click.option(
    "--meter-parity",
    envvar="EVPROTO_METER_PARITY",
    type=click.Choice(["N", "E", "O"], case_sensitive=False),
    default=None,
    help="modbus: the line's parity (default: the model's factory setting). [env EVPROTO_METER_PARITY]",
)
@click.option(
    "--baudrate",
    type=int,
    default=None,
    help="evproto: the line speed (default 9600). iec62056-21: the highest speed to switch to after "
    "the 300 baud sign-on (default: what the meter offers).",
)
@click.option("--meter-address", default="", help="IEC 62056-21 device address (several meters on one RS-485 bus).")
@click.option(
    "--meter-interval-s",
    type=click.FloatRange(min=0.1, max=60),
    default=1.0,
    show_default=True,
    help="Seconds between readings of a real meter.",
)
@click.option(
    "--meter-timeout-s",
    type=click.FloatRange(min=0.1, max=60),
    default=2.0,
    show_default=True,
    help="How long one reading may take before it counts as failed (two failed cycles: KO).",
)
@click.option(
    "--power-kw",
    type=click.FloatRange(min=0.1, max=1000),
    default=22.0,
    show_default=True,
    help="Power of the simulated meter while a vehicle charges.",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0.001, max=3600),
    default=1.0,
    show_default=True,
    help="Speed-up of the simulated meter only (60: one minute of charging per second). Its "
    f"meter then delivers --power-kw x --time-scale, which must stay within {MAX_POWER_KW:g} kW: "
    "Central refuses energy beyond that power over a supply's duration.",
)
@click.option(
    "--auto/--manual",
    default=False,
    show_default=True,
    help="Unattended mode: plug in by itself after authorisation and end after the request's target (or --supply-s).",
)
@click.option(
    "--plug-delay-s",
    type=click.FloatRange(min=0),
    default=1.5,
    show_default=True,
    help="Unattended mode: seconds between authorisation and plug-in.",
)
@click.option(
    "--supply-s",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Unattended mode: length of a supply whose request names no target.",
)
@click.option(
    "--offline-supply/--no-offline-supply",
    default=False,
    show_default=True,
    help="While Central is unreachable, serve manual supplies (m DRIVER) anyway and report them "
    "when it is back, billed exactly once (the OCPP 1.6 offline rule). Off: refuse them, as the "
    "assignment says.",
)
@click.option(
    "--checkpoint-s",
    envvar="EVPROTO_CHECKPOINT_S",
    type=click.FloatRange(min=0, max=300),
    default=10.0,
    show_default=True,
    help="Seconds between checkpoints of a supply's energy so far in the state file. Session boundaries "
    "and events owed to Central are written at once; after a crash the meter's register says what was "
    "delivered, so this bounds only what a meter that keeps no register of its own can lose. "
    "[env EVPROTO_CHECKPOINT_S]",
)
@click.option(
    "--state-dir",
    envvar="EVPROTO_STATE_DIR",
    default=None,
    metavar="DIR",
    help="Where the engine keeps its durable state (default: ./engine-state-PORT). [env EVPROTO_STATE_DIR]",
)
@click.option(
    "--topic-prefix",
    envvar="EVPROTO_TOPIC_PREFIX",
    default="evcharging.",
    show_default=True,
    help="Prefix of every Kafka topic. [env EVPROTO_TOPIC_PREFIX]",
)
@click.option(
    "--require-signed-meter",
    is_flag=True,
    envvar="EVPROTO_REQUIRE_SIGNED_METER",
    help="Bill only from signed meter values (OCMF, docs/hardware.md): a supply whose begin or end reading is "
    "missing, unsigned or does not check ends as a fault. [env EVPROTO_REQUIRE_SIGNED_METER]",
)
@click.option(
    "--meter-public-key",
    default=None,
    metavar="KEY.pem",
    type=click.Path(exists=True, dir_okay=False),
    help="The meter's public key (PEM): its signed readings must check against it (default: the key the "
    "meter presents, which proves integrity, not identity).",
)
@kafka_config_options
@click.option(
    "--insecure",
    is_flag=True,
    envvar="EVPROTO_INSECURE",
    help="Release 1's plaintext mode: commands are not checked and events not sealed. Only on a "
    "network you trust. [env EVPROTO_INSECURE]",
)
@daemon_options("Write a JSON file with the listening address once up.")
@click.version_option(__version__, prog_name="evcp-engine")
def main(
    kafka: str,
    listen: str | None,
    meter_port: str | None,
    meter_protocol: str,
    meter_model: str,
    meter_map: str | None,
    meter_unit: int | None,
    meter_baud: int | None,
    meter_parity: str | None,
    baudrate: int | None,
    meter_address: str,
    meter_interval_s: float,
    meter_timeout_s: float,
    power_kw: float,
    time_scale: float,
    auto: bool,
    plug_delay_s: float,
    supply_s: float,
    offline_supply: bool,
    checkpoint_s: float,
    state_dir: str | None,
    topic_prefix: str,
    require_signed_meter: bool,
    meter_public_key: str | None,
    kafka_config: tuple[str, ...],
    kafka_config_file: str | None,
    insecure: bool,
    ready_file: str | None,
    log_format: str,
    log_level: str,
) -> None:
    """The engine of a charge point (EV_CP_E).

    It meters and performs supplies, reading a real meter on --port or
    simulating one. Its charge-point id is not a parameter: the
    monitor that connects names it, once Central has confirmed it. Commands come
    from Central through Kafka; telemetry and tickets' figures go back the same way.

    Keys (type them and press Enter; on a pipe, one per line): p plug, u unplug,
    k KO (simulate a fault), r recover, m DRIVER manual supply, s status, q quit.

    \b
    Release 2 (the default): it acts only on commands sealed with its CP's record key,
    which its monitor hands over once it has authenticated with Central, and seals
    what it reports with it. --insecure: release 1's plaintext.
    """
    if not meter_port and power_kw * time_scale > MAX_POWER_KW:
        # Refused here rather than by Central, supply after supply, once the figures arrive.
        click.echo(
            f"evcp-engine: --power-kw {power_kw:g} x --time-scale {time_scale:g} makes a simulated meter of "
            f"{power_kw * time_scale:g} kW; Central accepts at most {MAX_POWER_KW:g} kW: lower one of them",
            err=True,
        )
        sys.exit(EXIT_USAGE)
    if listen is None:
        listen = "0.0.0.0:7100" if insecure else "127.0.0.1:7100"
    try:
        endpoint = parse_endpoint(listen)
        problem = None if insecure else engine_link_problem(endpoint, listening=True)
    except TransportError as exc:
        problem = str(exc)
    if problem is not None:
        click.echo(f"evcp-engine: --listen {listen}: {problem}", err=True)
        sys.exit(EXIT_USAGE)
    keep_files_private()
    setup_logging("engine", level=log_level, fmt=log_format)
    port = endpoint.port
    opts = EngineOptions(
        kafka=KafkaSettings(
            bootstrap=kafka,
            client_id=f"evcp-engine-{port}",
            prefix=topic_prefix,
            extra=kafka_extra(kafka_config, kafka_config_file),
        ),
        listen=listen,
        state_dir=state_dir or os.path.join(os.getcwd(), f"engine-state-{port}"),
        auto=AutoMode(plug_delay_s=plug_delay_s, default_duration_s=supply_s) if auto else None,
        ready_file=ready_file,
        offline_supply=offline_supply,
        meter_interval_s=meter_interval_s if meter_port else 0.2,
        secure=not insecure,
        checkpoint_s=checkpoint_s,
        restart_read_timeout_s=meter_timeout_s,
        require_signed_meter=require_signed_meter,
        meter_public_key=_meter_key(meter_public_key),
    )
    if insecure:
        click.echo("evcp-engine: WARNING: --insecure: commands are not checked, events not sealed", err=True)
    if meter_port:
        from evproto.hw import make_driver

        options: dict[str, object] = {}
        if meter_protocol == "modbus":
            options = {"model": meter_model, "map_path": meter_map, "unit": meter_unit, "parity": meter_parity}
            baudrate = meter_baud or baudrate
        try:
            meter = make_driver(
                meter_protocol,
                meter_port,
                baudrate=baudrate,
                address=meter_address,
                timeout_s=meter_timeout_s,
                **options,
            )
        except ValueError as exc:  # a bad register map, unit id or port: said once, at the start
            click.echo(f"evcp-engine: {exc}", err=True)
            sys.exit(EXIT_USAGE)
    else:
        meter = SimulatedMeter(
            power_kw=power_kw,
            time_scale=time_scale,
            register_path=os.path.join(opts.state_dir, "simulated-meter-register.json"),
        )

    async def run() -> int:
        return await Engine(opts, meter).run(shutdown_event())

    try:
        sys.exit(asyncio.run(run()))
    except (BusError, TransportError) as exc:
        click.echo(f"evcp-engine: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    except StateFileError as exc:
        click.echo(
            f"evcp-engine: {exc}; it holds the supply in progress and the events owed to Central: "
            "repair it, or move it aside to start afresh (`evcharging audit` then shows what was lost)",
            err=True,
        )
        sys.exit(EXIT_DATAERR)


def _meter_key(path: str | None) -> str | None:
    """The meter's public key file as hex DER (how tickets carry it), checked now."""
    if path is None:
        return None
    from evproto.hw import ocmf

    try:
        with open(path, "rb") as fh:
            return ocmf.public_key_hex(ocmf.load_public_key(fh.read()))
    except (OSError, ocmf.OcmfError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--meter-public-key") from None


if __name__ == "__main__":
    main()
