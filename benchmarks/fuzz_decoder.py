#!/usr/bin/env python3
"""Fuzz the frame decoder and the BODY decoder together.

Random inputs (pure random bytes; valid frames carrying real message bodies,
with body mutations under a correct envelope; envelope-level byte flips,
truncations, insertions and deletions) are fed to :class:`evproto.FrameDecoder`
in random splits, with occasional ``resync()`` calls. Every ``FrameReceived``
body goes to :func:`evproto.decode_body`.

What must hold:

- nothing at all escapes ``feed`` / ``resync``;
- nothing but :class:`evproto.MessageDecodeError` escapes ``decode_body``;
- the decoder never holds more than ``max_body + 5`` bytes;
- its counters match the events it reported.

Usage::

    python benchmarks/fuzz_decoder.py --inputs 2000000 [--seed N]

The test suite imports :func:`run_fuzz` (``tests/test_frame.py``) and runs 10^5 inputs.
Exit status is non-zero if anything unexpected happened.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import math
import random
import sys
import time
import traceback
import typing
from pathlib import Path
from typing import Any, Callable

try:
    import evproto  # noqa: F401 (is it installed?)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import construct as cs

from evproto import (
    DEFAULT_MAX_BODY,
    ControlReceived,
    FrameDecoder,
    FrameError,
    FrameErrorKind,
    FrameReceived,
    Garbage,
    MessageDecodeError,
    decode_body,
    encode_body,
    encode_frame,
)
from evproto.messages import MESSAGE_CLASSES

__all__ = ["run_fuzz", "random_message", "main"]

_SIGNIFICANT = (0x02, 0x03, 0x04, 0x05, 0x06, 0x15)
_TEXT_SAMPLES = ("", "a", "CP001", "Alicante", "ñandú", "€uro", "日本語", "🔌⚡", "\x00\x02\x03")


# -- random messages ---------------------------------------------------------------------------


def _random_text(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.4:
        return rng.choice(_TEXT_SAMPLES)
    if r < 0.8:
        return "".join(rng.choice("abcXYZ09 -_\x02\x05é€") for _ in range(rng.randint(0, 40)))
    # Long text, up to the 255-byte limit.
    s = "".join(rng.choice("aé€🔌") for _ in range(rng.randint(50, 255)))
    return s.encode("utf-8")[:255].decode("utf-8", "ignore")


def _random_float(rng: random.Random, f32: bool, optional: bool) -> float | None:
    r = rng.random()
    if optional and r < 0.25:
        return None
    if r < 0.35:
        return rng.choice((0.0, -0.0, 1.0, -1.0, math.inf, -math.inf, 0.35, 5000.0))
    x = rng.uniform(-1e6, 1e6)
    if f32:
        import struct

        x = struct.unpack(">f", struct.pack(">f", x))[0]
    return x


def _field_generator(cls: type, f: dataclasses.Field) -> Callable[[random.Random], Any]:
    wire = f.metadata["wire"]
    sub = wire.subcon
    hint = typing.get_type_hints(cls)[f.name]
    if isinstance(sub, cs.Enum):
        members = list(hint)
        return lambda rng: rng.choice(members)
    if isinstance(hint, type) and issubclass(hint, enum.IntFlag):
        bits = 8 * sub.sizeof()
        return lambda rng: hint(rng.getrandbits(bits) if rng.random() < 0.3 else rng.getrandbits(5))
    if isinstance(sub, cs.StringEncoded):
        return _random_text
    if isinstance(sub, cs.Prefixed):
        return lambda rng: rng.randbytes(rng.choice((0, 1, 8, rng.randint(0, 300))))
    if isinstance(sub, cs.FormatField):
        code = sub.fmtstr[-1]
        if code in "fd":
            optional = wire.to_py is not None  # NaN <-> None conversion
            return lambda rng: _random_float(rng, code == "f", optional)
        bits = 8 * sub.sizeof()
        return lambda rng: rng.choice((0, 1, (1 << bits) - 1, rng.getrandbits(bits)))
    raise TypeError(f"no generator for {cls.__name__}.{f.name}")


_GENERATORS: dict[type, list[tuple[str, Callable[[random.Random], Any]]]] = {}


def random_message(rng: random.Random, cls: type) -> Any:
    """A random valid instance of message class ``cls``."""
    gens = _GENERATORS.get(cls)
    if gens is None:
        gens = _GENERATORS[cls] = [(f.name, _field_generator(cls, f)) for f in dataclasses.fields(cls)]
    return cls(**{name: gen(rng) for name, gen in gens})


def _body_pool(rng: random.Random, per_class: int = 24) -> list[bytes]:
    pool = []
    for cls in MESSAGE_CLASSES.values():
        for _ in range(per_class):
            msg = random_message(rng, cls)
            pool.append(encode_body(msg, seq=rng.getrandbits(16), ref=rng.getrandbits(16), flags=rng.getrandbits(3)))
    return pool


# -- inputs ------------------------------------------------------------------------------------


def _random_bytes(rng: random.Random, n: int) -> bytes:
    if rng.random() < 0.5:
        return rng.randbytes(n)
    # Biased towards the bytes that mean something to the decoder.
    return bytes(rng.choice(_SIGNIFICANT) if rng.random() < 0.3 else rng.getrandbits(8) for _ in range(n))


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """One random byte-level mutation."""
    if not data:
        return bytes([rng.getrandbits(8)])
    b = bytearray(data)
    i = rng.randrange(len(b))
    op = rng.randrange(7)
    if op == 0:  # flip
        b[i] ^= rng.randint(1, 255)
    elif op == 1:  # replace with a significant byte
        b[i] = rng.choice(_SIGNIFICANT)
    elif op == 2:  # truncate
        del b[i:]
    elif op == 3:  # insert
        b.insert(i, rng.getrandbits(8))
    elif op == 4:  # delete
        del b[i]
    elif op == 5:  # append random bytes
        b += _random_bytes(rng, rng.randint(1, 8))
    else:  # invalid UTF-8 / length bytes
        b[i] = rng.choice((0x00, 0x7F, 0x80, 0xC0, 0xFF))
    return bytes(b)


def _body(rng: random.Random, pool: list[bytes]) -> bytes:
    r = rng.random()
    if r < 0.45:
        return rng.choice(pool)
    if r < 0.85:
        body = rng.choice(pool)
        for _ in range(rng.randint(1, 3)):
            body = _mutate(rng, body)
        return body
    if r < 0.93:  # header of a known type, random rest
        t = rng.choice(list(MESSAGE_CLASSES))
        return bytes([t]) + rng.randbytes(rng.randint(0, 60))
    return rng.randbytes(rng.randint(0, 40))


def make_input(rng: random.Random, pool: list[bytes]) -> bytes:
    """One fuzz input, typically under 200 bytes."""
    r = rng.random()
    if r < 0.2:
        return _random_bytes(rng, rng.randint(0, 160))
    parts = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.25:
            parts.append(bytes([rng.choice(_SIGNIFICANT)]))
        body = _body(rng, pool)
        if len(body) > 200:
            body = body[: rng.randint(0, 200)]
        parts.append(encode_frame(body))
    if rng.random() < 0.15:
        parts.insert(rng.randint(0, len(parts)), _random_bytes(rng, rng.randint(1, 30)))
    data = b"".join(parts)
    if r < 0.6:  # envelope damage
        for _ in range(rng.randint(1, 3)):
            data = _mutate(rng, data)
    return data


def _splits(rng: random.Random, data: bytes) -> list[bytes]:
    r = rng.random()
    if r < 0.3:
        return [data]
    if r < 0.4:
        return [data[i : i + 1] for i in range(len(data))]
    out = []
    i = 0
    while i < len(data):
        n = rng.randint(0, 24)
        out.append(data[i : i + n])
        i += n
    return out


# -- the run -----------------------------------------------------------------------------------


def run_fuzz(
    n_inputs: int,
    seed: int = 0,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    progress_every: int = 100_000,
    max_examples: int = 5,
) -> dict[str, Any]:
    """Run ``n_inputs`` random inputs; return counts.

    Keys: ``inputs``, ``bytes``, ``frames``, ``decoded``, ``decode_errors``,
    ``controls``, ``garbage_bytes``, ``errors`` (by :class:`FrameErrorKind` value),
    ``unexpected`` (exceptions that escaped or broken invariants), ``examples``
    (the first few unexpected cases, with input and traceback) and ``seconds``.
    """
    rng = random.Random(seed)
    pool = _body_pool(rng)
    counts: dict[str, Any] = {
        "inputs": 0,
        "bytes": 0,
        "frames": 0,
        "decoded": 0,
        "decode_errors": 0,
        "controls": 0,
        "garbage_bytes": 0,
        "errors": {k.value: 0 for k in FrameErrorKind},
        "unexpected": 0,
        "examples": [],
    }
    errors = counts["errors"]
    t0 = time.perf_counter()

    def unexpected(what: str, data: bytes, exc: BaseException | None = None) -> None:
        counts["unexpected"] += 1
        if len(counts["examples"]) < max_examples:
            counts["examples"].append(
                {
                    "what": what,
                    "input": data.hex(" "),
                    "error": "".join(traceback.format_exception(exc)) if exc else "",
                }
            )

    for i in range(n_inputs):
        data = make_input(rng, pool)
        max_body = DEFAULT_MAX_BODY if rng.random() < 0.8 else rng.randint(1, 120)
        dec = FrameDecoder(max_body=max_body)
        events: list = []
        try:
            for chunk in _splits(rng, data):
                events += dec.feed(chunk)
                if dec.buffered > max_body + 5:
                    unexpected(f"buffered {dec.buffered} > max_body {max_body} + 5", data)
                if rng.random() < 0.02:
                    events += dec.resync()
            while dec.buffered:
                before = dec.buffered
                events += dec.resync()
                if dec.buffered >= before:
                    unexpected("resync did not shrink the buffer", data)
                    break
        except Exception as exc:  # noqa: BLE001 - this is what we are looking for
            unexpected("exception from feed/resync", data, exc)
            continue
        counts["inputs"] += 1
        counts["bytes"] += len(data)
        n_frames = 0
        for ev in events:
            if type(ev) is FrameReceived:
                n_frames += 1
                try:
                    decode_body(ev.body)
                except MessageDecodeError as exc:
                    counts["decode_errors"] += 1
                    if exc.reply != b"\x15":
                        unexpected("MessageDecodeError.reply is not NACK", ev.body, exc)
                except Exception as exc:  # noqa: BLE001
                    unexpected("exception other than MessageDecodeError from decode_body", ev.body, exc)
                else:
                    counts["decoded"] += 1
            elif type(ev) is FrameError:
                errors[ev.kind.value] += 1
            elif type(ev) is Garbage:
                counts["garbage_bytes"] += ev.length
            elif type(ev) is ControlReceived:
                counts["controls"] += 1
            else:
                unexpected(f"unknown event {ev!r}", data)
        counts["frames"] += n_frames
        stats = dec.stats
        if stats.frames != n_frames or stats.error_total != sum(type(e) is FrameError for e in events):
            unexpected("decoder stats disagree with the events", data)
        if progress is not None and (i + 1) % progress_every == 0:
            counts["seconds"] = time.perf_counter() - t0
            progress(counts)
    counts["seconds"] = time.perf_counter() - t0
    return counts


def _summary(counts: dict[str, Any]) -> str:
    secs = counts["seconds"] or 1e-9
    errs = ", ".join(f"{k}={v}" for k, v in counts["errors"].items())
    return (
        f"inputs {counts['inputs']:,}  bytes {counts['bytes']:,}  frames recovered {counts['frames']:,}\n"
        f"bodies decoded {counts['decoded']:,}  decode errors {counts['decode_errors']:,}\n"
        f"controls {counts['controls']:,}  garbage bytes {counts['garbage_bytes']:,}\n"
        f"frame errors: {errs}\n"
        f"unexpected: {counts['unexpected']}\n"
        f"{counts['inputs'] / secs:,.0f} inputs/s over {secs:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="number of random inputs")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--progress-every", type=int, default=100_000)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    print(f"fuzzing FrameDecoder + decode_body: {args.inputs:,} inputs, seed {seed}", flush=True)

    def progress(c: dict[str, Any]) -> None:
        rate = c["inputs"] / (c["seconds"] or 1e-9)
        print(
            f"  {c['inputs']:>12,} inputs  {c['frames']:>12,} frames  {c['unexpected']} unexpected  {rate:,.0f}/s",
            flush=True,
        )

    counts = run_fuzz(args.inputs, seed, progress=progress, progress_every=args.progress_every)
    print(_summary(counts))
    for ex in counts["examples"]:
        print(f"\n--- {ex['what']}\ninput: {ex['input']}\n{ex['error']}")
    if counts["unexpected"]:
        print(f"FAILED: {counts['unexpected']} unexpected (reproduce with --seed {seed})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
