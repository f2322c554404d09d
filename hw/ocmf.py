"""Signed meter values in OCMF, the Open Charge Metering Format (SAFE e.V.).

A signed reading is the text ``OCMF|{payload JSON}|{signature JSON}``. The payload
names the meter (``MS`` its serial), the transaction's identification (``IT``/``ID``),
a pagination counter (``PG``, ``T1``, ``T2``...) and its readings (``RD``: time,
``TX`` ``B`` begin or ``E`` end, ``RV`` the import register in kWh). The signature is
ECDSA on P-256 with SHA-256 over the payload's bytes exactly as they stand between
the two pipes, DER encoded, in hex (``SA`` ``ECDSA-secp256r1-SHA256``, ``SE`` ``hex``,
``SM`` ``application/x-der``).

This module builds, signs, parses and checks them: a supply's begin and end readings
belong together (same meter, same identification, begin before end) and the energy
billed is end minus begin at the register's resolution, 1 Wh (``RV`` with 3 decimals
in kWh). Anything malformed or hostile raises :class:`OcmfError` saying which
:class:`OcmfProblem` it is. Needs ``cryptography`` (``pip install 'evproto[ocmf]'``;
the evproto-network distribution has it).
"""

from __future__ import annotations

import enum
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from evproto.errors import EvprotoError

__all__ = [
    "MAX_OCMF_LEN",
    "SIGNATURE_ALGORITHM",
    "ENERGY_OBIS",
    "OcmfProblem",
    "OcmfError",
    "OcmfReading",
    "OcmfPair",
    "build_payload",
    "sign_payload",
    "parse",
    "verify",
    "check_pair",
    "load_private_key",
    "load_public_key",
    "public_key_hex",
    "format_time",
]

#: Longest OCMF text accepted (ours are ~500 characters; a few readings more still fit).
MAX_OCMF_LEN = 2048
#: The only signature algorithm we sign with and accept.
SIGNATURE_ALGORITHM = "ECDSA-secp256r1-SHA256"
#: The import energy register (OBIS 1.8.0), as OCMF names it.
ENERGY_OBIS = "1-b:1.8.0"
#: kWh decimals in RV: the register's resolution is 1 Wh.
RV_DECIMALS = 3
#: Readings in one payload we look at (ours carry one).
MAX_READINGS = 16
#: Longest field value we copy out of a payload.
_MAX_FIELD_LEN = 192
#: A DER ECDSA P-256 signature is at most 72 bytes.
_MAX_SIGNATURE_BYTES = 80


class OcmfProblem(enum.Enum):
    """Why a signed reading (or a pair of them) is not accepted."""

    UNSIGNED = "unsigned"
    MALFORMED = "malformed"
    SIGNATURE = "signature"
    METER_ID = "meter_id"
    PAIRING = "pairing"
    ENERGY = "energy"


class OcmfError(EvprotoError):
    """A signed reading that is missing, malformed or does not check; ``problem`` says which."""

    def __init__(self, problem: OcmfProblem, detail: str) -> None:
        super().__init__(f"{problem.value}: {detail}")
        self.problem = problem
        self.detail = detail


@dataclass(frozen=True, slots=True, kw_only=True)
class OcmfReading:
    """One parsed OCMF text: the fields we check, and the exact payload that was signed."""

    text: str
    payload_text: str
    meter_serial: str
    pagination: str
    identification_type: str
    identification: str
    transaction: str
    time: str
    value_kwh: float
    unit: str
    signature: bytes

    @property
    def energy_wh(self) -> float:
        return round(self.value_kwh * 1000.0, 6)


@dataclass(frozen=True, slots=True, kw_only=True)
class OcmfPair:
    """A checked begin/end pair: the energy between them at the register's resolution."""

    begin: OcmfReading
    end: OcmfReading
    energy_kwh: float
    meter_serial: str


def format_time(ts_ms: int) -> str:
    """OCMF's time format, in UTC, synchronised clock: ``2026-12-02T08:00:00,000+0000 S``."""
    t = time.gmtime(ts_ms // 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f",{ts_ms % 1000:03d}+0000 S"


def build_payload(
    *,
    meter_serial: str,
    pagination: int,
    transaction: str,
    energy_wh: float,
    ts_ms: int,
    identification: str = "",
    gateway_id: str = "",
    meter_vendor: str = "evproto",
    meter_model: str = "evmeter-sim",
    meter_firmware: str = "1.0",
) -> str:
    """The payload JSON text of one reading (compact, keys in the specification's order)."""
    if transaction not in ("B", "E"):
        raise ValueError(f"transaction is 'B' or 'E', not {transaction!r}")
    if not 0 <= pagination < 10**9:
        raise ValueError("pagination out of range")
    payload: dict[str, Any] = {
        "FV": "1.0",
        "GI": gateway_id,
        "GS": "",
        "GV": "",
        "PG": f"T{pagination}",
        "MV": meter_vendor,
        "MM": meter_model,
        "MS": meter_serial,
        "MF": meter_firmware,
        "IS": bool(identification),
        "IL": "NONE",
        "IT": "CENTRAL" if identification else "NONE",
        "ID": identification,
        "CT": "",
        "CI": "",
        "RD": [
            {
                "TM": format_time(ts_ms),
                "TX": transaction,
                "RV": round(energy_wh / 1000.0, RV_DECIMALS),
                "RI": ENERGY_OBIS,
                "RU": "kWh",
                "RT": "AC",
                "ST": "G",
            }
        ],
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=True)


def _ecdsa() -> ec.ECDSA:
    # RFC 6979: the same key and payload give the same signature (golden vectors in docs/hardware.md).
    return ec.ECDSA(hashes.SHA256(), deterministic_signing=True)


def sign_payload(payload_text: str, private_key: ec.EllipticCurvePrivateKey) -> str:
    """The OCMF text of ``payload_text`` signed with ``private_key`` (P-256)."""
    if not isinstance(private_key.curve, ec.SECP256R1):
        raise ValueError("OCMF signing key must be on P-256 (secp256r1)")
    der = private_key.sign(payload_text.encode("ascii"), _ecdsa())
    signature = {"SA": SIGNATURE_ALGORITHM, "SE": "hex", "SM": "application/x-der", "SD": der.hex().upper()}
    return f"OCMF|{payload_text}|{json.dumps(signature, separators=(',', ':'))}"


def _field(obj: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = obj.get(name, "")
    if value is None and not required:
        return ""
    if not isinstance(value, str) or len(value) > _MAX_FIELD_LEN:
        raise OcmfError(OcmfProblem.MALFORMED, f"field {name} is not a string of at most {_MAX_FIELD_LEN} characters")
    if required and not value:
        raise OcmfError(OcmfProblem.MALFORMED, f"field {name} is missing")
    return value


def parse(text: str) -> OcmfReading:
    """Parse an OCMF text (no signature check: see :func:`verify`). OcmfError when it is
    empty (UNSIGNED), too long, not ASCII, or not OCMF's layout (MALFORMED)."""
    if not isinstance(text, str):
        raise OcmfError(OcmfProblem.MALFORMED, "not a text")
    if not text:
        raise OcmfError(OcmfProblem.UNSIGNED, "no signed reading")
    if len(text) > MAX_OCMF_LEN:
        raise OcmfError(OcmfProblem.MALFORMED, f"longer than {MAX_OCMF_LEN} characters")
    if not text.isascii() or not text.isprintable():
        raise OcmfError(OcmfProblem.MALFORMED, "not printable ASCII")
    if not text.startswith("OCMF|"):
        raise OcmfError(OcmfProblem.MALFORMED, "does not start with OCMF|")
    # The signature section holds no pipe; the payload's strings might.
    payload_text, sep, signature_text = text[5:].rpartition("|")
    if not sep:
        raise OcmfError(OcmfProblem.MALFORMED, "no signature section")
    try:
        payload = json.loads(payload_text)
        signature = json.loads(signature_text)
    except (ValueError, RecursionError) as exc:
        raise OcmfError(OcmfProblem.MALFORMED, f"not JSON ({str(exc)[:80]})") from None
    if not isinstance(payload, dict) or not isinstance(signature, dict):
        raise OcmfError(OcmfProblem.MALFORMED, "payload and signature must be JSON objects")
    readings = payload.get("RD")
    if not isinstance(readings, list) or not readings or len(readings) > MAX_READINGS:
        raise OcmfError(OcmfProblem.MALFORMED, f"RD must hold 1 to {MAX_READINGS} readings")
    rd = readings[0]
    if not isinstance(rd, dict):
        raise OcmfError(OcmfProblem.MALFORMED, "a reading is not an object")
    raw_value: Any = rd.get("RV")
    # Not a bool (an int to Python) and not NaN or infinity (json accepts them).
    value = float(raw_value) if type(raw_value) in (int, float) else math.nan
    if not math.isfinite(value) or not 0 <= value < 1e9:
        raise OcmfError(OcmfProblem.MALFORMED, "RV is not a register value in range")
    if _field(rd, "RI") != ENERGY_OBIS or _field(rd, "RU") != "kWh":
        raise OcmfError(OcmfProblem.MALFORMED, f"the reading is not the energy register ({ENERGY_OBIS} in kWh)")
    transaction = _field(rd, "TX")
    if transaction not in ("B", "E"):
        raise OcmfError(OcmfProblem.MALFORMED, "TX is neither B (begin) nor E (end)")
    algorithm = _field(signature, "SA")
    if algorithm != SIGNATURE_ALGORITHM:
        raise OcmfError(OcmfProblem.SIGNATURE, f"algorithm {algorithm[:40]!r} is not {SIGNATURE_ALGORITHM}")
    if signature.get("SE", "hex") != "hex" or signature.get("SM", "application/x-der") != "application/x-der":
        raise OcmfError(OcmfProblem.SIGNATURE, "signature must be hex-encoded DER")
    sd = _field(signature, "SD")
    try:
        der = bytes.fromhex(sd)
    except ValueError:
        raise OcmfError(OcmfProblem.SIGNATURE, "SD is not hex") from None
    if not 8 <= len(der) <= _MAX_SIGNATURE_BYTES:
        raise OcmfError(OcmfProblem.SIGNATURE, f"SD is {len(der)} bytes, not a P-256 signature")
    return OcmfReading(
        text=text,
        payload_text=payload_text,
        meter_serial=_field(payload, "MS"),
        pagination=_field(payload, "PG"),
        identification_type=_field(payload, "IT", required=False),
        identification=_field(payload, "ID", required=False),
        transaction=transaction,
        time=_field(rd, "TM"),
        value_kwh=value,
        unit="kWh",
        signature=der,
    )


def load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from PEM (PKCS#8 or SEC1, unencrypted)."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not a P-256 (secp256r1) private key")
    return key


def load_public_key(data: bytes | str) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from PEM, DER (SubjectPublicKeyInfo) or DER in hex; OcmfError
    (SIGNATURE) when it is none of those."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    try:
        if b"-----BEGIN" in raw:
            key = serialization.load_pem_public_key(raw)
        else:
            try:
                der = bytes.fromhex(raw.decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                der = raw
            key = serialization.load_der_public_key(der)
    except (ValueError, TypeError) as exc:
        raise OcmfError(OcmfProblem.SIGNATURE, f"not a public key ({str(exc)[:80]})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise OcmfError(OcmfProblem.SIGNATURE, "the public key is not on P-256 (secp256r1)")
    return key


def public_key_hex(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> str:
    """The public key as hex of its DER SubjectPublicKeyInfo (how tickets carry it)."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo).hex()


def verify(text: str, public_key: ec.EllipticCurvePublicKey) -> OcmfReading:
    """Parse ``text`` and check its signature; OcmfError otherwise."""
    reading = parse(text)
    try:
        public_key.verify(reading.signature, reading.payload_text.encode("ascii"), _ecdsa())
    except InvalidSignature:
        problem = f"{reading.transaction} reading: the signature does not verify"
        raise OcmfError(OcmfProblem.SIGNATURE, problem) from None
    return reading


def _page(pagination: str) -> int:
    if len(pagination) < 2 or pagination[0] != "T" or not pagination[1:].isdigit() or len(pagination) > 12:
        raise OcmfError(OcmfProblem.PAIRING, f"pagination {pagination[:20]!r} is not a transaction counter (T<n>)")
    return int(pagination[1:])


def check_pair(
    begin_text: str,
    end_text: str,
    public_key: ec.EllipticCurvePublicKey,
    *,
    meter_serial: str | None = None,
    energy_kwh: float | None = None,
) -> OcmfPair:
    """Check a supply's signed begin and end: both signatures, the meter (``meter_serial``
    when given), that they belong together (same meter and identification, a B then an
    E, the end's counter after the begin's, the register not going back) and, when
    ``energy_kwh`` is given, that it is end - begin at 1 Wh resolution."""
    begin = verify(begin_text, public_key)
    end = verify(end_text, public_key)
    for reading in (begin, end):
        if meter_serial is not None and reading.meter_serial != meter_serial:
            raise OcmfError(
                OcmfProblem.METER_ID,
                f"{reading.transaction} reading is from meter {reading.meter_serial!r}, not {meter_serial!r}",
            )
    if begin.meter_serial != end.meter_serial:
        raise OcmfError(
            OcmfProblem.METER_ID, f"begin is from meter {begin.meter_serial!r}, end from {end.meter_serial!r}"
        )
    if begin.transaction != "B" or end.transaction != "E":
        got = f"{begin.transaction}, {end.transaction}"
        raise OcmfError(OcmfProblem.PAIRING, f"expected a B then an E reading, got {got}")
    if (begin.identification_type, begin.identification) != (end.identification_type, end.identification):
        raise OcmfError(OcmfProblem.PAIRING, "begin and end name different identifications")
    if _page(end.pagination) <= _page(begin.pagination):
        raise OcmfError(OcmfProblem.PAIRING, f"end {end.pagination} does not come after begin {begin.pagination}")
    if end.value_kwh < begin.value_kwh:
        raise OcmfError(OcmfProblem.PAIRING, "the register went back between begin and end")
    # Compared in whole Wh (the register's resolution), never as binary fractions of a kWh.
    delivered_wh = round(end.value_kwh * 1000) - round(begin.value_kwh * 1000)
    if energy_kwh is not None and (not math.isfinite(energy_kwh) or round(energy_kwh * 1000) != delivered_wh):
        signed = f"the signed readings {delivered_wh / 1000:.3f} kWh"
        raise OcmfError(OcmfProblem.ENERGY, f"the ticket says {energy_kwh:.3f} kWh, {signed}")
    return OcmfPair(begin=begin, end=end, energy_kwh=delivered_wh / 1000, meter_serial=begin.meter_serial)
