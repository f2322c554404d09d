"""Modbus register maps as data: which register holds which quantity, in which type and unit.

One JSON file per meter model ships in ``modbus_maps/`` (``sdm630``, ``sdm72``,
``abb-b23``); a user adds a model by writing such a file and naming its path
(``--meter-map FILE``). Files are validated once, at load, with errors that say
which file, which quantity and what is wrong (docs/hardware.md, "Modbus RTU").

Pure: no I/O besides reading the file, no pymodbus. The driver
(:mod:`.modbus_meter`) and the simulator both read registers through
:func:`read_plan`, :func:`decode` and :func:`encode`.
"""

from __future__ import annotations

import enum
import json
import math
import os
import struct
from dataclasses import dataclass, field
from importlib import resources

from evproto.errors import EvprotoError

__all__ = [
    "Quantity",
    "RegisterType",
    "RegisterSpec",
    "MeterMap",
    "ReadBlock",
    "MeterMapError",
    "MODELS",
    "load_map",
    "read_plan",
    "decode",
    "encode",
]

#: Registers one read may ask for (Modbus: at most 125 per read of function 03/04).
MAX_REGISTERS_PER_READ = 125
#: The largest file we read as a map (a map is a few kB).
_MAX_MAP_BYTES = 256 * 1024


class MeterMapError(EvprotoError, ValueError):
    """A register map file is missing or wrong (the message names the file and the entry)."""


class Quantity(str, enum.Enum):
    """What a register may hold; the name carries the unit the driver reports it in."""

    ENERGY_IMPORT_WH = "energy_import_wh"
    ENERGY_IMPORT_L1_WH = "energy_import_l1_wh"
    ENERGY_IMPORT_L2_WH = "energy_import_l2_wh"
    ENERGY_IMPORT_L3_WH = "energy_import_l3_wh"
    ENERGY_EXPORT_WH = "energy_export_wh"
    POWER_W = "power_w"
    VOLTAGE_L1_V = "voltage_l1_v"
    VOLTAGE_L2_V = "voltage_l2_v"
    VOLTAGE_L3_V = "voltage_l3_v"
    CURRENT_L1_A = "current_l1_a"
    CURRENT_L2_A = "current_l2_a"
    CURRENT_L3_A = "current_l3_a"
    FREQUENCY_HZ = "frequency_hz"


class RegisterType(str, enum.Enum):
    """How a value is laid out in 16-bit registers (always high word first, as Eastron and ABB do)."""

    FLOAT32 = "float32"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"

    @property
    def registers(self) -> int:
        return _LAYOUT[self][0]


#: type -> (registers, struct format of the big-endian bytes)
_LAYOUT: dict[RegisterType, tuple[int, str]] = {
    RegisterType.FLOAT32: (2, ">f"),
    RegisterType.INT16: (1, ">h"),
    RegisterType.UINT16: (1, ">H"),
    RegisterType.INT32: (2, ">i"),
    RegisterType.UINT32: (2, ">I"),
    RegisterType.INT64: (4, ">q"),
    RegisterType.UINT64: (4, ">Q"),
}

#: Modbus function that reads each kind of register.
FUNCTIONS = {"input": 4, "holding": 3}


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterSpec:
    """Where one quantity lives: value = raw register value x ``scale`` (in the quantity's unit)."""

    quantity: Quantity
    address: int
    function: str  # "input" (function 04) or "holding" (function 03)
    type: RegisterType
    scale: float = 1.0
    unit: str = ""

    @property
    def count(self) -> int:
        return self.type.registers


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterMap:
    """A meter model's registers and its factory line settings."""

    model: str
    description: str
    registers: dict[Quantity, RegisterSpec]
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    #: Unused registers one read may span between two quantities (0: contiguous only; some meters
    #: answer an exception for any unmapped address inside a read).
    max_gap: int = 0
    source: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadBlock:
    """One read request: ``count`` registers from ``address`` with function ``function``."""

    function: str
    address: int
    count: int
    specs: tuple[RegisterSpec, ...]


def _builtin_models() -> dict[str, str]:
    names = {}
    for entry in resources.files(__package__).joinpath("modbus_maps").iterdir():
        if entry.name.endswith(".json"):
            names[entry.name[: -len(".json")]] = entry.name
    return dict(sorted(names.items()))


#: Model name -> file in the package's ``modbus_maps/``.
MODELS: dict[str, str] = _builtin_models()


def load_map(model: str | None = None, *, path: str | None = None) -> MeterMap:
    """The register map of a built-in ``model``, or of the file at ``path``; MeterMapError if wrong."""
    if path is not None:
        try:
            size = os.path.getsize(path)
            if size > _MAX_MAP_BYTES:
                raise MeterMapError(f"{path}: {size} bytes is too large for a register map")
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise MeterMapError(f"cannot read register map {path}: {exc.strerror or exc}") from None
        return parse_map(text, source=path)
    if model is None:
        raise MeterMapError("give a meter model or a register map file")
    try:
        name = MODELS[model.lower()]
    except KeyError:
        raise MeterMapError(
            f"unknown meter model {model!r} (built in: {', '.join(MODELS)}; or give your own map with --meter-map FILE)"
        ) from None
    text = resources.files(__package__).joinpath("modbus_maps").joinpath(name).read_text(encoding="utf-8")
    return parse_map(text, source=f"built-in {model}")


def parse_map(text: str, *, source: str = "<map>") -> MeterMap:
    """Validate a map's JSON text (see docs/hardware.md for the format)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MeterMapError(f"{source}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(doc, dict):
        raise MeterMapError(f"{source}: a register map is a JSON object")
    unknown = set(doc) - {"model", "description", "serial", "quantities", "max_gap"}
    if unknown:
        raise MeterMapError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}")
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise MeterMapError(f"{source}: 'model' must be a non-empty string")
    quantities = doc.get("quantities")
    if not isinstance(quantities, dict) or not quantities:
        raise MeterMapError(f"{source}: 'quantities' must be an object of quantity -> register")
    registers: dict[Quantity, RegisterSpec] = {}
    for name, entry in quantities.items():
        quantity = _quantity(name, source)  # before the entry: an unknown name is the first thing to say
        registers[quantity] = _spec(name, entry, source)
    if Quantity.ENERGY_IMPORT_WH not in registers:
        raise MeterMapError(f"{source}: 'energy_import_wh' is required (the register the supply is billed from)")
    used: dict[tuple[str, int], Quantity] = {}
    for spec in registers.values():
        for addr in range(spec.address, spec.address + spec.count):
            other = used.setdefault((spec.function, addr), spec.quantity)
            if other is not spec.quantity:
                raise MeterMapError(
                    f"{source}: {spec.quantity.value} overlaps {other.value} at {spec.function} register {addr:#06x}"
                )
    serial = doc.get("serial", {})
    if not isinstance(serial, dict) or set(serial) - {"baudrate", "parity", "stopbits"}:
        raise MeterMapError(f"{source}: 'serial' takes baudrate, parity and stopbits")
    baudrate = serial.get("baudrate", 9600)
    parity = serial.get("parity", "N")
    stopbits = serial.get("stopbits", 1)
    if not isinstance(baudrate, int) or isinstance(baudrate, bool) or baudrate <= 0:
        raise MeterMapError(f"{source}: serial.baudrate must be a positive integer")
    if parity not in ("N", "E", "O"):
        raise MeterMapError(f"{source}: serial.parity must be N, E or O")
    if stopbits not in (1, 2):
        raise MeterMapError(f"{source}: serial.stopbits must be 1 or 2")
    max_gap = doc.get("max_gap", 0)
    if not isinstance(max_gap, int) or isinstance(max_gap, bool) or not 0 <= max_gap <= MAX_REGISTERS_PER_READ:
        raise MeterMapError(f"{source}: 'max_gap' must be an integer 0..{MAX_REGISTERS_PER_READ}")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise MeterMapError(f"{source}: 'description' must be a string")
    return MeterMap(
        model=model,
        description=description,
        registers=registers,
        baudrate=baudrate,
        parity=parity,
        stopbits=stopbits,
        max_gap=max_gap,
        source=source,
    )


def _quantity(name: object, source: str) -> Quantity:
    try:
        return Quantity(name)
    except ValueError:
        raise MeterMapError(
            f"{source}: unknown quantity {name!r} (known: {', '.join(q.value for q in Quantity)})"
        ) from None


def _spec(name: str, entry: object, source: str) -> RegisterSpec:
    where = f"{source}: quantity {name}"
    if not isinstance(entry, dict):
        raise MeterMapError(f"{where}: expected an object with address, function, type")
    unknown = set(entry) - {"address", "function", "type", "scale", "unit"}
    if unknown:
        raise MeterMapError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    raw_address = entry.get("address")
    try:
        if isinstance(raw_address, bool):
            raise ValueError
        address = int(raw_address, 0) if isinstance(raw_address, str) else int(raw_address)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise MeterMapError(f'{where}: address must be a number (decimal, or a string like "0x0048")') from None
    function = entry.get("function")
    if function not in FUNCTIONS:
        raise MeterMapError(f"{where}: function must be 'input' (04) or 'holding' (03), not {function!r}")
    try:
        rtype = RegisterType(entry.get("type"))
    except ValueError:
        raise MeterMapError(
            f"{where}: type must be one of {', '.join(t.value for t in RegisterType)}, not {entry.get('type')!r}"
        ) from None
    if not 0 <= address <= 0xFFFF - rtype.registers + 1:
        raise MeterMapError(f"{where}: address {address} is outside 0..65535")
    scale = entry.get("scale", 1)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale == 0:
        raise MeterMapError(f"{where}: scale must be a non-zero number")
    unit = entry.get("unit", "")
    if not isinstance(unit, str):
        raise MeterMapError(f"{where}: unit must be a string")
    return RegisterSpec(
        quantity=Quantity(name), address=address, function=function, type=rtype, scale=float(scale), unit=unit
    )


def read_plan(meter_map: MeterMap) -> list[ReadBlock]:
    """The reads that fetch every quantity of ``meter_map``: neighbours merged, bounded in size.

    The energy register's block comes first, so a meter that stops answering fails the
    reading at once rather than after every other register (fail fast).
    """
    blocks: list[ReadBlock] = []
    for function in FUNCTIONS:
        specs = sorted((s for s in meter_map.registers.values() if s.function == function), key=lambda s: s.address)
        group: list[RegisterSpec] = []
        for spec in specs:
            if group:
                start = group[0].address
                end = max(s.address + s.count for s in group)
                if spec.address - end > meter_map.max_gap or spec.address + spec.count - start > MAX_REGISTERS_PER_READ:
                    blocks.append(_block(function, group))
                    group = []
            group.append(spec)
        if group:
            blocks.append(_block(function, group))
    blocks.sort(key=lambda b: not any(s.quantity is Quantity.ENERGY_IMPORT_WH for s in b.specs))
    return blocks


def _block(function: str, group: list[RegisterSpec]) -> ReadBlock:
    start = group[0].address
    end = max(s.address + s.count for s in group)
    return ReadBlock(function=function, address=start, count=end - start, specs=tuple(group))


def decode(spec: RegisterSpec, registers: list[int]) -> float:
    """The value of ``spec`` from its registers (high word first), scaled to the quantity's unit."""
    count, fmt = _LAYOUT[spec.type]
    if len(registers) != count:
        raise ValueError(f"{spec.quantity.value}: {len(registers)} registers, expected {count}")
    raw = struct.unpack(fmt, b"".join(r.to_bytes(2, "big") for r in registers))[0]
    return float(raw) * spec.scale


def encode(spec: RegisterSpec, value: float) -> list[int]:
    """The registers that hold ``value`` (in the quantity's unit): the inverse of :func:`decode`."""
    count, fmt = _LAYOUT[spec.type]
    raw = value / spec.scale
    data = struct.pack(fmt, raw if spec.type is RegisterType.FLOAT32 else int(round(raw)))
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, 2 * count, 2)]
