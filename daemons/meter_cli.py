"""``evcp-meter``: talk to a meter by hand (diagnostics)."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import click

from evproto import __version__
from evproto.hw import PROTOCOLS, MeterError, MeterGone, MeterProtocolError, MeterReading, MeterTimeout, make_driver

from .common import EXIT_UNAVAILABLE, EXIT_USAGE
from .meter_scan import scan_command

EXIT_DATAERR = 65
EXIT_NOINPUT = 66
EXIT_INVALID = 1
#: A ticket file is a few kB; anything much bigger is not one.
MAX_TICKET_BYTES = 64 * 1024


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="evcp-meter")
def main() -> None:
    """Diagnostics for the meter an engine reads (see docs/hardware.md)."""


@main.command()
@click.option(
    "--port",
    required=True,
    metavar="DEVICE",
    help="The meter's device (/dev/ttyUSB0, serial:///dev/ttyS1?baudrate=9600) or tcp://host:port.",
)
@click.option("--protocol", type=click.Choice(list(PROTOCOLS)), default="evproto", show_default=True)
@click.option(
    "--baudrate",
    type=int,
    default=None,
    help="evproto: the line speed (default 9600). iec62056-21: the highest speed to switch to "
    "(default: what the meter offers); sign-on is always at 300 baud 7E1.",
)
@click.option("--address", default="", help="IEC 62056-21 device address (empty: any meter on the line).")
@click.option("--meter-model", default="sdm630", show_default=True, help="modbus: the built-in register map.")
@click.option("--meter-map", default=None, metavar="FILE", help="modbus: a register map file of your own.")
@click.option("--unit", type=click.IntRange(1, 247), default=None, help="modbus: the meter's unit id (default 1).")
@click.option(
    "--parity",
    type=click.Choice(["N", "E", "O"], case_sensitive=False),
    default=None,
    help="modbus: the line's parity.",
)
@click.option(
    "--timeout-s",
    type=click.FloatRange(min=0.1, max=120),
    default=5.0,
    show_default=True,
    help="Give up after this long; the command never waits longer.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object: energy_wh, power_w, voltage_v, current_a, status, timestamp.",
)
def read(
    port: str,
    protocol: str,
    baudrate: int | None,
    address: str,
    meter_model: str,
    meter_map: str | None,
    unit: int | None,
    parity: str | None,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Take one reading and print it. Exit 69 if the meter does not answer, 65 if it answers garbage."""
    options: dict[str, object] = {}
    if protocol == "modbus":
        options = {"model": meter_model, "map_path": meter_map, "unit": unit, "parity": parity}
    try:
        driver = make_driver(protocol, port, baudrate=baudrate, address=address, timeout_s=timeout_s, **options)
    except ValueError as exc:  # a bad register map, unit id or port
        click.echo(f"evcp-meter: {exc}", err=True)
        sys.exit(EXIT_USAGE)

    async def once() -> MeterReading:
        try:
            await asyncio.wait_for(driver.open(), timeout_s)
            return await asyncio.wait_for(driver.read(), timeout_s)
        except asyncio.TimeoutError:
            raise MeterTimeout(f"no answer from the meter on {port} within {timeout_s:g} s") from None
        finally:
            await driver.close()

    started = time.monotonic()
    try:
        reading = asyncio.run(once())
    except MeterGone as exc:
        click.echo(f"evcp-meter: no meter at {port}: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    except MeterTimeout as exc:
        click.echo(f"evcp-meter: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    except MeterProtocolError as exc:
        click.echo(f"evcp-meter: the meter answered, but not a valid {protocol} reading: {exc}", err=True)
        sys.exit(EXIT_DATAERR)
    except MeterError as exc:
        click.echo(f"evcp-meter: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    if as_json:
        click.echo(json.dumps(reading.as_json()))
        return
    r = reading
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.timestamp_ms / 1000))
    click.echo(f"energy   {r.energy_wh / 1000:.3f} kWh ({r.energy_wh:.1f} Wh)")
    click.echo(f"power    {r.power_w:.0f} W")
    if r.voltage_v is not None:
        click.echo(f"voltage  {r.voltage_v:.1f} V")
    if r.current_a is not None:
        click.echo(f"current  {r.current_a:.2f} A")
    click.echo(f"status   {r.status.name or int(r.status)}")
    clock = "meter clock" if r.meter_clock else "received"
    click.echo(f"time     {when} UTC ({clock}); took {time.monotonic() - started:.2f} s")
    for quantity, value in sorted(getattr(driver, "last_values", {}).items(), key=lambda kv: kv[0].value):
        click.echo(f"  {quantity.value:<20} {value:.3f}")  # a Modbus meter's every register, per phase too


main.add_command(scan_command)


@main.command()
@click.argument("ticket", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--public-key",
    "public_key_path",
    default=None,
    metavar="PEM",
    help="The meter's public key (PEM) to check against; default: the key the ticket carries (which proves "
    "only that nothing changed since the meter signed, not which meter it was).",
)
@click.option("--meter-serial", default=None, help="The meter the readings must come from (default: the ticket's).")
def verify(ticket: str, public_key_path: str | None, meter_serial: str | None) -> None:
    """Check a ticket's signed meter values (OCMF): both signatures, the meter, that the
    begin and end readings belong together, and that the ticket's energy is end - begin.

    Exit 0 when valid, 1 when not (the reason on stderr), 66 when a file cannot be read.
    """
    from evproto.hw import ocmf

    def invalid(problem: str, why: str) -> None:
        click.echo(f"invalid ({problem}): {why}", err=True)
        sys.exit(EXIT_INVALID)

    try:
        with click.open_file(ticket, "rb") as fh:
            raw = fh.read(MAX_TICKET_BYTES + 1)
        key_pem = None
        if public_key_path is not None:
            with open(public_key_path, "rb") as fh:
                key_pem = fh.read(MAX_TICKET_BYTES)
    except OSError as exc:
        click.echo(f"evcp-meter: cannot read {exc.filename or ticket}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_NOINPUT)
    if len(raw) > MAX_TICKET_BYTES:
        invalid("malformed", f"{ticket} is larger than {MAX_TICKET_BYTES} bytes: not a ticket")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        invalid("malformed", f"{ticket} is not a JSON object")
    begin, end = data.get("ocmf_begin") or "", data.get("ocmf_end") or ""
    energy = data.get("energy_kwh")
    if not isinstance(begin, str) or not isinstance(end, str):
        invalid("malformed", "ocmf_begin and ocmf_end must be strings")
    if not begin or not end:
        invalid("unsigned", "the ticket carries no signed " + ("begin" if not begin else "end") + " reading")
    if type(energy) not in (int, float):
        invalid("malformed", "the ticket has no energy_kwh")
    serial = meter_serial if meter_serial is not None else data.get("meter_serial")
    try:
        source = key_pem if key_pem is not None else data.get("meter_public_key") or ""
        if not isinstance(source, (str, bytes)) or not source:
            raise ocmf.OcmfError(ocmf.OcmfProblem.SIGNATURE, "no public key: give --public-key")
        key = ocmf.load_public_key(source)
        pair = ocmf.check_pair(
            begin, end, key, meter_serial=serial if isinstance(serial, str) else None, energy_kwh=float(energy)
        )
    except ocmf.OcmfError as exc:
        invalid(exc.problem.value, exc.detail)
    click.echo(
        f"valid: meter {pair.meter_serial}, {pair.begin.pagination} -> {pair.end.pagination}, "
        f"{pair.begin.value_kwh:.3f} -> {pair.end.value_kwh:.3f} kWh = {pair.energy_kwh:.3f} kWh, "
        f"ticket {float(energy):.3f} kWh"
        + ("" if key_pem is not None else " (checked with the key the ticket carries)")
    )


if __name__ == "__main__":
    main()
