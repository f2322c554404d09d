"""Golden vectors shared with docs/protocol.md: the tests read the document itself."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

import evproto
from evproto import _docs

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
NS = {name: getattr(evproto, name) for name in evproto.__all__}


def _rows(section: str) -> list[list[str]]:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(rf"<!-- vectors:{section} -->\n(.*?)<!-- /vectors:{section} -->", text, re.S)
    assert m, f"vectors:{section} missing from {DOC}"
    rows = []
    for line in m.group(1).splitlines()[2:]:  # skip header and separator
        # split on unescaped pipes; cells are wrapped in backticks
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append([c.strip("`") for c in cells])
    assert rows, f"no vectors in section {section}"
    return rows


def _hex(s: str) -> bytes:
    return bytes.fromhex(s)


def _show(events: list[object]) -> str:
    out = []
    for e in events:
        if isinstance(e, evproto.FrameReceived):
            out.append(f"F({e.body.hex()})")
        elif isinstance(e, evproto.ControlReceived):
            out.append(f"C({e.control.name})")
        elif isinstance(e, evproto.FrameError):
            out.append(f"E({e.kind.value})")
        elif isinstance(e, evproto.Garbage):
            out.append(f"G({e.length})")
        else:  # pragma: no cover
            raise AssertionError(f"unexpected event {e!r}")
    return " ".join(out)


@pytest.mark.parametrize(
    "name,expr,frame", _rows("frames"), ids=lambda v: v if isinstance(v, str) and " " not in v else None
)
def test_frame_vectors_encode_and_decode(name: str, expr: str, frame: str) -> None:
    env = eval(expr, NS)  # noqa: S307 - trusted text from our own docs
    wire = _hex(frame)
    body = evproto.encode_body(env.message, seq=env.seq, ref=env.ref, flags=env.flags)
    assert evproto.encode_frame(body) == wire
    events = evproto.FrameDecoder().feed(wire)
    assert events == [evproto.FrameReceived(body)]
    assert evproto.decode_body(events[0].body) == env


@pytest.mark.parametrize("inp,expected", _rows("decoder"))
def test_decoder_vectors(inp: str, expected: str) -> None:
    data, _, action = inp.partition("|")
    wire = _hex(data)
    rng = random.Random(inp)
    for chunking in ("whole", "bytes", "random"):
        dec = evproto.FrameDecoder()
        if chunking == "whole":
            events = dec.feed(wire)
        elif chunking == "bytes":
            events = [e for i in range(len(wire)) for e in dec.feed(wire[i : i + 1])]
        else:
            cuts = sorted(rng.sample(range(1, len(wire)), min(3, len(wire) - 1))) if len(wire) > 1 else []
            pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)])]
            events = [e for piece in pieces for e in dec.feed(piece)]
        if action.strip() == "resync":
            events += dec.resync()
        assert _show(events) == expected, chunking


@pytest.mark.parametrize("data,value", _rows("lrc"))
def test_lrc_vectors(data: str, value: str) -> None:
    assert evproto.lrc(_hex(data)) == int(value, 16)


def test_iec_62056_bcc_example() -> None:
    # The standard's own example: BCC over everything after SOH up to and including ETX.
    assert evproto.lrc(b"\x01P0\x02(1234567)\x03"[1:]) == ord("P")


def test_generated_doc_sections_are_current() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert _docs.render(text) == text, "run: python -m evproto._docs docs/protocol.md"
