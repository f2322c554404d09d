"""``evcp-meter scan``: which Modbus unit ids answer on a line, at which baud rate."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import click

from .common import EXIT_UNAVAILABLE, EXIT_USAGE

__all__ = ["scan_command", "parse_units"]

#: The speeds DIN-rail meters are set to, slowest first.
DEFAULT_BAUDS = "2400,4800,9600,19200"


def parse_units(text: str) -> list[int]:
    """``1-247``, ``1,5,10-12`` -> unit ids (1..247, in order, each once)."""
    units: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise click.BadParameter(f"{part!r}: expected N or N-M") from None
        if not 1 <= first <= last <= 247:
            raise click.BadParameter(f"{part!r}: unit ids are 1..247")
        units.extend(u for u in range(first, last + 1) if u not in units)
    return units


@click.command("scan")
@click.option("--port", required=True, metavar="DEVICE", help="The RS-485 line (/dev/ttyUSB0) or tcp://host:port.")
@click.option("--units", default="1-247", show_default=True, help="Unit ids to try: 1-247, or 1,5,10-12.")
@click.option("--bauds", default=DEFAULT_BAUDS, show_default=True, help="Baud rates to try, comma-separated.")
@click.option("--parity", type=click.Choice(["N", "E", "O"], case_sensitive=False), default=None)
@click.option(
    "--meter-model",
    default="sdm630",
    show_default=True,
    help="The register map whose energy register each probe reads.",
)
@click.option("--meter-map", default=None, metavar="FILE", help="A register map file of your own instead.")
@click.option(
    "--probe-timeout-s",
    type=click.FloatRange(min=0.05, max=5),
    default=0.2,
    show_default=True,
    help="How long one unit id may take to answer.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list of {unit, baudrate, answer}.")
def scan_command(
    port: str,
    units: str,
    bauds: str,
    parity: str | None,
    meter_model: str,
    meter_map: str | None,
    probe_timeout_s: float,
    as_json: bool,
) -> None:
    """Find the Modbus meters on a line: try each unit id at each baud rate (reading the energy
    register) and list those that answer. Exit 69 if none does. Progress goes to stderr."""
    try:
        unit_ids = parse_units(units)
        speeds = [int(b) for b in bauds.split(",") if b.strip()]
    except (click.BadParameter, ValueError) as exc:
        click.echo(f"evcp-meter scan: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    from evproto.hw import MeterError, MeterGone, MeterProtocolError
    from evproto.hw.modbus_meter import ModbusMeter

    try:  # the map, the port and the first speed checked before any probe
        ModbusMeter(
            port,
            model=meter_model,
            map_path=meter_map,
            unit=1,
            baudrate=speeds[0],
            parity=parity,
            timeout_s=probe_timeout_s,
        )
    except (ValueError, IndexError) as exc:
        click.echo(f"evcp-meter scan: {exc or 'no baud rate given'}", err=True)
        sys.exit(EXIT_USAGE)
    worst_s = len(unit_ids) * len(speeds) * probe_timeout_s
    click.echo(
        f"scanning {port}: {len(unit_ids)} unit id(s) x {len(speeds)} baud rate(s), at most {worst_s:.0f} s",
        err=True,
    )
    found: list[dict[str, object]] = []

    async def run() -> None:
        for baud in speeds:
            meter = ModbusMeter(
                port,
                model=meter_model,
                map_path=meter_map,
                unit=1,
                baudrate=baud,
                parity=parity,
                timeout_s=probe_timeout_s,
            )
            await meter.open()
            started = time.monotonic()
            try:
                for i, unit in enumerate(unit_ids):
                    if i and i % 16 == 0:
                        click.echo(f"  {baud} baud: {i}/{len(unit_ids)} unit ids tried", err=True)
                    meter.unit = unit
                    try:
                        energy_wh = await meter.probe()
                        answer = f"energy {energy_wh:.1f} Wh"
                    except MeterGone:
                        raise
                    except MeterProtocolError as exc:
                        if "exception" not in str(exc):
                            continue  # garbled: noise at a wrong speed, not a meter
                        answer = str(exc).rpartition(": ")[2]  # a device is there, with other registers
                    except MeterError:
                        continue
                    found.append({"unit": unit, "baudrate": baud, "answer": answer})
                    click.echo(f"  found unit {unit} at {baud} baud: {answer}", err=True)
            finally:
                await meter.close()
            click.echo(f"{baud} baud: done in {time.monotonic() - started:.1f} s", err=True)

    try:
        asyncio.run(run())
    except MeterGone as exc:
        click.echo(f"evcp-meter scan: no line at {port}: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    if as_json:
        click.echo(json.dumps(found))
    else:
        for entry in found:
            click.echo(f"unit {entry['unit']:>3}  {entry['baudrate']:>6} baud  {entry['answer']}")
    if not found:
        click.echo("evcp-meter scan: no unit id answered", err=True)
        sys.exit(EXIT_UNAVAILABLE)
