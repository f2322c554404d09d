"""Signed meter values (OCMF): golden vectors read from docs/hardware.md, sign/verify,
tampered tickets, hostile input, and end to end through a real pty and the real broker."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from evproto.errors import EvprotoError
from evproto.hw import ocmf
from evproto.hw.evproto_meter import EvprotoMeter
from evproto.hw.ocmf import OcmfError, OcmfProblem
from evproto.messages import MeterTransaction

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
        ('OCMF|{"RD":[{"RV":true}]}|{}', OcmfProblem.MALFORMED),
        ('OCMF|{"RD":[{"RV":NaN}]}|{}', OcmfProblem.MALFORMED),
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


# -- the simulated meter over a real pty --------------------------------------------------------


TEST_KEY_PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
PUBLIC_PEM = PUB.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def key_files(tmp_path: Path) -> tuple[str, str]:
    """The golden vectors' key as a meter's signing key file and its public key file."""
    private, public = tmp_path / "meter-key.pem", tmp_path / "meter-pub.pem"
    private.write_bytes(TEST_KEY_PEM)
    public.write_bytes(PUBLIC_PEM)
    return str(private), str(public)


async def test_the_simulated_meter_signs_begin_and_end_over_a_pty(sim_factory, key_files) -> None:
    sim = sim_factory("evproto", "--sign-key", key_files[0], "--meter-serial", "EVP-PTY-1", "--time-scale", "600")
    meter = EvprotoMeter(sim.path, timeout_s=3.0)
    await meter.open()
    try:
        begin = await meter.read_signed(MeterTransaction.BEGIN, "D001/7/1796198400000")
        reading = await meter.read()  # ordinary readings go on between the two
        end = await meter.read_signed(MeterTransaction.END, "D001/7/1796198400000")
    finally:
        await meter.close()
    assert ocmf.load_public_key(begin.public_key).public_numbers() == PUB.public_numbers()
    pair = ocmf.check_pair(begin.ocmf.decode(), end.ocmf.decode(), PUB, meter_serial="EVP-PTY-1")
    assert pair.begin.identification == "D001/7/1796198400000"
    assert (pair.begin.pagination, pair.end.pagination) == ("T1", "T2")
    assert pair.begin.energy_wh <= reading.energy_wh + 0.5 and pair.energy_kwh > 0  # the load is on


async def test_a_meter_without_a_key_answers_unsigned(sim_factory) -> None:
    sim = sim_factory("evproto")
    meter = EvprotoMeter(sim.path, timeout_s=3.0)
    await meter.open()
    try:
        answer = await meter.read_signed(MeterTransaction.BEGIN, "x")
    finally:
        await meter.close()
    assert answer.ocmf == b"" and answer.public_key == b""
    with pytest.raises(OcmfError) as info:
        ocmf.parse(answer.ocmf.decode())
    assert info.value.problem is OcmfProblem.UNSIGNED


# -- evcp-meter verify on ticket files ----------------------------------------------------------


def _verify(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evproto.daemons.meter_cli", "verify", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _ticket(tmp_path: Path, **changes: object) -> Path:
    doc = {"session_id": 42, "energy_kwh": ENERGY_KWH, "ocmf_begin": BEGIN, "ocmf_end": END}
    doc.update({"meter_public_key": V["public key"]})
    doc.update(changes)
    path = tmp_path / "TICKET.json"
    path.write_text(json.dumps(doc))
    return path


def test_verify_accepts_the_golden_ticket_and_names_each_tampering(tmp_path: Path, key_files) -> None:
    ok = _verify(_ticket(tmp_path), "--public-key", key_files[1])
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("valid: meter EVP-0001, T1 -> T2, 12.346 -> 19.746 kWh = 7.400 kWh")
    sd = re.search(r'"SD":"([0-9A-F]+)"', END)
    assert sd
    for changes, reason in [
        ({"ocmf_end": END.replace('"RV":19.746', '"RV":29.746')}, "invalid (signature)"),
        ({"energy_kwh": ENERGY_KWH + 1}, "invalid (energy)"),
        ({"ocmf_end": _resign(END, lambda p: p.update(MS="EVP-0002"))}, "invalid (meter_id)"),
        ({"meter_serial": "EVP-0002"}, "invalid (meter_id)"),
        ({"ocmf_end": END.replace(sd.group(1), sd.group(1)[:-10])}, "invalid (signature)"),
        ({"ocmf_end": _resign(END, lambda p: p.update(ID="D009/1"))}, "invalid (pairing)"),
        ({"ocmf_begin": ""}, "invalid (unsigned)"),
        ({"ocmf_end": 7}, "invalid (malformed)"),
    ]:
        bad = _verify(_ticket(tmp_path, **changes), "--public-key", key_files[1])
        assert bad.returncode == 1, (changes, bad.stdout)
        assert bad.stderr.startswith(reason), (changes, bad.stderr)
    other = tmp_path / "other.pem"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert _verify(_ticket(tmp_path), "--public-key", str(other)).stderr.startswith("invalid (signature)")
    assert _verify(tmp_path / "missing.json").returncode == 66
    (tmp_path / "junk.json").write_bytes(b"[" * 100_000)
    assert _verify(tmp_path / "junk.json").stderr.startswith("invalid (malformed)")


# -- end to end: a real meter pty, engine, monitor, Central, driver and broker -----------------


def _engine(net, sim, *args: str, auto: bool = False):
    net.start_central("D001")
    engine = net.start_engine(
        "CP001",
        auto=auto,
        engine_args=("--port", sim.path, "--meter-interval-s", "0.3", "--meter-timeout-s", "1.0", *args),
    )
    net.start_monitor("CP001", engine.ready["listen"], price=0.40)
    net.wait_state("CP001", "ACTIVATED", timeout_s=30)
    return engine


@pytest.mark.slow
def test_a_supply_ticket_carries_signed_readings_that_evcp_meter_verify_accepts(net, sim_factory, key_files) -> None:
    from netharness import wait_for

    sim = sim_factory(
        "evproto", "--sign-key", key_files[0], "--meter-serial", "EVP-E2E-1", "--power-kw", "11", "--time-scale", "60"
    )
    _engine(
        net,
        sim,
        "--require-signed-meter",
        "--meter-public-key",
        key_files[1],
        "--plug-delay-s",
        "0.2",
        "--supply-s",
        "1.5",
        auto=True,
    )
    net.start_driver("D001", "CP001\n")  # the real ev-driver: it writes the ticket file
    tickets = Path(net.tmp) / "dstate-D001" / "tickets"
    path = wait_for(lambda: next(iter(sorted(tickets.glob("TICKET-*.json"))), None), "the driver's ticket file")
    doc = json.loads(path.read_text())
    assert doc["end_reason"] == "completed", doc
    assert doc["meter_public_key"] == V["public key"]
    pair = ocmf.check_pair(doc["ocmf_begin"], doc["ocmf_end"], PUB, meter_serial="EVP-E2E-1")
    assert pair.energy_kwh > 0 and doc["energy_kwh"] == pair.energy_kwh  # billed from the signed registers
    assert doc["amount_eur"] == pytest.approx(pair.energy_kwh * 0.40)
    ok = _verify(path, "--public-key", key_files[1], "--meter-serial", "EVP-E2E-1")
    assert ok.returncode == 0 and ok.stdout.startswith("valid: meter EVP-E2E-1, T"), ok.stdout + ok.stderr
    (session,) = [s for s in net.get("/api/v1/sessions") if s["id"] == doc["session_id"]]
    assert session["signed_meter"] == {
        "ocmf_begin": doc["ocmf_begin"],
        "ocmf_end": doc["ocmf_end"],
        "meter_public_key": doc["meter_public_key"],
    }
    path.write_text(json.dumps({**doc, "energy_kwh": round(doc["energy_kwh"] + 0.5, 3)}))
    assert _verify(path, "--public-key", key_files[1]).stderr.startswith("invalid (energy)")


@pytest.mark.slow
def test_a_cp_requiring_signatures_ends_an_unsigned_supply_as_a_fault(net, sim_factory) -> None:
    from netharness import KafkaDriver, wait_for

    sim = sim_factory("evproto", "--power-kw", "11")  # a meter that does not sign
    engine = _engine(net, sim, "--require-signed-meter")
    driver = KafkaDriver(net, "D001")
    rid = driver.request("CP001")
    driver.wait_status(rid, "authorized")
    engine.send("p")
    update = driver.wait_status(rid, "interrupted")
    assert update.reason == "fault"
    ticket = wait_for(lambda: next((t for t in driver.tickets() if t.request_id == rid), None), "the ticket")
    assert (ticket.end_reason, ticket.ocmf_begin, ticket.ocmf_end) == ("fault", "", "")
    assert net.log_has(engine, "signed meter values required")
    net.wait_state("CP001", "ACTIVATED")  # the CP itself is fine: the next supply may have a signing meter


def test_a_central_database_from_before_signed_readings_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    from evproto.daemons.central.store import SCHEMA_VERSION, Store

    path = str(tmp_path / "central.db")
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '3');
        CREATE TABLE sessions (id INTEGER PRIMARY KEY, cp_id TEXT NOT NULL, driver_id TEXT NOT NULL,
            request_id TEXT NOT NULL UNIQUE, origin TEXT NOT NULL, status TEXT NOT NULL,
            requested_ts_ms INTEGER NOT NULL, price_eur_kwh REAL NOT NULL, deadline_ts_ms INTEGER NOT NULL,
            target_energy_kwh REAL, target_duration_s REAL, authorized_ts_ms INTEGER, started_ts_ms INTEGER,
            ended_ts_ms INTEGER, energy_kwh REAL NOT NULL DEFAULT 0, amount_eur REAL NOT NULL DEFAULT 0,
            end_reason TEXT);
        INSERT INTO sessions VALUES (5, 'CP1', 'D1', 'r5', 'driver', 'completed', 1796198400000, 0.3,
            1796198460000, NULL, NULL, 1796198400100, 1796198400200, 1796198410000, 2.0, 0.6, 'completed');
    """)
    db.commit()
    db.close()
    store = Store(path)
    try:
        (view,) = store.sessions()
        assert view.to_json()["signed_meter"] is None and view.energy_kwh == 2.0
    finally:
        store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        assert db.execute("SELECT ocmf_begin, ocmf_end, meter_public_key FROM sessions").fetchall() == [("", "", "")]
    finally:
        db.close()


# -- the engine's part, without I/O: what goes into supply_finished ------------------------------


def _finished(**changes: object):
    from evproto.domain.events import SupplyFinished

    base = dict(
        cp_id="CP1",
        session_id=42,
        driver_id="D007",
        energy_kwh=7.0,
        amount_eur=2.1,
        price_eur_kwh=0.3,
        started_ts_ms=1796198400000,
        ended_ts_ms=1796202000000,
        reason="completed",
        ts_ms=1796202000000,
    )
    base.update(changes)
    return SupplyFinished(**base)  # type: ignore[arg-type]


def _meter(begin: str, end: str, key: bytes):
    from evproto.messages import MeterSignedReading

    answers = {MeterTransaction.BEGIN: begin, MeterTransaction.END: end}

    async def read_signed(transaction: MeterTransaction, identification: str) -> MeterSignedReading:
        return MeterSignedReading(ocmf=answers[transaction].encode(), public_key=key)

    return read_signed


@pytest.mark.parametrize(
    "end,pinned,require,reason,energy_kwh",
    [
        (END, None, True, "completed", ENERGY_KWH),  # checks: billed from the signed registers
        (END.replace('"RV":19.746', '"RV":19.000'), None, True, "fault", 7.0),  # tampered
        (END.replace('"RV":19.746', '"RV":19.000'), None, False, "completed", 7.0),  # tampered, not required
        (END, "other", True, "fault", 7.0),  # not the pinned meter's key
        ("", None, True, "fault", 7.0),  # no end reading
    ],
)
async def test_the_engine_attaches_signed_readings_and_faults_what_does_not_check(
    end: str, pinned: str | None, require: bool, reason: str, energy_kwh: float
) -> None:
    from evproto.bus.events import decode_event, encode_event
    from evproto.daemons.engine.signed import SignedReadings

    other = ocmf.public_key_hex(ec.generate_private_key(ec.SECP256R1()))
    key_der = bytes.fromhex(str(V["public key"]))
    signed = SignedReadings(
        _meter(BEGIN, end, key_der), require=require, public_key_hex=other if pinned else None, timeout_s=1.0
    )
    ev = _finished()
    from evproto.domain.events import SupplyStarted

    signed.started(SupplyStarted(cp_id="CP1", session_id=42, driver_id="D007", started_ts_ms=ev.started_ts_ms, ts_ms=1))
    report = await signed.finish(ev)
    assert (report.reason, report.energy_kwh) == (reason, energy_kwh)
    assert report.amount_eur == pytest.approx(energy_kwh * 0.3)
    assert (report.ocmf_begin, report.ocmf_end, report.meter_public_key) == (BEGIN, end, V["public key"])
    assert decode_event(encode_event(report)) == report  # within the schema's bounds


async def test_the_begin_reading_is_checked_at_once() -> None:
    from evproto.daemons.engine.signed import SignedReadings
    from evproto.messages import MeterSignedReading

    signed = SignedReadings(None, require=True)
    key = bytes.fromhex(str(V["public key"]))
    assert signed.check_begin(MeterSignedReading(ocmf=BEGIN.encode(), public_key=key)) is None
    assert "unsigned" in (signed.check_begin(MeterSignedReading()) or "")
    assert "signature" in (signed.check_begin(MeterSignedReading(ocmf=BEGIN.encode())) or "")
