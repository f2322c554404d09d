"""Codec benchmark: evproto's decoder against a hand-written struct decoder, same run.

Both decode the same byte stream (frames of the telemetry path: SupplyTelemetry,
MeterValues, HealthStatus) into the same objects (Envelope + frozen message
dataclasses), checking LEN, ETX and LRC. The figure that matters is the ratio
of speeds measured in the same process, not absolute times.

    python benchmarks/bench_codec.py [--frames 20000] [--rounds 7] [--write docs/performance.md]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import struct
import sys
import time
from pathlib import Path

from _report import write_section  # benchmarks/_report.py

import evproto
from evproto import (
    Envelope,
    FaultCode,
    Flags,
    FrameDecoder,
    FrameReceived,
    HealthState,
    HealthStatus,
    MeterStatus,
    MeterValues,
    SupplyTelemetry,
    decode_body,
    encode_body,
    encode_frame,
)
from evproto.messages import BODY_SCHEMA

# -- the stream ------------------------------------------------------------------------------


def make_stream(n: int, seed: int = 1) -> tuple[bytes, list[Envelope]]:
    rng = random.Random(seed)
    frames, envs = [], []
    for i in range(n):
        seq = i % 65535 + 1
        kind = i % 3
        if kind == 0:
            msg = SupplyTelemetry(
                session_id=rng.randrange(1, 1 << 31),
                energy_wh=rng.uniform(0, 80000),
                power_w=float(rng.randrange(0, 22000)),
                amount_eur=rng.uniform(0, 40),
                elapsed_s=float(rng.randrange(0, 36000)),
            )
            env = Envelope(message=msg, seq=seq)
        elif kind == 1:
            msg = MeterValues(
                energy_wh=rng.uniform(0, 1e6),
                power_w=float(rng.randrange(0, 22000)),
                voltage_v=230.0,
                current_a=None if rng.random() < 0.2 else float(rng.randrange(0, 32)),
                status=MeterStatus.LOAD_ON,
                meter_timestamp_ms=1_764_288_000_000 + i,
            )
            env = Envelope(message=msg, seq=seq, ref=seq - 1 or 1, flags=Flags.RESPONSE)
        else:
            msg = HealthStatus(state=HealthState.OK, fault=FaultCode.NONE)
            env = Envelope(message=msg, seq=seq, ref=seq, flags=Flags.RESPONSE)
        frames.append(encode_frame(encode_body(env.message, seq=env.seq, ref=env.ref, flags=env.flags)))
        envs.append(env)
    return b"".join(frames), envs


# -- evproto ---------------------------------------------------------------------------------


def decode_evproto(stream: bytes, chunk: int) -> list[Envelope]:
    dec = FrameDecoder()
    out = []
    for i in range(0, len(stream), chunk):
        for ev in dec.feed(stream[i : i + chunk]):
            if type(ev) is FrameReceived:
                out.append(decode_body(ev.body))
    return out


def decode_plain_construct(stream: bytes, chunk: int) -> list[Envelope]:
    """The same envelope scan, bodies parsed by the construct schema alone (no fast path)."""
    dec = FrameDecoder()
    compiled = BODY_SCHEMA.compile()
    out = []
    for i in range(0, len(stream), chunk):
        for ev in dec.feed(stream[i : i + chunk]):
            if type(ev) is FrameReceived:
                c = compiled.parse(ev.body)
                cls = evproto.messages.MESSAGE_CLASSES[evproto.MessageType(int(c.type))]
                kwargs = {k: v for k, v in c.fields.items() if not k.startswith("_")}
                out.append((c.seq, cls, kwargs))
    return out


# -- the hand-written baseline ---------------------------------------------------------------

_LEN = struct.Struct(">H")
_TEL = struct.Struct(">BBHHIdfdf")
_MV = struct.Struct(">BBHHdfffHQ")
_HS = struct.Struct(">BBHHBH")


def _lrc(data: bytes) -> int:
    # The same XOR fold a competent hand-written decoder would use.
    x = int.from_bytes(data, "little")
    n = len(data)
    s = 8
    while s < n * 8:
        s <<= 1
    while s > 8:
        s >>= 1
        x ^= x >> s
    return x & 0xFF


def decode_handwritten(stream: bytes, chunk: int) -> list[Envelope]:
    """What a user would write by hand for these three messages with struct."""
    out = []
    buf = b""
    for i in range(0, len(stream), chunk):
        buf += stream[i : i + chunk]
        pos = 0
        n = len(buf)
        while True:
            start = buf.find(b"\x02", pos)
            if start < 0 or n - start < 3:
                pos = start if start >= 0 else n
                break
            (length,) = _LEN.unpack_from(buf, start + 1)
            end = start + length + 5
            if end > n:
                pos = start
                break
            if buf[end - 2] != 3 or _lrc(buf[start + 1 : end - 1]) != buf[end - 1]:
                pos = start + 1
                continue
            body = buf[start + 3 : end - 2]
            t = body[0]
            if t == 0x30:
                _, flags, seq, ref, sid, e, p, a, el = _TEL.unpack(body)
                msg = SupplyTelemetry(session_id=sid, energy_wh=e, power_w=p, amount_eur=a, elapsed_s=el)
            elif t == 0x41:
                _, flags, seq, ref, e, p, v, c, st, ts = _MV.unpack(body)
                msg = MeterValues(
                    energy_wh=e,
                    power_w=p,
                    voltage_v=None if v != v else v,
                    current_a=None if c != c else c,
                    status=MeterStatus(st),
                    meter_timestamp_ms=ts,
                )
            elif t == 0x11:
                _, flags, seq, ref, state, fault = _HS.unpack(body)
                msg = HealthStatus(state=HealthState(state), fault=FaultCode(fault))
            else:
                pos = end
                continue
            out.append(Envelope(message=msg, seq=seq, ref=ref, flags=Flags(flags)))
            pos = end
        buf = buf[pos:]
    return out


def decode_handwritten_tuples(stream: bytes, chunk: int) -> list[tuple]:
    """The hand-written decoder returning bare tuples: less work than the others (reference only)."""
    out = []
    buf = b""
    for i in range(0, len(stream), chunk):
        buf += stream[i : i + chunk]
        pos = 0
        n = len(buf)
        while True:
            start = buf.find(b"\x02", pos)
            if start < 0 or n - start < 3:
                pos = start if start >= 0 else n
                break
            (length,) = _LEN.unpack_from(buf, start + 1)
            end = start + length + 5
            if end > n:
                pos = start
                break
            if buf[end - 2] != 3 or _lrc(buf[start + 1 : end - 1]) != buf[end - 1]:
                pos = start + 1
                continue
            body = buf[start + 3 : end - 2]
            t = body[0]
            layout = _TEL if t == 0x30 else _MV if t == 0x41 else _HS
            out.append(layout.unpack(body))
            pos = end
        buf = buf[pos:]
    return out


# -- measurement -----------------------------------------------------------------------------


def timed(fn, stream: bytes, chunk: int) -> float:
    t0 = time.perf_counter()
    fn(stream, chunk)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=30000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--chunk", type=int, default=4096, help="bytes per read, as a socket would deliver them")
    ap.add_argument("--write", metavar="FILE", help="update the codec section of this Markdown file")
    args = ap.parse_args(argv)

    stream, envs = make_stream(args.frames)
    # Correctness first: every decoder must produce the same result.
    assert decode_evproto(stream, args.chunk) == envs
    assert decode_handwritten(stream, args.chunk) == envs
    assert len(decode_plain_construct(stream, args.chunk)) == len(envs)

    contenders = {
        "handwritten": decode_handwritten,
        "evproto": decode_evproto,
        "construct": decode_plain_construct,
        "tuples": decode_handwritten_tuples,
    }
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(args.rounds):
        order = list(contenders.items())
        if r % 2:
            order.reverse()  # interleave so drift on a shared machine hits everyone alike
        for name, fn in order:
            times[name].append(timed(fn, stream, args.chunk))
    med = {k: statistics.median(v) for k, v in times.items()}
    per_frame = {k: v / args.frames * 1e6 for k, v in med.items()}
    ratio = med["handwritten"] / med["evproto"]
    ratio_construct = med["handwritten"] / med["construct"]
    ratio_tuples = med["tuples"] / med["evproto"]

    print(f"frames: {args.frames}  bytes: {len(stream)}  rounds: {args.rounds}  chunk: {args.chunk}")
    for k in contenders:
        print(f"  {k:12s} {per_frame[k]:7.2f} us/frame  ({args.frames / med[k]:,.0f} frames/s)")
    print(f"evproto speed / hand-written struct decoder (same objects): {ratio:.2f}  (target >= 0.5)")
    print(f"plain construct speed / hand-written:                      {ratio_construct:.2f}")
    print(f"evproto speed / hand-written returning bare tuples:        {ratio_tuples:.2f}")

    if args.write:
        section = (
            f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, Python {platform.python_version()}, "
            f"`python benchmarks/bench_codec.py --frames {args.frames} --rounds {args.rounds}` "
            f"(median of {args.rounds} interleaved rounds, {args.chunk}-byte reads):\n\n"
            "| decoder | us/frame | frames/s | speed vs hand-written |\n"
            "| --- | --- | --- | --- |\n"
            f"| hand-written struct, same objects (baseline) | {per_frame['handwritten']:.2f} | "
            f"{args.frames / med['handwritten']:,.0f} | 1.00 |\n"
            f"| **evproto** (FrameDecoder + decode_body) | {per_frame['evproto']:.2f} | "
            f"{args.frames / med['evproto']:,.0f} | **{ratio:.2f}** |\n"
            f"| plain compiled construct bodies | {per_frame['construct']:.2f} | "
            f"{args.frames / med['construct']:,.0f} | {ratio_construct:.2f} |\n"
            f"| hand-written, bare tuples (less work) | {per_frame['tuples']:.2f} | "
            f"{args.frames / med['tuples']:,.0f} | {med['handwritten'] / med['tuples']:.2f} |\n"
        )
        if not write_section(Path(args.write), "codec", section, append=False):
            print(f"{args.write}: markers <!-- bench:codec --> missing", file=sys.stderr)
            return 2
        print(f"updated {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
