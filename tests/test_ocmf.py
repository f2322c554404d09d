"""Signed meter values (OCMF): golden vectors read from docs/hardware.md, sign/verify,
tampered tickets, hostile input, and end to end through a real pty and the real broker."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from evproto.errors import EvprotoError
from evproto.hw import ocmf
from evproto.hw.ocmf import OcmfError, OcmfProblem

DOC = Path(__file__).resolve().parent.parent / "docs" / "hardware.md"


def _vectors() -> dict[str, object]:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- vectors:ocmf -->\n```text\n(.*?)```\n<!-- /vectors:ocmf -->", text, re.S)
    assert m, f"vectors:ocmf missing from {DOC}"
    block = m.group(1)
    pem = re.search(r"(-----BEGIN PRIVATE KEY-----\n.*?-----END PRIVATE KEY-----\n)", block, re.S)
    assert pem
    out: dict[str, object] = {"private_key": ocmf.load_private_key(pem.group(1).encode())}
    for line in block.splitlines():
        name, sep, value = line.partition(": ")
        if sep and name in ("public key", "begin", "end", "begin inputs", "end inputs", "ticket energy_kwh"):
            out[name] = value
    return out


V = _vectors()
KEY: ec.EllipticCurvePrivateKey = V["private_key"]  # type: ignore[assignment]
PUB = ocmf.load_public_key(str(V["public key"]))
BEGIN, END = str(V["begin"]), str(V["end"])
ENERGY_KWH = float(str(V["ticket energy_kwh"]))


@pytest.mark.parametrize("name", ["begin", "end"])
def test_golden_vectors_build_and_sign_to_the_documented_text(name: str) -> None:
    inputs = json.loads(str(V[f"{name} inputs"]))
    payload = ocmf.build_payload(**inputs)
    assert ocmf.sign_payload(payload, KEY) == V[name]
    assert ocmf.public_key_hex(KEY) == V["public key"]
    reading = ocmf.verify(str(V[name]), PUB)
    assert reading.payload_text == payload
    assert reading.meter_serial == inputs["meter_serial"]
    assert reading.transaction == inputs["transaction"]
    assert reading.value_kwh == round(inputs["energy_wh"] / 1000, 3)


def test_the_golden_pair_checks_with_the_ticket_energy() -> None:
    pair = ocmf.check_pair(BEGIN, END, PUB, meter_serial="EVP-0001", energy_kwh=ENERGY_KWH)
    assert pair.energy_kwh == ENERGY_KWH
    assert pair.meter_serial == "EVP-0001"


def test_sign_verify_round_trip_with_a_fresh_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    payload = ocmf.build_payload(
        meter_serial="M1", pagination=7, transaction="E", energy_wh=1.0, ts_ms=1_800_000_000_123, identification="x"
    )
    text = ocmf.sign_payload(payload, key)
    assert ocmf.verify(text, ocmf.load_public_key(ocmf.public_key_hex(key))).time.endswith(",123+0000 S")
    with pytest.raises(OcmfError) as info:
        ocmf.verify(text, PUB)  # another meter's key
    assert info.value.problem is OcmfProblem.SIGNATURE


def _resign(text: str, edit) -> str:
    """``text`` with its payload changed by ``edit`` and signed again by the test key."""
    payload = json.loads(ocmf.parse(text).payload_text)
    edit(payload)
    return ocmf.sign_payload(json.dumps(payload, separators=(",", ":")), KEY)


def test_a_changed_register_value_breaks_the_signature() -> None:
    tampered = BEGIN.replace('"RV":12.346', '"RV":12.000')
    assert tampered != BEGIN
    with pytest.raises(OcmfError) as info:
        ocmf.check_pair(tampered, END, PUB, energy_kwh=ENERGY_KWH)
    assert info.value.problem is OcmfProblem.SIGNATURE


def test_a_changed_ticket_energy_is_refused() -> None:
    with pytest.raises(OcmfError) as info:
        ocmf.check_pair(BEGIN, END, PUB, energy_kwh=ENERGY_KWH + 0.001)
    assert info.value.problem is OcmfProblem.ENERGY


def test_a_swapped_meter_serial_is_refused() -> None:
    other_meter = _resign(END, lambda p: p.update(MS="EVP-0002"))
    with pytest.raises(OcmfError) as info:
        ocmf.check_pair(BEGIN, other_meter, PUB, energy_kwh=ENERGY_KWH)
    assert info.value.problem is OcmfProblem.METER_ID
    with pytest.raises(OcmfError) as info:
        ocmf.check_pair(BEGIN, END, PUB, meter_serial="EVP-0002")
    assert info.value.problem is OcmfProblem.METER_ID


def test_a_truncated_signature_is_refused() -> None:
    sd = re.search(r'"SD":"([0-9A-F]+)"', END)
    assert sd
    truncated = END.replace(sd.group(1), sd.group(1)[:-8])
    with pytest.raises(OcmfError) as info:
        ocmf.check_pair(BEGIN, truncated, PUB)
    assert info.value.problem is OcmfProblem.SIGNATURE


@pytest.mark.parametrize(
    "edit,why",
    [
        (lambda p: p.update(ID="D008/43"), "different identifications"),
        (lambda p: p.update(PG="T1"), "does not come after"),
        (lambda p: p["RD"][0].update(TX="B"), "a B then an E"),
        (lambda p: p["RD"][0].update(RV=1.0), "went back"),
    ],
)
def test_readings_that_do_not_belong_together_are_refused(edit, why: str) -> None:
    with pytest.raises(OcmfError, match=why) as info:
        ocmf.check_pair(BEGIN, _resign(END, edit), PUB)
    assert info.value.problem is OcmfProblem.PAIRING


@pytest.mark.parametrize(
    "text,problem",
    [
        ("", OcmfProblem.UNSIGNED),
        ("OCMF", OcmfProblem.MALFORMED),
        ("XYZ|{}|{}", OcmfProblem.MALFORMED),
        ("OCMF|{}", OcmfProblem.MALFORMED),
        ("OCMF|[1]|{}", OcmfProblem.MALFORMED),
        ("OCMF|" + "[" * 5000 + "|{}", OcmfProblem.MALFORMED),
        ('OCMF|{"RD":[]}|{}', OcmfProblem.MALFORMED),
        ('OCMF|{"RD":[{"RV":1e400}]}|{}', OcmfProblem.MALFORMED),
        ('OCMF|{"RD":[{"RV":-1}]}|{}', OcmfProblem.MALFORMED),
        ('OCMF|{"RD":[{"RV":"1"}]}|{}', OcmfProblem.MALFORMED),
        ("OCMF|{}|{}\u00e9", OcmfProblem.MALFORMED),
        (BEGIN.replace("ECDSA-secp256r1-SHA256", "ECDSA-secp192k1-SHA256"), OcmfProblem.SIGNATURE),
        (BEGIN.replace('"SE":"hex"', '"SE":"base64"'), OcmfProblem.SIGNATURE),
        (BEGIN.replace('"SD":"30', '"SD":"ZZ'), OcmfProblem.SIGNATURE),
        (BEGIN.replace('"MS":"EVP-0001"', '"MS":' + json.dumps("M" * 500)), OcmfProblem.MALFORMED),
        (BEGIN.replace('"MS":"EVP-0001"', '"MS":17'), OcmfProblem.MALFORMED),
    ],
)
def test_hostile_input_raises_a_typed_error(text: str, problem: OcmfProblem) -> None:
    with pytest.raises(OcmfError) as info:
        ocmf.verify(text, PUB)
    assert info.value.problem is problem
    assert isinstance(info.value, EvprotoError)


def test_bounds_and_bad_keys() -> None:
    with pytest.raises(OcmfError, match="longer than"):
        ocmf.parse("OCMF|" + "x" * ocmf.MAX_OCMF_LEN)
    with pytest.raises(OcmfError) as info:
        ocmf.load_public_key("not a key")
    assert info.value.problem is OcmfProblem.SIGNATURE
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(OcmfError, match="P-256"):
        ocmf.load_public_key(ocmf.public_key_hex(p384))
    with pytest.raises(ValueError):
        ocmf.build_payload(meter_serial="M", pagination=1, transaction="X", energy_wh=0, ts_ms=0)
