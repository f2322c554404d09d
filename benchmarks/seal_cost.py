"""What release 2 costs per Kafka record: sealing and opening, against the plain path, same run.

    python benchmarks/seal_cost.py [--records 20000] [--rounds 5] [--write docs/performance.md]

The paths measured, each on the same reading (a SupplyProgress, the record Central
takes most of: one per supplying CP per second):

- write, plain:  ``encode_event``                                  (release 1)
- write, sealed: ``encode_event`` + ``RecordSealer.wrap`` (AES-256-GCM)
- read, plain:   ``RecordGate.decode`` with the plain policy = ``decode_event``
- read, sealed:  ``RecordGate.decode``: envelope, key lookup, replay window, AES-GCM open,
  ``decode_event``, the who-speaks-for-whom check
- sign / verify: Central's Ed25519 on a cp_state record (rare: at most one a second per CP)

Each figure is the best of ``--rounds`` rounds (microseconds per record); the ratio
is sealed / plain in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write_section  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from evproto.bus.consumer import Record  # noqa: E402
from evproto.bus.events import encode_event
from evproto.bus.topics import Topic  # noqa: E402
from evproto.daemons.gate import (  # noqa: E402
    CENTRAL,
    PLAIN_POLICY,
    MemoryKeyBook,
    Owner,
    OwnerKind,
    RecordGate,
    RecordSealer,
)
from evproto.domain.events import CpStateRecord, SupplyProgress


def best(fn, n: int, rounds: int) -> float:
    """Microseconds per call, best of ``rounds``."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(n)
        times.append((time.perf_counter() - t0) / n * 1e6)
    return min(times)


def measure(records: int, rounds: int) -> dict[str, float]:
    now = int(time.time() * 1000)
    reading = SupplyProgress(
        cp_id="CP00042",
        session_id=4242,
        driver_id="D00042",
        energy_kwh=12.5,
        amount_eur=4.37,
        power_kw=22.0,
        elapsed_s=2045.0,
        ts_ms=now,
    )
    key = os.urandom(32)
    keys = MemoryKeyBook(keys={"cp.CP00042.k1": (Owner(OwnerKind.CP, "CP00042"), key)})
    sealer = RecordSealer(sealing_key=lambda topic, record_key: ("cp.CP00042.k1", key))
    plain_value = encode_event(reading)
    sealed_values = [
        sealer.wrap(Topic.CP_EVENTS, "CP00042", plain_value, event_type="supply_progress") for _ in range(records)
    ]
    plain_gate = RecordGate(MemoryKeyBook(), policy=PLAIN_POLICY)

    def rec(value: bytes) -> Record:
        return Record(topic=Topic.CP_EVENTS, partition=0, offset=0, key="CP00042", value=value, timestamp_ms=now)

    plain_records = [rec(plain_value)] * records
    sealed_records = [rec(v) for v in sealed_values]

    def write_plain(n: int) -> None:
        for _ in range(n):
            encode_event(reading)

    def write_sealed(n: int) -> None:
        for _ in range(n):
            sealer.wrap(Topic.CP_EVENTS, "CP00042", encode_event(reading), event_type="supply_progress")

    def read_plain(n: int) -> None:
        for r in plain_records[:n]:
            plain_gate.decode(r, now)

    def read_sealed(n: int) -> None:
        gate = RecordGate(keys)  # a fresh window: every counter is new to it
        for r in sealed_records[:n]:
            gate.decode(r, now)

    signer = Ed25519PrivateKey.generate()
    from evproto.daemons.gate import public_key_bytes, verify_key_id

    key_id = verify_key_id(public_key_bytes(signer))
    state = encode_event(
        CpStateRecord(cp_id="CP00042", state="ACTIVATED", location="Alicante", price_eur_kwh=0.35, ts_ms=now)
    )
    signing = RecordSealer(signing=(key_id, signer))
    signed = signing.wrap(Topic.CP_STATE, "CP00042", state, event_type="cp_state")
    reader = RecordGate(MemoryKeyBook(verify_keys={key_id: signer.public_key()}))

    def sign(n: int) -> None:
        for _ in range(n):
            signing.wrap(Topic.CP_STATE, "CP00042", state, event_type="cp_state")

    def verify(n: int) -> None:
        r = Record(topic=Topic.CP_STATE, partition=0, offset=0, key="CP00042", value=signed, timestamp_ms=now)
        for _ in range(n):
            reader.decode(r, now)

    assert CENTRAL is not None
    small = max(1000, records // 10)
    return {
        "write_plain_us": best(write_plain, records, rounds),
        "write_sealed_us": best(write_sealed, records, rounds),
        "read_plain_us": best(read_plain, records, rounds),
        "read_sealed_us": best(read_sealed, records, rounds),
        "sign_us": best(sign, small, rounds),
        "verify_us": best(verify, small, rounds),
        "plain_bytes": len(plain_value),
        "sealed_bytes": len(sealed_values[0]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--write", metavar="FILE", help="put the table between <!-- bench:seal --> markers")
    args = ap.parse_args()
    m = measure(args.records, args.rounds)
    rows = [
        ("write a reading", m["write_plain_us"], m["write_sealed_us"]),
        ("read a reading (Central's hot path)", m["read_plain_us"], m["read_sealed_us"]),
    ]
    lines = [
        "| per record | plain (µs) | sealed (µs) | sealed / plain | added (µs) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, plain, sealed in rows:
        lines.append(f"| {name} | {plain:.1f} | {sealed:.1f} | {sealed / plain:.2f} | {sealed - plain:.1f} |")
    lines.append(f"| sign a cp_state (Ed25519) | | {m['sign_us']:.1f} | | |")
    lines.append(f"| verify a cp_state | | {m['verify_us']:.1f} | | |")
    body = "\n".join(lines) + (
        f"\n\nA reading is {m['plain_bytes']} bytes plain and {m['sealed_bytes']} sealed. "
        f"At 5,000 supplying CPs (5,000 readings/s) opening costs Central about "
        f"{(m['read_sealed_us'] - m['read_plain_us']) * 5000 / 1e4:.1f} % of one core more than reading them plain. "
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}, `python benchmarks/seal_cost.py --records {args.records} "
        f"--rounds {args.rounds}`.\n"
    )
    print(body)
    if args.write:
        write_section(
            Path(args.write),
            "seal",
            body,
            intro="## What sealing costs per record (release 2)\n\n"
            "`benchmarks/seal_cost.py`: the same reading through the plain and the sealed path, "
            "best of several rounds, same process.\n\n",
        )


if __name__ == "__main__":
    main()
