"""``evmeter-sim``: a simulated electricity meter on a pty (or TCP), with fault injection.

Prints the device path the engine should open as its first line, then plays the
meter: the energy register integrates the load's power over time. Faults come
from flags at start and from commands on stdin at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import Any

import click

from evproto import __version__
from evproto.aio import open_fd_stream
from evproto.endpoint import parse_endpoint
from evproto.errors import TransportError

from ..daemons.common import setup_logging, shutdown_event, stdin_lines
from .device import PtyDevice
from .faults import Faults
from .iec import DEFAULT_REACTION_S, IecOptions, iec_session
from .model import MeterModel
from .servers import evproto_session

__all__ = ["main", "Simulator"]

log = logging.getLogger("evproto.firmware_sim")

COMMANDS = """commands (one per line):
  load on [KW] | load off     the vehicle draws power (or not)
  power KW                    change the power
  reset                       spurious reset: the energy register restarts at 0
  corrupt N [after M]         damage the checksum of the next N frames (after M intact ones)
  drop P | garbage P          probability of a lost byte / of junk before a frame
  split on|off                send in tiny pieces
  stall S                     answer nothing for S seconds
  unplug | plug               pull the cable (the device disappears) / plug it back
  exception N [CODE]          modbus: answer the next N requests with exception CODE (4)
  status | quit"""


class Simulator:
    """The meter: a model, its faults, a protocol and a port."""

    def __init__(
        self,
        *,
        protocol: str,
        model: MeterModel,
        faults: Faults,
        address: str = "",
        iec: IecOptions | None = None,
        signer: Any = None,
    ) -> None:
        self.protocol = protocol
        self.iec = iec or IecOptions(address=address)
        #: Signs begin/end readings as OCMF (firmware_sim.signing.MeterSigner), None: unsigned.
        self.signer = signer
        self.model = model
        self.faults = faults
        self.address = address
        self.device: PtyDevice | None = None
        self._session: asyncio.Task[None] | None = None
        self._plugged = asyncio.Event()
        #: --protocol modbus: pymodbus's server that plays the meter (firmware_sim/modbus_server.py).
        self.backend: Any = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.protocol == "evproto":
            await evproto_session(reader, writer, self.model, self.faults, self.signer)
        elif self.backend is not None:
            from .modbus_server import pty_baudrate

            device = self.device
            baud = (lambda: pty_baudrate(device.master)) if device is not None else None
            await self.backend.session(reader, writer, line_baudrate=baud)
        else:
            await iec_session(reader, writer, self.model, self.faults, options=self.iec)

    async def run_pty(self, device: PtyDevice, stop: asyncio.Event) -> None:
        self.device = device
        self._plugged.set()
        while not stop.is_set():
            await self._plugged.wait()
            reader, writer = await open_fd_stream(device.master)
            self._session = asyncio.ensure_future(self._serve(reader, writer))
            done, _ = await asyncio.wait(
                [self._session, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED
            )
            if not self._session.done():
                self._session.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._session
            with contextlib.suppress(Exception):
                writer.close()

    async def run_tcp(self, address: str, stop: asyncio.Event) -> str:
        ep = parse_endpoint(address)
        server = await asyncio.start_server(self._serve, ep.host, ep.port)
        host, port = server.sockets[0].getsockname()[:2]
        self._server = server
        return f"tcp://{host}:{port}"

    def unplug(self) -> str:
        if self.device is None:
            return "no cable to pull over TCP"
        self._plugged.clear()
        if self._session is not None:
            self._session.cancel()
        self.device.unplug()
        return "cable pulled: the device is gone"

    def plug(self) -> str:
        if self.device is None:
            return "no cable over TCP"
        self.device.plug()
        self._plugged.set()
        return f"cable plugged back: {self.device.path}"

    def status(self) -> str:
        energy, power, _v, _a, _s = self.model.read()
        f = self.faults
        return (
            f"{self.protocol}: {energy:.1f} Wh, {power:.0f} W, load {'on' if self.model.load_on else 'off'}, "
            f"resets {self.model.resets}; faults: corrupt {f.corrupt_next}, drop {f.drop:g}, garbage {f.garbage:g}, "
            f"split {'on' if f.split else 'off'}, stalled {f.stalled}; done {f.counts}"
            + ("" if self.device is None else f"; {'plugged' if self.device.plugged else 'UNPLUGGED'}")
            + ("" if self.backend is None else f"; modbus {self.backend.status()}")
        )

    def command(self, line: str) -> str:
        words = line.split()
        verb, args = words[0].lower(), words[1:]
        try:
            if verb == "load":
                on = args[0].lower() == "on"
                self.model.set_load(on, float(args[1]) if on and len(args) > 1 else None)
                return f"load {'on' if on else 'off'}"
            if verb == "power":
                self.model.set_load(self.model.load_on, float(args[0]))
                return f"power {self.model.power_kw:g} kW"
            if verb == "reset":
                self.model.reset()
                return "energy register reset to 0"
            if verb == "corrupt":
                after = int(args[2]) if len(args) > 2 and args[1].lower() == "after" else 0
                if len(args) not in (0, 1, 3) or after < 0:
                    raise ValueError("corrupt N [after M]")
                self.faults.corrupt_next, self.faults.corrupt_after = (int(args[0]) if args else 1), after
                return f"the next {self.faults.corrupt_next} frame(s) after {after} get a bad checksum"
            if verb in ("drop", "garbage"):
                p = float(args[0])
                if not 0 <= p <= 1:
                    raise ValueError("a probability is between 0 and 1")
                setattr(self.faults, verb, p)
                return f"{verb} {p:g}"
            if verb == "split":
                self.faults.split = args[0].lower() == "on"
                return f"split {'on' if self.faults.split else 'off'}"
            if verb == "stall":
                self.faults.stall(float(args[0]))
                return f"stalled for {float(args[0]):g} s"
            if verb == "unplug":
                return self.unplug()
            if verb == "plug":
                return self.plug()
            if verb == "status":
                return self.status()
            if self.backend is not None and (answer := self.backend.command(verb, args)) is not None:
                return answer
        except (IndexError, ValueError) as exc:
            return f"bad command {line!r}: {exc or 'missing argument'}"
        return f"unknown command {line!r}\n{COMMANDS}"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--pty", "use_pty", is_flag=True, help="Serve on a new pseudo-terminal (print its path).")
@click.option(
    "--link",
    default=None,
    metavar="PATH",
    help="With --pty: a stable symlink to the pty (like /dev/serial/by-id/...); unplug removes it.",
)
@click.option("--tcp", default=None, metavar="HOST:PORT", help="Serve over TCP instead (port 0: pick one).")
@click.option(
    "--protocol", type=click.Choice(["evproto", "iec62056-21", "modbus"]), default="evproto", show_default=True
)
@click.option("--meter-model", default="sdm630", show_default=True, help="modbus: the built-in register map to serve.")
@click.option("--meter-map", default=None, metavar="FILE", help="modbus: serve the registers of this map file instead.")
@click.option("--unit", type=click.IntRange(1, 247), default=1, show_default=True, help="modbus: the meter's unit id.")
@click.option(
    "--baud",
    type=int,
    default=None,
    help="modbus: the meter's baud rate (default: the map's); on a pty a client at another speed gets no answer.",
)
@click.option("--address", default="", help="IEC 62056-21 device address (empty: answer any sign-on).")
@click.option("--power-kw", type=click.FloatRange(min=0), default=7.4, show_default=True)
@click.option("--load/--no-load", default=True, show_default=True, help="Whether a vehicle draws power at start.")
@click.option("--energy-wh", type=click.FloatRange(min=0), default=0.0, help="The register's value at start.")
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0.001),
    default=1.0,
    show_default=True,
    help="Speed-up of the energy only.",
)
@click.option("--corrupt", type=click.IntRange(min=0), default=0, help="Damage the checksum of the first N frames.")
@click.option("--drop", type=click.FloatRange(0, 1), default=0.0, help="Probability of losing a byte per write.")
@click.option("--garbage", type=click.FloatRange(0, 1), default=0.0, help="Probability of junk before a write.")
@click.option("--split", is_flag=True, help="Send every write in 1-3 byte pieces.")
@click.option("--seed", type=int, default=None, help="Make the random faults repeatable.")
@click.option(
    "--iec-reaction-ms",
    type=click.FloatRange(min=0),
    default=DEFAULT_REACTION_S * 1000,
    show_default=True,
    help="IEC: the reaction time tr before every answer; the standard allows 200..1500 ms "
    "(from 20 ms with a lower-case third manufacturer letter).",
)
@click.option(
    "--iec-nonconformant", is_flag=True, help="IEC: accept a reaction time outside the standard (fault injection)."
)
@click.option(
    "--iec-manufacturer",
    default="EVP",
    show_default=True,
    help="IEC: the three-letter manufacturer id; a lower-case third letter (EVp) means 20 ms minimum tr.",
)
@click.option("--iec-enhanced-id", default="", metavar="W", help="IEC: add the enhanced identification \\W (e.g. 2).")
@click.option(
    "--iec-block-lines",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="IEC: send the readout in partial blocks of N data lines (EOT, ACK/NAK per block); 0 = one block.",
)
@click.option(
    "--sign-key",
    default=None,
    metavar="KEY.pem|generate",
    help="Sign begin/end readings as OCMF with this P-256 key (PEM); `generate`: a new key, its public key "
    "printed (PEM) on stderr. evproto protocol only.",
)
@click.option("--meter-serial", default="EVP-SIM-0001", show_default=True, help="The meter's serial (OCMF MS).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info", show_default=True)
@click.version_option(__version__, prog_name="evmeter-sim")
def main(
    use_pty: bool,
    link: str | None,
    tcp: str | None,
    protocol: str,
    meter_model: str,
    meter_map: str | None,
    unit: int,
    baud: int | None,
    address: str,
    power_kw: float,
    load: bool,
    energy_wh: float,
    time_scale: float,
    corrupt: int,
    drop: float,
    garbage: float,
    split: bool,
    seed: int | None,
    iec_reaction_ms: float,
    iec_nonconformant: bool,
    iec_manufacturer: str,
    iec_enhanced_id: str,
    iec_block_lines: int,
    sign_key: str | None,
    meter_serial: str,
    log_level: str,
) -> None:
    """A simulated meter for testing engines without hardware (docs/hardware.md).

    The first line of output is the device to open, e.g. `evcp-engine --port
    /dev/pts/5` or `evcp-meter read --port /dev/pts/5`. Type commands on stdin
    (one per line; `status` shows the state, anything unknown lists them).
    """
    if use_pty == bool(tcp):
        raise click.UsageError("give exactly one of --pty or --tcp HOST:PORT")
    iec = IecOptions(
        manufacturer=iec_manufacturer,
        enhanced=iec_enhanced_id,
        reaction_s=iec_reaction_ms / 1000,
        block_lines=iec_block_lines,
        address=address,
    )
    try:
        iec.check(nonconformant=iec_nonconformant)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--iec-*") from None
    setup_logging("evmeter-sim", level=log_level, fmt="text")
    import random

    signer, generated_pem = _signer(sign_key, meter_serial) if sign_key else (None, "")
    faults = Faults(corrupt_next=corrupt, drop=drop, garbage=garbage, split=split, rng=random.Random(seed))
    sim = Simulator(
        protocol=protocol,
        model=MeterModel(power_kw=power_kw, load_on=load, energy_wh=energy_wh, time_scale=time_scale),
        faults=faults,
        address=address,
        iec=iec,
        signer=signer,
    )

    async def run() -> int:
        stop = shutdown_event()
        if protocol == "modbus":
            from evproto.hw.modbus_map import MeterMapError, load_map

            from .modbus_server import ModbusBackend

            try:
                meter_map_ = load_map(meter_model, path=meter_map) if meter_map else load_map(meter_model)
            except MeterMapError as exc:
                click.echo(f"evmeter-sim: {exc}", err=True)
                return 64
            sim.backend = ModbusBackend(sim.model, faults, meter_map=meter_map_, unit=unit, baudrate=baud)
            await sim.backend.start()
        if use_pty:
            device = PtyDevice(link)
            click.echo(device.path, nl=True)
            sys.stdout.flush()
            task = asyncio.ensure_future(sim.run_pty(device, stop))
        else:
            try:
                where = await sim.run_tcp(tcp or "", stop)
            except (OSError, TransportError) as exc:
                click.echo(f"evmeter-sim: cannot listen on {tcp}: {exc}", err=True)
                return 69
            click.echo(where)
            sys.stdout.flush()
            task = None

        async def commands() -> None:
            async for line in stdin_lines():
                if line.lower() in ("quit", "q", "exit"):
                    stop.set()
                    return
                log.info("%s", sim.command(line))

        if generated_pem:  # after the device line, which stays the first line of output
            click.echo(f"public key of --sign-key generate (the meter {meter_serial}):\n{generated_pem}", err=True)
        cmd = asyncio.ensure_future(commands())
        await stop.wait()
        cmd.cancel()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            if sim.device is not None:
                sim.device.close()
        if sim.backend is not None:
            await sim.backend.close()
        return 0

    sys.exit(asyncio.run(run()))


def _signer(sign_key: str, meter_serial: str) -> tuple[Any, str]:
    """The meter's signer, and the public key (PEM) of a key it generated ("" for a key file)."""
    try:
        from evproto.hw import ocmf

        from .signing import MeterSigner
    except ImportError as exc:  # pragma: no cover - the network distribution has cryptography
        raise click.UsageError(f"--sign-key needs cryptography (pip install 'evproto[ocmf]'): {exc}") from None
    if sign_key == "generate":
        from cryptography.hazmat.primitives import serialization

        key = ocmf.ec.generate_private_key(ocmf.ec.SECP256R1())
        pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        generated = pem.decode().strip()
    else:
        generated = ""
        try:
            with open(sign_key, "rb") as fh:
                key = ocmf.load_private_key(fh.read())
        except (OSError, ValueError, TypeError) as exc:
            raise click.BadParameter(f"{sign_key}: {exc}", param_hint="--sign-key") from None
    if not meter_serial or len(meter_serial) > 64 or not meter_serial.isprintable() or not meter_serial.isascii():
        raise click.BadParameter("1 to 64 printable ASCII characters", param_hint="--meter-serial")
    return MeterSigner(key, meter_serial=meter_serial), generated


if __name__ == "__main__":
    main()
